"""Where the Kaggle tasks get their credentials: the worker's own, else a Prefect Secret block.

Order: the environment (KAGGLE_USERNAME + KAGGLE_KEY, KAGGLE_API_TOKEN), then kaggle.json (or an
access token file) in the Kaggle config folder, then the Prefect Secret block named by
PLANET_KAGGLE_SECRET_BLOCK (default `kaggle-credentials`; `none` turns it off). A machine's own
credentials win, so one worker can use another account; the block is the shared default for
every worker that talks to the same Prefect API. The block holds kaggle.json's content (as text
or as a JSON object). Its value is read inside the task, never passed as a parameter, and never
reaches a log line, artifact or result; the block's name may appear in messages.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any

from planet import kaggle

SECRET_BLOCK_ENV = "PLANET_KAGGLE_SECRET_BLOCK"
DEFAULT_SECRET_BLOCK = "kaggle-credentials"
OFF = ("", "none", "off")

_loaded_secrets: set[str] = set()  # what this process loaded, for scrubbing (flows/notify.py)


def secret_block_name() -> str | None:
    """The Kaggle credentials' Secret block name (PLANET_KAGGLE_SECRET_BLOCK), None when off."""
    name = os.environ.get(SECRET_BLOCK_ENV, DEFAULT_SECRET_BLOCK).strip()
    return None if name.lower() in OFF else name


def read_secret_block(name: str) -> Any | None:
    """The value of the Prefect Secret block `name`, or None when there is no such block.

    Any other failure (no API, a block of another type) is a KaggleCredentialsError naming the
    block and the exception's type, never its message (which could quote the value).
    """
    from prefect.blocks.system import Secret
    from prefect.exceptions import ObjectNotFound

    try:
        return Secret.load(name, _sync=True).get()
    except ValueError as exc:
        if isinstance(exc.__cause__, ObjectNotFound):
            return None
        problem = type(exc).__name__
    except Exception as exc:  # the Prefect API is down, the block is not a Secret, ...
        problem = type(exc).__name__
    raise kaggle.KaggleCredentialsError(
        f"could not read the Prefect Secret block {name!r} ({problem}): check that "
        f"PREFECT_API_URL reaches the server and that {name!r} is a Secret block"
    )


def secret_block_source(name: str) -> kaggle.CredentialSource:
    """The Secret block `name` as a place to look for Kaggle credentials."""
    return kaggle.CredentialSource(
        name=f"the Prefect Secret block {name!r}",
        read=lambda: read_secret_block(name),
        hint=f"save kaggle.json's content in the Prefect Secret block {name!r} "
        f"({SECRET_BLOCK_ENV} names another)",
    )


def kaggle_credentials() -> kaggle.Credentials:
    """The Kaggle credentials for this task run (see the module doc for the order)."""
    name = secret_block_name()
    creds = kaggle.load_credentials(more=[secret_block_source(name)] if name else [])
    _loaded_secrets.update(creds.secrets())
    return creds


def known_secrets() -> set[str]:
    """Kaggle secrets this process loaded or could load from the environment or kaggle.json:
    what a message leaving the process (a failure notification) must not contain."""
    found = set(_loaded_secrets)
    with contextlib.suppress(Exception), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found.update(kaggle.load_credentials().secrets())
    return found
