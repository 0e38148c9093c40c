"""Thin wrapper over the real `kaggle` client: credentials, listing, verified resumable
downloads, submissions, and Kaggle's HTTP errors mapped to a few exception classes.

The client is imported lazily (inside the functions): `kaggle` 2.x signs in when imported.

Endpoint redirection. Every function takes `endpoint`: None means kaggle.com; a base URL
such as `http://127.0.0.1:8765` (planet.kaggle_local's server) sends every call there. The
client only knows fixed environments (kagglesdk.kaggle_env: PROD, LOCAL = http://localhost,
...), so each call here builds its own kagglesdk client for the LOCAL environment and sets
that one client's endpoint: nothing process-wide changes, and concurrent calls to different
endpoints don't interfere. `use_endpoint` does the process-wide equivalent
(KAGGLE_API_ENVIRONMENT=LOCALHOST + kagglesdk's endpoint table, restored on exit) for code
that drives `KaggleApi` directly.

Credentials are read by `load_credentials` (or passed in) and handed to the client
explicitly; the key never appears in an exception message, repr or log line from here.
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import io
import json
import logging
import os
import re
import stat
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from planet.fileio import read_json, sha256_file, write_json_atomic
from planet.layout import MANIFEST

try:  # POSIX: also lock against other processes sharing the folder
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

T = TypeVar("T")

KAGGLE_WEB = "https://www.kaggle.com"
API_TOKEN_PAGE = "https://www.kaggle.com/settings/api"
PARTIAL_DIR = ".partial"  # in dest_dir: downloads in progress (+ the client's resume markers)
RESUME_MARKER_SUFFIX = ".kaggle-partial"  # the client's marker beside a partial file
LIST_PAGE_SIZE = 20  # the CLI's default page size; more pages are followed
SUBMISSION_PAGE_SIZE = 20
SUBMISSION_MAX_PAGES = 20
PROGRESS_INTERVAL_S = 0.5
DEFAULT_CLIENT_RETRIES = 3
MIN_SECRET_LEN = 6


# ----- errors -----------------------------------------------------------------------------


class KaggleError(Exception):
    """A Kaggle call failed; the message says what to do. `status` is the HTTP status, if any."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        slug: str | None = None,
        file_name: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.slug = slug
        self.file_name = file_name


class KaggleAuthError(KaggleError):
    """401: Kaggle rejected the credentials."""


class KaggleCredentialsError(KaggleAuthError):
    """No usable credentials were found (or kaggle.json is malformed)."""


class KaggleRulesError(KaggleError):
    """403: typically the competition's rules have not been accepted on kaggle.com."""


class KaggleNotFoundError(KaggleError):
    """404: no such competition or file."""


class KaggleSubmissionLimitError(KaggleError):
    """The daily submission allowance is used up (retrying today won't help)."""


class KaggleTransientError(KaggleError):
    """429, 5xx, a dropped connection or an incomplete download: worth retrying later.

    `retry_after`: seconds the server asked to wait (Retry-After), if it said.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class InsecureCredentialsWarning(UserWarning):
    """kaggle.json can be read by other users."""


def is_transient(exc: BaseException) -> bool:
    """Is this error worth retrying (with backoff)? For the orchestration's retry condition."""
    if isinstance(exc, KaggleTransientError):
        return True
    if isinstance(exc, KaggleError):
        return False
    try:
        import requests
    except ImportError:  # pragma: no cover - requests is a dependency
        return False
    return isinstance(
        exc,
        requests.ConnectionError | requests.Timeout | requests.exceptions.ChunkedEncodingError,
    )


# ----- credentials --------------------------------------------------------------------------


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


