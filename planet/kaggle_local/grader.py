"""Score a submission CSV against a competition's hidden `_private/solution.csv`, like Kaggle.

The grader is chosen by the competition's metric (`planet.competitions.resolve(slug).metric`):

* `mean_f2` (Planet): submission `image_name,tags` (space-separated tags) against a solution
  `image_name,tags,Usage`; mean per-image F2 over the 17 tags.
* `log_loss` (Dogs vs Cats): submission `id,label` (label = P(dog)) against a solution
  `id,label,Usage` (label 0/1).

Rows whose `Usage` is `Public` give the public score, `Private` rows the private score; a
solution without a `Usage` column counts every row as Public. A malformed submission (bad
columns, missing/extra/duplicate ids, unparsable values) gives an error message instead of
scores, as Kaggle marks such a submission "error". A solution file that cannot be used is the
server's problem, not the submitter's: `check_solution` refuses it when the server starts
(columns, values, the ids of the sample submission), naming the file, and a grading error it
still causes names the file and says the submission was not at fault.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from planet.competitions import Competition, resolve
from planet.learn.metrics import fbeta_samples, log_loss

log = logging.getLogger(__name__)

USAGES = ("Public", "Private")
_MAX_EXAMPLES = 3


class GradingError(ValueError):
    """The submission can't be scored; the message says why (shown to the submitter)."""


class SolutionError(ValueError):
    """The hidden solution file itself is unusable (a server-side setup problem)."""


@dataclass(frozen=True)
class GradeResult:
    """Scores of one submission, or the error that stopped it being scored."""

    public_score: float | None = None
    private_score: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def grade_file(
    slug: str, submission: str | os.PathLike[str], solution: str | os.PathLike[str]
) -> GradeResult:
    """Grade the submission file against the solution file; never raises for bad input."""
    try:
        comp = resolve(slug)
    except ValueError:
        return GradeResult(
            error=f"no grader for competition {slug!r}: it is not a known competition"
        )
    solution = Path(solution)
    if not solution.is_file():
        return GradeResult(error=f"competition {slug!r} has no solution file to grade against")
    try:
        sub_text = _read_text(Path(submission), "submission")
        sol_text = _read_text(solution, "solution")
        public, private = grade_texts(comp, sub_text, sol_text)
    except GradingError as exc:
        return GradeResult(error=str(exc))
    except SolutionError as exc:
        return GradeResult(
            error=f"the local server's solution file {solution} is unusable ({exc}); this is not "
            "the submission's fault: fix the solution, restart the server and submit the same "
            "file again (planet run --stages submit --submit --resubmit)"
        )
    return GradeResult(public_score=public, private_score=private)


def grade_texts(
    comp: Competition, submission: str, solution: str
) -> tuple[float | None, float | None]:
    """(public score, private score) of a submission's CSV text; raises GradingError."""
    id_col, value_col = comp.submission_columns
    truth = _read_solution(solution, id_col, value_col)
    pred = _read_submission(submission, id_col, value_col)
    _check_ids(id_col, pred, truth)
    scores: dict[str, float | None] = {}
    for usage in USAGES:
        ids = [i for i, (_, u) in truth.items() if u == usage]
        if not ids:
            scores[usage] = None
        elif comp.metric == "mean_f2":
            scores[usage] = _mean_f2(comp, ids, pred, truth)
        elif comp.metric == "log_loss":
            scores[usage] = _log_loss(ids, pred, truth, id_col, value_col)
        else:  # pragma: no cover - competitions.py only defines the two metrics above
            raise GradingError(f"no grader for metric {comp.metric!r}")
    return scores["Public"], scores["Private"]


def _read_text(path: Path, what: str) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise (SolutionError if what == "solution" else GradingError)(
            f"could not read the {what} file: {exc.strerror}"
        ) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise (SolutionError if what == "solution" else GradingError)(
            f"the {what} file is not UTF-8 text"
        ) from None


