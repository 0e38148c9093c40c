"""The catalog: every dataset the pipeline reads or writes for one competition in one data dir.

```
<data_dir>/<competition-slug>/
    raw/<Kaggle file>              RawFile          downloads + raw/manifest.json (size, sha256)
    tables/<csv>                   Table            unzipped CSVs + tables/manifest.json
    shards/original/<split>/       OriginalShards   original JPEG bytes in parquet shards
    images/<split>/                                 optional plain folder layout (write_files)
    shards/split.parquet           SplitFile        the validation split (and folds)
    shards/<size>/<split>/         SizedShards      raw uint8 pixels at one size (+ batch.png)
    models/<run>/                  ModelRun         stage weights, records, checkpoints, export.pt
    predictions/<run>/<split>/     Predictions      probs.parquet + manifest.json
    predictions/<run>/thresholds.json  Thresholds   what was fitted on validation
    predictions/<run>/interpretation.json  Interpretation  error analysis: top losses, per-tag
                                   table, show_results (+ confusion), PNGs and CSV beside it
    submissions/<run>.csv          SubmissionFile   the CSV, and its submit records beside it
```

The tables among them also read as pandas DataFrames (`frame()`: predictions, a run's
metrics history, thresholds, the submission); `planet.results` is the notebook's entry point.

Each dataset has its path, its reader and `complete(...)`: the one answer to "is it done?" (the
format's own check, which the stage uses too to skip finished work, and the cache layer uses to
refresh a cached stage whose outputs were deleted). As Kedro's catalog names datasets and
Luigi's `complete()` means "the outputs exist". Results hold paths relative to the competition
folder (`relative`), so they stay valid wherever the data directory is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from planet.competitions import Competition, DataFile, resolve
from planet.constants import MANIFEST

if TYPE_CHECKING:  # the catalog is imported by every flow: what it reads loads when read
    import pandas as pd

    from planet.store.labels import LabelTable
    from planet.store.sized import ImageData
    from planet.store.split import Split

SPLIT_FILE = "split.parquet"
EXPORT_FILE = "export.pt"
THRESHOLDS_FILE = "thresholds.json"
SUBMIT_RECORDS = "*.submitted.json"  # planet.kaggle.submit_record's records, beside the CSVs
INTERPRETATION_FILE = "interpretation.json"
BATCH_PICTURE = "batch.png"


@dataclass(frozen=True)
class RawFile:
    """A Kaggle file as downloaded into raw/, recorded in raw/manifest.json."""

    folder: Path
    name: str

    @property
    def path(self) -> Path:
        return self.folder / self.name

    def complete(self, remote: Mapping[str, Any]) -> bool:
        """Downloaded, with the size and identity Kaggle lists now (`remote`)."""
        from planet import kaggle

        return kaggle.local_file_complete(self.folder, remote)

    def read(self) -> dict[str, Any]:
        """Its record {name, size, sha256, path}; FileNotFoundError when not downloaded."""
        from planet import kaggle

        return kaggle.read_raw_records(self.folder, [self.name])[self.name]


@dataclass(frozen=True)
class Table:
    """A CSV of the competition (labels, sample submission), unzipped into tables/."""

    folder: Path
    data_file: DataFile

    @property
    def path(self) -> Path:
        return self.folder / (self.data_file.table_name or self.data_file.name)

    def complete(self, source_sha256: str) -> dict[str, Any] | None:
        """Its record when extracted from the download with this sha256 and still intact."""
        from planet.extract.tables import table_record

        return table_record(self.folder, self.data_file, source_sha256)


@dataclass(frozen=True)
class OriginalShards:
    """A split's original JPEG bytes in parquet shards (and optionally as plain files)."""

    folder: Path
    files_folder: Path

    def complete(
        self, archive_sha256: str, *, shard_size: int, write_files: bool = False
    ) -> dict[str, Any] | None:
        """The manifest when extracted from the archive with this sha256 and settings."""
        from planet.extract.images import images_complete

        files = self.files_folder if write_files else None
        return images_complete(self.folder, archive_sha256, shard_size=shard_size, files_dir=files)

    def read_manifest(self) -> dict[str, Any]:
        """The extraction manifest (the shards' content hashes; ShardError naming the extract
        stage when the extraction is missing or unfinished)."""
        from planet.store import shards

        return shards.read_manifest(self.folder)

    def names(self) -> list[str]:
        """The image names, in shard order."""
        from planet.store import shards

        return shards.read_table(self.folder, ["image_name"]).column("image_name").to_pylist()


