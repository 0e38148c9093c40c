"""`python -m flows.prefect_server server start ...`: Prefect's own CLI, with SQLite write
transactions that wait for the database lock instead of failing (what `planet server` runs).

Why: Prefect 3.8 opens its SQLite transactions DEFERRED unless they lock rows. A transaction
that reads and then writes while another connection writes (the server's own event and
task-run recorder services, right after a flow's burst of task events) cannot wait for the
lock: SQLite answers "database is locked" at once, the API turns it into a 503 and the client
retries after 2 s plus jitter, 3-4 times in a cached pipeline run (bench/README.md). `BEGIN IMMEDIATE`
takes the write lock up front, so the transaction queues behind the writer (busy_timeout,
60 s) and no request fails. Reads that do not open a transaction are unaffected; on a
single-user local server the queueing costs milliseconds. PostgreSQL is not touched.
Upstream: PrefectHQ/prefect#18934 ("database is locked" logs on SQLite).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from typing import Any


def immediate_sqlite_transactions() -> None:
    """Make Prefect's SQLite `begin_transaction` always `BEGIN IMMEDIATE` (see the module doc)."""
    from prefect.server.database.configurations import AioSqliteConfiguration

    original = AioSqliteConfiguration.begin_transaction
    if getattr(original, "_planet_immediate", False):
        return

    @contextlib.asynccontextmanager
    async def begin_transaction(
        self: AioSqliteConfiguration, session: Any, with_for_update: bool = False
    ) -> AsyncIterator[Any]:
        async with original(self, session, with_for_update=True) as transaction:
            yield transaction

    begin_transaction._planet_immediate = True  # type: ignore[attr-defined]
    AioSqliteConfiguration.begin_transaction = begin_transaction  # type: ignore[method-assign]


def main() -> None:
    immediate_sqlite_transactions()
    from prefect.cli import app

    app()


if __name__ == "__main__":
    sys.argv[0] = "prefect"
    main()
