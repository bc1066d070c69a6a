"""`python -m tether.store.migrations <sqlite URL>`: bring an embedded store to the current
schema. `tether serve` runs it apart (store/sqlite.py `_migrate_apart`), so that alembic never
stays in a serving process's memory."""

from __future__ import annotations

import sys

from tether.store import migrations
from tether.store.sqlite import engine_for


def main(url: str) -> None:
    engine = engine_for(url)
    try:
        with engine.begin() as conn:
            migrations.upgrade(conn)
    finally:
        engine.dispose()


if __name__ == "__main__":
    main(sys.argv[1])
