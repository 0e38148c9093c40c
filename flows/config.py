"""Typed flow parameters: the target plus one options model per stage, composed, not copied.

    Target          which competition, where its data lives, which Kaggle serves it
    sections        prepare, resize, ensemble, compute, train, predict, submit (flows/options.py)

A stage flow takes the target with its own sections (`ResizeConfig` = target + `resize`); the
pipeline takes the target with every section and hands each stage flow its config built from
the same objects (`PipelineConfig.for_stage`), so every setting is declared once. The Prefect UI
renders the sections as nested forms, and `planet run`'s flags are generated from the same
models (flows/cli.py: one flag per field, named after it). Settings written flat, as earlier
versions took them (`{"competition": ..., "shard_size": 500, "n_folds": 5}`), are still accepted
and put into their sections.

Credentials are never parameters: the Kaggle key is read from the environment, kaggle.json or a
Prefect Secret block by the task that needs it (see tasks/credentials.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

from cyclopts import Group, Parameter
from pydantic import BaseModel, Field, field_validator, model_validator

from flows.options import (
    ComputeOptions,
    EnsembleOptions,
    Options,
    PredictOptions,
    PrepareOptions,
    ResizeOptions,
    SubmitOptions,
    TrainOptions,
)
from planet.competitions import Competition, resolve
from planet.learn.members import Fold, Member, ensemble_name, members
from planet.learn.recipe import Recipe, load_recipe, named_recipe
from planet.workspace import Workspace

DEFAULT_SIZES = (64, 128, 256)  # what the resize stage makes when neither recipe nor sizes say


SECTION_ORDER = ("prepare", "resize", "ensemble", "compute", "train", "predict", "submit")


def _section(model: type[Options], name: str) -> Any:
    """A nested options field: a form in the UI, its fields as flat flags on the command line
    (grouped under the section's name, in pipeline order)."""
    group = Group(f"{name} options", sort_key=SECTION_ORDER.index(name) + 1)
    return Annotated[model, Parameter(name="*", group=group)]


class Target(BaseModel):
    """What every stage is told: the competition, the data directory, the Kaggle to talk to."""

    competition: str = Field(
        "planet-understanding-the-amazon-from-space",
        description="Kaggle competition slug (or alias: planet, dogs-vs-cats).",
    )
    data_dir: str = Field("data", description="Data directory; one folder per competition.")
    kaggle_endpoint: str | None = Field(
        None,
        description="Base URL of a Kaggle-compatible server (the local one); empty = kaggle.com.",
    )

    @field_validator("competition")
    @classmethod
    def _known_competition(cls, value: str) -> str:
        return resolve(value).slug

    @model_validator(mode="before")
    @classmethod
    def _nest_flat_settings(cls, data: Any) -> Any:
        """Settings given flat (the earlier form) go into the section that has them."""
        if not isinstance(data, dict):
            return data
        sections = {
            name: field.annotation
            for name, field in cls.model_fields.items()
            if isinstance(field.annotation, type) and issubclass(field.annotation, Options)
        }
        out = dict(data)
        for key, value in data.items():
            is_section_value = key in sections and isinstance(value, dict | Options)
            if (key in cls.model_fields and key not in sections) or is_section_value:
                continue
            for name, model in sections.items():
                if key in model.accepted_names():
                    nested = out.get(name)
                    if isinstance(nested, Options):
                        nested = nested.model_dump(exclude_unset=True)
                    elif not isinstance(nested, dict):  # absent, or the flat `submit: true`
                        nested = {}
                    out[name] = {**nested, key: value}
                    if key != name:
                        out.pop(key, None)
                    break
        return out

    @property
    def spec(self) -> Competition:
        return resolve(self.competition)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    @property
    def workspace(self) -> Workspace:
        """Every dataset of this competition in this data directory (the catalog)."""
        return Workspace.of(self.data_dir, self.spec)


class RecipeConfig(Target):
    """The target plus the recipe whose model is meant (by default the competition's own)."""

    recipe: Annotated[Recipe | None, Parameter(n_tokens=1, accepts_keys=False)] = Field(
        None,
        description="Backbone and training stages: a built-in name (lesson3, cpu-demo, "
        "dogs-vgg16), a recipe .json/.yaml file, or the recipe itself; empty = the "
        "competition's default.",
    )

    @field_validator("recipe", mode="before")
    @classmethod
    def _recipe_by_name_or_file(cls, value: Any) -> Any:
        return load_recipe(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _default_recipe(self) -> RecipeConfig:
        if self.recipe is None:
            self.recipe = named_recipe(self.spec.default_recipe)
        return self


class EnsembleConfig(RecipeConfig):
    """A config whose stage works on the ensemble's members (the recipe's alone by default)."""

    ensemble: _section(EnsembleOptions, "ensemble") = EnsembleOptions()

    def members(self) -> list[Member]:
        """folds x recipes x seeds (planet.learn.members), `recipe` first."""
        options = self.ensemble
        recipes = [self.recipe, *(options.recipes or [])]
        return members(recipes, options.seeds, options.folds)

    @property
    def run_name(self) -> str:
        """The folder name of the answer: the ensemble's (one member: that member's run)."""
        return ensemble_name(self.members())


class PrepareConfig(Target):
    """The prepare stage (fetch, then extract)."""

    prepare: _section(PrepareOptions, "prepare") = PrepareOptions()

    @model_validator(mode="after")
    def _known_files(self) -> PrepareConfig:
        if self.prepare.files:
            known = {f.name for f in self.spec.files}
            unknown = [f for f in self.prepare.files if f not in known]
            if unknown:
                raise ValueError(
                    f"files {unknown} are not files of {self.competition}; "
                    f"choose from {sorted(known)}"
                )
        return self

    def selected_files(self) -> list[str]:
        files = self.prepare.files
        return list(files) if files else [f.name for f in self.spec.files]


class ResizeConfig(Target):
    """The resize stage: the recipe, when given, adds the sizes it trains at; the ensemble's
    folds are assigned in the split."""

    recipe: Annotated[Recipe | None, Parameter(parse=False)] = Field(
        None, description="The recipe whose sizes to make (besides `sizes`)."
    )
    resize: _section(ResizeOptions, "resize") = ResizeOptions()
    ensemble: _section(EnsembleOptions, "ensemble") = EnsembleOptions()

    def all_sizes(self) -> list[int]:
        """The sizes of the recipe(s) plus `resize.sizes` (64, 128 and 256 when none say)."""
        recipes = [r for r in [self.recipe, *(self.ensemble.recipes or [])] if r is not None]
        sizes = set(self.resize.sizes or []).union(*(r.sizes for r in recipes))
        return sorted(sizes or DEFAULT_SIZES)

    def sizes_note(self) -> str:
        """Which sizes the resize stage makes and where each comes from (`resize.sizes` adds
        to the recipes' sizes, which a run alone at `--sizes 64` may not expect)."""
        recipes = [r for r in [self.recipe, *(self.ensemble.recipes or [])] if r is not None]
        asked = set(self.resize.sizes or [])
        parts = [f"{_px(sorted(asked))} from the sizes setting"] if asked else []
        for recipe in recipes:
            extra = sorted(set(recipe.sizes) - asked)
            if extra:
                parts.append(f"{_px(extra)} that recipe {recipe.name} trains at")
            asked |= set(recipe.sizes)
        if not parts:
            parts.append(f"{_px(list(DEFAULT_SIZES))} by default (no sizes setting, no recipe)")
        note = f"making {_px(self.all_sizes())}: " + "; ".join(parts)
        if self.resize.sizes and len(parts) > 1:
            note += " (--sizes adds to the recipe's sizes, it does not replace them)"
        return note

    @property
    def split_folds(self) -> int | None:
        """The folds the split assigns (None for a single model on the 80/20 split)."""
        return self.ensemble.folds if self.ensemble.folds > 1 else None


def _px(sizes: list[int]) -> str:
    return ", ".join(map(str, sizes)) + " px"


class TrainConfig(EnsembleConfig):
    """The train stage: one member (the recipe, holding out `fold` of the ensemble's folds),
    and where and how it trains."""

    fold: int | None = Field(
        None,
        ge=1,
        description="The fold this training run holds out (1..folds); empty = the 80/20 split.",
    )
    compute: _section(ComputeOptions, "compute") = ComputeOptions()
    train: _section(TrainOptions, "train") = TrainOptions()

    @model_validator(mode="after")
    def _fold_of_the_folds(self) -> TrainConfig:
        folds = self.ensemble.folds
        if self.fold is not None and not (folds > 1 and self.fold <= folds):
            raise ValueError(f"fold {self.fold} asked for, but folds is {folds}")
        if self.fold is None and folds > 1:
            raise ValueError(f"folds is {folds}: name the fold to hold out (1..{folds})")
        return self

    @property
    def member_label(self) -> str:
        """The run's name in the UI: the recipe, and the fold it holds out."""
        return (
            f"{self.recipe.name} fold {self.fold}/{self.ensemble.folds}"
            if self.fold
            else str(self.recipe.name)
        )  # type: ignore[union-attr]

    @property
    def member(self) -> Member:
        """The one member this run trains."""
        fold = Fold(self.fold - 1, self.ensemble.folds) if self.fold else None
        return Member(self.recipe, fold)  # type: ignore[arg-type]

    def for_member(self, member: Member) -> TrainConfig:
        """This config for another member (its recipe and fold)."""
        fold = member.fold.index + 1 if member.fold else None
        return self.model_copy(update={"recipe": member.recipe, "fold": fold})


class PredictConfig(EnsembleConfig):
    """The predict, thresholds and submission stages: which models (the ensemble's members),
    where, and how (TTA)."""

    compute: _section(ComputeOptions, "compute") = ComputeOptions()
    predict: _section(PredictOptions, "predict") = PredictOptions()


class SubmitConfig(EnsembleConfig):
    """The submit stage: the ensemble's submission file, submitted only when asked."""

    submit: _section(SubmitOptions, "submit") = SubmitOptions()


PipelineStage = Literal[
    "prepare", "resize", "train", "predict", "thresholds", "submission", "submit"
]
PIPELINE_STAGES: tuple[str, ...] = get_args(PipelineStage)
StageConfig = TypeVar("StageConfig", bound=Target)


class PipelineConfig(EnsembleConfig):
    """Everything the pipeline needs, in one form; `stages` picks a subset to run."""

    stages: list[PipelineStage] = Field(
        default_factory=lambda: list(PIPELINE_STAGES),
        description="Stages to run (in pipeline order); the others must have run before.",
    )
    prepare: _section(PrepareOptions, "prepare") = PrepareOptions()
    resize: _section(ResizeOptions, "resize") = ResizeOptions()
    ensemble: _section(EnsembleOptions, "ensemble") = EnsembleOptions()
    compute: _section(ComputeOptions, "compute") = ComputeOptions()
    train: _section(TrainOptions, "train") = TrainOptions()
    predict: _section(PredictOptions, "predict") = PredictOptions()
    submit: _section(SubmitOptions, "submit") = SubmitOptions()

    @field_validator("stages")
    @classmethod
    def _ordered(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError(f"stages must name at least one of {list(PIPELINE_STAGES)}")
        return [s for s in PIPELINE_STAGES if s in value]

    @model_validator(mode="after")
    def _stage_configs_valid(self) -> PipelineConfig:
        for cls in STAGE_CONFIGS:  # a setting one stage rejects fails here, before any stage runs
            self.for_stage(cls)
        return self

    def for_stage(self, cls: type[StageConfig]) -> StageConfig:
        """The config of a stage flow: this target, recipe and sections (the same objects); a
        training run's is the first member's (`TrainConfig.for_member` gives the others)."""
        fields = {
            name: getattr(self, name)
            for name in cls.model_fields
            if name in type(self).model_fields
        }
        if cls is TrainConfig:
            first = self.members()[0]
            fields["fold"] = first.fold.index + 1 if first.fold else None
        return cls.model_validate(fields)


STAGE_CONFIGS: tuple[type[Target], ...] = (
    PrepareConfig,
    ResizeConfig,
    TrainConfig,
    PredictConfig,
    SubmitConfig,
)
