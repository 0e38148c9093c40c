"""Typed flow parameters: pydantic models that the Prefect UI renders as forms.

Credentials are never parameters: the Kaggle key is read from the environment or kaggle.json
by the task that needs it (see planet.kaggle.load_credentials).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, field_validator, model_validator

from planet.competitions import Competition, resolve


class PrepareConfig(BaseModel):
    """What to download and how to extract it."""

    competition: str = Field(
        "planet-understanding-the-amazon-from-space",
        description="Kaggle competition slug (or alias: planet, dogs-vs-cats).",
    )
    data_dir: str = Field("data", description="Data directory; one folder per competition.")
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

    @field_validator("competition")
    @classmethod
    def _known_competition(cls, value: str) -> str:
        return resolve(value).slug

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

    @property
    def spec(self) -> Competition:
        return resolve(self.competition)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    def selected_files(self) -> list[str]:
        return list(self.files) if self.files else [f.name for f in self.spec.files]
