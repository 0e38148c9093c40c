"""Sized shards read in place: parquet page locations (`planet.store.pages`), `MappedPixels`
(`planet.store.mapped`), and that training and prediction over a multi-shard folder neither
copy it nor change a single value."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from planet import resize
from planet.competitions import PLANET
from planet.fileio import write_json_atomic
from planet.learn.augment import Augment
from planet.learn.loader import Loader
from planet.resize.shard import COMPRESSION, ROW_GROUP_BYTES, shard_schema
from planet.store import shards
from planet.store.labels import LabelTable
from planet.store.mapped import MappedPixels, map_pixels
from planet.store.pages import value_runs
from planet.store.sized import ImageData, read_images, read_sized

ROOT = Path(__file__).resolve().parents[1]


def write_resized_folder(
    folder: Path, n_shards: int, rows: int, size: int, labelled: bool = True, seed: int = 0
) -> tuple[list[str], np.ndarray | None]:
    """A sized folder written the way `planet.resize.shard` writes one (its schema, no
    compression, no dictionary, row groups of `ROW_GROUP_BYTES`), with random pixels; returns
    the names and labels (the pixels are read back by the tests)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    group = max(1, ROW_GROUP_BYTES // (size * size * 3))
    names_all: list[str] = []
    labels_all: list[np.ndarray] = []
    records = []
    for s in range(n_shards):
        names = [f"train_{s}_{i}" for i in range(rows)]
        labels = rng.integers(0, 2, (rows, len(PLANET.classes)), dtype=np.uint8)
        table = LabelTable(names, labels, "multi_hot", PLANET.classes) if labelled else None
        schema = shard_schema(size, table)
        path = folder / shards.shard_name(s)
        with pq.ParquetWriter(path, schema, compression=COMPRESSION, use_dictionary=False) as w:
            for a in range(0, rows, group):
                k = min(group, rows - a)
                pixels = rng.integers(0, 256, (k, size * size * 3), dtype=np.uint8)
                label = (
                    pa.FixedSizeListArray.from_arrays(pa.array(labels[a : a + k].ravel()), 17)
                    if labelled
                    else pa.nulls(k)
                )
                pix = pa.FixedSizeBinaryArray.from_buffers(
                    schema.field("pixels").type, k, [None, pa.py_buffer(pixels)]
                )
                w.write_table(
                    pa.Table.from_arrays([pa.array(names[a : a + k]), label, pix], schema=schema),
                    row_group_size=k,
                )
        records.append({"name": path.name, "rows": rows, "bytes": path.stat().st_size})
        names_all += names
        labels_all.append(labels)
    manifest = {
        "format": resize.FORMAT,
        "format_version": resize.FORMAT_VERSION,
        "size": size,
        "count": n_shards * rows,
        "classes": list(PLANET.classes),
        "label_kind": "multi_hot" if labelled else None,
        "shards": records,
    }
    write_json_atomic(folder / "manifest.json", manifest)
    return names_all, np.concatenate(labels_all) if labelled else None


def in_memory(data: ImageData) -> ImageData:
    """The same images copied into one array: what `read_images` returned before it mapped."""
    return ImageData(
        data.names, np.asarray(data.images), data.labels, data.classes, data.label_kind
    )


# ---------------------------------------------------------------------------------------------
# page locations


def one_column_file(path: Path, n: int, width: int, nullable: bool, **options) -> np.ndarray:
    pixels = np.random.default_rng(n).integers(0, 256, (n, width), dtype=np.uint8)
    schema = pa.schema([pa.field("pixels", pa.binary(width), nullable=nullable)])
    column = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), n, [None, pa.py_buffer(pixels)])
    pq.write_table(pa.Table.from_arrays([column], schema=schema), path, **options)
    return pixels


