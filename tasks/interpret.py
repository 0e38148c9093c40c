"""The Prefect task of a run's error analysis (planet.infer.interpretation): its files under
predictions/<run>/, and in the UI the per-class table as a table artifact and the pictures as
markdown artifacts.

Cache key: the validation probabilities', fitted decision's and sized shards' hashes (never
paths); Cached only while the manifest and its files are intact.
"""

from __future__ import annotations

from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.logging import get_run_logger

from planet.infer.interpretation import FORMAT_VERSION, write_interpretation
from planet.report.show import png_data_uri
from planet.workspace import Workspace
from tasks.caching import key_from, stage_task
from tasks.progress import artifact_key

CODE_VERSION = "1"
PICTURES = {
    "top_losses_png": "Top losses",
    "results_png": "Predicted vs true (show_results)",
    "confusion_png": "Confusion matrix",
}


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}


@stage_task(
    name="interpret",
    cache_key_fn=key_from(
        "interpret",
        f"{FORMAT_VERSION}.{CODE_VERSION}",
        ["ws", "run", "valid_sha256", "thresholds_sha256", "source_sha256", "size"],
    ),
    done=lambda ws, run, **inputs: ws.interpretation(run).complete(inputs) is not None,
)
def error_analysis(
    ws: Workspace,
    run: str,
    valid_sha256: str,
    thresholds_sha256: str,
    source_sha256: str,
    size: int,
) -> dict[str, Any]:
    """Top losses (or the most confident mistakes), the per-class counts and metrics at the
    fitted decision, show_results and (single-label) the confusion matrix, of the validation
    predictions; written to predictions/<run>/ and shown in the UI."""
    result = write_interpretation(ws, run, size)
    create_table_artifact(
        key=artifact_key(ws.slug, run, "per-tag"),
        table=[_rounded(row) for row in result["table"]],
        description="validation, per class at the fitted decision: TP, FP, FN, TN, precision, "
        "recall, F2",
    )
    for role, title in PICTURES.items():
        if role in result["files"]:
            path = ws.path(result["files"][role])
            create_markdown_artifact(
                key=artifact_key(ws.slug, run, role.removesuffix("_png").replace("_", "-")),
                markdown=f"# {title}\n\n![{title}]({png_data_uri(path.read_bytes())})\n\n`{path}`\n",
                description=f"{title.lower()}, validation images",
            )
    worst = result["top_losses"][:3]
    get_run_logger().info(
        "error analysis in %s; highest losses: %s",
        ws.path(result["manifest"]).parent,
        ", ".join(f"{r['name']} ({r['loss']:.2f})" for r in worst) or "none",
    )
    return result
