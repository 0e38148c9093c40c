"""planet.resize: decoding + resizing into sized shards, in this process and on Dask."""

from __future__ import annotations

import csv
import errno
import io
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from distributed.diagnostics.plugin import WorkerPlugin
from PIL import Image

from planet import resize, synthetic
from planet.competitions import DOGS_VS_CATS, PLANET
from planet.constants import MANIFEST
from planet.extract.images import extract_images
from planet.extract.tables import extract_table
from planet.store import shards
from planet.store.labels import LabelTable, load_labels
from planet.store.sized import iter_sized, read_sized, read_sized_shard

TRAIN_SHARD = 16  # 40 train images -> 3 original shards


# --------------------------------------------------------------------------------------------
# data


def _extract(out: Path, comp_dir: Path, comp: Any, split: str, shard_size: int) -> Path:
    data_file = next(f for f in comp.image_files if f.split == split)
    dest = out / "original" / split
    extract_images(comp_dir / data_file.name, data_file, dest, shard_size=shard_size)
    return dest


def _names(folder: Path) -> list[str]:
    return [n for p in shards.shard_paths(folder) for n in shards.read_shard(p)[0]]


@pytest.fixture(scope="module")
def planet_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Synthetic Planet (40 train, 10 test, 4 additional) extracted into original shards."""
    root = tmp_path_factory.mktemp("planet")
    comp_dir = synthetic.generate("planet", root / "kaggle", train=40, test=10, additional=4)
    train = _extract(root, comp_dir, PLANET, "train", TRAIN_SHARD)
    test = _extract(root, comp_dir, PLANET, "test", TRAIN_SHARD)
    tables = root / "tables"
    extract_table(comp_dir / "train_v2.csv.zip", PLANET.file("train_v2.csv.zip"), tables)
    labels = load_labels(PLANET, tables, _names(train))
    return {"root": root, "train": train, "test": test, "tables": tables, "labels": labels}


@pytest.fixture(scope="module")
def dogs_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Synthetic Dogs vs Cats (8 train, 3 test; images of ragged, non-square sizes)."""
    root = tmp_path_factory.mktemp("dogs")
    comp_dir = synthetic.generate("dogs-vs-cats", root / "kaggle", train=8, test=3)
    train = _extract(root, comp_dir, DOGS_VS_CATS, "train", 5)
    labels = load_labels(DOGS_VS_CATS, root, _names(train))
    return {"root": root, "train": train, "labels": labels}


def _first_jpeg(folder: Path) -> tuple[str, bytes]:
    names, jpegs = shards.read_shard(shards.shard_paths(folder)[0])
    return names[0], jpegs[0]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _reference(data: bytes, size: int, method: str) -> np.ndarray:
    """Full decode, then an antialiased LANCZOS resize (of the centred square for crop)."""
    im = Image.open(io.BytesIO(data)).convert("RGB")
    if method == "crop":
        w, h = im.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        im = im.crop((left, top, left + side, top + side))
    return np.asarray(im.resize((size, size), Image.Resampling.LANCZOS))


def _jpeg(arr: np.ndarray, **kw: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", **kw)
    return buf.getvalue()


def _write_original(folder: Path, names: list[str], jpegs: list[bytes], split: str) -> Path:
    """An original-image shard folder made directly with planet.store.shards (one shard)."""
    rec = shards.write_shard(folder / shards.shard_name(0), shards.image_table(names, jpegs))
    shards.write_manifest(
        folder,
        {
            "format": shards.FORMAT,
            "format_version": shards.FORMAT_VERSION,
            "split": split,
            "count": len(names),
            "shards": [rec],
        },
    )
    return folder


def _shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in shards.shard_files(folder)}


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".tmp-")]


# --------------------------------------------------------------------------------------------
# one image


@pytest.mark.parametrize("size", [64, 128, 83, 166, 332])
def test_resize_jpeg_shape_and_quality(planet_data: dict[str, Any], size: int) -> None:
    _, data = _first_jpeg(planet_data["train"])
    out = resize.resize_jpeg(data, size)
    assert out.shape == (size, size, 3)
    assert out.dtype == np.uint8
    assert _psnr(out, _reference(data, size, "squish")) > 30


