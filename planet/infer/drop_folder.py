"""A drop folder predicted again and again: only content not seen before goes through the model.

`update_drop_folder(source, model, out)` keeps, beside the CSV `out`, a seen index
`<out stem>.seen.json`:

    fingerprint   what the rows depend on (the model's sha256, the fitted thresholds or clip,
                  TTA, beta, resize method, the CSV's columns): another one starts afresh
    results       content sha256 -> the row's cells after the name
    names         image name -> content sha256, in the order first seen

Each run reads every file of the source (any source `planet.infer.image_source` reads) and
hashes its bytes; an image whose content is already in `results` is not predicted again,
whatever its name: a copy under a new name gets the stored result as its row. A name whose
content changed is predicted again and its row replaced. Files that left the folder keep their
rows (the CSV is the history of what was dropped). Bad files are listed every run and never
remembered, so a file still being copied when a run reads it is predicted by a later run.

The index is rewritten (atomically) every `checkpoint` new images and at the end, then the CSV
is rewritten from it (atomically), so an interrupted run loses at most `checkpoint` images'
work and never leaves a half-written file. One run at a time per output folder (a lock).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from planet.fileio import folder_lock, read_json, sha256_bytes, sha256_json, write_json_atomic
from planet.infer.image_source import BadFile, Item, SourceImage, read_source
from planet.infer.new_images import DEFAULT_BATCH, Predictor, write_rows

FORMAT = "planet-seen-images"
FORMAT_VERSION = 1
CHECKPOINT = 2048  # new images between two writes of the seen index


def seen_path(out: str | os.PathLike[str]) -> Path:
    """The seen index of the CSV `out`."""
    out = Path(out)
    return out.with_name(f"{out.stem}.seen.json")


def read_seen(path: Path, fingerprint: str) -> dict[str, Any]:
    """The seen index at `path` when it was made with `fingerprint`, else an empty one."""
    empty = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "results": {},
        "names": {},
    }
    try:
        index = read_json(path)
    except (OSError, ValueError):
        return empty
    if (
        not isinstance(index, dict)
        or index.get("format") != FORMAT
        or index.get("format_version") != FORMAT_VERSION
        or index.get("fingerprint") != fingerprint
        or not isinstance(index.get("results"), dict)
        or not isinstance(index.get("names"), dict)
    ):
        return empty
    return index


def update_drop_folder(
    source: str | os.PathLike[str],
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    probabilities: bool = False,
    thresholds: str | os.PathLike[str] | None = None,
    tta: bool | None = None,
    beta: float | None = None,
    method: str | None = None,
    device: str = "auto",
    batch_size: int = DEFAULT_BATCH,
    checkpoint: int = CHECKPOINT,
    precision: str = "auto",
) -> dict[str, Any]:
    """Predict the images of `source` not seen before into the CSV `out` (see the module doc);
    counts of what was predicted, reused and already there, and the bad files."""
    out = Path(out)
    predictor = Predictor(
        model,
        thresholds=thresholds,
        tta=tta,
        beta=beta,
        method=method,
        device=device,
        probabilities=probabilities,
        precision=precision,
    )
    index_path = seen_path(out)
    fingerprint = sha256_json(predictor.fingerprint())
    counts = {"predicted": 0, "copies": 0, "unchanged": 0}
    bad: list[dict[str, str]] = []
    out.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(out.parent):
        index = read_seen(index_path, fingerprint)
        results: dict[str, list[str]] = index["results"]
        names: dict[str, str] = index["names"]
        images = read_source(source)
        new_names: dict[str, list[str]] = {}  # sha256 -> names waiting for its prediction

        def unseen() -> Iterator[Item]:
            for item in images:
                if isinstance(item, BadFile):
                    yield item
                    continue
                sha = sha256_bytes(item.data)
                if sha in results:
                    counts["unchanged" if names.get(item.name) == sha else "copies"] += 1
                    names[item.name] = sha
                elif sha in new_names:  # the same content twice in this run: predicted once
                    new_names[sha].append(item.name)
                else:
                    new_names[sha] = [item.name]
                    yield SourceImage(sha, item.where, item.data)  # named by its content

        since = 0
        for result in predictor.predict(unseen(), batch_size):
            if isinstance(result, BadFile):
                bad.append({"file": result.where, "reason": result.reason})
                continue
            image, row = result
            sha = image.name
            results[sha] = row[1:]
            waiting = new_names.pop(sha)
            for name in waiting:
                names.pop(name, None)  # a name whose content changed moves to the end
                names[name] = sha
            counts["predicted"] += 1
            counts["copies"] += len(waiting) - 1
            since += 1
            if since >= checkpoint:
                write_json_atomic(index_path, index)
                since = 0
        for waiting in new_names.values():  # undecodable: those names are bad files too
            for name in waiting[1:]:
                bad.append({"file": name, "reason": "the same bytes as a bad file"})
        write_json_atomic(index_path, index)
        write_rows(out, predictor.header, ([name, *results[sha]] for name, sha in names.items()))
    return {
        "out": str(out),
        "seen_index": str(index_path),
        "source": str(source),
        "rows": len(names),
        **counts,
        "bad": bad,
        "ignored": images.ignored,
        **predictor.describe(),
    }
