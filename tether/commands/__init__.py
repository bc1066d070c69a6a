"""The `tether` commands that talk to a server, built on the SDK (`tether.client`): `chat`,
`whoami`, `sessions`, `interrupts`, `agents`, `webhooks`. An error is one line on stderr and
an exit code a script can test (common.Exit); `--json` prints what scripts read."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import typer

from tether.client import errors
from tether.commands import agents, chat, common, interrupts, sessions, webhooks, whoami


def register(app: typer.Typer) -> None:
    """Add the client commands to the `tether` app."""
    app.command("chat")(_reported(chat.chat))
    app.command("whoami")(_reported(whoami.whoami))
    groups = {
        "sessions": sessions.app,
        "interrupts": interrupts.app,
        "agents": agents.app,
        "webhooks": webhooks.app,
    }
    for name, group in groups.items():
        for command in group.registered_commands:
            assert command.callback is not None
            command.callback = _reported(command.callback)
        app.add_typer(group, name=name)


def _reported(command: Callable[..., Any]) -> Callable[..., Any]:
    """`command`, its client errors said in one line with their exit code, not a traceback."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except errors.TetherClientError as exc:
            common.report(exc)

    return run
