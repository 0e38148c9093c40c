"""One recipe stage on a competition's data directory: the seed notebook's cell sequence

    data = src.transform(tfms, size=128).databunch()     read the sized shards + the split
    learn.load('stage-1')                                  the previous stage's weights
    learn.freeze() / learn.unfreeze()
    learn.lr_find(); learn.recorder.plot()                 when the stage asks for it
    learn.fit_one_cycle(5, slice(lr))                      checkpointed every epoch
    learn.save('stage-2')

as one function, `run_stage`. Outputs go to `models/<recipe run name>/`:

    stage-<i>.pt              the stage's weights as an inference bundle (`planet.model`)
    stage-<i>.json            the stage's record: history, learning rates, finder, hashes
    stage-<i>.ckpt/           the last epoch's checkpoint while the stage runs
    lr_find-<i>.json / .png   the LR finder's sweep and plot
    losses-<i>.png            fast.ai's plot_losses
    export.pt                 the last stage's bundle, for the predict stage (`export`)

A stage's fingerprint (`stage_fingerprint`) hashes what its weights depend on: the recipe's
settings, the stage, the previous stage's weights (sha256), the training data (the sized
manifest and the split) and the code version. Checkpoints carry it, so a checkpoint of other
settings is never resumed; the Prefect task caches on it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from planet.competitions import Competition, resolve
from planet.fileio import atomic_path, read_json, sha256_file, sha256_json, write_json_atomic
from planet.layout import CompetitionDirs
from planet.learn.recipe import Recipe
from planet.learn.weights import hub_file_candidates
from planet.store.sized import read_sized_manifest
from planet.store.split import Split, read_split

if TYPE_CHECKING:  # torch, torchvision and matplotlib load only when a stage really trains:
    # the cached path (fingerprints, completeness checks) stays light (~6 s of imports less)
    import torch

    from planet.learn.fit import BatchCallback, EpochCallback
    from planet.learn.loader import Loader
    from planet.learn.lr_finder import LRFinderResult
    from planet.store.sized import ImageData

CODE_VERSION = "1"
SPLIT_FILE = "split.parquet"
EXPORT_FILE = "export.pt"
VALID_BATCH_FACTOR = 2  # validation batches are this many times the training batch


class StageError(ValueError):
    """A stage that cannot run with this recipe and data (names the setting to change)."""


@dataclass(frozen=True)
class TrainData:
    """A size's train images and the split's train/valid selections of them."""

    images: ImageData
    train_names: list[str]
    valid_names: list[str]
    fingerprint: str


def history_table(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The history without per-batch losses, numbers rounded: for tables and logs."""
    return [
        {
            k: (round(v, 6) if isinstance(v, float) else v)
            for k, v in row.items()
            if k != "batch_losses"
        }
        for row in history
    ]


def models_dir(data_dir: str | Path, slug: str, recipe: Recipe) -> Path:
    return CompetitionDirs.of(data_dir, slug).models / recipe.run_name


def stage_file(out_dir: Path, index: int) -> Path:
    return out_dir / f"stage-{index + 1}.pt"


def stage_record_file(out_dir: Path, index: int) -> Path:
    return out_dir / f"stage-{index + 1}.json"


def read_split_file(data_dir: str | Path, slug: str) -> Split:
    path = CompetitionDirs.of(data_dir, slug).root / "shards" / SPLIT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the resize stage first")
    return read_split(path)


def data_fingerprint(data_dir: str | Path, slug: str, size: int) -> str:
    """A hash of the size's train shards (their manifest, with content hashes) and the split."""
    dirs = CompetitionDirs.of(data_dir, slug)
    folder = dirs.sized_shards(size, "train")
    try:
        manifest = read_sized_manifest(folder)
    except Exception as exc:
        raise StageError(
            f"the recipe trains at {size}px but {folder} holds no complete {size}px shards "
            f"({exc}); add {size} to the resize stage's sizes or change the recipe's stage size"
        ) from None
    split = read_split_file(data_dir, slug)
    return sha256_json({"sized": manifest, "train": split.train_names, "valid": split.valid_names})


def load_train_data(data_dir: str | Path, slug: str, size: int) -> TrainData:
    """The size's train images with the split's selections (images the resize left out as
    unreadable are dropped from them)."""
    from planet.store.sized import read_images

    fingerprint = data_fingerprint(data_dir, slug, size)
    images = read_images(CompetitionDirs.of(data_dir, slug).sized_shards(size, "train"))
    split = read_split_file(data_dir, slug)
    have = set(images.names)
    train = [n for n in split.train_names if n in have]
    valid = [n for n in split.valid_names if n in have]
    if not train or not valid:
        raise StageError(
            f"{slug} at {size}px: {len(train)} train and {len(valid)} validation images; "
            "both must be non-empty (check the resize stage's valid_pct)"
        )
    return TrainData(images, train, valid, fingerprint)


