"""Bad inputs as a user meets them, stage by stage: each damaged or wrong input fails with the
project's own error, naming the file, member, row or setting and saying what to do, and leaves
nothing a later stage could take for a finished output. The quirks of Kaggle's real files (a
UTF-8 BOM, CRLF line endings) are accepted.

One tiny synthetic Planet download (40 train, 16 test, 4 additional images) is built once per
module. Each case copies it into a fresh data directory laid out as the fetch stage leaves it
(`raw/` with `raw/manifest.json`), tampers with one input, runs the stage through the same
`planet.*` calls as the Prefect tasks (tasks/extract.py, tasks/resize.py, tasks/train.py,
tasks/predict.py, without Prefect or Dask) and judges the outputs with the checks the tasks use
to decide whether a stage is complete.
"""

from __future__ import annotations

import builtins
import csv
import errno
import io
import json
import os
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from planet import kaggle, resize, synthetic
from planet.competitions import PLANET
from planet.constants import MANIFEST
from planet.extract.images import extract_images
from planet.extract.members import ArchiveError
from planet.extract.shard_builder import PROGRESS_FILE
from planet.extract.tables import extract_table
from planet.fileio import TMP_PREFIX, read_json, sha256_bytes, sha256_file, write_json_atomic
from planet.infer import submission
from planet.infer.runs import prediction_inputs
from planet.infer.submission import SubmissionError
from planet.learn import stages
from planet.learn.recipe import Recipe, RecipeError, TrainStage, load_recipe
from planet.resize import BadImageError
from planet.store import shards
from planet.store.labels import LabelError
from planet.store.sized import read_labels, read_sized
from planet.workspace import Workspace
from tasks import extract as extract_task
from tasks import resize as resize_task
from tests.test_archives import planet_7z

SLUG = PLANET.slug
SHARD = 8  # images per original shard: 40 train images -> 5 shards, 16 test images -> 2
SIZE = 32  # the resize stage's size in every case
TRAIN, TEST = "train-jpg.tar.7z", "test-jpg.tar.7z"
LABELS_ZIP, SAMPLE_ZIP = "train_v2.csv.zip", "sample_submission_v2.csv.zip"
LABELS_CSV = "train_v2.csv"
REDOWNLOAD = "re-download"
CHECK_LABELS = "check the labels file"


# ---------------------------------------------------------------------------------------------
# the synthetic download and a data directory over it


@dataclass(frozen=True)
class Download:
    """The synthetic Kaggle download, with what its archives hold."""

    folder: Path  # <root>/<slug>/, the files as Kaggle serves them
    images: dict[str, list[tuple[str, bytes]]]  # split -> (name, JPEG bytes) in archive order
    shard_bytes: dict[str, list[int]]  # split -> size of each original shard, in order
    labels_csv: str  # train_v2.csv, as text


@pytest.fixture(scope="module")
def download(tmp_path_factory: pytest.TempPathFactory) -> Download:
    """Synthetic Planet: 40 train, 16 test and 4 additional images (built once, ~1 s)."""
    root = tmp_path_factory.mktemp("kaggle")
    folder = synthetic.generate("planet", root, train=40, test=16, additional=4, seed=11)
    images: dict[str, list[tuple[str, bytes]]] = {}
    sizes: dict[str, list[int]] = {}
    for name in (TRAIN, TEST):
        data_file = PLANET.file(name)
        out = root / "scratch" / data_file.split
        manifest = extract_images(folder / name, data_file, out, shard_size=SHARD)
        images[data_file.split] = list(shards.iter_images(out))
        sizes[data_file.split] = [s["bytes"] for s in manifest["shards"]]
    with zipfile.ZipFile(folder / LABELS_ZIP) as zf:
        text = zf.read(LABELS_CSV).decode("utf-8")
    return Download(folder, images, sizes, text)


