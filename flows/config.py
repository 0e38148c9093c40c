"""Typed flow parameters: the target plus one options model per stage, composed, not copied.

    Target          which competition, where its data lives, which Kaggle serves it
    PrepareOptions  ResizeOptions  ComputeOptions  TrainOptions  PredictOptions  SubmitOptions

A stage flow takes the target with its own sections (`ResizeConfig` = target + `resize`); the
pipeline takes the target with every section and hands each stage flow its config built from
the same objects (`PipelineConfig.for_stage`), so every setting is declared once. The Prefect UI
renders the sections as nested forms, and `planet run`'s flags are generated from the same
models (flows/cli.py: one flag per field, named after it). Settings written flat, as earlier
versions took them (`{"competition": ..., "shard_size": 500, "n_folds": 5}`), are still accepted
and put into their sections.

Credentials are never parameters: the Kaggle key is read from the environment or kaggle.json by
the task that needs it (see planet.kaggle.load_credentials).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

from cyclopts import Group, Parameter
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from planet.competitions import Competition, resolve
from planet.infer.predict import PART_SIZE
from planet.learn.recipe import Recipe, load_recipe, named_recipe
from planet.workspace import Workspace

DEFAULT_SIZES = (64, 128, 256)  # what the resize stage makes when neither recipe nor sizes say


class Options(BaseModel):
    """One stage's settings: a section of the pipeline's parameters."""

    model_config = ConfigDict(populate_by_name=True)

    @classmethod
    def accepted_names(cls) -> set[str]:
        """Field names plus their older names (validation aliases)."""
        names = set(cls.model_fields)
        for field in cls.model_fields.values():
            if isinstance(field.validation_alias, AliasChoices):
                names |= {c for c in field.validation_alias.choices if isinstance(c, str)}
        return names


class PrepareOptions(Options):
    """What to download and how to extract it."""

    files: list[str] | None = Field(
        None, description="Kaggle file names to fetch and extract; empty = all the pipeline uses."
    )
    shard_size: int = Field(2000, ge=16, le=100_000, description="Images per parquet shard.")
    write_files: bool = Field(
        False, description="Also write the plain folder layout images/<split>/<name>.jpg."
    )


class ResizeOptions(Options):
    """Which sizes to pre-resize to, how, where the Dask work runs, and the validation split."""

    sizes: list[int] | None = Field(
        None,
        description="Sizes in pixels to pre-resize to besides the recipe's own "
        "(run alone without a recipe: 64, 128 and 256).",
    )
    method: Literal["squish", "crop"] = Field(
        "squish", description="Non-square images: squish to the square, or centre-crop."
    )
    dask_address: str | None = Field(
        None,
        description="Scheduler of an existing Dask cluster (tcp://host:8786); "
        "empty = a LocalCluster sized to this machine.",
    )
    valid_pct: float = Field(0.2, ge=0.0, lt=1.0, description="Validation share (fast.ai 0.2).")
    split_seed: int = Field(42, description="Seed of the validation split (fast.ai 42).")
    folds: int | None = Field(
        None,
        ge=2,
        le=20,
        validation_alias=AliasChoices("folds", "n_folds"),
        description="Also assign every train image to one of k folds (k-fold ensembles).",
    )

    @field_validator("sizes")
    @classmethod
    def _valid_sizes(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return None
        bad = [s for s in value if not 8 <= s <= 1024]
        if bad or not value:
            raise ValueError(f"sizes must be 8..1024 pixels, got {value}")
        return sorted(set(value))


class ComputeOptions(Options):
    """Where models train and predict."""

    device: str = Field("auto", description="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    workers: int = Field(2, ge=1, le=32, description="Loader threads preparing batches.")

    @field_validator("device")
    @classmethod
    def _valid_device(cls, value: str) -> str:
        if value != "auto" and not re.fullmatch(r"(cpu|cuda|mps)(:\d+)?", value):
            raise ValueError(f"device {value!r}: use auto, cpu, cuda or cuda:<n>")
        return value


class TrainOptions(Options):
    """How the recipe's stages train (the recipe itself is a parameter of its own)."""

    compile: bool = Field(
        False,
        validation_alias=AliasChoices("compile", "compile_model"),
        description="torch.compile the model (CUDA; slow start).",
    )