@pytest.mark.parametrize("nullable", [False, True])
@pytest.mark.parametrize(
    "options",
    [
        {"row_group_size": 300},
        {"row_group_size": 300, "data_page_version": "2.0"},
        {"row_group_size": 1000, "data_page_size": 1000, "write_batch_size": 7},  # many pages
    ],
)
def test_plain_pages_are_found_in_the_file(tmp_path, nullable, options):
    path = tmp_path / "p.parquet"
    pixels = one_column_file(
        path, 1000, 48, nullable, compression="none", use_dictionary=False, **options
    )
    runs = value_runs(path, "pixels", 48)
    assert runs is not None and sum(r.rows for r in runs) == 1000
    raw = path.read_bytes()
    got = np.concatenate(
        [np.frombuffer(raw, np.uint8, r.rows * 48, r.offset).reshape(r.rows, 48) for r in runs]
    )
    np.testing.assert_array_equal(got, pixels)
    pieces = map_pixels(path, "pixels", (4, 4, 3))
    assert all(not p.flags.writeable for p in pieces)
    np.testing.assert_array_equal(np.concatenate(pieces).reshape(1000, 48), pixels)


@pytest.mark.parametrize(
    "options",
    [{"compression": "snappy", "use_dictionary": False}, {"compression": "none"}],  # dictionary
)
def test_compressed_or_dictionary_pages_are_not_mapped(tmp_path, options):
    path = tmp_path / "p.parquet"
    one_column_file(path, 200, 48, False, **options)
    assert value_runs(path, "pixels", 48) is None and map_pixels(path, "pixels", (48,)) is None


def test_nulls_and_other_columns_are_not_mapped(tmp_path):
    path = tmp_path / "p.parquet"
    column = pa.array([b"a" * 12, None, b"b" * 12], pa.binary(12))
    pq.write_table(pa.table({"pixels": column}), path, compression="none", use_dictionary=False)
    assert value_runs(path, "pixels", 12) is None
    assert value_runs(path, "missing", 12) is None


# ---------------------------------------------------------------------------------------------
# MappedPixels


def test_mapped_pixels_array_api():
    images = np.random.default_rng(0).integers(0, 256, (10, 2, 2, 3), dtype=np.uint8)
    mp = MappedPixels([images[:3], images[3:3], images[3:7], images[7:]], (2, 2, 3))
    assert mp.shape == (10, 2, 2, 3) and len(mp) == 10 and mp.ndim == 4
    assert mp.dtype == np.uint8 and mp.nbytes == images.nbytes and not mp.mapped
    np.testing.assert_array_equal(np.asarray(mp), images)
    idx = np.array([9, 0, 3, 3, 6, -1])
    np.testing.assert_array_equal(mp.take(idx), images.take(idx, axis=0))
    np.testing.assert_array_equal(np.take(mp, idx, axis=0), images[idx])
    out = np.zeros((6, 2, 2, 3), np.uint8)
    assert np.take(mp, idx, axis=0, out=out) is out
    np.testing.assert_array_equal(out, images[idx])
    np.testing.assert_array_equal(mp.take([[1, 2], [8, 4]]), images[[[1, 2], [8, 4]]])
    np.testing.assert_array_equal(mp.take(np.array([12, -20]), mode="clip"), images[[9, 0]])
    np.testing.assert_array_equal(mp[4], images[4])
    np.testing.assert_array_equal(mp[2:9:3], images[2:9:3])
    np.testing.assert_array_equal(mp[[5, 1]], images[[5, 1]])
    np.testing.assert_array_equal(mp[images[:, 0, 0, 0] > 128], images[images[:, 0, 0, 0] > 128])
    np.testing.assert_array_equal(mp[[2, 3], 1], images[[2, 3], 1])
    np.testing.assert_array_equal(mp[7, :, 1], images[7, :, 1])
    np.testing.assert_array_equal(np.stack(list(mp)), images)
    with pytest.raises(IndexError):
        mp.take([10])
    with pytest.raises(IndexError):
        mp[np.zeros(3, bool)]
    with pytest.raises(ValueError, match="axis"):
        mp.take([0], axis=1)
    with pytest.raises(ValueError, match="out"):
        mp.take([0, 1], out=np.zeros((1, 2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="contiguous"):
        mp.take([0, 1], out=np.zeros((2, 2, 4, 3), np.uint8)[:, :, :2])


# ---------------------------------------------------------------------------------------------
# a multi-shard folder: mapped, same values as the full copy, and not copied


def test_read_images_maps_every_shard_and_matches_the_full_copy(tmp_path):
    names, labels = write_resized_folder(tmp_path / "s", n_shards=3, rows=150, size=64)
    data = read_images(tmp_path / "s")
    assert data.images.mapped and data.images.shape == (450, 64, 64, 3)
    assert len(data.images.pieces) == 3  # a row group holds 1,365 images of 64 px: one each
    ref = read_sized(tmp_path / "s")
    assert data.names == ref.names == names
    np.testing.assert_array_equal(np.asarray(data.images), ref.pixels)
    np.testing.assert_array_equal(data.labels, labels)
    np.testing.assert_array_equal(ref.labels, labels)


@pytest.mark.parametrize("augment", [None, Augment()])
def test_loader_batches_equal_the_full_copy_reader(tmp_path, augment):
    """The same seed gives bit-for-bit the same batches from the maps as from one array."""
    write_resized_folder(tmp_path / "s", n_shards=3, rows=40, size=16)
    mapped = read_images(tmp_path / "s")
    copied = in_memory(mapped)
    names = mapped.names[5:110]
    kw = {"batch_size": 16, "shuffle": True, "augment": augment, "seed": 3, "workers": 2}
    for epoch in (0, 1):
        a = list(Loader(mapped, names, **kw).iter_epoch(epoch))
        b = list(Loader(copied, names, **kw).iter_epoch(epoch))
        assert len(a) == len(b) == 7
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x.images, y.images) and torch.equal(x.targets, y.targets)


class MeanNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, len(PLANET.classes))
        torch.manual_seed(0)
        nn.init.normal_(self.head.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean(dim=(2, 3)))


