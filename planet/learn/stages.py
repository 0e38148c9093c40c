"""One recipe stage on a competition's workspace: the seed notebook's cell sequence

    data = src.transform(tfms, size=128).databunch()     read the sized shards + the split
    learn.load('stage-1')                                  the previous stage's weights
    learn.freeze() / learn.unfreeze()
    learn.lr_find(); learn.recorder.plot()                 when the stage asks for it
    learn.fit_one_cycle(5, slice(lr))                      checkpointed every epoch
    learn.save('stage-2')

as one function, `run_stage`, reading top to bottom. Outputs go to the run's folder
(`Workspace.model_run`, `models/<recipe run name>/`):

    stage-<i>.pt              the stage's weights as an inference bundle (`planet.learn.model`)
    stage-<i>.json            the stage's record: history, learning rates, finder, hashes
    stage-<i>.ckpt/           the last epoch's checkpoint while the stage runs
    lr_find-<i>.json / .png   the LR finder's sweep and plot
    losses-<i>.png            fast.ai's plot_losses
    export.pt                 the last stage's bundle, for the predict stage (`export`)

A stage's fingerprint (`stage_fingerprint`) hashes what its weights depend on: the recipe's
settings, the stage, the previous stage's weights (sha256), the training data (the sized
manifest and the split) and the code version. Checkpoints carry it, so a checkpoint of other
settings is never resumed; the Prefect task caches on it, and `ModelRun.stage_complete` (the
one answer to "is this stage done?") compares it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from planet.constants import IMAGENET_MEAN, IMAGENET_STD
from planet.fileio import atomic_path, read_json, sha256_file, sha256_json, write_json_atomic
from planet.learn.members import Fold, run_name
from planet.learn.recipe import Recipe, TrainStage
from planet.learn.weights import hub_file_candidates
from planet.workspace import ModelRun, Workspace

if TYPE_CHECKING:  # torch, torchvision and matplotlib load only when a stage really trains:
    # the cached path (fingerprints, completeness checks) stays light
    import torch

    from planet.learn.callbacks import Callback
    from planet.learn.loader import Loader
    from planet.learn.lr_finder import LRFinderResult
    from planet.learn.precision import Precision
    from planet.store.sized import ImageData
    from planet.store.split import Split

CODE_VERSION = "1"
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


def summary_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-epoch rows over all stages (stage number first), for one table."""
    return [
        {"stage": rec["stage"], **row} for rec in records for row in history_table(rec["history"])
    ]


def model_run(ws: Workspace, recipe: Recipe, fold: Fold | None = None) -> ModelRun:
    """The run folder of the recipe (holding out `fold`, for a k-fold member)."""
    return ws.model_run(run_name(recipe, fold))


def selection(split: Split, fold: Fold | None) -> tuple[list[str], list[str]]:
    """(train, valid) image names: the 80/20 split's, or all of them but fold k / fold k."""
    if fold is None:
        return split.train_names, split.valid_names
    if split.n_folds != fold.count:
        raise StageError(
            f"a {fold.count}-fold member needs a split with {fold.count} folds, the split has "
            f"{split.n_folds or 'none'}: run the resize stage with folds {fold.count}"
        )
    held_out = split.fold == fold.index
    names = split.names
    return [n for n, h in zip(names, held_out, strict=True) if not h], split.fold_names(fold.index)


def data_fingerprint(ws: Workspace, size: int, fold: Fold | None = None) -> str:
    """A hash of the size's train shards (their manifest, with content hashes) and the images
    the stage trains and validates on."""
    sized = ws.sized(size, "train")
    try:
        manifest = sized.read_manifest()
    except Exception as exc:
        raise StageError(
            f"the recipe trains at {size}px but {sized.folder} holds no complete {size}px shards "
            f"({exc}); add {size} to the resize stage's sizes or change the recipe's stage size"
        ) from None
    train, valid = selection(ws.split.read(), fold)
    return sha256_json({"sized": manifest, "train": train, "valid": valid})