class DataDir:
    """A competition folder as the fetch stage leaves it, and the stages' calls on it."""

    def __init__(self, data_dir: Path, download: Download) -> None:
        self.data_dir = str(data_dir)
        self.dirs = Workspace.of(data_dir, SLUG)
        self.dirs.raw_dir.mkdir(parents=True)
        for data_file in PLANET.files:
            self.put(data_file.name, (download.folder / data_file.name).read_bytes())

    def put(self, name: str, data: bytes) -> Path:
        """Write a downloaded file and its record in raw/manifest.json (as fetch does)."""
        path = self.dirs.raw_dir / name
        path.write_bytes(data)
        records = kaggle.read_manifest(self.dirs.raw_dir)
        records[name] = {"name": name, "size": len(data), "sha256": sha256_bytes(data)}
        write_json_atomic(self.dirs.raw_dir / MANIFEST, records)
        return path

    def source(self, name: str) -> dict[str, Any]:
        return kaggle.read_raw_records(self.dirs.raw_dir, [name])[name]

    def extract(
        self, name: str, progress: Callable[[int, int | None], None] | None = None
    ) -> dict[str, Any]:
        """tasks.extract.extract_images / extract_table, minus Prefect."""
        data_file, source = PLANET.file(name), self.source(name)
        if data_file.kind != "images":
            return extract_table(self.dirs.root / source["path"], data_file, self.dirs.tables_dir)
        return extract_images(
            self.dirs.root / source["path"],
            data_file,
            self.dirs.original(data_file.split).folder,
            shard_size=SHARD,
            progress=progress,
            archive_sha256=source["sha256"],
        )

    def extracted(self, name: str) -> bool:
        """The extract tasks' own check (a complete output makes the task Cached)."""
        task = extract_task.unpack_table if PLANET.file(name).kind != "images" else None
        if task is not None:
            return task.done(ws=self.dirs, file_name=name, source=self.source(name))
        return extract_task.extract_archive.done(
            ws=self.dirs,
            file_name=name,
            source=self.source(name),
            shard_size=SHARD,
            write_files=False,
        )

    def resize(self, split: str) -> dict[str, Any]:
        """tasks.resize.resize_split in this process (client=None runs the same shard calls)."""
        is_test = split != "train"
        table = None if is_test else self.dirs.train_labels()
        return resize.resize_split(
            self.dirs.original(split).folder,
            self.dirs.sized(SIZE, split).folder,
            SIZE,
            table,
            is_test=is_test,
        )

    def resized(self, split: str) -> bool:
        """The resize task's own check."""
        source = self.dirs.original(split).read_manifest()
        return resize_task.resize_images.done(
            ws=self.dirs, split_name=split, size=SIZE, method="squish", source=source
        )


@pytest.fixture
def data(tmp_path: Path, download: Download) -> DataDir:
    """A fresh data directory holding the untouched download in raw/."""
    return DataDir(tmp_path / "data", download)


def temp_files(folder: Path) -> list[str]:
    """Leftovers of interrupted atomic writes."""
    return sorted(p.name for p in folder.glob(f"{TMP_PREFIX}*")) if folder.is_dir() else []


def assert_no_output(folder: Path) -> None:
    """Nothing in `folder` that a later stage could read: no manifest, shard or temp file."""
    assert not (folder / MANIFEST).exists()
    assert [p.name for p in shards.shard_files(folder)] == []
    assert temp_files(folder) == []


def rebuild(tmp_path: Path, name: str, images: list[tuple[str, bytes]]) -> bytes:
    """The bytes of a Kaggle-shaped `name` (.tar.7z) holding `images`, via the generator."""
    inner = PLANET.file(name).inner_dir
    members = [(f"{stem}.jpg", jpeg) for stem, jpeg in images]
    return synthetic.write_tar_7z(tmp_path / "rebuilt" / name, inner, members).read_bytes()


