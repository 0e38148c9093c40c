"""The sized-shard reader, the batch loader, batched augmentation and batch pictures."""

from __future__ import annotations

import io
import math
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from planet import resize
from planet.competitions import DOGS_VS_CATS, PLANET
from planet.constants import IMAGENET_MEAN, IMAGENET_STD
from planet.fileio import write_json_atomic
from planet.learn.augment import (
    Augment,
    AugmentDraw,
    augment_geometry,
    crop_boxes,
    dihedral,
    dihedral_inverse,
    lighting,
    lighting_table,
    to_model_input,
)
from planet.learn.loader import Loader
from planet.report.show import batch_png, png_data_uri, render_batch, show_batch, to_pixels
from planet.store import shards
from planet.store.labels import LabelTable
from planet.store.sized import DataError, read_images, read_sized, read_sized_manifest

MEAN = np.array(IMAGENET_MEAN, dtype=np.float32)
STD = np.array(IMAGENET_STD, dtype=np.float32)
N_BITS = 17  # Planet's label width: image i's label row is i written in binary


# ---------------------------------------------------------------------------------------------
# helpers


def write_sized(
    folder: Path,
    names: list[str],
    pixels: np.ndarray,
    labels: np.ndarray | None,
    classes: tuple[str, ...] | None,
    shard_rows: int = 1000,
    compression: str = "none",
) -> Path:
    """A sized shard folder like `planet.resize` writes: parquet parts + manifest.json
    (uncompressed plain pages, so `read_images` maps them; pass a `compression` for shards it
    must decode instead)."""
    n, size = len(names), pixels.shape[1]
    folder.mkdir(parents=True, exist_ok=True)
    kind = None
    if labels is not None:
        kind = "multi_hot" if labels.ndim == 2 else "class_index"
    records = []
    for part, start in enumerate(range(0, n, shard_rows)):
        stop = min(n, start + shard_rows)
        flat = pa.py_buffer(np.ascontiguousarray(pixels[start:stop]).tobytes())
        pix = pa.Array.from_buffers(pa.binary(size * size * 3), stop - start, [None, flat])
        if labels is None:
            lab = pa.nulls(stop - start)
        elif kind == "multi_hot":
            values = pa.array(labels[start:stop].astype(np.uint8).ravel(), pa.uint8())
            lab = pa.FixedSizeListArray.from_arrays(values, labels.shape[1])
        else:
            lab = pa.array(labels[start:stop].astype(np.int16), pa.int16())
        table = pa.table({"image_name": pa.array(names[start:stop]), "label": lab, "pixels": pix})
        name = shards.shard_name(part)
        pq.write_table(
            table, folder / name, compression=compression, use_dictionary=compression != "none"
        )
        records.append({"name": name, "rows": stop - start})
    manifest = {
        "format": resize.FORMAT,
        "format_version": resize.FORMAT_VERSION,
        "size": size,
        "count": n,
        "classes": list(classes) if classes else None,
        "label_kind": kind,
        "shards": records,
    }
    write_json_atomic(folder / "manifest.json", manifest)
    return folder


