"""The shard builder: checks each member it is told of, in archive order, and groups the images
into parquet shards (`planet.store.shards`), writing only the shards an earlier run did not.

After each shard it writes, `.progress.json` records the source, the config and the shards
written so far, so an interrupted extraction resumes (`planet.extract.images`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from planet import hooks
from planet.competitions import DataFile
from planet.extract.members import (
    JPEG_MAGIC,
    MAX_IMAGE_BYTES,
    REDOWNLOAD,
    ArchiveError,
    classify,
    member_error,
)
from planet.fileio import write_json_atomic
from planet.store.shards import image_table, shard_files, shard_name, write_shard

Progress = Callable[[int, int | None], None]

PROGRESS_FILE = ".progress.json"


class ShardBuilder:
    """Receives members in archive order, groups images into shards and writes the shards
    not already complete from an earlier run."""

    def __init__(
        self,
        archive: Path,
        data_file: DataFile,
        out_dir: Path,
        shard_size: int,
        state: dict[str, Any],
        files_tmp: Path | None,
        progress: Progress | None,
    ) -> None:
        self.archive = archive
        self.data_file = data_file
        self.out_dir = out_dir
        self.shard_size = shard_size
        self.state = state  # the progress file's content; state["shards"] = reusable records
        self.reusable: list[dict[str, Any]] = list(state["shards"])
        self.files_tmp = files_tmp
        self.progress = progress
        self.estimate_total: Callable[[int], int | None] = lambda count: None
        self.seen: set[str] = set()
        self.count = 0
        self.image_bytes = 0
        self.skipped = 0
        self.skipped_examples: list[str] = []  # the first 20
        self.not_jpeg = 0  # images whose bytes do not start with FF D8 (stored all the same)
        self.not_jpeg_examples: list[str] = []  # the first 20 names
        self.shards: list[dict[str, Any]] = []
        self._names: list[str] = []
        self._jpegs: list[bytes] = []
        self._stem: str | None = None

    def begin(self, member: str, kind: str, size: int) -> bool:
        """A member's header; True if its bytes are wanted (then `end(data)` follows)."""
        stem = classify(self.archive, self.data_file, member, kind)
        if stem is None:
            if kind == "file":
                self.skipped += 1
                if len(self.skipped_examples) < 20:
                    self.skipped_examples.append(member)
            return False
        if size > MAX_IMAGE_BYTES:
            raise member_error(
                self.archive, member, f"is {size:,} bytes, too large for an image; refusing it"
            )
        if stem in self.seen:
            raise member_error(
                self.archive,
                member,
                f"repeats the image name {stem!r}: two images of the same name; " + REDOWNLOAD,
            )
        self.seen.add(stem)
        self._stem = stem
        return True

    def end(self, data: bytes) -> None:
        """The bytes of the member announced by the last `begin`, stored as they are: one
        that is not a JPEG is only counted (the resize stage decides what becomes of it)."""
        assert self._stem is not None
        if not data.startswith(JPEG_MAGIC):
            self.not_jpeg += 1
            if len(self.not_jpeg_examples) < 20:
                self.not_jpeg_examples.append(self._stem)
        if self.files_tmp is not None:
            with open(self.files_tmp / f"{self._stem}.jpg", "wb") as fh:
                fh.write(data)
        self._names.append(self._stem)
        self._jpegs.append(data)
        self.count += 1
        self.image_bytes += len(data)
        self._stem = None
        if len(self._names) >= self.shard_size:
            self._flush()

    def _flush(self) -> None:
        index = len(self.shards)
        names, jpegs = self._names, self._jpegs
        self._names, self._jpegs = [], []
        path = self.out_dir / shard_name(index)
        old = self.reusable[index] if index < len(self.reusable) else None
        if (
            old is not None
            and old["name"] == path.name
            and old["rows"] == len(names)
            and old.get("first") == names[0]
            and old.get("last") == names[-1]
            and path.is_file()
            and path.stat().st_size == old["bytes"]
        ):
            self.shards.append(old)  # complete from an earlier run: not rewritten
        else:
            del self.reusable[index:]  # a mismatch: nothing from here on can be reused
            self.shards.append(write_shard(path, image_table(names, jpegs)))
            self.state["shards"] = list(self.shards)
            write_json_atomic(self.out_dir / PROGRESS_FILE, self.state)
            hooks.emit("extract.shard", split=self.data_file.split, index=index, name=path.name)
        if self.progress is not None:
            self.progress(self.count, self.estimate_total(self.count))

    def finish(self) -> list[dict[str, Any]]:
        """Write the last shard; check there was at least one image."""
        if self._names:
            self._flush()
        if self.count == 0:
            expected = self.data_file.inner_dir or "its top level"
            raise ArchiveError(
                f"{self.archive}: no images found (expected .jpg files under {expected}/); "
                f"the archive is empty or not {self.data_file.name}: " + REDOWNLOAD
            )
        keep = {s["name"] for s in self.shards}
        for path in shard_files(self.out_dir):
            if path.name not in keep:
                path.unlink()
        return self.shards