def labels_zip(content: bytes) -> bytes:
    """train_v2.csv.zip holding `content` as its CSV, bytes unchanged."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(LABELS_CSV, content)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# damaged archives


def _flip_middle(data: bytes) -> bytes:
    mid = len(data) // 2
    return data[:mid] + bytes(b ^ 0xFF for b in data[mid : mid + 256]) + data[mid + 256 :]


def _empty_tar_7z(download: Download, tmp_path: Path) -> bytes:
    return rebuild(tmp_path, TRAIN, [])


ARCHIVE_DAMAGE: dict[str, tuple[str, Callable[[Download, Path], bytes], str]] = {
    # id: (file, its bad bytes, words the error must hold besides the file and "re-download")
    "corrupt-7z": (TRAIN, lambda d, _: _flip_middle((d.folder / TRAIN).read_bytes()), ""),
    "truncated-7z": (TRAIN, lambda d, _: (d.folder / TRAIN).read_bytes()[:200_000], ""),
    "zero-byte-7z": (TRAIN, lambda d, _: b"", "not a readable 7z"),
    "html-page-as-7z": (TRAIN, lambda d, _: b"<!DOCTYPE html><title>Sign in</title>", "7z"),
    "empty-archive": (TRAIN, _empty_tar_7z, "no images found"),
    "empty-labels-csv": (LABELS_ZIP, lambda d, _: labels_zip(b""), "is empty"),
    "truncated-labels-zip": (
        LABELS_ZIP,
        lambda d, _: (d.folder / LABELS_ZIP).read_bytes()[:60],
        "",
    ),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(ARCHIVE_DAMAGE), ids=list(ARCHIVE_DAMAGE))
def test_a_damaged_download_fails_extraction_and_leaves_nothing(
    data: DataDir, download: Download, tmp_path: Path, case: str
) -> None:
    """A corrupt, truncated or empty file: ArchiveError naming it and saying to re-download."""
    name, damage, words = ARCHIVE_DAMAGE[case]
    path = data.put(name, damage(download, tmp_path))
    with pytest.raises(ArchiveError) as err:
        data.extract(name)
    message = str(err.value)
    assert str(path) in message and REDOWNLOAD in message and words in message
    assert not data.extracted(name)
    if PLANET.file(name).kind == "images":
        out = data.dirs.original(PLANET.file(name).split).folder
        assert_no_output(out)
        assert not (out / PROGRESS_FILE).exists()
    else:
        assert not (data.dirs.tables_dir / LABELS_CSV).exists()
        assert temp_files(data.dirs.tables_dir) == []


# ---------------------------------------------------------------------------------------------
# unsafe or unexpected tar members


def _special(kind: bytes, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo("train-jpg/train_900.jpg")
    info.type, info.linkname = kind, link
    return info


JPEG_HEAD = b"\xff\xd8\xff\xe0" + bytes(60)
MEMBERS = [
    pytest.param(("../train_900.jpg", JPEG_HEAD), "'..'", id="member-dotdot"),
    pytest.param(("train-jpg/../../train_900.jpg", JPEG_HEAD), "'..'", id="member-inner-dotdot"),
    pytest.param(("/tmp/train_900.jpg", JPEG_HEAD), "absolute path", id="member-absolute"),
    pytest.param(_special(tarfile.SYMTYPE, "/etc/passwd"), "symbolic link", id="member-symlink"),
    pytest.param(
        _special(tarfile.LNKTYPE, "train-jpg/train_0.jpg"), "hard link", id="member-hardlink"
    ),
    pytest.param(_special(tarfile.CHRTYPE), "device file", id="member-char-device"),
    pytest.param(_special(tarfile.BLKTYPE), "device file", id="member-block-device"),
    pytest.param(_special(tarfile.FIFOTYPE), "FIFO", id="member-fifo"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("member", "words"), MEMBERS)
def test_an_unsafe_member_fails_extraction_after_shards_were_written(
    data: DataDir, download: Download, tmp_path: Path, member: Any, words: str
) -> None:
    """The bad member comes last: every shard is written first, and all are removed."""
    built = planet_7z(tmp_path / "built" / TRAIN, download.images["train"], [member])
    path = data.put(TRAIN, built.read_bytes())
    written: list[int] = []
    with pytest.raises(ArchiveError) as err:
        data.extract(TRAIN, progress=lambda done, total: written.append(done))
    assert written == [8, 16, 24, 32, 40]  # five complete shards existed before the member
    name = member[0] if isinstance(member, tuple) else member.name
    message = str(err.value)
    assert str(path) in message and repr(name) in message and words in message
    assert REDOWNLOAD in message
    out = data.dirs.original("train").folder
    assert_no_output(out)
    assert not (out / PROGRESS_FILE).exists()
    assert not data.extracted(TRAIN)


# ---------------------------------------------------------------------------------------------
# images that do not decode: damaged JPEGs, and other data named .jpg


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), "green").save(buf, format="PNG")
    return buf.getvalue()


BAD_IMAGE: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    # id: (the image's bad bytes from its JPEG, words the reason given must hold)
    "jpeg-truncated": (lambda jpeg: jpeg[: len(jpeg) // 3], ""),
    "jpeg-garbage-after-marker": (lambda jpeg: jpeg[:2] + bytes(range(256)) * 16, ""),
    "png-named-jpg": (lambda _: _png(), "not a JPEG: no FF D8 start marker (PNG data)"),
    "bytes-named-jpg": (lambda jpeg: bytes(range(255, -1, -1)) * 16, "not a JPEG"),
}


def _with_bad_image(
    data: DataDir, download: Download, tmp_path: Path, split: str, index: int, case: str
) -> tuple[str, list[tuple[str, bytes]]]:
    """Put the `split` archive with its image `index` damaged as `case`, and extract it:
    extraction keeps every image, counting those that do not start like a JPEG."""
    damage, _ = BAD_IMAGE[case]
    images = list(download.images[split])
    bad, jpeg = images[index]
    images[index] = (bad, damage(jpeg))
    name = TRAIN if split == "train" else TEST
    data.put(name, rebuild(tmp_path, name, images))
    manifest = data.extract(name)
    assert manifest["count"] == len(images)
    assert list(shards.iter_images(data.dirs.original(split).folder)) == images  # bytes as given
    assert manifest["not_jpeg"]["examples"] == ([] if case.startswith("jpeg-") else [bad])
    return bad, images


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(BAD_IMAGE), ids=[f"train-{k}" for k in BAD_IMAGE])
def test_an_undecodable_train_image_is_left_out_and_reported(
    data: DataDir, download: Download, tmp_path: Path, case: str
) -> None:
    bad, images = _with_bad_image(data, download, tmp_path, "train", 13, case)  # 2nd shard
    data.extract(LABELS_ZIP)

    manifest = data.resize("train")
    reported = manifest["bad_images"]
    assert [(b["name"], b["shard"]) for b in reported] == [(bad, "part-00001.parquet")]
    assert reported[0]["reason"] and BAD_IMAGE[case][1] in reported[0]["reason"]
    assert data.resized("train") and manifest["count"] == 39
    sized = read_sized(data.dirs.sized(SIZE, "train").folder)
    assert sized.names == [name for name, _ in images if name != bad]
    assert sized.pixels.shape == (39, SIZE, SIZE, 3)
    assert sized.labels is not None
    assert_labels_match(sized.names, sized.labels, download.labels_csv)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(BAD_IMAGE), ids=[f"test-{k}" for k in BAD_IMAGE])
def test_an_undecodable_test_image_fails_the_resize_naming_it(
    data: DataDir, download: Download, tmp_path: Path, case: str
) -> None:
    """A submission needs every test image: the stage fails and writes no manifest."""
    bad, _ = _with_bad_image(data, download, tmp_path, "test", 12, case)  # 2nd (last) shard

    with pytest.raises(BadImageError) as err:
        data.resize("test")
    message = str(err.value)
    assert f"test image {bad} " in message and "part-00001.parquet" in message
    assert BAD_IMAGE[case][1] in message
    assert REDOWNLOAD in message
    out = data.dirs.sized(SIZE, "test").folder
    assert not (out / MANIFEST).exists() and not data.resized("test")
    assert temp_files(out) == []
    # the shard holding the bad image was never written; the one finished before it is whole
    # (kept so that a rerun after re-extraction reuses it)
    assert [p.name for p in shards.shard_files(out)] == ["part-00000.parquet"]
    assert pq.read_metadata(out / "part-00000.parquet").num_rows == SHARD


# ---------------------------------------------------------------------------------------------
# the labels CSV


def assert_labels_match(names: list[str], values: np.ndarray, csv_text: str) -> None:
    """Each image's multi-hot row holds exactly its tags in `csv_text`."""
    tags = {row[0]: row[1].split() for row in csv.reader(io.StringIO(csv_text)) if row}
    for name, row in zip(names, values, strict=True):
        got = [c for c, on in zip(PLANET.classes, row, strict=True) if on]
        assert sorted(got) == sorted(tags[name]), name


