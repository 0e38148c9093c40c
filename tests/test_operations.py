"""Operations on more than one machine: Kaggle credentials from a Prefect Secret block (and
still no key anywhere a run leaves data), failure messages posted to a webhook by the flows'
hooks, and the automation of deployments/prefect.yaml doing the same from the server."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from flows.config import PipelineConfig, PrepareConfig, SubmitConfig
from planet.kaggle import KaggleCredentialsError
from planet.kaggle.credentials import CredentialSource, load_credentials
from tests.reliability.secrets_scan import needles, scan_tree
from tests.servers import free_port, webhook_receiver

HOOK_TOKEN = "hook-token-" + uuid.uuid4().hex  # a webhook URL's secret part


# ----- credentials from a further source (the domain layer) ----------------------------------


def _source(value, name="the test's vault"):
    reads = []

    def read():
        reads.append(1)
        return value

    return CredentialSource(name, read, hint="put them in the test's vault"), reads


def test_a_further_source_comes_after_the_environment_and_kaggle_json(
    isolated_kaggle_env, monkeypatch, kaggle_key
):
    source, reads = _source(json.dumps({"username": "vault-user", "key": kaggle_key}))
    c = load_credentials(more=[source])
    assert (c.username, c.key, c.source) == ("vault-user", kaggle_key, "the test's vault")
    (isolated_kaggle_env / ".kaggle").mkdir()
    (isolated_kaggle_env / ".kaggle" / "kaggle.json").write_text(
        json.dumps({"username": "file-user", "key": "file-key-123456"})
    )
    (isolated_kaggle_env / ".kaggle" / "kaggle.json").chmod(0o600)
    assert load_credentials(more=[source]).username == "file-user"
    monkeypatch.setenv("KAGGLE_USERNAME", "env-user")
    monkeypatch.setenv("KAGGLE_KEY", "env-key-123456")
    assert load_credentials(more=[source]).username == "env-user"
    assert len(reads) == 1  # not even read when the machine has its own
    mapping, _ = _source({"username": "u", "key": kaggle_key})
    token, _ = _source({"token": "vault-token-abcdef"})
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    (isolated_kaggle_env / ".kaggle" / "kaggle.json").unlink()
    assert load_credentials(more=[mapping]).key == kaggle_key
    assert load_credentials(more=[token]).token == "vault-token-abcdef"


def test_missing_or_malformed_credentials_name_every_source(isolated_kaggle_env, kaggle_key):
    empty, _ = _source(None)
    with pytest.raises(KaggleCredentialsError) as info:
        load_credentials(more=[empty])
    msg = str(info.value)
    assert "KAGGLE_USERNAME" in msg and str(isolated_kaggle_env / ".kaggle" / "kaggle.json") in msg
    assert "in the test's vault" in msg and "put them in the test's vault" in msg
    for value, expected in [
        (f"{kaggle_key} is not json", "is not JSON"),
        ({"username": "u"}, 'must contain "username" and "key"'),
        (json.dumps([kaggle_key]), "should hold kaggle.json's content"),
    ]:
        bad, _ = _source(value)
        with pytest.raises(KaggleCredentialsError, match=expected) as info:
            load_credentials(more=[bad])
        assert "the test's vault" in str(info.value) and kaggle_key not in str(info.value)


def test_the_secret_block_name_comes_from_the_environment(monkeypatch):
    from tasks.credentials import DEFAULT_SECRET_BLOCK, SECRET_BLOCK_ENV, secret_block_name

    monkeypatch.delenv(SECRET_BLOCK_ENV, raising=False)
    assert secret_block_name() == DEFAULT_SECRET_BLOCK == "kaggle-credentials"
    monkeypatch.setenv(SECRET_BLOCK_ENV, " team-kaggle ")
    assert secret_block_name() == "team-kaggle"
    monkeypatch.setenv(SECRET_BLOCK_ENV, "none")
    assert secret_block_name() is None


def test_error_lines_are_one_short_line_without_secrets():
    from flows.notify import MAX_ERROR_CHARS, error_line

    line = error_line("boom\n  with key-123456789 and more\tlines " + "x" * 500, {"key-123456789"})
    assert line.startswith("boom with *** and more lines x") and "\n" not in line
    assert len(line) == MAX_ERROR_CHARS and line.endswith("…")
    assert error_line(None, set()) == ""


def test_a_webhook_answering_an_error_is_one_warning_without_the_url(caplog):
    import logging

    from flows.notify import post_message

    logger = logging.getLogger("planet.test.notify")
    with webhook_receiver(status=500) as failing:
        url = f"{failing.url}/hook?token={HOOK_TOKEN}"
        with caplog.at_level(logging.WARNING, logger=logger.name):
            assert post_message({"flow": "x"}, url, "PLANET_WEBHOOK_URL", logger) is False
        assert failing.wait_for(1) == [{"flow": "x"}]
    [record] = caplog.records
    assert record.getMessage() == (
        "the webhook from PLANET_WEBHOOK_URL answered HTTP 500 to the failure message"
    )
    with webhook_receiver() as ok:
        assert post_message({"flow": "x"}, ok.url, "PLANET_WEBHOOK_URL", logger) is True


# ----- under a real Prefect API ---------------------------------------------------------------


def _logs(flow_run_id) -> list[str]:
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [f"{log.level} {log.message}" for log in logs]


def _database() -> Path:
    """The test API's SQLite database file."""
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    return Path(PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split("///", 1)[1])


