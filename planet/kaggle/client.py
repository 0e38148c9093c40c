"""The real `kaggle` client, imported lazily, pointed at an endpoint, its errors translated.

The client is imported lazily (inside the functions): `kaggle` 2.x signs in when imported.

Endpoint redirection. Every function takes `endpoint`: None means kaggle.com; a base URL
such as `http://127.0.0.1:8765` (planet.kaggle_local's server) sends every call there. The
client only knows fixed environments (kagglesdk.kaggle_env: PROD, LOCAL = http://localhost,
...), so each call here builds its own kagglesdk client for the LOCAL environment and sets
that one client's endpoint: nothing process-wide changes, and concurrent calls to different
endpoints don't interfere. `use_endpoint` does the process-wide equivalent
(KAGGLE_API_ENVIRONMENT=LOCALHOST + kagglesdk's endpoint table, restored on exit) for code
that drives `KaggleApi` directly.

Error mapping. `call` runs a client call and raises the KaggleError (planet.kaggle.errors)
for an HTTP or connection failure, with the secret scrubbed from its message.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import re
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

from planet.kaggle.credentials import Credentials, load_credentials
from planet.kaggle.errors import (
    KaggleAuthError,
    KaggleError,
    KaggleNotFoundError,
    KaggleRulesError,
    KaggleSubmissionLimitError,
    KaggleTransientError,
)

T = TypeVar("T")

KAGGLE_WEB = "https://www.kaggle.com"


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


def api(creds: Credentials, endpoint: str | None) -> Any:
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
    client. Blocks are serialised by a lock. planet.kaggle's functions don't need it.
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


def resolve(
    credentials: Credentials | None, endpoint: str | None
) -> tuple[Credentials, str | None]:
    return credentials or load_credentials(), normalize_endpoint(endpoint)


# ----- error mapping ----------------------------------------------------------------------

_URL_QUERY = re.compile(r"(https?://[^\s?'\"<>]+)\?[^\s'\"<>]*")


def scrub(text: str, creds: Credentials | None) -> str:
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
        detail = scrub(_server_message(exc), creds)
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
            f"({type(exc).__name__}: {scrub(str(exc), creds)}); retry",
            **ctx,
        )
    return None


def call(fn: Callable[[], T], creds: Credentials, slug: str, name: str | None = None) -> T:
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
