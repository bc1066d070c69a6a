"""The Alembic history builds exactly the schema of schema.py."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from tether.store import migrations, schema, sqlite


def test_migrations_match_schema(tmp_path: Path) -> None:
    engine = sqlite.engine_for(f"sqlite:///{tmp_path}/m.db")
    with engine.begin() as conn:
        migrations.upgrade(conn)
        migrations.upgrade(conn)  # idempotent
        diff = compare_metadata(MigrationContext.configure(conn), schema.metadata)
    engine.dispose()
    assert diff == []


def test_head_is_the_newest_revision(tmp_path: Path) -> None:
    """`migrations.HEAD` (a store there skips alembic at start) is alembic's head."""
    from alembic.script import ScriptDirectory

    assert ScriptDirectory.from_config(migrations.config()).get_current_head() == migrations.HEAD
    engine = sqlite.engine_for(f"sqlite:///{tmp_path}/h.db")
    with engine.begin() as conn:
        assert migrations.current(conn) is None
        migrations.upgrade(conn)
        assert migrations.current(conn) == migrations.HEAD
    engine.dispose()
