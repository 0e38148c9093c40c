"""Batches on the device: `Loader` over an `ImageData` (`planet.store.sized.read_images`).

`Loader` plans each epoch's batches (a seeded shuffle per epoch, or the selection's order),
gathers a batch with one `np.take` into a reused uint8 buffer (pinned on CUDA; from
`read_images`' memory maps of the shard files, so only the batch is copied), moves it to the
device (`non_blocking` on CUDA; a plain copy on other devices such as `mps`) and turns it there
into a normalised float32 NCHW batch, augmented for training (`planet.learn.augment`).
`workers` threads do all of that ahead of the consumer, each keeping up to `prefetch` finished
batches (numpy and torch release the GIL in copies and kernels); batches come out in order
whatever the number of workers. A batch's augmentation is drawn from a `torch.Generator`
seeded with (seed, epoch, batch number), so (seed, epoch) gives the same batches bit for bit.
Within an augmented batch the transposed samples come last (the set of images is
`batch_indices(epoch)[b]`; the targets follow their images).

On CUDA a bare `cuda` gets the current device's index (`with_cuda_index`): the worker threads
enter that device and build their streams on it (a new thread's current device is always 0).
Each worker holds device memory (`worker_device_bytes`: ~330 MB at 256 px, batch 64, augmented,
prefetch 2); the loader fits `workers`, then `prefetch`, into `LOADER_MEMORY_SHARE` of the
device's free memory and logs a warning when it lowers them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from planet.constants import IMAGENET_MEAN, IMAGENET_STD
from planet.learn.augment import Augment, to_model_input
from planet.store.sized import ImageData

log = logging.getLogger(__name__)

# The share of the device's free memory (when the loader is made) its workers may hold; the
# rest is the model's (weights, activations, optimiser state).
LOADER_MEMORY_SHARE = 0.25


class Batch(NamedTuple):
    """A batch on the device: normalised float32 (N, 3, H, W) images and their targets (float32
    (N, C) multi-hot or int64 (N,) class indices; None for unlabelled images)."""

    images: torch.Tensor
    targets: torch.Tensor | None


def batch_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (e.g. seed, epoch, batch number)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


def with_cuda_index(device: str | torch.device) -> torch.device:
    """`device`, a bare `cuda` given the current device's index (`cuda:<current>`): threads
    other than the one that resolved it would otherwise use their own current device, 0."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return dev


def worker_device_bytes(
    batch_size: int,
    image_shape: Sequence[int],
    *,
    augment: bool,
    prefetch: int,
    channels_last: bool,
) -> int:
    """An estimate of the device memory one loader worker holds at its peak, in bytes of one
    uint8 batch (u): the augmentation scratch `to_model_input` keeps (four uint8 batches and an
    int32 index batch, 8u), the batch it is making (its uint8 pixels, u, then the larger of the
    zoom's float32 crop and resize, ~9u, and the float32 images, 4u, twice with channels_last)
    and its `prefetch` finished float32 batches (4u each). `image_shape`: one image's (H, W, 3).
    At 256 px, batch 64 (u = 12.6 MB), augmented, channels_last, prefetch 2: ~330 MB."""
    u = batch_size * math.prod(image_shape)
    scratch = 8 * u if augment else 0
    making = u + max(9 * u if augment else 0, 4 * u * (2 if channels_last else 1))
    return scratch + making + 4 * u * prefetch


