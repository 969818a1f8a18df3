"""Bringing a database's schema to head with SQLAlchemy and Alembic.

PostgreSQL nodes run this at every ``open()``. A SQLite node runs it only for a file an older release
made (a new file gets ``statements.SQLITE_SCHEMA``, one at head is left alone), so SQLAlchemy is
imported there only then. Alembic (with Mako and Pygments, about 11 MiB that would stay resident) is
imported only when a migration has to run.
"""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import Connection, create_engine, event, inspect, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from pairroom.storage.models import Base
from pairroom.storage.statements import CREATE_STAMP_TABLE, HEAD_REVISION, SELECT_STAMP, STAMP_HEAD, MigrationError

_MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def upgrade_to_head(connection: Connection) -> None:
    """Bring the schema to ``HEAD_REVISION`` on ``connection``, in its transaction: a database at
    head is left alone, a new one gets the models' tables and the head stamp directly (the test
    suite checks that equals migrating), an older one runs the migrations."""
    tables = set(inspect(connection).get_table_names())
    if "alembic_version" in tables:
        versions = [row[0] for row in connection.execute(text(SELECT_STAMP))]
        if versions == [HEAD_REVISION]:
            return
    elif not tables:
        Base.metadata.create_all(connection)
        connection.execute(text(CREATE_STAMP_TABLE))
        connection.execute(text(STAMP_HEAD[0]), STAMP_HEAD[1])
        return
    _run_alembic(connection)


def upgrade_sqlite_file(database: str) -> None:
    """Migrate a SQLite file made by an older release to head, in one ``BEGIN IMMEDIATE``
    transaction (Alembic's SQLite migrations copy tables, which the driver's own transaction
    handling would split)."""
    from pairroom.storage.sqlite import set_pragmas

    engine = create_engine(f"sqlite:///{database}", poolclass=NullPool)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: object, _record: object) -> None:
        dbapi_connection.isolation_level = None  # type: ignore[attr-defined]  # we say BEGIN
        set_pragmas(dbapi_connection.execute, time.sleep)  # type: ignore[attr-defined]

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    try:
        with engine.begin() as conn:
            upgrade_to_head(conn)
    except SQLAlchemyError as exc:
        raise MigrationError(str(getattr(exc, "orig", None) or exc)) from exc
    finally:
        engine.dispose()


def _run_alembic(connection: Connection) -> None:
    """Run the migrations (``env.py`` reads the connection from the attributes)."""
    from alembic import command
    from alembic.config import Config
    from alembic.util import CommandError

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS_DIR).replace("%", "%%"))
    config.attributes["connection"] = connection
    try:
        command.upgrade(config, "head")
    except CommandError as exc:
        raise MigrationError(str(exc)) from exc
