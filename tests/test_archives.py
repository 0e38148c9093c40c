"""Streaming extraction (planet.extract) and the parquet shard helpers (planet.store.shards).

Every archive is built here, in tmp_path, with tarfile/zipfile/py7zr.
"""

from __future__ import annotations

import io
import json
import lzma
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import py7zr
import pyarrow.parquet as pq
import pytest
import simplejpeg

from planet.competitions import DOGS_VS_CATS, PLANET
from planet.constants import MANIFEST
from planet.extract.images import ExtractJob, extract_images, extract_many, images_complete
from planet.extract.members import ArchiveError
from planet.extract.sevenzip import find_7z
from planet.extract.shard_builder import PROGRESS_FILE
from planet.extract.tables import extract_table, table_complete, table_record
from planet.fileio import LOCK_FILE, folder_lock, sha256_file
from planet.store import shards

TRAIN = PLANET.file("train-jpg.tar.7z")
LABELS = PLANET.file("train_v2.csv.zip")
DVC_TRAIN = DOGS_VS_CATS.file("train.zip")
DVC_SAMPLE = DOGS_VS_CATS.file("sample_submission.csv")

DECODERS = [
    "py7zr",
    pytest.param(
        "7z",
        marks=pytest.mark.skipif(find_7z() is None, reason="7-Zip is not installed"),
    ),
]


def jpeg(i: int, size: int = 16) -> bytes:
    """A small, valid, distinct JPEG."""
    rng = np.random.default_rng(i)
    img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    return simplejpeg.encode_jpeg(img, quality=90)


def images(n: int, prefix: str = "train_") -> list[tuple[str, bytes]]:
    return [(f"{prefix}{i}", jpeg(i)) for i in range(n)]


