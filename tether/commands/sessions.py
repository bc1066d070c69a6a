"""`tether sessions ls|show|tail|stop|fork|rm`."""

from __future__ import annotations

import itertools
import json
import sys
from typing import Annotated

import typer

from tether.client import Event, models
from tether.commands import common
from tether.commands.common import DEFAULT, ApiKey, AsJson, Exit, Url

app = typer.Typer(
    help="Sessions: list, show, follow, stop, fork, close or erase.", no_args_is_help=True
)


@app.command("ls")
def ls(
    status: Annotated[
        str | None, typer.Option(help="idle, queued, running, waiting or closed")
    ] = None,
    agent: Annotated[str | None, typer.Option(help="only this agent's (its id)")] = None,
    limit: Annotated[int, typer.Option(help="at most this many, newest first")] = 20,
    as_json: AsJson = False,
    url: Url = DEFAULT,
    api_key: ApiKey = None,
) -> None:
    """List sessions, newest first."""
    wanted = common.choice("--status", status, models.SessionStatus)
    with common.client(url, api_key) as tether:
        pages = tether.sessions.list(status=wanted, agent_id=agent, limit=min(limit, 1000))
        sessions = list(itertools.islice(pages, limit))
        if as_json:
            common.print_json(sessions)
            return
        names = {a.id: a.name for a in tether.agents.list()} if sessions else {}
    grid = common.Grid("id", "agent", "status", "last turn", "updated", ids=["id"])
    for s in sessions:
        last = s.last_turn.status if s.last_turn else ""
        grid.add_row(
            s.id, names.get(s.agent_id, s.agent_id), s.status, last, common.when(s.updated_at)
        )
    grid.print()


@app.command("show")
def show(
    session_id: Annotated[str, typer.Argument(help="the session's id")],
    messages: Annotated[int, typer.Option(help="show the last N messages")] = 20,
    as_json: AsJson = False,
    url: Url = DEFAULT,
    api_key: ApiKey = None,
) -> None:
    """A session: its status, turns and the end of its transcript."""
    with common.client(url, api_key) as tether:
        session = tether.sessions.get(session_id)
        turns = list(tether.turns.list(session_id))
        transcript = list(tether.sessions.messages(session_id, limit=1000))[-messages:]
        pending = list(tether.interrupts.list(session_id, status="pending"))
    if as_json:
        common.print_json(
            {"session": session, "turns": turns, "messages": transcript, "interrupts": pending}
        )
        return
    out = common.out
    out.print(f"[bold]session[/] {session.id}  [bold]{session.status}[/]")
    out.print(f"agent {session.agent_id}  created {common.when(session.created_at)}")
    if origin := session.forked_from:
        at = f"{origin.at} {origin.turn_id}" if origin.turn_id else "with no finished turn"
        out.print(f"forked from {origin.session_id} ({at})", markup=False)
    if session.metadata:
        out.print(f"metadata {common.compact(session.metadata)}", markup=False)
    if turns:
        grid = common.Grid("turn", "status", "reason", "steps", "finished", ids=["turn"])
        for t in turns:
            grid.add_row(t.id, t.status, t.reason or "", str(t.step), common.when(t.finished_at))
        grid.print()
    for message in transcript:
        print_message(message)
    for interrupt in pending:
        what = f"{interrupt.type} {interrupt.tool_name or ''} {common.compact(interrupt.request)}"
        out.print(f"[yellow]waiting on {interrupt.id}[/]: {common.esc(what)}")


def print_message(message: models.Message) -> None:
    out = common.out
    who = {"user": "you", "assistant": "agent", "tool": f"tool {message.name or ''}"}
    label = who.get(message.role, message.role)
    mark = " [dim](interrupted)[/]" if message.status == "interrupted" else ""
    if message.content:
        out.print(f"[bold]{common.esc(label)}>[/]{mark} ", end="")
        out.print(message.content, markup=False)
    for call in message.tool_calls:
        out.print(
            f"[dim]  ↳ {common.esc(call.name)}({common.esc(common.compact(call.arguments))})[/]"
        )


@app.command("tail")
def tail(
    session_id: Annotated[str, typer.Argument(help="the session's id")],
    after: Annotated[int, typer.Option(help="start after this event seq (0: from the start)")] = 0,
    as_json: AsJson = False,
    url: Url = DEFAULT,
    api_key: ApiKey = None,
) -> None:
    """Follow a session's events as they happen (Ctrl-C ends). `--json`: one event a line."""
    with common.client(url, api_key) as tether:
        try:
            with tether.sessions.events(session_id, after=after) as stream:
                at_line_start = True
                for event in stream:
                    if as_json:
                        common.print_json(event, indent=None)
                    else:
                        at_line_start = _print_event(event, at_line_start)
        except KeyboardInterrupt:
            if not as_json:
                common.out.print()


