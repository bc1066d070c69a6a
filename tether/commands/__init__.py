"""The `tether` commands that talk to a server, built on the SDK (`tether.client`): `chat`,
`sessions`, `interrupts`, `agents`. Each prints one line and exits non-zero on an error
(codes in common.Exit), and `--json` prints what scripts read."""

from __future__ import annotations

import typer

from tether.commands import agents, chat, interrupts, sessions


def register(app: typer.Typer) -> None:
    """Add the client commands to the `tether` app."""
    app.command("chat")(chat.chat)
    app.add_typer(sessions.app, name="sessions")
    app.add_typer(interrupts.app, name="interrupts")
    app.add_typer(agents.app, name="agents")