def _edit_line(text: str, stem: str, new: str | None) -> str:
    """Replace (None: drop) the line of image `stem`."""
    lines = text.splitlines()
    i = next(k for k, line in enumerate(lines) if line.split(",")[0] == stem)
    lines[i : i + 1] = [] if new is None else [new]
    return "\n".join(lines) + "\n"


CSV_DAMAGE: dict[str, tuple[Callable[[str], str], list[str]]] = {
    # id: (edit of the CSV text, words the error must hold besides the file's name)
    "csv-unknown-tag": (
        lambda t: _edit_line(t, "train_1", "train_1,primary rainforest"),
        ["line 3", "train_1", "rainforest"],
    ),
    "csv-duplicate-name": (
        lambda t: t + "train_5,clear primary\n",
        ["duplicate", "train_5"],
    ),
    "csv-row-of-a-missing-image": (
        lambda t: t + "train_999,clear primary\n",
        ["missing from the train archive", "train_999"],
    ),
    "csv-image-without-row": (
        lambda t: _edit_line(t, "train_7", None),
        ["no row", "train_7"],
    ),
    "csv-empty-tags-cell": (
        lambda t: _edit_line(t, "train_2", "train_2,"),
        ["line 4", "train_2", "empty tags"],
    ),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(CSV_DAMAGE), ids=list(CSV_DAMAGE))
