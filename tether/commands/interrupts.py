"""`tether interrupts ls|approve|deny|answer`."""

from __future__ import annotations

import json
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
    session_id: Annotated[str, typer.Argument(help="the session's id")],
    status: Annotated[
        str, typer.Option(help="pending, resolved, expired, cancelled, or all")
    ] = "pending",
    as_json: AsJson = False,
    url: Url = DEFAULT,
    api_key: ApiKey = None,
) -> None:
    """A session's interrupts (by default those awaiting an answer)."""
    wanted = None if status == "all" else common.choice("--status", status, models.InterruptStatus)
    with common.client(url, api_key) as tether:
        items = list(tether.interrupts.list(session_id, status=wanted))
    if as_json:
        common.print_json(items)
        return
    grid = common.Grid("id", "type", "tool", "status", "request", ids=["id"])
    for i in items:
        grid.add_row(i.id, i.type, i.tool_name or "", i.status, common.compact(i.request, 40))
    grid.print()


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
