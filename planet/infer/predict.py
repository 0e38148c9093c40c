"""Predictions: class probabilities of a model over a sized shard folder, with test-time
augmentation (TTA), written resumably to `probs.parquet`.

The probabilities of a batch, with TTA, are planet.infer.tta's (`predict_probs`).

A split (`predict_split`)
-------------------------
Every image of a sized shard folder (or the `select`ed names, in that order: e.g. the
validation images of a split) goes through `Loader` (normalised float32 batches on `device`,
no augmentation) and `predict_probs`. The output folder:

    out_dir/probs.parquet     image_name (string) + one float32 column per class (its name)
    out_dir/manifest.json     count, classes, task, tta, beta, settings, sha256 of the parquet
    out_dir/parts/            while running: part-NNNNN.parquet + settings.json
    out_dir/.lock             `planet.fileio.folder_lock` (one writer per folder)

Resumable. The planned order (names) is cut into parts of `part_size` images (part p holds
rows [p * part_size, (p + 1) * part_size)); batches never straddle a part, so a part's values
do not depend on what ran before it. Each part is written atomically with the config hash in
its parquet metadata; `parts/settings.json` records the config. A rerun keeps every part whose
config hash, row count and names match (`parts_reused`) and computes the rest
(`parts_computed`); a different config (another model: the bundle sha256 in `settings`,
another TTA or beta, other names or order, other images, part size, normalisation...)
removes the parts folder and starts over. At the end the parts are concatenated into
`probs.parquet` (atomically), `manifest.json` is written last, and the parts folder is deleted.

The config hashed is: format version, task, classes, tta, beta, mean, std, part size, the
precision the forward runs at (fp32, bf16 or fp16: `planet.learn.precision`; a prediction
resumed on another machine never mixes parts of two precisions), the ordered names' sha256 and
count, the sized folder's manifest sha256 (its shards' hashes, so the pixels) and the caller's
`settings` (e.g. `{"bundle_sha256": ...}`; put there whatever identifies the model:
`state_dict_sha256(model)` when there is no bundle file). Batch size, device, channels_last
and workers are not in it: they change the last bits of the results at most, not what is
computed; on one device with one batch size a resumed run is bitwise equal to an
uninterrupted one.

Memory. The images are read in place (`read_images`: each shard's pixel pages located in its
file), so prediction streams: a part's batches are read from the files as they run, and what
stays resident is the batches in flight, one part's probabilities and the page cache (which
the OS may drop), not the split's pixels. The final `probs.parquet` concatenates every part's
probabilities: n x classes float32, 2.8 MB for Planet's 40,669 + 20,522 test images x 17
classes, so kept in memory.

Already done. When `manifest.json` exists with the same config hash and `probs.parquet` has
the recorded sha256, `predict_split` returns that manifest without reading the images or
running the model (counts in the returned copy describe this call: `reused: True`,
`parts_computed: 0`). `predictions_complete(out_dir, settings)` is that check for callers
(e.g. a flow skipping the task), comparing the caller's `settings` and, optionally, other
manifest fields (`task=`, `tta=`, `beta=`, ...).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from planet import hooks
from planet.constants import IMAGENET_MEAN, IMAGENET_STD, MANIFEST, TaskType
from planet.fileio import (
    atomic_path,
    files_intact,
    folder_lock,
    manifest_of,
    read_json,
    remove_stale_temps,
    sha256_file,
    sha256_json,
    write_json_atomic,
)
from planet.infer.tta import TTA_VIEWS, check_beta, check_task, eval_mode, predict_probs
from planet.store.sized import read_sized_manifest, read_sized_names

if TYPE_CHECKING:  # torch loads when something is predicted, not for completeness checks
    import pandas as pd
    import torch
    from torch import nn

Task = TaskType
FORMAT = "planet-predictions"
FORMAT_VERSION = 1
PROBS_FILE = "probs.parquet"
PARTS_DIR = "parts"
PARTS_SETTINGS = "settings.json"
PART_SIZE = 2048
METADATA_KEY = b"planet.predict"
NAME_COLUMN = "image_name"

Progress = Callable[[int, int], None]


# ---------------------------------------------------------------------------------------------
# files


def _jsonable(obj: Any) -> Any:
    """`obj` as it reads back from JSON (tuples become lists...), for comparisons."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _names_sha256(names: Sequence[str]) -> str:
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode() + b"\0")
    return h.hexdigest()