def tar_bytes(entries: list[tarfile.TarInfo | tuple[str, bytes]], fmt: int = tarfile.GNU_FORMAT):
    """A tar of `entries`: (name, data) regular files or ready TarInfo objects (no data)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for e in entries:
            if isinstance(e, tarfile.TarInfo):
                tar.addfile(e)
            else:
                info = tarfile.TarInfo(e[0])
                info.size = len(e[1])
                tar.addfile(info, io.BytesIO(e[1]))
    return buf.getvalue()


def dir_entry(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info


def planet_tar(imgs: list[tuple[str, bytes]], extra: list | None = None) -> bytes:
    entries: list = [dir_entry("train-jpg")]
    entries += [(f"train-jpg/{name}.jpg", data) for name, data in imgs]
    return tar_bytes(entries + (extra or []))


def write_7z(path: Path, files: dict[str, bytes]) -> Path:
    filters = [{"id": lzma.FILTER_LZMA2, "preset": 1}]
    path.parent.mkdir(parents=True, exist_ok=True)
    with py7zr.SevenZipFile(path, "w", filters=filters) as z:
        for name, data in files.items():
            z.writef(io.BytesIO(data), name)
    return path


def planet_7z(path: Path, imgs: list[tuple[str, bytes]], extra: list | None = None) -> Path:
    return write_7z(path, {"train-jpg.tar": planet_tar(imgs, extra)})


def leftovers(out_dir: Path) -> list[str]:
    """Anything but the lock file left in an output folder."""
    if not out_dir.exists():
        return []
    return sorted(p.name for p in out_dir.iterdir() if p.name != LOCK_FILE)


# ---------------------------------------------------------------------------------------------
# tar.7z


@pytest.mark.parametrize("decoder", DECODERS)
def test_tar_7z_round_trip(tmp_path, decoder):
    imgs = images(7)
    extra = [(".DS_Store", b"junk"), ("train-jpg/._train_0.jpg", b"resource fork")]
    extra.append(("train-jpg/README.txt", b"hello"))
    archive = planet_7z(tmp_path / "train-jpg.tar.7z", imgs, extra)
    out = tmp_path / "shards"
    calls = []
    m = extract_images(
        archive,
        TRAIN,
        out,
        shard_size=3,
        decoder=decoder,
        progress=lambda d, t: calls.append((d, t)),
    )

    assert m["count"] == 7 and m["split"] == "train"
    assert [s["rows"] for s in m["shards"]] == [3, 3, 1]
    assert [s["name"] for s in m["shards"]] == [shards.shard_name(i) for i in range(3)]
    assert [(s["first"], s["last"]) for s in m["shards"]][0] == ("train_0", "train_2")
    assert m["source"] == {
        "name": "train-jpg.tar.7z",
        "sha256": sha256_file(archive),
        "bytes": archive.stat().st_size,
        "format": "tar.7z",
    }
    assert m["config"] == {"format_version": shards.FORMAT_VERSION, "shard_size": 3}
    assert m["skipped"]["count"] == 3
    assert m["not_jpeg"] == {"count": 0, "examples": []}
    assert m["image_bytes"] == sum(len(d) for _, d in imgs)
    assert json.loads((out / MANIFEST).read_text()) == m
    assert leftovers(out) == [MANIFEST, *(s["name"] for s in m["shards"])]
    # names in archive order, bytes unchanged
    assert list(shards.iter_images(out)) == imgs
    table = shards.read_table(out)
    assert table.column_names == ["image_name", "jpeg", "nbytes"]
    assert table.column("nbytes").to_pylist() == [len(d) for _, d in imgs]
    names, jpegs = shards.read_shard(out / "part-00001.parquet")
    assert names == ["train_3", "train_4", "train_5"] and jpegs == [d for _, d in imgs[3:6]]
    assert shards.verify(out, checksums=True) == m
    assert calls[-1] == (7, 7) and [d for d, _ in calls[:3]] == [3, 6, 7]


def test_files_dir_written_and_complete(tmp_path):
    imgs = images(5)
    archive = planet_7z(tmp_path / "train-jpg.tar.7z", imgs)
    files = tmp_path / "images" / "train"
    m = extract_images(archive, TRAIN, tmp_path / "shards", shard_size=2, files_dir=files)
    assert sorted(p.name for p in files.iterdir()) == sorted(f"{n}.jpg" for n, _ in imgs)
    for name, data in imgs:
        assert (files / f"{name}.jpg").read_bytes() == data
    assert sorted(p.name for p in files.parent.iterdir()) == ["train"]  # no temp folder left
    sha = m["source"]["sha256"]
    assert images_complete(tmp_path / "shards", sha, shard_size=2, files_dir=files) == m

    # files deleted: the shards are complete, so only the folder is written again
    (files / "train_0.jpg").unlink()
    assert images_complete(tmp_path / "shards", sha, shard_size=2, files_dir=files) is None
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "shards").glob("part-*")}
    extract_images(archive, TRAIN, tmp_path / "shards", shard_size=2, files_dir=files)
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "shards").glob("part-*")}
    assert before == after
    assert (files / "train_0.jpg").read_bytes() == imgs[0][1]


def test_interrupted_files_dir_never_looks_complete(tmp_path):
    archive = planet_7z(tmp_path / "train-jpg.tar.7z", images(5))
    files = tmp_path / "images" / "train"
    with pytest.raises(Crash):
        extract_images(
            archive,
            TRAIN,
            tmp_path / "shards",
            shard_size=2,
            files_dir=files,
            progress=_crash_after_first_shard,
        )
    assert list(files.parent.iterdir()) == []  # neither the folder nor its temporary copy
    extract_images(archive, TRAIN, tmp_path / "shards", shard_size=2, files_dir=files)
    assert len(list(files.iterdir())) == 5


def test_long_names_gnu_and_pax(tmp_path):
    long = "train_" + "x" * 150
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT):
        name = long if fmt != tarfile.USTAR_FORMAT else "train_0"
        tar = tar_bytes([dir_entry("train-jpg"), (f"train-jpg/{name}.jpg", jpeg(1))], fmt)
        archive = write_7z(tmp_path / f"{fmt}.tar.7z", {"train-jpg.tar": tar})
        out = tmp_path / f"out-{fmt}"
        extract_images(archive, TRAIN, out)
        assert list(shards.iter_images(out)) == [(name, jpeg(1))]


def _symlink() -> tarfile.TarInfo:
    info = tarfile.TarInfo("train-jpg/train_9.jpg")
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return info


def _hardlink() -> tarfile.TarInfo:
    info = tarfile.TarInfo("train-jpg/train_9.jpg")
    info.type, info.linkname = tarfile.LNKTYPE, "train-jpg/train_0.jpg"
    return info


def _special(kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo("train-jpg/train_9.jpg")
    info.type = kind
    return info


@pytest.mark.parametrize(
    ("member", "words"),
    [
        (("../train_9.jpg", jpeg(9)), "'..'"),
        (("train-jpg/../../train_9.jpg", jpeg(9)), "'..'"),
        (("/etc/train_9.jpg", jpeg(9)), "absolute path"),
        (_symlink(), "symbolic link"),
        (_hardlink(), "hard link"),
        (_special(tarfile.CHRTYPE), "device"),
        (_special(tarfile.BLKTYPE), "device"),
        (_special(tarfile.FIFOTYPE), "FIFO"),
    ],
    ids=["dotdot", "dotdot-inner", "absolute", "symlink", "hardlink", "chr", "blk", "fifo"],
)
@pytest.mark.parametrize("decoder", DECODERS)
def test_unsafe_tar_members_rejected(tmp_path, member, words, decoder):
    archive = planet_7z(tmp_path / "train-jpg.tar.7z", images(4), [member])
    out = tmp_path / "shards"
    written = []
    with pytest.raises(ArchiveError) as err:
        extract_images(  # 2 shards are written before the bad member
            archive,
            TRAIN,
            out,
            shard_size=2,
            decoder=decoder,
            progress=lambda d, t: written.append(d),
        )
    assert written == [2, 4]
    msg = str(err.value)
    name = member[0] if isinstance(member, tuple) else member.name
    assert str(archive) in msg and repr(name) in msg and words in msg
    assert leftovers(out) == []


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ([("train-jpg/sub/train_9.jpg", jpeg(9))], "outside train-jpg/"),
        ([("other/train_9.jpg", jpeg(9))], "outside train-jpg/"),
        ([("train-jpg/test_9.jpg", jpeg(9))], "does not start with 'train_'"),
        ([("train-jpg/train_1.jpg", jpeg(9))], "same name"),
    ],
    ids=["nested", "other-dir", "prefix", "duplicate"],
)
def test_unexpected_members_rejected(tmp_path, extra, words):
    archive = planet_7z(tmp_path / "train-jpg.tar.7z", images(4), extra)
    out = tmp_path / "shards"
    with pytest.raises(ArchiveError, match=words) as err:
        extract_images(archive, TRAIN, out, shard_size=2)
    assert repr(extra[0][0]) in str(err.value)
    assert leftovers(out) == []


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("data", [b"GIF89a....", b""], ids=["gif", "empty"])
def test_a_member_named_jpg_that_is_not_a_jpeg_is_kept(tmp_path, decoder, data):
    """One bad image is not a bad archive: its bytes are stored as they are (the resize stage
    leaves it out or fails naming it) and the manifest counts it."""
    imgs = images(4)
    imgs.insert(2, ("train_9", data))
    archive = planet_7z(tmp_path / "train-jpg.tar.7z", imgs)
    out = tmp_path / "shards"
    m = extract_images(archive, TRAIN, out, shard_size=2, decoder=decoder)
    assert m["count"] == 5 and m["not_jpeg"] == {"count": 1, "examples": ["train_9"]}
    assert list(shards.iter_images(out)) == imgs


def test_empty_archive(tmp_path):
    archive = write_7z(tmp_path / "train-jpg.tar.7z", {"train-jpg.tar": planet_tar([])})
    with pytest.raises(ArchiveError, match="no images found"):
        extract_images(archive, TRAIN, tmp_path / "shards")
    assert leftovers(tmp_path / "shards") == []


def test_7z_must_hold_one_tar(tmp_path):
    archive = write_7z(
        tmp_path / "train-jpg.tar.7z", {"a.tar": planet_tar(images(1)), "b.txt": b"x"}
    )
    with pytest.raises(ArchiveError, match="exactly one .tar"):
        extract_images(archive, TRAIN, tmp_path / "shards")


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_corrupt_7z(tmp_path, decoder, damage):
    archive = planet_7z(tmp_path / "train-jpg.tar.7z", images(60))
    data = bytearray(archive.read_bytes())
    if damage == "flip":
        mid = len(data) // 2
        data[mid : mid + 64] = bytes(b ^ 0xFF for b in data[mid : mid + 64])
    elif damage == "truncate":
        data = data[: len(data) * 2 // 3]
    else:
        data = bytearray(b"not a 7z archive at all" * 10)
    archive.write_bytes(bytes(data))
    out = tmp_path / "shards"
    with pytest.raises(ArchiveError, match="re-download it") as err:
        extract_images(archive, TRAIN, out, shard_size=5, decoder=decoder)
    assert str(archive) in str(err.value)
    assert leftovers(out) == []


# ---------------------------------------------------------------------------------------------
# resume, completion


class Crash(Exception):
    pass


def _crash_after_first_shard(done: int, total: int | None) -> None:
    raise Crash(f"simulated crash after {done} images")


@pytest.mark.parametrize("decoder", DECODERS)
def test_resume_after_crash_reuses_complete_shards(tmp_path, decoder):
    archive = planet_7z(tmp_path / "train-jpg.tar.7z", images(8))
    out = tmp_path / "shards"
    with pytest.raises(Crash):
        extract_images(
            archive, TRAIN, out, shard_size=3, progress=_crash_after_first_shard, decoder=decoder
        )
    assert leftovers(out) == [PROGRESS_FILE, "part-00000.parquet"]
    first = (out / "part-00000.parquet").stat()

    m = extract_images(archive, TRAIN, out, shard_size=3, decoder=decoder)
    again = (out / "part-00000.parquet").stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    reference = extract_images(archive, TRAIN, tmp_path / "clean", shard_size=3)
    assert m == reference
    for s in m["shards"]:
        assert (out / s["name"]).read_bytes() == (tmp_path / "clean" / s["name"]).read_bytes()
    assert leftovers(out) == [
        MANIFEST,
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]


def test_resume_after_sigkill(tmp_path):
    archive = planet_7z(tmp_path / "train-jpg.tar.7z", images(8))
    out = tmp_path / "shards"
    script = (
        "import os, signal, sys\n"
        "from planet.extract.images import extract_images\n"
        "from planet.competitions import PLANET\n"
        "def kill(done, total):\n"
        "    if done >= 6: os.kill(os.getpid(), signal.SIGKILL)\n"
        "extract_images(sys.argv[1], PLANET.file('train-jpg.tar.7z'), sys.argv[2],"
        " shard_size=3, progress=kill, decoder='py7zr')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(archive), str(out)], check=False)
    assert proc.returncode == -9
    assert leftovers(out) == [PROGRESS_FILE, "part-00000.parquet", "part-00001.parquet"]
    stats = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("part-*")}
    m = extract_images(archive, TRAIN, out, shard_size=3)
    assert m["count"] == 8
    for name, st in stats.items():
        assert ((out / name).stat().st_ino, (out / name).stat().st_mtime_ns) == st
    assert list(shards.iter_images(out)) == images(8)


def test_leftovers_of_another_archive_or_config_are_discarded(tmp_path):
    a = planet_7z(tmp_path / "a" / "train-jpg.tar.7z", images(8))
    b = planet_7z(tmp_path / "b" / "train-jpg.tar.7z", images(8)[::-1])
    out = tmp_path / "shards"
    with pytest.raises(Crash):
        extract_images(a, TRAIN, out, shard_size=3, progress=_crash_after_first_shard)
    m = extract_images(b, TRAIN, out, shard_size=3)
    assert [n for n, _ in shards.iter_images(out)] == [n for n, _ in images(8)[::-1]]
    assert m == extract_images(b, TRAIN, tmp_path / "clean", shard_size=3)

    # a complete split from another config is rebuilt, not reused
    m4 = extract_images(b, TRAIN, out, shard_size=4)
    assert [s["rows"] for s in m4["shards"]] == [4, 4]
    assert leftovers(out) == [MANIFEST, "part-00000.parquet", "part-00001.parquet"]


def test_complete_split_returns_without_decoding(tmp_path, monkeypatch):
    archive = planet_7z(tmp_path / "train-jpg.tar.7z", images(5))
    out = tmp_path / "shards"
    m = extract_images(archive, TRAIN, out, shard_size=2)
    sha = m["source"]["sha256"]
    assert images_complete(out, sha, shard_size=2) == m
    assert images_complete(out, sha, shard_size=3) is None
    assert images_complete(out, "0" * 64, shard_size=2) is None

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded a complete split")

    monkeypatch.setattr("planet.extract.images.stream_tar_7z", no_decoding)
    assert extract_images(archive, TRAIN, out, shard_size=2) == m
    assert extract_images(archive, TRAIN, out, shard_size=2, archive_sha256=sha) == m

    # a shard that lost bytes makes the split incomplete: it is extracted again
    monkeypatch.undo()
    with open(out / "part-00001.parquet", "r+b") as fh:
        fh.truncate(100)
    assert images_complete(out, sha, shard_size=2) is None
    with pytest.raises(shards.ShardError, match="part-00001.parquet has 100 bytes"):
        shards.verify(out)
    assert extract_images(archive, TRAIN, out, shard_size=2) == m
    assert shards.verify(out, checksums=True) == m


def test_busy_output_folder(tmp_path):
    archive = planet_7z(tmp_path / "train-jpg.tar.7z", images(2))
    out = tmp_path / "shards"
    with folder_lock(out), pytest.raises(RuntimeError, match="another process"):
        extract_images(archive, TRAIN, out)


def test_extract_many_in_threads(tmp_path):
    jobs = []
    for i in range(2):
        archive = planet_7z(tmp_path / f"{i}" / "train-jpg.tar.7z", images(3 + i))
        jobs.append(ExtractJob(archive, TRAIN, tmp_path / f"out{i}", shard_size=2))
    manifests = extract_many(jobs, workers=2)
    assert [m["count"] for m in manifests] == [3, 4]


# ---------------------------------------------------------------------------------------------
# zip (Dogs vs Cats)


def dvc_zip(path: Path, entries: list[tuple[str, bytes]], mode: int | None = None) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(zipfile.ZipInfo("train/"), b"")
        for name, data in entries:
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if mode is not None and name.endswith("link.jpg"):
                info.create_system = 3
                info.external_attr = mode << 16
            zf.writestr(info, data)
    return path


def test_zip_round_trip(tmp_path):
    imgs = [("cat.0", jpeg(0)), ("dog.0", jpeg(1)), ("cat.1", jpeg(2))]
    entries = [(f"train/{n}.jpg", d) for n, d in imgs]
    entries += [("__MACOSX/train/._cat.0.jpg", b"x"), ("train/Thumbs.db", b"x")]
    archive = dvc_zip(tmp_path / "train.zip", entries)
    out = tmp_path / "shards"
    files = tmp_path / "images" / "train"
    m = extract_images(archive, DVC_TRAIN, out, shard_size=2, files_dir=files)
    assert m["count"] == 3 and m["source"]["format"] == "zip" and m["skipped"]["count"] == 2
    assert list(shards.iter_images(out)) == imgs
    assert (files / "dog.0.jpg").read_bytes() == jpeg(1)


@pytest.mark.parametrize(
    ("name", "mode", "words"),
    [
        ("../cat.9.jpg", None, "'..'"),
        ("/tmp/cat.9.jpg", None, "absolute path"),
        ("train/link.jpg", 0o120777, "symbolic link"),
    ],
)
def test_zip_unsafe_members(tmp_path, name, mode, words):
    archive = dvc_zip(tmp_path / "train.zip", [("train/cat.0.jpg", jpeg(0)), (name, b"x")], mode)
    with pytest.raises(ArchiveError, match=words) as err:
        extract_images(archive, DVC_TRAIN, tmp_path / "shards")
    assert repr(name) in str(err.value)
    assert leftovers(tmp_path / "shards") == []


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_zip(tmp_path, damage):
    entries = [(f"train/cat.{i}.jpg", jpeg(i, 32)) for i in range(10)]
    archive = dvc_zip(tmp_path / "train.zip", entries)
    data = bytearray(archive.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        mid = len(data) // 2
        data[mid : mid + 16] = bytes(b ^ 0xFF for b in data[mid : mid + 16])
    archive.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match="re-download it") as err:
        extract_images(archive, DVC_TRAIN, tmp_path / "shards", shard_size=2)
    assert str(archive) in str(err.value)
    assert leftovers(tmp_path / "shards") == []


# ---------------------------------------------------------------------------------------------
# tables


def test_extract_table_keeps_bom_and_crlf(tmp_path):
    content = "\ufeffimage_name,tags\r\ntrain_0,clear primary\r\ntrain_1,haze\r\n".encode()
    src = tmp_path / "raw" / "train_v2.csv.zip"
    src.parent.mkdir()
    with zipfile.ZipFile(src, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("train_v2.csv", content)
        zf.writestr("__MACOSX/._train_v2.csv", b"x")
    out = tmp_path / "tables"
    rec = extract_table(src, LABELS, out)
    assert (out / "train_v2.csv").read_bytes() == content
    assert rec["name"] == "train_v2.csv" and rec["rows"] == 2 and rec["bytes"] == len(content)
    assert rec["source"]["sha256"] == sha256_file(src)
    assert table_complete(out, LABELS, sha256_file(src))
    assert not table_complete(out, LABELS, "0" * 64)
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE, MANIFEST, "train_v2.csv"]

    plain = tmp_path / "raw" / "sample_submission.csv"
    plain.write_bytes(b"id,label\n1,0.5\n2,0.5\n3,0.5")
    rec2 = extract_table(plain, DVC_SAMPLE, out)
    assert rec2["rows"] == 3 and (out / "sample_submission.csv").read_bytes() == plain.read_bytes()
    assert table_record(out, LABELS, sha256_file(src)) == rec  # both recorded


@pytest.mark.parametrize(
    ("member", "words"),
    [
        ("data/train_v2.csv", "folder path"),
        ("../train_v2.csv", "'..'"),
        ("/train_v2.csv", "absolute"),
    ],
)
def test_extract_table_rejects_paths(tmp_path, member, words):
    src = tmp_path / "train_v2.csv.zip"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr(member, b"image_name,tags\n")
    with pytest.raises(ArchiveError, match=words):
        extract_table(src, LABELS, tmp_path / "tables")
    assert not (tmp_path / "tables" / "train_v2.csv").exists()


def test_extract_table_corrupt_zip(tmp_path):
    src = tmp_path / "train_v2.csv.zip"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr("train_v2.csv", b"image_name,tags\n" + b"train_0,clear\n" * 100)
    src.write_bytes(src.read_bytes()[:50])
    with pytest.raises(ArchiveError, match="re-download it"):
        extract_table(src, LABELS, tmp_path / "tables")


# ---------------------------------------------------------------------------------------------
# shard helpers


def test_shard_writer_is_deterministic_and_uncompressed(tmp_path):
    imgs = images(4)
    table = shards.image_table([n for n, _ in imgs], [d for _, d in imgs])
    rec1 = shards.write_shard(tmp_path / "a.parquet", table)
    rec2 = shards.write_shard(tmp_path / "b.parquet", table)
    assert rec1["sha256"] == rec2["sha256"] == sha256_file(tmp_path / "a.parquet")
    assert rec1["rows"] == 4 and rec1["bytes"] == (tmp_path / "a.parquet").stat().st_size
    meta = pq.ParquetFile(tmp_path / "a.parquet").metadata
    assert meta.num_row_groups == 1
    assert meta.row_group(0).column(1).compression == "UNCOMPRESSED"
    assert not list(tmp_path.glob(".tmp-*"))


def test_read_manifest_of_incomplete_folder(tmp_path):
    with pytest.raises(shards.ShardError, match="no manifest.json"):
        shards.read_manifest(tmp_path)


def test_iter_batches_sizes(tmp_path):
    archive = planet_7z(tmp_path / "train-jpg.tar.7z", images(5))
    extract_images(archive, TRAIN, tmp_path / "s", shard_size=3)
    sizes = [len(n) for n, _ in shards.iter_batches(tmp_path / "s", batch_rows=2)]
    assert sizes == [2, 1, 2]
    assert os.path.basename(shards.shard_paths(tmp_path / "s")[-1]) == "part-00001.parquet"