@pytest.mark.parametrize("size", [64, 83, 128])
def test_squish_and_crop_on_a_non_square_image(dogs_data: dict[str, Any], size: int) -> None:
    _, data = _first_jpeg(dogs_data["train"])
    w, h = Image.open(io.BytesIO(data)).size
    assert w != h  # the generator draws ragged sizes: this test needs a non-square image
    squish = resize.resize_jpeg(data, size, "squish")
    crop = resize.resize_jpeg(data, size, "crop")
    assert squish.shape == crop.shape == (size, size, 3)
    ref_squish, ref_crop = _reference(data, size, "squish"), _reference(data, size, "crop")
    assert _psnr(squish, ref_squish) > 30
    assert _psnr(crop, ref_crop) > 30
    # each matches its own reference much better than the other's
    assert _psnr(crop, ref_squish) < _psnr(crop, ref_crop) - 5
    assert _psnr(squish, ref_crop) < _psnr(squish, ref_squish) - 5


def test_square_image_same_either_way(planet_data: dict[str, Any]) -> None:
    _, data = _first_jpeg(planet_data["train"])
    assert np.array_equal(
        resize.resize_jpeg(data, 83, "squish"), resize.resize_jpeg(data, 83, "crop")
    )


def test_other_jpeg_kinds_decode() -> None:
    rng = np.random.default_rng(0)
    rgb = (rng.random((90, 120, 3)) * 255).astype(np.uint8)
    gray = _jpeg(rgb[:, :, 0])
    cmyk_buf = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(cmyk_buf, format="JPEG")
    progressive = _jpeg(rgb, progressive=True)
    for data in (gray, cmyk_buf.getvalue(), progressive):
        out = resize.resize_jpeg(data, 50)
        assert out.shape == (50, 50, 3)
    out = resize.resize_jpeg(gray, 50)
    assert np.array_equal(out[:, :, 0], out[:, :, 1])  # grey stays grey


