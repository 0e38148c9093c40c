"""Kaggle credentials: found the way the kaggle CLI finds them, or passed in.

Credentials are read by `load_credentials` (or passed in) and handed to the client
explicitly; the key never appears in an exception message, repr or log line from here.
Besides the environment and kaggle.json, a caller may name further places to look after those
(`CredentialSource`: a secrets store such as a Prefect Secret block; tasks/credentials.py).
"""

from __future__ import annotations

import base64
import json
import os
import stat
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planet.kaggle.errors import InsecureCredentialsWarning, KaggleCredentialsError

API_TOKEN_PAGE = "https://www.kaggle.com/settings/api"
MIN_SECRET_LEN = 6


@dataclass(frozen=True, repr=False)
class Credentials:
    """A Kaggle username + API key, or an access token; `source` says where they came from.

    The secret never shows in repr/str.
    """

    username: str | None
    key: str | None = None
    token: str | None = None
    source: str = "given explicitly"

    def __post_init__(self) -> None:
        if self.token:
            return
        if not self.username or not self.key:
            raise KaggleCredentialsError(
                f"Kaggle credentials from {self.source} need both a username and a key "
                "(or an access token)"
            )

    def __repr__(self) -> str:
        secret = "token=***" if self.token else "key=***"
        return f"Credentials(username={self.username!r}, {secret}, source={self.source!r})"

    __str__ = __repr__

    def secrets(self) -> tuple[str, ...]:
        """Every form in which the secret could leak into text (for scrubbing).

        Strings shorter than MIN_SECRET_LEN are left out: scrubbing them would mangle every
        message, and no real Kaggle key or token is that short.
        """
        out = [s for s in (self.key, self.token) if s]
        if self.username and self.key:
            out.append(base64.b64encode(f"{self.username}:{self.key}".encode()).decode())
        return tuple(s for s in out if len(s) >= MIN_SECRET_LEN)


CredentialValue = str | Mapping[str, Any]


@dataclass(frozen=True)
class CredentialSource:
    """A further place to look for credentials, after the environment and kaggle.json.

    `name` says where in messages ("the Prefect Secret block 'kaggle-credentials'"); `read()`
    returns what it holds (kaggle.json's text, or a mapping with "username" and "key", or with
    "token") or None when it holds nothing; `hint` tells the user how to fill it.
    """

    name: str
    read: Callable[[], CredentialValue | None]
    hint: str = ""


def credentials_from_value(value: CredentialValue, source: str) -> Credentials:
    """Credentials from kaggle.json's content (text or mapping) or {"token": ...}.

    Messages name `source` and the fields it lacks, never what it holds.
    """
    shape = '{"username": "<your Kaggle username>", "key": "<your API key>"}'
    data: Any = value
    if isinstance(value, str):
        try:
            data = json.loads(value)
        except ValueError:
            raise KaggleCredentialsError(
                f"{source} is not JSON: it should hold kaggle.json's content, {shape}"
            ) from None
    if not isinstance(data, Mapping):
        raise KaggleCredentialsError(f"{source} should hold kaggle.json's content, {shape}")
    token = data.get("token")
    if token:
        return Credentials(str(data.get("username") or "") or None, token=str(token), source=source)
    if not data.get("username") or not data.get("key"):
        raise KaggleCredentialsError(
            f'{source} must contain "username" and "key" ({shape}; download a fresh '
            f"kaggle.json from {API_TOKEN_PAGE})"
        )
    return Credentials(str(data["username"]), str(data["key"]), source=source)


def _config_dirs(config_dir: str | os.PathLike[str] | None) -> list[Path]:
    if config_dir is not None:
        return [Path(config_dir).expanduser()]
    env_dir = os.environ.get("KAGGLE_CONFIG_DIR")
    if env_dir:
        return [Path(env_dir).expanduser()]
    home = Path.home()
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(home / ".config")
    return [home / ".kaggle", Path(xdg) / "kaggle"]


