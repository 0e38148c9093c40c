"""Listing a competition's files: RemoteFile, Kaggle's record of one file, and list_files."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from planet.kaggle import client
from planet.kaggle.credentials import Credentials
from planet.kaggle.errors import KaggleNotFoundError

LIST_PAGE_SIZE = 20  # the CLI's default page size; more pages are followed


@dataclass(frozen=True)
class RemoteFile:
    """A file as Kaggle lists it; `identity` changes when Kaggle's copy changes."""

    name: str
    size: int
    creation_date: str | None = None

    @property
    def identity(self) -> str:
        return f"{self.size}:{self.creation_date or ''}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "creation_date": self.creation_date}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RemoteFile:
        try:
            return cls(str(d["name"]), int(d["size"]), d.get("creation_date"))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"not a remote file record (need name, size): {dict(d)!r}") from None


def as_remote(remote: RemoteFile | Mapping[str, Any]) -> RemoteFile:
    return remote if isinstance(remote, RemoteFile) else RemoteFile.from_dict(remote)


def iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat(timespec="milliseconds")
    return str(value)


def list_files(
    slug: str, endpoint: str | None = None, credentials: Credentials | None = None
) -> list[RemoteFile]:
    """All files of the competition (every page), as Kaggle lists them."""
    creds, endpoint = client.resolve(credentials, endpoint)
    api = client.api(creds, endpoint)
    files: list[RemoteFile] = []
    token: str | None = None
    seen: set[str] = set()
    while True:
        page = client.call(
            lambda t=token: api.competition_list_files(
                slug, page_token=t, page_size=LIST_PAGE_SIZE
            ),
            creds,
            slug,
        )
        for f in page.files:
            files.append(RemoteFile(f.name, int(f.total_bytes or 0), iso(f.creation_date)))
        token = page.next_page_token
        if not token or token in seen:
            return files
        seen.add(token)


def find_remote(slug: str, name: str, endpoint: str | None, creds: Credentials) -> RemoteFile:
    files = list_files(slug, endpoint, creds)
    for f in files:
        if f.name == name:
            return f
    listed = ", ".join(f.name for f in files) or "(nothing)"
    raise KaggleNotFoundError(
        f"competition {slug!r} has no file {name!r}; it lists: {listed}", slug=slug, file_name=name
    )