def load_credentials(config_dir: str | os.PathLike[str] | None = None) -> Credentials:
    """Find Kaggle credentials the way the kaggle CLI does, environment first.

    Order: KAGGLE_USERNAME + KAGGLE_KEY; KAGGLE_API_TOKEN (a token or a path to a token file);
    `kaggle.json` then `access_token` in `config_dir` (else KAGGLE_CONFIG_DIR, else
    ~/.kaggle then $XDG_CONFIG_HOME/kaggle). Warns (InsecureCredentialsWarning) when
    kaggle.json is readable by group/others; raises KaggleCredentialsError when nothing is found.
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
    looked = ", ".join(str(d / "kaggle.json") for d in dirs)
    raise KaggleCredentialsError(
        "No Kaggle credentials found: looked for KAGGLE_USERNAME/KAGGLE_KEY and "
        f"KAGGLE_API_TOKEN in the environment and for {looked}. Create an API token at "
        f"{API_TOKEN_PAGE}, save the downloaded kaggle.json as {dirs[0] / 'kaggle.json'} "
        "(then chmod 600 it), or set KAGGLE_USERNAME and KAGGLE_KEY."
    )


# ----- the client, lazily -----------------------------------------------------------------

_import_lock = threading.Lock()
_kaggle_api_cls: Any = None


def _kaggle_api_class() -> Any:
    """kaggle.api.kaggle_api_extended.KaggleApi, imported on first use.

    Importing `kaggle` signs in with whatever it finds and prints auth help to stdout when it
    finds nothing; that output is swallowed here (this module does its own credential checks).
    """
    global _kaggle_api_cls
    with _import_lock:
        if _kaggle_api_cls is None:
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    module = importlib.import_module("kaggle.api.kaggle_api_extended")
            except OSError as exc:
                raise KaggleError(
                    f"importing the kaggle client failed ({exc.strerror}: {exc.filename}); it "
                    "creates its config folder on import: set KAGGLE_CONFIG_DIR to a writable folder"
                ) from None
            _kaggle_api_cls = module.KaggleApi
        return _kaggle_api_cls


def normalize_endpoint(endpoint: str | None) -> str | None:
    """None/"" -> None (kaggle.com); otherwise a checked base URL without a trailing slash."""
    if endpoint is None or not endpoint.strip():
        return None
    url = endpoint.strip().rstrip("/")
    if url.endswith("/api/v1"):
        url = url[: -len("/api/v1")]
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
        raise ValueError(
            f"Kaggle endpoint {endpoint!r} is not a base URL like http://127.0.0.1:8765 "
            "(leave it empty for kaggle.com)"
        )
    return url


def _client(creds: Credentials, endpoint: str | None) -> Any:
    """A kagglesdk client for this endpoint, signed in with exactly these credentials.

    kagglesdk's own sign-in also consults KAGGLE_API_TOKEN and ~/.kaggle/access_token, which
    could override the credentials chosen here; it is skipped by setting the session's auth
    directly (kagglesdk 0.1.x attributes, pinned via kaggle==2.2.4).
    """
    from kagglesdk.kaggle_client import KaggleClient
    from kagglesdk.kaggle_env import KaggleEnv
    from kagglesdk.kaggle_http_client import KaggleHttpClient

    env = KaggleEnv.PROD if endpoint is None else KaggleEnv.LOCAL
    client = KaggleClient(
        env=env, verbose=False, username=creds.username, password=creds.key, api_token=creds.token
    )
    http = client.http_client()
    if endpoint is not None:
        http._endpoint = endpoint  # LOCAL serves under {endpoint}/api/v1/...
    http._signed_in = True  # skip kagglesdk's environment/file credential lookup
    http._init_session()
    if creds.token:
        http._session.auth = KaggleHttpClient.BearerAuth(creds.token)
    else:
        http._session.auth = (creds.username, creds.key)
    return client


def _api(creds: Credentials, endpoint: str | None) -> Any:
    """A KaggleApi whose every call goes to `endpoint` with `creds` (no authenticate())."""
    api = _kaggle_api_class()()
    api.config_values = {
        k: v
        for k, v in (("username", creds.username), ("key", creds.key), ("token", creds.token))
        if v
    }
    api._authenticated = True
    api.build_kaggle_client = lambda: _client(creds, endpoint)
    return api


_global_lock = threading.RLock()


@contextlib.contextmanager
def use_endpoint(endpoint: str | None) -> Iterator[None]:
    """Point KaggleApi objects used inside the block at `endpoint` (process-wide; restored).

    Sets KAGGLE_API_ENVIRONMENT=LOCALHOST, kagglesdk.kaggle_env._env_to_endpoint[LOCAL] and
    KaggleApi.args (which the client computes once, at import) for code that drives the raw
    client. Blocks are serialised by a lock. This module's functions don't need it.
    """
    url = normalize_endpoint(endpoint)
    api_cls = _kaggle_api_class()
    from kagglesdk import kaggle_env

    with _global_lock:
        saved_env = os.environ.get("KAGGLE_API_ENVIRONMENT")
        saved_url = kaggle_env._env_to_endpoint[kaggle_env.KaggleEnv.LOCAL]
        saved_args = api_cls.args
        try:
            if url is not None:
                os.environ["KAGGLE_API_ENVIRONMENT"] = "LOCALHOST"
                kaggle_env._env_to_endpoint[kaggle_env.KaggleEnv.LOCAL] = url
                api_cls.args = [a for a in saved_args if a != "--local"] + ["--local"]
            yield
        finally:
            if saved_env is None:
                os.environ.pop("KAGGLE_API_ENVIRONMENT", None)
            else:
                os.environ["KAGGLE_API_ENVIRONMENT"] = saved_env
            kaggle_env._env_to_endpoint[kaggle_env.KaggleEnv.LOCAL] = saved_url
            api_cls.args = saved_args


# ----- error mapping ----------------------------------------------------------------------

_URL_QUERY = re.compile(r"(https?://[^\s?'\"<>]+)\?[^\s'\"<>]*")


def _scrub(text: str, creds: Credentials | None) -> str:
    """Remove the secret (and signed-URL query strings) from text meant for humans."""
    if creds is not None:
        for secret in creds.secrets():
            text = text.replace(secret, "***")
    return _URL_QUERY.sub(r"\1?<redacted>", text)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from email.utils import parsedate_to_datetime

        when = parsedate_to_datetime(value)
        return max(0.0, (when - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


def _server_message(exc: Any) -> str:
    response = exc.response
    try:
        body = response.json()
        if isinstance(body, dict) and body.get("message"):
            return str(body["message"])
    except Exception:  # not JSON, or the stream was consumed
        pass
    return str(exc) or response.reason or ""


def _translate(
    exc: BaseException, creds: Credentials, slug: str, name: str | None
) -> KaggleError | None:
    """The KaggleError for a client/HTTP exception; None when it isn't one of those."""
    import requests
    from urllib3 import exceptions as u3

    what = f"file {name!r} of competition {slug!r}" if name else f"competition {slug!r}"
    ctx = {"slug": slug, "file_name": name}
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        status = exc.response.status_code
        detail = _scrub(_server_message(exc), creds)
        if status == 401:
            return KaggleAuthError(
                f"Kaggle rejected the credentials (HTTP 401: {detail}); check your credentials "
                f"(read from {creds.source})",
                status=status,
                **ctx,
            )
        if status == 403:
            return KaggleRulesError(
                f"Kaggle refused access to {what} (HTTP 403: {detail}); accept the competition "
                f"rules at {KAGGLE_WEB}/c/{slug}/rules while signed in as "
                f"{creds.username or 'the token owner'}, then try again",
                status=status,
                **ctx,
            )
        if status == 404:
            return KaggleNotFoundError(
                f"Kaggle has no {what} (HTTP 404: {detail}); check the competition slug "
                "and the file name",
                status=status,
                **ctx,
            )
        if status == 429:
            wait = _retry_after(exc.response.headers.get("Retry-After"))
            hint = f"retry after {wait:g} s" if wait is not None else "retry later"
            return KaggleTransientError(
                f"Kaggle rate-limited the request for {what} (HTTP 429: {detail}); {hint}",
                retry_after=wait,
                status=status,
                **ctx,
            )
        if status >= 500 or status == 408:
            return KaggleTransientError(
                f"Kaggle failed on {what} (HTTP {status}: {detail}); this is usually temporary: "
                "the stage retries it; if it keeps failing, rerun the stage later",
                retry_after=_retry_after(exc.response.headers.get("Retry-After")),
                status=status,
                **ctx,
            )
        if "daily submission allowance" in detail.lower():
            return KaggleSubmissionLimitError(
                f"{detail} (competition {slug!r})", status=status, **ctx
            )
        return KaggleError(
            f"Kaggle answered HTTP {status} for {what}: {detail}", status=status, **ctx
        )
    transient = (
        requests.ConnectionError,
        requests.Timeout,
        requests.exceptions.ChunkedEncodingError,
        u3.ProtocolError,
        u3.ReadTimeoutError,
    )
    if isinstance(exc, transient):
        return KaggleTransientError(
            f"the connection to Kaggle broke while fetching {what} "
            f"({type(exc).__name__}: {_scrub(str(exc), creds)}); retry",
            **ctx,
        )
    return None


