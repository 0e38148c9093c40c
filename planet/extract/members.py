"""What every archive member is checked against, and the errors an archive fails with.

Member rules (every member is checked, whatever its name):

- unsafe members fail with `ArchiveError` naming the archive and the member: absolute paths,
  `..` components, symbolic links, hard links, devices, FIFOs, sockets and other special
  types, sparse files, encrypted zip members;
- images are regular files named `<inner_dir>/<stem>.jpg` (or `.jpeg`, any case); the image
  name is the stem. A `.jpg` anywhere else (a sub-folder, another top folder) fails: the
  archive is not laid out like Kaggle's, so it is probably the wrong file. With a
  `name_prefix` (Planet), every stem must start with it. The bytes are stored as they are,
  even when they do not start with the JPEG marker (`FF D8`): one bad image is not a bad
  archive. The resize stage, which decodes every image, leaves a train image it cannot decode
  out and reports it, and fails naming a test one (`planet.resize`). Extraction counts such
  images in the manifest (`not_jpeg`, with the first 20 image names) as an early warning;
- skipped and counted in the manifest (`skipped`, with the first 20 names): directories, files that are not `.jpg`
  (`.DS_Store`, `Thumbs.db`, a README), hidden files (names starting with `.`, including
  macOS `._*` resource forks) and anything under `__MACOSX/`;
- an archive with no image, or with two images of the same name, fails.

A corrupt or truncated archive fails with `ArchiveError` naming the file and saying to
re-download it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from planet.competitions import DataFile

MAX_IMAGE_BYTES = 64 << 20  # one image member larger than this is refused (zip/tar bombs)
IMAGE_EXTENSIONS = (".jpg", ".jpeg")
JPEG_MAGIC = b"\xff\xd8"
REDOWNLOAD = "re-download it"


class ArchiveError(Exception):
    """An archive is corrupt, truncated, unsafe or not laid out as expected."""


def corrupt(archive: Path, exc: BaseException, kind: str) -> ArchiveError:
    detail = str(exc) or type(exc).__name__
    return ArchiveError(
        f"{archive}: not a readable {kind} archive ({type(exc).__name__}: {detail}); "
        f"the file is corrupt or truncated: {REDOWNLOAD}"
    )


# --------------------------------------------------------------------------------------------
# member rules


def member_error(archive: Path, member: str, what: str) -> ArchiveError:
    return ArchiveError(f"{archive}: member {member!r} {what}")


def safe_parts(archive: Path, member: str) -> list[str]:
    """The path components of `member`, refusing absolute and `..` paths."""
    if not member or "\x00" in member:
        raise member_error(archive, member, "has an empty or invalid name; " + REDOWNLOAD)
    norm = member.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise member_error(
            archive,
            member,
            "has an absolute path; refusing to extract an unsafe archive: " + REDOWNLOAD,
        )
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise member_error(
            archive,
            member,
            "has a '..' path component; refusing to extract an unsafe archive: " + REDOWNLOAD,
        )
    return parts


KIND_WORDS = {
    "symlink": "is a symbolic link",
    "hardlink": "is a hard link",
    "device": "is a device file",
    "fifo": "is a FIFO",
    "socket": "is a socket",
    "sparse": "is a sparse file",
    "other": "is a special tar member",
}


def classify(archive: Path, data_file: DataFile, member: str, kind: str) -> str | None:
    """The image name of `member`, None for a member to skip; `ArchiveError` if it is unsafe
    or a misplaced image. `kind`: file, dir, symlink, hardlink, device, fifo, socket, ..."""
    parts = safe_parts(archive, member)
    if kind != "file" and kind != "dir":
        raise member_error(
            archive,
            member,
            f"{KIND_WORDS.get(kind, 'is not a regular file')}; image archives hold only "
            "regular files, so this one is unsafe or not Kaggle's original: refusing to extract "
            "it; " + REDOWNLOAD,
        )
    if kind == "dir" or not parts:
        return None
    base = parts[-1]
    if parts[0] == "__MACOSX" or base.startswith("."):
        return None
    stem, ext = os.path.splitext(base)
    if ext.lower() not in IMAGE_EXTENSIONS:
        return None
    expected = data_file.inner_dir.strip("/").split("/") if data_file.inner_dir else []
    where = f"{'/'.join(expected)}/" if expected else "the top of the archive"
    if parts[:-1] != expected:
        raise member_error(
            archive,
            member,
            f"is an image outside {where}: {data_file.name} should hold its images as "
            f"{'/'.join([*expected, '<name>.jpg'])}; is this the right file?",
        )
    if data_file.name_prefix and not stem.startswith(data_file.name_prefix):
        raise member_error(
            archive,
            member,
            f"does not start with {data_file.name_prefix!r} like every image of "
            f"{data_file.name}; is this the right file?",
        )
    return stem
