"""``SqlStore``'s driver for PostgreSQL: SQLAlchemy's async engine on asyncpg, running the plain SQL
of ``statements.py``.

SQLAlchemy is kept here for its pool (pre-ping after a database restart), asyncpg's dialect and
Alembic's migrations; the statements themselves are the ones the SQLite driver runs. Writers of one
room take turns on an advisory lock on the room (SQLite's ``BEGIN IMMEDIATE`` serializes all
writers), so numbering the log cannot race; migrations hold an advisory lock of their own, so nodes
starting together do not race to create the tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from pairroom.storage import statements as sql
from pairroom.storage.statements import MigrationError, Statement
from pairroom.storage.store import LoadedRoom, NewUpdate, StoredUpdate

__all__ = ["PostgresDriver"]

_MIGRATION_LOCK_KEY = 0x7061_6972_7265_636F  # "pairreco": the advisory lock held while migrating
_PG_COMMAND_TIMEOUT_S = 30.0  # no statement (a lock wait included) hangs a writer forever
_PG_CONNECT_TIMEOUT_S = 10.0


class PostgresDriver:
    """The PostgreSQL database a ``SqlStore`` was given. Every method raises one of ``errors``."""

    # SQLAlchemy's wrapped driver errors, sockets that fail before the driver wraps anything
    # (refused, timed out, unknown host), and Alembic finding an unknown revision.
    errors: tuple[type[BaseException], ...] = (SQLAlchemyError, OSError, MigrationError)

    def __init__(self, url: str) -> None:
        try:
            self.url: URL = make_url(url)
        except ArgumentError as exc:
            raise ValueError(f"not a database URL: {exc}") from exc
        self._engine: AsyncEngine | None = None

    async def open(self) -> None:
        if self._engine is None:
            self._engine = create_async_engine(
                self.url,
                # After a database restart the pool holds dead connections; test each on checkout so
                # the first write afterwards succeeds instead of failing once per pooled connection.
                pool_pre_ping=True,
                connect_args={"timeout": _PG_CONNECT_TIMEOUT_S, "command_timeout": _PG_COMMAND_TIMEOUT_S},
            )
        from pairroom.storage.migrate import upgrade_to_head

        async with self._engine.begin() as conn:
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
            await conn.run_sync(upgrade_to_head)

    async def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.dispose()

    async def query(self, statement: str, params: sql.Params) -> list[tuple[Any, ...]]:
        async with self._require_engine().connect() as conn:
            return [tuple(row) for row in await conn.execute(text(statement), params)]

    async def transaction(self, statements: Sequence[Statement]) -> list[int]:
        counts = []
        async with self._require_engine().begin() as conn:
            for statement, params in statements:
                if isinstance(params, Mapping) or params:
                    result = await conn.execute(text(statement), params)  # a list: executemany
                    counts.append(max(result.rowcount or 0, 0))
                else:
                    counts.append(0)
        return counts

    async def load(self, room: str) -> LoadedRoom:
        async with self._require_engine().connect() as conn:
            row = (await conn.execute(text(sql.SELECT_NEWEST_SNAPSHOT), {"room": room})).first()
            snapshot = None if row is None else sql.stored_snapshot(room, row)
            updates = await _select_updates(conn, room, snapshot.seq if snapshot else 0, None)
        return sql.loaded_room(snapshot, updates)

    async def read_updates(self, room: str, after_seq: int, upto_seq: int | None) -> list[StoredUpdate]:
        async with self._require_engine().connect() as conn:
            return await _select_updates(conn, room, after_seq, upto_seq)

    async def append_many(self, batches: Mapping[str, Sequence[NewUpdate]], names: Sequence[str]) -> dict[str, int]:
        async with self._require_engine().begin() as conn:
            for room in names:
                await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:room))"), {"room": room})
            # Three statements whatever the number of rooms: what is stored, the last seqs, insert.
            stored: dict[tuple[str, str], bytes] = {}
            for statement, params in sql.stored_data_params(batches):
                result = await conn.execute(text(statement), params)
                stored.update(((room, uid), bytes(data)) for room, uid, data in result)
            statement, params = sql.last_seqs_params(names)
            result = await conn.execute(text(statement), params)
            lasts = {room: int(last) for room, last in result if last is not None}
            numbered, last_seqs = sql.number(batches, names, stored, lasts)
            if numbered:
                rows = [sql.update_row(room, seq, u) for room, seq, u in numbered]
                await conn.execute(text(sql.INSERT_UPDATE), rows)
            return last_seqs

    def _require_engine(self) -> AsyncEngine:
        assert self._engine is not None, "SqlStore checks that it is open"
        return self._engine


async def _select_updates(conn: AsyncConnection, room: str, after_seq: int, upto_seq: int | None) -> list[StoredUpdate]:
    statement, params = sql.select_updates(room, after_seq, upto_seq)
    return [sql.stored_update(room, row) for row in await conn.execute(text(statement), params)]