def id_images(n: int, size: int = 8) -> np.ndarray:
    """Constant images whose red and green values spell the image number (i = 256 g + r): a
    constant image stays constant under flips, transposes and zoom."""
    img = np.zeros((n, size, size, 3), dtype=np.uint8)
    img[..., 0] = (np.arange(n) % 256)[:, None, None]
    img[..., 1] = (np.arange(n) // 256)[:, None, None]
    img[..., 2] = 77
    return img


def id_labels(n: int) -> np.ndarray:
    """Image i's multi-hot row is i in binary (17 bits)."""
    return ((np.arange(n)[:, None] >> np.arange(N_BITS)) & 1).astype(np.uint8)


def pixels_of(x: torch.Tensor) -> np.ndarray:
    """Normalised float NCHW back to uint8-valued float NHWC (rounded)."""
    arr = x.numpy().transpose(0, 2, 3, 1)
    return np.rint((arr * STD + MEAN) * 255)


def ids_of_images(x: torch.Tensor) -> np.ndarray:
    px = pixels_of(x)
    return (px[:, 0, 0, 1] * 256 + px[:, 0, 0, 0]).astype(np.int64)


def ids_of_targets(y: torch.Tensor) -> np.ndarray:
    return (y.numpy().astype(np.int64) << np.arange(N_BITS)).sum(axis=1)


def id_data(tmp_path: Path, n: int = 100, shard_rows: int = 40):
    names = [f"train_{i}" for i in range(n)]
    folder = write_sized(
        tmp_path / "sized", names, id_images(n), id_labels(n), None, shard_rows=shard_rows
    )
    return read_images(folder)


def asymmetric(size: int = 6) -> torch.Tensor:
    """A (1, 3, size, size) image with no symmetry (distinct values everywhere)."""
    return torch.arange(3 * size * size, dtype=torch.float32).view(1, 3, size, size)


def loader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("planet-loader-")]


# ---------------------------------------------------------------------------------------------
# reading


def test_read_images_multi_shard_planet(tmp_path):
    rng = np.random.default_rng(0)
    n = 23
    pixels = rng.integers(0, 256, (n, 10, 10, 3), dtype=np.uint8)
    labels = rng.integers(0, 2, (n, 17), dtype=np.uint8)
    names = [f"train_{i}" for i in range(n)]
    folder = write_sized(tmp_path / "s", names, pixels, labels, PLANET.classes, shard_rows=7)
    data = read_images(folder)
    assert data.names == names
    assert data.images.shape == (n, 10, 10, 3) and data.images.dtype == np.uint8
    np.testing.assert_array_equal(data.images, pixels)
    assert data.labels.dtype == np.float32 and data.labels.shape == (n, 17)
    np.testing.assert_array_equal(data.labels, labels)
    assert data.classes == PLANET.classes and data.label_kind == "multi_hot"
    assert data.size == 10 and len(data) == n


@pytest.mark.parametrize("shard_rows", [5, 2])
def test_read_images_views_the_files(tmp_path, shard_rows):
    """One shard or several: the pixels are views of the shard files, not copies."""
    pixels = np.random.default_rng(1).integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    names = [f"t{i}" for i in range(5)]
    folder = write_sized(tmp_path / "s", names, pixels, None, None, shard_rows=shard_rows)
    data = read_images(folder)
    assert data.images.mapped and len(data.images.pieces) == math.ceil(5 / shard_rows)
    assert all(not p.flags.owndata and not p.flags.writeable for p in data.images.pieces)
    np.testing.assert_array_equal(data.images, pixels)
    assert data.labels is None and data.label_kind is None and data.classes == ()


def test_read_images_decodes_compressed_shards(tmp_path):
    pixels = np.random.default_rng(2).integers(0, 256, (7, 4, 4, 3), dtype=np.uint8)
    names = [f"t{i}" for i in range(7)]
    folder = write_sized(tmp_path / "s", names, pixels, None, None, 3, compression="snappy")
    data = read_images(folder)
    assert not data.images.mapped
    np.testing.assert_array_equal(data.images, pixels)
    np.testing.assert_array_equal(read_sized(folder).pixels, pixels)


def test_read_images_class_index(tmp_path):
    names = ["cat.0", "dog.0", "dog.1"]
    folder = write_sized(
        tmp_path / "s", names, id_images(3), np.array([0, 1, 1]), DOGS_VS_CATS.classes
    )
    data = read_images(folder)
    assert data.labels.dtype == np.int64
    np.testing.assert_array_equal(data.labels, [0, 1, 1])
    assert data.label_kind == "class_index" and data.classes == ("cat", "dog")


def test_read_images_errors(tmp_path):
    with pytest.raises(shards.ShardError, match="resize"):
        read_images(tmp_path / "missing")
    folder = write_sized(tmp_path / "s", ["a", "b"], id_images(2), None, None)
    manifest = read_sized_manifest(folder)
    write_json_atomic(folder / "manifest.json", {**manifest, "count": 3})
    with pytest.raises(DataError, match="3"):
        read_images(folder)


