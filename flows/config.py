"""Typed flow parameters: pydantic models that the Prefect UI renders as forms.

Credentials are never parameters: the Kaggle key is read from the environment or kaggle.json
by the task that needs it (see planet.kaggle.load_credentials).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from planet.competitions import Competition, resolve


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
