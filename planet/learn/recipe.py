"""Training recipes: fast.ai's lesson recipe as data.

A recipe is a backbone plus a list of stages; each stage trains at one image size, frozen
(only the head and every BatchNorm layer) or unfrozen, for some epochs of one-cycle training
at some learning rates. Each stage starts from the previous stage's weights, so progressive
resizing (128 px -> 256 px) is two stages at two sizes.

Learning rates are written the way fast.ai users write them:

    "1e-2"                 one rate for every layer group
    "slice(1e-2)"          1e-3 for both body groups, 1e-2 for the head (fast.ai `slice(hi)`)
    "slice(1e-5, 2e-3)"    spread geometrically over the groups: 1e-5, 1.41e-4, 2e-3
    "auto"                 the LR finder's suggestion, found just before this stage
    "slice(1e-5, auto/5)"  `auto` may appear wherever a number does, divided by a number

A stage whose rate mentions `auto` always runs the LR finder first; `lr_find: true` runs it
for the picture only (the seed notebooks looked at the plot before every `fit_one_cycle`).

A recipe is checked completely when it is read, before any stage runs: unknown keys are refused
(with the closest known key: `epoch` -> `epochs`), the arch must be one of `ARCH_NAMES`, and a
recipe file's mistakes (`RecipeError`) name the file, the line where the parser knows it and
the allowed values, in one line.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from planet.constants import ARCH_NAMES
from planet.fileio import sha256_json

_NUMBER = r"[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?"
_TERM = rf"(?:{_NUMBER}|auto(?:\s*/\s*{_NUMBER})?)"
_SLICE = re.compile(rf"^slice\(\s*({_TERM})\s*(?:,\s*({_TERM})\s*)?\)$")
_SINGLE = re.compile(rf"^({_TERM})$")
_NEGATIVE = re.compile(rf"(?:^|[(,])-{_NUMBER}")  # a minus sign before a rate (not an exponent)
_POSITIVE = "rates must be positive, e.g. 1e-3, slice(1e-3) or slice(1e-5, 1e-3)"


@dataclass(frozen=True)
class LRTerm:
    """A number, or the LR finder's suggestion divided by `divisor`."""

    value: float | None  # None: auto
    divisor: float = 1.0

    @classmethod
    def parse(cls, text: str) -> LRTerm:
        text = text.strip()
        if text.startswith("auto"):
            rest = text[4:].strip()
            return cls(None, float(rest.lstrip("/").strip()) if rest else 1.0)
        return cls(float(text))

    @property
    def is_auto(self) -> bool:
        return self.value is None

    def resolve(self, suggestion: float | None) -> float:
        if self.value is not None:
            return self.value
        if suggestion is None:
            raise ValueError("this learning rate says `auto`, but no LR finder suggestion is given")
        return suggestion / self.divisor


@dataclass(frozen=True)
class LRSpec:
    """A parsed learning-rate setting: one term, or `slice(hi)`, or `slice(lo, hi)`."""

    lo: LRTerm | None
    hi: LRTerm
    is_slice: bool

    @property
    def needs_finder(self) -> bool:
        return self.hi.is_auto or (self.lo is not None and self.lo.is_auto)

    def group_lrs(self, n_groups: int, suggestion: float | None = None) -> list[float]:
        """One learning rate per layer group, as fast.ai's `Learner.lr_range`."""
        hi = self.hi.resolve(suggestion)
        if not self.is_slice:
            lrs = [hi] * n_groups
        elif self.lo is None:
            lrs = [hi / 10] * (n_groups - 1) + [hi]
        else:
            lrs = even_mults(self.lo.resolve(suggestion), hi, n_groups)
        bad = [lr for lr in lrs if not (math.isfinite(lr) and lr > 0)]
        if bad:
            raise ValueError(f"learning rates must be positive and finite, got {lrs}")
        return lrs


def even_mults(start: float, stop: float, n: int) -> list[float]:
    """fast.ai's `even_mults`: n values from start to stop, evenly spaced in log scale."""
    if n == 1:
        return [stop]
    mult = (stop / start) ** (1 / (n - 1))
    return [start * mult**i for i in range(n)]