class PredictOptions(Options):
    """How the trained model predicts (TTA)."""

    tta: bool = Field(True, description="Average the 8 symmetries of the square.")
    beta: float | None = Field(
        None, ge=0.0, le=1.0, description="fast.ai's TTA mix: weight of the plain prediction."
    )
    batch_size: int = Field(64, ge=1, le=4096, description="Images per inference batch.")
    part_size: int = Field(
        PART_SIZE,
        ge=1,
        le=1_000_000,
        description="Images per resumable part: a killed prediction redoes at most one part.",
    )


class SubmitOptions(Options):
    """Whether the submission file is submitted, and how long to wait for its score."""

    submit: bool = Field(
        False,
        description="Submit to Kaggle: this spends one of the competition's daily submissions.",
    )
    score_timeout_s: float = Field(
        600.0,
        ge=1.0,
        validation_alias=AliasChoices("score_timeout_s", "timeout_s", "submit_timeout_s"),
        description="How long to wait for the score, in seconds.",
    )
    poll_interval_s: float = Field(5.0, gt=0.0, description="Seconds between status polls.")


SECTION_ORDER = ("prepare", "resize", "compute", "train", "predict", "submit")


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
    """The resize stage: the recipe, when given, adds the sizes it trains at."""

    recipe: Annotated[Recipe | None, Parameter(parse=False)] = Field(
        None, description="The recipe whose sizes to make (besides `sizes`)."
    )
    resize: _section(ResizeOptions, "resize") = ResizeOptions()

    def all_sizes(self) -> list[int]:
        """The recipe's sizes plus `resize.sizes` (64, 128 and 256 when neither says)."""
        sizes = set(self.resize.sizes or []) | set(self.recipe.sizes if self.recipe else [])
        return sorted(sizes or DEFAULT_SIZES)


class TrainConfig(RecipeConfig):
    """The train stage: the recipe, and where and how it trains."""

    compute: _section(ComputeOptions, "compute") = ComputeOptions()
    train: _section(TrainOptions, "train") = TrainOptions()


class PredictConfig(RecipeConfig):
    """The predict stage: which model (the recipe's), where, and how (TTA)."""

    compute: _section(ComputeOptions, "compute") = ComputeOptions()
    predict: _section(PredictOptions, "predict") = PredictOptions()


class SubmitConfig(RecipeConfig):
    """The submit stage: the recipe's submission file, submitted only when asked."""

    submit: _section(SubmitOptions, "submit") = SubmitOptions()


PipelineStage = Literal[
    "prepare", "resize", "train", "predict", "thresholds", "submission", "submit"
]
PIPELINE_STAGES: tuple[str, ...] = get_args(PipelineStage)
StageConfig = TypeVar("StageConfig", bound=Target)


class PipelineConfig(RecipeConfig):
    """Everything the pipeline needs, in one form; `stages` picks a subset to run."""

    stages: list[PipelineStage] = Field(
        default_factory=lambda: list(PIPELINE_STAGES),
        description="Stages to run (in pipeline order); the others must have run before.",
    )
    prepare: _section(PrepareOptions, "prepare") = PrepareOptions()
    resize: _section(ResizeOptions, "resize") = ResizeOptions()
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
        """The config of a stage flow: this target, recipe and sections (the same objects)."""
        return cls.model_validate({name: getattr(self, name) for name in cls.model_fields})


STAGE_CONFIGS: tuple[type[Target], ...] = (
    PrepareConfig,
    ResizeConfig,
    TrainConfig,
    PredictConfig,
    SubmitConfig,
)