def test_a_bad_labels_csv_fails_before_anything_is_resized(
    data: DataDir, download: Download, case: str
) -> None:
    edit, words = CSV_DAMAGE[case]
    data.put(LABELS_ZIP, labels_zip(edit(download.labels_csv).encode()))
    data.extract(TRAIN)
    data.extract(LABELS_ZIP)  # copied as it is: the labels are read by the next stage

    with pytest.raises(LabelError) as err:
        data.resize("train")
    message = str(err.value)
    assert LABELS_CSV in message and CHECK_LABELS in message
    for word in words:
        assert word in message
    assert_no_output(data.dirs.sized(SIZE, "train").folder)
    assert not data.resized("train")


ENCODINGS: dict[str, Callable[[str], bytes]] = {
    "csv-bom": lambda t: b"\xef\xbb\xbf" + t.encode(),
    "csv-crlf": lambda t: t.replace("\n", "\r\n").encode(),
    "csv-bom-crlf": lambda t: b"\xef\xbb\xbf" + t.replace("\n", "\r\n").encode(),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("encoding", list(ENCODINGS), ids=list(ENCODINGS))
def test_a_labels_csv_with_a_bom_or_crlf_is_accepted(
    data: DataDir, download: Download, encoding: str
) -> None:
    content = ENCODINGS[encoding](download.labels_csv)
    data.put(LABELS_ZIP, labels_zip(content))
    data.extract(TRAIN)
    record = data.extract(LABELS_ZIP)
    assert record["rows"] == 40 and (data.dirs.tables_dir / LABELS_CSV).read_bytes() == content

    manifest = data.resize("train")
    assert manifest["count"] == 40 and manifest["bad_images"] == []
    assert data.resized("train")
    names, values = read_labels(data.dirs.sized(SIZE, "train").folder)
    assert names == [name for name, _ in download.images["train"]] and values is not None
    assert_labels_match(names, values, download.labels_csv)


# ---------------------------------------------------------------------------------------------
# the submission


def _missing_additional(keys: list[str]) -> tuple[list[str], list[str]]:
    """test-jpg-additional forgotten: its four images have no row."""
    return [k for k in keys if not k.startswith("file_")], ["4 missing", "file_0", "file_3"]


SUBMISSION_DAMAGE: dict[str, Callable[[list[str]], tuple[list[str], list[str]]]] = {
    # id: keys -> (the names predicted, words the error must hold)
    "submission-missing-rows": _missing_additional,
    "submission-extra-row": lambda keys: ([*keys, "test_999"], ["1 extra", "test_999"]),
    "submission-duplicate-row": lambda keys: ([*keys, keys[3]], ["1 duplicate", keys[3]]),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(SUBMISSION_DAMAGE), ids=list(SUBMISSION_DAMAGE))
def test_a_submission_with_wrong_rows_is_not_written(data: DataDir, case: str) -> None:
    """tasks.predict.write_submission's call, checked against the real sample submission."""
    data.extract(SAMPLE_ZIP)
    keys = submission.expected_keys(PLANET, data.dirs.tables_dir)
    assert len(keys) == 20
    names, words = SUBMISSION_DAMAGE[case](keys)
    probs = np.random.default_rng(0).random((len(names), len(PLANET.classes)))
    path = data.dirs.submissions_dir / "run.csv"
    with pytest.raises(SubmissionError) as err:
        submission.make_submission(PLANET, data.dirs.tables_dir, path, names, probs, thresholds=0.2)
    message = str(err.value)
    assert "image_name" in message and "re-run the predict stage" in message
    for word in words:
        assert word in message
    assert not path.exists() and temp_files(data.dirs.submissions_dir) == []


# ---------------------------------------------------------------------------------------------
# the recipe


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "lr",
    ["-1e-3", -0.001, "slice(1e-5, -2e-3)", "slice(-1e-5, 2e-3)", "slice(-1e-5)"],
    ids=[
        "recipe-negative-lr",
        "recipe-negative-lr-number",
        "recipe-negative-lr-slice-hi",
        "recipe-negative-lr-slice-lo",
        "recipe-negative-lr-slice-one",
    ],
)
def test_a_recipe_with_a_negative_learning_rate_is_refused_when_read(
    tmp_path: Path, lr: str | float
) -> None:
    """`planet run --recipe file.json`: refused while reading, naming the stage's setting."""
    path = tmp_path / "recipe.json"
    stages_ = [{"size": 32, "lr": "1e-3"}, {"size": 32, "lr": lr}]
    path.write_text(json.dumps({"name": "neg", "arch": "resnet18", "stages": stages_}))
    with pytest.raises(RecipeError) as err:
        load_recipe(str(path))
    message = str(err.value)
    assert "stage 2" in message and "lr" in message and str(path) in message
    assert str(lr) in message and "must be positive" in message