def test_read_images_on_real_resize_output(tmp_path):
    """The reader against `planet.resize.resize_split`'s own output (and its reader)."""
    from planet.synthetic.planet_amazon import make_texture_bank, render_jpeg, sample_labels

    rng = np.random.default_rng(3)
    bank = make_texture_bank(rng)
    n = 10
    y = sample_labels(n, rng).astype(np.uint8)
    names = [f"train_{i}" for i in range(n)]
    jpegs = [render_jpeg(y[i], rng, bank) for i in range(n)]
    original = tmp_path / "original"
    records = [
        shards.write_shard(original / shards.shard_name(j), shards.image_table(nm, jp))
        for j, (nm, jp) in enumerate([(names[:6], jpegs[:6]), (names[6:], jpegs[6:])])
    ]
    shards.write_manifest(
        original,
        {
            "format": shards.FORMAT,
            "format_version": shards.FORMAT_VERSION,
            "split": "train",
            "count": n,
            "shards": records,
        },
    )
    sized = tmp_path / "32"
    table = LabelTable(names, y, "multi_hot", PLANET.classes)
    resize.resize_split(original, sized, 32, table)
    data = read_images(sized)
    ref = read_sized(sized)
    assert data.names == ref.names == names
    np.testing.assert_array_equal(data.images, ref.pixels)
    np.testing.assert_array_equal(data.labels, y)
    assert data.label_kind == "multi_hot" and data.classes == PLANET.classes
    batch = next(iter(Loader(data, batch_size=4, augment=Augment())))
    assert batch.images.shape == (4, 3, 32, 32) and batch.targets.shape == (4, 17)


def test_indices_select_by_names_mask_and_positions(tmp_path):
    data = id_data(tmp_path, n=10)
    np.testing.assert_array_equal(data.indices(["train_3", "train_1"]), [3, 1])
    mask = np.zeros(10, dtype=bool)
    mask[[2, 5]] = True
    np.testing.assert_array_equal(data.indices(mask), [2, 5])
    np.testing.assert_array_equal(data.indices(np.array([7, 0])), [7, 0])
    np.testing.assert_array_equal(data.indices(None), np.arange(10))
    with pytest.raises(KeyError, match="nope"):
        data.indices(["train_1", "nope"])
    with pytest.raises(ValueError, match="mask"):
        data.indices(np.zeros(3, dtype=bool))
    with pytest.raises(IndexError):
        data.indices(np.array([10]))
    sub = data.subset(["train_4", "train_2"])
    assert sub.names == ["train_4", "train_2"]
    np.testing.assert_array_equal(sub.images, data.images[[4, 2]])
    np.testing.assert_array_equal(sub.labels, data.labels[[4, 2]])


# ---------------------------------------------------------------------------------------------
# the loader