def _print_event(event: Event, at_line_start: bool) -> bool:
    """One event in a line (text deltas flow on one line); answers whether the cursor is at
    the start of a line."""
    if event.delta is not None:
        sys.stdout.write(event.delta)
        sys.stdout.flush()
        return event.delta.endswith("\n")
    if not at_line_start:
        common.out.print()
    common.out.print(
        f"[dim]#{event.seq}[/] [bold]{common.esc(event.type)}[/] {common.esc(_summary(event))}"
    )
    return True


def _summary(event: Event) -> str:
    if (turn := event.turn) is not None:
        return f"{turn.id} {turn.status}" + (f" ({turn.reason})" if turn.reason else "")
    if (message := event.message) is not None:
        return f"{message.role} {message.id}"
    if (interrupt := event.interrupt) is not None:
        return f"{interrupt.id} {interrupt.type} {interrupt.status}"
    if "name" in event.data:
        return f"{event.data['name']} {event.data.get('outcome', '')}".strip()
    if "status" in event.data:
        return str(event.data["status"])
    return ""


@app.command("stop")
def stop(
    session_id: Annotated[str, typer.Argument(help="the session's id")],
    rollback: Annotated[
        bool, typer.Option("--rollback", help="remove the turn from the transcript")
    ] = False,
    all_turns: Annotated[bool, typer.Option("--all", help="also cancel queued turns")] = False,
    wait: Annotated[float, typer.Option(help="seconds to wait for confirmation")] = 5.0,
    as_json: AsJson = False,
    url: Url = DEFAULT,
    api_key: ApiKey = None,
) -> None:
    """Stop the session's running turn. Exit 6 if it is not confirmed within --wait (the stop
    stays in force)."""
    with common.client(url, api_key) as tether:
        result = tether.sessions.stop(
            session_id,
            mode="rollback" if rollback else "interrupt",
            scope="all" if all_turns else "turn",
            wait=wait,
        )
    if as_json:
        common.print_json(result)
    elif result.turn is None:
        common.out.print(f"nothing to stop (session {result.session.status})")
    elif result.confirmed:
        common.out.print(f"{result.turn.id} {result.turn.status} ({result.turn.reason or ''})")
    else:
        common.out.print(f"{result.turn.id} still cancelling: the stop stays in force")
    if not result.confirmed:
        raise typer.Exit(Exit.NOT_CONFIRMED)


@app.command("rm")
def rm(
    session_id: Annotated[str, typer.Argument(help="the session's id")],
    purge: Annotated[
        bool, typer.Option("--purge", help="erase it and all of it for good (admin keys)")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="--purge without asking")] = False,
    as_json: AsJson = False,
    url: Url = DEFAULT,
    api_key: ApiKey = None,
) -> None:
    """Close a session: no new turns, queued ones cancelled; it stays readable. With --purge
    (admin keys), erase it for good instead: its turns are stopped, then it and its turns,
    transcript, events and interrupts are deleted. --purge asks first, unless --yes."""
    if purge:
        if not yes:
            _confirm_purge(session_id)
        with common.client(url, api_key) as tether:
            tether.sessions.purge(session_id)
        if as_json:
            common.print_json({"id": session_id, "purged": True})
        else:
            common.out.print(f"{session_id} purged")
        return
    with common.client(url, api_key) as tether:
        closed = tether.sessions.close(session_id)
    if as_json:
        common.print_json(closed)
    else:
        common.out.print(f"{closed.id} closed (still readable; --purge erases it for good)")


def _confirm_purge(session_id: str) -> None:
    if not sys.stdin.isatty():
        common.fail(
            f"--purge erases {session_id} for good: confirm with --yes (no terminal to ask on)",
            Exit.USAGE,
        )
    question = f"Erase session {session_id} and all of it (transcript, events) for good?"
    if not typer.confirm(question, default=False):
        common.fail("not purged", Exit.ERROR)


@app.command("fork")
def fork(
    session_id: Annotated[str, typer.Argument(help="the session to fork")],
    turn: Annotated[
        str | None, typer.Option(help="fork at this turn (default: the last finished one)")
    ] = None,
    before: Annotated[
        bool, typer.Option("--before", help="up to the turn's start, not its end")
    ] = False,
    metadata: Annotated[str | None, typer.Option(help="the fork's metadata, a JSON object")] = None,
    input: Annotated[str | None, typer.Option(help="the fork's first turn")] = None,
    as_json: AsJson = False,
    url: Url = DEFAULT,
    api_key: ApiKey = None,
) -> None:
    """A new session from this one's history up to a finished turn; the source is not
    changed. Prints the new session's id (continue it with `tether chat --session ID`)."""
    meta = None
    if metadata is not None:
        try:
            meta = json.loads(metadata)
        except ValueError:
            common.fail("--metadata must be a JSON object", Exit.USAGE)
        if not isinstance(meta, dict):
            common.fail("--metadata must be a JSON object", Exit.USAGE)
    with common.client(url, api_key) as tether:
        made = tether.sessions.fork(
            session_id,
            turn_id=turn,
            at="before" if before else "after",
            metadata=meta,
            input=input,
        )
    if as_json:
        common.print_json(made)
    else:
        common.out.print(made.id, markup=False, highlight=False)
