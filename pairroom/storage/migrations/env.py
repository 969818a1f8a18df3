"""Alembic environment for the recorder's tables.

``SqlStore.open()`` runs the migrations on a connection it already holds, inside its own transaction,
and passes that connection in ``config.attributes["connection"]``. From the command line (``alembic -c
pairroom/storage/migrations/alembic.ini -x url=sqlite:///./pairroom.db upgrade head``) this module
opens its own async engine instead; ``--sql`` renders the SQL without connecting.
"""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from pairroom.storage.models import Base
from pairroom.storage.sql import normalize_db_url

config = context.config
if config.config_file_name is not None:  # the command line; the server configures its own logging
    fileConfig(config.config_file_name)
target_metadata = Base.metadata


def _cli_url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("no database URL: pass -x url=... or set sqlalchemy.url in alembic.ini")
    return normalize_db_url(url)


def _migrate(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def _migrate_from_cli() -> None:
    engine = create_async_engine(_cli_url())
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_migrate)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_cli_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif (connection := config.attributes.get("connection")) is not None:
    _migrate(connection)
else:
    asyncio.run(_migrate_from_cli())