def test_batches_shapes_dtypes_and_normalisation(tmp_path):
    data = id_data(tmp_path, n=10)
    batches = list(Loader(data, batch_size=4))
    assert [len(b.images) for b in batches] == [4, 4, 2]
    x, y = batches[0]
    assert x.shape == (4, 3, 8, 8) and x.dtype == torch.float32 and x.is_contiguous()
    assert y.shape == (4, 17) and y.dtype == torch.float32
    # a constant image of value v maps to (v / 255 - mean) / std, channel by channel
    expected = (np.array([2, 0, 77]) / 255 - MEAN) / STD
    np.testing.assert_allclose(x[2].mean(dim=(1, 2)).numpy(), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(x[2].std(dim=(1, 2)).numpy(), 0, atol=1e-6)


def test_class_index_targets_and_unlabelled_split(tmp_path):
    folder = write_sized(
        tmp_path / "d", ["cat.0", "dog.0", "dog.1"], id_images(3), np.array([0, 1, 1]), None
    )
    x, y = next(iter(Loader(read_images(folder), batch_size=3)))
    assert y.dtype == torch.int64 and y.tolist() == [0, 1, 1]
    folder = write_sized(tmp_path / "t", ["1", "2"], id_images(2), None, None)
    batch = next(iter(Loader(read_images(folder), batch_size=8, augment=Augment())))
    assert batch.images.shape == (2, 3, 8, 8) and batch.targets is None


@pytest.mark.parametrize("workers", [1, 3])
def test_targets_stay_with_their_images_through_shuffle_and_augmentation(tmp_path, workers):
    data = id_data(tmp_path, n=100)
    loader = Loader(
        data,
        batch_size=16,
        shuffle=True,
        augment=Augment(max_lighting=0.0),  # flips, transposes and zoom keep constant images
        workers=workers,
        seed=5,
    )
    seen = []
    for x, y in loader:
        ids = ids_of_images(x)
        np.testing.assert_array_equal(ids, ids_of_targets(y))
        seen.append(ids)
    order = np.concatenate(seen)
    assert sorted(order.tolist()) == list(range(100))  # every image exactly once
    assert order.tolist() != list(range(100))  # and shuffled


def test_drop_last_and_len(tmp_path):
    data = id_data(tmp_path, n=100)
    keep = Loader(data, batch_size=16, shuffle=True)
    drop = Loader(data, batch_size=16, shuffle=True, drop_last=True)
    assert len(keep) == 7 and len(drop) == 6
    sizes = [len(x) for x, _ in drop]
    assert sizes == [16] * 6
    ids = np.concatenate([ids_of_targets(y) for _, y in drop])
    assert len(set(ids.tolist())) == 96  # distinct images, the last 4 of the order dropped
    assert sum(len(x) for x, _ in keep) == 100
    exact = Loader(data, batch_size=20, drop_last=True)
    assert len(exact) == 5 and sum(len(x) for x, _ in exact) == 100


def test_shuffle_is_seeded_per_epoch(tmp_path):
    data = id_data(tmp_path, n=100)

    def order(seed: int, epoch: int) -> list[int]:
        loader = Loader(data, batch_size=32, shuffle=True, seed=seed)
        return np.concatenate([ids_of_targets(y) for _, y in loader.iter_epoch(epoch)]).tolist()

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1)
    assert order(1, 0) != order(2, 0)
    loader = Loader(data, batch_size=32, shuffle=True, seed=1)
    first = [ids_of_targets(y).tolist() for _, y in loader]  # epoch 0, then epoch 1
    second = [ids_of_targets(y).tolist() for _, y in loader]
    assert sum(first, []) == order(1, 0) and sum(second, []) == order(1, 1)
    assert loader.epoch == 2
    loader.set_epoch(0)
    assert sum([ids_of_targets(y).tolist() for _, y in loader], []) == order(1, 0)


def test_augmented_batches_reproduce_for_seed_and_epoch(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    folder = write_sized(tmp_path / "s", [f"i{i}" for i in range(40)], pixels, None, None)
    data = read_images(folder)

    def run(seed: int, epoch: int, workers: int) -> list[torch.Tensor]:
        loader = Loader(
            data, batch_size=16, shuffle=True, augment=Augment(), seed=seed, workers=workers
        )
        return [x for x, _ in loader.iter_epoch(epoch)]

    a, b, c = run(0, 3, 1), run(0, 3, 2), run(0, 4, 1)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))  # any number of workers
    assert not all(torch.equal(p, q) for p, q in zip(a, c, strict=True))


def test_valid_and_test_order_is_deterministic(tmp_path):
    data = id_data(tmp_path, n=50)
    names = [f"train_{i}" for i in (40, 3, 17, 8, 25)]
    loader = Loader(data, names, batch_size=2)
    for _ in range(2):
        ids = np.concatenate([ids_of_targets(y) for _, y in loader]).tolist()
        assert ids == [40, 3, 17, 8, 25]
        assert np.concatenate([ids_of_images(x) for x, _ in loader]).tolist() == ids
    mask = np.arange(50) % 10 == 0
    ids = np.concatenate([ids_of_targets(y) for _, y in Loader(data, mask, batch_size=3)])
    assert ids.tolist() == [0, 10, 20, 30, 40]