@dataclass(frozen=True)
class SplitFile:
    """The validation split (fast.ai's seeded random split, and folds) of the train images."""

    path: Path

    def complete(self, settings: Mapping[str, Any]) -> Split | None:
        """The split when it was made with these settings (valid_pct, seed, n_folds)."""
        from planet.store.split import read_split

        try:
            split = read_split(self.path)
        except (OSError, ValueError):
            return None
        return split if split.settings == dict(settings) else None

    def read(self) -> Split:
        from planet.store.split import read_split

        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path} is missing: run the resize stage first")
        return read_split(self.path)

    def write(self, split: Split) -> Path:
        from planet.store.split import write_split

        return write_split(self.path, split)


@dataclass(frozen=True)
class SizedShards:
    """A split's images at one size: raw uint8 pixels in parquet shards."""

    folder: Path
    size: int

    @property
    def batch_picture(self) -> Path:
        return self.folder / BATCH_PICTURE

    def complete(
        self, source: Mapping[str, Any], method: str, labels: Any = None
    ) -> dict[str, Any] | None:
        """The manifest when made from this original-image manifest, method (and labels)."""
        from planet.resize import sized_complete

        return sized_complete(self.folder, dict(source), self.size, method, labels)

    def read_manifest(self) -> dict[str, Any]:
        """The manifest of the finished shards (ShardError naming the resize stage if none)."""
        from planet.store.sized import read_sized_manifest

        return read_sized_manifest(self.folder)

    def read(self) -> ImageData:
        """Every image, memory-mapped (planet.store.sized.read_images)."""
        from planet.store.sized import read_images

        return read_images(self.folder)

    def labels(self) -> tuple[list[str], Any]:
        """The names and labels without the pixels (None for a test split)."""
        from planet.store.sized import read_labels

        return read_labels(self.folder)


@dataclass(frozen=True)
class ModelRun:
    """One training run of a recipe: models/<recipe run name>/."""

    folder: Path

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def export(self) -> Path:
        return self.folder / EXPORT_FILE

    def stage_weights(self, index: int) -> Path:
        return self.folder / f"stage-{index + 1}.pt"

    def stage_record(self, index: int) -> Path:
        return self.folder / f"stage-{index + 1}.json"

    def checkpoints(self, index: int) -> Path:
        return self.folder / f"stage-{index + 1}.ckpt"

    def lr_find(self, index: int, suffix: str = ".json") -> Path:
        return self.folder / f"lr_find-{index + 1}{suffix}"

    def losses_picture(self, index: int) -> Path:
        return self.folder / f"losses-{index + 1}.png"

    def stage_records(self) -> list[dict[str, Any]]:
        """The records of the finished stages, in order (none before the first finishes)."""
        from planet.fileio import read_json

        records = []
        while self.stage_record(len(records)).is_file():
            records.append(read_json(self.stage_record(len(records))))
        return records

    def frame(self) -> pd.DataFrame:
        """The metrics history: one row per epoch of every finished stage (stage, epoch,
        train_loss, valid_loss, the metrics, lr, seconds, images_per_s)."""
        import pandas as pd

        rows = [
            {"stage": rec["stage"], **{k: v for k, v in row.items() if k != "batch_losses"}}
            for rec in self.stage_records()
            for row in rec["history"]
        ]
        return pd.DataFrame(rows, columns=None if rows else ["stage", "epoch"])

    def stage_complete(self, index: int, fingerprint: str) -> dict[str, Any] | None:
        """The record of a finished stage with this fingerprint whose weights are intact."""
        from planet.fileio import read_json

        try:
            record = read_json(self.stage_record(index))
            weights = self.stage_weights(index)
            if record.get("fingerprint") != fingerprint or not weights.is_file():
                return None
            if weights.stat().st_size != record["bytes"]:
                return None
            return record
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None


