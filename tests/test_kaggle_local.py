"""The local Kaggle server, driven by the real kaggle client and by plain HTTP, and its grader."""

from __future__ import annotations

import base64
import csv
import io
import math
import os
import re
import signal
import subprocess
import sys
from email.utils import parsedate_to_datetime
from pathlib import Path

import numpy as np
import pytest
import requests

from planet.competitions import DOGS_VS_CATS, PLANET
from planet.kaggle_local import LocalKaggleServer, grade_file, grade_texts
from planet.learn.metrics import fbeta_samples, log_loss

KAGGLE_TEST_USER = "tester"  # what the kaggle_server fixture (conftest.py) accepts
SERVICE = "competitions.CompetitionApiService"
BIG = "train-jpg.tar.7z"


# ----- helpers ------------------------------------------------------------------------------


def post(server: LocalKaggleServer, method: str, body: dict, auth=None, service: str = SERVICE):
    return requests.post(
        f"{server.url}/api/v1/{service}/{method}",
        json=body,
        auth=auth,
        allow_redirects=False,
        timeout=10,
    )


def blob_url(server: LocalKaggleServer, slug: str, name: str, auth) -> str:
    r = post(server, "DownloadDataFile", {"competitionName": slug, "fileName": name}, auth)
    assert r.status_code == 302, r.text
    return r.headers["Location"]