def parse_lr(spec: str | float) -> LRSpec:
    """Parse a learning-rate setting (see the module doc); a clear ValueError otherwise."""
    if isinstance(spec, int | float):
        if not (math.isfinite(spec) and spec > 0):
            raise ValueError(f"learning rate {spec}: {_POSITIVE}")
        return LRSpec(None, LRTerm(float(spec)), False)
    text = str(spec).strip().replace(" ", "")
    m = _SLICE.match(text)
    if m:
        first, second = m.group(1), m.group(2)
        if second is None:
            spec_ = LRSpec(None, LRTerm.parse(first), True)
        else:
            spec_ = LRSpec(LRTerm.parse(first), LRTerm.parse(second), True)
    elif _SINGLE.match(text):
        spec_ = LRSpec(None, LRTerm.parse(text), False)
    elif _NEGATIVE.search(text):
        raise ValueError(f"learning rate {spec!r}: {_POSITIVE}")
    else:
        raise ValueError(
            f"learning rate {spec!r} is not understood: write a number (1e-2), "
            "slice(hi), slice(lo, hi) or auto (e.g. slice(1e-5, auto/5))"
        )
    for term in (spec_.lo, spec_.hi):
        if term is not None and not term.is_auto and not (term.value > 0):  # type: ignore[operator]
            raise ValueError(f"learning rate {spec!r}: {_POSITIVE}")
        if term is not None and term.is_auto and not term.divisor > 0:
            raise ValueError(f"learning rate {spec!r}: auto must be divided by a positive number")
    return spec_


class RecipeError(ValueError):
    """A recipe file that cannot be used: one line naming the file, the line and what to write."""


class TrainStage(BaseModel):
    """One `fit_one_cycle` of the recipe."""

    model_config = ConfigDict(extra="forbid")

    size: int = Field(128, ge=8, le=1024, description="Image size in pixels (a resized size).")
    frozen: bool = Field(True, description="Train only the head (and BatchNorm layers).")
    epochs: int = Field(5, ge=1, le=1000, description="Epochs of one-cycle training.")
    lr: str = Field(
        "1e-2", description="Learning rate: 1e-2, slice(1e-2), slice(1e-5, 2e-3), auto, auto/5."
    )
    batch_size: int = Field(64, ge=1, le=4096, description="Images per training batch.")
    lr_find: bool = Field(False, description="Run the LR finder before this stage (plot only).")

    @field_validator("lr", mode="before")
    @classmethod
    def _valid_lr(cls, value: str | float) -> str:
        parse_lr(value)
        return str(value)

    @property
    def lr_spec(self) -> LRSpec:
        return parse_lr(self.lr)

    @property
    def runs_finder(self) -> bool:
        return self.lr_find or self.lr_spec.needs_finder

    def describe(self) -> str:
        state = "frozen" if self.frozen else "unfrozen"
        return f"{self.size}px {state} {self.epochs} epoch(s) at {self.lr}"


class Recipe(BaseModel):
    """A backbone and the stages that train it (defaults: the seed notebook's Planet recipe)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("lesson3", description="A short name; models go to models/<name>-<hash>/.")
    arch: str = Field("resnet50", description="Backbone: " + ", ".join(ARCH_NAMES) + ".")
    pretrained: bool = Field(True, description="Start from ImageNet weights when available.")
    weights_path: str | None = Field(
        None, description="An ImageNet state-dict file for the backbone (else the torch hub cache)."
    )
    stages: list[TrainStage] = Field(default_factory=lambda: list(LESSON3_STAGES))
    seed: int = Field(0, description="Seed of weights init, batch order and augmentation.")
    weight_decay: float = Field(1e-2, ge=0.0, le=1.0, description="AdamW weight decay.")
    lr_find_iterations: int = Field(100, ge=5, le=1000, description="LR finder steps.")
    lr_suggestion: Literal["steepest", "min/10"] = Field(
        "min/10", description="Which LR finder suggestion `auto` uses."
    )
    augment: bool = Field(True, description="fast.ai's dihedral/lighting/zoom augmentation.")

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", value):
            raise ValueError(f"recipe name {value!r}: use letters, digits, '.', '_' or '-'")
        return value

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, value: str) -> str:
        if value not in ARCH_NAMES:
            close = difflib.get_close_matches(value, ARCH_NAMES, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"unknown arch {value!r}; {hint}known: {', '.join(ARCH_NAMES)}")
        return value

    @field_validator("stages")
    @classmethod
    def _some_stages(cls, value: list[TrainStage]) -> list[TrainStage]:
        if not value:
            raise ValueError("a recipe needs at least one stage")
        return value

    @property
    def run_name(self) -> str:
        """The models folder: the name plus a hash of everything that shapes the weights."""
        return f"{self.name}-{sha256_json(self.model_dump(mode='json'))[:8]}"

    @property
    def sizes(self) -> list[int]:
        return sorted({s.size for s in self.stages})


LESSON3_STAGES: tuple[TrainStage, ...] = (
    TrainStage(size=128, frozen=True, epochs=5, lr="slice(1e-2)", lr_find=True),
    TrainStage(size=128, frozen=False, epochs=5, lr="slice(1e-5, 2e-3)", lr_find=True),
    TrainStage(size=256, frozen=True, epochs=5, lr="slice(5e-3)", lr_find=True),
    TrainStage(size=256, frozen=False, epochs=5, lr="slice(1e-5, 1e-3)", lr_find=True),
)


def lesson3() -> Recipe:
    """The seed notebook's recipe: resnet50, 128 px then 256 px, each frozen then unfrozen."""
    return Recipe()