@pytest.mark.timeout(60)
def test_a_recipe_size_the_resize_stage_did_not_make_fails_the_train_stage(data: DataDir) -> None:
    """The train task's first step (its fingerprint) names the size and what to change."""
    data.extract(TRAIN)
    data.extract(LABELS_ZIP)
    data.resize("train")  # 32 px only
    recipe = Recipe(
        name="wrong-size",
        arch="resnet18",
        pretrained=False,
        stages=[TrainStage(size=48, epochs=1, lr="1e-3", batch_size=8)],
    )
    with pytest.raises(stages.StageError) as err:
        stages.fingerprint(data.dirs, recipe, 0, None)
    message = str(err.value)
    assert str(data.dirs.sized(48, "train").folder) in message
    assert "add 48 to the resize stage's sizes" in message
    assert not stages.model_run(data.dirs, recipe).folder.exists()


@pytest.mark.timeout(60)
def test_a_model_size_the_test_shards_do_not_have_fails_the_predict_stage(data: DataDir) -> None:
    data.extract(TEST)
    data.resize("test")  # 32 px only
    with pytest.raises(FileNotFoundError) as err:
        prediction_inputs(data.dirs, "test", 48)
    message = str(err.value)
    assert str(data.dirs.sized(48, "test").folder) in message
    assert "the resize stage must include size 48" in message
    assert not data.dirs.predictions_dir.exists()