def _call(fn: Callable[[], T], creds: Credentials, slug: str, name: str | None = None) -> T:
    """Run a client call, raising a KaggleError (with no link to the client's exception,
    whose request object holds the credentials) for HTTP and connection failures."""
    try:
        return fn()
    except KaggleError:
        raise
    except Exception as exc:
        err = _translate(exc, creds, slug, name)
        if err is None:
            raise
    raise err  # outside the except block: no __context__ chaining to the original


# ----- listing ------------------------------------------------------------------------------


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


def _as_remote(remote: RemoteFile | Mapping[str, Any]) -> RemoteFile:
    return remote if isinstance(remote, RemoteFile) else RemoteFile.from_dict(remote)


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat(timespec="milliseconds")
    return str(value)


def _resolve(
    credentials: Credentials | None, endpoint: str | None
) -> tuple[Credentials, str | None]:
    return credentials or load_credentials(), normalize_endpoint(endpoint)


def list_files(
    slug: str, endpoint: str | None = None, credentials: Credentials | None = None
) -> list[RemoteFile]:
    """All files of the competition (every page), as Kaggle lists them."""
    creds, endpoint = _resolve(credentials, endpoint)
    api = _api(creds, endpoint)
    files: list[RemoteFile] = []
    token: str | None = None
    seen: set[str] = set()
    while True:
        page = _call(
            lambda t=token: api.competition_list_files(
                slug, page_token=t, page_size=LIST_PAGE_SIZE
            ),
            creds,
            slug,
        )
        for f in page.files:
            files.append(RemoteFile(f.name, int(f.total_bytes or 0), _iso(f.creation_date)))
        token = page.next_page_token
        if not token or token in seen:
            return files
        seen.add(token)


