"""The `tether` command: a thin shell over the server and the client."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from tether.config import Settings
from tether.errors import TetherError
from tether.store import open_store

app = typer.Typer(
    help="Tether: stateful agent execution.", no_args_is_help=True, add_completion=False
)
console = Console()


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


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="the tenant the key belongs to")],
    role: Annotated[str, typer.Option(help="admin, write or read")],
    name: Annotated[str | None, typer.Option(help="a label")] = None,
    store: StoreOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Create a key and print it, once: only its hash is stored."""
    from tether.auth import Keys, Role

    if role.upper() not in Role.__members__:
        console.print("[red]--role must be admin, write or read[/]")
        raise typer.Exit(2)

    async def run() -> tuple[Any, str]:
        db = await open_store(_settings(store, data_dir).resolved_store_url)
        try:
            return await Keys(db).create(tenant, Role[role.upper()], name)
        finally:
            await db.close()

    info, key = asyncio.run(run())
    console.print(f"created {info.id} (tenant {tenant}, role {role}); the key, shown this once:")
    print(key)


@keys_app.command("list")
def keys_list(store: StoreOption = None, data_dir: DataDirOption = None) -> None:
    """List keys (never their secrets)."""
    from rich.table import Table

    from tether.auth import Keys

    async def run() -> list[Any]:
        db = await open_store(_settings(store, data_dir).resolved_store_url)
        try:
            return list((await Keys(db).list()).items)
        finally:
            await db.close()

    table = Table("id", "tenant", "role", "name", "prefix", "last used", "revoked")
    for k in asyncio.run(run()):
        view = k.view()
        table.add_row(
            view["id"],
            view["tenant_id"],
            view["role"],
            view["name"] or "",
            view["prefix"],
            view["last_used_at"] or "",
            view["revoked_at"] or "",
        )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str, store: StoreOption = None, data_dir: DataDirOption = None) -> None:
    """Revoke a key: it stops working within seconds."""
    from tether.auth import Keys

    async def run() -> None:
        db = await open_store(_settings(store, data_dir).resolved_store_url)
        try:
            await Keys(db).revoke(key_id)
        finally:
            await db.close()

    try:
        asyncio.run(run())
    except TetherError as exc:
        console.print(f"[red]{exc.message}[/]")
        raise typer.Exit(1) from exc
    console.print(f"revoked {key_id}")


@app.command()
def chat(
    url: Annotated[
        str, typer.Option(help="server URL", envvar="TETHER_URL")
    ] = "http://127.0.0.1:8700",
    agent: Annotated[str, typer.Option(help="agent id or name for a new session")] = "demo",
    session: Annotated[str | None, typer.Option(help="continue this session")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="TETHER_API_KEY")] = None,
) -> None:
    """Converse with an agent in the terminal, with the live stream."""
    from tether.client import Client, TetherAPIError

    with Client(url, api_key) as client:
        try:
            sid = session or client.create_session(agent)["id"]
        except TetherAPIError as exc:
            console.print(f"[red]{exc}[/]")
            raise typer.Exit(1) from exc
        console.print(f"[dim]session {sid} (Ctrl-D to quit)[/]")
        while True:
            try:
                text = console.input("[bold cyan]you>[/] ")
            except (EOFError, KeyboardInterrupt):
                console.print()
                return
            if not text.strip():
                continue
            try:
                _stream_reply(client, sid, text)
            except TetherAPIError as exc:
                console.print(f"[red]{exc}[/]")


def _stream_reply(client: object, sid: str, text: str) -> None:
    from tether.client import Client

    assert isinstance(client, Client)
    console.print("[bold green]agent>[/] ", end="")
    for event in client.stream_turn(sid, text):
        kind, data = event["type"], event.get("data", {})
        if kind == "message.delta":
            console.print(data["delta"], end="", markup=False, highlight=False)
        elif kind == "tool.started":
            console.print(f"\n[dim]  ↳ {data['name']}({data['arguments']})[/]")
        elif kind == "tool.completed":
            console.print(f"[dim]  ↳ {data['name']}: {data['outcome']}[/]", end="\n       ")
        elif kind in ("turn.failed", "turn.cancelled"):
            turn = data["turn"]
            console.print(f"\n[red]turn {turn['status']}: {turn['reason']}[/]")
    console.print()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
