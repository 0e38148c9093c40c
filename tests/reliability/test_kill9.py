"""kill -9 inside every stage, then rerun: the pipeline completes, finished units of work
(shards, epochs, prediction parts) are not redone, the outputs equal an uninterrupted run's,
and Kaggle sees exactly one submission.

Each case copies the reference run's data directory without the outputs of its stage and the
later ones, runs the pipeline from that stage in a child process that SIGKILLs itself at a
random point inside the stage (a `tests/fault_hooks.py` point drawn with a seeded RNG: set
PLANET_RELIABILITY_SEED to draw others), then runs the same stages again.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from planet.fileio import read_json
from planet.store.shards import shard_name
from tests.reliability.harness import (
    SHARD_SIZE,
    SIZE,
    SLUG,
    STAGES,
    SYNTH,
    Run,
    Services,
    copy_before,
    outputs,
    run_pipeline,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]
SEED = int(os.environ.get("PLANET_RELIABILITY_SEED", "20261123"))


def _fault(kind: str, reference: Run, rng: random.Random) -> str:
    """A random SIGKILL (`point=action`) inside the stage doing `kind` work, after at least one
    unit of it."""
    train_shards = -(-SYNTH["train"] // SHARD_SIZE)
    if kind == "extract":
        return f"extract-train-shard-{rng.randint(1, train_shards - 1)}=kill"
    if kind == "resize":  # in a Dask worker: SIGKILL the run's whole process group from there
        shard = Path(shard_name(rng.randint(0, train_shards - 3))).stem
        return f"resize-{SIZE}-train-{shard}=killgroup"
    if kind == "train":
        record = read_json(next(reference.data_dir.glob(f"{SLUG}/models/*/stage-1.json")))
        per_epoch = len(record["history"][0]["batch_losses"])
        epochs = len(record["history"])
        # a batch inside epoch 2 or later: epoch 1's checkpoint exists when the kill comes
        return f"train-batch-{rng.randint(per_epoch + 1, per_epoch * epochs)}=kill"
    if kind == "predict":
        return f"predict-part-{rng.randint(2, 3)}=kill"
    return "submit-accepted=kill"


# (case, the pipeline stage it starts at, the kind of work units it kills inside)
CASES = [
    ("extract", "prepare", "extract"),
    ("resize", "resize", "resize"),
    ("train-mid-epoch", "train", "train"),
    ("predict", "predict", "predict"),
    ("submit", "submit", "submit"),
]


@pytest.mark.parametrize(("case", "stage", "kind"), CASES, ids=[c[0] for c in CASES])
def test_kill_9_inside_a_stage_then_rerun(
    case: str,
    stage: str,
    kind: str,
    services: Services,
    reference: Run,
    record_property: Callable[[str, object], None],
) -> None:
    rng = random.Random(f"{SEED}-{case}")
    point = _fault(kind, reference, rng)
    data = copy_before(reference.data_dir, services.root / case / "data", stage)
    stages = STAGES[STAGES.index(stage) :]
    before = services.submissions()

    killed = run_pipeline(services, f"{case}-killed", data, stages, fault=point)
    assert killed.returncode == -9, f"expected SIGKILL at {point}:\n{killed.tail()}"
    rerun = run_pipeline(services, f"{case}-rerun", data, stages)
    assert rerun.returncode == 0, rerun.tail()

    done_before, done_after = killed.units(kind), rerun.units(kind)
    record_property(
        "detail",
        f"SIGKILL at {point} after {len(done_before)}/{len(reference.units(kind))} {kind} "
        f"units; the rerun did {len(done_after)} ({killed.seconds:.0f} s + {rerun.seconds:.0f} s)",
    )
    assert done_before, f"the kill at {point} came before any {kind} work was finished"
    redone = set(done_before) & set(done_after)
    assert not redone, f"finished before the kill and done again: {sorted(redone)}"
    assert sorted(done_before + done_after) == sorted(reference.units(kind)), (
        done_before,
        done_after,
    )
    assert services.submissions() == before + 1, "exactly one new Kaggle submission"
    assert outputs(data) == outputs(reference.data_dir)
    assert rerun.summary is not None and reference.summary is not None
    assert rerun.summary["score"] == reference.summary["score"]