@dataclass(frozen=True)
class Predictions:
    """A model's probabilities for one split: predictions/<run>/<split>/probs.parquet."""

    folder: Path

    def complete(self, settings: Mapping[str, Any], **expect: Any) -> bool:
        """Finished, made with `settings` (and each manifest field in `expect`)."""
        from planet.infer.predict import predictions_complete

        return predictions_complete(self.folder, dict(settings), **expect)

    def read_manifest(self) -> dict[str, Any]:
        """The manifest of finished predictions (written last, so its presence means done)."""
        from planet.fileio import read_json

        try:
            return read_json(self.folder / MANIFEST)
        except (OSError, ValueError):
            raise FileNotFoundError(
                f"{self.folder} holds no finished predictions: run the predict stage first"
            ) from None

    def read(self) -> tuple[list[str], Any, tuple[str, ...]]:
        """(names, float32 probabilities (n, C), classes)."""
        from planet.infer.predict import read_probs

        return read_probs(self.folder)

    def frame(self) -> pd.DataFrame:
        """The probabilities: index image_name, one float32 column per class."""
        from planet.infer.predict import read_probs_frame

        self.read_manifest()  # finished, or an error naming the predict stage
        return read_probs_frame(self.folder)


@dataclass(frozen=True)
class FittedFile:
    """A file written whole at once (thresholds, a submission): complete when it exists."""

    path: Path

    def complete(self) -> bool:
        return self.path.is_file()

    def require(self, stage: str) -> Path:
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path} is missing: run the {stage} stage first")
        return self.path


@dataclass(frozen=True)
class Thresholds(FittedFile):
    """predictions/<run>/thresholds.json: the decision fitted on validation."""

    def read(self) -> dict[str, Any]:
        from planet.fileio import read_json

        return read_json(self.require("thresholds"))

    def frame(self) -> pd.DataFrame:
        """The report as a table (planet.infer.decision.report_frame)."""
        from planet.infer.decision import report_frame

        return report_frame(self.read())


@dataclass(frozen=True)
class SubmissionFile(FittedFile):
    """submissions/<run>.csv, with the records of its submissions beside it."""

    def frame(self) -> pd.DataFrame:
        """The CSV's cells as written (strings), indexed by its first (key) column."""
        from planet.infer.submission import read_frame

        frame = read_frame(self.require("submission"))
        return frame.set_index(frame.columns[0])

    def records(self) -> list[dict[str, Any]]:
        """The submit records of this exact file (by content), one per endpoint."""
        from planet.fileio import read_json, sha256_file

        if not self.path.is_file():
            return []
        sha = sha256_file(self.path)
        found = (read_json(p) for p in sorted(self.path.parent.glob(SUBMIT_RECORDS)))
        return [r for r in found if isinstance(r, dict) and r.get("csv_sha256") == sha]


@dataclass(frozen=True)
class Interpretation:
    """A run's error analysis (planet.infer.interpretation): files in predictions/<run>/ and
    the manifest listing them, written last."""

    folder: Path

    @property
    def manifest(self) -> Path:
        return self.folder / INTERPRETATION_FILE

    def complete(self, inputs: Mapping[str, Any]) -> dict[str, Any] | None:
        """The manifest when made from these inputs (planet.infer.interpretation's
        `interpretation_inputs`) with every file it lists intact."""
        from planet.infer.interpretation import interpretation_complete

        return interpretation_complete(self.manifest, dict(inputs))

    def read_manifest(self) -> dict[str, Any]:
        from planet.fileio import read_json

        try:
            return read_json(self.manifest)
        except (OSError, ValueError):
            raise FileNotFoundError(
                f"{self.manifest} is missing: run the thresholds stage (it writes the error "
                "analysis) first"
            ) from None