def _run_id(state) -> str:
    return str(state.state_details.flow_run_id)


@pytest.fixture
def receiver():
    with webhook_receiver() as r:
        yield r


@pytest.fixture
def no_webhook(monkeypatch):
    for name in ("PLANET_WEBHOOK_URL", "PLANET_WEBHOOK_SECRET_BLOCK"):
        monkeypatch.delenv(name, raising=False)


def _secret_block(name: str, value) -> None:
    from prefect.blocks.system import Secret

    Secret(value=value).save(name, overwrite=True)


def _delete_block(name: str) -> None:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        block = client.read_block_document_by_name(name, block_type_slug="secret")
        client.delete_block_document(block.id)


def test_fetch_signs_in_with_the_secret_block_and_leaks_the_key_nowhere(
    prefect_api, isolated_kaggle_env, kaggle_server, kaggle_root, kaggle_user, kaggle_key,
    monkeypatch, tmp_path,
):  # fmt: skip
    from prefect.settings import PREFECT_HOME

    from flows.prepare import fetch

    monkeypatch.setenv("PLANET_KAGGLE_SECRET_BLOCK", "team-kaggle")
    name = "train_v2.csv.zip"
    config = PrepareConfig(
        competition=kaggle_root.planet,
        data_dir=str(tmp_path / "data"),
        kaggle_endpoint=kaggle_server.url,
        files=[name],
    )
    failed = fetch(config, return_state=True)
    assert failed.is_failed()
    with pytest.raises(KaggleCredentialsError, match="the Prefect Secret block 'team-kaggle'"):
        failed.result()

    _secret_block("team-kaggle", {"username": kaggle_user, "key": kaggle_key})
    try:
        state = fetch(config, return_state=True)
        records = state.result()
    finally:
        _delete_block("team-kaggle")
    assert records[name]["size"] == len(kaggle_root.files[kaggle_root.planet][name])
    raw = tmp_path / "data" / kaggle_root.planet / records[name]["path"]
    assert raw.read_bytes() == kaggle_root.files[kaggle_root.planet][name]
    logs = "\n".join(_logs(_run_id(state)))
    assert "Kaggle credentials from the Prefect Secret block 'team-kaggle'" in logs, logs

    # The key is nowhere: not in the Prefect database (logs, parameters, artifacts, events,
    # states; the block's value is stored encrypted), results, the data directory.
    db = _database()
    wanted = needles(kaggle_key, kaggle_user)
    for root in (db.parent, PREFECT_HOME.value(), tmp_path / "data"):
        hits, seen = scan_tree(root, wanted)
        assert not hits, hits[:5]
    assert scan_tree(db.parent, wanted)[1].get("sqlite", 0) >= 1