# ---------------------------------------------------------------------------------------------
# a full disk


class FullDisk:
    """`open` for one module: files opened for writing take `free` more bytes in all, then a
    write fails with ENOSPC after writing what still fits (as a real full disk does)."""

    def __init__(self, free: int) -> None:
        self.free = free

    def open(self, file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        fh = builtins.open(file, mode, *args, **kwargs)  # noqa: SIM115 (its user closes it)
        return _LimitedFile(fh, self) if "w" in mode else fh


class _LimitedFile:
    def __init__(self, fh: Any, disk: FullDisk) -> None:
        self._fh, self._disk = fh, disk

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if len(view) > self._disk.free:
            self._fh.write(view[: self._disk.free])
            self._disk.free = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._disk.free -= len(view)
        return self._fh.write(view)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)

    def __enter__(self) -> _LimitedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()


def assert_disk_full(err: pytest.ExceptionInfo[OSError], path: Path) -> None:
    """An OSError of the OS's errno, naming the file that did not fit and what to do."""
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(path)
    message = str(err.value)
    assert os.strerror(errno.ENOSPC) in message and str(path) in message
    assert "free some space" in message


@pytest.mark.timeout(60)
def test_a_full_disk_while_extracting_keeps_only_whole_shards(
    data: DataDir, download: Download, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = download.shard_bytes["train"]
    disk = FullDisk(sizes[0] + sizes[1] + sizes[2] // 2)  # the third shard does not fit
    monkeypatch.setattr(shards, "open", disk.open, raising=False)
    out = data.dirs.original("train").folder
    with pytest.raises(OSError) as err:
        data.extract(TRAIN)
    assert_disk_full(err, out / "part-00002.parquet")
    assert not (out / MANIFEST).exists() and not data.extracted(TRAIN)
    assert temp_files(out) == []
    # the two shards written before are whole and recorded for the rerun; nothing else is there
    kept = read_json(out / PROGRESS_FILE)["shards"]
    assert [p.name for p in shards.shard_files(out)] == [r["name"] for r in kept]
    assert [r["name"] for r in kept] == ["part-00000.parquet", "part-00001.parquet"]
    assert all(sha256_file(out / r["name"]) == r["sha256"] for r in kept)

    monkeypatch.undo()  # space freed: the rerun keeps them and finishes
    manifest = data.extract(TRAIN)
    assert manifest["count"] == 40 and manifest["shards"][:2] == kept
    assert data.extracted(TRAIN) and shards.verify(out, checksums=True) == manifest


@pytest.mark.timeout(60)
def test_a_full_disk_while_resizing_keeps_only_whole_shards(
    data: DataDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    data.extract(TRAIN)
    data.extract(LABELS_ZIP)
    pixels = SHARD * SIZE * SIZE * 3  # one sized shard's pixel bytes (plus a small footer)
    disk = FullDisk(pixels * 3 // 2)  # the sink pyarrow writes through, on a disk this full
    monkeypatch.setattr(
        "planet.resize.shard.open_sink", lambda path: pa.PythonFile(disk.open(path, "wb"), "w")
    )
    out = data.dirs.sized(SIZE, "train").folder
    with pytest.raises(OSError) as err:
        data.resize("train")
    assert_disk_full(err, out / "part-00001.parquet")
    assert not (out / MANIFEST).exists() and not data.resized("train")
    assert temp_files(out) == []
    assert [p.name for p in shards.shard_files(out)] == ["part-00000.parquet"]
    assert pq.read_metadata(out / "part-00000.parquet").num_rows == SHARD

    monkeypatch.undo()
    manifest = data.resize("train")
    assert manifest["count"] == 40 and data.resized("train")
