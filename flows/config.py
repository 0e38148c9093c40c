"""Typed flow parameters: pydantic models that the Prefect UI renders as forms.

Credentials are never parameters: the Kaggle key is read from the environment or kaggle.json
by the task that needs it (see planet.kaggle.load_credentials).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, Field, field_validator, model_validator

from planet.competitions import Competition, resolve
from planet.infer.predict import PART_SIZE
from planet.learn.recipe import Recipe, named_recipe


class StageConfig(BaseModel):
    """What every stage is told: the competition and the data directory."""

    competition: str = Field(
        "planet-understanding-the-amazon-from-space",
        description="Kaggle competition slug (or alias: planet, dogs-vs-cats).",
    )
    data_dir: str = Field("data", description="Data directory; one folder per competition.")

    @field_validator("competition")
    @classmethod
    def _known_competition(cls, value: str) -> str:
        return resolve(value).slug

    @property
    def spec(self) -> Competition:
        return resolve(self.competition)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()


class PrepareConfig(StageConfig):
    """What to download and how to extract it."""

    files: list[str] | None = Field(
        None, description="Kaggle file names to fetch and extract; empty = all the pipeline uses."
    )
    kaggle_endpoint: str | None = Field(
        None,
        description="Base URL of a Kaggle-compatible server (the local one); empty = kaggle.com.",
    )
    shard_size: int = Field(2000, ge=16, le=100_000, description="Images per parquet shard.")
    write_files: bool = Field(
        False, description="Also write the plain folder layout images/<split>/<name>.jpg."
    )

    @model_validator(mode="after")
    def _known_files(self) -> PrepareConfig:
        if self.files:
            comp = self.spec
            known = {f.name for f in comp.files}
            unknown = [f for f in self.files if f not in known]
            if unknown:
                raise ValueError(
                    f"files {unknown} are not files of {comp.slug}; choose from {sorted(known)}"
                )
        return self

    def selected_files(self) -> list[str]:
        return list(self.files) if self.files else [f.name for f in self.spec.files]


class ResizeConfig(StageConfig):
    """Which sizes to pre-resize to, how, and where the Dask work runs."""

    sizes: list[int] = Field(
        [64, 128, 256], description="Square sizes in pixels (the recipe's progressive resizing)."
    )
    oversize: float | None = Field(
        None,
        ge=1.0,
        le=2.0,
        description="Also write int(size*oversize) for random crops (fast.ai used 1.3).",
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
    n_folds: int | None = Field(None, ge=2, le=20, description="Also assign k folds.")

    @field_validator("sizes")
    @classmethod
    def _valid_sizes(cls, value: list[int]) -> list[int]:
        bad = [s for s in value if not 8 <= s <= 1024]
        if bad or not value:
            raise ValueError(f"sizes must be 8..1024 pixels, got {value}")
        return sorted(set(value))

    def all_sizes(self) -> list[int]:
        """The sizes plus, with an oversize factor, int(size*oversize) for each."""
        extra = [int(s * self.oversize) for s in self.sizes] if self.oversize else []
        return sorted(set(self.sizes) | set(extra))


class RecipeConfig(StageConfig):
    """A stage config naming the recipe (by default the competition's own)."""

    recipe: Recipe | None = Field(
        None, description="Backbone and training stages; empty = the competition's default."
    )

    @model_validator(mode="after")
    def _default_recipe(self) -> RecipeConfig:
        if self.recipe is None:
            self.recipe = named_recipe(self.spec.default_recipe)
        return self


class TrainConfig(RecipeConfig):
    """The recipe to train and where it runs."""

    device: str = Field("auto", description="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    workers: int = Field(2, ge=1, le=32, description="Loader threads preparing batches.")
    compile_model: bool = Field(False, description="torch.compile the model (CUDA; slow start).")

    @field_validator("device")
    @classmethod
    def _valid_device(cls, value: str) -> str:
        if value != "auto" and not re.fullmatch(r"(cpu|cuda|mps)(:\d+)?", value):
            raise ValueError(f"device {value!r}: use auto, cpu, cuda or cuda:<n>")
        return value


class PredictConfig(RecipeConfig):
    """Which trained model predicts, and how (TTA)."""

    tta: bool = Field(True, description="Average the 8 symmetries of the square.")
    beta: float | None = Field(
        None, ge=0.0, le=1.0, description="fast.ai's TTA mix: weight of the plain prediction."
    )
    device: str = Field("auto", description="auto (CUDA when available), cpu, cuda, ...")
    batch_size: int = Field(64, ge=1, le=4096, description="Images per inference batch.")
    part_size: int = Field(
        PART_SIZE,
        ge=1,
        le=1_000_000,
        description="Images per resumable part: a killed prediction redoes at most one part.",
    )


class SubmitConfig(RecipeConfig):
    """Whether and where the submission file is submitted."""

    submit: bool = Field(
        False,
        description="Submit to Kaggle: this spends one of the competition's daily submissions.",
    )
    kaggle_endpoint: str | None = Field(
        None,
        description="Base URL of a Kaggle-compatible server (the local one); empty = kaggle.com.",
    )
    timeout_s: float = Field(600.0, ge=1.0, description="How long to wait for the score.")
    poll_interval_s: float = Field(5.0, gt=0.0, description="Seconds between status polls.")


PipelineStage = Literal[
    "prepare", "resize", "train", "predict", "thresholds", "submission", "submit"
]
PIPELINE_STAGES: tuple[str, ...] = get_args(PipelineStage)


class PipelineConfig(RecipeConfig):
    """Everything the pipeline needs, in one form; `stages` picks a subset to run."""

    stages: list[PipelineStage] = Field(
        default_factory=lambda: list(PIPELINE_STAGES),
        description="Stages to run (in pipeline order); the others must have run before.",
    )
    kaggle_endpoint: str | None = Field(
        None,
        description="Base URL of a Kaggle-compatible server (the local one); empty = kaggle.com.",
    )
    files: list[str] | None = Field(
        None, description="Kaggle file names to fetch and extract; empty = all the pipeline uses."
    )
    shard_size: int = Field(2000, ge=16, le=100_000, description="Images per parquet shard.")
    write_files: bool = Field(
        False, description="Also write the plain folder layout images/<split>/<name>.jpg."
    )
    sizes: list[int] | None = Field(
        None, description="Sizes to pre-resize to besides the recipe's own."
    )
    dask_address: str | None = Field(None, description="An existing Dask scheduler; empty = local.")
    device: str = Field("auto", description="auto (CUDA when available), cpu, cuda, ...")
    workers: int = Field(2, ge=1, le=32, description="Loader threads preparing batches.")
    tta: bool = Field(True, description="Average the 8 symmetries of the square at test time.")
    part_size: int = Field(
        PART_SIZE, ge=1, le=1_000_000, description="Images per resumable prediction part."
    )
    submit: bool = Field(
        False,
        description="Submit to Kaggle: this spends one of the competition's daily submissions.",
    )
    submit_timeout_s: float = Field(600.0, ge=1.0, description="How long to wait for the score.")

    @field_validator("stages")
    @classmethod
    def _ordered(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError(f"stages must name at least one of {list(PIPELINE_STAGES)}")
        return [s for s in PIPELINE_STAGES if s in value]

    def _common(self) -> dict[str, str]:
        return {"competition": self.competition, "data_dir": self.data_dir}

    def prepare_config(self) -> PrepareConfig:
        return PrepareConfig(
            **self._common(),
            files=self.files,
            kaggle_endpoint=self.kaggle_endpoint,
            shard_size=self.shard_size,
            write_files=self.write_files,
        )

    def resize_config(self) -> ResizeConfig:
        sizes = sorted(set(self.sizes or []) | set(self.recipe.sizes))
        return ResizeConfig(**self._common(), sizes=sizes, dask_address=self.dask_address)

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            **self._common(), recipe=self.recipe, device=self.device, workers=self.workers
        )

    def predict_config(self) -> PredictConfig:
        return PredictConfig(
            **self._common(),
            recipe=self.recipe,
            tta=self.tta,
            device=self.device,
            part_size=self.part_size,
        )

    def submit_config(self) -> SubmitConfig:
        return SubmitConfig(
            **self._common(),
            recipe=self.recipe,
            submit=self.submit,
            kaggle_endpoint=self.kaggle_endpoint,
            timeout_s=self.submit_timeout_s,
        )