def test_a_failed_stage_posts_one_message_without_secrets(
    prefect_api, receiver, monkeypatch, tmp_path, kaggle_user, kaggle_key
):
    from flows.pipeline import pipeline
    from flows.submit import submit

    monkeypatch.setenv("PLANET_WEBHOOK_URL", f"{receiver.url}/hook?token={HOOK_TOKEN}")
    monkeypatch.setenv("KAGGLE_USERNAME", kaggle_user)
    monkeypatch.setenv("KAGGLE_KEY", kaggle_key)
    data_dir = tmp_path / f"data-{kaggle_key}"  # the error names the path: the key must go
    config = PipelineConfig(competition="planet", data_dir=str(data_dir), stages=["submit"])
    state = pipeline(config, return_state=True)
    assert state.is_failed()
    with pytest.raises(FileNotFoundError, match="run the submission stage first"):
        state.result()
    [message] = receiver.wait_for(1)
    assert receiver.posts[0][0] == f"/hook?token={HOOK_TOKEN}"
    assert {k: message[k] for k in ("flow", "stage", "state", "source")} == {
        "flow": "pipeline",
        "stage": "submit",
        "state": "Failed",
        "source": "hook",
    }
    assert "run the submission stage first" in message["error"] and "***" in message["error"]
    assert message["run_url"].endswith(f"/runs/flow-run/{_run_id(state)}")
    assert message["flow_run"].startswith("pipeline planet") and message["machine"]

    alone = submit(SubmitConfig(competition="planet", data_dir=str(data_dir)), return_state=True)
    assert alone.is_failed()
    messages = receiver.wait_for(2)
    assert len(messages) == 2, messages
    assert (messages[1]["flow"], messages[1]["stage"]) == ("submit", "submit")
    assert messages[1]["run_url"].endswith(_run_id(alone))
    assert kaggle_key not in json.dumps(messages) and HOOK_TOKEN not in json.dumps(messages)
    for line in _logs(_run_id(state)) + _logs(_run_id(alone)):  # (the path is in the traceback)
        assert HOOK_TOKEN not in line and receiver.url not in line


def test_a_stage_inside_a_stage_is_named_by_its_path(
    prefect_api, receiver, isolated_kaggle_env, monkeypatch, tmp_path
):
    from flows.pipeline import pipeline

    monkeypatch.setenv("PLANET_WEBHOOK_URL", f"{receiver.url}/hook")
    monkeypatch.setenv("PLANET_KAGGLE_SECRET_BLOCK", "none")
    config = PipelineConfig(competition="planet", data_dir=str(tmp_path), stages=["prepare"])
    state = pipeline(config, return_state=True)
    with pytest.raises(KaggleCredentialsError):
        state.result()
    [message] = receiver.wait_for(1)
    assert (message["flow"], message["stage"]) == ("pipeline", "prepare/fetch")
    assert message["error"].startswith("Flow run encountered an exception: KaggleCredentialsError")
    assert "Secret block" not in message["error"]  # turned off: not named


def test_a_crashed_flow_posts_too(prefect_api, receiver, monkeypatch):
    from prefect import flow

    from flows.notify import HOOKS

    @flow(name="crashing", **HOOKS)
    def crashing() -> None:
        raise KeyboardInterrupt

    monkeypatch.setenv("PLANET_WEBHOOK_URL", f"{receiver.url}/hook")
    with pytest.raises(KeyboardInterrupt):
        crashing()
    [message] = receiver.wait_for(1)
    assert (message["flow"], message["stage"], message["state"]) == (
        "crashing",
        "crashing",
        "Crashed",
    )


def test_no_webhook_posts_nothing_and_a_secret_block_can_hold_the_url(
    prefect_api, receiver, no_webhook, tmp_path
):
    from flows.submit import submit

    config = SubmitConfig(competition="planet", data_dir=str(tmp_path / "data"))
    state = submit(config, return_state=True)
    assert state.is_failed()
    assert receiver.wait_for(1, timeout=2) == []
    assert not [line for line in _logs(_run_id(state)) if "failure message" in line]

    _secret_block("planet-webhook-url", f"{receiver.url}/from-block?token={HOOK_TOKEN}")
    try:
        state = submit(config, return_state=True)
    finally:
        _delete_block("planet-webhook-url")
    [message] = receiver.wait_for(1)
    assert receiver.posts[0][0] == f"/from-block?token={HOOK_TOKEN}"
    assert message["flow"] == "submit" and message["run_url"].endswith(_run_id(state))


