"""Fresh PostgreSQL databases for tests, on the server named by ``PAIRROOM_TEST_PG``.

``make test`` runs ``scripts/ensure-postgres`` first and exports the URL it prints, so an unreachable
server is a broken test setup: tests fail saying so, they are never skipped.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import asyncpg
import pytest
from sqlalchemy.engine import URL, make_url

DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DATABASE_PREFIX = "pairroom_t_"
_CONNECT_TIMEOUT_S = 10.0


class PostgresUnavailable(RuntimeError):
    """The test PostgreSQL server could not be reached or refused to create a database."""


def server_url() -> URL:
    """The maintenance database URL of the test server (``PAIRROOM_TEST_PG``, read on each call)."""
    return make_url(os.environ.get("PAIRROOM_TEST_PG") or DEFAULT_SERVER_URL)


def _asyncpg_dsn(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


async def _run_on_server(sql: str) -> None:
    server = server_url()
    try:
        conn = await asyncpg.connect(_asyncpg_dsn(server), timeout=_CONNECT_TIMEOUT_S)
    except (OSError, asyncpg.PostgresError) as exc:
        raise PostgresUnavailable(
            f"the test PostgreSQL server at {server!r} is unreachable ({type(exc).__name__}: {exc}). "
            "Run scripts/ensure-postgres and export PAIRROOM_TEST_PG=<the URL it prints>, "
            "or use `make test`, which does both."
        ) from exc
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def create_database() -> str:
    """Create an empty, uniquely named database and return its ``postgresql+asyncpg://`` URL."""
    name = f"{DATABASE_PREFIX}{uuid.uuid4().hex[:16]}"
    await _run_on_server(f'CREATE DATABASE "{name}"')
    url = server_url().set(drivername="postgresql+asyncpg", database=name)
    return url.render_as_string(hide_password=False)


async def drop_database(url: str) -> None:
    """Drop a database made by ``create_database``, closing any connection still open to it."""
    name = make_url(url).database or ""
    if not name.startswith(DATABASE_PREFIX):
        raise ValueError(f"refusing to drop {name!r}: not a database made by create_database()")
    await _run_on_server(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def fresh_database() -> Iterator[str]:
    """The URL of a new database for the ``with`` block, dropped after it; fails the test if unreachable."""
    try:
        url = asyncio.run(create_database())
    except PostgresUnavailable as exc:
        unavailable = str(exc)
    else:
        unavailable = ""
    if unavailable:
        pytest.fail(unavailable, pytrace=False)  # outside the except block: one clean message
    try:
        yield url
    finally:
        asyncio.run(drop_database(url))


def database_fixture(scope: str = "module") -> Callable[..., Iterator[str]]:
    """A pytest fixture yielding the URL of a fresh database, dropped when the scope ends.

    The fixture is synchronous (it runs its own event loop for two statements), so any test, whatever
    its event loop scope, can use it: ``pg_url = database_fixture()`` in a test module.
    """

    @pytest.fixture(scope=scope)
    def _database() -> Iterator[str]:
        with fresh_database() as url:
            yield url

    return _database