def test_channels_last_output(tmp_path):
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, (6, 12, 12, 3), dtype=np.uint8)
    folder = write_sized(tmp_path / "s", [f"i{i}" for i in range(6)], pixels, None, None)
    data = read_images(folder)
    for augment in (None, Augment()):
        plain = next(iter(Loader(data, batch_size=6, augment=augment)))
        cl = next(iter(Loader(data, batch_size=6, augment=augment, channels_last=True)))
        assert cl.images.shape == (6, 3, 12, 12)
        assert cl.images.is_contiguous(memory_format=torch.channels_last)
        assert not cl.images.is_contiguous()
        assert torch.equal(plain.images, cl.images)


def test_early_stop_ends_the_worker_threads(tmp_path):
    data = id_data(tmp_path, n=100)
    loader = Loader(data, batch_size=4, shuffle=True, augment=Augment(), workers=2, prefetch=1)
    it = iter(loader)
    next(it)
    assert loader_threads()  # the workers are running, blocked on their full queues
    it.close()  # what `break` out of a for loop leads to once the iterator is dropped
    for t in loader_threads():
        t.join(timeout=10)
    assert not loader_threads()
    for _ in loader:  # and the loader still works afterwards
        break


def test_worker_errors_reach_the_consumer(tmp_path, monkeypatch):
    data = id_data(tmp_path, n=20)

    def broken(self, n, generator):
        raise RuntimeError("draw failed")

    monkeypatch.setattr(Augment, "draw", broken)
    with pytest.raises(RuntimeError, match="draw failed"):
        list(Loader(data, batch_size=4, augment=Augment(), workers=2))
    deadline = time.monotonic() + 10
    while loader_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not loader_threads()


# ---------------------------------------------------------------------------------------------
# augmentation


def test_dihedral_matches_numpy_and_forms_the_group():
    x = asymmetric()
    img = x[0].numpy()  # (C, H, W)
    refs = [
        img,
        img[:, :, ::-1],  # flip left-right
        img[:, ::-1, :],  # flip top-bottom
        np.rot90(img, 2, axes=(1, 2)),
        img.transpose(0, 2, 1),
        np.rot90(img, -1, axes=(1, 2)),  # clockwise
        np.rot90(img, 1, axes=(1, 2)),  # counter-clockwise
        img[:, ::-1, ::-1].transpose(0, 2, 1),  # anti-transpose
    ]
    outs = [dihedral(x, k) for k in range(8)]
    for k in range(8):
        np.testing.assert_array_equal(outs[k][0].numpy(), refs[k], err_msg=f"k={k}")
    assert len({o.numpy().tobytes() for o in outs}) == 8  # 8 distinct symmetries
    for a in range(8):
        for b in range(8):
            composed = dihedral(dihedral(x, a), b)
            assert any(torch.equal(composed, o) for o in outs), (a, b)  # closed
        assert torch.equal(dihedral(dihedral(x, a), dihedral_inverse(a)), x)  # inverses
    with pytest.raises(ValueError):
        dihedral(x, 8)


def test_batched_dihedral_is_exact_per_sample():
    n, size = 24, 9
    x = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8)
    k = torch.arange(n) % 8
    draw = AugmentDraw(k, torch.ones(n), torch.rand(n, 2), torch.full((n,), 0.5), torch.ones(n))
    out = augment_geometry(x, draw)
    assert out.shape == (n, 3, size, size) and out.dtype == torch.uint8
    for i in range(n):
        assert torch.equal(out[i], dihedral(x[i].permute(2, 0, 1), int(k[i]))), i