def _rows(
    text: str, required: tuple[str, ...], what: str, err: type[ValueError]
) -> dict[str, list[str]]:
    """The required columns of a CSV text, cells stripped, blank lines left out."""
    import pandas as pd

    from planet.store.frames import blank_rows, read_csv_frame

    try:
        frame = read_csv_frame(io.BytesIO(text.encode("utf-8")), strict=True)
    except pd.errors.EmptyDataError:
        raise err(f"the {what} is empty: expected a header row {','.join(required)}") from None
    except pd.errors.ParserError as exc:
        raise err(f"the {what} has the wrong number of fields{_where(text, exc)}") from None
    header = list(frame.columns)
    missing = [c for c in required if c not in header]
    if missing:
        raise err(
            f"the {what} is missing column(s) {', '.join(missing)}: expected columns "
            f"{','.join(required)}, found {','.join(header)}"
        )
    extra = [c for c in header if c not in required]
    if extra:
        raise err(
            f"the {what} has unexpected column(s) {', '.join(extra)}: expected exactly "
            f"{','.join(required)}"
        )
    frame = frame[~blank_rows(frame)]
    return {c: frame[c].str.strip().tolist() for c in required}


def _where(text: str, exc: Exception) -> str:
    """` on line N`: the line pyarrow's "Expected 2 columns, got 3: <row>" quotes."""
    quoted = re.search(r"got \d+: (.*)", str(exc), re.S)
    lines = text.splitlines()
    row = quoted.group(1).rstrip("\r\n") if quoted else None
    return f" on line {lines.index(row) + 1}" if row in lines else ""


def _has_usage(text: str) -> bool:
    """Whether the CSV's header row names a Usage column."""
    header = text.split("\n", 1)[0]
    return "Usage" in [h.strip().strip('"') for h in header.split(",")]


def _read_solution(text: str, id_col: str, value_col: str) -> dict[str, tuple[str, str]]:
    """id -> (value, Usage); without a Usage column every row is Public."""
    truth: dict[str, tuple[str, str]] = {}
    columns = (id_col, value_col, "Usage") if _has_usage(text) else (id_col, value_col)
    cols = _rows(text, columns, "solution", SolutionError)
    usages = cols.get("Usage") or ["Public"] * len(cols[id_col])
    for key, value, usage in zip(cols[id_col], cols[value_col], usages, strict=True):
        if usage not in USAGES:
            raise SolutionError(
                f"solution row {key!r} has Usage {usage!r}: expected Public or Private"
            )
        if key in truth:
            raise SolutionError(f"solution has {id_col} {key!r} twice")
        truth[key] = (value, usage)
    return truth


def _read_submission(text: str, id_col: str, value_col: str) -> dict[str, str]:
    pred: dict[str, str] = {}
    dups: list[str] = []
    cols = _rows(text, (id_col, value_col), "submission", GradingError)
    for key, value in zip(cols[id_col], cols[value_col], strict=True):
        if key in pred:
            dups.append(key)
        pred[key] = value
    if dups:
        raise GradingError(
            f"the submission has {len(dups)} duplicate {id_col} value(s), e.g. {_examples(dups)}"
        )
    return pred


def _check_ids(id_col: str, pred: dict[str, str], truth: dict[str, tuple[str, str]]) -> None:
    missing = [k for k in truth if k not in pred]
    extra = [k for k in pred if k not in truth]
    problems = []
    if missing:
        problems.append(f"is missing {len(missing)} {id_col} value(s), e.g. {_examples(missing)}")
    if extra:
        problems.append(f"has {len(extra)} unexpected {id_col} value(s), e.g. {_examples(extra)}")
    if problems:
        raise GradingError(
            f"the submission {' and '.join(problems)}; it must have exactly one row for each "
            f"of the {len(truth)} test {id_col} values"
        )


def _examples(keys: list[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:_MAX_EXAMPLES])
    return shown + (" ..." if len(keys) > _MAX_EXAMPLES else "")


def _multi_hot(
    comp: Competition, tags: str, key: str, what: str, err: type[ValueError]
) -> np.ndarray:
    index = {c: i for i, c in enumerate(comp.classes)}
    row = np.zeros(len(comp.classes), dtype=bool)
    for tag in tags.split():
        if tag not in index:
            raise err(
                f"the {what} row for {key!r} has unknown tag {tag!r}; valid tags are "
                f"{' '.join(comp.classes)}"
            )
        row[index[tag]] = True
    return row