def _read_token_file(path: Path, source: str) -> Credentials:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise KaggleCredentialsError(
            f"could not read the Kaggle access token file {path}: {exc.strerror}"
        ) from None
    if not token:
        raise KaggleCredentialsError(f"the Kaggle access token file {path} is empty")
    return Credentials(None, token=token, source=source)


def _read_kaggle_json(path: Path) -> Credentials:
    if os.name != "nt":
        mode = path.stat().st_mode
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            warnings.warn(
                f"Your Kaggle API key file {path} is readable by other users on this system; "
                f"to fix this, run 'chmod 600 {path}'",
                InsecureCredentialsWarning,
                stacklevel=3,
            )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise KaggleCredentialsError(f"could not read {path}: {exc.strerror}") from None
    except ValueError:
        raise KaggleCredentialsError(
            f"{path} is not valid JSON: it should look like "
            '{"username": "<your Kaggle username>", "key": "<your API key>"}'
        ) from None
    if not isinstance(data, dict) or not data.get("username") or not data.get("key"):
        raise KaggleCredentialsError(
            f'{path} must contain "username" and "key" (download a fresh kaggle.json from '
            f"{API_TOKEN_PAGE})"
        )
    return Credentials(str(data["username"]), str(data["key"]), source=str(path))


def load_credentials(
    config_dir: str | os.PathLike[str] | None = None,
    more: Sequence[CredentialSource] = (),
) -> Credentials:
    """Find Kaggle credentials the way the kaggle CLI does, environment first.

    Order: KAGGLE_USERNAME + KAGGLE_KEY; KAGGLE_API_TOKEN (a token or a path to a token file);
    `kaggle.json` then `access_token` in `config_dir` (else KAGGLE_CONFIG_DIR, else
    ~/.kaggle then $XDG_CONFIG_HOME/kaggle); then each of `more`, in order. Warns
    (InsecureCredentialsWarning) when kaggle.json is readable by group/others; raises
    KaggleCredentialsError naming every place it looked when nothing is found.
    """
    user = os.environ.get("KAGGLE_USERNAME") or None
    key = os.environ.get("KAGGLE_KEY") or None
    if user and key:
        return Credentials(user, key, source="environment KAGGLE_USERNAME/KAGGLE_KEY")
    if user or key:
        have, lack = (
            ("KAGGLE_USERNAME", "KAGGLE_KEY") if user else ("KAGGLE_KEY", "KAGGLE_USERNAME")
        )
        raise KaggleCredentialsError(
            f"{have} is set but {lack} is not: set both, or unset {have} to use kaggle.json"
        )
    token = os.environ.get("KAGGLE_API_TOKEN") or None
    if token:
        path = Path(token).expanduser()
        if path.is_file():
            return _read_token_file(path, f"file {path} (named by KAGGLE_API_TOKEN)")
        return Credentials(None, token=token.strip(), source="environment KAGGLE_API_TOKEN")
    dirs = _config_dirs(config_dir)
    for d in dirs:
        if (d / "kaggle.json").is_file():
            return _read_kaggle_json(d / "kaggle.json")
        for name in ("access_token", "access_token.txt"):
            if (d / name).is_file():
                return _read_token_file(d / name, str(d / name))
    for source in more:
        value = source.read()
        if value is not None:
            return credentials_from_value(value, source.name)
    places = [f"for {', '.join(str(d / 'kaggle.json') for d in dirs)}"]
    places += [f"in {source.name}" for source in more]
    looked = ", ".join(places[:-1]) + (" and " if len(places) > 1 else "") + places[-1]
    hints = "".join(f", or {source.hint}" for source in more if source.hint)
    raise KaggleCredentialsError(
        "No Kaggle credentials found: looked for KAGGLE_USERNAME/KAGGLE_KEY and "
        f"KAGGLE_API_TOKEN in the environment and {looked}. Create an API token at "
        f"{API_TOKEN_PAGE}, save the downloaded kaggle.json as {dirs[0] / 'kaggle.json'} "
        f"(then chmod 600 it), or set KAGGLE_USERNAME and KAGGLE_KEY{hints}."
    )