class _WorkerState:
    """What one worker thread reuses from batch to batch."""

    def __init__(self, shape: tuple[int, ...], device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self.copied = torch.cuda.Event() if self.cuda else None
        self.pixels = torch.empty(shape, dtype=torch.uint8, pin_memory=self.cuda)
        self.pixels_np = self.pixels.numpy()
        self.workspace: dict[str, torch.Tensor] = {}


class Loader:
    """Batches of `data` (all of it, or the images `indices` selects: names, a boolean mask or
    positions; see `ImageData.indices`) on `device`, as `Batch(images, targets)`.

    Each `iter(loader)` is one epoch (`loader.epoch` counts them; `set_epoch` or `iter_epoch(e)`
    picks one). `shuffle` draws a new order per epoch from (seed, epoch); without it the order is
    the selection's. `drop_last` drops a last, smaller batch. `augment` (training) is applied per
    sample on the device, drawn from (seed, epoch, batch number). `workers` threads prepare
    batches ahead, each keeping up to `prefetch` finished ones (on CUDA both lowered to fit
    `LOADER_MEMORY_SHARE` of the free device memory, with a warning). On CUDA the gather buffer
    is pinned, copies are non-blocking and each worker has its own stream on the loader's
    device; other non-CPU devices get plain copies; `channels_last` gives the images that
    memory format (on any device).

        data = read_images(dirs.sized_shards(128, "train"))
        train = Loader(data, split.train_names, shuffle=True, drop_last=True,
                       augment=Augment(), device="cuda", channels_last=True)
        valid = Loader(data, split.valid_names, batch_size=128, device="cuda")
        for epoch in range(epochs):
            for images, targets in train: ...
    """

    def __init__(
        self,
        data: ImageData,
        indices: Sequence[str] | np.ndarray | None = None,
        *,
        batch_size: int = 64,
        shuffle: bool = False,
        drop_last: bool = False,
        augment: Augment | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
        workers: int = 1,
        prefetch: int = 2,
        channels_last: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if batch_size < 1 or workers < 1 or prefetch < 1:
            raise ValueError("batch_size, workers and prefetch must be >= 1")
        self.data = data
        self.indices = data.indices(indices)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.augment = augment
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {device} asked for, but CUDA is not available")
        self.device = with_cuda_index(device)
        self.seed = seed
        self.workers = workers
        self.prefetch = prefetch
        self.channels_last = channels_last
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.epoch = 0
        if self.device.type == "cuda":
            self._fit_device_memory()

    def _fit_device_memory(self) -> None:
        """Lower `workers` (then `prefetch`) until their estimated device memory fits
        `LOADER_MEMORY_SHARE` of the device's free memory; a warning says when it does."""
        free, _ = torch.cuda.mem_get_info(self.device)
        budget = free * LOADER_MEMORY_SHARE

        def per_worker(prefetch: int) -> int:
            return worker_device_bytes(
                self.batch_size,
                self.data.images.shape[1:],
                augment=self.augment is not None,
                prefetch=prefetch,
                channels_last=self.channels_last,
            )

        asked = (self.workers, self.prefetch)
        self.workers = int(min(self.workers, max(1, budget // per_worker(self.prefetch))))
        while self.workers == 1 and self.prefetch > 1 and per_worker(self.prefetch) > budget:
            self.prefetch -= 1
        if (self.workers, self.prefetch) != asked:
            log.warning(
                "loader on %s: %d workers with prefetch %d would hold ~%.0f MB of device memory "
                "(~%.0f MB each at batch %d, %s px), over %.0f%% of the %.0f MB free; using %d "
                "workers with prefetch %d",
                self.device,
                asked[0],
                asked[1],
                asked[0] * per_worker(asked[1]) / 2**20,
                per_worker(asked[1]) / 2**20,
                self.batch_size,
                "x".join(map(str, self.data.images.shape[1:3])),
                LOADER_MEMORY_SHARE * 100,
                free / 2**20,
                self.workers,
                self.prefetch,
            )

    def __len__(self) -> int:
        n = len(self.indices)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next `iter(loader)` runs."""
        self.epoch = epoch

    def batch_indices(self, epoch: int) -> list[np.ndarray]:
        """The positions (into `data`) of each batch of `epoch`, in order."""
        order = self.indices
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(order)
        bs = self.batch_size
        batches = [order[i : i + bs] for i in range(0, len(order), bs)]
        if self.drop_last and batches and len(batches[-1]) < bs:
            batches.pop()
        return batches

    def __iter__(self) -> Iterator[Batch]:
        epoch = self.epoch
        self.epoch += 1
        return self.iter_epoch(epoch)

    def iter_epoch(self, epoch: int) -> Iterator[Batch]:
        """The batches of `epoch` (reproducible: same seed and epoch, same batches)."""
        plan = self.batch_indices(epoch)
        if not plan:
            return
        n_workers = min(self.workers, len(plan))
        stop = threading.Event()
        queues: list[queue.Queue[Any]] = [queue.Queue(self.prefetch) for _ in range(n_workers)]
        threads = [
            threading.Thread(
                target=self._work,
                args=(plan, epoch, j, n_workers, queues[j], stop),
                name=f"planet-loader-{j}",
                daemon=True,
            )
            for j in range(n_workers)
        ]
        for t in threads:
            t.start()
        try:
            for b in range(len(plan)):
                item = self._next(queues[b % n_workers], threads[b % n_workers])
                if isinstance(item, BaseException):
                    raise item
                yield self._ready(*item)
        finally:
            stop.set()
            for q in queues:  # unblock a worker waiting to put
                while not q.empty():
                    q.get_nowait()
            for t in threads:
                t.join()

    @staticmethod
    def _next(q: queue.Queue[Any], thread: threading.Thread) -> Any:
        while True:
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                if not thread.is_alive() and q.empty():
                    raise RuntimeError(f"loader thread {thread.name} ended early") from None

    def _ready(self, images: torch.Tensor, targets: torch.Tensor | None, done: Any) -> Batch:
        if done is not None:  # CUDA: the consumer's stream waits for the worker's stream
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(done)
            images.record_stream(stream)
            if targets is not None:
                targets.record_stream(stream)
        return Batch(images, targets)

    def _work(
        self,
        plan: list[np.ndarray],
        epoch: int,
        first: int,
        step: int,
        out: queue.Queue[Any],
        stop: threading.Event,
    ) -> None:
        def put(item: Any) -> None:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.05)
                    return
                except queue.Full:
                    continue

        on_device = (
            torch.cuda.device(self.device)  # this thread's kernels and scratch on that GPU too
            if self.device.type == "cuda"
            else contextlib.nullcontext()
        )
        try:
            with on_device:
                shape = (self.batch_size, *self.data.images.shape[1:])
                state = _WorkerState(shape, self.device)
                for b in range(first, len(plan), step):
                    if stop.is_set():
                        return
                    put(self._make(plan[b], epoch, b, state))
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)

    def _make(
        self, idx: np.ndarray, epoch: int, b: int, state: _WorkerState
    ) -> tuple[torch.Tensor, torch.Tensor | None, Any]:
        n = len(idx)
        draw = None
        if self.augment is not None:
            gen = torch.Generator().manual_seed(batch_seed(self.seed, epoch, b))
            draw = self.augment.draw(n, gen)
            # transposed samples last: one strided copy for each kind instead of one per run
            order = np.argsort(((draw.k & 4) != 0).numpy(), kind="stable")
            idx, draw = idx[order], draw.take(torch.from_numpy(order))
        labels = self.data.labels
        targets = None if labels is None else torch.from_numpy(np.take(labels, idx, axis=0))
        if state.copied is not None:
            state.copied.synchronize()  # the previous batch's copy out of the buffer is done
        np.take(self.data.images, idx, axis=0, out=state.pixels_np[:n], mode="clip")
        kwargs = {
            "mean": self.mean,
            "std": self.std,
            "channels_last": self.channels_last,
            "workspace": state.workspace,
        }
        if state.stream is None:
            pixels = state.pixels[:n]
            if self.device.type != "cpu":  # e.g. mps: a blocking copy, so the buffer is free
                pixels = pixels.to(self.device)
                targets = None if targets is None else targets.to(self.device)
            return to_model_input(pixels, draw, **kwargs), targets, None
        with torch.cuda.stream(state.stream):
            pixels = state.pixels[:n].to(self.device, non_blocking=True)
            state.copied.record(state.stream)
            if targets is not None:
                targets = targets.to(self.device, non_blocking=True)
            images = to_model_input(pixels, draw, **kwargs)
            done = torch.cuda.Event()
            done.record(state.stream)
        return images, targets, done
