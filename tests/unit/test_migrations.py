"""The Alembic history builds exactly the schema of schema.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

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


def test_a_serving_process_migrates_apart_and_never_holds_alembic(tmp_path: Path) -> None:
    """`tether serve` on a new store: migrated by a child process; alembic is not imported."""
    url = f"sqlite:///{tmp_path}/served.db"
    script = (
        "import sys\n"
        "from tether.store import migrations\n"
        "from tether.store.sqlite import SQLite\n"
        f"db = SQLite.open({url!r}, serve=True)\n"
        "with db.engine.connect() as conn:\n"
        "    print(migrations.current(conn), 'alembic' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [migrations.HEAD, "False"]


def test_a_failed_migration_refuses_to_serve_and_says_why(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/newer.db"
    engine = sqlite.engine_for(url)
    with engine.begin() as conn:
        migrations.upgrade(conn)
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(sqlite.MigrationFailed, match="9999"):
        sqlite.SQLite.open(url, serve=True)