def cpu_demo() -> Recipe:
    """A recipe a 2-core CPU finishes in minutes on the synthetic competition: resnet18, the LR
    finder, then 64 px and 128 px. Without pretrained weights (offline) a frozen random body
    learns little, so both stages train every layer."""
    return Recipe(
        name="cpu-demo",
        arch="resnet18",
        stages=[
            TrainStage(size=64, frozen=False, epochs=2, lr="auto", batch_size=32),
            TrainStage(size=128, frozen=False, epochs=2, lr="slice(1e-4, 2e-3)", batch_size=32),
        ],
        lr_find_iterations=60,
    )


def dogs_vgg16() -> Recipe:
    """The Dogs vs Cats seed (lesson 1): vgg16 at 224 px, the head first, then everything with
    differential rates. The seed's old fast.ai steps (SGD at 0.1 with restarts, precomputed
    activations) become one-cycle AdamW stages at the rates AdamW wants: the head at
    `slice(1e-2)` for 3 epochs, then all layers at `slice(1e-5, 1e-3)` (the seed's
    [1e-5, 1e-4, 1e-3]) for 3."""
    return Recipe(
        name="dogs-vgg16",
        arch="vgg16",
        stages=[
            TrainStage(size=224, frozen=True, epochs=3, lr="slice(1e-2)", lr_find=True),
            TrainStage(size=224, frozen=False, epochs=3, lr="slice(1e-5, 1e-3)"),
        ],
    )


RECIPES = {"lesson3": lesson3, "cpu-demo": cpu_demo, "dogs-vgg16": dogs_vgg16}


def named_recipe(name: str) -> Recipe:
    """A built-in recipe by name."""
    try:
        return RECIPES[name]()
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; built-in recipes: {sorted(RECIPES)}") from None


def load_recipe(value: str) -> Recipe:
    """A built-in recipe by name, or a JSON/YAML file holding one (RecipeError otherwise)."""
    if value in RECIPES:
        return named_recipe(value)
    path = Path(value).expanduser()
    if not path.is_file():
        raise RecipeError(
            f"recipe {value!r} is neither a built-in recipe ({', '.join(sorted(RECIPES))}) "
            "nor a recipe file (.json/.yaml)"
        )
    text = path.read_text()
    data = _parse_recipe_file(path, text)
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        lines = _line_finder(text)
        problems = "; ".join(_problem(e, lines) for e in exc.errors())
        raise RecipeError(f"recipe {path}, {problems}") from None


def _parse_recipe_file(path: Path, text: str) -> Any:
    """The file's data; a RecipeError naming the line and column a parser stopped at."""
    import yaml

    if path.suffix in (".yaml", ".yml"):
        try:
            return yaml.safe_load(text)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            what = " ".join(filter(None, [exc.context, exc.problem]))
            raise RecipeError(f"recipe {path} is not valid YAML{where}: {what}") from None
        except yaml.YAMLError as exc:
            raise RecipeError(
                f"recipe {path} is not valid YAML: {' '.join(str(exc).split())}"
            ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecipeError(
            f"recipe {path} is not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}"
        ) from None


def _line_finder(text: str) -> Any:
    """A function from a pydantic error location to the 1-based line it is on (None: unknown).
    JSON is YAML to this parser, so both kinds of file get lines."""
    import yaml

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        root = None

    def line(loc: tuple[Any, ...]) -> int | None:
        node, mark = root, None
        for part in loc:
            if isinstance(node, yaml.MappingNode):
                pair = next((kv for kv in node.value if kv[0].value == part), None)
                if pair is None:
                    break
                mark, node = pair[0].start_mark, pair[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                if not 0 <= part < len(node.value):
                    break
                node = node.value[part]
                mark = node.start_mark
            else:
                break
        return None if mark is None else mark.line + 1

    return line


def _problem(error: Any, line_of: Any) -> str:
    """One pydantic error as `stage 2, line 7: what is wrong; what to write`."""
    loc = tuple(error["loc"])
    stage = next((p for a, p in zip(loc, loc[1:], strict=False) if a == "stages"), None)
    line = line_of(loc)
    where = ", ".join(
        filter(
            None, [f"stage {stage + 1}" if isinstance(stage, int) else "", line and f"line {line}"]
        )
    )
    message = str(error["msg"]).removeprefix("Value error, ")
    key = loc[-1] if loc else None
    if error["type"] == "extra_forbidden":
        model = TrainStage if isinstance(stage, int) else Recipe
        known = list(model.model_fields)
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        what = "a stage" if model is TrainStage else "a recipe"
        message = f"unknown key {key!r}{hint} (the keys of {what}: {', '.join(known)})"
    elif not loc:
        message = f"a recipe file holds a mapping of keys ({', '.join(Recipe.model_fields)})"
    elif isinstance(key, str) and key not in message:
        message = f"{key}: {message}"
    return f"{where}: {message}" if where else message
