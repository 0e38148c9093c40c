"""An ensemble's answer from its members' predictions (members: planet.learn.members).

    out of fold   every train image once, from the member that held it out (folds = K); with
                  folds = 1 the 80/20 split's validation images, from every member
    groups        the members of one recipe and seed (its K fold models) are one group: on the
                  test images a group's probabilities are the mean of its fold models'
    combine       `mean`: the mean of the groups' probabilities; `stack`: per class, a logistic
                  regression over the groups' logits fitted on the out-of-fold predictions (the
                  Planet winner's method); `best`: whichever cross-validates better on them, by
                  the decision's honest score (cross-fitted thresholds, or the clipped log loss)

The combination is written as predictions/<ensemble>/<split>/ in the predictions format, so the
thresholds and submission stages read it as they read one model's; `combine.json` beside it says
what was chosen and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from planet.fileio import write_json_atomic
from planet.infer.decision import decision_for
from planet.infer.predict import write_probs
from planet.infer.runs import VALID, scored_splits, valid_truth
from planet.learn.members import Member
from planet.workspace import Workspace

COMBINE_FILE = "combine.json"
STACK_L2 = 1.0  # ridge penalty of the stacker's weights (not its bias): a few features, few rows
STACK_FOLDS = 5  # cross-validation folds of the stacker when the split has none
EPS = 1e-6


def groups(members: Sequence[Member]) -> list[list[Member]]:
    """The members by recipe and seed (a recipe's run name), in order."""
    out: dict[str, list[Member]] = {}
    for m in members:
        out.setdefault(m.recipe.run_name, []).append(m)
    return list(out.values())


def _in_order(order: Sequence[str], names: Sequence[str], probs: np.ndarray) -> np.ndarray:
    pos = {n: i for i, n in enumerate(names)}
    if len(pos) != len(names) or set(pos) != set(order):
        raise ValueError("the members' predictions do not cover the same images once each")
    return probs[[pos[n] for n in order]]


def oof_predictions(
    ws: Workspace, members: Sequence[Member]
) -> tuple[list[str], list[np.ndarray], tuple[str, ...]]:
    """(names in the split's order, one (n, C) array per group, classes): each group's
    validation predictions over its folds, so each image once per group."""
    rank = {n: i for i, n in enumerate(ws.split.read().names)}
    per_group: list[tuple[list[str], np.ndarray]] = []
    classes: tuple[str, ...] = ()
    for group in groups(members):
        names: list[str] = []
        parts = []
        for member in group:
            n, p, classes = ws.predictions(member.run_name, VALID).read()
            names += n
            parts.append(p)
        if len(set(names)) != len(names):
            raise ValueError(f"{group[0].recipe.run_name}: an image is predicted out of fold twice")
        order = sorted(names, key=rank.__getitem__)
        per_group.append((order, _in_order(order, names, np.concatenate(parts))))
    first = per_group[0][0]
    return first, [_in_order(first, n, p) for n, p in per_group], classes


def test_predictions(
    ws: Workspace, members: Sequence[Member], split: str
) -> tuple[list[str], list[np.ndarray], tuple[str, ...]]:
    """(names, one (n, C) array per group: the mean of its fold models', classes)."""
    order: list[str] = []
    out = []
    classes: tuple[str, ...] = ()
    for group in groups(members):
        total = None
        for member in group:
            names, probs, classes = ws.predictions(member.run_name, split).read()
            order = order or names
            aligned = _in_order(order, names, probs).astype(np.float64)
            total = aligned if total is None else total + aligned
        out.append(total / len(group))
    return order, out, classes


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50.0, 50.0)))  # no overflow for confident rows


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p / (1 - p))


def _fit_logistic(x: np.ndarray, y: np.ndarray, l2: float) -> np.ndarray:
    """Weights (features + bias) of an L2-penalised logistic regression, by Newton's method."""
    x1 = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(x1.shape[1])
    w[: x.shape[1]] = 1.0 / x.shape[1]  # start at the mean of the logits
    penalty = np.full(x1.shape[1], l2)
    penalty[-1] = 0.0
    for _ in range(50):
        p = _sigmoid(x1 @ w)
        grad = x1.T @ (p - y) + penalty * w
        hess = (x1.T * (p * (1 - p))) @ x1 + np.diag(penalty) + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return w