@pytest.mark.parametrize("size", [64, 128, 83, 166, 332])
def test_decoding_into_a_buffer_gives_the_same_pixels(
    planet_data: dict[str, Any], dogs_data: dict[str, Any], size: int
) -> None:
    """`out=` (the shard writer's row-group buffer): the same bytes as a fresh array, whether
    libjpeg-turbo decodes in place (64, 128 from 256 px) or a resize finishes the job."""
    rng = np.random.default_rng(size)
    tiny = _jpeg((rng.random((4, 4, 3)) * 255).astype(np.uint8))  # scaled 3/8 rounds up to 2
    odd = _jpeg((rng.random((90, 120, 3)) * 255).astype(np.uint8), progressive=True)
    images = [
        _first_jpeg(planet_data["train"])[1],
        _first_jpeg(dogs_data["train"])[1],
        odd,
        _jpeg((rng.random((90, 120)) * 255).astype(np.uint8)),  # grey
    ]
    cases = [(data, size, method) for data in images for method in resize.image.METHODS]
    for data, sz, method in [*cases, (tiny, 2, "squish")]:
        out = np.full((sz, sz, 3), 7, np.uint8)
        got = resize.image.resize_jpeg_unchecked(memoryview(data), sz, method, out=out)
        assert got is out
        assert np.array_equal(out, resize.resize_jpeg(data, sz, method)), (sz, method)
    _, data = _first_jpeg(planet_data["train"])
    out = np.empty((128, 128, 3), np.uint8)  # in place at 128: the retry names the damage
    with pytest.raises(resize.BadImageError, match="truncated|[Pp]remature"):
        resize.image.resize_jpeg_unchecked(data[: len(data) // 2], 128, "squish", out=out)


def test_bad_images_raise_bad_image_error(planet_data: dict[str, Any]) -> None:
    _, data = _first_jpeg(planet_data["train"])
    png = io.BytesIO()
    Image.new("RGB", (20, 20)).save(png, format="PNG")
    for bad in (data[: len(data) // 2], b"not an image at all", png.getvalue(), b""):
        with pytest.raises(resize.BadImageError):
            resize.resize_jpeg(bad, 64)
    with pytest.raises(resize.BadImageError, match="truncated|[Pp]remature"):
        resize.resize_jpeg(data[: len(data) // 2], 64)
    with pytest.raises(resize.BadImageError, match="cannot be decoded"):
        resize.resize_jpeg(data[:2] + b"garbage" * 10, 64)  # a JPEG marker, then nonsense
    with pytest.raises(resize.BadImageError, match="not a JPEG"):
        resize.resize_jpeg(png.getvalue(), 64)


@pytest.mark.parametrize("size", [0, -3, 10_000, 2.5, True])
def test_bad_sizes_rejected(planet_data: dict[str, Any], size: Any) -> None:
    _, data = _first_jpeg(planet_data["train"])
    with pytest.raises(ValueError, match="size"):
        resize.resize_jpeg(data, size)
    with pytest.raises(ValueError, match="method"):
        resize.resize_jpeg(data, 64, "stretch")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# a split in this process


def _csv_labels(tables: Path) -> dict[str, np.ndarray]:
    """train_v2.csv read independently of planet.store.labels: name -> multi-hot in class order."""
    out = {}
    with open(tables / "train_v2.csv", encoding="utf-8-sig", newline="") as fh:
        for row in csv.DictReader(fh):
            tags = set(row["tags"].split())
            out[row["image_name"]] = np.array([c in tags for c in PLANET.classes], np.uint8)
    return out


@pytest.mark.parametrize("size", [64, 83])
def test_planet_train_split(planet_data: dict[str, Any], tmp_path: Path, size: int) -> None:
    calls: list[tuple[int, int]] = []
    dest = tmp_path / str(size) / "train"
    manifest = resize.resize_split(
        planet_data["train"],
        dest,
        size,
        planet_data["labels"],
        progress=lambda d, t: calls.append((d, t)),
    )
    assert calls[-1] == (3, 3)
    assert manifest["count"] == 40 and len(manifest["shards"]) == 3
    assert manifest["bad_images"] == []
    assert manifest["classes"] == list(PLANET.classes)
    assert manifest["label_kind"] == "multi_hot"
    assert manifest["pixels"]["layout"] == "HWC"
    source = shards.read_manifest(planet_data["train"])
    assert [s["name"] for s in manifest["shards"]] == [s["name"] for s in source["shards"]]
    assert (dest / MANIFEST).is_file()
    assert shards.shard_files(dest) == [dest / s["name"] for s in manifest["shards"]]

    names, labels, pixels = read_sized(dest)
    assert names == _names(planet_data["train"])
    assert pixels.shape == (40, size, size, 3) and pixels.dtype == np.uint8
    expected = _csv_labels(planet_data["tables"])
    assert labels is not None and labels.shape == (40, 17) and labels.dtype == np.uint8
    for name, row in zip(names, labels, strict=True):
        assert np.array_equal(row, expected[name]), name
    # pixels are the images resized, in name order
    orig = dict(zip(*shards.read_shard(shards.shard_paths(planet_data["train"])[1]), strict=True))
    i = names.index(next(iter(orig)))
    assert np.array_equal(pixels[i], resize.resize_jpeg(orig[names[i]], size))

    # the parquet schema and the per-shard reader
    pf = pq.ParquetFile(dest / "part-00000.parquet")
    schema = pf.schema_arrow
    label_type = schema.field("label").type
    assert pa.types.is_fixed_size_list(label_type) and label_type.list_size == 17
    assert label_type.value_type == pa.uint8()
    assert str(schema.field("pixels").type) == f"fixed_size_binary[{size * size * 3}]"
    assert pf.metadata.num_row_groups == 1
    one = read_sized_shard(dest / "part-00000.parquet")
    assert one.names == names[:TRAIN_SHARD]
    assert np.array_equal(one.pixels, pixels[:TRAIN_SHARD])
    assert [s.names for s in iter_sized(dest)] == [names[:16], names[16:32], names[32:]]

    # shard records are true
    for rec in manifest["shards"]:
        assert shards.sha256_file(dest / rec["name"]) == rec["sha256"]
        assert (dest / rec["name"]).stat().st_size == rec["bytes"]
    assert resize.sized_complete(dest, source, size, "squish") == manifest
    assert resize.sized_complete(dest, source, size, "crop") is None
    assert resize.sized_complete(dest, source, size + 1, "squish") is None
    assert resize.sized_complete(dest, {**source, "count": 41}, size, "squish") is None


def test_row_groups_read_back_as_one_array(
    planet_data: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, labels = planet_data["train"], planet_data["labels"]
    resize.resize_split(src, tmp_path / "one", 64, labels)
    # 5 images per row group
    monkeypatch.setattr("planet.resize.shard.ROW_GROUP_BYTES", 5 * 64 * 64 * 3)
    resize.resize_split(src, tmp_path / "many", 64, labels)
    assert pq.ParquetFile(tmp_path / "many" / "part-00000.parquet").metadata.num_row_groups == 4
    one, many = read_sized(tmp_path / "one"), read_sized(tmp_path / "many")
    assert one.names == many.names
    assert np.array_equal(one.labels, many.labels)
    assert np.array_equal(one.pixels, many.pixels)
    shard = read_sized_shard(tmp_path / "many" / "part-00000.parquet")
    assert np.array_equal(shard.pixels, one.pixels[:TRAIN_SHARD])
    assert np.array_equal(shard.labels, one.labels[:TRAIN_SHARD])


def test_planet_test_split_has_no_labels(planet_data: dict[str, Any], tmp_path: Path) -> None:
    manifest = resize.resize_split(planet_data["test"], tmp_path / "t", 64, None, is_test=True)
    assert manifest["count"] == 10 and manifest["label_kind"] is None
    names, labels, pixels = read_sized(tmp_path / "t")
    assert labels is None and pixels.shape == (10, 64, 64, 3)
    assert names == _names(planet_data["test"])
    with pytest.raises(ValueError, match="labels"):
        resize.resize_split(
            planet_data["test"], tmp_path / "u", 64, planet_data["labels"], is_test=True
        )
    with pytest.raises(ValueError, match="labels"):
        resize.resize_split(planet_data["train"], tmp_path / "u", 64, None)


def test_dogs_labels_and_crop(dogs_data: dict[str, Any], tmp_path: Path) -> None:
    manifest = resize.resize_split(
        dogs_data["train"], tmp_path / "d", 83, dogs_data["labels"], method="crop"
    )
    assert manifest["label_kind"] == "class_index" and manifest["method"] == "crop"
    names, labels, pixels = read_sized(tmp_path / "d")
    assert labels is not None and labels.dtype == np.int16
    assert [DOGS_VS_CATS.classes[i] for i in labels] == [n.split(".")[0] for n in names]
    assert pixels.shape == (8, 83, 83, 3)
    assert resize.sized_complete(
        tmp_path / "d", shards.read_manifest(dogs_data["train"]), 83, "crop"
    )


def test_missing_label_fails_before_any_work(planet_data: dict[str, Any], tmp_path: Path) -> None:
    full: LabelTable = planet_data["labels"]
    fewer = full.take(full.names[:-1])
    with pytest.raises(ValueError, match=full.names[-1]):
        resize.resize_split(planet_data["train"], tmp_path / "x", 64, fewer)
    assert shards.shard_files(tmp_path / "x") == []


# --------------------------------------------------------------------------------------------
# bad images


def _with_bad_images(planet_data: dict[str, Any]) -> tuple[list[str], list[bytes]]:
    names, jpegs = shards.read_shard(shards.shard_paths(planet_data["train"])[0])
    names, jpegs = names[:6], list(jpegs[:6])
    png = io.BytesIO()
    Image.new("RGB", (30, 30), "red").save(png, format="PNG")
    jpegs[2] = jpegs[2][: len(jpegs[2]) // 3]  # truncated
    jpegs[4] = png.getvalue()  # not a JPEG
    return names, jpegs


def test_bad_train_images_are_left_out(planet_data: dict[str, Any], tmp_path: Path) -> None:
    names, jpegs = _with_bad_images(planet_data)
    src = _write_original(tmp_path / "src", names, jpegs, "train")
    manifest = resize.resize_split(src, tmp_path / "out", 64, planet_data["labels"])
    assert manifest["count"] == 4
    assert [b["name"] for b in manifest["bad_images"]] == [names[2], names[4]]
    assert all(b["reason"] and b["shard"] == "part-00000.parquet" for b in manifest["bad_images"])
    assert "not a JPEG" in manifest["bad_images"][1]["reason"]
    got_names, labels, _ = read_sized(tmp_path / "out")
    assert got_names == [n for i, n in enumerate(names) if i not in (2, 4)]
    table: LabelTable = planet_data["labels"]
    assert labels is not None
    assert np.array_equal(labels, table.take(got_names).values)
    # deterministic, reasons included (they are in the shard's metadata too)
    resize.resize_split(src, tmp_path / "again", 64, planet_data["labels"])
    assert _shard_bytes(tmp_path / "again") == _shard_bytes(tmp_path / "out")
    # a rerun reuses the shard and still reports them
    again = resize.resize_split(src, tmp_path / "out", 64, planet_data["labels"])
    assert again["bad_images"] == manifest["bad_images"]


def test_bad_test_image_fails_the_split(planet_data: dict[str, Any], tmp_path: Path) -> None:
    names, jpegs = _with_bad_images(planet_data)
    src = _write_original(tmp_path / "src", names, jpegs, "test")
    out = tmp_path / "out"
    with pytest.raises(resize.BadImageError) as err:
        resize.resize_split(src, out, 64, None, is_test=True)
    assert names[2] in str(err.value) and "part-00000.parquet" in str(err.value)
    assert "submission" in str(err.value)
    assert not (out / MANIFEST).exists()
    assert shards.shard_files(out) == [] and _leftovers(out) == []


def test_a_failed_background_sync_fails_the_shard(
    planet_data: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The row groups are synced to disk in a background thread while the next ones decode;
    a disk error there fails the shard like one in the final fsync: nothing half-written."""
    calls: list[int] = []

    def broken_sync(fd: int) -> None:
        calls.append(fd)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(resize.shard, "ROW_GROUP_BYTES", 3 * 64 * 64 * 3)  # 3 images a group
    monkeypatch.setattr(resize.shard, "_SYNC", broken_sync)
    src = shards.shard_paths(planet_data["train"])[0]
    out = tmp_path / "out"
    with pytest.raises(OSError, match="Input/output error"):
        resize.shard.resize_shard(src, out / src.name, 64, planet_data["labels"])
    assert calls
    assert shards.shard_files(out) == [] and _leftovers(out) == []


# --------------------------------------------------------------------------------------------
# resume


def test_resume_reuses_complete_shards(
    planet_data: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, labels = planet_data["train"], planet_data["labels"]
    reference = tmp_path / "reference"
    ref_manifest = resize.resize_split(src, reference, 83, labels)

    out = tmp_path / "out"
    # an interrupted earlier run: one finished shard, a temp file from a killed write, a shard
    # of another source (e.g. a longer archive) and no manifest
    resize.resize_shard(src / "part-00001.parquet", out / "part-00001.parquet", 83, labels)
    (out / ".tmp-part-00002.parquet.abc123").write_bytes(b"half a shard")
    (out / "part-00007.parquet").write_bytes(b"stale")
    kept = (out / "part-00001.parquet").stat()

    records: list[dict[str, Any]] = []
    real = resize.resize_shard

    def spy(*args: Any, **kwargs: Any) -> dict[str, Any]:
        records.append(real(*args, **kwargs))
        return records[-1]

    monkeypatch.setattr("planet.resize.split.resize_shard", spy)
    manifest = resize.resize_split(src, out, 83, labels)
    assert [r["reused"] for r in records] == [False, True, False]
    after = (out / "part-00001.parquet").stat()
    assert (after.st_ino, after.st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)
    assert manifest == ref_manifest
    assert _shard_bytes(out) == _shard_bytes(reference)
    assert _leftovers(out) == []

    # complete: no shard is even looked at
    def fail(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise AssertionError("a complete split did work")

    monkeypatch.setattr("planet.resize.split.resize_shard", fail)
    assert resize.resize_split(src, out, 83, labels) == manifest

    # a deleted shard is redone, alone
    (out / "part-00002.parquet").unlink()
    assert resize.sized_complete(out, shards.read_manifest(src), 83) is None
    records.clear()
    monkeypatch.setattr("planet.resize.split.resize_shard", spy)
    assert resize.resize_split(src, out, 83, labels) == manifest
    assert [r["reused"] for r in records] == [True, True, False]


def test_changed_labels_redo_only_their_shard(planet_data: dict[str, Any], tmp_path: Path) -> None:
    src, labels = planet_data["train"], planet_data["labels"]
    out = tmp_path / "out"
    first = resize.resize_split(src, out, 64, labels)
    before = {p.name: p.stat().st_ino for p in shards.shard_files(out)}
    values = labels.values.copy()
    target = _names(src)[20]  # in part-00001
    values[labels.index[target]] ^= 1
    changed = LabelTable(labels.names, values, labels.kind, labels.classes)
    assert resize.sized_complete(out, shards.read_manifest(src), 64, labels=changed) is None
    second = resize.resize_split(src, out, 64, changed)
    after = {p.name: p.stat().st_ino for p in shards.shard_files(out)}
    assert [n for n in before if before[n] != after[n]] == ["part-00001.parquet"]
    assert second["labels_sha256"] != first["labels_sha256"]
    names, got, _ = read_sized(out)
    assert got is not None
    assert np.array_equal(got[names.index(target)], values[labels.index[target]])


# --------------------------------------------------------------------------------------------
# Dask


class KillFirstTask(WorkerPlugin):
    """A worker plugin: the first resize task to start kills its own worker (SIGKILL), once
    across the cluster (a marker file remembers)."""

    name = "kill-first-resize-task"

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if finish != "executing" or "resize_shard" not in str(key):
            return
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A separate 2-worker process cluster, reached only by its address."""
    import logging

    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        silence_logs=logging.ERROR,
    ) as c:
        yield c


def test_dask_output_identical_to_in_process(
    planet_data: dict[str, Any], cluster: Any, tmp_path: Path
) -> None:
    src, labels = planet_data["train"], planet_data["labels"]
    local = resize.resize_split(src, tmp_path / "local", 83, labels)
    calls: list[tuple[int, int]] = []
    with resize.dask_client(cluster.scheduler_address) as client:
        on_dask = resize.resize_split(
            src,
            tmp_path / "dask",
            83,
            labels,
            client=client,
            progress=lambda d, t: calls.append((d, t)),
        )
        assert sorted(calls) == [(0, 3), (1, 3), (2, 3), (3, 3)]
        assert len(client.scheduler_info()["workers"]) == 2
    assert on_dask == local
    assert _shard_bytes(tmp_path / "dask") == _shard_bytes(tmp_path / "local")
    assert cluster.scheduler_address  # the cluster outlives the client


def test_a_killed_worker_does_not_stop_the_stage(
    planet_data: dict[str, Any], cluster: Any, tmp_path: Path
) -> None:
    src, labels = planet_data["train"], planet_data["labels"]
    marker = tmp_path / "killed"
    with resize.dask_client(cluster.scheduler_address) as client:
        pids_before = set(client.run(os.getpid).values())
        client.register_plugin(KillFirstTask(str(marker)))
        manifest = resize.resize_split(src, tmp_path / "dask", 64, labels, client=client)
        client.unregister_worker_plugin(KillFirstTask.name)
        assert marker.exists()  # a worker was killed...
        client.wait_for_workers(2, timeout=60)
        assert set(client.run(os.getpid).values()) != pids_before  # ...and replaced
    local = resize.resize_split(src, tmp_path / "local", 64, labels)
    assert manifest == local
    assert _shard_bytes(tmp_path / "dask") == _shard_bytes(tmp_path / "local")


def test_bad_test_image_on_dask(planet_data: dict[str, Any], cluster: Any, tmp_path: Path) -> None:
    names, jpegs = _with_bad_images(planet_data)
    src = _write_original(tmp_path / "src", names, jpegs, "test")
    with (
        resize.dask_client(cluster.scheduler_address) as client,
        pytest.raises(resize.BadImageError, match=names[2]),
    ):
        resize.resize_split(src, tmp_path / "out", 64, None, is_test=True, client=client)
    assert not (tmp_path / "out" / MANIFEST).exists()


def test_local_cluster_starts_and_stops() -> None:
    import importlib.util

    with resize.dask_client(n_workers=1) as client:
        assert client.submit(sum, [1, 2, 3]).result() == 6
        link = resize.dashboard_link(client)
        has_bokeh = importlib.util.find_spec("bokeh") is not None
        assert (link is not None) == has_bokeh
        cluster = client.cluster
    assert cluster.status.name == "closed"


def test_a_local_cluster_leaves_this_process_thread_settings_alone(monkeypatch):
    """distributed's nannies set OMP_NUM_THREADS=1 here; torch imported afterwards would train
    on one thread. dask_client puts the environment back."""
    import os

    for key in resize.THREAD_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "3")
    with resize.dask_client(None, n_workers=1) as client:
        assert client.run(lambda: os.environ.get("OMP_NUM_THREADS"))  # the workers keep theirs
        assert "OMP_NUM_THREADS" not in os.environ
    assert "OMP_NUM_THREADS" not in os.environ and os.environ["MKL_NUM_THREADS"] == "3"
