"""planet.kaggle over the real kaggle client against the local server: credentials, listing,
verified resumable downloads, error mapping, submissions, and no key leaks."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import pickle
import traceback
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from planet import kaggle
from planet.constants import MANIFEST
from planet.kaggle import (
    Credentials,
    KaggleAuthError,
    KaggleCredentialsError,
    KaggleError,
    KaggleNotFoundError,
    KaggleRulesError,
    KaggleSubmissionLimitError,
    KaggleTransientError,
    download,
    download_file,
    is_transient,
    list_files,
    listing,
    load_credentials,
)

pytestmark = pytest.mark.usefixtures("isolated_kaggle_env")

BIG = "train-jpg.tar.7z"
SMALL = "train_v2.csv.zip"


@pytest.fixture
def creds(kaggle_user: str, kaggle_key: str) -> Credentials:
    return Credentials(kaggle_user, kaggle_key, source="the test's credentials")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob_gets(server) -> list:
    return [r for r in server.requests if r.path.startswith("/blobs/")]


def write_kaggle_json(folder: Path, username: str, key: str, mode: int = 0o600) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "kaggle.json"
    path.write_text(json.dumps({"username": username, "key": key}))
    path.chmod(mode)
    return path


# ----- credentials ------------------------------------------------------------------------------


def test_environment_beats_kaggle_json(isolated_kaggle_env, monkeypatch):
    write_kaggle_json(isolated_kaggle_env / ".kaggle", "file-user", "file-key-123456")
    c = load_credentials()
    assert (c.username, c.key, c.source) == (
        "file-user",
        "file-key-123456",
        str(isolated_kaggle_env / ".kaggle" / "kaggle.json"),
    )
    monkeypatch.setenv("KAGGLE_USERNAME", "env-user")
    monkeypatch.setenv("KAGGLE_KEY", "env-key-123456")
    c = load_credentials()
    assert (c.username, c.key) == ("env-user", "env-key-123456")
    assert c.source == "environment KAGGLE_USERNAME/KAGGLE_KEY"


def test_config_dir_argument_then_kaggle_config_dir_then_xdg(
    isolated_kaggle_env, monkeypatch, tmp_path
):
    write_kaggle_json(isolated_kaggle_env / ".config" / "kaggle", "xdg-user", "xdg-key-123456")
    assert load_credentials().username == "xdg-user"  # no ~/.kaggle: the XDG location
    write_kaggle_json(tmp_path / "cfg", "dir-user", "dir-key-123456")
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "cfg"))
    assert load_credentials().username == "dir-user"
    write_kaggle_json(tmp_path / "arg", "arg-user", "arg-key-123456")
    assert load_credentials(tmp_path / "arg").username == "arg-user"


def test_access_tokens_from_environment_or_files(isolated_kaggle_env, monkeypatch, tmp_path):
    (isolated_kaggle_env / ".kaggle").mkdir()
    (isolated_kaggle_env / ".kaggle" / "access_token").write_text("file-token-abcdef\n")
    c = load_credentials()
    assert c.token == "file-token-abcdef" and c.key is None
    monkeypatch.setenv("KAGGLE_API_TOKEN", "env-token-abcdef")
    assert load_credentials().token == "env-token-abcdef"
    (tmp_path / "tok").write_text("path-token-abcdef")
    monkeypatch.setenv("KAGGLE_API_TOKEN", str(tmp_path / "tok"))
    c = load_credentials()
    assert c.token == "path-token-abcdef" and str(tmp_path / "tok") in c.source
    assert "path-token" not in repr(c)


def test_missing_credentials_say_where_we_looked(isolated_kaggle_env, monkeypatch):
    with pytest.raises(KaggleCredentialsError) as info:
        load_credentials()
    msg = str(info.value)
    assert str(isolated_kaggle_env / ".kaggle" / "kaggle.json") in msg
    assert "KAGGLE_USERNAME" in msg and "https://www.kaggle.com/settings/api" in msg
    monkeypatch.setenv("KAGGLE_USERNAME", "only-user")
    with pytest.raises(KaggleCredentialsError, match="KAGGLE_KEY is not"):
        load_credentials()


@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json", "not valid JSON"), ('{"username": "u"}', 'must contain "username" and "key"')],
)
def test_malformed_kaggle_json_names_the_file(isolated_kaggle_env, content, message):
    path = isolated_kaggle_env / ".kaggle" / "kaggle.json"
    path.parent.mkdir()
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(KaggleCredentialsError, match=message) as info:
        load_credentials()
    assert str(path) in str(info.value)


def test_warns_when_kaggle_json_is_readable_by_others(isolated_kaggle_env):
    path = write_kaggle_json(isolated_kaggle_env / ".kaggle", "u", "key-123456", mode=0o644)
    with pytest.warns(kaggle.InsecureCredentialsWarning, match=f"chmod 600 {path}"):
        load_credentials()
    path.chmod(0o600)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_credentials().username == "u"


def test_credentials_never_show_the_key(kaggle_key):
    c = Credentials("someone", kaggle_key, source="x")
    assert kaggle_key not in repr(c) and kaggle_key not in str(c) and "***" in repr(c)
    assert kaggle_key not in repr([c]) and kaggle_key not in f"{c}"
    with pytest.raises(KaggleCredentialsError):
        Credentials("someone", "", source="x")


# ----- listing and downloading ---------------------------------------------------------------------


def test_list_files_matches_the_folder(kaggle_server, kaggle_root, creds, monkeypatch):
    expected = {n: len(b) for n, b in kaggle_root.files[kaggle_root.planet].items()}
    files = list_files(kaggle_root.planet, endpoint=kaggle_server.url, credentials=creds)
    assert {f.name: f.size for f in files} == expected
    assert all(f.creation_date for f in files)
    assert kaggle.RemoteFile.from_dict(files[0].to_dict()) == files[0]
    monkeypatch.setattr(listing, "LIST_PAGE_SIZE", 1)  # every page holds one file
    kaggle_server.clear_log()
    paged = list_files(kaggle_root.planet, endpoint=kaggle_server.url, credentials=creds)
    assert paged == files and kaggle_server.count("ListDataFiles") == len(expected)


def test_list_files_reads_credentials_from_the_environment(
    kaggle_server, kaggle_root, kaggle_user, kaggle_key, monkeypatch
):
    monkeypatch.setenv("KAGGLE_USERNAME", kaggle_user)
    monkeypatch.setenv("KAGGLE_KEY", kaggle_key)
    assert len(list_files(kaggle_root.dogs, endpoint=kaggle_server.url + "/")) == 2


def test_download_is_identical_verified_and_recorded(kaggle_server, kaggle_root, creds, tmp_path):
    data = kaggle_root.files[kaggle_root.planet][BIG]
    seen: list[tuple[int, int]] = []
    rec = download_file(
        kaggle_root.planet,
        BIG,
        tmp_path / "raw",
        endpoint=kaggle_server.url,
        credentials=creds,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert rec.downloaded and rec.size == len(data) and rec.sha256 == sha(data)
    assert rec.path == tmp_path / "raw" / BIG and rec.path.read_bytes() == data
    assert seen[-1] == (len(data), len(data))
    entry = json.loads((tmp_path / "raw" / MANIFEST).read_text())[BIG]
    assert entry["size"] == len(data) and entry["sha256"] == sha(data)
    assert not (tmp_path / "raw" / kaggle.PARTIAL_DIR / BIG).exists()
    visible = {p.name for p in (tmp_path / "raw").iterdir() if not p.name.startswith(".")}
    assert visible == {BIG, MANIFEST}
    records = kaggle.read_raw_records(tmp_path / "raw", [BIG])
    assert records[BIG] == {
        "name": BIG,
        "size": len(data),
        "sha256": sha(data),
        "path": f"raw/{BIG}",
    }
    with pytest.raises(FileNotFoundError, match=SMALL):
        kaggle.read_raw_records(tmp_path / "raw", [SMALL])


def test_complete_file_is_not_downloaded_again(kaggle_server, kaggle_root, creds, tmp_path):
    dest = tmp_path / "raw"
    first = download_file(
        kaggle_root.planet, SMALL, dest, endpoint=kaggle_server.url, credentials=creds
    )
    remote = next(
        f for f in list_files(kaggle_root.planet, kaggle_server.url, creds) if f.name == SMALL
    )
    assert kaggle.local_file_complete(dest, remote.to_dict())
    kaggle_server.clear_log()
    again = download_file(
        kaggle_root.planet, SMALL, dest, endpoint=kaggle_server.url, credentials=creds
    )
    assert not again.downloaded and again.sha256 == first.sha256
    assert blob_gets(kaggle_server) == [] and kaggle_server.count("DownloadDataFile") == 0
    download_file(
        kaggle_root.planet,
        SMALL,
        dest,
        endpoint=kaggle_server.url,
        credentials=creds,
        remote=remote,
    )
    assert kaggle_server.count("ListDataFiles") == 1  # given the remote record: no request at all

    # same size, different bytes (and a new mtime): no longer complete, fetched again
    (dest / SMALL).write_bytes(b"\0" * remote.size)
    assert not kaggle.local_file_complete(dest, remote)
    fixed = download_file(
        kaggle_root.planet, SMALL, dest, endpoint=kaggle_server.url, credentials=creds
    )
    assert (
        fixed.downloaded
        and (dest / SMALL).read_bytes() == kaggle_root.files[kaggle_root.planet][SMALL]
    )


def test_changed_remote_file_is_downloaded_again(kaggle_server, kaggle_root, creds, tmp_path):
    dest = tmp_path / "raw"
    download_file(
        kaggle_root.dogs, "train.zip", dest, endpoint=kaggle_server.url, credentials=creds
    )
    new = os.urandom(1234)
    (kaggle_root.root / kaggle_root.dogs / "train.zip").write_bytes(new)
    rec = download_file(
        kaggle_root.dogs, "train.zip", dest, endpoint=kaggle_server.url, credentials=creds
    )
    assert rec.downloaded and rec.sha256 == sha(new) and (dest / "train.zip").read_bytes() == new


def test_resume_on_a_later_call_after_a_cut_connection(kaggle_server, kaggle_root, creds, tmp_path):
    data = kaggle_root.files[kaggle_root.planet][BIG]
    dest = tmp_path / "raw"
    kaggle_server.faults.cut_next_body(2_500_000)
    with pytest.raises(KaggleTransientError) as info:
        download_file(
            kaggle_root.planet,
            BIG,
            dest,
            endpoint=kaggle_server.url,
            credentials=creds,
            client_retries=0,
        )
    assert is_transient(info.value)
    assert not (dest / BIG).exists()  # never a partial file under the final name
    partial = dest / kaggle.PARTIAL_DIR / BIG
    have = partial.stat().st_size
    assert 0 < have < len(data) and partial.read_bytes() == data[:have]

    kaggle_server.clear_log()
    rec = download_file(
        kaggle_root.planet,
        BIG,
        dest,
        endpoint=kaggle_server.url,
        credentials=creds,
        client_retries=0,
    )
    assert rec.sha256 == sha(data) and (dest / BIG).read_bytes() == data
    ranged = [r for r in blob_gets(kaggle_server) if r.range]
    assert [(r.range, r.status, r.bytes_sent) for r in ranged] == [
        (f"bytes={have}-", 206, len(data) - have)
    ]
    assert not partial.exists()


def test_resume_within_one_call_after_a_cut_connection(kaggle_server, kaggle_root, creds, tmp_path):
    data = kaggle_root.files[kaggle_root.planet][BIG]
    kaggle_server.faults.cut_next_body(2_500_000)
    rec = download_file(
        kaggle_root.planet,
        BIG,
        tmp_path,
        endpoint=kaggle_server.url,
        credentials=creds,
        client_retries=1,
    )  # the client retries (after ~2 s)
    assert rec.sha256 == sha(data)
    gets = blob_gets(kaggle_server)
    assert [r.bytes_sent for r in gets if not r.range] == [2_500_000]
    [resumed] = [r for r in gets if r.range]
    start = int(resumed.range.removeprefix("bytes=").rstrip("-"))
    assert (
        0 < start <= 2_500_000 and resumed.status == 206 and resumed.bytes_sent == len(data) - start
    )


def test_truncated_body_is_rejected_and_discarded(kaggle_server, kaggle_root, creds, tmp_path):
    kaggle_server.faults.truncate_next_body(1000)
    with pytest.raises(KaggleTransientError, match="Kaggle lists 20000"):
        download_file(
            kaggle_root.planet, SMALL, tmp_path, endpoint=kaggle_server.url, credentials=creds
        )
    assert not (tmp_path / SMALL).exists() and not (tmp_path / kaggle.PARTIAL_DIR / SMALL).exists()
    assert not (tmp_path / MANIFEST).exists()
    rec = download_file(
        kaggle_root.planet, SMALL, tmp_path, endpoint=kaggle_server.url, credentials=creds
    )
    assert rec.sha256 == sha(kaggle_root.files[kaggle_root.planet][SMALL])


def test_concurrent_downloads_share_one_manifest(kaggle_server, kaggle_root, creds, tmp_path):
    files = kaggle_root.files[kaggle_root.planet]
    with ThreadPoolExecutor(4) as pool:
        recs = list(
            pool.map(
                lambda name: download_file(
                    kaggle_root.planet,
                    name,
                    tmp_path,
                    endpoint=kaggle_server.url,
                    credentials=creds,
                ),
                [*files, SMALL],  # SMALL twice: the per-file lock makes the second one a skip
            )
        )
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert {n: e["sha256"] for n, e in manifest.items()} == {n: sha(b) for n, b in files.items()}
    assert sorted(r.downloaded for r in recs if r.name == SMALL) == [False, True]


def test_bad_names_and_endpoints_are_refused(creds, tmp_path):
    for name in ["../x", "a/b", ".hidden", MANIFEST, ""]:
        with pytest.raises(ValueError, match="plain Kaggle file name"):
            download_file("c", name, tmp_path, endpoint="http://127.0.0.1:1", credentials=creds)
    for endpoint in ["localhost:8000", "ftp://x", "http://"]:
        with pytest.raises(ValueError, match="not a base URL"):
            list_files("c", endpoint=endpoint, credentials=creds)
    assert kaggle.normalize_endpoint("http://h:1/api/v1/") == "http://h:1"
    assert kaggle.normalize_endpoint("") is None


# ----- error mapping ---------------------------------------------------------------------------


def test_401_is_an_auth_error_naming_the_source(kaggle_server, kaggle_root, kaggle_user):
    wrong = Credentials(kaggle_user, "wrong-key-0123456789", source="/some/where/kaggle.json")
    with pytest.raises(
        KaggleAuthError, match=r"check your credentials \(read from /some/where/kaggle.json\)"
    ) as info:
        list_files(kaggle_root.planet, endpoint=kaggle_server.url, credentials=wrong)
    assert info.value.status == 401 and not is_transient(info.value)
    assert "wrong-key-0123456789" not in str(info.value) + repr(info.value)


def test_403_is_a_rules_error_with_the_rules_url(kaggle_server, kaggle_root, creds, tmp_path):
    kaggle_server.decline_rules(kaggle_root.planet)
    with pytest.raises(KaggleRulesError) as info:
        download_file(
            kaggle_root.planet, SMALL, tmp_path, endpoint=kaggle_server.url, credentials=creds
        )
    assert f"https://www.kaggle.com/c/{kaggle_root.planet}/rules" in str(info.value)
    assert not is_transient(info.value) and not (tmp_path / SMALL).exists()


def test_404_names_the_competition_or_the_file(kaggle_server, kaggle_root, creds, tmp_path):
    with pytest.raises(KaggleNotFoundError, match="no-such-comp"):
        list_files("no-such-comp", endpoint=kaggle_server.url, credentials=creds)
    with pytest.raises(KaggleNotFoundError, match="missing.zip"):
        download_file(
            kaggle_root.planet,
            "missing.zip",
            tmp_path,
            endpoint=kaggle_server.url,
            credentials=creds,
        )
    # a stale listing: the file is gone by the time it is downloaded
    remote = kaggle.RemoteFile("gone.zip", 10, None)
    with pytest.raises(KaggleNotFoundError, match="gone.zip") as info:
        download_file(
            kaggle_root.planet,
            "gone.zip",
            tmp_path,
            endpoint=kaggle_server.url,
            credentials=creds,
            remote=remote,
        )
    assert info.value.status == 404


@pytest.mark.parametrize("path", ["ListDataFiles", "DownloadDataFile", "/blobs/"])
def test_500_is_transient_and_the_next_call_works(
    kaggle_server, kaggle_root, creds, tmp_path, path
):
    kaggle_server.faults.fail_next(status=503, path=path)
    with pytest.raises(KaggleTransientError) as info:
        download_file(
            kaggle_root.planet, SMALL, tmp_path, endpoint=kaggle_server.url, credentials=creds
        )
    assert info.value.status == 503 and is_transient(info.value)
    rec = download_file(
        kaggle_root.planet, SMALL, tmp_path, endpoint=kaggle_server.url, credentials=creds
    )
    assert rec.sha256 == sha(kaggle_root.files[kaggle_root.planet][SMALL])


def test_429_is_transient_with_retry_after(kaggle_server, kaggle_root, creds):
    kaggle_server.faults.rate_limit_next(retry_after=7)
    with pytest.raises(KaggleTransientError) as info:
        list_files(kaggle_root.planet, endpoint=kaggle_server.url, credentials=creds)
    assert info.value.status == 429 and info.value.retry_after == 7
    assert len(list_files(kaggle_root.planet, endpoint=kaggle_server.url, credentials=creds)) == 3


def test_connection_refused_is_transient(kaggle_root, creds, kaggle_server):
    url = kaggle_server.url
    kaggle_server.stop()
    with pytest.raises(KaggleTransientError) as info:
        list_files(kaggle_root.planet, endpoint=url, credentials=creds)
    assert is_transient(info.value)


def test_is_transient_on_other_exceptions():
    assert is_transient(requests.ConnectionError("x"))
    assert not is_transient(ValueError("x")) and not is_transient(KaggleError("x"))
    assert not is_transient(KaggleSubmissionLimitError("x"))


def test_the_key_never_leaks_into_errors(
    kaggle_server, kaggle_root, kaggle_user, kaggle_key, creds, tmp_path
):
    errors: list[BaseException] = []
    # the server echoing the key (and a signed URL) back must not put it into our message
    kaggle_server.faults.fail_next(
        status=500, message=f"boom key={kaggle_key} url=http://h/x?sig=abc"
    )
    kaggle_server.faults.fail_next(status=400, message=f"bad request for {kaggle_key}")
    for _ in range(2):
        try:
            list_files(kaggle_root.planet, endpoint=kaggle_server.url, credentials=creds)
        except KaggleError as exc:
            errors.append(exc)
    for fn in (
        lambda: list_files(
            kaggle_root.planet,
            endpoint=kaggle_server.url,
            credentials=Credentials(kaggle_user, kaggle_key[::-1], source="s"),
        ),
        lambda: download_file(
            kaggle_root.planet, "nope", tmp_path, endpoint=kaggle_server.url, credentials=creds
        ),
    ):
        try:
            fn()
        except KaggleError as exc:
            errors.append(exc)
    assert len(errors) == 4
    assert "?<redacted>" in str(errors[0]) and "sig=abc" not in str(errors[0])
    for exc in errors:
        text = str(exc) + repr(exc) + "".join(traceback.format_exception(exc)) + repr(exc.__dict__)
        assert kaggle_key not in text and kaggle_key[::-1] not in text
        assert exc.__cause__ is None and exc.__context__ is None  # no link to the client's request
        assert kaggle_key.encode() not in pickle.dumps(exc)
        copy = pickle.loads(pickle.dumps(exc))  # a result store can round-trip it
        assert type(copy) is type(exc) and str(copy) == str(exc) and copy.status == exc.status


def test_use_endpoint_is_scoped(kaggle_server):
    from kagglesdk import kaggle_env

    before = (
        os.environ.get("KAGGLE_API_ENVIRONMENT"),
        kaggle_env.get_endpoint(kaggle_env.KaggleEnv.LOCAL),
    )
    with kaggle.use_endpoint(kaggle_server.url):
        assert os.environ["KAGGLE_API_ENVIRONMENT"] == "LOCALHOST"
        assert kaggle_env.get_endpoint(kaggle_env.KaggleEnv.LOCAL) == kaggle_server.url
    after = (
        os.environ.get("KAGGLE_API_ENVIRONMENT"),
        kaggle_env.get_endpoint(kaggle_env.KaggleEnv.LOCAL),
    )
    assert after == before


# ----- submissions -----------------------------------------------------------------------------------


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(out.getvalue())
    return path


def test_submit_and_read_the_scores(kaggle_server, kaggle_root, creds, tmp_path):
    rows = kaggle_root.solutions[kaggle_root.planet]
    # every image predicted as "primary" only: F2 per image = 5*[primary in T]/(4|T|+1)
    sub = write_csv(
        tmp_path / "p.csv", ["image_name", "tags"], [[r["image_name"], "primary"] for r in rows]
    )
    ref = kaggle.submit(
        kaggle_root.planet, sub, "all primary", endpoint=kaggle_server.url, credentials=creds
    )
    st = kaggle.wait_for_submission(
        kaggle_root.planet,
        ref,
        timeout_s=10,
        interval_s=0.1,
        endpoint=kaggle_server.url,
        credentials=creds,
    )
    assert st.status == "complete" and st.ref == ref.ref and st.description == "all primary"
    for usage, score in (("Public", st.public_score), ("Private", st.private_score)):
        chosen = [r["tags"].split() for r in rows if r["Usage"] == usage]
        expected = sum(5 * ("primary" in t) / (4 * len(t) + 1) for t in chosen) / len(chosen)
        assert score == pytest.approx(expected, abs=5e-6)

    perfect = write_csv(
        tmp_path / "ok.csv", ["image_name", "tags"], [[r["image_name"], r["tags"]] for r in rows]
    )
    ref2 = kaggle.submit(
        kaggle_root.planet, perfect, "perfect", endpoint=kaggle_server.url, credentials=creds
    )
    st2 = kaggle.submission_status(
        kaggle_root.planet, ref2.ref, endpoint=kaggle_server.url, credentials=creds
    )
    assert (st2.public_score, st2.private_score) == (1.0, 1.0) and ref2.ref != ref.ref
    assert kaggle.submission_limits(kaggle_root.planet, kaggle_server.url, creds)["today"] == 2


def test_dogs_submission_error_and_daily_limit(kaggle_server, kaggle_root, creds, tmp_path):
    rows = kaggle_root.solutions[kaggle_root.dogs]
    perfect = write_csv(tmp_path / "d.csv", ["id", "label"], [[r["id"], r["label"]] for r in rows])
    ref = kaggle.submit(
        kaggle_root.dogs, perfect, "perfect", endpoint=kaggle_server.url, credentials=creds
    )
    st = kaggle.submission_status(
        kaggle_root.dogs, ref, endpoint=kaggle_server.url, credentials=creds
    )
    assert st.status == "complete" and st.public_score == 0.0 and st.private_score == 0.0

    broken = write_csv(tmp_path / "b.csv", ["id", "prob"], [["1", "0.5"]])
    ref = kaggle.submit(
        kaggle_root.dogs, broken, "broken", endpoint=kaggle_server.url, credentials=creds
    )
    st = kaggle.submission_status(
        kaggle_root.dogs, ref, endpoint=kaggle_server.url, credentials=creds
    )
    assert (
        st.status == "error" and "missing column(s) label" in st.error and st.public_score is None
    )

    kaggle.submit(kaggle_root.dogs, perfect, "third", endpoint=kaggle_server.url, credentials=creds)
    with pytest.raises(KaggleSubmissionLimitError, match="daily Submission allowance") as info:
        kaggle.submit(
            kaggle_root.dogs, perfect, "fourth", endpoint=kaggle_server.url, credentials=creds
        )
    assert not is_transient(info.value)
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        kaggle.submit(
            kaggle_root.dogs,
            tmp_path / "nope.csv",
            "x",
            endpoint=kaggle_server.url,
            credentials=creds,
        )


def test_pending_submission_times_out_as_transient(
    kaggle_root, kaggle_user, kaggle_key, creds, tmp_path
):
    from planet.kaggle_local import LocalKaggleServer

    rows = kaggle_root.solutions[kaggle_root.dogs]
    sub = write_csv(tmp_path / "d.csv", ["id", "label"], [[r["id"], r["label"]] for r in rows])
    with LocalKaggleServer(
        kaggle_root.root, credentials={kaggle_user: kaggle_key}, grading_delay_s=60
    ) as srv:
        ref = kaggle.submit(kaggle_root.dogs, sub, "slow", endpoint=srv.url, credentials=creds)
        assert kaggle.submission_status(kaggle_root.dogs, ref, srv.url, creds).status == "pending"
        with pytest.raises(KaggleTransientError, match="still pending"):
            kaggle.wait_for_submission(
                kaggle_root.dogs,
                ref,
                timeout_s=0.2,
                interval_s=0.05,
                endpoint=srv.url,
                credentials=creds,
            )


def test_progress_callback_failures_do_not_break_downloads(
    kaggle_server, kaggle_root, creds, tmp_path, monkeypatch
):
    monkeypatch.setattr(download, "PROGRESS_INTERVAL_S", 0.001)
    calls: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        calls.append((done, total))
        raise RuntimeError("progress sink is down")

    rec = download_file(
        kaggle_root.planet,
        BIG,
        tmp_path,
        endpoint=kaggle_server.url,
        credentials=creds,
        progress=progress,
    )
    assert rec.sha256 == sha(kaggle_root.files[kaggle_root.planet][BIG])
    assert calls and calls[-1] == (rec.size, rec.size)
