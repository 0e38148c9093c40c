"""Predict new imagery dropped into a folder: `predict-images`, a flow to run on a schedule.

Each run predicts the images of the drop folder whose content it has not seen (sha256), with
the recipe's trained model (or `model`), into one CSV of the submission's columns
(`image_name,tags` or `id,label`); see planet.infer.drop_folder for the seen index and what a
copy, a changed file or a bad file becomes. `planet predict-images` is the one-off command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from pydantic import Field

from flows.config import RecipeConfig
from planet.learn.stages import model_run
from tasks.predict_images import predict_drop_folder

NEW_IMAGES_CSV = "new-images.csv"


class PredictImagesConfig(RecipeConfig):
    """A drop folder and the trained run that predicts it."""

    source: str = Field(
        "drop",
        description="The drop folder of images (or an archive, or original-image shards).",
    )
    model: str | None = Field(
        None, description="The export.pt to predict with; empty = the recipe's trained run."
    )
    out: str | None = Field(
        None,
        description=f"The CSV to keep up to date; empty = predictions/<run>/{NEW_IMAGES_CSV} "
        "of the competition's data folder.",
    )
    thresholds: str | None = Field(
        None, description="The fitted thresholds/clip file; empty = the run's thresholds.json."
    )
    probabilities: bool = Field(False, description="Add one probability column per class.")
    device: str = Field("auto", description="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    batch_size: int = Field(64, ge=1, le=4096, description="Images per inference batch.")

    @property
    def model_path(self) -> Path:
        if self.model:
            return Path(self.model).expanduser()
        return model_run(self.workspace, self.recipe).export  # type: ignore[arg-type]

    @property
    def out_path(self) -> Path:
        if self.out:
            return Path(self.out).expanduser()
        run = model_run(self.workspace, self.recipe)  # type: ignore[arg-type]
        return self.workspace.predictions_dir / run.name / NEW_IMAGES_CSV


DEFAULT_CONFIG = PredictImagesConfig()


@flow(name="predict-images", flow_run_name="predict-images {config.competition} {config.source}")
def predict_new_images(config: PredictImagesConfig = DEFAULT_CONFIG) -> dict[str, Any]:
    """Predict the drop folder's images not seen before into the CSV (see the module doc)."""
    return predict_drop_folder(
        source=str(Path(config.source).expanduser()),
        model=str(config.model_path),
        out=str(config.out_path),
        probabilities=config.probabilities,
        thresholds=config.thresholds,
        device=config.device,
        batch_size=config.batch_size,
    )