def _find_remote(slug: str, name: str, endpoint: str | None, creds: Credentials) -> RemoteFile:
    files = list_files(slug, endpoint, creds)
    for f in files:
        if f.name == name:
            return f
    listed = ", ".join(f.name for f in files) or "(nothing)"
    raise KaggleNotFoundError(
        f"competition {slug!r} has no file {name!r}; it lists: {listed}", slug=slug, file_name=name
    )


# ----- the manifest -------------------------------------------------------------------------

_locks_guard = threading.Lock()
_locks: dict[str, threading.Lock] = {}


@contextlib.contextmanager
def _locked(lock_file: Path) -> Iterator[None]:
    """Exclusive lock: a thread lock per path plus flock for other processes."""
    key = str(lock_file.resolve())
    with _locks_guard:
        lock = _locks.setdefault(key, threading.Lock())
    with lock:
        if fcntl is None:  # pragma: no cover
            yield
            return
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_file, "a") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def read_manifest(dest_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """dest_dir/manifest.json: file name -> size, sha256, remote identity, ... ({} if none)."""
    path = Path(dest_dir) / MANIFEST
    if not path.exists():
        return {}
    try:
        data = read_json(path)
    except ValueError:
        raise ValueError(
            f"{path} is not valid JSON: delete it to re-verify the downloads"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} should map file names to records: delete it to re-verify")
    return data


def _update_manifest(dest_dir: Path, name: str, entry: dict[str, Any]) -> None:
    with _locked(dest_dir / PARTIAL_DIR / "manifest.lock"):
        manifest = read_manifest(dest_dir)
        manifest[name] = entry
        write_json_atomic(dest_dir / MANIFEST, manifest)


def _entry_complete(
    path: Path, entry: Mapping[str, Any] | None, remote: RemoteFile, verify: bool
) -> bool:
    if not entry or entry.get("size") != remote.size or entry.get("remote") != remote.identity:
        return False
    try:
        st = path.stat()
    except OSError:
        return False
    if st.st_size != entry["size"]:
        return False
    if not verify and st.st_mtime_ns == entry.get("mtime_ns"):
        return True
    return sha256_file(path) == entry.get("sha256")


def local_file_complete(
    dest_dir: str | os.PathLike[str],
    remote: RemoteFile | Mapping[str, Any],
    *,
    verify: bool = False,
) -> bool:
    """Is `remote` already in dest_dir, complete, as recorded in the manifest?

    Checks size, Kaggle's identity of the file and the file's mtime; re-hashes (sha256) when
    the mtime changed or verify=True.
    """
    remote = _as_remote(remote)
    dest = Path(dest_dir)
    entry = read_manifest(dest).get(remote.name)
    return _entry_complete(dest / remote.name, entry, remote, verify)


def read_raw_records(
    dest_dir: str | os.PathLike[str], names: Iterable[str]
) -> dict[str, dict[str, Any]]:
    """name -> {name, size, sha256, path} for downloaded files (path relative to the
    competition folder, e.g. "raw/train.zip"), as `download_file` recorded them."""
    dest = Path(dest_dir)
    manifest = read_manifest(dest)
    out = {}
    for name in names:
        entry = manifest.get(name)
        path = dest / name
        if not entry or not path.is_file() or path.stat().st_size != entry.get("size"):
            raise FileNotFoundError(
                f"{path} has not been downloaded completely (no matching record in "
                f"{dest / MANIFEST}): run the fetch step first"
            )
        out[name] = {
            "name": name,
            "size": entry["size"],
            "sha256": entry["sha256"],
            "path": f"{dest.name}/{name}",
        }
    return out


# ----- downloading ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FileRecord:
    """A complete, verified download."""

    name: str
    path: Path
    size: int
    sha256: str
    remote: str  # RemoteFile.identity it was downloaded as
    downloaded: bool  # False when an existing complete copy was kept

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "size": self.size,
            "sha256": self.sha256,
            "remote": self.remote,
            "downloaded": self.downloaded,
        }


