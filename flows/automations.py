"""The server-side twin of flows/notify.py: a Prefect automation that calls a Webhook block when
a deployment run of a pipeline flow fails or crashes, even when its process died (a killed
worker, a lost machine) and no hook could run.

deployments/prefect.yaml shows it under `automations:` (`prefect deploy` ignores that key).
Its action names the Webhook block as `webhook-block:<name>`, because Prefect wants the block's
id there; `python -m flows.automations` fills the id in and creates the automation (replacing
one of the same name), after saving PLANET_WEBHOOK_URL as that Webhook block when it is set:

    PLANET_WEBHOOK_URL=https://hooks.example.com/T0KEN python -m flows.automations

It fires once per failed deployment run (a pipeline run, a train member on a work pool), not for
the stage flows run inside it, and posts the same fields as the hooks, with "source":
"automation". Use the hooks, the automation, or both (then each failure is posted twice).
"""

from __future__ import annotations

import copy
import os
import sys
from typing import Any
from uuid import UUID

WEBHOOK_BLOCK = "planet-failure-webhook"
BLOCK_MARK = "webhook-block:"
NAME = "planet-pipeline failure webhook"
FLOWS = (
    "pipeline",
    "prepare",
    "fetch",
    "extract",
    "resize",
    "train",
    "predict",
    "thresholds",
    "submission",
    "submit",
)
PAYLOAD = (
    '{"flow": {{ flow.name | tojson }}, "stage": {{ flow.name | tojson }}, '
    '"state": {{ flow_run.state.name | tojson }}, '
    '"error": {{ (flow_run.state.message or "") | truncate(300) | tojson }}, '
    '"flow_run": {{ flow_run.name | tojson }}, "run_url": {{ flow_run | ui_url | tojson }}, '
    '"machine": {{ (flow_run.labels or {}).get("prefect.worker.name", "") | tojson }}, '
    '"source": "automation"}'
)


def failure_automation(
    deployments: tuple[str, ...] = FLOWS, webhook_block: str = WEBHOOK_BLOCK
) -> dict[str, Any]:
    """The automation as prefect.yaml shows it (the block named, not yet its id)."""
    return {
        "name": NAME,
        "description": "Posts {flow, stage, state, error, flow_run, run_url} to the Webhook "
        f"block {webhook_block!r} when a deployment run of a planet-pipeline flow fails or "
        "crashes. Created by `python -m flows.automations`.",
        "enabled": True,
        "trigger": {
            "type": "event",
            "posture": "Reactive",
            "match": {"prefect.resource.id": "prefect.flow-run.*"},
            "match_related": [
                {"prefect.resource.role": "flow", "prefect.resource.name": list(FLOWS)},
                {"prefect.resource.role": "deployment", "prefect.resource.name": list(deployments)},
            ],
            "expect": ["prefect.flow-run.Failed", "prefect.flow-run.Crashed"],
            "for_each": ["prefect.resource.id"],
            "threshold": 1,
            "within": 0,
        },
        "actions": [
            {
                "type": "call-webhook",
                "block_document_id": BLOCK_MARK + webhook_block,
                "payload": PAYLOAD,
            }
        ],
    }


def with_block_ids(spec: dict[str, Any], block_id: Any) -> dict[str, Any]:
    """`spec` with each `webhook-block:<name>` replaced by `block_id(name)` (a UUID)."""
    out = copy.deepcopy(spec)
    for action in out["actions"]:
        ref = action.get("block_document_id")
        if isinstance(ref, str) and ref.startswith(BLOCK_MARK):
            action["block_document_id"] = str(block_id(ref.removeprefix(BLOCK_MARK)))
    return out


def _webhook_block_id(name: str, url: str | None) -> UUID:
    from prefect.blocks.webhook import Webhook

    if url:
        Webhook(url=url, headers={"Content-Type": "application/json"}).save(
            name, overwrite=True, _sync=True
        )
    try:
        block = Webhook.load(name, _sync=True)
    except ValueError:
        raise SystemExit(
            f"no Webhook block {name!r}: set PLANET_WEBHOOK_URL (it is saved as that block) or "
            "create it in the Prefect UI (Blocks > Webhook)"
        ) from None
    return block._block_document_id


def create_automation(spec: dict[str, Any] | None = None, url: str | None = None) -> UUID:
    """Create the automation (replacing one of the same name); returns its id. `url`: saved
    as the Webhook block first."""
    from prefect import get_client
    from prefect.events.schemas.automations import AutomationCore

    spec = spec or failure_automation()
    automation = AutomationCore.model_validate(
        with_block_ids(spec, lambda name: _webhook_block_id(name, url))
    )
    with get_client(sync_client=True) as client:
        for old in client.read_automations_by_name(automation.name):
            client.delete_automation(old.id)
        return client.create_automation(automation)


def main() -> None:
    from flows.deployments import PREFECT_YAML, prefect_automations

    specs = prefect_automations(PREFECT_YAML)
    url = os.environ.get("PLANET_WEBHOOK_URL", "").strip() or None
    for spec in specs:
        automation_id = create_automation(spec, url)
        print(f"automation {spec['name']!r}: {automation_id}", file=sys.stderr)


if __name__ == "__main__":
    main()
