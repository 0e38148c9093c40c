"""Submitting predictions to a Kaggle competition at most once per file: the submission record.

A Kaggle submission is a side effect that spends one of the day's few submissions, so a retry
(after a 429, a 5xx or a polling timeout) must never submit the same file twice. The record
makes that so: `<record_dir>/<slug>-<sha256 prefix>-<endpoint host>.submitted.json` remembers
the submission of one exact file (by content hash) to one competition on one endpoint.

`submit_and_wait`:

1. hashes the CSV and reads its record; a record with a ref means "already submitted": the
   file is not submitted again (unless `force_new`), only its status is polled;
2. otherwise submits it and writes the ref to the record *at once*, before polling, so a crash
   or a retry during polling finds the ref and never submits again;
3. polls the status until scored (or errored, or the timeout: a KaggleTransientError, worth
   retrying), writing the status and the public/private scores to the record.

The record holds the slug, the file's sha256 and name, the message, the endpoint's host name
(never a URL's user info, never credentials), the ref, status, scores and timestamps. The
Kaggle key never appears in the record, the message, the returned dict or an exception.

Not covered: a submission the server created although its answer never reached the client (a
dropped connection during CreateSubmission). There is no ref to remember then; a retry submits
again.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from planet import hooks
from planet.fileio import file_lock, read_json, sha256_file, write_json_atomic
from planet.kaggle.client import KAGGLE_WEB, normalize_endpoint
from planet.kaggle.credentials import Credentials
from planet.kaggle.errors import KaggleError, KaggleNotFoundError
from planet.kaggle.submissions import (
    SubmissionRef,
    SubmissionStatus,
    submit,
    wait_for_submission,
)

RECORD_SUFFIX = ".submitted.json"
RECORD_VERSION = 1
MAX_MESSAGE_LEN = 199  # Kaggle shows short descriptions best; keep well under its limits
MESSAGE_PREFIX = "planet-pipeline"
KAGGLE_HOST = urlsplit(KAGGLE_WEB).hostname or "www.kaggle.com"
FINAL_STATUSES = ("complete", "error")
GIT_TIMEOUT_S = 10.0


class SubmissionScoringError(KaggleError):
    """Kaggle accepted the file but could not score it (bad columns, ids, values)."""


class StaleRecordError(KaggleError):
    """The record names a submission the endpoint doesn't list (another server, or a reset)."""


# ----- the message --------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def submission_message(recipe_name: str, stages: Sequence[str] | str, commit: str | None) -> str:
    """A short description naming the run, e.g.
    `planet-pipeline cpu-demo-1a2b3c4d: 64px frozen 1ep; 64px unfrozen 2ep @ 3f2a1bc`.

    At most MAX_MESSAGE_LEN characters: the stages are shortened (with "...") first, so the
    recipe and the commit always show.
    """
    stage_text = _one_line(stages if isinstance(stages, str) else "; ".join(map(str, stages)))
    head = f"{MESSAGE_PREFIX} {_one_line(recipe_name)}"
    tail = f" @ {_one_line(commit)}" if commit and _one_line(commit) else ""
    if not stage_text:
        return (head + tail)[:MAX_MESSAGE_LEN]
    room = MAX_MESSAGE_LEN - len(head) - len(tail) - 2  # ": "
    if room < 8:  # a very long recipe name: keep what fits
        return (head + tail)[:MAX_MESSAGE_LEN]
    if len(stage_text) > room:
        stage_text = stage_text[: room - 3].rstrip() + "..."
    return f"{head}: {stage_text}{tail}"


