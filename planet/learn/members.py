"""An ensemble's members: folds x recipes x seeds, each its own training run.

    folds = 1    one member per recipe and seed, trained on the 80/20 split (today's model)
    folds = K    K members per recipe and seed: member k trains on every labelled train image
                 outside fold k (the split's fold assignment) and is validated on fold k, so
                 the K members' validation predictions are out-of-fold (OOF) predictions of
                 every train image, exactly once each

A member's run folder is `models/<recipe run name>` (folds = 1: the same folder as a single
model) or `models/<recipe run name>-fold<k>of<K>`; a recipe's seed is part of its run name. The
ensemble's own name (`ensemble_name`) names the folder of its combined predictions; a single
member's ensemble is that member.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from planet.fileio import sha256_json
from planet.learn.recipe import Recipe


@dataclass(frozen=True)
class Fold:
    """Which fold a member holds out: `index` (from 0) of `count`."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count or self.count < 2:
            raise ValueError(f"fold {self.index + 1} of {self.count}: folds are 1..K with K >= 2")

    @property
    def label(self) -> str:
        return f"fold{self.index + 1}of{self.count}"


@dataclass(frozen=True)
class Member:
    """One training run of an ensemble."""

    recipe: Recipe
    fold: Fold | None = None

    @property
    def run_name(self) -> str:
        """The member's models/ and predictions/ folder name."""
        return run_name(self.recipe, self.fold)

    def describe(self) -> dict[str, object]:
        return {
            "run": self.run_name,
            "recipe": self.recipe.name,
            "seed": self.recipe.seed,
            "fold": self.fold.index + 1 if self.fold else None,
        }


def run_name(recipe: Recipe, fold: Fold | None) -> str:
    return recipe.run_name if fold is None else f"{recipe.run_name}-{fold.label}"


def short_name(recipe: Recipe, fold: Fold | None) -> str:
    """The member's name for people and artifact keys: the recipe's name (and fold)."""
    return recipe.name if fold is None else f"{recipe.name}-{fold.label}"


def members(recipes: Sequence[Recipe], seeds: Sequence[int] | None, folds: int) -> list[Member]:
    """folds x recipes x seeds, recipe by recipe, seed by seed, fold by fold (seeds None: each
    recipe's own seed)."""
    if folds < 1:
        raise ValueError(f"folds must be >= 1, got {folds}")
    out: list[Member] = []
    for recipe in recipes:
        for seed in [recipe.seed] if not seeds else list(seeds):
            seeded = recipe if seed == recipe.seed else recipe.model_copy(update={"seed": seed})
            if folds == 1:
                out.append(Member(seeded))
            else:
                out.extend(Member(seeded, Fold(k, folds)) for k in range(folds))
    names = [m.run_name for m in out]
    if len(set(names)) != len(names):
        raise ValueError(f"two ensemble members would share a run folder: {names}")
    return out


def ensemble_name(members_: Sequence[Member]) -> str:
    """The folder name of the combined predictions (one member: its own run name)."""
    if len(members_) == 1:
        return members_[0].run_name
    first = members_[0]
    return f"{first.recipe.name}-x{len(members_)}-{sha256_json([m.run_name for m in members_])[:8]}"
