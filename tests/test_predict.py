"""Predictions: TTA over the 8 symmetries, fast.ai's beta mix, activations by task, and
resumable, parted `predict_split` output."""

from __future__ import annotations

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
from planet.infer.predict import predict_split, predictions_complete, read_probs
from planet.infer.tta import predict_probs, state_dict_sha256
from planet.learn.augment import dihedral, to_model_input
from planet.store import shards

SIZE = 8
CLASSES = ("cat", "dog", "other")


@pytest.fixture(autouse=True)
def _fp32_on_the_cpu(monkeypatch):
    """These tests check TTA's arithmetic to 1e-6: in fp32, also on a CPU where `auto` would
    pick bf16 (the precisions are tests/test_precision.py's)."""
    from planet.learn import precision

    monkeypatch.setattr(precision, "CPU_AUTO_BF16", False)


# ---------------------------------------------------------------------------------------------
# helpers


def write_sized(folder: Path, names: list[str], pixels: np.ndarray, shard_rows: int) -> Path:
    """An unlabelled (test split) sized shard folder with `planet.resize`'s schema and
    manifest fields that the readers use."""
    folder.mkdir(parents=True, exist_ok=True)
    size = pixels.shape[1]
    pix_type = pa.binary(size * size * 3)
    schema = pa.schema(
        [
            pa.field("image_name", pa.string(), nullable=False),
            pa.field("label", pa.null()),
            pa.field("pixels", pix_type, nullable=False),
        ]
    )
    records = []
    for part, start in enumerate(range(0, len(names), shard_rows)):
        stop = min(len(names), start + shard_rows)
        buf = pa.py_buffer(np.ascontiguousarray(pixels[start:stop]).tobytes())
        table = pa.Table.from_arrays(
            [
                pa.array(names[start:stop], pa.string()),
                pa.nulls(stop - start),
                pa.FixedSizeBinaryArray.from_buffers(pix_type, stop - start, [None, buf]),
            ],
            schema=schema,
        )
        name = shards.shard_name(part)
        pq.write_table(table, folder / name, compression="none")
        records.append({"name": name, "rows": stop - start})
    manifest = {
        "format": resize.FORMAT,
        "format_version": resize.FORMAT_VERSION,
        "size": size,
        "count": len(names),
        "classes": None,
        "label_kind": None,
        "shards": records,
    }
    write_json_atomic(folder / "manifest.json", manifest)
    return folder


@pytest.fixture
def sized(tmp_path: Path) -> tuple[Path, list[str], np.ndarray]:
    n = 21
    pixels = np.random.default_rng(0).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
    names = [f"img_{i}" for i in range(n)]
    return write_sized(tmp_path / "sized", names, pixels, shard_rows=8), names, pixels