def test_prediction_from_the_maps_equals_the_full_copy(tmp_path, monkeypatch):
    from planet.infer.predict import predict_split, read_probs
    from planet.store import sized as sized_module

    names, _ = write_resized_folder(tmp_path / "s", n_shards=3, rows=30, size=16, labelled=False)
    select = names[::-1][5:80]
    kw = {"classes": PLANET.classes, "task": "multi_label", "batch_size": 8, "part_size": 20}
    model = MeanNet()
    predict_split(model, tmp_path / "s", tmp_path / "mapped", select=select, **kw)
    full_copy = sized_module.read_images
    monkeypatch.setattr(sized_module, "read_images", lambda f: in_memory(full_copy(f)))
    predict_split(model, tmp_path / "s", tmp_path / "copied", select=select, **kw)
    got_names, mapped, _ = read_probs(tmp_path / "mapped")
    ref_names, copied, _ = read_probs(tmp_path / "copied")
    assert got_names == ref_names == select
    np.testing.assert_array_equal(mapped, copied)


# a fresh interpreter reads the folder and runs one epoch of the loader, sampling its resident
# memory: RssAnon (its own heap) and VmRSS (that plus the file pages it has mapped)
MEMORY_PROBE = """
import json, sys
import numpy as np
from planet.learn.loader import Loader
from planet.store.mapped import MappedPixels
from planet.store.sized import ImageData, read_images

def status():
    found = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key = line.split(":")[0]
            if key in ("RssAnon", "VmRSS"):
                found[key] = int(line.split()[1]) * 1024
    return found

folder, mode = sys.argv[1], sys.argv[2]
warm = read_images(folder)  # imports, allocator and torch warmed on a first, dropped read
for _ in Loader(warm, np.arange(64), batch_size=32):
    pass
del warm
start = status()
peak = dict(start)
data = read_images(folder)
if mode == "copy":  # the old reader: the whole folder in one array
    data = ImageData(data.names, np.asarray(data.images), data.labels, data.classes, None)
elif mode == "maps":  # batches copied from the maps instead of read from the files
    images = MappedPixels(data.images.pieces, data.images.shape[1:], read_files=False)
    data = ImageData(data.names, images, data.labels, data.classes, None)
n = 0
for images, _ in Loader(data, batch_size=32, shuffle=True, workers=1, prefetch=1):
    n += len(images)
    peak = {k: max(v, status()[k]) for k, v in peak.items()}
growth = {k: peak[k] - start[k] for k in start}
print(json.dumps({"anon": growth["RssAnon"], "rss": growth["VmRSS"], "images": n}))
"""


