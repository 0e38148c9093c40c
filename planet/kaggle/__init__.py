"""Thin wrapper over the real `kaggle` client: credentials, listing, verified resumable
downloads, submissions, and Kaggle's HTTP errors mapped to a few exception classes.

The client is imported lazily (planet.kaggle.client): `kaggle` 2.x signs in when imported.
Every function takes `endpoint`: None means kaggle.com; a base URL sends every call to a
Kaggle-compatible server such as planet.kaggle_local's.

Modules: errors, credentials, client (the lazy client, endpoints, error mapping), listing,
raw_manifest (raw/manifest.json), download, submissions, submit_record (submit a file at most
once). This package re-exports the public API, so `from planet import kaggle;
kaggle.download_file(...)` works.
"""

from planet.kaggle.client import normalize_endpoint, use_endpoint
from planet.kaggle.credentials import (
    Credentials,
    CredentialSource,
    credentials_from_value,
    load_credentials,
)
from planet.kaggle.download import DEFAULT_CLIENT_RETRIES, FileRecord, download_file
from planet.kaggle.errors import (
    InsecureCredentialsWarning,
    KaggleAuthError,
    KaggleCredentialsError,
    KaggleError,
    KaggleNotFoundError,
    KaggleRulesError,
    KaggleSubmissionLimitError,
    KaggleTransientError,
    is_transient,
)
from planet.kaggle.listing import RemoteFile, list_files
from planet.kaggle.raw_manifest import (
    PARTIAL_DIR,
    local_file_complete,
    read_manifest,
    read_raw_records,
)
from planet.kaggle.submissions import (
    SubmissionRef,
    SubmissionStatus,
    submission_limits,
    submission_status,
    submit,
    wait_for_submission,
)

__all__ = [
    "DEFAULT_CLIENT_RETRIES",
    "PARTIAL_DIR",
    "CredentialSource",
    "Credentials",
    "FileRecord",
    "InsecureCredentialsWarning",
    "KaggleAuthError",
    "KaggleCredentialsError",
    "KaggleError",
    "KaggleNotFoundError",
    "KaggleRulesError",
    "KaggleSubmissionLimitError",
    "KaggleTransientError",
    "RemoteFile",
    "SubmissionRef",
    "SubmissionStatus",
    "credentials_from_value",
    "download_file",
    "is_transient",
    "list_files",
    "load_credentials",
    "local_file_complete",
    "normalize_endpoint",
    "read_manifest",
    "read_raw_records",
    "submission_limits",
    "submission_status",
    "submit",
    "use_endpoint",
    "wait_for_submission",
]