def _check_name(name: str) -> None:
    if (
        not name
        or name in (".", "..", MANIFEST)
        or name.startswith(".")
        or "/" in name
        or "\\" in name
        or "\x00" in name
    ):
        raise ValueError(
            f"{name!r} is not a plain Kaggle file name (no folders, not hidden, not {MANIFEST})"
        )


class _ProgressPoller:
    """Report a growing partial file's size to progress(done, total) from a thread."""

    def __init__(self, path: Path, total: int, progress: Callable[[int, int], Any]) -> None:
        self.path, self.total, self.progress = path, total, progress
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kaggle-progress", daemon=True)

    def __enter__(self) -> _ProgressPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        last = -1
        while not self._stop.wait(PROGRESS_INTERVAL_S):
            try:
                done = self.path.stat().st_size
            except OSError:
                continue
            if done != last:
                last = done
                _report(self.progress, done, self.total)


def _report(progress: Callable[[int, int], Any] | None, done: int, total: int) -> None:
    """Call progress(done, total); a failing progress sink never breaks a download."""
    if progress is None:
        return
    try:
        progress(done, total)
    except Exception as exc:
        log.debug("progress callback failed: %s", exc)


def _discard_partial(partial: Path) -> None:
    partial.unlink(missing_ok=True)
    Path(str(partial) + RESUME_MARKER_SUFFIX).unlink(missing_ok=True)


def _will_resume(api: Any, response: Any, partial: Path) -> bool:
    """Will the client's download_file resume `partial` (same test as the client uses)?"""
    headers = response.headers
    length = headers.get("Content-Length")
    try:
        return bool(
            api._can_resume_partial(
                str(partial),
                True,
                headers.get("Accept-Ranges") == "bytes",
                headers.get("ETag") or headers.get("Last-Modified"),
                int(length) if length else None,
            )
        )
    except Exception:  # a client without this helper: let it stream, nothing is lost
        return False