def init_fingerprint(recipe: Recipe) -> dict[str, Any] | None:
    """Which initial weights the first stage starts from (file name and size; None: random)."""
    if recipe.weights_path:
        path = Path(recipe.weights_path).expanduser()
        return {"file": path.name, "bytes": path.stat().st_size if path.is_file() else None}
    if recipe.pretrained:
        for path in hub_file_candidates(recipe.arch):
            if path.is_file():
                return {"file": path.name, "bytes": path.stat().st_size}
    return None


def stage_fingerprint(
    recipe: Recipe, index: int, previous_sha256: str | None, data_sha256: str
) -> str:
    """What stage `index`'s weights depend on (see the module doc)."""
    settings = recipe.model_dump(mode="json", exclude={"name", "stages"})
    settings.pop("weights_path", None)
    return sha256_json(
        {
            "code": CODE_VERSION,
            "recipe": settings,
            "init": None if previous_sha256 else init_fingerprint(recipe),
            "stage": recipe.stages[index].model_dump(mode="json"),
            "index": index,
            "previous": previous_sha256,
            "data": data_sha256,
        }
    )


def stage_complete(out_dir: Path, index: int, fingerprint: str) -> dict[str, Any] | None:
    """The record of a finished stage with this fingerprint whose weights file is intact."""
    try:
        record = read_json(stage_record_file(out_dir, index))
        weights = stage_file(out_dir, index)
        if record.get("fingerprint") != fingerprint or not weights.is_file():
            return None
        if weights.stat().st_size != record["bytes"]:
            return None
        return record
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _finder(
    model: torch.nn.Module,
    train: Loader,
    recipe: Recipe,
    task: str,
    out_dir: Path,
    index: int,
    fingerprint: str,
) -> LRFinderResult:
    """The LR finder's sweep for this stage, reused from lr_find-<i>.json when it was already
    run for the same fingerprint (a resumed stage does not sweep again)."""
    from planet.learn.lr_finder import LRFinderResult, lr_find
    from planet.report import plots

    path = out_dir / f"lr_find-{index + 1}.json"
    try:
        saved = read_json(path)
        if saved.get("fingerprint") == fingerprint:
            return LRFinderResult.from_json(saved["result"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    result = lr_find(
        model,
        train,
        task=task,  # type: ignore[arg-type]
        num_it=recipe.lr_find_iterations,
        weight_decay=recipe.weight_decay,
    )
    if not result.lrs:
        raise StageError("the LR finder's loss diverged at once; check the data and the model")
    plots.write_png(
        out_dir / f"lr_find-{index + 1}.png",
        plots.lr_finder_png(result.lrs, result.raw_losses, result.suggestions),
    )
    write_json_atomic(path, {"fingerprint": fingerprint, "result": result.to_json()})
    return result


def run_stage(
    data_dir: str | Path,
    competition: str | Competition,
    recipe: Recipe,
    index: int,
    *,
    previous: Path | None = None,
    device: str = "auto",
    workers: int = 2,
    channels_last: bool | None = None,  # None: on (measured +15-25% steps on this CPU)
    compile_model: bool = False,
    on_epoch: EpochCallback | None = None,
    on_batch: BatchCallback | None = None,
    on_lr_find: Callable[[LRFinderResult], None] | None = None,
) -> dict[str, Any]:
    """Train stage `index` of `recipe` from `previous` (a stage bundle; None: the backbone's
    initial weights); returns the stage's record (also written as stage-<i>.json)."""
    import torch

    from planet.constants import IMAGENET_MEAN, IMAGENET_STD
    from planet.learn.augment import Augment
    from planet.learn.fit import fit_one_cycle, resolve_device
    from planet.learn.loader import Loader
    from planet.learn.model import create_model, export_bundle, load_bundle
    from planet.report import plots

    comp = competition if isinstance(competition, Competition) else resolve(competition)
    if not 0 <= index < len(recipe.stages):
        raise StageError(f"stage {index + 1} asked for; the recipe has {len(recipe.stages)}")
    stage = recipe.stages[index]
    t0 = time.perf_counter()
    out_dir = models_dir(data_dir, comp.slug, recipe)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = load_train_data(data_dir, comp.slug, stage.size)
    previous_sha = sha256_file(previous) if previous is not None else None
    fingerprint = stage_fingerprint(recipe, index, previous_sha, data.fingerprint)
    done = stage_complete(out_dir, index, fingerprint)
    if done is not None:
        return done

    dev = resolve_device(device)
    cl = True if channels_last is None else channels_last  # faster on CUDA and the CPU
    torch.manual_seed(recipe.seed * 1000 + index)
    if previous is None:
        model = create_model(
            recipe.arch,
            len(comp.classes),
            pretrained=recipe.pretrained,
            weights_path=recipe.weights_path,
        )
    else:
        bundle = load_bundle(previous)
        if bundle.arch != recipe.arch or tuple(bundle.classes) != tuple(comp.classes):
            raise StageError(
                f"{previous} holds a {bundle.arch} for {len(bundle.classes)} classes; "
                f"the recipe needs a {recipe.arch} for {comp.slug}"
            )
        model = bundle.model
    model.to(dev)
    if cl:
        model.to(memory_format=torch.channels_last)
    if stage.frozen:
        model.freeze()
    else:
        model.unfreeze()
    seed = recipe.seed * 1000 + index
    common = dict(device=dev, seed=seed, workers=workers, channels_last=cl)
    train = Loader(
        data.images,
        data.train_names,
        batch_size=stage.batch_size,
        shuffle=True,
        drop_last=len(data.train_names) >= stage.batch_size,
        augment=Augment() if recipe.augment else None,
        **common,
    )
    valid = Loader(
        data.images,
        data.valid_names,
        batch_size=stage.batch_size * VALID_BATCH_FACTOR,
        **common,
    )
    finder = None
    if stage.runs_finder:
        finder = _finder(model, train, recipe, comp.task, out_dir, index, fingerprint)
        if on_lr_find is not None:
            on_lr_find(finder)
    suggestion = finder.suggestion(recipe.lr_suggestion) if finder else None
    n_groups = len(model.param_groups())
    lrs = stage.lr_spec.group_lrs(n_groups, suggestion)
    step_model = torch.compile(model) if compile_model else None
    fit = fit_one_cycle(
        model,
        train,
        valid,
        task=comp.task,
        epochs=stage.epochs,
        lrs=lrs,
        weight_decay=recipe.weight_decay,
        checkpoint_dir=out_dir / f"stage-{index + 1}.ckpt",
        key=fingerprint,
        on_epoch=on_epoch,
        on_batch=on_batch,
        step_model=step_model,
    )
    weights = stage_file(out_dir, index)
    export_bundle(
        model,
        weights,
        classes=comp.classes,
        size=stage.size,
        task=comp.task,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        extra={"recipe": recipe.run_name, "stage": index + 1, "fingerprint": fingerprint},
    )
    plots.write_png(out_dir / f"losses-{index + 1}.png", plots.losses_png(fit.history))
    record = {
        "stage": index + 1,
        "describe": stage.describe(),
        "fingerprint": fingerprint,
        "weights": str(weights.relative_to(out_dir.parents[1])),
        "sha256": sha256_file(weights),
        "bytes": weights.stat().st_size,
        "lrs": lrs,
        "lr_find": (
            {
                "suggestions": finder.suggestions,
                "used": recipe.lr_suggestion,
                "points": len(finder.lrs),
            }
            if finder
            else None
        ),
        "history": fit.history,
        "resumed_from_epoch": fit.resumed_from,
        "epochs_run": fit.epochs_run,
        "train_images": len(data.train_names),
        "valid_images": len(data.valid_names),
        "device": str(dev),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_json_atomic(stage_record_file(out_dir, index), record)
    _remove_checkpoints(out_dir / f"stage-{index + 1}.ckpt")
    return record


def _remove_checkpoints(folder: Path) -> None:
    if folder.is_dir():
        for p in folder.iterdir():
            p.unlink(missing_ok=True)
        folder.rmdir()


def export(out_dir: Path, last_index: int) -> dict[str, Any]:
    """Copy the last stage's bundle to export.pt for the predict stage; its record."""
    src = stage_file(out_dir, last_index)
    dest = out_dir / EXPORT_FILE
    if not dest.is_file() or sha256_file(dest) != sha256_file(src):
        with atomic_path(dest) as tmp:
            tmp.write_bytes(src.read_bytes())
    return {
        "bundle": str(dest.relative_to(out_dir.parents[1])),
        "sha256": sha256_file(dest),
        "bytes": dest.stat().st_size,
    }


def summary_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-epoch rows over all stages (stage number first), for one table."""
    rows = []
    for rec in records:
        for row in history_table(rec["history"]):
            rows.append({"stage": rec["stage"], **row})
    return rows