def load_train_data(ws: Workspace, size: int, fold: Fold | None = None) -> TrainData:
    """The size's train images with the split's selections (images the resize left out as
    unreadable are dropped from them)."""
    fingerprint = data_fingerprint(ws, size, fold)
    images = ws.sized(size, "train").read()
    have = set(images.names)
    train_names, valid_names = selection(ws.split.read(), fold)
    train = [n for n in train_names if n in have]
    valid = [n for n in valid_names if n in have]
    if not train or not valid:
        raise StageError(
            f"{ws.slug} at {size}px: {len(train)} train and {len(valid)} validation images; "
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


def fingerprint(
    ws: Workspace,
    recipe: Recipe,
    index: int,
    previous_sha256: str | None,
    fold: Fold | None = None,
) -> str:
    """Stage `index`'s fingerprint on this workspace's data (StageError: a size not made)."""
    data = data_fingerprint(ws, recipe.stages[index].size, fold)
    return stage_fingerprint(recipe, index, previous_sha256, data)


def _finder(
    model: torch.nn.Module,
    train: Loader,
    recipe: Recipe,
    task: str,
    run: ModelRun,
    index: int,
    key: str,
    precision: Precision,
) -> LRFinderResult:
    """The LR finder's sweep for this stage, reused from lr_find-<i>.json when it was already
    run for the same fingerprint (a resumed stage does not sweep again)."""
    from planet.learn.lr_finder import LRFinderResult, lr_find
    from planet.report import plots

    path = run.lr_find(index)
    try:
        saved = read_json(path)
        if saved.get("fingerprint") == key:
            return LRFinderResult.from_json(saved["result"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    result = lr_find(
        model,
        train,
        task=task,  # type: ignore[arg-type]
        num_it=recipe.lr_find_iterations,
        weight_decay=recipe.weight_decay,
        precision=precision,
    )
    if not result.lrs:
        raise StageError("the LR finder's loss diverged at once; check the data and the model")
    plots.write_png(
        run.lr_find(index, ".png"),
        plots.lr_finder_png(result.lrs, result.raw_losses, result.suggestions),
    )
    write_json_atomic(path, {"fingerprint": key, "result": result.to_json()})
    return result


def _starting_model(ws: Workspace, recipe: Recipe, previous: Path | None) -> torch.nn.Module:
    """The backbone with its initial weights, or the previous stage's bundle."""
    from planet.learn.model import create_model, load_bundle

    comp = ws.competition
    if previous is None:
        return create_model(
            recipe.arch,
            len(comp.classes),
            pretrained=recipe.pretrained,
            weights_path=recipe.weights_path,
        )
    bundle = load_bundle(previous)
    if bundle.arch != recipe.arch or tuple(bundle.classes) != tuple(comp.classes):
        raise StageError(
            f"{previous} holds a {bundle.arch} for {len(bundle.classes)} classes; "
            f"the recipe needs a {recipe.arch} for {comp.slug}"
        )
    return bundle.model


def _loaders(
    data: TrainData, stage: TrainStage, recipe: Recipe, **common: Any
) -> tuple[Loader, Loader]:
    """The shuffled, augmented train loader and the validation loader of one stage."""
    from planet.learn.augment import Augment
    from planet.learn.loader import Loader

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
        data.images, data.valid_names, batch_size=stage.batch_size * VALID_BATCH_FACTOR, **common
    )
    return train, valid


def run_stage(
    ws: Workspace,
    recipe: Recipe,
    index: int,
    *,
    previous: Path | None = None,
    previous_sha256: str | None = None,
    device: str = "auto",
    workers: int = 2,
    channels_last: bool | None = None,  # None: on (faster here on the CPU, and on CUDA)
    compile_model: bool = False,
    callbacks: Sequence[Callback] = (),
    fold: Fold | None = None,
    precision: str = "auto",
) -> dict[str, Any]:
    """Train stage `index` of `recipe` from `previous` (a stage bundle; None: the backbone's
    initial weights; `previous_sha256`: its hash when the caller has it already); returns the
    stage's record (also written as stage-<i>.json). A stage
    already done (`ModelRun.stage_complete`) returns its record without training. `callbacks`
    hook into the fit (planet.learn.callbacks; `after_lr_find` hears the LR finder); `fold`:
    a k-fold member's held-out fold (planet.learn.members); `precision`: auto, fp32, bf16 or
    fp16 (planet.learn.precision), for the LR finder and the fit alike."""
    import torch

    from planet.learn.fit import fit_one_cycle, resolve_device
    from planet.learn.model import export_bundle
    from planet.learn.precision import choose_precision
    from planet.report import plots

    comp = ws.competition
    if not 0 <= index < len(recipe.stages):
        raise StageError(f"stage {index + 1} asked for; the recipe has {len(recipe.stages)}")
    stage = recipe.stages[index]
    t0 = time.perf_counter()
    run = model_run(ws, recipe, fold)
    run.folder.mkdir(parents=True, exist_ok=True)
    data = load_train_data(ws, stage.size, fold)
    previous_sha = None if previous is None else previous_sha256 or sha256_file(previous)
    key = stage_fingerprint(recipe, index, previous_sha, data.fingerprint)
    done = run.stage_complete(index, key)
    if done is not None:
        return done

    dev = resolve_device(device)
    chosen = choose_precision(dev, precision)  # ValueError naming the setting, before training
    cl = True if channels_last is None else channels_last
    seed = recipe.seed * 1000 + index
    torch.manual_seed(seed)
    model = _starting_model(ws, recipe, previous).to(dev)
    if cl:
        model.to(memory_format=torch.channels_last)
    if stage.frozen:
        model.freeze()
    else:
        model.unfreeze()
    train, valid = _loaders(
        data, stage, recipe, device=dev, seed=seed, workers=workers, channels_last=cl
    )
    finder = None
    if stage.runs_finder:
        finder = _finder(model, train, recipe, comp.task, run, index, key, chosen)
        for cb in callbacks:
            cb.after_lr_find(finder)
    suggestion = finder.suggestion(recipe.lr_suggestion) if finder else None
    lrs = stage.lr_spec.group_lrs(len(model.param_groups()), suggestion)
    fit = fit_one_cycle(
        model,
        train,
        valid,
        task=comp.task,
        epochs=stage.epochs,
        lrs=lrs,
        weight_decay=recipe.weight_decay,
        checkpoint_dir=run.checkpoints(index),
        key=key,
        callbacks=callbacks,
        precision=chosen,
        step_model=torch.compile(model) if compile_model else None,
    )
    weights = run.stage_weights(index)
    export_bundle(
        model,
        weights,
        classes=comp.classes,
        size=stage.size,
        task=comp.task,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        extra={"recipe": run.name, "stage": index + 1, "fingerprint": key},
    )
    plots.write_png(run.losses_picture(index), plots.losses_png(fit.history))
    record = {
        "stage": index + 1,
        "describe": stage.describe(),
        "fingerprint": key,
        "weights": ws.relative(weights),
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
        "precision": chosen.name,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_json_atomic(run.stage_record(index), record)
    _remove_checkpoints(run.checkpoints(index))
    return record


def _remove_checkpoints(folder: Path) -> None:
    if folder.is_dir():
        for p in folder.iterdir():
            p.unlink(missing_ok=True)
        folder.rmdir()


def export(
    ws: Workspace, recipe: Recipe, last_index: int, fold: Fold | None = None
) -> dict[str, Any]:
    """Copy the last stage's bundle to export.pt for the predict stage; its record."""
    run = model_run(ws, recipe, fold)
    src, dest = run.stage_weights(last_index), run.export
    if not dest.is_file() or sha256_file(dest) != sha256_file(src):
        with atomic_path(dest) as tmp:
            tmp.write_bytes(src.read_bytes())
    return {"bundle": ws.relative(dest), "sha256": sha256_file(dest), "bytes": dest.stat().st_size}


def exported_bundle(ws: Workspace, recipe: Recipe, fold: Fold | None = None) -> dict[str, Any]:
    """The trained recipe's export.pt as the predict stage keys on it (path, sha256) and the
    size its last stage trained at."""
    run = model_run(ws, recipe, fold)
    if not run.export.is_file():
        raise FileNotFoundError(
            f"{run.export} does not exist: train recipe {run.name} first (the train stage)"
        )
    return {
        "bundle": ws.relative(run.export),
        "sha256": sha256_file(run.export),
        "size": recipe.stages[-1].size,
    }