@dataclass(frozen=True)
class Workspace:
    """Every dataset of `competition` under `<data_dir>/<slug>/` (see the module doc)."""

    root: Path
    competition: Competition

    @classmethod
    def of(cls, data_dir: str | Path, competition: str | Competition) -> Workspace:
        comp = competition if isinstance(competition, Competition) else resolve(competition)
        return cls(Path(data_dir).expanduser().resolve() / comp.slug, comp)

    @property
    def slug(self) -> str:
        return self.competition.slug

    # folders
    @property
    def raw_dir(self) -> Path:
        return self.root / "raw"

    @property
    def tables_dir(self) -> Path:
        return self.root / "tables"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def predictions_dir(self) -> Path:
        return self.root / "predictions"

    @property
    def submissions_dir(self) -> Path:
        return self.root / "submissions"

    # datasets
    def raw(self, name: str) -> RawFile:
        self.competition.file(name)  # KeyError naming the competition's files
        return RawFile(self.raw_dir, name)

    def table(self, name: str) -> Table:
        return Table(self.tables_dir, self.competition.file(name))

    def labels_table(self) -> Table | None:
        """The labels CSV, or None when the labels are in the image names."""
        files = [f for f in self.competition.files if f.kind == "labels"]
        return Table(self.tables_dir, files[0]) if files else None

    def labels_record(self) -> dict[str, Any] | None:
        """The extracted labels table's record (name, sha256): what sized train shards and the
        split depend on. None when the labels are in the image names."""
        table = self.labels_table()
        if table is None:
            return None
        record = table.complete(self.raw(table.data_file.name).read()["sha256"])
        if record is None:
            raise FileNotFoundError(
                f"{table.data_file.table_name} is not in {self.tables_dir}: run the prepare "
                "stage first"
            )
        return {"name": record["name"], "sha256": record["sha256"]}

    def train_labels(self) -> LabelTable:
        """The labels of the extracted train images, checked both ways (planet.store.labels)."""
        from planet.store.labels import load_labels

        names = self.original("train").names()
        return load_labels(self.competition, self.tables_dir, names)

    def sample_submission(self) -> Table:
        (data_file,) = [f for f in self.competition.files if f.kind == "sample_submission"]
        return Table(self.tables_dir, data_file)

    def original(self, split: str) -> OriginalShards:
        return OriginalShards(
            self.root / "shards" / "original" / split, self.root / "images" / split
        )

    @property
    def split(self) -> SplitFile:
        return SplitFile(self.root / "shards" / SPLIT_FILE)

    def sized(self, size: int, split: str) -> SizedShards:
        return SizedShards(self.root / "shards" / str(size) / split, size)

    def model_run(self, run: str) -> ModelRun:
        return ModelRun(self.models_dir / run)

    def predictions(self, run: str, split: str) -> Predictions:
        return Predictions(self.predictions_dir / run / split)

    def thresholds(self, run: str) -> Thresholds:
        return Thresholds(self.predictions_dir / run / THRESHOLDS_FILE)

    def interpretation(self, run: str) -> Interpretation:
        return Interpretation(self.predictions_dir / run)

    def submission(self, run: str) -> SubmissionFile:
        return SubmissionFile(self.submissions_dir / f"{run}.csv")

    # locations in results
    def relative(self, path: Path) -> str:
        """A path inside the competition folder as results store it (relative to root)."""
        return str(Path(path).relative_to(self.root))

    def path(self, relative: str) -> Path:
        """The path a result's relative path names."""
        return self.root / relative
