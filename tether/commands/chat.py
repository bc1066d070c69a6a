"""`tether chat`: talk to an agent in the terminal, and stay in control of it.

Ctrl-C while a reply streams stops that turn on the server (interrupt mode: the partial reply
is kept), shows where it ended, and gives the prompt back; Ctrl-C or Ctrl-D at the prompt
quits. A turn that pauses for a human (approve a tool call, answer a question) is answered
inline, then followed to its end.

The text printed for a message is kept in step with the message's final text by offset, so a
dropped connection, a Ctrl-C between two writes, or a reconnect never shows text twice or
leaves a hole. Ctrl-C is held back while a piece of text is printed and counted: pressed as the
text reaches the screen (which is when a person reacts to it), it would otherwise land between
the two, and the stop would print that piece again.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Annotated, Any

import typer

from tether.client import Event, Tether, TurnStream, errors, models
from tether.commands import common
from tether.commands.common import DEFAULT, ApiKey, Url

STOP_WAIT_S = 5.0  # how long a Ctrl-C waits for the server to confirm the stop


class Quit(Exception):
    """Leave the chat (Ctrl-D at an inline prompt); the message says what is left behind."""


def chat(
    agent: Annotated[str, typer.Option(help="agent id or name for a new session")] = "demo",
    session: Annotated[str | None, typer.Option(help="continue this session")] = None,
    on_busy: Annotated[
        str,
        typer.Option(
            help="what a message does when the session is busy (a turn from elsewhere): "
            "enqueue, reject, interrupt, rollback, or steer (join that turn)"
        ),
    ] = "enqueue",
    url: Url = DEFAULT,
    api_key: ApiKey = None,
) -> None:
    """Converse with an agent, live; Ctrl-C stops a reply on the server.

    Ctrl-C while a reply streams interrupts that turn (its partial reply is kept) and gives
    the prompt back; Ctrl-C or Ctrl-D at the prompt quits. Approvals and questions are asked
    inline."""
    busy = common.choice("--on-busy", on_busy, models.OnBusy)
    with contextlib.suppress(ImportError):  # not on every platform
        import readline  # noqa: F401  (line editing and history for input())
    with common.client(url, api_key) as tether:
        sid = tether.sessions.get(session).id if session else tether.sessions.create(agent).id
        common.out.print(f"[dim]session {sid} (Ctrl-C stops a reply; Ctrl-D quits)[/]")
        try:
            Chat(tether, sid, busy).run(resume=session is not None)
        except Quit as left:
            common.out.print(f"[yellow]{common.esc(left)}[/]", soft_wrap=True)


class Chat:
    def __init__(self, tether: Tether, session_id: str, on_busy: models.OnBusy = "enqueue"):
        self.tether = tether
        self.sid = session_id
        self.on_busy: models.OnBusy = on_busy
        self.stream: TurnStream | None = None  # the turn being shown
        self.printed: dict[str, int] = {}  # message id -> chars of it on the screen
        self.at_line_start = True
        self.label_due = True  # "agent> " goes before the next text

    # --- the prompt ---------------------------------------------------------------------------

    def run(self, resume: bool = False) -> None:
        if resume:
            self.resume_waiting()
        while True:
            try:
                text = input("you> ")
            except (EOFError, KeyboardInterrupt):
                self.write("\n")
                return
            if not text.strip():
                continue
            try:
                self.turn(text)
            except KeyboardInterrupt:
                # Ctrl-C again while a stop was being carried out: give the prompt back
                self.say("[dim](not waiting for the stop to be confirmed)[/]")
            except errors.TetherClientError as exc:  # say it, and let the person go on
                self.say(f"[red]error:[/] {common.esc(common.explain(exc))}")

    def turn(self, text: str) -> None:
        self.stream, self.label_due = None, True
        try:
            stream = self.tether.turns.create(self.sid, text, on_busy=self.on_busy, stream=True)
            self.follow(stream)
        except KeyboardInterrupt:
            self.stop()

    def resume_waiting(self) -> None:
        """A session continued with --session may have a turn waiting for us."""
        pending = list(self.tether.interrupts.list(self.sid, status="pending"))
        if not pending:
            return
        session = self.tether.sessions.get(self.sid)
        self.stream = None
        try:
            self.answer(pending[0].turn_id)
            stream = self.tether.turns.stream(
                self.sid, pending[0].turn_id, after=session.last_event_seq
            )
            self.follow(stream)
        except KeyboardInterrupt:
            self.stop(pending[0].turn_id)

    # --- a turn ---------------------------------------------------------------------------------

    def follow(self, stream: TurnStream) -> None:
        """Show the turn until it ends, answering what it waits on in between."""
        while True:
            self.stream = stream
            with stream:
                for event in stream:
                    self.show(event)
            if not stream.waiting:
                self.ended(stream.turn)
                return
            assert stream.turn_id is not None
            self.answer(stream.turn_id)
            stream = stream.follow()

    def show(self, event: Event) -> None:
        if event.delta is not None:
            self.text(event)
        elif event.type == "message.completed" and (message := event.message):
            if message.role == "assistant" and message.content:
                # whatever of its final text is not on the screen yet
                self.text_at(message.id, 0, message.content)
        elif event.type == "tool.started":
            arguments = common.compact(event.data.get("arguments", {}))
            self.note(f"  ↳ {event.data.get('name')}({arguments}) …")
        elif event.type == "tool.completed":
            self.note(f"  ↳ {event.data.get('name')}: {event.data.get('outcome')}")
        elif event.type == "turn.steered":
            self.note("  ↳ steered: new input joined the turn")

    def text(self, event: Event) -> None:
        data = event.data
        self.text_at(str(data.get("message_id")), int(data.get("offset", 0)), event.delta or "")

    def text_at(self, message_id: str, offset: int, text: str) -> None:
        done = self.printed.get(message_id, 0)
        if offset > done or offset + len(text) <= done:
            return  # after a hole (its message's completion fills it), or already shown
        fresh = text[done - offset :]
        with ctrl_c_held():  # on the screen and counted, or neither
            if self.label_due:
                self.end_line()
                self.write("agent> ")
                self.label_due = False
            self.write(fresh)
            self.printed[message_id] = offset + len(text)

    def note(self, line: str) -> None:
        self.say(f"[dim]{common.esc(line)}[/]")
        self.label_due = True

    def ended(self, turn: models.Turn | None) -> None:
        self.end_line()
        if turn is None or turn.status == "completed":
            return
        if turn.status == "failed":
            why = f"{turn.reason}: {turn.error.message}" if turn.error else turn.reason
            self.say(f"[red]turn failed ({common.esc(why)})[/]")
        elif turn.status == "cancelled":
            self.say(f"[yellow]turn cancelled ({common.esc(turn.reason)})[/]")

    # --- pauses ---------------------------------------------------------------------------------

    def answer(self, turn_id: str) -> None:
        """Ask the person about each pending interrupt of the turn, and send the answers."""
        self.end_line()
        for interrupt in self.tether.interrupts.list(self.sid, status="pending"):
            if interrupt.turn_id != turn_id:
                continue
            while True:
                response = self.ask(interrupt)
                try:
                    self.tether.interrupts.respond(interrupt.id, response)
                    break
                except errors.InterruptNotPending:
                    self.say("[dim](already answered elsewhere)[/]")
                    break
                except errors.Unprocessable as exc:  # e.g. edited arguments refused
                    self.say(f"[red]{common.esc(exc.message)}[/]")
        self.label_due = True

    def ask(self, interrupt: models.Interrupt) -> Any:
        request = interrupt.request
        if interrupt.type == "approval":
            call = f"{interrupt.tool_name}({common.compact(request.get('arguments', {}))})"
            self.say(f"[yellow]  ⏸ the agent wants to run {common.esc(call)}[/]")
            editable = bool(request.get("editable"))
            choices = "[y/n/e(dit)]" if editable else "[y/n]"
            while True:
                said = self.prompt(f"approve? {choices} ").strip().lower()
                if said in ("y", "yes"):
                    return {"decision": "approve"}
                if said in ("n", "no"):
                    return {"decision": "deny"}
                if editable and said in ("e", "edit"):
                    edited = self.prompt_json("arguments (JSON object)> ", want_object=True)
                    return {"decision": "approve", "arguments": edited}
        if interrupt.type == "question":
            question = request.get("question", common.compact(request))
            self.say(f"[yellow]  ? {common.esc(question)}[/]")
            return self.prompt("answer> ")
        shown = common.esc(f"{interrupt.type}: {common.compact(request, 200)}")
        self.say(f"[yellow]  ⏸ {shown}[/]")
        return self.prompt_json("response (JSON, or text)> ", want_object=False)

    def prompt(self, text: str) -> str:
        try:
            return input(text)
        except KeyboardInterrupt:  # stops the turn (in `turn`), below the prompt's line
            self.write("\n")
            raise
        except EOFError:
            self.write("\n")
            raise Quit(
                f"the turn still waits for an answer: `tether interrupts ls {self.sid}`"
            ) from None

    def prompt_json(self, text: str, *, want_object: bool) -> Any:
        while True:
            said = self.prompt(text)
            try:
                value = json.loads(said)
            except ValueError:
                if not want_object:
                    return said
                self.say("[red]not JSON[/]")
                continue
            if want_object and not isinstance(value, dict):
                self.say("[red]a JSON object, please[/]")
                continue
            return value

    # --- Ctrl-C ---------------------------------------------------------------------------------

    def stop(self, turn_id: str | None = None) -> None:
        """Stop the turn on the server, show the rest of its partial reply and how it ended.
        A second Ctrl-C in here goes up to `run`, which gives the prompt back."""
        stream = self.stream
        turn_id = turn_id or (stream.turn_id if stream else None)
        if turn_id is not None:
            result = self.tether.turns.cancel(self.sid, turn_id, wait=STOP_WAIT_S)
        else:  # Ctrl-C before the turn was known: stop whatever the session runs
            result = self.tether.sessions.stop(self.sid, wait=STOP_WAIT_S)
        turn = result.turn
        if turn is None:
            self.say("[dim](nothing was running)[/]")
            return
        if result.confirmed:
            if stream is not None and stream.turn_id == turn.id:
                rest = stream.follow()
            else:
                rest = self.tether.turns.stream(self.sid, turn.id)
            with rest:
                for event in rest:
                    self.show(event)
            turn = rest.turn or turn
        self.write(" ⏹\n" if not self.at_line_start else "⏹\n")
        self.at_line_start = True
        if not result.confirmed:
            self.say("[yellow]stop requested; the turn is still cancelling[/]")
        elif turn.status == "cancelled":
            kept = "partial reply kept" if turn.reason == "client_cancelled" else turn.reason
            self.say(f"[dim]turn stopped ({common.esc(kept)})[/]")
        else:
            self.ended(turn)

    # --- the screen -----------------------------------------------------------------------------

    def write(self, text: str) -> None:
        if not text:
            return
        sys.stdout.write(text)
        sys.stdout.flush()
        self.at_line_start = text.endswith("\n")

    def say(self, markup: str, **options: Any) -> None:
        """A line of our own (rich markup), on a line of its own."""
        self.end_line()
        common.out.print(markup, highlight=False, **options)
        self.at_line_start = True

    def end_line(self) -> None:
        if not self.at_line_start:
            self.write("\n")


@contextlib.contextmanager
def ctrl_c_held() -> Iterator[None]:
    """Ctrl-C (SIGINT) pressed during the block takes effect as the block ends, so that the
    block is done whole or not at all. Only the main thread gets signals; elsewhere the block
    just runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pressed: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        pressed.append(signum)

    previous = signal.signal(signal.SIGINT, hold)
    if previous is None:  # set outside Python: the closest we can put back
        previous = signal.default_int_handler
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pressed:
            signal.raise_signal(signal.SIGINT)  # now, to whoever handled it before