def _fetch(
    api: Any,
    creds: Credentials,
    slug: str,
    name: str,
    partial: Path,
    total: int,
    progress: Callable[[int, int], Any] | None,
    client_retries: int,
) -> None:
    """Download into `partial` with the client's own resumable download_file."""
    from kagglesdk.competitions.types.competition_api_service import ApiDownloadDataFileRequest

    request = ApiDownloadDataFileRequest()
    request.competition_name = slug
    request.file_name = name
    poller = _ProgressPoller(partial, total, progress) if progress else contextlib.nullcontext()
    with api.build_kaggle_client() as kaggle:
        response = _call(
            lambda: kaggle.competitions.competition_api_client.download_data_file(request),
            creds,
            slug,
            name,
        )
        try:
            if _will_resume(api, response, partial):
                # The client is about to ask for the rest with a Range request and never read
                # this (whole-file) response: close it now rather than let it stream.
                response.close()
            with poller:
                _call(
                    lambda: api.download_file(
                        response,
                        str(partial),
                        kaggle.http_client(),
                        quiet=True,
                        resume=True,
                        max_retries=client_retries,
                    ),
                    creds,
                    slug,
                    name,
                )
        except ValueError as exc:  # the client's size check: the body didn't match its header
            detail = str(exc)
        else:
            detail = None
        finally:
            response.close()
    if detail is not None:
        _discard_partial(partial)
        raise KaggleTransientError(
            f"download of {name!r} ({slug}) was incomplete ({detail}); discarded, retry",
            slug=slug,
            file_name=name,
        )


