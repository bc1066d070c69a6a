"""The `tether` command: a thin shell over the server (`serve`, `worker`, `keys`) and, through
the SDK, a client of it (`chat`, `whoami`, `sessions`, `interrupts`, `agents`, `webhooks`:
tether/commands/)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console

from tether import commands
from tether.client import errors as client_errors
from tether.commands import common
from tether.config import Settings
from tether.errors import TetherError

if TYPE_CHECKING:
    from tether.store import Store

app = typer.Typer(
    help="Tether: stateful agent execution.", no_args_is_help=True, add_completion=False
)
console = Console()
T = TypeVar("T")


async def open_store(url: str) -> Store:
    """The store, imported only when a command needs it: the client commands start faster
    without the database libraries."""
    from tether import store

    return await store.open_store(url)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address")] = None,
    port: Annotated[int | None, typer.Option(help="port")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="where the SQLite store lives")] = None,
    workers: Annotated[
        int | None, typer.Option(help="concurrent turn executors (0: API only)")
    ] = None,
    store: Annotated[
        str | None, typer.Option(help="store URL (default: SQLite in data dir)")
    ] = None,
    bus: Annotated[str | None, typer.Option(help="bus URL, redis://… (cluster mode)")] = None,
    agents_file: Annotated[Path | None, typer.Option(help="YAML agent definitions to load")] = None,
    tools: Annotated[str | None, typer.Option(help="your tools: 'package.module:attr'")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning…")] = None,
) -> None:
    """Run the server: API, workers and the demo agent, on a local SQLite file by default."""
    from tether import startup

    options = {
        "host": host,
        "port": port,
        "data_dir": data_dir,
        "workers": workers,
        "store_url": store,
        "bus_url": bus,
        "agents_file": agents_file,
        "log_level": log_level,
        "tools": tools,
    }
    raise typer.Exit(startup.serve(options))


@app.command()
def worker(
    store: Annotated[str, typer.Option(help="store URL, postgresql://…")],
    bus: Annotated[str, typer.Option(help="bus URL, redis://…")],
    concurrency: Annotated[
        int | None, typer.Option(help="turns this process runs at once (TETHER_WORKERS)")
    ] = None,
    zone: Annotated[str | None, typer.Option(help="the zone this worker serves")] = None,
    tools: Annotated[str | None, typer.Option(help="your tools: 'package.module:attr'")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning…")] = None,
) -> None:
    """Run turns for a cluster (no API): claim, run, heartbeat, stop on cancel. SIGTERM stops
    claiming and gives running turns `TETHER_SHUTDOWN_GRACE_S` to finish before handing them
    back."""
    from tether import startup

    options = {
        "store_url": store,
        "bus_url": bus,
        "workers": concurrency,
        "zone": zone,
        "tools": tools,
        "log_level": log_level,
    }
    raise typer.Exit(startup.work(options))


keys_app = typer.Typer(help="API keys: create, list, revoke.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
StoreOption = Annotated[str | None, typer.Option("--store", help="store URL")]
DataDirOption = Annotated[Path | None, typer.Option(help="data dir of the SQLite store")]


def _settings(store: str | None, data_dir: Path | None) -> Settings:
    return _settings_given(store_url=store, data_dir=data_dir)


def _settings_given(**options: Any) -> Settings:
    """Settings from the environment, overridden by the options given (None: not given)."""
    return Settings(**{k: v for k, v in options.items() if v is not None})


CreateOption = Annotated[
    bool, typer.Option("--create", help="make a new store if there is none there")
]


def _store_url(store: str | None, data_dir: Path | None, create: bool = False) -> str:
    """The store's URL. A SQLite store that is not there is refused unless `create`: a
    mistyped --data-dir must not quietly make a new, empty store."""
    url = _settings(store, data_dir).resolved_store_url
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    database = parsed.database
    is_file = parsed.get_backend_name() == "sqlite" and database not in (None, "", ":memory:")
    if is_file and not create and not Path(str(database)).is_file():
        common.fail(
            f"no Tether store at {database} (a mistyped --data-dir or --store?); "
            "`tether keys create --create` makes a new one",
            common.Exit.USAGE,
        )
    return url


def _with_keys(url: str, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run `work(Keys)` on the store at `url`; failures in one line."""
    from tether.auth import Keys

    async def run() -> T:
        db = await open_store(url)
        try:
            return await work(Keys(db))
        finally:
            await db.close()

    try:
        return asyncio.run(run())
    except TetherError as exc:
        code = common.Exit.NOT_FOUND if exc.code == "not_found" else common.Exit.ERROR
        common.fail(exc.message, code)
    except Exception as exc:  # a store that cannot be opened: say so, no traceback
        from tether.startup import safe_url

        common.fail(f"cannot use the store at {safe_url(url)}: {exc}".splitlines()[0])


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="the tenant the key belongs to")],
    role: Annotated[str, typer.Option(help="admin, write or read")],
    name: Annotated[str | None, typer.Option(help="a label")] = None,
    store: StoreOption = None,
    data_dir: DataDirOption = None,
    create: CreateOption = False,
    as_json: common.AsJson = False,
) -> None:
    """Create a key and print it, once: only its hash is stored."""
    from tether import views
    from tether.auth import Role

    if role.upper() not in Role.__members__:
        common.fail("--role must be admin, write or read", common.Exit.USAGE)
    url = _store_url(store, data_dir, create)
    info, key = _with_keys(url, lambda keys: keys.create(tenant, Role[role.upper()], name))
    if as_json:
        common.print_json({**views.api_key(info), "key": key})
        return
    console.print(f"created {info.id} (tenant {tenant}, role {role}); the key, shown this once:")
    print(key)


@keys_app.command("list")
def keys_list(
    store: StoreOption = None, data_dir: DataDirOption = None, as_json: common.AsJson = False
) -> None:
    """List keys (never their secrets)."""
    from tether import views

    url = _store_url(store, data_dir)
    page = _with_keys(url, lambda keys: keys.list())
    shown = [views.api_key(k) for k in page.items]
    if as_json:
        common.print_json(shown)
        return
    grid = common.Grid("id", "tenant", "role", "name", "prefix", "last used", "state", ids=["id"])
    for view in shown:
        grid.add_row(
            view["id"],
            view["tenant_id"],
            view["role"],
            view["name"] or "",
            view["prefix"],
            (view["last_used_at"] or "")[:19].replace("T", " "),
            "revoked" if view["revoked_at"] else "active",
        )
    grid.print()


@keys_app.command("revoke")
def keys_revoke(
    key_id: str,
    store: StoreOption = None,
    data_dir: DataDirOption = None,
    as_json: common.AsJson = False,
) -> None:
    """Revoke a key: it stops working within seconds."""
    from tether import views

    url = _store_url(store, data_dir)
    info = _with_keys(url, lambda keys: keys.revoke(key_id))
    if as_json:
        common.print_json(views.api_key(info))
        return
    console.print(f"revoked {key_id}")


commands.register(app)


def main() -> None:
    try:
        app()
    except client_errors.TetherClientError as exc:  # one line, never a traceback
        common.err.print(f"error: {common.explain(exc)}", markup=False, highlight=False)
        raise SystemExit(common.exit_code(exc)) from None


if __name__ == "__main__":
    main()