def test_zoom_is_a_crop_resized_back():
    n, size = 32, 20
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=gen)
    k = torch.randint(0, 8, (n,), generator=gen)
    scale = 1 + 0.3 * torch.rand(n, generator=gen)
    centre = torch.rand(n, 2, generator=gen)
    draw = AugmentDraw(k, scale, centre, torch.full((n,), 0.5), torch.ones(n))
    out = augment_geometry(x, draw)
    side, y0, x0 = crop_boxes(scale, centre, size)
    assert len(set(side.tolist())) > 2  # several crop sides in one batch
    assert bool(((y0 >= 0) & (x0 >= 0) & (y0 + side <= size) & (x0 + side <= size)).all())
    for i in range(n):
        c, a, b = int(side[i]), int(y0[i]), int(x0[i])
        assert math.isclose(c, size / float(scale[i]), abs_tol=0.5)
        crop = x[i : i + 1, a : a + c, b : b + c].permute(0, 3, 1, 2)
        ref = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)
        assert torch.equal(out[i], dihedral(ref[0], int(k[i]))), i


def test_augment_draw_ranges():
    aug = Augment()
    d = aug.draw(4000, torch.Generator().manual_seed(0))
    assert d.k.min() == 0 and d.k.max() == 7
    assert bool(((d.scale >= 1) & (d.scale <= 1.05)).all())
    assert bool(((d.change >= 0.45) & (d.change <= 0.55)).all())
    assert bool(((d.contrast >= 0.9 - 1e-6) & (d.contrast <= 1 / 0.9 + 1e-6)).all())
    for p_neutral in ((d.scale == 1).float().mean(), (d.change == 0.5).float().mean()):
        assert 0.2 < float(p_neutral) < 0.3  # p = 0.75 of being drawn
    off = Augment(dihedral=False, max_lighting=0.0, max_zoom=1.0).draw(50, torch.Generator())
    assert bool((off.k == 0).all() and (off.scale == 1).all())
    assert bool((off.change == 0.5).all() and (off.contrast == 1).all())
    with pytest.raises(ValueError):
        Augment(max_zoom=0.9)


def test_without_zoom_and_lighting_only_the_symmetries_remain():
    n, size = 16, 10
    x = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8)
    plain = to_model_input(x)
    d = Augment(dihedral=False, max_lighting=0.0, max_zoom=1.0).draw(n, torch.Generator())
    torch.testing.assert_close(to_model_input(x, d), plain, rtol=0, atol=1e-6)
    d = Augment(max_lighting=0.0, max_zoom=1.0).draw(n, torch.Generator().manual_seed(1))
    out = to_model_input(x, d)
    for i in range(n):
        torch.testing.assert_close(out[i], dihedral(plain[i], int(d.k[i])), rtol=0, atol=1e-6)


def test_lighting_table_applies_fastai_logit_lighting():
    n, size = 12, 8
    x = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8)
    d = Augment(dihedral=False, max_zoom=1.0, p_lighting=1.0).draw(
        n, torch.Generator().manual_seed(2)
    )
    out = to_model_input(x, d)
    ref = lighting(x.permute(0, 3, 1, 2).double() / 255, d.change.double(), d.contrast.double())
    m = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    s = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
    torch.testing.assert_close(out.double(), (ref - m) / s, rtol=0, atol=1e-5)
    table = lighting_table(torch.tensor([0.5]), torch.tensor([1.0]))
    expected = (np.arange(256)[None] / 255 - MEAN[:, None]) / STD[:, None]
    np.testing.assert_allclose(table[0].numpy(), expected, atol=1e-6)  # neutral: plain


