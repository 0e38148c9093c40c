"""The local Kaggle server's start-up: its solution files checked first, offline credentials,
a taken port named, and the shell lines that point the real kaggle CLI at it on any port."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from flows import cli
from planet import kaggle
from planet.competitions import DOGS_VS_CATS
from planet.kaggle_local import LocalKaggleServer, grade_file
from planet.kaggle_local.grader import SolutionError
from planet.kaggle_local.server import ServerBindError, client_env_lines

SLUG = DOGS_VS_CATS.slug
USER, KEY = "tester", "0123456789abcdef0123456789abcdef"


def dogs_root(tmp_path: Path, solution: str, ids: range = range(1, 6)) -> Path:
    """root/<dogs slug>/ with a readable sample submission of `ids` and the given solution."""
    folder = tmp_path / "kaggle" / SLUG
    (folder / "_private").mkdir(parents=True)
    (folder / "sample_submission.csv").write_text("id,label\n" + "".join(f"{i},0.5\n" for i in ids))
    (folder / "_private" / "solution.csv").write_text(solution)
    return folder.parent


def test_a_solution_without_usage_is_served_as_all_public_with_a_warning(tmp_path):
    root = dogs_root(tmp_path, "id,label\n1,1\n2,0\n3,1\n4,0\n5,1\n")
    solution = root / SLUG / "_private" / "solution.csv"
    with LocalKaggleServer(root, credentials={USER: KEY}) as server:
        assert len(server.warnings) == 1
        assert str(solution) in server.warnings[0] and "Usage" in server.warnings[0]
        sub = tmp_path / "sub.csv"
        sub.write_text("id,label\n1,0.9\n2,0.1\n3,0.8\n4,0.2\n5,0.7\n")
        graded = grade_file(SLUG, sub, solution)
        assert graded.ok, graded.error
        assert graded.public_score is not None and graded.private_score is None


@pytest.mark.parametrize(
    ("solution", "words"),
    [
        (
            "id,label,Usage\n1,1,Public\n2,0,Public\n3,1,Private\n4,0,Private\n9,1,Public\n",
            ["'5'", "'9'", "sample_submission.csv"],
        ),
        (
            "id,label,Usage\n1,1,Public\n2,0,Public\n3,1,Private\n4,0,Private\n5,1,Hidden\n",
            ["'Hidden'", "Public or Private"],
        ),
        ("id,tags\n1,1\n", ["label"]),
    ],
    ids=["wrong-rows", "bad-usage", "wrong-columns"],
)
def test_a_solution_that_cannot_be_graded_stops_the_server_naming_the_file(
    tmp_path, solution, words, capsys
):
    root = dogs_root(tmp_path, solution)
    path = root / SLUG / "_private" / "solution.csv"
    with pytest.raises(SolutionError) as err:
        LocalKaggleServer(root, credentials={USER: KEY})
    assert str(path) in str(err.value)
    for word in words:
        assert word in str(err.value)
    try:  # the CLI: one line, before serving
        code = cli.main(["kaggle-local", "--root", str(root)])
    except SystemExit as exit_info:
        code = exit_info.code
    assert code in (1, 2)
    out = capsys.readouterr()
    assert out.err.count("\n") == 1 and str(path) in out.err and "Local Kaggle" not in out.out


def test_a_grading_error_from_the_solution_names_it_and_clears_the_submission(tmp_path):
    root = dogs_root(tmp_path, "id,label,Usage\n1,yes,Public\n")
    path = root / SLUG / "_private" / "solution.csv"
    sub = tmp_path / "sub.csv"
    sub.write_text("id,label\n1,0.5\n")
    graded = grade_file(SLUG, sub, path)
    assert str(path) in graded.error and "not the submission's fault" in graded.error
    assert "--resubmit" in graded.error


def test_a_taken_port_is_named(tmp_path):
    root = dogs_root(tmp_path, "id,label,Usage\n" + "".join(f"{i},1,Public\n" for i in range(1, 6)))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServerBindError) as err:
            LocalKaggleServer(root, port=port, credentials={USER: KEY}).start()
    assert f"127.0.0.1:{port}" in str(err.value) and "--port" in str(err.value)


def _serve(root: Path, *args: str, env: dict[str, str]) -> tuple[subprocess.Popen, list[str]]:
    proc = subprocess.Popen(
        [Path(sys.executable).with_name("planet"), "kaggle-local", "--root", str(root), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**env, "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if line.startswith("kaggle()") or line.startswith("  use them:"):
            break
    return proc, lines


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_kaggle_local_without_credentials_makes_some_up(kaggle_root, isolated_kaggle_env):
    proc, lines = _serve(kaggle_root.root, env=dict(os.environ))
    try:
        text = "\n".join(lines)
        assert "made-up credentials" in text, text
        made = re.search(r"KAGGLE_USERNAME=(\S+) KAGGLE_KEY=(\S+)", text)
        url = re.search(r"http://127\.0\.0\.1:\d+", text).group(0)
        creds = kaggle.Credentials(made.group(1), made.group(2), source="printed")
        names = {
            f.name for f in kaggle.list_files(kaggle_root.dogs, endpoint=url, credentials=creds)
        }
        assert names == set(kaggle_root.files[kaggle_root.dogs])
    finally:
        _stop(proc)


def test_print_env_points_the_real_kaggle_cli_at_any_port(kaggle_root, isolated_kaggle_env):
    proc, lines = _serve(kaggle_root.root, "--print-env", env=dict(os.environ))
    try:
        exports = [line for line in lines if line.startswith(("export ", "kaggle()"))]
        assert any("KAGGLE_API_ENVIRONMENT=LOCALHOST" in line for line in exports), lines
        script = "\n".join([*exports, f"kaggle competitions files -c {kaggle_root.dogs}"])
        done = subprocess.run(
            ["bash", "-c", script],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "HOME": str(isolated_kaggle_env)},
        )
        assert done.returncode == 0, done.stderr[-2000:]
        for name in kaggle_root.files[kaggle_root.dogs]:
            assert name in done.stdout
    finally:
        _stop(proc)


def test_print_env_uses_kagglesdk_own_names_on_its_two_ports():
    assert client_env_lines("http://127.0.0.1:7777") == ["export KAGGLE_API_ENVIRONMENT=TEST"]
    assert client_env_lines("http://127.0.0.1:80") == ["export KAGGLE_API_ENVIRONMENT=LOCALHOST"]
    lines = client_env_lines("http://127.0.0.1:8123", ("u", "k"))
    assert lines[0] == "export KAGGLE_USERNAME=u KAGGLE_KEY=k"
    assert "http://127.0.0.1:8123" in lines[-1] and lines[-1].startswith("kaggle()")


def test_kaggle_local_warns_about_a_solution_without_usage(tmp_path, isolated_kaggle_env):
    root = dogs_root(tmp_path, "id,label\n1,1\n2,0\n3,1\n4,0\n5,1\n")
    proc, lines = _serve(root, env=dict(os.environ))
    try:
        text = "\n".join(lines)
        assert "Local Kaggle server at" in text
        assert str(root / SLUG / "_private" / "solution.csv") in text and "no Usage" in text
    finally:
        _stop(proc)
