"""Reading a `.zip` of images (`train/cat.0.jpg`, ...) into the shard builder, and the zip
helpers the tables share: member kinds, the errors of a damaged zip."""

from __future__ import annotations

import lzma
import stat
import zipfile
import zlib
from pathlib import Path

from planet.competitions import DataFile
from planet.extract.members import REDOWNLOAD, ArchiveError, classify, corrupt, member_error
from planet.extract.shard_builder import ShardBuilder


def zip_kind(info: zipfile.ZipInfo) -> str:
    if info.is_dir():
        return "dir"
    mode = info.external_attr >> 16
    if info.create_system == 3 and mode:  # unix permissions recorded
        if stat.S_ISLNK(mode):
            return "symlink"
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            return "device"
        if stat.S_ISFIFO(mode):
            return "fifo"
        if stat.S_ISSOCK(mode):
            return "socket"
    return "file"


ZIP_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, lzma.LZMAError, ValueError)


def open_zip(archive: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(archive)
    except ZIP_READ_ERRORS as exc:
        raise corrupt(archive, exc, "zip") from exc


def stream_zip(archive: Path, data_file: DataFile, builder: ShardBuilder) -> None:
    with open_zip(archive) as zf:
        infos = zf.infolist()
        total = 0
        for info in infos:  # check every member before writing anything
            if classify(archive, data_file, info.filename, zip_kind(info)) is not None:
                total += 1
        builder.estimate_total = lambda count: total
        for info in infos:
            if not builder.begin(info.filename, zip_kind(info), info.file_size):
                continue
            if info.flag_bits & 0x1:
                raise member_error(archive, info.filename, "is encrypted; refusing it")
            try:
                data = zf.read(info)
            except NotImplementedError as exc:
                raise member_error(archive, info.filename, f"cannot be read: {exc}") from exc
            except ZIP_READ_ERRORS as exc:
                raise ArchiveError(
                    f"{archive}: member {info.filename!r} is damaged ({exc}); the file is "
                    f"corrupt or truncated: {REDOWNLOAD}"
                ) from exc
            builder.end(data)
