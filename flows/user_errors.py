"""The errors a `planet` command reports as one line (what, where, what to do) rather than a
traceback: bad input, bad settings, Kaggle's refusals, missing files. Anything else is a bug
and keeps its traceback.

Prefect logs a failed flow run's exception with its traceback at every level (the task, each
subflow, the pipeline: three tracebacks and the message nine times for one missing
credential). On the console, unless --verbose, `QuietExpectedErrors` drops those records for
the expected errors: the command's last line says it once. Prefect's API log handler is not
touched: the run's page in the UI keeps the whole story.
"""

from __future__ import annotations

import logging
import re
from functools import cache

EXIT_RUNTIME = 1  # a setting or input refused, a service refusing: fix it and rerun
EXIT_USAGE = 2  # a command line that cannot be read (argparse's code)
_FAILED_WITH = re.compile(r"encountered an exception:? (\w+)")


@cache
def expected_errors() -> tuple[type[BaseException], ...]:
    """The exception classes that are reported as one line (their subclasses too)."""
    from planet.extract.members import ArchiveError
    from planet.kaggle import KaggleError
    from planet.store.shards import ShardError

    return (KaggleError, ArchiveError, ShardError, ValueError, OSError)


def is_expected(exc: BaseException) -> bool:
    return isinstance(exc, expected_errors())


def _class_names() -> set[str]:
    names: set[str] = set()
    todo: list[type] = list(expected_errors())
    while todo:
        cls = todo.pop()
        if cls.__name__ not in names:
            names.add(cls.__name__)
            todo.extend(cls.__subclasses__())
    return names


class QuietExpectedErrors(logging.Filter):
    """Drop the console records that report an expected error: those carrying one as exc_info
    ("Encountered exception during execution" + traceback) and the "Finished in state
    Failed(... encountered an exception <ExpectedError>: ...)" lines (see the module doc).
    After a Ctrl-C (`interrupted`), every error's: what fails then is the fallout (a Dask
    client closed under a task, ...), and the command's "interrupted" line says what happened."""

    interrupted = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            return not (self.interrupted or is_expected(record.exc_info[1]))
        if record.levelno < logging.INFO or not record.name.startswith("prefect"):
            return True
        match = _FAILED_WITH.search(record.getMessage())
        return not (match and (self.interrupted or match.group(1) in _class_names()))