def csv_text(header: list[str], rows: list[list[str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def solution_text(fake, slug: str) -> str:
    return (fake.root / slug / "_private" / "solution.csv").read_text()


def f2_by_hand(truth: list[set[str]], pred: list[set[str]]) -> float:
    """Mean per-sample F2 from sets (independent of the grader's multi-hot arrays)."""
    scores = []
    for t, p in zip(truth, pred, strict=True):
        tp = len(t & p)
        denom = 4 * len(t) + len(p)
        scores.append(5 * tp / denom if denom else 0.0)
    return sum(scores) / len(scores)


def random_planet_predictions(fake, seed: int) -> dict[str, set[str]]:
    rng = np.random.default_rng(seed)
    preds = {}
    for row in fake.solutions[fake.planet]:
        truth = set(row["tags"].split())
        keep = {t for t in truth if rng.random() < 0.6}
        noise = set(rng.choice(PLANET.classes, size=int(rng.integers(0, 3)), replace=False))
        preds[row["image_name"]] = keep | noise
    return preds


@pytest.fixture
def auth(kaggle_key: str) -> tuple[str, str]:
    return (KAGGLE_TEST_USER, kaggle_key)


@pytest.fixture
def raw_api(kaggle_server, kaggle_key, isolated_kaggle_env, monkeypatch):
    """The unmodified KaggleApi, signed in from the environment, pointed at the server."""
    from planet.kaggle import use_endpoint

    monkeypatch.setenv("KAGGLE_USERNAME", KAGGLE_TEST_USER)
    monkeypatch.setenv("KAGGLE_KEY", kaggle_key)
    with use_endpoint(kaggle_server.url):
        from kaggle.api.kaggle_api_extended import KaggleApi

        api = KaggleApi()
        api.authenticate()
        yield api


# ----- the real client --------------------------------------------------------------------------


def test_real_client_lists_files_but_never_private(raw_api, kaggle_root):
    result = raw_api.competition_list_files(kaggle_root.planet)
    listed = {f.name: f.total_bytes for f in result.files}
    expected = {n: len(b) for n, b in kaggle_root.files[kaggle_root.planet].items()}
    assert listed == expected
    assert all(f.creation_date is not None for f in result.files)
    assert not any("private" in n or "solution" in n for n in listed)


def test_real_client_pages_through_the_listing(raw_api, kaggle_root):
    names, token, pages = [], None, 0
    while True:
        page = raw_api.competition_list_files(kaggle_root.planet, page_token=token, page_size=1)
        pages += 1
        names += [f.name for f in page.files]
        token = page.next_page_token
        if not token:
            break
    assert pages == len(kaggle_root.files[kaggle_root.planet]) == len(names)
    assert sorted(names) == sorted(kaggle_root.files[kaggle_root.planet])


def test_real_client_downloads_identical_bytes(raw_api, kaggle_root, kaggle_server, tmp_path):
    raw_api.competition_download_file(kaggle_root.planet, BIG, path=str(tmp_path), quiet=True)
    assert (tmp_path / BIG).read_bytes() == kaggle_root.files[kaggle_root.planet][BIG]
    assert kaggle_server.count("DownloadDataFile", status=302) == 1
    assert kaggle_server.count(f"^/blobs/.*/{re.escape(BIG)}$", method="GET", status=200) == 1


def test_real_client_submits_and_sees_the_score(raw_api, kaggle_root, tmp_path):
    preds = random_planet_predictions(kaggle_root, seed=1)
    sub = tmp_path / "sub.csv"
    sub.write_text(
        csv_text(["image_name", "tags"], [[k, " ".join(sorted(v))] for k, v in preds.items()])
    )
    answer = raw_api.competition_submit(str(sub), "first try", kaggle_root.planet, quiet=True)
    assert answer.ref > 0 and answer.message.startswith("Successfully submitted")
    [listed] = raw_api.competition_submissions(kaggle_root.planet)
    assert listed.ref == answer.ref and listed.description == "first try"
    assert listed.status.name == "COMPLETE"
    rows = kaggle_root.solutions[kaggle_root.planet]
    for usage, score in (("Public", listed.public_score), ("Private", listed.private_score)):
        chosen = [r for r in rows if r["Usage"] == usage]
        expected = f2_by_hand(
            [set(r["tags"].split()) for r in chosen], [preds[r["image_name"]] for r in chosen]
        )
        assert float(score) == pytest.approx(expected, abs=5e-6)
    limits = raw_api.competition_get_submission_limits(kaggle_root.planet)
    assert (limits.num_today, limits.num_allowed_now) == (1, 2)


# ----- blobs: headers, ranges, ETags -------------------------------------------------------------


def test_blob_headers_ranges_and_if_range(kaggle_server, kaggle_root, auth):
    data = kaggle_root.files[kaggle_root.planet][BIG]
    url = blob_url(kaggle_server, kaggle_root.planet, BIG, auth)
    full = requests.get(url, timeout=10)
    assert full.status_code == 200 and full.content == data
    h = full.headers
    assert int(h["Content-Length"]) == len(data)
    assert h["Accept-Ranges"] == "bytes"
    assert re.fullmatch(r'"[0-9a-f]{32}"', h["ETag"])
    assert parsedate_to_datetime(h["Last-Modified"]).timestamp() == pytest.approx(
        os.stat(kaggle_root.root / kaggle_root.planet / BIG).st_mtime, abs=1
    )
    etag = h["ETag"]
    assert requests.head(url, timeout=10).headers["ETag"] == etag  # stable

    part = requests.get(url, headers={"Range": "bytes=100-199"}, timeout=10)
    assert part.status_code == 206 and part.content == data[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    tail = requests.get(url, headers={"Range": "bytes=-7"}, timeout=10)
    assert tail.status_code == 206 and tail.content == data[-7:]
    rest = requests.get(url, headers={"Range": "bytes=2999990-", "If-Range": etag}, timeout=10)
    assert rest.status_code == 206 and rest.content == data[2999990:]
    stale = requests.get(url, headers={"Range": "bytes=10-", "If-Range": '"other"'}, timeout=10)
    assert stale.status_code == 200 and stale.content == data  # changed object: whole body
    beyond = requests.get(url, headers={"Range": f"bytes={len(data)}-"}, timeout=10)
    assert beyond.status_code == 416 and beyond.headers["Content-Range"] == f"bytes */{len(data)}"

    kaggle_server.faults.change_etag()
    assert requests.head(url, timeout=10).headers["ETag"] != etag

    tampered = re.sub(r"sig=[0-9a-f]+", "sig=" + "0" * 40, url)
    assert requests.get(tampered, timeout=10).status_code == 403


def test_private_files_and_traversal_are_never_served(kaggle_server, kaggle_root, auth):
    slug = kaggle_root.planet
    secret = solution_text(kaggle_root, slug)
    bad_names = [
        "_private/solution.csv",
        "solution.csv",
        "_private",
        "../" + slug + "/" + BIG,
        "..",
        ".",
        "",
        f"..\\{BIG}",
        "/etc/passwd",
        ".hidden",
    ]
    (kaggle_root.root / slug / ".hidden").write_bytes(b"hidden")
    for name in bad_names:
        r = post(
            kaggle_server, "DownloadDataFile", {"competitionName": slug, "fileName": name}, auth
        )
        assert r.status_code == 404, name
        assert r.json()["code"] == 404
    for slug_name in ["_private", "..", f"{slug}/_private", "."]:
        r = post(kaggle_server, "ListDataFiles", {"competitionName": slug_name}, auth)
        assert r.status_code == 404, slug_name
    # even with a valid signature for the name, the blob route refuses private/traversal names
    for name in ["_private/solution.csv", "../" + slug + "/_private/solution.csv"]:
        sig = kaggle_server.blob_signature(slug, name)
        quoted = requests.utils.quote(name, safe="")
        r = requests.get(f"{kaggle_server.url}/blobs/{slug}/{quoted}?sig={sig}", timeout=10)
        assert r.status_code == 404 and secret not in r.text
    r = requests.get(
        f"{kaggle_server.url}/blobs/{slug}/../{slug}/_private/solution.csv", timeout=10
    )
    assert r.status_code in (403, 404) and secret not in r.text


# ----- auth, rules, not found ----------------------------------------------------------------------


def test_missing_or_wrong_credentials_get_401_json(kaggle_server, kaggle_root, kaggle_key):
    body = {"competitionName": kaggle_root.planet}
    for auth in (None, (KAGGLE_TEST_USER, "wrong-key"), ("someone-else", kaggle_key)):
        r = post(kaggle_server, "ListDataFiles", body, auth)
        assert r.status_code == 401
        assert r.json()["code"] == 401 and "credentials" in r.json()["message"]
    r = requests.post(
        f"{kaggle_server.url}/api/v1/{SERVICE}/ListDataFiles",
        json=body,
        headers={"Authorization": "Bearer not-a-token"},
        timeout=10,
    )
    assert r.status_code == 401


def test_bearer_tokens_and_token_introspection(kaggle_root):
    token = "tok-" + "a" * 24
    with LocalKaggleServer(kaggle_root.root, access_tokens={token: "token-user"}) as server:
        r = requests.post(
            f"{server.url}/api/v1/{SERVICE}/ListDataFiles",
            json={"competitionName": kaggle_root.planet},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert r.status_code == 200 and len(r.json()["files"]) == 3
        intro = post(server, "IntrospectToken", {"token": token}, service="security.OAuthService")
        assert intro.json() == {"active": True, "username": "token-user"}
        intro = post(server, "IntrospectToken", {"token": "nope"}, service="security.OAuthService")
        assert intro.json() == {"active": False}


def test_unknown_competition_or_file_is_a_404_naming_it(kaggle_server, kaggle_root, auth):
    r = post(kaggle_server, "ListDataFiles", {"competitionName": "no-such-comp"}, auth)
    assert r.status_code == 404 and "no-such-comp" in r.json()["message"]
    r = post(
        kaggle_server,
        "DownloadDataFile",
        {"competitionName": kaggle_root.planet, "fileName": "missing.zip"},
        auth,
    )
    assert r.status_code == 404 and "missing.zip" in r.json()["message"]
    r = post(kaggle_server, "NoSuchMethod", {}, auth)
    assert r.status_code == 404


def test_declined_rules_give_403_on_download_and_submit(kaggle_server, kaggle_root, auth):
    slug = kaggle_root.planet
    kaggle_server.decline_rules(slug, KAGGLE_TEST_USER)
    r = post(kaggle_server, "DownloadDataFile", {"competitionName": slug, "fileName": BIG}, auth)
    assert r.status_code == 403 and f"/c/{slug}/rules" in r.json()["message"]
    r = post(
        kaggle_server, "StartSubmissionUpload", {"competitionName": slug, "fileName": "s.csv"}, auth
    )
    assert r.status_code == 403
    assert post(kaggle_server, "ListDataFiles", {"competitionName": slug}, auth).status_code == 200
    other = kaggle_root.dogs  # only this competition is affected
    assert (
        post(
            kaggle_server,
            "DownloadDataFile",
            {"competitionName": other, "fileName": "train.zip"},
            auth,
        ).status_code
        == 302
    )
    kaggle_server.accept_rules(slug)
    assert (
        post(
            kaggle_server, "DownloadDataFile", {"competitionName": slug, "fileName": BIG}, auth
        ).status_code
        == 302
    )


# ----- fault injection ---------------------------------------------------------------------------


def test_injected_500s_and_429s_then_recovery(kaggle_server, kaggle_root, auth):
    body = {"competitionName": kaggle_root.planet}
    kaggle_server.faults.fail_next(2, status=500, path="ListDataFiles")
    kaggle_server.faults.rate_limit_next(retry_after=3, path="ListDataFiles")
    assert kaggle_server.faults.pending == 3
    codes = [post(kaggle_server, "ListDataFiles", body, auth) for _ in range(4)]
    assert [r.status_code for r in codes] == [500, 500, 429, 200]
    assert codes[2].headers["Retry-After"] == "3"
    assert codes[0].json()["code"] == 500
    assert kaggle_server.faults.pending == 0
    assert kaggle_server.count("ListDataFiles", status=500) == 2


def test_cut_and_truncated_bodies(kaggle_server, kaggle_root, auth):
    data = kaggle_root.files[kaggle_root.planet][BIG]
    url = blob_url(kaggle_server, kaggle_root.planet, BIG, auth)
    kaggle_server.faults.cut_next_body(1000)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(url, timeout=10).content  # noqa: B018 - reading the body raises
    kaggle_server.faults.truncate_next_body(1000)
    short = requests.get(url, timeout=10)
    assert short.status_code == 200 and short.content == data[:1000]
    assert requests.get(url, timeout=10).content == data  # faults are used up
    sent = [r.bytes_sent for r in kaggle_server.requests if r.path.startswith("/blobs/")]
    assert sent == [1000, 1000, len(data)]


# ----- grading -----------------------------------------------------------------------------------


def test_planet_grader_matches_independent_f2(kaggle_root):
    rows = kaggle_root.solutions[kaggle_root.planet]
    preds = random_planet_predictions(kaggle_root, seed=7)
    sub = csv_text(["image_name", "tags"], [[k, " ".join(v)] for k, v in reversed(preds.items())])
    public, private = grade_texts(PLANET, sub, solution_text(kaggle_root, kaggle_root.planet))
    for usage, score in (("Public", public), ("Private", private)):
        chosen = [r for r in rows if r["Usage"] == usage]
        truth = [set(r["tags"].split()) for r in chosen]
        pred = [preds[r["image_name"]] for r in chosen]
        assert score == pytest.approx(f2_by_hand(truth, pred), abs=1e-12)
        onehot = lambda tags: [c in tags for c in PLANET.classes]  # noqa: E731
        assert score == pytest.approx(
            fbeta_samples(
                np.array([onehot(t) for t in truth]), np.array([onehot(p) for p in pred])
            ),
            abs=1e-12,
        )
    assert 0 < public < 1 and 0 < private < 1
    perfect = csv_text(["image_name", "tags"], [[r["image_name"], r["tags"]] for r in rows])
    assert grade_texts(PLANET, perfect, solution_text(kaggle_root, kaggle_root.planet)) == (
        1.0,
        1.0,
    )


def test_dogs_grader_matches_independent_log_loss(kaggle_root):
    rows = kaggle_root.solutions[kaggle_root.dogs]
    rng = np.random.default_rng(3)
    probs = {r["id"]: float(rng.random()) for r in rows}
    probs[rows[0]["id"]] = 1.0 - float(rows[0]["label"])  # a confident miss: exercises clipping
    sub = csv_text(["id", "label"], [[k, repr(v)] for k, v in probs.items()])
    public, private = grade_texts(DOGS_VS_CATS, sub, solution_text(kaggle_root, kaggle_root.dogs))
    for usage, score in (("Public", public), ("Private", private)):
        chosen = [r for r in rows if r["Usage"] == usage]
        by_hand = 0.0
        for r in chosen:
            p = min(max(probs[r["id"]], 1e-15), 1 - 1e-15)
            by_hand -= math.log(p) if r["label"] == "1" else math.log(1 - p)
        assert score == pytest.approx(by_hand / len(chosen), rel=1e-9)
        y = np.array([float(r["label"]) for r in chosen])
        assert score == pytest.approx(
            log_loss(y, np.array([probs[r["id"]] for r in chosen])), rel=1e-12
        )
    perfect = csv_text(["id", "label"], [[r["id"], r["label"]] for r in rows])
    public, private = grade_texts(
        DOGS_VS_CATS, perfect, solution_text(kaggle_root, kaggle_root.dogs)
    )
    assert public < 1e-12 and private < 1e-12


def _planet_rows(fake) -> list[list[str]]:
    return [[r["image_name"], r["tags"]] for r in fake.solutions[fake.planet]]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda rows: csv_text(["image_name", "tags"], rows[1:]), "missing 1 image_name"),
        (
            lambda rows: csv_text(["image_name", "tags"], [*rows, ["test_999", "clear"]]),
            "unexpected image_name",
        ),
        (lambda rows: csv_text(["image_name", "tags"], [*rows, rows[0]]), "duplicate image_name"),
        (lambda rows: csv_text(["image_name", "labels"], rows), "missing column(s) tags"),
        (
            lambda rows: csv_text(["image_name", "tags", "x"], [[*r, "1"] for r in rows]),
            "unexpected column(s) x",
        ),
        (
            lambda rows: csv_text(
                ["image_name", "tags"], [[rows[0][0], "clear jungle"], *rows[1:]]
            ),
            "unknown tag 'jungle'",
        ),
        (lambda rows: "", "empty"),
    ],
)
def test_planet_grader_rejects_malformed_submissions(kaggle_root, tmp_path, make, message):
    sub = tmp_path / "sub.csv"
    sub.write_text(make(_planet_rows(kaggle_root)))
    result = grade_file(
        kaggle_root.planet, sub, kaggle_root.root / kaggle_root.planet / "_private" / "solution.csv"
    )
    assert not result.ok and result.public_score is None
    assert message in result.error


def test_dogs_grader_rejects_non_numeric_labels(kaggle_root, tmp_path):
    rows = [[r["id"], "0.5"] for r in kaggle_root.solutions[kaggle_root.dogs]]
    rows[3][1] = "dog"
    sub = tmp_path / "sub.csv"
    sub.write_text(csv_text(["id", "label"], rows))
    result = grade_file(
        kaggle_root.dogs, sub, kaggle_root.root / kaggle_root.dogs / "_private" / "solution.csv"
    )
    assert not result.ok and "'dog'" in result.error


def test_unknown_competition_is_served_but_not_graded(kaggle_server, kaggle_root, auth, tmp_path):
    r = post(kaggle_server, "ListDataFiles", {"competitionName": kaggle_root.unknown}, auth)
    assert [f["name"] for f in r.json()["files"]] == ["data.bin"]
    sub = tmp_path / "s.csv"
    sub.write_text("id,label\n1,1\n")
    result = grade_file(
        kaggle_root.unknown,
        sub,
        kaggle_root.root / kaggle_root.unknown / "_private" / "solution.csv",
    )
    assert not result.ok and "no grader" in result.error


# ----- submissions over HTTP: limits, errors, persistence ------------------------------------------


def submit_raw(server: LocalKaggleServer, slug: str, text: str, auth, description: str = "d"):
    start = post(
        server,
        "StartSubmissionUpload",
        {"competitionName": slug, "fileName": "sub.csv", "contentLength": len(text.encode())},
        auth,
    )
    assert start.status_code == 200, start.text
    put = requests.put(start.json()["createUrl"], data=text.encode(), timeout=10)
    assert put.status_code == 200, put.text
    return post(
        server,
        "CreateSubmission",
        {
            "competitionName": slug,
            "blobFileTokens": start.json()["token"],
            "submissionDescription": description,
        },
        auth,
    )


def test_daily_limit_errors_and_restart_memory(kaggle_root, kaggle_key, auth):
    slug = kaggle_root.dogs
    good = csv_text(["id", "label"], [[r["id"], r["label"]] for r in kaggle_root.solutions[slug]])
    bad = csv_text(["id", "label"], [["1", "0.5"]])
    creds = {KAGGLE_TEST_USER: kaggle_key}
    with LocalKaggleServer(kaggle_root.root, credentials=creds, daily_submission_limit=2) as server:
        ok = submit_raw(server, slug, good, auth, "good")
        err = submit_raw(server, slug, bad, auth, "bad")
        assert ok.status_code == err.status_code == 200
        over = submit_raw(server, slug, good, auth, "third")
        assert over.status_code == 400
        assert "daily Submission allowance (2)" in over.json()["message"]
        listed = post(server, "ListSubmissions", {"competitionName": slug}, auth).json()[
            "submissions"
        ]
        assert [s["description"] for s in listed] == ["bad", "good"]  # newest first
        assert listed[0]["status"] == "ERROR" and "missing" in listed[0]["errorDescription"]
        assert listed[1]["status"] == "COMPLETE" and float(listed[1]["publicScore"]) < 1e-9
        refs = {s["ref"] for s in listed}
    store = kaggle_root.root / slug / "_private" / "submissions.json"
    assert store.is_file()
    with LocalKaggleServer(kaggle_root.root, credentials=creds, daily_submission_limit=3) as server:
        listed = post(server, "ListSubmissions", {"competitionName": slug}, auth).json()[
            "submissions"
        ]
        assert {s["ref"] for s in listed} == refs
        limits = post(server, "GetSubmissionLimits", {"competitionName": slug}, auth).json()
        assert limits["numToday"] == 2 and limits["numAllowedNow"] == 1
        third = submit_raw(server, slug, good, auth, "after restart")
        assert third.status_code == 200 and third.json()["ref"] not in refs
        got = post(server, "GetSubmission", {"ref": third.json()["ref"]}, auth).json()
        assert got["description"] == "after restart" and got["status"] == "COMPLETE"


def test_pending_until_grading_delay_passes(kaggle_root, kaggle_key, auth):
    slug = kaggle_root.dogs
    good = csv_text(["id", "label"], [[r["id"], r["label"]] for r in kaggle_root.solutions[slug]])
    with LocalKaggleServer(
        kaggle_root.root, credentials={KAGGLE_TEST_USER: kaggle_key}, grading_delay_s=60
    ) as server:
        ref = submit_raw(server, slug, good, auth).json()["ref"]
        got = post(server, "GetSubmission", {"ref": ref}, auth).json()
        assert got["status"] == "PENDING" and "publicScore" not in got


def test_upload_tokens_are_checked(kaggle_server, kaggle_root, auth):
    r = post(
        kaggle_server,
        "CreateSubmission",
        {"competitionName": kaggle_root.dogs, "blobFileTokens": "forged"},
        auth,
    )
    assert r.status_code == 400
    assert (
        requests.put(f"{kaggle_server.url}/uploads/forged", data=b"x", timeout=10).status_code
        == 404
    )


# ----- the request log and serve_forever ---------------------------------------------------------


def test_request_log_never_holds_credentials(kaggle_server, kaggle_root, auth, kaggle_key):
    post(kaggle_server, "ListDataFiles", {"competitionName": kaggle_root.planet}, auth)
    requests.get(blob_url(kaggle_server, kaggle_root.planet, "train_v2.csv.zip", auth), timeout=10)
    text = repr(kaggle_server.requests)
    basic = base64.b64encode(f"{KAGGLE_TEST_USER}:{kaggle_key}".encode()).decode()
    assert kaggle_server.requests and kaggle_key not in text and basic not in text
    assert "sig=" not in text


def test_serve_forever_until_ctrl_c(kaggle_root, kaggle_key, isolated_kaggle_env, tmp_path):
    from planet import kaggle

    env = {
        **os.environ,
        "KAGGLE_USERNAME": "cli-user",
        "KAGGLE_KEY": kaggle_key,
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.Popen(
        [Path(sys.executable).with_name("planet"), "kaggle-local", "--root", str(kaggle_root.root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        first = "".join(proc.stdout.readline() for _ in range(3))  # URL, competitions, how to stop
        url = re.search(r"http://127\.0\.0\.1:\d+", first).group(0)
        creds = kaggle.Credentials("cli-user", kaggle_key, source="test")
        names = {
            f.name for f in kaggle.list_files(kaggle_root.dogs, endpoint=url, credentials=creds)
        }
        assert names == set(kaggle_root.files[kaggle_root.dogs])
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert kaggle_key not in first + out and "KAGGLE_USERNAME/KAGGLE_KEY" in first + out
