"""`tether interrupts ls|approve|deny|answer`."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from tether.client import models
from tether.commands import common
from tether.commands.common import DEFAULT, ApiKey, AsJson, Exit, Url

app = typer.Typer(help="Interrupts: what paused turns wait on; answer them.", no_args_is_help=True)

Id = Annotated[str, typer.Argument(help="the interrupt's id (int_…)")]
Reason = Annotated[str | None, typer.Option(help="why, told to the model")]


@app.command("ls")
def ls(
    session_id: Annotated[
        str | None,
        typer.Argument(
            help="a session's id (without one: all of your sessions')", show_default=False
        ),
    ] = None,
    session: Annotated[
        str | None, typer.Option("--session", help="the same, as an option", show_default=False)
    ] = None,
    status: Annotated[
        str, typer.Option(help="pending, resolved, expired, cancelled, or all")
    ] = "pending",
    as_json: AsJson = False,
    url: Url = DEFAULT,
    api_key: ApiKey = None,
) -> None:
    """Interrupts awaiting an answer (--status for others): a session's, oldest first, or
    without one those of all of your sessions (the approvals inbox), the one expiring soonest
    first."""
    if session_id is not None and session is not None and session_id != session:
        common.fail("name the session once: as an argument or with --session", Exit.USAGE)
    sid = session_id if session_id is not None else session
    wanted = None if status == "all" else common.choice("--status", status, models.InterruptStatus)
    with common.client(url, api_key) as tether:
        items = list(tether.interrupts.list(sid, status=wanted))
    if as_json:
        common.print_json(items)
        return
    now = datetime.now(UTC)
    for i in items:
        # two lines each: whole ids fit in 80 columns, and what is asked gets a line of its own
        common.out.print(f"{i.id}  {i.type}  {i.status}  {_expiry(i, now)}".rstrip())
        asked = f"{i.session_id}: {_asked(i)}" if sid is None else _asked(i)
        common.out.print(f"  {common.esc(asked)}", soft_wrap=True, style="dim")


def _asked(interrupt: models.Interrupt) -> str:
    """What the interrupt asks, in a line: the tool call to approve, or the question."""
    request = interrupt.request
    if interrupt.type == "approval":
        return f"{interrupt.tool_name}({common.compact(request.get('arguments', {}), 160)})"
    if interrupt.type == "question" and isinstance(request.get("question"), str):
        return common.compact(request["question"], 200).strip('"')
    return common.compact(request, 200)


def _expiry(interrupt: models.Interrupt, now: datetime) -> str:
    if not interrupt.pending:
        return ""
    if interrupt.expires_at is None:
        return "never expires"
    left = int((interrupt.expires_at - now).total_seconds())
    if left <= 0:
        return "expiring"
    days, rest = divmod(left, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (seconds, "s")]
    shown = [f"{n}{unit}" for n, unit in parts if n][:2]  # the two largest: 2h 5m, 4m 59s
    return "expires in " + " ".join(shown)


def _answered(interrupt: models.Interrupt, as_json: bool) -> None:
    if as_json:
        common.print_json(interrupt)
    else:
        common.out.print(f"{interrupt.id} {interrupt.status}: {common.compact(interrupt.response)}")


@app.command("approve")
def approve(
    interrupt_id: Id,
    reason: Reason = None,
    arguments: Annotated[
        str | None, typer.Option(help="edited arguments, a JSON object (editable tools)")
    ] = None,
    as_json: AsJson = False,
    url: Url = DEFAULT,
    api_key: ApiKey = None,
) -> None:
    """Approve a tool call: it runs when the turn resumes."""
    edited = _json_object("--arguments", arguments) if arguments is not None else None
    with common.client(url, api_key) as tether:
        answered = tether.interrupts.approve(interrupt_id, reason=reason, arguments=edited)
    _answered(answered, as_json)


@app.command("deny")
def deny(
    interrupt_id: Id,
    reason: Reason = None,
    as_json: AsJson = False,
    url: Url = DEFAULT,
    api_key: ApiKey = None,
) -> None:
    """Deny a tool call: it never runs; the model is told."""
    with common.client(url, api_key) as tether:
        answered = tether.interrupts.deny(interrupt_id, reason=reason)
    _answered(answered, as_json)


@app.command("answer")
def answer(
    interrupt_id: Id,
    text: Annotated[str, typer.Argument(help="the answer")],
    raw: Annotated[bool, typer.Option("--raw-json", help="the answer is JSON, sent as is")] = False,
    as_json: AsJson = False,
    url: Url = DEFAULT,
    api_key: ApiKey = None,
) -> None:
    """Answer a question (or any interrupt: with --raw-json, any JSON value)."""
    value: Any = text
    if raw:
        try:
            value = json.loads(text)
        except ValueError as exc:
            common.fail(f"the answer is not JSON: {exc}", Exit.USAGE)
    with common.client(url, api_key) as tether:
        answered = tether.interrupts.answer(interrupt_id, value)
    _answered(answered, as_json)


def _json_object(option: str, text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        common.fail(f"{option} is not JSON: {exc}", Exit.USAGE)
    if not isinstance(value, dict):
        common.fail(f"{option} must be a JSON object", Exit.USAGE)
    return value