class FlatNet(nn.Module):
    """A conv and a linear layer on the flattened map: not invariant to any symmetry."""

    def __init__(self, classes: int = len(CLASSES), size: int = SIZE) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * size * size, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class PoolNet(nn.Module):
    """1x1 conv, global average pool, linear: invariant to the symmetries of the square."""

    def __init__(self, classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 1)
        self.fc = nn.Linear(5, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


class Killer(nn.Module):
    """Wraps a model; raises after `limit` forward calls (a run killed midway)."""

    def __init__(self, model: nn.Module, limit: int) -> None:
        super().__init__()
        self.model = model
        self.limit = limit
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calls >= self.limit:
            raise RuntimeError("killed")
        self.calls += 1
        return self.model(x)


def model(cls: type[nn.Module] = FlatNet, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return cls()


def batch(n: int = 5, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# ---------------------------------------------------------------------------------------------
# predict_probs


def test_tta_is_the_mean_over_the_8_symmetries():
    m, x = model(FlatNet), batch()
    plain = predict_probs(m, x, "multi_label", tta=False)
    tta = predict_probs(m, x, "multi_label", tta=True)
    views = torch.stack([torch.sigmoid(m(dihedral(x, k))) for k in range(8)])
    assert tta.dtype == torch.float32 and tta.shape == (5, 3)
    torch.testing.assert_close(plain, torch.sigmoid(m(x)).detach(), rtol=0, atol=0)
    torch.testing.assert_close(tta, views.mean(0).detach(), rtol=0, atol=1e-6)
    assert not torch.allclose(tta, plain, atol=1e-4)


def test_tta_of_an_invariant_model_is_the_plain_prediction():
    m, x = model(PoolNet), batch()
    for task in ("multi_label", "single_label"):
        plain = predict_probs(m, x, task, tta=False)
        torch.testing.assert_close(predict_probs(m, x, task, tta=True), plain, rtol=0, atol=1e-6)


def test_beta_mixes_plain_with_the_7_other_symmetries():
    m, x = model(FlatNet), batch()
    views = torch.stack([torch.softmax(m(dihedral(x, k)), dim=1) for k in range(8)]).detach()
    mixed = predict_probs(m, x, "single_label", tta=True, beta=0.4)
    torch.testing.assert_close(mixed, 0.4 * views[0] + 0.6 * views[1:].mean(0), atol=1e-6, rtol=0)
    eighth = predict_probs(m, x, "single_label", tta=True, beta=1 / 8)
    torch.testing.assert_close(eighth, predict_probs(m, x, "single_label"), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        predict_probs(m, x, "single_label", beta=1.0), views[0], atol=0, rtol=0
    )
    with pytest.raises(ValueError, match="tta"):
        predict_probs(m, x, "single_label", tta=False, beta=0.4)
    with pytest.raises(ValueError, match="beta"):
        predict_probs(m, x, "single_label", beta=1.5)


def test_activation_follows_the_task():
    m, x = model(FlatNet), batch()
    logits = m(x).detach()
    sig = predict_probs(m, x, "multi_label", tta=False)
    soft = predict_probs(m, x, "single_label", tta=False)
    torch.testing.assert_close(sig, torch.sigmoid(logits))
    torch.testing.assert_close(soft, torch.softmax(logits, dim=1))
    torch.testing.assert_close(soft.sum(1), torch.ones(5))
    torch.testing.assert_close(predict_probs(m, x, "single_label").sum(1), torch.ones(5))
    assert not torch.allclose(sig.sum(1), torch.ones(5))
    with pytest.raises(ValueError, match="task"):
        predict_probs(m, x, "regression")  # type: ignore[arg-type]


def test_eval_mode_during_prediction_and_mode_restored():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(3 * SIZE * SIZE, 2))
    m.train()
    x = batch()
    a = predict_probs(m, x, "single_label", tta=False)
    b = predict_probs(m, x, "single_label", tta=False)
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # no dropout: eval mode
    assert m.training
    assert not a.requires_grad


# ---------------------------------------------------------------------------------------------
# predict_split


def test_predict_split_writes_probs_in_select_order(sized, tmp_path):
    folder, names, pixels = sized
    m = model(FlatNet)
    select = [names[i] for i in (20, 3, 7, 0, 11, 16, 9)]
    calls: list[tuple[int, int]] = []
    out = tmp_path / "pred"
    manifest = predict_split(
        m,
        folder,
        out,
        classes=CLASSES,
        task="single_label",
        batch_size=3,
        select=select,
        part_size=4,
        progress=lambda done, total: calls.append((done, total)),
        settings={"bundle_sha256": "abc"},
    )
    table = pq.read_table(out / "probs.parquet")
    assert table.column_names == ["image_name", *CLASSES]
    assert table.schema.field("image_name").type == pa.string()
    assert all(table.schema.field(c).type == pa.float32() for c in CLASSES)
    got_names, probs, classes = read_probs(out)
    assert got_names == select and classes == CLASSES
    assert probs.dtype == np.float32 and probs.shape == (len(select), len(CLASSES))
    idx = [names.index(s) for s in select]
    x = to_model_input(torch.from_numpy(pixels[idx]))
    direct = predict_probs(m, x, "single_label").numpy()
    np.testing.assert_allclose(probs, direct, rtol=0, atol=1e-6)
    assert manifest["count"] == len(select) and manifest["classes"] == list(CLASSES)
    assert manifest["task"] == "single_label" and manifest["tta"] is True
    assert manifest["beta"] is None and manifest["settings"] == {"bundle_sha256": "abc"}
    assert manifest["parts_computed"] == 2 and manifest["parts_reused"] == 0
    assert manifest["reused"] is False
    assert calls[-1] == (len(select), len(select))
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)
    assert listing(out) == {"probs.parquet", "manifest.json", ".lock"}  # no parts, no temps
    _, whole, _ = read_probs(out / "probs.parquet")
    np.testing.assert_array_equal(whole, probs)


def test_predict_split_whole_folder_multi_label(sized, tmp_path):
    folder, names, pixels = sized
    torch.manual_seed(3)
    m = FlatNet(classes=len(PLANET.classes))
    out = tmp_path / "pred"
    predict_split(m, folder, out, classes=PLANET.classes, task="multi_label", tta=False)
    got, probs, classes = read_probs(out)
    assert got == names and classes == PLANET.classes
    direct = predict_probs(m, to_model_input(torch.from_numpy(pixels)), "multi_label", tta=False)
    np.testing.assert_allclose(probs, direct.numpy(), rtol=0, atol=1e-6)


def test_resume_after_a_kill_reuses_finished_parts(sized, tmp_path):
    folder, names, _ = sized
    m = model(FlatNet)
    kw = dict(classes=CLASSES, task="multi_label", batch_size=3, part_size=8, beta=0.4)
    settings = {"bundle_sha256": "aaa"}
    ref = tmp_path / "ref"
    predict_split(m, folder, ref, settings=settings, **kw)

    out = tmp_path / "pred"
    # part 0 is 3 batches of 8 views: die in the second part's first batch
    with pytest.raises(RuntimeError, match="killed"):
        predict_split(Killer(m, 3 * 8 + 5), folder, out, settings=settings, **kw)
    assert not (out / "manifest.json").exists() and not (out / "probs.parquet").exists()
    assert sorted(p.name for p in (out / "parts").glob("part-*")) == ["part-00000.parquet"]
    assert not predictions_complete(out, settings)

    manifest = predict_split(m, folder, out, settings=settings, **kw)
    assert manifest["parts_reused"] == 1 and manifest["parts_computed"] == 2
    assert pq.read_table(out / "probs.parquet").equals(pq.read_table(ref / "probs.parquet"))
    a, b = read_probs(out)[1], read_probs(ref)[1]
    assert a.tobytes() == b.tobytes()  # bitwise
    assert listing(out) == {"probs.parquet", "manifest.json", ".lock"}


def test_changed_settings_recompute_everything(sized, tmp_path):
    folder, _, _ = sized
    m = model(FlatNet)
    kw = dict(classes=CLASSES, task="multi_label", batch_size=4, part_size=8)
    out = tmp_path / "pred"
    with pytest.raises(RuntimeError, match="killed"):
        predict_split(Killer(m, 2 * 8 + 1), folder, out, settings={"bundle_sha256": "a"}, **kw)
    assert (out / "parts" / "part-00000.parquet").is_file()
    other = predict_split(m, folder, out, settings={"bundle_sha256": "b"}, **kw)
    assert other["parts_reused"] == 0 and other["parts_computed"] == 3
    assert predictions_complete(out, {"bundle_sha256": "b"})
    assert not predictions_complete(out, {"bundle_sha256": "a"})
    # a finished output with other settings is recomputed too
    again = predict_split(m, folder, out, settings={"bundle_sha256": "c"}, **kw)
    assert again["reused"] is False and again["parts_computed"] == 3


def test_complete_output_is_returned_without_computing(sized, tmp_path):
    folder, _, _ = sized
    m = model(FlatNet)
    settings = {"bundle_sha256": state_dict_sha256(m)}
    kw = dict(classes=CLASSES, task="single_label", part_size=8, settings=settings)
    out = tmp_path / "pred"
    first = predict_split(m, folder, out, **kw)
    assert predictions_complete(out, settings, tta=True, beta=None, task="single_label")
    assert not predictions_complete(out, settings, tta=False)
    second = predict_split(Killer(m, 0), folder, out, **kw)  # any forward would raise
    assert second["reused"] is True and second["parts_computed"] == 0
    assert second["probs"] == first["probs"]
    # another TTA choice is another config: computed again
    with pytest.raises(RuntimeError, match="killed"):
        predict_split(Killer(m, 0), folder, out, tta=False, **kw)
    # a damaged probs file is not complete
    predict_split(m, folder, out, **kw)
    (out / "probs.parquet").write_bytes(b"not parquet")
    assert not predictions_complete(out, settings)


def test_state_dict_sha256_follows_the_weights():
    a, b = model(FlatNet, seed=0), model(FlatNet, seed=0)
    assert state_dict_sha256(a) == state_dict_sha256(b)
    with torch.no_grad():
        b.fc.bias[0] += 1
    assert state_dict_sha256(a) != state_dict_sha256(b)


def test_predict_split_errors(sized, tmp_path):
    folder, names, _ = sized
    m = model(FlatNet)
    kw = dict(classes=CLASSES, task="single_label")
    with pytest.raises(KeyError, match="nope"):
        predict_split(m, folder, tmp_path / "a", select=["img_0", "nope"], **kw)
    with pytest.raises(ValueError, match="more than once"):
        predict_split(m, folder, tmp_path / "b", select=["img_0", "img_0"], **kw)
    with pytest.raises(ValueError, match="classes"):
        predict_split(m, folder, tmp_path / "c", classes=("a", "b"), task="single_label")
    with pytest.raises(ValueError, match="distinct"):
        predict_split(m, folder, tmp_path / "d", classes=("a", "a", "b"), task="single_label")


def test_empty_selection_writes_an_empty_table(sized, tmp_path):
    folder, _, _ = sized
    out = tmp_path / "pred"
    manifest = predict_split(
        model(FlatNet), folder, out, select=[], classes=CLASSES, task="multi_label"
    )
    names, probs, classes = read_probs(out)
    assert manifest["count"] == 0 and names == [] and probs.shape == (0, 3) and classes == CLASSES