def _mean_f2(
    comp: Competition,
    ids: list[str],
    pred: dict[str, str],
    truth: dict[str, tuple[str, str]],
) -> float:
    y_true = np.stack([_multi_hot(comp, truth[k][0], k, "solution", SolutionError) for k in ids])
    y_pred = np.stack([_multi_hot(comp, pred[k], k, "submission", GradingError) for k in ids])
    return fbeta_samples(y_true, y_pred, beta=2.0)


def _log_loss(
    ids: list[str],
    pred: dict[str, str],
    truth: dict[str, tuple[str, str]],
    id_col: str,
    value_col: str,
) -> float:
    y = np.empty(len(ids))
    p = np.empty(len(ids))
    for i, key in enumerate(ids):
        label = truth[key][0]
        if label not in ("0", "1"):
            raise SolutionError(
                f"solution {value_col} for {id_col} {key!r} is {label!r}: expected 0 or 1"
            )
        y[i] = float(label)
        try:
            p[i] = float(pred[key])
        except ValueError:
            raise GradingError(
                f"the submission {value_col} for {id_col} {key!r} is {pred[key]!r}: expected a "
                "probability between 0 and 1"
            ) from None
        if not math.isfinite(p[i]):
            raise GradingError(f"the submission {value_col} for {id_col} {key!r} is not finite")
    return log_loss(y, p)


def check_solution(
    slug: str, solution: str | os.PathLike[str], sample: str | os.PathLike[str] | None = None
) -> list[str]:
    """Check a competition's hidden solution file before serving it; its warnings (a missing
    Usage column: every row Public). A sample submission that cannot be read (the tests' random
    bytes) is not compared with.
    Raises SolutionError naming the file: unreadable, wrong columns, bad Usage or values,
    duplicate ids, or ids other than the sample submission's (`sample`: CSV or zipped CSV)."""
    comp = resolve(slug)
    solution = Path(solution)
    warnings: list[str] = []
    id_col, value_col = comp.submission_columns
    try:
        text = _read_text(solution, "solution")
        truth = _read_solution(text, id_col, value_col)
        if not truth:
            raise SolutionError("it has no rows")
        for key, (value, _) in truth.items():
            if comp.metric == "mean_f2":
                _multi_hot(comp, value, key, "solution", SolutionError)
            elif value not in ("0", "1"):
                raise SolutionError(f"{value_col} for {id_col} {key!r} is {value!r}: expected 0/1")
    except SolutionError as exc:
        raise SolutionError(f"solution file {solution}: {exc}") from None
    if not _has_usage(text):
        warnings.append(
            f"solution file {solution} has no Usage column: every row counts as Public (add "
            "Usage = Public/Private per row for a private score)"
        )
    if sample is None:
        return warnings
    sample = Path(sample)
    try:
        wanted = _sample_ids(sample, id_col)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:  # pandas' errors are ValueErrors
        log.info("not comparing %s with %s: cannot read it (%s)", solution, sample, exc)
        return warnings
    missing = [k for k in wanted if k not in truth]
    extra = [k for k in truth if k not in wanted]
    if missing or extra:
        problems = []
        if missing:
            problems.append(f"lacks {len(missing)} {id_col} value(s), e.g. {_examples(missing)}")
        if extra:
            problems.append(
                f"has {len(extra)} {id_col} value(s) it does not, e.g. {_examples(extra)}"
            )
        raise SolutionError(
            f"solution file {solution} does not match the sample submission {sample.name}: it "
            f"{' and '.join(problems)}; it needs exactly one row per {id_col} of the sample"
        )
    return warnings


def _sample_ids(sample: Path, id_col: str) -> list[str]:
    """The first column's ids of a sample submission (a CSV, or a zip holding one)."""
    if sample.suffix == ".zip":
        with zipfile.ZipFile(sample) as zf:
            names = [n for n in zf.namelist() if n.endswith(".csv")]
            if not names:
                raise ValueError("the zip holds no .csv")
            data = zf.read(names[0])
    else:
        data = sample.read_bytes()
    from planet.store.frames import read_csv_frame

    frame = read_csv_frame(io.BytesIO(data))
    if list(frame.columns[:1]) != [id_col]:
        raise ValueError(f"its first column is not {id_col}")
    return [key.strip() for key in frame.iloc[:, 0].tolist() if key.strip()]