def _schema(classes: Sequence[str], config_sha256: str) -> pa.Schema:
    fields = [pa.field(NAME_COLUMN, pa.string(), nullable=False)]
    fields += [pa.field(c, pa.float32(), nullable=False) for c in classes]
    meta = {METADATA_KEY: json.dumps({"config_sha256": config_sha256})}
    return pa.schema(fields, metadata=meta)


def _write_table(path: Path, table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _probs_table(names: Sequence[str], probs: np.ndarray, schema: pa.Schema) -> pa.Table:
    columns = [pa.array(list(names), pa.string())]
    columns += [pa.array(np.ascontiguousarray(probs[:, j])) for j in range(probs.shape[1])]
    return pa.Table.from_arrays(columns, schema=schema)


def _part_path(parts: Path, p: int) -> Path:
    return parts / f"part-{p:05d}.parquet"


def _part_ok(path: Path, config_sha256: str, names: Sequence[str]) -> bool:
    """Whether `path` is a finished part of this config holding exactly `names`."""
    if not path.is_file():
        return False
    try:
        meta = pq.read_metadata(path)
        record = json.loads((meta.metadata or {})[METADATA_KEY])
        if record.get("config_sha256") != config_sha256 or meta.num_rows != len(names):
            return False
        stored = pq.read_table(path, columns=[NAME_COLUMN]).column(0).to_pylist()
    except (OSError, KeyError, ValueError, pa.ArrowException):
        return False
    return stored == list(names)


def read_probs(path: str | Path) -> tuple[list[str], np.ndarray, tuple[str, ...]]:
    """(names, float32 probabilities (n, C), classes) from a predictions folder (its
    `probs.parquet`) or a probabilities parquet file."""
    path = Path(path)
    if path.is_dir():
        path = path / PROBS_FILE
    table = pq.read_table(path)
    classes = tuple(c for c in table.column_names if c != NAME_COLUMN)
    names = table.column(NAME_COLUMN).to_pylist()
    probs = np.empty((table.num_rows, len(classes)), dtype=np.float32)
    for j, c in enumerate(classes):
        probs[:, j] = table.column(c).to_numpy()
    return names, probs, classes


def read_probs_frame(path: str | Path) -> pd.DataFrame:
    """The probabilities of `read_probs` as a DataFrame: index image_name, one float32 column
    per class."""
    path = Path(path)
    table = pq.read_table(path / PROBS_FILE if path.is_dir() else path)
    return table.to_pandas().set_index(NAME_COLUMN)


def _file_record(path: Path) -> dict[str, Any]:
    """A written file as the manifest records it (what `_complete_manifest` checks)."""
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def write_probs(
    out_dir: str | Path,
    names: Sequence[str],
    probs: np.ndarray,
    *,
    classes: Sequence[str],
    task: Task,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """Probabilities computed elsewhere (an ensemble's combination) as a predictions folder:
    `probs.parquet`, then `manifest.json` (same format as `predict_split`'s, `settings` saying
    what they were made from, no TTA of their own); the manifest."""
    out_dir = Path(out_dir)
    classes = check_classes(classes)
    probs = np.asarray(probs, dtype=np.float32)
    if probs.shape != (len(names), len(classes)):
        raise ValueError(
            f"{probs.shape} probabilities for {len(names)} names, {len(classes)} classes"
        )
    settings = _jsonable(settings)
    config = {
        "format_version": FORMAT_VERSION,
        "task": task,
        "classes": list(classes),
        "names_sha256": _names_sha256(names),
        "settings": settings,
    }
    config_sha256 = sha256_json(config)
    with folder_lock(out_dir):
        (out_dir / MANIFEST).unlink(missing_ok=True)
        remove_stale_temps(out_dir)
        probs_path = out_dir / PROBS_FILE
        schema = _schema(classes, config_sha256)
        _write_table(probs_path, _probs_table(names, probs, schema))
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "count": len(names),
            "classes": list(classes),
            "task": task,
            "tta": None,
            "beta": None,
            "settings": settings,
            "names_sha256": config["names_sha256"],
            "config": config,
            "config_sha256": config_sha256,
            "probs": _file_record(probs_path),
        }
        write_json_atomic(out_dir / MANIFEST, manifest)
    return manifest


def _complete_manifest(out_dir: Path) -> dict[str, Any] | None:
    """The manifest of `out_dir` when its `probs.parquet` is the one it records, else None."""
    manifest = manifest_of(out_dir, FORMAT, FORMAT_VERSION)
    try:
        if manifest is None or not files_intact(out_dir, [manifest["probs"]]):
            return None
        if sha256_file(out_dir / manifest["probs"]["name"]) != manifest["probs"]["sha256"]:
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return manifest


def predictions_complete(
    out_dir: str | Path, settings: dict[str, Any] | None, **expect: Any
) -> bool:
    """Whether `out_dir` holds finished predictions made with `settings` (and with each
    manifest field in `expect`, e.g. `tta=True, beta=None, task="multi_label"`): the manifest
    is there and `probs.parquet` has its recorded sha256."""
    manifest = _complete_manifest(Path(out_dir))
    if manifest is None or manifest.get("settings") != _jsonable(settings or {}):
        return False
    return all(k in manifest and manifest[k] == _jsonable(v) for k, v in expect.items())


# ---------------------------------------------------------------------------------------------
# a split


def _check_device(model: nn.Module, device: torch.device) -> None:
    param = next(model.parameters(), None)
    if param is None:
        return
    here = param.device
    if here.type != device.type or (device.index is not None and here.index != device.index):
        raise ValueError(f"the model is on {here}, the images go to {device}: move it first")


def check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    classes = tuple(str(c) for c in classes)
    if not classes:
        raise ValueError("classes must name at least one class")
    if len(set(classes)) != len(classes) or NAME_COLUMN in classes:
        raise ValueError(f"class names must be distinct and not {NAME_COLUMN!r}: {classes}")
    return classes


def _start_parts(parts: Path, config: dict[str, Any], config_sha256: str) -> None:
    """Keep `parts` when it was made with this config, else start it afresh."""
    record = {"config_sha256": config_sha256, "config": config}
    try:
        same = read_json(parts / PARTS_SETTINGS).get("config_sha256") == config_sha256
    except (OSError, ValueError, AttributeError):
        same = False
    if not same and parts.exists():
        shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(parts)
    if not same:
        write_json_atomic(parts / PARTS_SETTINGS, record)


def predict_split(
    model: nn.Module,
    folder: str | Path,
    out_dir: str | Path,
    *,
    classes: Sequence[str],
    task: Task,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    tta: bool = True,
    beta: float | None = None,
    select: Sequence[str] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    channels_last: bool = False,
    progress: Progress | None = None,
    settings: dict[str, Any] | None = None,
    part_size: int = PART_SIZE,
    workers: int = 1,
    precision: str = "auto",
) -> dict[str, Any]:
    """Probabilities of every image of the sized shard folder `folder` (or of the `select`ed
    names, in that order) into `out_dir/probs.parquet`; returns the manifest (see the module
    doc: resumable in parts, skipped when already complete with the same config).

    The model must already be on `device` (and in channels_last memory if asked). `settings`
    identifies the model (e.g. `{"bundle_sha256": ...}`) and is recorded. `progress(done,
    total)` is called in images, after each batch (and once for the parts reused).
    `precision`: auto, fp32, bf16 or fp16 (`planet.learn.precision.choose_precision` for
    `device`); the one used is in the config hash and the manifest."""
    folder, out_dir = Path(folder), Path(out_dir)
    check_task(task)
    classes = check_classes(classes)
    beta = check_beta(beta, tta)
    if batch_size < 1 or part_size < 1:
        raise ValueError("batch_size and part_size must be >= 1")
    import torch

    from planet.learn.fit import enable_cudnn_autotune
    from planet.learn.loader import Loader
    from planet.learn.precision import choose_precision
    from planet.store.sized import read_images

    device = torch.device(device)
    chosen = choose_precision(device, precision)
    sized = read_sized_manifest(folder)
    if select is not None:
        names = list(select)
        if len(set(names)) != len(names):
            raise ValueError("select names an image more than once")
    else:
        names = read_sized_names(folder, sized)
    n = len(names)
    settings = _jsonable(settings or {})
    config = _jsonable(
        {
            "format_version": FORMAT_VERSION,
            "task": task,
            "classes": list(classes),
            "tta": bool(tta),
            "tta_views": TTA_VIEWS if tta else 1,
            "beta": beta,
            "mean": list(mean),
            "std": list(std),
            "part_size": part_size,
            "precision": chosen.name,
            "count": n,
            "names_sha256": _names_sha256(names),
            "source_sha256": sha256_json(sized),
            "settings": settings,
        }
    )
    config_sha256 = sha256_json(config)
    n_parts = math.ceil(n / part_size)
    parts = out_dir / PARTS_DIR

    with folder_lock(out_dir):
        done = _complete_manifest(out_dir)
        if done is not None and done.get("config_sha256") == config_sha256:
            if parts.exists():
                shutil.rmtree(parts)
            if progress is not None:
                progress(n, n)
            return {**done, "reused": True, "parts_computed": 0, "parts_reused": n_parts}
        (out_dir / MANIFEST).unlink(missing_ok=True)
        remove_stale_temps(out_dir)
        _start_parts(parts, config, config_sha256)
        schema = _schema(classes, config_sha256)

        bounds = [(a, min(n, a + part_size)) for a in range(0, n, part_size)]
        kept = [
            _part_ok(_part_path(parts, p), config_sha256, names[a:b])
            for p, (a, b) in enumerate(bounds)
        ]
        todo = [p for p, ok in enumerate(kept) if not ok]
        reused = n_parts - len(todo)
        images_done = sum(b - a for (a, b), ok in zip(bounds, kept, strict=True) if ok)
        if progress is not None:
            progress(images_done, n)
        if todo:
            _check_device(model, device)
            enable_cudnn_autotune(device)
            data = read_images(folder)
            indices = data.indices(names)  # KeyError naming images not in the folder
            with eval_mode(model):
                for p in todo:
                    a, b = bounds[p]
                    loader = Loader(
                        data,
                        indices[a:b],
                        batch_size=batch_size,
                        device=device,
                        workers=workers,
                        channels_last=channels_last,
                        mean=mean,
                        std=std,
                    )
                    out = np.empty((b - a, len(classes)), dtype=np.float32)
                    pos = 0
                    for images, _ in loader:
                        probs = predict_probs(
                            model, images, task, tta=tta, beta=beta, precision=chosen
                        )
                        if probs.ndim != 2 or probs.shape[1] != len(classes):
                            raise ValueError(
                                f"the model gives {tuple(probs.shape)} outputs for "
                                f"{len(classes)} classes"
                            )
                        out[pos : pos + len(probs)] = probs.to("cpu").numpy()
                        pos += len(probs)
                        images_done += len(probs)
                        if progress is not None:
                            progress(images_done, n)
                    _write_table(_part_path(parts, p), _probs_table(names[a:b], out, schema))
                    hooks.emit("predict.part", split=out_dir.name, part=p + 1)

        tables = [pq.read_table(_part_path(parts, p)) for p in range(n_parts)]
        table = pa.concat_tables(tables) if tables else schema.empty_table()
        probs_path = out_dir / PROBS_FILE
        _write_table(probs_path, table.replace_schema_metadata(schema.metadata))
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "count": n,
            "classes": list(classes),
            "task": task,
            "tta": bool(tta),
            "tta_views": config["tta_views"],
            "beta": beta,
            "precision": chosen.name,
            "settings": settings,
            "source": {"folder": str(folder), "sha256": config["source_sha256"]},
            "names_sha256": config["names_sha256"],
            "config": config,
            "config_sha256": config_sha256,
            "probs": _file_record(probs_path),
            "parts": {"count": n_parts, "size": part_size},
            "parts_computed": len(todo),
            "parts_reused": reused,
        }
        write_json_atomic(out_dir / MANIFEST, manifest)
        shutil.rmtree(parts)
    return {**manifest, "reused": False}


__all__: Sequence[str] = (
    "FORMAT",
    "FORMAT_VERSION",
    "PROBS_FILE",
    "predict_probs",
    "predict_split",
    "predictions_complete",
    "read_probs",
)