def peak_growth(folder: Path, mode: str) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(folder), mode],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # ~30 s: writes 240 MB and runs three epochs in fresh interpreters
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's RssAnon")
def test_an_epoch_over_a_multi_shard_folder_does_not_copy_it(tmp_path):
    """4 shards of ~60 MB: an epoch over the maps grows the process's own memory by well under
    half the folder, and its whole RSS too (batches are read from the files: the page cache
    holds the shards, not the process); the same epoch copying batches from the maps grows the
    RSS by most of the folder, and one over a full copy (the old reader) grows its own memory
    by the folder (so the measurement sees both)."""
    folder = tmp_path / "s"
    write_resized_folder(folder, n_shards=4, rows=1200, size=128, labelled=True)
    folder_bytes = sum(p.stat().st_size for p in folder.glob("*.parquet"))
    assert folder_bytes > 4 * 55 * 2**20
    mapped = peak_growth(folder, "map")
    assert mapped["images"] == 4800
    assert mapped["anon"] < folder_bytes / 2, (mapped, folder_bytes)
    assert mapped["rss"] < folder_bytes / 2, (mapped, folder_bytes)
    from_maps = peak_growth(folder, "maps")
    assert from_maps["anon"] < folder_bytes / 2, (from_maps, folder_bytes)
    assert from_maps["rss"] > 0.8 * folder_bytes, (from_maps, folder_bytes)
    copied = peak_growth(folder, "copy")
    assert copied["anon"] > 0.9 * folder_bytes, (copied, folder_bytes)


def test_batches_are_read_from_the_files_at_every_offset(tmp_path):
    """`take` reads runs of consecutive rows of each file-backed piece with pread: any order,
    repeats, runs across page and shard boundaries and a mix with pieces in memory give the
    same images as copying from the maps."""
    write_resized_folder(tmp_path / "s", n_shards=2, rows=360, size=128)  # 2 pages a shard
    images = read_images(tmp_path / "s").images
    assert images.mapped and len(images.pieces) == 4
    full = np.stack(list(images))  # views of the maps
    rng = np.random.default_rng(0)
    for idx in (np.arange(720), np.arange(719, -1, -1), rng.integers(0, 720, 500), np.array([7])):
        np.testing.assert_array_equal(images.take(idx), full[idx])
    in_memory = [np.array(p) if k % 2 else p for k, p in enumerate(images.pieces)]
    mixed = MappedPixels(in_memory, images.shape[1:])
    assert not mixed.mapped
    np.testing.assert_array_equal(mixed.take(np.arange(720)), full)
    np.testing.assert_array_equal(mixed[pick := rng.permutation(720)[:333]], full[pick])


def test_batches_read_without_preadv_are_the_same(tmp_path, monkeypatch):
    """Where the OS has no `os.preadv` (pread and a copy instead) the batches are the same."""
    from planet.store import mapped

    write_resized_folder(tmp_path / "s", n_shards=2, rows=30, size=16)
    images = read_images(tmp_path / "s").images
    idx = np.random.default_rng(1).integers(0, 60, 40)
    expected = images.take(idx)
    monkeypatch.setattr(mapped, "_PREADV", False)
    np.testing.assert_array_equal(images.take(idx), expected)
    np.testing.assert_array_equal(expected, np.stack([images[i] for i in idx]))


def test_a_shard_cut_short_after_reading_is_named(tmp_path):
    """A shard truncated under a reader: the batch that reaches past its end raises one
    OSError naming the file and what to do, not a crash (SIGBUS) or garbage."""
    write_resized_folder(tmp_path / "s", n_shards=2, rows=30, size=16)
    images = read_images(tmp_path / "s").images
    shard = tmp_path / "s" / shards.shard_name(1)
    first_shard = images.take([0, 29])
    os.truncate(shard, shard.stat().st_size // 2)
    np.testing.assert_array_equal(images.take([0, 29]), first_shard)  # the other shard reads
    with pytest.raises(OSError, match=rf"{shard}.*run the resize stage again"):
        images.take([59])


def test_the_batch_picture_from_the_maps_equals_the_full_copy(tmp_path):
    from planet.report.show import show_random_batch

    write_resized_folder(tmp_path / "s", n_shards=3, rows=20, size=16)
    data = read_images(tmp_path / "s")
    pictures = []
    for images, name in ((data.images, "mapped.png"), (np.asarray(data.images), "copy.png")):
        path, shown = show_random_batch(images, data.labels, PLANET.classes, tmp_path / name)
        assert shown == 16
        pictures.append(path.read_bytes())
    assert pictures[0] == pictures[1]
