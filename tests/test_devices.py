"""Device paths other than the plain CPU, forced on the CPU: a device that is neither CPU nor
CUDA (meta, standing in for mps), CUDA RNG states in checkpoints (fake GPUs behind torch's own
get/set functions), the CUDA device index reaching the loader's threads, and the loader's
workers sized to the free device memory."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from planet.learn import loader as loader_module
from planet.learn.augment import Augment, to_model_input
from planet.learn.callbacks import (
    Checkpoints,
    FitState,
    latest_checkpoint,
    rng_state,
    set_rng_state,
    write_checkpoint,
)
from planet.learn.fit import make_one_cycle, make_optimizer, resolve_device
from planet.learn.loader import LOADER_MEMORY_SHARE, Loader, _WorkerState, worker_device_bytes
from planet.store.sized import ImageData

ZOOM_ALL = Augment(max_zoom=1.3, p_zoom=1.0)  # every sample zoomed: all the scratch is used


def image_data(n: int = 12, size: int = 16) -> ImageData:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    labels = (rng.random((n, 3)) < 0.5).astype(np.float32)
    return ImageData([f"train_{i}" for i in range(n)], images, labels, ("a", "b", "c"), None)


@pytest.fixture
def fake_gpus(monkeypatch: pytest.MonkeyPatch):
    """`fake_gpus(n, current)`: torch sees `n` CUDA devices, `current` selected. Their RNGs are
    CPU generators behind torch's own `torch.cuda.{get,set}_rng_state[_all]`, so an index past
    the visible devices fails there as on a real machine (IndexError)."""

    def install(n: int, current: int = 0) -> list[torch.Generator]:
        generators = [torch.Generator().manual_seed(100 + i) for i in range(n)]
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "default_generators", tuple(generators))
        for module in (torch.cuda, torch.cuda.random):
            monkeypatch.setattr(module, "device_count", lambda: n)
            monkeypatch.setattr(module, "current_device", lambda: current)
        monkeypatch.setattr(torch.cuda.random, "_lazy_init", lambda: None)
        monkeypatch.setattr(torch.cuda.random, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.cuda.random, "_lazy_call", lambda fn, **kw: fn())
        return generators

    return install


# ---------------------------------------------------------------------------------------------
# item 1: a device that is neither CPU nor CUDA


@pytest.mark.parametrize("augment", [None, ZOOM_ALL], ids=["plain", "augmented"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_batches_reach_a_device_that_is_neither_cpu_nor_cuda(augment, channels_last):
    # meta stands in for mps: not the CPU, no pinned buffer, no streams
    loader = Loader(
        image_data(), batch_size=5, augment=augment, channels_last=channels_last, device="meta"
    )
    batches = list(loader)
    assert len(batches) == 3
    for images, targets in batches:
        assert images.device.type == "meta" and images.dtype == torch.float32
        assert targets is not None and targets.device.type == "meta"
        assert images.is_contiguous(memory_format=torch.channels_last) == channels_last


class Float64Devices(TorchFunctionMode):
    """Records the devices of the float64 tensors torch functions return."""

    def __init__(self) -> None:
        super().__init__()
        self.devices: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.dtype == torch.float64:
            self.devices.add(out.device.type)
        return out


def test_augmentation_makes_no_float64_tensor_on_a_device_without_float64():
    """mps has no float64: the lighting table is computed on the CPU and moved."""
    pixels = torch.from_numpy(image_data().images[:6]).to("meta")
    draw = ZOOM_ALL.draw(6, torch.Generator().manual_seed(0))
    with Float64Devices() as seen:
        out = to_model_input(pixels, draw)
    assert out.device.type == "meta"
    assert "cpu" in seen.devices  # the table was computed in float64 (there)
    assert seen.devices == {"cpu"}


def test_mps_without_mps_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="mps asked for, but MPS is not available"):
        resolve_device("mps")


# ---------------------------------------------------------------------------------------------
# item 2: CUDA RNG state in checkpoints


def test_a_checkpoint_keeps_the_training_gpus_rng_and_resumes_on_fewer_gpus(fake_gpus):
    saved_gens = fake_gpus(2)  # a 2-GPU node, training on cuda:1
    state = rng_state(torch.device("cuda", 1))
    assert torch.equal(state["cuda"], saved_gens[1].get_state())
    saved_gens[1].manual_seed(999)  # training went on after the checkpoint

    gens = fake_gpus(1)  # resumed with CUDA_VISIBLE_DEVICES=0
    set_rng_state(state, torch.device("cuda", 0))
    assert torch.equal(gens[0].get_state(), state["cuda"])


def test_checkpoints_holding_one_state_per_gpu_still_resume(fake_gpus):
    two = [torch.Generator().manual_seed(s).get_state() for s in (1, 2)]
    old = {"torch": torch.get_rng_state(), "cuda": two}  # what version 1 wrote on 2 GPUs

    gens = fake_gpus(1)
    set_rng_state(old, torch.device("cuda", 0))
    assert torch.equal(gens[0].get_state(), two[0])

    gens = fake_gpus(4)
    set_rng_state(old, torch.device("cuda", 1))  # the device's own entry
    assert torch.equal(gens[1].get_state(), two[1])
    set_rng_state(old, torch.device("cuda", 3))  # none for it: the first
    assert torch.equal(gens[3].get_state(), two[0])

    gens = fake_gpus(1)
    set_rng_state(old)  # no device (restoring within a process): every visible GPU
    assert torch.equal(gens[0].get_state(), two[0])


def _fit_state() -> FitState:
    model = nn.Linear(3, 2)
    optimizer = make_optimizer(model, [1e-3])
    return FitState(model, optimizer, make_one_cycle(optimizer, [1e-3], 8), 2, 4)


def test_resuming_a_two_gpu_checkpoint_with_one_gpu_visible(tmp_path, fake_gpus):
    fake_gpus(2)
    fit = _fit_state()
    state = {
        "version": 1,
        "key": "k",
        "epoch": 1,
        "model": fit.model.state_dict(),
        "optimizer": fit.optimizer.state_dict(),
        "scheduler": fit.scheduler.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all()},
        "history": [{"epoch": 1}],
    }
    write_checkpoint(tmp_path, state)
    torch.rand(5)  # the torch RNG moves on

    fake_gpus(1)
    resumed = _fit_state()
    Checkpoints(tmp_path, "k").before_fit(resumed)
    assert resumed.epoch == 1 and resumed.history == [{"epoch": 1}]
    assert torch.equal(torch.get_rng_state(), state["rng"]["torch"])

    Checkpoints(tmp_path, "k").after_epoch(resumed, {"epoch": 1})
    written = latest_checkpoint(tmp_path, "k")
    assert written is not None
    assert "cuda" not in written["rng"]  # a CPU model: no GPU state to keep


# ---------------------------------------------------------------------------------------------
# item 3: a bare `cuda` gets the current device's index, and the loader's threads use it


def test_cuda_resolves_to_the_current_device_with_its_index(fake_gpus):
    fake_gpus(2, current=1)
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device(torch.device("cuda")) == torch.device("cuda", 1)


class StopInWorker(Exception):
    pass


def test_loader_threads_enter_the_loaders_gpu_and_build_their_streams_there(fake_gpus, monkeypatch):
    fake_gpus(2, current=1)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2**40, 2**40))
    entered = threading.local()
    streams: list[tuple[str, torch.device, torch.device | None]] = []

    @contextlib.contextmanager
    def on_device(device) -> Iterator[None]:
        entered.device = torch.device(device)
        try:
            yield
        finally:
            entered.device = None

    class Stream:
        def __init__(self, device=None) -> None:
            here = getattr(entered, "device", None)
            streams.append((threading.current_thread().name, torch.device(device), here))
            raise StopInWorker  # the rest of the CUDA path needs a GPU

    monkeypatch.setattr(torch.cuda, "device", on_device)
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    loader = Loader(image_data(), batch_size=4, device="cuda", workers=2)
    assert loader.device == torch.device("cuda", 1)
    with pytest.raises(StopInWorker):
        list(loader)
    assert len(streams) >= 1
    for thread, device, current in streams:
        assert thread.startswith("planet-loader-")
        assert device == torch.device("cuda", 1)
        assert current == torch.device("cuda", 1)


# ---------------------------------------------------------------------------------------------
# item 6: workers sized to the free device memory


def test_the_estimate_bounds_the_scratch_a_worker_keeps():
    data = image_data(n=16)
    loader = Loader(data, batch_size=16, augment=ZOOM_ALL)
    state = _WorkerState((16, *data.images.shape[1:]), torch.device("cpu"))
    for b, idx in enumerate(loader.batch_indices(0)):
        loader._make(idx, 0, b, state)
    kept = sum(t.numel() * t.element_size() for t in state.workspace.values())
    u = data.images[:16].nbytes  # one uint8 batch
    assert 4 * u < kept <= 8 * u  # more than the int32 index alone
    estimate = worker_device_bytes(
        16, data.images.shape[1:], augment=True, prefetch=0, channels_last=False
    )
    assert estimate >= kept + u + 4 * u  # and the batch in flight: its pixels and images


def _cuda_loader(monkeypatch, free: float, **kwargs) -> Loader:
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(free), 16 * 2**30))
    return Loader(image_data(), batch_size=8, device="cuda", augment=Augment(), **kwargs)


def _per_worker(prefetch: int) -> int:
    return worker_device_bytes(8, (16, 16, 3), augment=True, prefetch=prefetch, channels_last=False)


def test_workers_are_capped_to_fit_the_free_device_memory(fake_gpus, monkeypatch, caplog):
    fake_gpus(1)
    free = 3.5 * _per_worker(2) / LOADER_MEMORY_SHARE  # room for 3 workers
    with caplog.at_level(logging.WARNING, logger=loader_module.__name__):
        loader = _cuda_loader(monkeypatch, free, workers=8, prefetch=2)
    assert (loader.workers, loader.prefetch) == (3, 2)
    assert loader.workers * _per_worker(2) <= LOADER_MEMORY_SHARE * free
    assert "8 workers with prefetch 2" in caplog.text and "using 3 workers" in caplog.text


def test_one_worker_with_less_prefetch_when_even_one_does_not_fit(fake_gpus, monkeypatch, caplog):
    fake_gpus(1)
    free = 1.0 * _per_worker(2) / LOADER_MEMORY_SHARE  # one worker with prefetch 2, not 4
    with caplog.at_level(logging.WARNING, logger=loader_module.__name__):
        loader = _cuda_loader(monkeypatch, free, workers=4, prefetch=4)
    assert (loader.workers, loader.prefetch) == (1, 2)
    assert "using 1 workers with prefetch 2" in caplog.text


def test_workers_that_fit_are_kept_without_a_warning(fake_gpus, monkeypatch, caplog):
    fake_gpus(1)
    free = 100 * _per_worker(2) / LOADER_MEMORY_SHARE
    with caplog.at_level(logging.WARNING, logger=loader_module.__name__):
        loader = _cuda_loader(monkeypatch, free, workers=8, prefetch=2)
    assert (loader.workers, loader.prefetch) == (8, 2)
    assert not caplog.records
