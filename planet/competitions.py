"""What each supported Kaggle competition is made of: one `Competition` object per competition.

A spec says everything the pipeline needs and the flows take only the slug: which Kaggle files
to fetch and how to extract them (`files`), where labels come from (`labels`: the tags column
of a CSV, or the first dot-separated part of each file name), the task (multi-label: sigmoid,
BCE, thresholds; single-label: softmax, cross-entropy, a probability clip), the metric, the
submission's columns (and for a single-label probability submission, the class whose
probability is written), and the default recipes (`planet.learn.recipe.RECIPES`).

A competition is named by its Kaggle slug; short aliases (`planet`, `dogs-vs-cats`) are
accepted wherever a competition is named (`resolve`). Adding a third is one more instance in
`COMPETITIONS` (see the README's "Adding a competition").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from planet.constants import TaskType

FileKind = Literal["images", "labels", "sample_submission"]
ArchiveFormat = Literal["tar.7z", "zip", "csv.zip", "csv"]


@dataclass(frozen=True)
class DataFile:
    """One file of a competition's Kaggle download."""

    name: str  # file name exactly as Kaggle lists it, e.g. "train-jpg.tar.7z"
    kind: FileKind
    format: ArchiveFormat
    split: str | None = None  # for images: "train", "test", "test-additional"
    inner_dir: str | None = None  # folder inside the archive holding the images
    name_prefix: str | None = None  # image file names start with this, e.g. "train_"

    @property
    def table_name(self) -> str | None:
        """For CSV files (zipped or not): the CSV's own name, e.g. "train_v2.csv"."""
        if self.format == "csv.zip":
            return self.name.removesuffix(".zip")
        if self.format == "csv":
            return self.name
        return None


@dataclass(frozen=True)
class Competition:
    slug: str
    title: str
    aliases: tuple[str, ...]
    task: TaskType
    classes: tuple[str, ...]
    files: tuple[DataFile, ...]
    metric: Literal["mean_f2", "log_loss"]
    submission_columns: tuple[str, str]
    labels: Literal["csv_tags", "file_names"] = "csv_tags"
    positive_class: str | None = None  # single-label: the class whose probability is submitted
    default_recipe: str = "lesson3"  # a name in planet.learn.recipe.RECIPES
    demo_recipe: str = "cpu-demo"  # what `planet demo` trains on the CPU
    extra: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def url(self) -> str:
        return f"https://www.kaggle.com/c/{self.slug}"

    @property
    def rules_url(self) -> str:
        return f"https://www.kaggle.com/c/{self.slug}/rules"

    def file(self, name: str) -> DataFile:
        for f in self.files:
            if f.name == name:
                return f
        known = ", ".join(f.name for f in self.files)
        raise KeyError(f"{self.slug} has no file {name!r}; its files are: {known}")

    @property
    def image_files(self) -> tuple[DataFile, ...]:
        return tuple(f for f in self.files if f.kind == "images")

    @property
    def table_files(self) -> tuple[DataFile, ...]:
        return tuple(f for f in self.files if f.kind != "images")


# The 17 Planet tags with their counts in the 40,479-image train_v2.csv.
PLANET_TAG_COUNTS: dict[str, int] = {
    "primary": 37513,
    "clear": 28431,
    "agriculture": 12315,
    "road": 8071,
    "water": 7411,
    "partly_cloudy": 7261,
    "cultivation": 4547,
    "habitation": 3660,
    "haze": 2697,
    "cloudy": 2089,
    "bare_ground": 862,
    "selective_logging": 340,
    "artisinal_mine": 339,
    "blooming": 332,
    "slash_burn": 209,
    "blow_down": 101,
    "conventional_mine": 100,
}
PLANET_TRAIN_SIZE = 40479
PLANET_WEATHER_TAGS: tuple[str, ...] = ("clear", "partly_cloudy", "haze", "cloudy")

PLANET = Competition(
    slug="planet-understanding-the-amazon-from-space",
    title="Planet: Understanding the Amazon from Space",
    aliases=("planet", "planet-amazon"),
    task="multi_label",
    classes=tuple(sorted(PLANET_TAG_COUNTS)),  # fixed class order: alphabetical, like fast.ai
    files=(
        DataFile("train-jpg.tar.7z", "images", "tar.7z", "train", "train-jpg", "train_"),
        DataFile("test-jpg.tar.7z", "images", "tar.7z", "test", "test-jpg", "test_"),
        DataFile(
            "test-jpg-additional.tar.7z",
            "images",
            "tar.7z",
            "test-additional",
            "test-jpg-additional",
            "file_",
        ),
        DataFile("train_v2.csv.zip", "labels", "csv.zip"),
        DataFile("sample_submission_v2.csv.zip", "sample_submission", "csv.zip"),
    ),
    metric="mean_f2",
    submission_columns=("image_name", "tags"),
    extra={"real_sizes": {"train": 40479, "test": 40669, "test-additional": 20522}},
)

DOGS_VS_CATS = Competition(
    slug="dogs-vs-cats-redux-kernels-edition",
    title="Dogs vs. Cats Redux: Kernels Edition",
    aliases=("dogs-vs-cats", "dogs-vs-cats-redux"),
    task="single_label",
    classes=("cat", "dog"),
    files=(
        DataFile("train.zip", "images", "zip", "train", "train", None),
        DataFile("test.zip", "images", "zip", "test", "test", None),
        DataFile("sample_submission.csv", "sample_submission", "csv"),
    ),
    metric="log_loss",
    submission_columns=("id", "label"),
    labels="file_names",
    positive_class="dog",
    default_recipe="dogs-vgg16",
    extra={"real_sizes": {"train": 25000, "test": 12500}},
)

COMPETITIONS: tuple[Competition, ...] = (PLANET, DOGS_VS_CATS)


def resolve(name: str) -> Competition:
    """The competition named by its Kaggle slug or one of its aliases (case-insensitive)."""
    key = name.strip().lower()
    for comp in COMPETITIONS:
        if key == comp.slug or key in comp.aliases:
            return comp
    known = "; ".join(f"{c.slug} (or {', '.join(c.aliases)})" for c in COMPETITIONS)
    raise ValueError(f"unknown competition {name!r}: known competitions are {known}")