def test_a_webhook_that_is_down_is_one_warning_and_changes_nothing(
    prefect_api, monkeypatch, tmp_path
):
    from flows.submit import submit

    port = free_port()  # nothing listens there
    monkeypatch.setenv("PLANET_WEBHOOK_URL", f"http://127.0.0.1:{port}/hook?token={HOOK_TOKEN}")
    state = submit(SubmitConfig(competition="planet", data_dir=str(tmp_path)), return_state=True)
    assert state.is_failed()
    with pytest.raises(FileNotFoundError, match="run the submission stage first"):
        state.result()
    logs = _logs(_run_id(state))
    warnings = [line for line in logs if "failure message" in line]
    assert len(warnings) == 1, logs
    assert warnings[0].startswith("30 ") and "PLANET_WEBHOOK_URL (ConnectionError)" in warnings[0]
    assert not [line for line in logs if HOOK_TOKEN in line or str(port) in line]


# ----- the automation of deployments/prefect.yaml ---------------------------------------------


def test_prefect_yaml_shows_a_valid_automation_that_prefect_deploy_ignores():
    import yaml
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.events.schemas.automations import AutomationCore, EventTrigger

    from flows.automations import BLOCK_MARK, WEBHOOK_BLOCK, with_block_ids
    from flows.deployments import DEPLOYMENTS, PREFECT_YAML, prefect_automations

    PrefectYamlModel.model_validate(yaml.safe_load(PREFECT_YAML.read_text()))
    [spec] = prefect_automations()
    assert spec["actions"][0]["block_document_id"] == BLOCK_MARK + WEBHOOK_BLOCK
    named = []
    block_id = uuid.uuid4()
    automation = AutomationCore.model_validate(
        with_block_ids(spec, lambda name: named.append(name) or block_id)
    )
    assert named == [WEBHOOK_BLOCK] and automation.actions[0].block_document_id == block_id
    assert isinstance(automation.trigger, EventTrigger)
    assert automation.trigger.expect == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    related = automation.trigger.match_related
    assert {d.name for d in DEPLOYMENTS} == set(related[1].root["prefect.resource.name"])


def test_the_automation_posts_when_a_deployment_run_fails(
    prefect_api, receiver, no_webhook, tmp_path
):
    from prefect import get_client
    from prefect.blocks.webhook import Webhook
    from prefect.flow_engine import run_flow

    from flows.automations import WEBHOOK_BLOCK, create_automation, failure_automation
    from flows.submit import submit

    url = f"{receiver.url}/automation?token={HOOK_TOKEN}"
    automation_id = create_automation(failure_automation(), url=url)
    assert Webhook.load(WEBHOOK_BLOCK).url.get_secret_value() == url
    try:
        with get_client(sync_client=True) as client:
            flow_id = client.create_flow_from_name("submit")
            deployment_id = client.create_deployment(
                flow_id, "submit", entrypoint="flows/submit.py:submit"
            )
            flow_run = client.create_flow_run_from_deployment(deployment_id)
        config = SubmitConfig(competition="planet", data_dir=str(tmp_path))
        state = run_flow(submit, flow_run=flow_run, parameters={"config": config},
                         return_type="state")  # fmt: skip
        assert state.is_failed()
        [message] = receiver.wait_for(1, timeout=120)
    finally:
        with get_client(sync_client=True) as client:
            client.delete_automation(automation_id)
    assert receiver.posts[0][0] == f"/automation?token={HOOK_TOKEN}"
    assert (message["flow"], message["state"], message["source"]) == (
        "submit",
        "Failed",
        "automation",
    )
    assert "run the submission stage first" in message["error"]
    assert message["flow_run"] == flow_run.name
    assert message["run_url"] is None or message["run_url"].endswith(str(flow_run.id))  # no UI here
    # The webhook's URL (its token) is kept encrypted: not in the database's plain rows.
    hits, seen = scan_tree(_database().parent, needles(HOOK_TOKEN))
    assert not hits and seen.get("sqlite", 0) >= 1, hits[:5]
