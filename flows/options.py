"""The stage options: one pydantic model per section of the pipeline's parameters.

Each field is a form field in the Prefect UI and a `planet run` flag of its own name (the
sections' field names are distinct: tests/test_config.py checks it and that every field reaches
the stages). flows/config.py composes them with the target into the stage flows' configs.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from planet.infer.predict import PART_SIZE
from planet.learn.recipe import Recipe, load_recipe


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

    @field_validator("sizes")
    @classmethod
    def _valid_sizes(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return None
        bad = [s for s in value if not 8 <= s <= 1024]
        if bad or not value:
            raise ValueError(f"sizes must be 8..1024 pixels, got {value}")
        return sorted(set(value))


class EnsembleOptions(Options):
    """Which models make the answer: folds x recipes x seeds, each its own training run."""

    folds: int = Field(
        1,
        ge=1,
        le=20,
        validation_alias=AliasChoices("folds", "n_folds"),
        description="K-fold over all train images (the split's fold assignment): K members per "
        "recipe and seed, thresholds fitted on their out-of-fold predictions; 1 = one model on "
        "the 80/20 split.",
    )
    seeds: list[int] | None = Field(
        None, description="Train every recipe once per seed; empty = each recipe's own seed."
    )
    recipes: list[Recipe] | None = Field(
        None,
        description="More recipes beside `recipe` (built-in names, .json/.yaml files or "
        "recipes), each trained folds x seeds times.",
    )
    combine: Literal["mean", "stack", "best"] = Field(
        "mean",
        description="How members' probabilities are combined: their mean; stack = per-class "
        "logistic regression fitted on the out-of-fold predictions; best = whichever "
        "cross-validates better on them.",
    )
    work_pool: str | None = Field(
        None,
        description="Start each member as a run of the train deployment on this work pool "
        "(whichever worker is free takes it); empty = here, one after another.",
    )
    train_deployment: str = Field(
        "train/train", description="The deployment members run as (with a work pool)."
    )

    @field_validator("recipes", mode="before")
    @classmethod
    def _recipes_by_name_or_file(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [load_recipe(v) if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _distinct_seeds(self) -> EnsembleOptions:
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must differ, got {self.seeds}")
        return self


class ComputeOptions(Options):
    """Where models train and predict."""

    device: str = Field("auto", description="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    workers: int = Field(2, ge=1, le=32, description="Loader threads preparing batches.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="Training and prediction precision: auto = bf16 on GPUs with native bf16 "
        "(A100, L4, H100...), fp16 with loss scaling on the others (T4); on the CPU bf16 where "
        "it has native bf16 (AVX512-BF16, AMX), else fp32.",
    )
    concurrency_limit: str | None = Field(
        None,
        description="A Prefect global concurrency limit each training run holds one slot of "
        "while it trains (e.g. gpu, with as many slots as GPUs); empty = none.",
    )

    @field_validator("device")
    @classmethod
    def _valid_device(cls, value: str) -> str:
        if value != "auto" and not re.fullmatch(r"(cpu|cuda|mps)(:\d+)?", value):
            raise ValueError(f"device {value!r}: use auto, cpu, cuda, cuda:<n> or mps")
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
    resubmit: bool = Field(
        False,
        description="Submit again although this file was submitted before (after a scoring "
        "error, or to replace it): spends another daily submission.",
    )