def git_commit(repo_dir: str | os.PathLike[str] = ".") -> str | None:
    """`git rev-parse --short HEAD` in repo_dir; None when it isn't a git checkout, git is
    missing or anything else goes wrong (never raises)."""
    try:
        proc = subprocess.run(
            ["git", "-C", str(repo_dir), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    out = (proc.stdout or "").strip()
    if proc.returncode != 0 or not re.fullmatch(r"[0-9a-fA-F]{4,64}", out):
        return None
    return out


# ----- the record ---------------------------------------------------------------------------


def endpoint_host(endpoint: str | None) -> str:
    """The host a submission goes to: `www.kaggle.com` for None, else the endpoint's host name
    (no scheme, port or user info: a local server gets a new port every run)."""
    url = normalize_endpoint(endpoint)
    if url is None:
        return KAGGLE_HOST
    return (urlsplit(url).hostname or "localhost").lower()


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("._") or "_"


def record_path(
    submissions_dir: str | os.PathLike[str],
    csv_sha256: str,
    slug: str | None = None,
    endpoint: str | None = None,
) -> Path:
    """Where the submission record of this file (by content) to this competition and endpoint
    lives: `<dir>/<slug>-<sha256[:16]>-<host>.submitted.json` (no slug: `<sha256[:16]>-<host>`).
    """
    if not re.fullmatch(r"[0-9a-f]{16,64}", csv_sha256 or ""):
        raise ValueError(f"{csv_sha256!r} is not a sha256 hex digest")
    parts = [_safe(slug)] if slug else []
    parts += [csv_sha256[:16], _safe(endpoint_host(endpoint))]
    return Path(submissions_dir) / ("-".join(parts) + RECORD_SUFFIX)


def read_record(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The record at path; None when there is none. A corrupt record is an error (deleting it
    would allow a second submission of the file: the caller decides)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        data = read_json(path)
    except ValueError:
        raise ValueError(
            f"submission record {path} is not valid JSON; check on Kaggle whether the file was "
            "submitted, then delete the record (or submit with force_new)"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"submission record {path} should hold a JSON object")
    return data


def write_record(path: str | os.PathLike[str], record: dict[str, Any]) -> Path:
    """Write the record atomically (a crash leaves the old record or the new one)."""
    return write_json_atomic(path, record)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _scrub(text: str | None, credentials: Credentials | None) -> str | None:
    if text is None:
        return None
    if credentials is not None:
        for secret in credentials.secrets():
            text = text.replace(secret, "***")
    return text


def _matches(rec: dict[str, Any], slug: str, sha: str, host: str) -> bool:
    return (
        rec.get("slug") == slug
        and rec.get("csv_sha256") == sha
        and rec.get("endpoint") == host
        and bool(rec.get("ref"))
    )


def _result(rec: dict[str, Any], csv: Path, path: Path, submitted: bool) -> dict[str, Any]:
    return {
        "slug": rec["slug"],
        "file": csv.name,
        "endpoint": rec["endpoint"],
        "ref": rec["ref"],
        "status": rec.get("status"),
        "public_score": rec.get("public_score"),
        "private_score": rec.get("private_score"),
        "error": rec.get("error"),
        "message": rec["message"],
        "csv_sha256": rec["csv_sha256"],
        "submitted": submitted,
        "resubmitted": submitted and bool(rec.get("resubmission")),
        "submitted_at": rec.get("submitted_at"),
        "record": str(path),
    }


def submit_and_wait(
    slug: str,
    csv_path: str | os.PathLike[str],
    message: str,
    *,
    endpoint: str | None = None,
    credentials: Credentials | None = None,
    record_dir: str | os.PathLike[str] | None = None,
    timeout_s: float = 600.0,
    interval_s: float = 5.0,
    force_new: bool = False,
    run_id: str | None = None,
    on_submit: Callable[[], Any] | None = None,
    submit_fn: Callable[..., SubmissionRef] = submit,
    wait_fn: Callable[..., SubmissionStatus] = wait_for_submission,
) -> dict[str, Any]:
    """Submit the CSV unless this exact file was already submitted here, then wait for scores.

    record_dir: where the record goes (default: the CSV's folder). force_new: submit again
    although the record says this file was submitted (the record then names the new one).
    run_id: an opaque id of the caller's attempt (a Prefect task run id): a retry with the same
    id that finds its own earlier submission reports `submitted` True. on_submit: called just
    before a new submission is made (to log that it spends one of today's submissions).

    Returns a JSON-able dict: slug, file, endpoint (host), ref, status ("complete" or
    "error"), public_score, private_score, error, message, csv_sha256, submitted (this call,
    or an earlier attempt with the same run_id, created the submission), resubmitted (it did
    so although the file had been submitted before: force_new), submitted_at, record (path).

    Raises the kaggle module's errors: KaggleTransientError (429, 5xx, timeout while pending:
    retry, which polls the recorded ref), KaggleRulesError (403: accept the rules), ...;
    StaleRecordError when the endpoint doesn't list the recorded submission.
    """
    path = Path(csv_path)
    if not path.is_file():
        raise FileNotFoundError(f"submission file {path} does not exist")
    message = _one_line(message)
    if not message:
        raise ValueError("a submission needs a message (e.g. from submission_message)")
    sha = sha256_file(path)
    host = endpoint_host(endpoint)
    rpath = record_path(record_dir if record_dir is not None else path.parent, sha, slug, endpoint)

    with file_lock(rpath.with_name(rpath.name + ".lock")):  # the same file's other submitters wait
        old = read_record(rpath)
        reuse = old is not None and _matches(old, slug, sha, host) and not force_new
        if reuse:
            assert old is not None
            rec = old
            submitted = run_id is not None and rec.get("run_id") == run_id
        else:
            if on_submit is not None:
                on_submit()
            ref = submit_fn(slug, path, message, endpoint=endpoint, credentials=credentials)
            now = _now()
            previous = list(old.get("previous_refs") or []) if old else []
            if old and old.get("ref"):
                previous.append(old["ref"])
            rec = {
                "version": RECORD_VERSION,
                "slug": slug,
                "file": path.name,
                "csv_sha256": sha,
                "message": message,
                "endpoint": host,
                "ref": int(ref.ref),
                "status": "pending",
                "public_score": None,
                "private_score": None,
                "error": None,
                "submitted_at": now,
                "updated_at": now,
                "run_id": run_id,
                "resubmission": bool(old and old.get("ref")),
                "previous_refs": previous,
            }
            write_record(rpath, rec)  # the ref is safe before any polling
            submitted = True
            hooks.emit("submit.accepted", file=path.name)

    try:
        st = wait_fn(
            slug,
            rec["ref"],
            timeout_s=timeout_s,
            interval_s=interval_s,
            endpoint=endpoint,
            credentials=credentials,
        )
    except KaggleNotFoundError:
        if not reuse:
            raise
        raise StaleRecordError(
            f"{host} lists no submission {rec['ref']} to {slug!r}, which {rpath} records for "
            f"{path.name}; check the endpoint, or delete the record (or use force_new) to "
            "submit the file again",
            slug=slug,
        ) from None
    except KaggleError as exc:
        rec = {**rec, "last_error": _scrub(str(exc), credentials), "updated_at": _now()}
        write_record(rpath, rec)
        raise

    if reuse and st.description and _one_line(st.description) != rec["message"]:
        raise StaleRecordError(
            f"submission {rec['ref']} on {host} is described as {st.description!r}, not as "
            f"{rpath} records ({rec['message']!r}); delete the record (or use force_new) to "
            "submit the file again",
            slug=slug,
        )
    rec = {
        **rec,
        "status": st.status,
        "public_score": st.public_score,
        "private_score": st.private_score,
        "error": _scrub(st.error, credentials),
        "last_error": None,
        "updated_at": _now(),
    }
    if st.status in FINAL_STATUSES and not rec.get("scored_at"):
        rec["scored_at"] = rec["updated_at"]
    write_record(rpath, rec)
    return _result(rec, path, rpath, submitted)


def raise_for_scoring(result: dict[str, Any]) -> dict[str, Any]:
    """The result, or SubmissionScoringError when Kaggle could not score the submission."""
    if result.get("status") == "error":
        raise SubmissionScoringError(
            f"Kaggle could not score submission {result['ref']} ({result['file']}) to "
            f"{result['slug']!r}: {result.get('error') or 'no reason given'}; fix the file "
            "(a new file is submitted anew), or, if the scoring was at fault, submit the same "
            "file again with `planet run --stages submit --submit --resubmit` (force_new)",
            slug=result["slug"],
        )
    return result
