"""What every client command shares: the server options, output (human or `--json`), and how
an error becomes one line on stderr and an exit code a script can test."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any, NoReturn, get_args

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from tether.client import Tether, errors
from tether.client._base import DEFAULT_URL


class Exit:
    """Exit codes (docs/cli.md)."""

    OK = 0
    ERROR = 1  # the server refused (409, 422, …) or something else failed
    USAGE = 2  # bad arguments; a store refused (no store there)
    UNREACHABLE = 3  # cannot reach the server (or it stopped answering)
    AUTH = 4  # no key, a bad key, or a key without the right (401, 403)
    NOT_FOUND = 5  # no such object, or a malformed id (404, 400 invalid_id)
    NOT_CONFIRMED = 6  # a stop was requested but not confirmed in time: still cancelling


out = Console(highlight=False, emoji=False, soft_wrap=False)
err = Console(stderr=True, highlight=False, emoji=False, soft_wrap=True)

Url = Annotated[
    str, typer.Option("--url", envvar="TETHER_URL", help="server URL", show_default=True)
]
ApiKey = Annotated[
    str | None,
    typer.Option("--api-key", envvar="TETHER_API_KEY", help="API key", show_default=False),
]
AsJson = Annotated[bool, typer.Option("--json", help="print JSON, for scripts")]
DEFAULT = DEFAULT_URL


def client(url: str, api_key: str | None) -> Tether:
    return Tether(url, api_key or None)


def choice(option: str, value: str | None, allowed: Any) -> Any:
    """`value` if it is one of the `Literal` type `allowed`'s values, else a usage error."""
    values = get_args(allowed)
    if value is not None and value not in values:
        fail(f"{option} must be one of {', '.join(values)}", Exit.USAGE)
    return value


def fail(message: str, code: int = Exit.ERROR) -> NoReturn:
    err.print(f"[red]error:[/] {esc(message)}", markup=True, highlight=False)
    raise typer.Exit(code)


def exit_code(exc: errors.TetherClientError) -> int:
    if isinstance(exc, errors.APIConnectionError):
        return Exit.UNREACHABLE
    if isinstance(exc, errors.Unauthorized | errors.Forbidden):
        return Exit.AUTH
    if isinstance(exc, errors.NotFound | errors.InvalidId):
        return Exit.NOT_FOUND
    return Exit.ERROR


def explain(exc: errors.TetherClientError) -> str:
    """The error in one line, with what to do about it when we know."""
    if isinstance(exc, errors.APIConnectionError):
        return f"{exc.message} (is `tether serve` running? --url or TETHER_URL names it)"
    if isinstance(exc, errors.Unauthorized):
        return f"{exc.message} (--api-key or TETHER_API_KEY)"
    if isinstance(exc, errors.APIError):
        return str(exc)
    return str(exc) or type(exc).__name__


def report(exc: errors.TetherClientError) -> NoReturn:
    """Print a client error as one line and exit with its code."""
    err.print(f"[red]error:[/] {esc(explain(exc))}", markup=True, highlight=False)
    raise typer.Exit(exit_code(exc))


# --- output -----------------------------------------------------------------------------------


def plain(value: Any) -> Any:
    """A value fit for json.dumps: models as their JSON."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def print_json(value: Any, *, indent: int | None = 2) -> None:
    # written straight to stdout: rich would wrap long lines and break the JSON
    sys.stdout.write(json.dumps(plain(value), indent=indent, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def when(value: datetime | None) -> str:
    """A time, short: `2026-01-31 14:05:09` (UTC)."""
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def compact(value: Any, limit: int = 60) -> str:
    """JSON on one line, cut to `limit` characters."""
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def esc(value: Any) -> str:
    """Text from the server (model output, tool arguments…) made safe inside rich markup."""
    return escape(str(value))


class Grid:
    """A table whose id columns are never cut or wrapped (commands need them whole); cells
    are shown as plain text, never read as markup."""

    def __init__(self, *columns: str, ids: Iterable[str] = ()):
        whole = set(ids)
        self.table = Table(box=None, pad_edge=False, header_style="bold")
        for name in columns:
            if name in whole:
                self.table.add_column(name, no_wrap=True, overflow="ignore")
            else:
                self.table.add_column(name, overflow="fold")

    def add_row(self, *cells: str) -> None:
        self.table.add_row(*(Text(cell) for cell in cells))

    def print(self) -> None:
        out.print(self.table)
