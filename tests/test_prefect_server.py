"""flows.prefect_server: `planet server` runs Prefect with SQLite transactions that begin
IMMEDIATE (they wait for the lock instead of failing with a 503)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from prefect.server.database.configurations import SQLITE_BEGIN_MODE, AioSqliteConfiguration

from flows.prefect_server import immediate_sqlite_transactions
from flows.server import server_command


class FakeSession:
    """Records the BEGIN mode in force when the transaction starts."""

    def __init__(self) -> None:
        self.modes: list[str | None] = []

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[str]:
        self.modes.append(SQLITE_BEGIN_MODE.get())
        yield "transaction"


async def _open(config: AioSqliteConfiguration, session: FakeSession) -> None:
    async with config.begin_transaction(session) as transaction:  # type: ignore[arg-type]
        assert transaction == "transaction"
    async with config.begin_transaction(session, with_for_update=True):  # type: ignore[arg-type]
        pass


def test_sqlite_transactions_begin_immediate_once_patched(monkeypatch: pytest.MonkeyPatch) -> None:
    original = AioSqliteConfiguration.begin_transaction
    monkeypatch.setattr(AioSqliteConfiguration, "begin_transaction", original)  # restored after
    config = AioSqliteConfiguration(connection_url="sqlite+aiosqlite:///:memory:")

    before = FakeSession()
    asyncio.run(_open(config, before))
    assert before.modes == ["DEFERRED", "IMMEDIATE"]  # Prefect's own behaviour

    immediate_sqlite_transactions()
    immediate_sqlite_transactions()  # idempotent: not wrapped twice
    after = FakeSession()
    asyncio.run(_open(config, after))
    assert after.modes == ["IMMEDIATE", "IMMEDIATE"]
    assert SQLITE_BEGIN_MODE.get() is None  # reset once the transaction is over


def test_planet_server_runs_prefect_through_the_patch() -> None:
    command = server_command("127.0.0.1", 4200)
    assert command[1:5] == ["-m", "flows.prefect_server", "server", "start"]
    assert command[command.index("--host") + 1] == "127.0.0.1"