def test_lighting_moves_brightness_within_the_fastai_bound():
    n, size = 400, 4
    grey = torch.full((n, size, size, 3), 128, dtype=torch.uint8)
    d = Augment(dihedral=False, max_zoom=1.0).draw(n, torch.Generator().manual_seed(3))
    out = pixels_of(to_model_input(grey, d)).mean(axis=(1, 2, 3)) / 255
    # sigmoid(scale * (logit(p) + logit(change))), change in [0.45, 0.55], scale <= 1/0.9
    p = 128 / 255
    lo = 1 / (1 + math.exp(-(math.log(p / (1 - p)) + math.log(0.45 / 0.55)) / 0.9))
    hi = 1 / (1 + math.exp(-(math.log(p / (1 - p)) + math.log(0.55 / 0.45)) / 0.9))
    assert lo - 1 / 255 <= out.min() and out.max() <= hi + 1 / 255
    changed = np.abs(out - p) > 1.5 / 255
    assert 0.5 < changed.mean() < 1.0  # most samples are lit, some are left alone
    assert out.max() - out.min() > 0.05  # and the spread reaches towards the bound


def test_torchvision_v2_draws_once_per_batch():
    """Why planet.learn.augment does not use transforms.v2 for per-sample augmentation."""
    from torchvision.transforms import v2

    torch.manual_seed(0)
    x = torch.arange(64 * 3 * 4 * 4, dtype=torch.float32).view(64, 3, 4, 4)
    for _ in range(5):
        flipped = (v2.RandomHorizontalFlip()(x) != x).flatten(1).any(dim=1)
        assert bool(flipped.all()) or not bool(flipped.any())  # all or none, never some
    grey = 0.1 + 0.4 * x / x.max()  # no clipping at 0 or 1 for factors in [0.9, 1.1]
    ratio = (v2.ColorJitter(brightness=0.1)(grey) / grey).flatten(1)
    torch.testing.assert_close(ratio, ratio[:1].expand_as(ratio))  # one factor for all


# ---------------------------------------------------------------------------------------------
# pictures of a batch


def _png(data: bytes) -> Image.Image:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def test_show_batch_writes_a_grid_png(tmp_path):
    n, ncols, size = 7, 3, 32
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]
    colours += [(200, 30, 200), (30, 200, 200), (120, 60, 10)]
    images = np.zeros((n, size, size, 3), dtype=np.uint8)
    for i, c in enumerate(colours):
        images[i] = c
    labels = np.zeros((n, 17), dtype=np.uint8)
    labels[:, PLANET.classes.index("clear")] = 1
    path = show_batch(images, labels, PLANET.classes, tmp_path / "b.png", ncols=ncols, title="t")
    im = np.asarray(_png(path.read_bytes()).convert("RGB"))
    boxes = []
    for c in colours:
        ys, xs = np.nonzero((im == c).all(axis=2))
        assert len(ys), c
        boxes.append((ys.min(), xs.min(), ys.max() - ys.min() + 1, xs.max() - xs.min() + 1))
    tile = max(size, 128)
    assert all(h == tile and w == tile for _, _, h, w in boxes)  # enlarged to 128 px
    tops = sorted({y for y, _, _, _ in boxes})
    lefts = sorted({x for _, x, _, _ in boxes})
    assert len(tops) == math.ceil(n / ncols) and len(lefts) == ncols
    for i, (y, x, _, _) in enumerate(boxes):  # row-major order
        assert (tops.index(y), lefts.index(x)) == divmod(i, ncols)
    assert not list(tmp_path.glob(".tmp-*"))  # written atomically


def test_batch_png_from_a_loader_batch(tmp_path):
    folder = write_sized(
        tmp_path / "d", ["cat.0", "dog.0"], id_images(2, size=16), np.array([0, 1]), None
    )
    batch = next(iter(Loader(read_images(folder), batch_size=2)))
    pix = to_pixels(batch.images)
    np.testing.assert_array_equal(pix, id_images(2, size=16))  # normalisation undone
    data = batch_png(batch, None, DOGS_VS_CATS.classes, ncols=4, tile=48)
    im = _png(data)
    assert im.width == 6 + 2 * (48 + 6)  # two tiles of 48 px, 6 px apart and around
    assert png_data_uri(data).startswith("data:image/png;base64,")
    grid = render_batch(batch, None, DOGS_VS_CATS.classes)
    assert grid.size[0] > im.width
