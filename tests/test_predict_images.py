"""Predicting new imagery: sources (folder, zip, tar, tar.7z, shards), decoding (JPEG, PNG,
TIFF), bad files, the CSV (Planet and Dogs vs Cats, with probabilities), the drop folder's seen
index and the `predict-images` flow. The models are untrained (random weights): what is
checked is that the same pixels give the same answer whatever holds them, and what the run's
settings do. tests/test_predict_images_run.py checks the answers against a submission."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import simplejpeg
from PIL import Image

from flows.cli import main
from planet.competitions import DOGS_VS_CATS, PLANET
from planet.constants import IMAGENET_MEAN, IMAGENET_STD
from planet.infer.image_source import BadFile, SourceError, SourceImage, read_source
from planet.infer.new_images import Predictor, decode_image, predict_source
from planet.resize.image import BadImageError, resize_jpeg
from planet.synthetic import write_tar_7z
from planet.synthetic.archives import write_tar

SIZE = 32


def rgb(i: int, h: int = 48, w: int = 48) -> np.ndarray:
    rng = np.random.default_rng(i)
    base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return np.kron(base, np.ones((8, 8, 1), dtype=np.uint8))[:h, :w]  # smooth-ish blocks


def jpeg(i: int, h: int = 48, w: int = 48) -> bytes:
    return simplejpeg.encode_jpeg(rgb(i, h, w), quality=92)


def png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG")
    return buf.getvalue()


def gif(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="GIF")
    return buf.getvalue()


def tiff(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="TIFF")
    return buf.getvalue()


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as fh:
        header, *rows = list(csv.reader(fh))
    return header, rows


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Untrained Planet and Dogs vs Cats bundles at 32 px, each with a fitted file."""
    import torch

    from planet.learn.model import create_model, export_bundle

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    planet = create_model("resnet18", len(PLANET.classes), pretrained=False)
    export_bundle(
        planet,
        root / "planet.pt",
        classes=PLANET.classes,
        size=SIZE,
        task="multi_label",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
    thresholds = {c: round(0.3 + 0.02 * i, 2) for i, c in enumerate(PLANET.classes)}
    (root / "planet.json").write_text(
        json.dumps({"classes": list(PLANET.classes), "per_class": {"thresholds": thresholds}})
    )
    dogs = create_model("resnet18", 2, pretrained=False)
    export_bundle(
        dogs,
        root / "dogs.pt",
        classes=DOGS_VS_CATS.classes,
        size=SIZE,
        task="single_label",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
    (root / "dogs.json").write_text(json.dumps({"kind": "clip", "clip": 0.45}))
    return {
        "planet": root / "planet.pt",
        "planet_t": root / "planet.json",
        "dogs": root / "dogs.pt",
        "dogs_t": root / "dogs.json",
    }


# ---------------------------------------------------------------------------------------------
# sources


MEMBERS = [(f"test_{i}.jpg", jpeg(i)) for i in range(5)]


def _items(source) -> list[tuple[str, bytes] | tuple[str, str]]:
    out: list = []
    for item in read_source(source):
        out.append((item.name, item.data) if isinstance(item, SourceImage) else ("bad", item.where))
    return out


def test_a_folder_gives_every_image_by_stem_and_lists_a_repeated_name(tmp_path):
    folder = tmp_path / "drop"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.jpg").write_bytes(jpeg(1))
    (folder / "sub" / "b.PNG").write_bytes(png(rgb(2)))
    (folder / "c.tiff").write_bytes(tiff(rgb(3)))
    (folder / "sub" / "a.png").write_bytes(png(rgb(4)))  # the name `a` again
    (folder / "README.md").write_text("not an image")
    (folder / ".hidden.jpg").write_bytes(jpeg(5))
    source = read_source(folder)
    items = list(source)
    assert source.kind == "folder" and source.ignored == 2
    good = [(i.name, i.data) for i in items if isinstance(i, SourceImage)]
    assert good == [
        ("a", jpeg(1)),
        ("c", (folder / "c.tiff").read_bytes()),
        ("b", (folder / "sub" / "b.PNG").read_bytes()),
    ]
    (bad,) = [i for i in items if isinstance(i, BadFile)]
    assert bad.where == str(folder / "sub" / "a.png") and "repeats the image name 'a'" in bad.reason


def test_zip_tar_tar7z_and_shards_give_the_same_images(tmp_path):
    from planet.extract.images import extract_images

    zpath = tmp_path / "new.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("test-jpg/", b"")
        zf.writestr("__MACOSX/test-jpg/._test_0.jpg", b"junk")
        zf.writestr("test-jpg/notes.txt", b"hello")
        for name, data in MEMBERS:
            zf.writestr(f"test-jpg/{name}", data)
        link = zipfile.ZipInfo("test-jpg/link.jpg")
        link.create_system, link.external_attr = 3, (0o120777 << 16)
        zf.writestr(link, b"test_0.jpg")
    tpath = tmp_path / "new.tar"
    with open(tpath, "wb") as fh:
        write_tar(fh, "test-jpg", MEMBERS)
    sevenz = write_tar_7z(tmp_path / "test-jpg.tar.7z", "test-jpg", MEMBERS)
    shards = tmp_path / "shards"
    extract_images(sevenz, PLANET.file("test-jpg.tar.7z"), shards, shard_size=2)
    want = [(n.removesuffix(".jpg"), d) for n, d in MEMBERS]
    zipped = _items(zpath)
    assert zipped == [*want, ("bad", f"{zpath}:test-jpg/link.jpg")]
    assert _items(tpath) == _items(sevenz) == _items(shards) == want
    assert read_source(shards).kind == "shards"


def test_a_damaged_tar_keeps_the_images_before_and_names_the_archive(tmp_path):
    buf = io.BytesIO()
    write_tar(buf, "x", MEMBERS)
    data = buf.getvalue()
    cut = data.index(MEMBERS[3][1]) + 100  # inside the fourth image
    path = tmp_path / "cut.tar"
    path.write_bytes(data[:cut])
    items = _items(path)
    assert items[:3] == [(n.removesuffix(".jpg"), d) for n, d in MEMBERS[:3]]
    assert items[3:] == [("bad", str(path))]


def test_a_tar7z_read_partly_stops_its_decoder(tmp_path):
    import threading

    sevenz = write_tar_7z(tmp_path / "a.tar.7z", "a", MEMBERS)
    before = threading.active_count()
    for item in read_source(sevenz):
        assert item.name == "test_0"
        break
    assert threading.active_count() == before


def test_unknown_and_missing_sources_are_refused(tmp_path):
    (tmp_path / "x.rar").write_bytes(b"rar")
    with pytest.raises(SourceError, match="unknown source type"):
        read_source(tmp_path / "x.rar")
    with pytest.raises(SourceError, match="does not exist"):
        read_source(tmp_path / "nothing")


# ---------------------------------------------------------------------------------------------
# decoding


def test_jpegs_are_resized_by_the_training_resize_and_png_tiff_like_it():
    data = jpeg(7, 48, 72)
    assert np.array_equal(decode_image(data, SIZE, "crop"), resize_jpeg(data, SIZE, "crop"))
    exact = rgb(8, SIZE, SIZE)
    assert np.array_equal(decode_image(png(exact), SIZE), exact)  # already the size: as is
    wide = rgb(9, 40, 80)
    want = np.asarray(
        Image.fromarray(wide).resize((SIZE, SIZE), Image.Resampling.BILINEAR, box=(20, 0, 60, 40))
    )
    assert np.array_equal(decode_image(png(wide), SIZE, "crop"), want)
    four_bands = np.dstack([wide, np.full(wide.shape[:2], 7, np.uint8)])  # RGB + a 4th band
    assert np.array_equal(decode_image(tiff(four_bands), SIZE, "crop"), want)
    grey = decode_image(png(wide[..., 0]), SIZE)
    assert grey.shape == (SIZE, SIZE, 3) and np.array_equal(grey[..., 0], grey[..., 2])


@pytest.mark.parametrize(
    "data, why",
    [
        (b"", "empty"),
        (jpeg(1)[:200], "cannot be decoded"),
        (png(rgb(1))[:60], "cannot be decoded"),
        (png(rgb(1)[..., 0].astype(np.uint16) * 200), "16-bit"),
        (gif(rgb(1)), "a GIF image"),
        (b"hello world", "not an image"),
    ],
    ids=["empty", "truncated-jpeg", "truncated-png", "16-bit", "gif", "text"],
)
def test_undecodable_files_say_why(data, why):
    with pytest.raises(BadImageError, match=why):
        decode_image(data, SIZE)


# ---------------------------------------------------------------------------------------------
# the CSV


def test_cli_predicts_a_folder_lists_the_bad_file_and_thresholds_the_probabilities(
    models, tmp_path, capsys
):
    folder = tmp_path / "new"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(jpeg(1))
    (folder / "b.png").write_bytes(png(rgb(2)))
    (folder / "c.tif").write_bytes(tiff(np.dstack([rgb(2), np.zeros((48, 48), np.uint8)])))
    (folder / "broken.jpg").write_bytes(jpeg(3)[:300])
    (folder / "notes.txt").write_text("ignored")
    out = tmp_path / "out" / "pred.csv"
    argv = ["predict-images", str(folder), "--model", str(models["planet"]), "--out", str(out)]
    assert main([*argv, "--thresholds", str(models["planet_t"]), "--probabilities"]) == 0
    printed = capsys.readouterr().out
    assert "predicted 3 image(s)" in printed and "skipped 1 bad file(s):" in printed
    assert f"{folder / 'broken.jpg'}: cannot be decoded" in printed
    assert f"wrote {out}" in printed
    header, rows = read_csv(out)
    assert header == ["image_name", "tags", *PLANET.classes]
    assert [r[0] for r in rows] == ["a", "b", "c"]
    assert rows[1][1:] == rows[2][1:]  # the PNG and the 4-band TIFF of its pixels
    thresholds = json.loads(models["planet_t"].read_text())["per_class"]["thresholds"]
    for row in rows:
        probs = dict(zip(PLANET.classes, map(float, row[2:]), strict=True))
        clear = [c for c in PLANET.classes if abs(probs[c] - thresholds[c]) > 1e-5]
        assert [c for c in clear if c in row[1].split()] == [
            c for c in clear if probs[c] > thresholds[c]
        ]
    assert list(out.parent.iterdir()) == [out]  # no temporary file left


def test_probabilities_are_the_tta_mean_of_the_model(models, tmp_path):
    import torch

    from planet.infer.tta import predict_probs
    from planet.learn.augment import to_model_input
    from planet.learn.model import load_bundle
    from planet.learn.precision import choose_precision

    folder = tmp_path / "one"
    folder.mkdir()
    pixels = rgb(11, SIZE, SIZE)
    (folder / "x.png").write_bytes(png(pixels))
    bundle = load_bundle(models["planet"])
    x = to_model_input(torch.from_numpy(pixels[None].copy()), mean=bundle.mean, std=bundle.std)
    for tta in (True, False):
        out = tmp_path / f"{tta}.csv"
        predict_source(
            folder,
            models["planet"],
            out,
            thresholds=models["planet_t"],
            tta=tta,
            probabilities=True,
            device="cpu",
            precision="fp32",  # exact: in bf16 the channels_last and plain layouts round apart
        )
        got = np.array([float(v) for v in read_csv(out)[1][0][2:]])
        fp32 = choose_precision(torch.device("cpu"), "fp32")
        want = predict_probs(bundle.model, x, "multi_label", tta=tta, precision=fp32)[0].numpy()
        assert np.allclose(got, want, atol=2e-6), tta
    plain = [float(v) for v in read_csv(tmp_path / "False.csv")[1][0][2:]]
    assert plain != [float(v) for v in read_csv(tmp_path / "True.csv")[1][0][2:]]


def test_every_source_and_batch_size_gives_the_same_rows(models, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    for name, data in MEMBERS:
        (folder / name).write_bytes(data)
    tpath = tmp_path / "new.tar"
    with open(tpath, "wb") as fh:
        write_tar(fh, "d", MEMBERS)
    zpath = tmp_path / "new.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for name, data in MEMBERS:
            zf.writestr(name, data)
    sevenz = write_tar_7z(tmp_path / "new.tar.7z", "d", MEMBERS)
    results = {}
    for source, batch in ((folder, 64), (folder, 2), (zpath, 3), (tpath, 64), (sevenz, 4)):
        out = tmp_path / f"{source.name}-{batch}.csv"
        r = predict_source(
            source,
            models["planet"],
            out,
            thresholds=models["planet_t"],
            tta=False,
            probabilities=True,
            batch_size=batch,
            device="cpu",
        )
        assert r["predicted"] == len(MEMBERS) and r["bad"] == []
        results[(source.name, batch)] = read_csv(out)
    first = next(iter(results.values()))
    for key, (header, rows) in results.items():
        assert header == first[0]
        assert [r[:2] for r in rows] == [r[:2] for r in first[1]], key
        assert np.allclose(
            np.array(rows, dtype=object)[:, 2:].astype(float),
            np.array(first[1], dtype=object)[:, 2:].astype(float),
            atol=1e-5,
        ), key


def test_dogs_rows_are_id_and_the_clipped_probability_of_dog(models, tmp_path):
    folder = tmp_path / "dogs"
    folder.mkdir()
    for i in (1, 2, 10):
        (folder / f"{i}.jpg").write_bytes(jpeg(i, 40, 60))  # ragged, not square
    out = tmp_path / "dogs.csv"
    result = predict_source(
        folder,
        models["dogs"],
        out,
        thresholds=models["dogs_t"],
        probabilities=True,
        tta=False,
        device="cpu",
    )
    assert result["predicted"] == 3
    header, rows = read_csv(out)
    assert header == ["id", "label", "cat", "dog"]
    assert [r[0] for r in rows] == ["1", "10", "2"]  # sorted file names, stems as ids
    for row in rows:
        cat, dog = float(row[2]), float(row[3])
        assert cat + dog == pytest.approx(1.0, abs=1e-5)
        assert float(row[1]) == pytest.approx(min(max(dog, 0.45), 0.55), abs=1e-6)


def test_a_missing_model_and_a_source_without_images_fail_in_one_line(models, tmp_path, capsys):
    out = tmp_path / "x.csv"
    argv = ["predict-images", str(tmp_path), "--out", str(out), "--thresholds"]
    assert main([*argv, str(models["planet_t"]), "--model", str(tmp_path / "no.pt")]) == 1
    assert "--model" in capsys.readouterr().err
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8 not really")
    assert main([*argv, str(models["planet_t"]), "--model", str(models["planet"])]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no image" in err[0] and "nothing written" in err[0]
    assert not out.exists()
    assert main([*argv, str(tmp_path / "none.json"), "--model", str(models["planet"])]) == 1
    assert "--thresholds" in capsys.readouterr().err


def test_cuda_asked_for_without_cuda_is_one_line(models, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (tmp_path / "a.jpg").write_bytes(jpeg(1))
    argv = ["predict-images", str(tmp_path), "--model", str(models["planet"]), "--device", "cuda"]
    argv += ["--out", str(tmp_path / "x.csv"), "--thresholds", str(models["planet_t"])]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device cuda" in err[0] and "CUDA is not available" in err[0]


def test_the_precision_is_asked_for_and_recorded(models, tmp_path, capsys):
    """--precision reaches the forward pass (fp16 has no CPU autocast: one line) and the
    result names the precision used."""
    (tmp_path / "a.jpg").write_bytes(jpeg(1))
    argv = ["predict-images", str(tmp_path), "--model", str(models["planet"]), "--device", "cpu"]
    argv += ["--out", str(tmp_path / "x.csv"), "--thresholds", str(models["planet_t"])]
    assert main([*argv, "--precision", "fp16"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--precision fp16" in err[0]
    assert not (tmp_path / "x.csv").exists()
    result = predict_source(
        tmp_path,
        models["planet"],
        tmp_path / "y.csv",
        thresholds=models["planet_t"],
        device="cpu",
        precision="fp32",
    )
    assert result["precision"] == "fp32"


# ---------------------------------------------------------------------------------------------
# the drop folder


def test_the_drop_folder_predicts_only_content_it_has_not_seen(models, tmp_path, monkeypatch):
    from planet.infer.drop_folder import seen_path, update_drop_folder

    predicted: list[int] = []
    probs = Predictor.probs
    monkeypatch.setattr(
        Predictor, "probs", lambda self, px: predicted.append(len(px)) or probs(self, px)
    )
    drop, out = tmp_path / "drop", tmp_path / "out" / "new.csv"
    drop.mkdir()
    for i in range(3):
        (drop / f"img_{i}.jpg").write_bytes(jpeg(i))
    (drop / "bad.png").write_bytes(b"\x89PNG broken")

    def run(**kw):
        predicted.clear()
        return update_drop_folder(
            drop,
            models["planet"],
            out,
            thresholds=kw.pop("t", models["planet_t"]),
            tta=False,
            device="cpu",
            **kw,
        )

    first = run()
    assert (first["predicted"], first["copies"], first["unchanged"]) == (3, 0, 0)
    assert sum(predicted) == 3 and [b["file"] for b in first["bad"]] == [str(drop / "bad.png")]
    header, rows = read_csv(out)
    assert header == ["image_name", "tags"] and [r[0] for r in rows] == [
        f"img_{i}" for i in range(3)
    ]
    assert seen_path(out).is_file()

    (drop / "img_3.jpg").write_bytes(jpeg(3))  # new
    (drop / "copy_of_0.jpg").write_bytes(jpeg(0))  # seen content, new name: not predicted
    second = run()
    assert (second["predicted"], second["copies"], second["unchanged"]) == (1, 1, 3)
    assert sum(predicted) == 1
    assert len(second["bad"]) == 1  # bad files are listed every run, never remembered
    rows = dict((r[0], r[1:]) for r in read_csv(out)[1])
    assert set(rows) == {"img_0", "img_1", "img_2", "img_3", "copy_of_0"}
    assert rows["copy_of_0"] == rows["img_0"]

    (drop / "img_1.jpg").write_bytes(jpeg(9))  # changed content under a known name
    (drop / "bad.png").write_bytes(png(rgb(5)))  # the bad file, now complete
    (drop / "img_2.jpg").unlink()  # gone from the folder: its row stays
    third = run()
    assert (third["predicted"], third["copies"], third["unchanged"]) == (2, 0, 3)
    assert sum(predicted) == 2 and third["bad"] == []
    assert {r[0] for r in read_csv(out)[1]} == {
        "img_0",
        "img_1",
        "img_2",
        "img_3",
        "copy_of_0",
        "bad",
    }

    other = tmp_path / "other.json"  # other thresholds: the stored answers are stale
    other.write_text(models["planet_t"].read_text().replace("0.3", "0.1"))
    fourth = run(t=other)  # a fresh index: the folder's 4 distinct images, the copy reused
    assert (fourth["predicted"], fourth["copies"], fourth["unchanged"]) == (4, 1, 0)
    assert sum(predicted) == 4 and len(read_csv(out)[1]) == 5  # img_2's row went with the index


@pytest.mark.slow
def test_the_predict_images_flow_updates_the_csv(models, tmp_path, prefect_api):
    from flows.predict_images import PredictImagesConfig, predict_new_images

    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "a.jpg").write_bytes(jpeg(1))
    config = PredictImagesConfig(
        competition="planet",
        data_dir=str(tmp_path / "data"),
        source=str(drop),
        model=str(models["planet"]),
        thresholds=str(models["planet_t"]),
        out=str(tmp_path / "out.csv"),
        device="cpu",
    )
    first = predict_new_images(config)
    assert first["predicted"] == 1 and first["rows"] == 1
    (drop / "b.jpg").write_bytes(jpeg(2))
    second = predict_new_images(config)
    assert (second["predicted"], second["unchanged"], second["rows"]) == (1, 1, 2)
    assert [r[0] for r in read_csv(tmp_path / "out.csv")[1]] == ["a", "b"]


def test_the_flows_default_model_and_csv_are_the_recipes_run(tmp_path):
    from flows.predict_images import PredictImagesConfig
    from planet.learn.stages import model_run

    config = PredictImagesConfig(competition="dogs-vs-cats", data_dir=str(tmp_path))
    run = model_run(config.workspace, config.recipe)
    assert config.model_path == run.export
    assert config.out_path == config.workspace.predictions_dir / run.name / "new-images.csv"


def test_the_drop_folder_starts_afresh_at_another_precision(models, tmp_path):
    """The precision is part of what the stored rows depend on: another one predicts again."""
    from planet.infer.drop_folder import update_drop_folder

    drop, out = tmp_path / "drop", tmp_path / "out" / "new.csv"
    drop.mkdir()
    (drop / "a.jpg").write_bytes(jpeg(1))
    kwargs = {"thresholds": models["planet_t"], "device": "cpu"}
    first = update_drop_folder(drop, models["planet"], out, precision="fp32", **kwargs)
    again = update_drop_folder(drop, models["planet"], out, precision="fp32", **kwargs)
    other = update_drop_folder(drop, models["planet"], out, precision="bf16", **kwargs)
    assert (first["predicted"], again["predicted"], other["predicted"]) == (1, 0, 1)
