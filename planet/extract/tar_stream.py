"""An incremental tar parser: the decoded bytes of a `.tar.7z`'s tar, fed in chunks, are cut
into members for the shard builder without writing the tar or the small files to disk."""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from pathlib import Path

from planet.extract.members import REDOWNLOAD, ArchiveError
from planet.extract.shard_builder import ShardBuilder

MAX_META_BYTES = 1 << 20  # GNU long names and pax headers
_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)


_TAR_KINDS: dict[bytes, str] = {
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.CONTTYPE: "file",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
    tarfile.CHRTYPE: "device",
    tarfile.BLKTYPE: "device",
    tarfile.FIFOTYPE: "fifo",
    tarfile.GNUTYPE_SPARSE: "sparse",
}


def _number(field: bytes) -> int:
    """A tar number field: octal text, or GNU base-256 (first byte 0x80 or 0xff)."""
    if field[0] in (0x80, 0xFF):
        n = int.from_bytes(field[1:], "big")
        return n - 256 ** (len(field) - 1) if field[0] == 0xFF else n
    text = field.split(b"\x00", 1)[0].strip()
    return int(text, 8) if text else 0


def _text(field: bytes) -> str:
    return field.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")


def _parse_header(block: bytes) -> tuple[str, int, bytes]:
    """(name, size, type) of a 512-byte tar header, checksum verified; `ValueError` if it is
    not a valid header. The same rules as `tarfile.TarInfo.frombuf`, about 10x faster."""
    stored = _number(block[148:156])
    unsigned = 256 + sum(block[:148]) + sum(block[156:])
    # (old Sun/NeXT tars summed signed chars: tarfile.calc_chksums gives both variants)
    if stored != unsigned and stored not in tarfile.calc_chksums(block):
        raise ValueError("bad checksum")
    name = _text(block[0:100])
    size = _number(block[124:136])
    typ = block[156:157]
    if typ == tarfile.AREGTYPE and name.endswith("/"):
        typ = tarfile.DIRTYPE
    if typ == tarfile.DIRTYPE:
        name = name.rstrip("/")
    prefix = _text(block[345:500])
    if prefix and typ not in tarfile.GNU_TYPES:
        name = f"{prefix}/{name}"
    return name, size, typ


def _parse_pax(data: bytes) -> dict[str, str]:
    """The records of a pax extended header: `<len> <key>=<value>\\n` ..."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos)
        if space < 0:
            raise ValueError("pax record without a length")
        length = int(data[pos:space])
        record = data[space + 1 : pos + length]
        if length <= 0 or not record.endswith(b"\n") or b"=" not in record:
            raise ValueError("malformed pax record")
        key, _, value = record[:-1].partition(b"=")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


class TarStream:
    """An incremental tar parser fed by `write()`: announces each member to `builder.begin`
    and delivers wanted member bytes to `builder.end`, holding at most one member in memory.
    Understands ustar, GNU long names/links and pax headers."""

    def __init__(self, archive: Path, builder: ShardBuilder, tar_size: int) -> None:
        self.archive = archive
        self.builder = builder
        self.tar_size = tar_size
        self._buf = bytearray()
        self._pos = 0  # parse position in _buf
        self._base = 0  # tar offset of _buf[0]
        self._written = 0
        self._skip = 0  # bytes still to discard (data not wanted, padding)
        self._want: tuple[int, Callable[[bytes], None]] | None = None
        self._ended = False
        self._long_name: str | None = None
        self._pax: dict[str, str] = {}

    def write(self, s: bytes | bytearray) -> int:
        """Feed the next decoded bytes of the tar."""
        self._written += len(s)
        if self._ended:
            return len(s)
        if self._pos:
            del self._buf[: self._pos]
            self._base += self._pos
            self._pos = 0
        self._buf += s
        self._parse()
        return len(s)

    def size(self) -> int:
        """Bytes fed so far."""
        return self._written

    # parsing
    @property
    def offset(self) -> int:
        """Bytes of the tar parsed so far."""
        return self._base + self._pos

    def _parse(self) -> None:
        buf = self._buf
        while not self._ended:
            avail = len(buf) - self._pos
            if self._skip:
                step = min(self._skip, avail)
                self._pos += step
                self._skip -= step
                if self._skip:
                    return
                continue
            if self._want is not None:
                size, handler = self._want
                if avail < size:
                    return
                data = bytes(buf[self._pos : self._pos + size])
                self._pos += size
                self._skip = -size % _BLOCK
                self._want = None
                handler(data)
                continue
            if avail < _BLOCK:
                return
            block = bytes(buf[self._pos : self._pos + _BLOCK])
            self._pos += _BLOCK
            self._header(block)

    def _damaged(self, what: str) -> ArchiveError:
        return ArchiveError(
            f"{self.archive}: the tar inside is damaged ({what}); the download is corrupt or "
            "truncated: " + REDOWNLOAD
        )

    def _header(self, block: bytes) -> None:
        start = self.offset - _BLOCK
        if block == _ZERO_BLOCK:
            self._ended = True  # end-of-archive marker; the rest is padding
            return
        try:
            header_name, size, typ = _parse_header(block)
        except ValueError as exc:
            raise self._damaged(f"bad member header at byte {start:,}: {exc}") from exc
        padded_skip = -size % _BLOCK
        if typ in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
            self._expect_meta(size, self._long_name_data if typ == b"L" else _ignore)
            return
        if typ in (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE):
            self._expect_meta(size, self._pax_data)
            return
        if typ == tarfile.XGLTYPE:  # global pax header: nothing we use
            self._expect_meta(size, _ignore)
            return
        name = self._pax.get("path") or self._long_name or header_name
        if "size" in self._pax:
            try:
                size = int(self._pax["size"])
            except ValueError as exc:
                raise self._damaged(f"bad pax size for {name!r}") from exc
            padded_skip = -size % _BLOCK
        self._long_name, self._pax = None, {}
        if size < 0:
            raise self._damaged(f"negative size for {name!r}")
        kind = _TAR_KINDS.get(typ, "other")
        if self.builder.begin(name, kind, size):
            self._want = (size, self.builder.end)
        else:
            self._skip = size + padded_skip

    def _expect_meta(self, size: int, handler: Callable[[bytes], None]) -> None:
        if size > MAX_META_BYTES:
            raise self._damaged(f"a {size:,}-byte extended header")
        self._want = (size, handler)

    def _long_name_data(self, data: bytes) -> None:
        self._long_name = data.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")

    def _pax_data(self, data: bytes) -> None:
        try:
            self._pax = _parse_pax(data)
        except ValueError as exc:
            raise self._damaged(f"bad pax header: {exc}") from exc

    def finish(self) -> None:
        """The stream ended: check it did not stop inside a member."""
        if self._ended:
            return
        leftover = len(self._buf) - self._pos
        if self._want is not None or self._skip or leftover:
            raise self._damaged(f"it ends inside a member at byte {self.offset + leftover:,}")


def _ignore(data: bytes) -> None:
    return None
