"""Predicting new imagery with a trained run's `export.pt`: the CSV Kaggle's submission has
(`image_name,tags` for Planet, `id,label` for Dogs vs Cats), for any folder or archive.

The model and how it was fed come from the bundle (arch, classes, size, normalisation:
`planet.learn.model.export_bundle`). What the bundle does not hold (the fitted thresholds or
clip, TTA and beta, the resize method) comes from the run it belongs to, when `export.pt` is
still in its workspace, or from the arguments (`planet.infer.run_settings`).

Pixels are made as the resize stage made the training shards: a JPEG goes through
`planet.resize.image.resize_jpeg` (the same function, so the same bytes); a PNG or a TIFF
Pillow reads is decoded whole, its first three bands kept, and finished like a JPEG
(`resize_decoded`). They are batched, normalised and predicted with TTA like the predict
stage does (`to_model_input`, `predict_probs`, channels_last), and the rows are the
submission's (`planet.infer.submission.planet_rows` / `dogs_rows`).

Memory stays at one batch of pixels: images are read, decoded and predicted `batch_size` at
a time; only the CSV's rows are kept until the file is written (atomically, at the end).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from planet.fileio import atomic_path, sha256_file
from planet.infer.image_source import BadFile, Item, SourceImage, read_source
from planet.infer.run_settings import PredictSetupError, competition_of, run_settings

DEFAULT_BATCH = 64  # the predict stage's batch size: the same batches give the same bits
PROBABILITY_FORMAT = "{:.6f}"
PIL_FORMATS = ("PNG", "TIFF")  # besides JPEG, which the resize stage's decoder reads


# ---------------------------------------------------------------------------------------------
# decoding


def decode_image(data: bytes, size: int, method: str = "squish") -> np.ndarray:
    """`size x size x 3` uint8 RGB pixels of a JPEG, PNG or TIFF, resized like the training
    shards; `BadImageError` saying why when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    from planet.resize.image import (
        MAX_PIXELS,
        BadImageError,
        resize_decoded,
        resize_jpeg_unchecked,
    )

    if bytes(data[:2]) == b"\xff\xd8":
        return resize_jpeg_unchecked(data, size, method)
    if not data:
        raise BadImageError("empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format not in PIL_FORMATS:
                raise BadImageError(f"a {im.format} image; JPEG, PNG and TIFF are read")
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise BadImageError(f"{w}x{h} pixels is too large (more than {MAX_PIXELS:,})")
            im.load()
            rgb = _rgb(im)
    except UnidentifiedImageError:
        raise BadImageError(
            "not an image Pillow can read (JPEG, PNG, or a TIFF of 8-bit bands)"
        ) from None
    except BadImageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise BadImageError(f"cannot be decoded ({exc})") from exc
    return resize_decoded(rgb, size, method)  # type: ignore[arg-type]


def _rgb(im: Any) -> Any:
    """RGB from an image's first three bands (a 4-band TIFF's alpha or NIR is dropped);
    grey and palette images become RGB."""
    from PIL import Image

    from planet.resize.image import BadImageError

    if im.mode in ("RGB",):
        return im
    if im.mode in ("RGBA", "RGBX", "RGBa"):
        return Image.merge("RGB", im.split()[:3])
    if im.mode in ("L", "LA", "P", "PA", "1", "CMYK", "YCbCr", "LAB", "HSV"):
        return im.convert("RGB")
    raise BadImageError(f"{im.mode} pixels (16-bit or float); 8-bit images are read")


# ---------------------------------------------------------------------------------------------
# the predictor


class Predictor:
    """A loaded bundle with its run's settings: pixels in, CSV rows out."""

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        thresholds: str | os.PathLike[str] | None = None,
        tta: bool | None = None,
        beta: float | None = None,
        method: str | None = None,
        device: str = "auto",
        probabilities: bool = False,
        precision: str = "auto",
    ) -> None:
        import torch

        from planet.infer.tta import check_beta
        from planet.learn.fit import resolve_device
        from planet.learn.model import load_bundle
        from planet.learn.precision import choose_precision
        from planet.resize.image import check_method

        self.model_path = Path(model)
        if not self.model_path.is_file():
            raise PredictSetupError(
                f"--model {self.model_path} does not exist: give a trained run's export.pt "
                "(<data>/<slug>/models/<run>/export.pt)"
            )
        self.model_sha256 = sha256_file(self.model_path)
        try:
            where = resolve_device(device)
        except RuntimeError as exc:  # CUDA asked for where there is none
            raise PredictSetupError(f"--device {device}: {exc}") from None
        self.bundle = load_bundle(self.model_path, device=where)
        self.bundle.model.to(memory_format=torch.channels_last)  # as the predict stage does
        self.device = next(self.bundle.model.parameters()).device
        try:  # as the predict stage chooses (planet.learn.precision)
            self.precision = choose_precision(self.device, precision)
        except ValueError as exc:
            raise PredictSetupError(f"--precision {precision}: {exc}") from None
        self.settings = run_settings(
            self.model_path,
            self.model_sha256,
            self.bundle.size,
            thresholds=thresholds,
            tta=tta,
            beta=beta,
            method=method,
        )
        check_method(self.settings.method)
        check_beta(self.settings.beta, self.settings.tta)
        self.competition = competition_of(self.bundle, self.settings.workspace)
        self.probabilities = probabilities
        self._fitted = self._read_fitted()

    @property
    def size(self) -> int:
        return self.bundle.size

    @property
    def header(self) -> list[str]:
        extra = list(self.bundle.classes) if self.probabilities else []
        return [*self.competition.submission_columns, *extra]

    def _read_fitted(self) -> np.ndarray | float:
        from planet.infer.thresholds import read_clip, read_thresholds

        path = self.settings.thresholds
        try:
            if self.bundle.task == "single_label":
                return read_clip(path)
            classes, values = read_thresholds(path)
        except (OSError, ValueError) as exc:
            raise PredictSetupError(f"{path}: {exc}") from None
        if tuple(classes) != tuple(self.bundle.classes):
            raise PredictSetupError(f"{path} holds thresholds of other classes than the model's")
        return values

    def describe(self) -> dict[str, Any]:
        """What predicts, and how (for results and logs)."""
        s = self.settings
        return {
            "model": str(self.model_path),
            "model_sha256": self.model_sha256,
            "run": s.run,
            "size": self.size,
            "thresholds": str(s.thresholds),
            "tta": s.tta,
            "beta": s.beta,
            "method": s.method,
            "from": dict(s.sources),
            "device": str(self.device),
            "precision": self.precision.name,
        }

    def fingerprint(self) -> dict[str, Any]:
        """What the rows depend on (model, fitted values, TTA, method, columns)."""
        fitted = self._fitted
        return {
            "model_sha256": self.model_sha256,
            "fitted": float(fitted) if isinstance(fitted, float) else [float(v) for v in fitted],
            "tta": self.settings.tta,
            "beta": self.settings.beta,
            "method": self.settings.method,
            "header": self.header,
            "precision": self.precision.name,
        }

    def probs(self, pixels: np.ndarray) -> np.ndarray:
        """float32 (n, C) probabilities of uint8 (n, size, size, 3) pixels."""
        import torch

        from planet.infer.tta import predict_probs
        from planet.learn.augment import to_model_input

        batch = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device)
        images = to_model_input(
            batch, mean=self.bundle.mean, std=self.bundle.std, channels_last=True
        )
        out = predict_probs(
            self.bundle.model,
            images,
            self.bundle.task,
            tta=self.settings.tta,
            beta=self.settings.beta,
            precision=self.precision,
        )
        return out.to("cpu").numpy()

    def rows(self, names: Sequence[str], probs: np.ndarray) -> list[list[str]]:
        """The CSV rows of these images (the submission's cells, then the probabilities)."""
        from planet.infer.submission import dogs_rows, planet_rows

        comp = self.competition
        if self.bundle.task == "multi_label":
            rows = planet_rows(names, probs, self.bundle.classes, self._fitted)
        else:
            positive = list(self.bundle.classes).index(comp.positive_class or comp.classes[-1])
            rows = dogs_rows(names, probs[:, positive], float(self._fitted))
        if not self.probabilities:
            return [list(r) for r in rows]
        return [
            [*r, *(PROBABILITY_FORMAT.format(float(v)) for v in p)]
            for r, p in zip(rows, probs, strict=True)
        ]

    def predict(
        self, items: Iterable[Item], batch_size: int = DEFAULT_BATCH
    ) -> Iterator[tuple[SourceImage, list[str]] | BadFile]:
        """(image, row) for every image that decodes, a BadFile for each one that does not
        (and for the source's own bad files), in source order, `batch_size` images at a time."""
        from planet.resize.image import BadImageError

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        pixels = np.empty((batch_size, self.size, self.size, 3), dtype=np.uint8)
        batch: list[SourceImage] = []
        for item in items:
            if isinstance(item, BadFile):
                yield item
                continue
            try:
                pixels[len(batch)] = decode_image(item.data, self.size, self.settings.method)
            except BadImageError as exc:
                yield BadFile(item.where, str(exc))
                continue
            batch.append(item)
            if len(batch) == batch_size:
                yield from self._emit(batch, pixels)
                batch = []
        if batch:
            yield from self._emit(batch, pixels[: len(batch)])

    def _emit(
        self, batch: list[SourceImage], pixels: np.ndarray
    ) -> Iterator[tuple[SourceImage, list[str]]]:
        rows = self.rows([i.name for i in batch], self.probs(pixels))
        yield from zip(batch, rows, strict=True)


