"""Alembic migrations, applied on start by `upgrade`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, inspect, text

if TYPE_CHECKING:
    from alembic.config import Config

HERE = Path(__file__).parent
# The newest revision in versions/ (tests/unit/test_migrations.py holds it to alembic's
# head): a store already there starts without importing alembic (~7 MB of a server's memory).
HEAD = "0008"


def config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.attributes["connection"] = connection
    return cfg


def current(connection: Connection) -> str | None:
    """The revision the store is at (None: a new store)."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(connection: Connection) -> None:
    """Bring the schema to head (synchronous: async dialects call it through run_sync)."""
    if current(connection) == HEAD:
        return
    from alembic import command

    command.upgrade(config(connection), "head")