def download_file(
    slug: str,
    name: str,
    dest_dir: str | os.PathLike[str],
    *,
    endpoint: str | None = None,
    credentials: Credentials | None = None,
    progress: Callable[[int, int], Any] | None = None,
    remote: RemoteFile | Mapping[str, Any] | None = None,
    verify: bool = False,
    client_retries: int = DEFAULT_CLIENT_RETRIES,
) -> FileRecord:
    """Download one competition file into dest_dir, resuming a partial one; verified.

    The bytes go to dest_dir/.partial/<name> through the client's resumable download (an
    interrupted download resumes with a Range request, here or on a later call); the file
    gets its final name only once its size matches Kaggle's listing, and its sha256 is
    recorded in dest_dir/manifest.json. A file already recorded there complete (same size,
    same remote identity) is not downloaded again. `remote`: the listing entry, if the caller
    has it (saves a listing call). `progress(done, total)` is called with byte counts.
    `client_retries`: the client's own retries of a dropped connection (with a few seconds'
    sleep each) before a KaggleTransientError is raised.
    """
    _check_name(name)
    creds, endpoint = _resolve(credentials, endpoint)
    dest = Path(dest_dir).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    partial_dir = dest / PARTIAL_DIR
    partial_dir.mkdir(exist_ok=True)
    with _locked(partial_dir / f"{name}.lock"):
        rem = (
            _as_remote(remote) if remote is not None else _find_remote(slug, name, endpoint, creds)
        )
        if rem.name != name:
            raise ValueError(f"remote record is for {rem.name!r}, not {name!r}")
        final = dest / name
        entry = read_manifest(dest).get(name)
        if _entry_complete(final, entry, rem, verify):
            assert entry is not None
            if final.stat().st_mtime_ns != entry.get("mtime_ns"):  # re-hashed fine: remember
                _update_manifest(dest, name, {**entry, "mtime_ns": final.stat().st_mtime_ns})
            _report(progress, rem.size, rem.size)
            return FileRecord(name, final, rem.size, entry["sha256"], rem.identity, False)

        partial = partial_dir / name
        _fetch(
            _api(creds, endpoint), creds, slug, name, partial, rem.size, progress, client_retries
        )
        size = partial.stat().st_size
        if size != rem.size:
            _discard_partial(partial)
            raise KaggleTransientError(
                f"downloaded {name!r} ({slug}) has {size} bytes but Kaggle lists {rem.size}; "
                "the partial download was discarded, retry",
                slug=slug,
                file_name=name,
            )
        digest = sha256_file(partial)
        with open(partial, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(partial, final)
        Path(str(partial) + RESUME_MARKER_SUFFIX).unlink(missing_ok=True)
        _update_manifest(
            dest,
            name,
            {
                "size": size,
                "sha256": digest,
                "remote": rem.identity,
                "creation_date": rem.creation_date,
                "mtime_ns": final.stat().st_mtime_ns,
                "downloaded_at": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        )
        _report(progress, size, rem.size)
        log.info("downloaded %s/%s: %d bytes, sha256 %s", slug, name, size, digest)
        return FileRecord(name, final, size, digest, rem.identity, True)


# ----- submissions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SubmissionRef:
    """A submission Kaggle accepted for scoring."""

    slug: str
    ref: int
    message: str  # Kaggle's answer, e.g. "Successfully submitted to ..."
    description: str


@dataclass(frozen=True)
class SubmissionStatus:
    ref: int
    status: str  # "pending" | "complete" | "error"
    public_score: float | None
    private_score: float | None
    error: str | None
    description: str | None
    date: str | None

    @property
    def done(self) -> bool:
        return self.status != "pending"


def _score(value: Any) -> float | None:
    if value in (None, ""):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _status_of(sub: Any) -> SubmissionStatus:
    status = getattr(sub.status, "name", str(sub.status)).lower()
    return SubmissionStatus(
        ref=int(sub.ref),
        status=status,
        public_score=_score(sub.public_score),
        private_score=_score(sub.private_score),
        error=sub.error_description or None,
        description=sub.description,
        date=_iso(sub.date),
    )


def _submissions(api: Any, creds: Credentials, slug: str) -> Iterator[Any]:
    for page in range(1, SUBMISSION_MAX_PAGES + 1):
        subs = _call(
            lambda p=page: api.competition_submissions(
                slug, page_number=p, page_size=SUBMISSION_PAGE_SIZE
            ),
            creds,
            slug,
        )
        if not subs:
            return
        yield from (s for s in subs if s is not None)
        if len(subs) < SUBMISSION_PAGE_SIZE:
            return


def submit(
    slug: str,
    csv_path: str | os.PathLike[str],
    message: str,
    endpoint: str | None = None,
    credentials: Credentials | None = None,
) -> SubmissionRef:
    """Upload a submission file and create the submission; returns its reference."""
    path = Path(csv_path)
    if not path.is_file():
        raise FileNotFoundError(f"submission file {path} does not exist")
    creds, endpoint = _resolve(credentials, endpoint)
    api = _api(creds, endpoint)
    resp = _call(lambda: api.competition_submit(str(path), message, slug, quiet=True), creds, slug)
    if resp.message == api.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE:
        raise KaggleTransientError(
            f"uploading {path.name} to competition {slug!r} failed; retry", slug=slug
        )
    ref = int(resp.ref or 0)
    if not ref:  # older servers answer without a ref: take the newest with this message
        ref = next(
            (int(s.ref) for s in _submissions(api, creds, slug) if s.description == message), 0
        )
    if not ref:
        raise KaggleError(
            f"Kaggle did not confirm the submission to {slug!r}: {resp.message}", slug=slug
        )
    return SubmissionRef(slug, ref, _scrub(resp.message or "", creds), message)


def submission_status(
    slug: str,
    ref: int | SubmissionRef,
    endpoint: str | None = None,
    credentials: Credentials | None = None,
) -> SubmissionStatus:
    """Status and scores of one of your submissions to the competition."""
    ref_id = ref.ref if isinstance(ref, SubmissionRef) else int(ref)
    creds, endpoint = _resolve(credentials, endpoint)
    api = _api(creds, endpoint)
    for sub in _submissions(api, creds, slug):
        if int(sub.ref) == ref_id:
            return _status_of(sub)
    raise KaggleNotFoundError(
        f"competition {slug!r} lists no submission {ref_id} of yours", slug=slug
    )


def wait_for_submission(
    slug: str,
    ref: int | SubmissionRef,
    *,
    timeout_s: float = 600.0,
    interval_s: float = 5.0,
    endpoint: str | None = None,
    credentials: Credentials | None = None,
) -> SubmissionStatus:
    """Poll submission_status until scored (or errored); KaggleTransientError on timeout."""
    creds = credentials or load_credentials()
    deadline = time.monotonic() + timeout_s
    while True:
        st = submission_status(slug, ref, endpoint, creds)
        if st.done:
            return st
        if time.monotonic() >= deadline:
            raise KaggleTransientError(
                f"submission {st.ref} to {slug!r} is still pending after {timeout_s:g} s", slug=slug
            )
        time.sleep(interval_s)


def submission_limits(
    slug: str, endpoint: str | None = None, credentials: Credentials | None = None
) -> dict[str, int]:
    """{"today", "total", "allowed_now"}: your team's submission counts for the competition."""
    creds, endpoint = _resolve(credentials, endpoint)
    api = _api(creds, endpoint)
    lim = _call(lambda: api.competition_get_submission_limits(slug), creds, slug)
    return {"today": lim.num_today, "total": lim.num_total, "allowed_now": lim.num_allowed_now}