# ---------------------------------------------------------------------------------------------
# a source to a CSV


def csv_bytes(header: Sequence[str], rows: Iterable[Sequence[str]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def write_rows(path: Path, header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """The CSV, written to a temporary name and renamed."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(csv_bytes(header, rows))


def predict_source(
    source: str | os.PathLike[str],
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    probabilities: bool = False,
    thresholds: str | os.PathLike[str] | None = None,
    tta: bool | None = None,
    beta: float | None = None,
    method: str | None = None,
    device: str = "auto",
    batch_size: int = DEFAULT_BATCH,
    precision: str = "auto",
) -> dict[str, Any]:
    """Predict every image of `source` (a folder, a .zip/.tar/.tar.7z, original-image shards)
    with `model` into the CSV `out`; what was predicted, the bad files (named, with why) and
    the settings used. Nothing is written when no image could be predicted."""
    images = read_source(source)
    predictor = Predictor(
        model,
        thresholds=thresholds,
        tta=tta,
        beta=beta,
        method=method,
        device=device,
        probabilities=probabilities,
        precision=precision,
    )
    rows: list[list[str]] = []
    bad: list[dict[str, str]] = []
    for result in predictor.predict(images, batch_size):
        if isinstance(result, BadFile):
            bad.append({"file": result.where, "reason": result.reason})
        else:
            rows.append(result[1])
    if not rows:
        raise PredictSetupError(
            f"no image of {source} could be predicted ({len(bad)} bad, {images.ignored} not "
            "images): nothing written"
            + (f"; first: {bad[0]['file']}: {bad[0]['reason']}" if bad else "")
        )
    write_rows(Path(out), predictor.header, rows)
    return {
        "out": str(out),
        "source": str(source),
        "kind": images.kind,
        "predicted": len(rows),
        "bad": bad,
        "ignored": images.ignored,
        **predictor.describe(),
    }


def read_rows(path: str | os.PathLike[str]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of a CSV this module wrote."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        return header, [row for row in reader if row]


__all__ = ["Predictor", "PredictSetupError", "decode_image", "predict_source", "read_rows"]
