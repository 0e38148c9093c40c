"""Prefect task over planet.infer.ensemble: the members' predictions combined into the
ensemble's (out-of-fold and test), cached on the members' predictions' content."""

from __future__ import annotations

from typing import Any

from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from planet.infer.ensemble import combine
from planet.infer.runs import prediction_splits
from planet.learn.members import Member
from planet.workspace import Workspace
from tasks.caching import key_from, stage_task
from tasks.progress import artifact_key

CODE_VERSION = "1"


def _combined(ws: Workspace, name: str, members: list[Member], how: str, **_: Any) -> bool:
    settings = {"members": [m.run_name for m in members], "combine": how}
    return all(ws.predictions(name, split).complete(settings) for split in prediction_splits(ws))


@stage_task(
    name="combine members",
    task_run_name="combine {name} ({how})",
    cache_key_fn=key_from("combine", CODE_VERSION, ["ws", "name", "member_sha256", "how"]),
    done=_combined,
)
def combine_members(
    ws: Workspace,
    name: str,
    members: list[Member],
    member_sha256: list[str],
    how: str,
    size: int,
) -> dict[str, Any]:
    """The ensemble's out-of-fold and test probabilities from its members' (mean or stack)."""
    report = combine(ws, members, name, how, size)
    scores = report["honest_scores"]
    get_run_logger().info(
        "%d members combined by %s (asked: %s; honest out-of-fold scores: %s)",
        len(members),
        report["chosen"],
        how,
        ", ".join(f"{k} {v:.4f}" for k, v in scores.items()),
    )
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in scores.items())
    create_markdown_artifact(
        key=artifact_key(ws.slug, name, "combine"),
        markdown=f"# Combining {len(members)} members\n\n| method | honest out-of-fold score |"
        f"\n|---|---:|\n{rows}\n\nChosen: **{report['chosen']}** "
        f"({report['oof_images']:,} out-of-fold images)\n",
        description=f"how the members of {name} were combined",
    )
    return report