class Stacker:
    """Per class, a logistic regression over the groups' logits for that class."""

    def __init__(self, l2: float = STACK_L2) -> None:
        self.l2 = l2
        self.weights: np.ndarray | None = None  # (C, G + 1)

    def fit(self, groups_: Sequence[np.ndarray], targets: np.ndarray) -> Stacker:
        x = _logit(np.stack(groups_, axis=2))  # (n, C, G)
        self.weights = np.stack(
            [_fit_logistic(x[:, c, :], targets[:, c], self.l2) for c in range(x.shape[1])]
        )
        return self

    def predict(self, groups_: Sequence[np.ndarray]) -> np.ndarray:
        assert self.weights is not None, "fit first"
        x = _logit(np.stack(groups_, axis=2))
        z = np.einsum("ncg,cg->nc", x, self.weights[:, :-1]) + self.weights[:, -1]
        return _sigmoid(z)


def stacked_out_of_fold(
    groups_: Sequence[np.ndarray], targets: np.ndarray, fold_ids: np.ndarray
) -> np.ndarray:
    """The stacker's own out-of-fold predictions: each row from a stacker fitted without its
    fold (so the stack is scored on rows it did not see)."""
    out = np.empty_like(groups_[0], dtype=np.float64)
    for k in np.unique(fold_ids):
        held = fold_ids == k
        stacker = Stacker().fit([g[~held] for g in groups_], targets[~held])
        out[held] = stacker.predict([g[held] for g in groups_])
    return out


def _fold_ids(ws: Workspace, names: Sequence[str]) -> np.ndarray:
    """The split's fold of each name, or a seeded partition into STACK_FOLDS when it has none."""
    split = ws.split.read()
    if split.n_folds:
        fold = dict(zip(split.names, split.fold, strict=True))
        return np.array([fold[n] for n in names])
    return np.random.RandomState(0).permutation(len(names)) % STACK_FOLDS


def combine(
    ws: Workspace, members: Sequence[Member], name: str, how: str, size: int
) -> dict[str, Any]:
    """Write the ensemble `name`'s predictions of every split (see the module doc) and
    combine.json; its report (chosen method, honest scores of each, members)."""
    if how not in ("mean", "stack", "best"):
        raise ValueError(f"combine {how!r}: use mean, stack or best")
    decision = decision_for(ws.competition)
    names, oof_groups, classes = oof_predictions(ws, members)
    truth = valid_truth(ws, names, size)
    targets = decision.targets(truth, len(classes))
    candidates = {"mean": np.mean(oof_groups, axis=0)}
    if how != "mean":
        stacked = stacked_out_of_fold(oof_groups, targets, _fold_ids(ws, names))
        candidates["stack"] = decision.normalise(stacked)
    scores = {k: decision.honest(decision.fit(v, truth, classes)) for k, v in candidates.items()}
    chosen = how
    if how == "best":
        chosen = "stack" if decision.better(scores["stack"], scores["mean"]) else "mean"
    settings = {"members": [m.run_name for m in members], "combine": how}
    task = ws.competition.task
    write_probs(
        ws.predictions(name, VALID).folder,
        names,
        candidates[chosen],
        classes=classes,
        task=task,
        settings=settings,
    )
    stacker = Stacker().fit(oof_groups, targets) if chosen == "stack" else None
    for split in scored_splits(ws):
        test_names, test_groups, _ = test_predictions(ws, members, split)
        probs = (
            np.mean(test_groups, axis=0)
            if stacker is None
            else decision.normalise(stacker.predict(test_groups))
        )
        folder = ws.predictions(name, split).folder
        write_probs(folder, test_names, probs, classes=classes, task=task, settings=settings)
    report = {
        "ensemble": name,
        "asked": how,
        "chosen": chosen,
        "honest_scores": scores,
        "members": [m.describe() for m in members],
        "oof_images": len(names),
    }
    write_json_atomic(ws.predictions_dir / name / COMBINE_FILE, report)
    return report
