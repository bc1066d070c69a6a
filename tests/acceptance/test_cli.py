"""The `tether` CLI as a person and a script use it: `chat` in a real pseudo-terminal (pexpect)
against a real server process, `--json` output, exit codes, one-line errors."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pexpect
import pytest
from typer.testing import CliRunner

from tests.acceptance.procs import ServerProcess, wait_until
from tests.helpers import free_port, scripted_agent
from tether import cli
from tether.client import Tether
from tether.commands import chat

# A reply streamed slowly enough to press Ctrl-C in the middle of it, short enough to finish.
SLOW_REPLY = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu "
APPROVE_STEPS = [
    {"text": "checking", "tool_calls": [{"name": "sleep", "arguments": {"seconds": 0}}]}
]
ASK_STEPS = [
    {"text": "", "tool_calls": [{"name": "ask_user", "arguments": {"question": "Which colour?"}}]}
]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "data").start()
    yield proc
    proc.stop()


def _env(server_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    return {**env, "TETHER_URL": server_url, "NO_COLOR": "1", "COLUMNS": "80", **extra}


def _agent(server: ServerProcess, definition: dict[str, Any]) -> None:
    r = httpx.post(f"{server.url}/v1/agents", json=definition, timeout=10)
    assert r.status_code == 201, r.text


def _get(server: ServerProcess, path: str, **params: Any) -> Any:
    r = httpx.get(f"{server.url}{path}", params={"limit": 1000, **params}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def _chat(server: ServerProcess, agent: str, *options: str) -> tuple[pexpect.spawn, str]:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "tether", "chat", "--agent", agent, *options],
        env=_env(server.url),
        encoding="utf-8",
        dimensions=(24, 80),
        timeout=30,
    )
    child.expect(r"session (\S+) \(")
    sid = child.match.group(1)
    child.expect_exact("you> ")
    return child, sid


def _turns(server: ServerProcess, sid: str) -> list[dict[str, Any]]:
    return _get(server, f"/v1/sessions/{sid}/turns")["data"]  # type: ignore[no-any-return]


def _ended(server: ServerProcess, sid: str, count: int) -> list[dict[str, Any]]:
    def done() -> list[dict[str, Any]] | None:
        turns = _turns(server, sid)
        finished = [t for t in turns if t["status"] in ("completed", "failed", "cancelled")]
        return turns if len(turns) == count and len(finished) == count else None

    return wait_until(done, 20, f"{count} turns to end")  # type: ignore[no-any-return]


def _quit(child: pexpect.spawn) -> None:
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def _at(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_ctrl_c_in_chat_stops_the_turn_on_the_server(server: ServerProcess) -> None:
    """Ctrl-C mid-reply: the turn is cancelled (interrupt mode, partial text kept) within a
    second, the line ends with a mark showing exactly the kept text, and the same chat goes
    on: the next message completes."""
    _agent(server, scripted_agent("slow", reply=SLOW_REPLY, tokens=48, token_delay_ms=40))
    child, sid = _chat(server, "slow")
    child.sendline("hello")
    child.expect_exact("agent> ")
    child.expect_exact("gamma")
    shown = child.before + "gamma"
    pressed = time.time()
    child.sendintr()
    child.expect_exact("⏹")
    shown += child.before
    child.expect_exact("you> ")

    [stopped] = _ended(server, sid, 1)
    assert stopped["status"] == "cancelled"
    assert stopped["reason"] == "client_cancelled"
    assert _at(stopped["finished_at"]) - pressed < 1.0, "stopped within a second"
    messages = _get(server, f"/v1/sessions/{sid}/messages")["data"]
    partial = messages[-1]
    assert (partial["role"], partial["status"]) == ("assistant", "interrupted")
    assert partial["content"].startswith("alpha beta gamma")
    assert len(partial["content"]) < len(SLOW_REPLY) * 4, "not run to its end"
    assert shown.replace("^C", "").replace("\r", "").strip() == partial["content"].strip()

    child.sendline("and now?")
    child.expect_exact("you> ")
    first, second = _ended(server, sid, 2)
    assert first["id"] == stopped["id"]
    assert second["status"] == "completed"

    # a server that does not answer the stop: a second Ctrl-C gives the prompt back at once
    child.sendline("once more")
    child.expect_exact("gamma")
    assert server.proc is not None
    server.proc.send_signal(signal.SIGSTOP)
    try:
        child.sendintr()
        assert child.expect_exact(["you> ", pexpect.TIMEOUT], timeout=1) == 1, "waits"
        child.sendintr()
        child.expect_exact("not waiting for the stop to be confirmed", timeout=10)
        child.expect_exact("you> ", timeout=5)
    finally:
        server.proc.send_signal(signal.SIGCONT)
    child.sendline("still there?")  # the terminal still works, and so does the session
    child.expect_exact("you> ")
    *_, last = _ended(server, sid, 4)
    assert last["status"] == "completed"
    _quit(child)


class _Terminal(io.StringIO):
    """A chat's stdout where Ctrl-C is pressed the moment a given text reaches the screen, as
    a person reacting to it does: SIGINT right after the write that showed it."""

    def __init__(self, press_at: str):
        super().__init__()
        self.press_at = press_at
        self.pressed = False

    def flush(self) -> None:
        super().flush()
        if not self.pressed and self.press_at in self.getvalue():
            self.pressed = True
            signal.raise_signal(signal.SIGINT)


def test_ctrl_c_as_text_reaches_the_screen_shows_that_text_once(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C right as a piece of the reply is printed (the label, the first word, a later
    one), so between printing it and counting it as printed: the line ends with exactly the
    kept partial text, nothing twice."""
    # long enough (4 s) that it cannot end before the stop, even on a loaded machine
    _agent(server, scripted_agent("slow", reply=SLOW_REPLY, tokens=200, token_delay_ms=20))
    with Tether(server.url) as tether:
        for press_at in ("agent> ", "alpha", "gamma"):
            sid = tether.sessions.create("slow").id
            screen = _Terminal(press_at)
            with monkeypatch.context() as patch:
                patch.setattr(sys, "stdout", screen)
                try:
                    chat.Chat(tether, sid).turn("hello")
                except KeyboardInterrupt:
                    pytest.fail("Ctrl-C escaped the chat")
            [*_, partial] = tether.sessions.messages(sid).to_list()
            assert screen.pressed, press_at
            assert (partial.role, partial.status) == ("assistant", "interrupted")
            line = screen.getvalue().splitlines()[0]
            assert line.startswith("agent> "), line
            assert line.endswith("⏹"), line
            shown = line.removeprefix("agent> ").removesuffix("⏹").strip()
            assert shown == (partial.content or "").strip(), press_at


def test_chat_with_on_busy_steer_joins_the_turn_under_way(server: ServerProcess) -> None:
    """A message typed while the session runs a turn from elsewhere joins that turn: the
    chat follows it, shows the steer's delivery and the reply that answers it."""
    _agent(server, scripted_agent("steady", reply="echo", tokens=60, token_delay_ms=30))
    child, sid = _chat(server, "steady", "--on-busy", "steer")
    r = httpx.post(f"{server.url}/v1/sessions/{sid}/turns", json={"input": "elsewhere"})
    tid = r.json()["id"]
    wait_until(
        lambda: _get(server, f"/v1/sessions/{sid}/turns/{tid}")["status"] == "running",
        20,
        "the other turn running",
    )
    child.sendline("use JWT")
    child.expect_exact("steered")
    child.expect_exact("use JWT use JWT")
    child.expect_exact("you> ")
    [turn] = _ended(server, sid, 1)
    assert turn["id"] == tid and turn["usage"]["model_calls"] == 2
    _quit(child)


def test_chat_asks_approvals_and_questions_inline(server: ServerProcess) -> None:
    """`y` runs the gated tool once, `n` never; a question is answered at its own prompt, and
    the chat then goes on (no turn queued behind a waiting one)."""
    tools = [{"name": "sleep", "policy": "approve"}]
    _agent(server, scripted_agent("gated", steps=APPROVE_STEPS, reply="finished", tools=tools))
    child, sid = _chat(server, "gated")
    child.sendline("please")
    child.expect_exact("approve? [y/n] ")
    child.sendline("y")
    child.expect_exact("sleep: completed")
    child.expect_exact("finished")
    child.expect_exact("you> ")
    child.sendline("again")
    child.expect_exact("approve? [y/n] ")
    child.sendline("n")
    child.expect_exact("sleep: denied")
    child.expect_exact("you> ")
    approved, denied = _ended(server, sid, 2)
    assert approved["status"] == denied["status"] == "completed"
    events = _get(server, f"/v1/sessions/{sid}/events", stream="false")["data"]

    def runs(turn: dict[str, Any]) -> list[str]:
        return [
            e["type"] + ":" + str(e["data"].get("outcome", ""))
            for e in events
            if e["turn_id"] == turn["id"] and e["type"].startswith("tool.")
        ]

    assert runs(approved) == ["tool.started:", "tool.completed:completed"]
    assert runs(denied) == ["tool.completed:denied"]
    _quit(child)

    _agent(server, scripted_agent("asker", steps=ASK_STEPS, tools=[{"name": "ask_user"}]))
    child, sid = _chat(server, "asker")
    child.sendline("hi")
    child.expect_exact("Which colour?")
    child.expect_exact("answer> ")
    child.sendline("blue")
    child.expect_exact("you> ")
    child.sendline("and again")  # a turn of its own, that asks in turn
    child.expect_exact("answer> ")
    child.sendline("red")
    child.expect_exact("you> ")
    asked, again = _ended(server, sid, 2)
    assert asked["status"] == again["status"] == "completed"
    interrupts = _get(server, f"/v1/sessions/{sid}/interrupts")["data"]
    assert [(i["turn_id"], i["response"]) for i in interrupts] == [
        (asked["id"], "blue"),
        (again["id"], "red"),
    ]
    _quit(child)


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tether", *args], capture_output=True, text=True, timeout=60, env=env
    )


def _one_line_error(out: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert out.returncode == code, (out.returncode, out.stdout, out.stderr)
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("error: ")
    assert text in out.stderr


def _invoke(*args: str, env: dict[str, str]) -> Any:
    """The CLI in this process (a subprocess costs a Python start): exit code and output."""
    return CliRunner().invoke(cli.app, list(args), env=env)


def test_reads_print_json_and_errors_are_one_line_with_an_exit_code(
    server: ServerProcess,
) -> None:
    env = _env(server.url)
    made = httpx.post(
        f"{server.url}/v1/sessions", json={"agent_id": "demo", "input": "hi"}, timeout=10
    )
    sid = made.json()["id"]
    _ended(server, sid, 1)

    def read(*args: str) -> Any:
        out = _invoke(*args, "--json", env=env)
        assert out.exit_code == 0, out.output
        return json.loads(out.stdout)

    assert [s["id"] for s in read("sessions", "ls")] == [sid]
    shown = read("sessions", "show", sid)
    assert shown["session"]["id"] == sid
    assert [t["status"] for t in shown["turns"]] == ["completed"]
    assert shown["messages"][0]["content"] == "hi"
    assert [a["name"] for a in read("agents", "ls")] == ["demo"]
    assert read("agents", "show", "demo")["name"] == "demo"
    assert read("interrupts", "ls", sid) == []
    assert read("sessions", "stop", sid)["turn"] is None
    [turn] = shown["turns"]
    fork = read("sessions", "fork", sid, "--turn", turn["id"], "--metadata", '{"try": 2}')
    assert fork["forked_from"] == {"session_id": sid, "turn_id": turn["id"], "at": "after"}
    assert fork["metadata"] == {"try": 2}
    plain = _invoke("sessions", "fork", sid, "--before", "--input", "again", env=env)
    assert plain.exit_code == 0, plain.output
    before = read("sessions", "show", plain.stdout.strip())
    assert before["session"]["forked_from"]["at"] == "before"
    assert before["turns"][0]["input"] == [{"role": "user", "content": "again"}]

    tail = pexpect.spawn(
        sys.executable,
        ["-m", "tether", "sessions", "tail", sid, "--json"],
        env=env,
        encoding="utf-8",
        timeout=30,
    )
    tail.expect(r"(\{[^\r\n]*\})\r\n")
    assert json.loads(tail.match.group(1))["seq"] == 1
    tail.sendintr()
    tail.expect(pexpect.EOF)
    tail.close()
    assert tail.exitstatus == 0

    for args, code, text in [
        (("sessions", "show", "01arz3ndektsv4rrffq69g5fav.local"), 5, "not found"),
        (("sessions", "show", "nope"), 5, "invalid_id"),
        (("interrupts", "approve", "int_01arz3ndektsv4rrffq69g5fav"), 5, "not found"),
        (("interrupts", "approve", "int_x", "--arguments", "[1]"), 2, "JSON object"),
        (("sessions", "ls", "--status", "busy"), 2, "--status must be one of"),
        (("sessions", "fork", sid, "--metadata", "[1]"), 2, "--metadata must be a JSON object"),
        (("chat", "--on-busy", "later"), 2, "--on-busy must be one of"),
    ]:
        out = _invoke(*args, env=env)
        assert out.exit_code == code, (args, out.output)
        assert out.stderr.startswith("error: ")
        assert out.stderr.count("\n") == 1
        assert text in out.stderr
    # as a person runs it: a process, no server there
    nowhere = _env(f"http://127.0.0.1:{free_port()}")
    _one_line_error(_run("chat", env=nowhere), 3, "cannot reach Tether")

    # once a key exists, a call without one is refused; with one, it works
    key = httpx.post(f"{server.url}/v1/keys", json={"role": "read"}, timeout=10).json()["key"]
    wait_until(lambda: _invoke("sessions", "ls", env=env).exit_code == 4, 20, "auth to be on")
    _one_line_error(_run("sessions", "ls", env={**env, "TETHER_API_KEY": "tth_a_b"}), 4, "API key")
    assert _invoke("sessions", "ls", env={**env, "TETHER_API_KEY": key}).exit_code == 0


def _waiting(server: ServerProcess, agent: str) -> tuple[str, str]:
    """A session whose turn waits for an approval: (session id, interrupt id)."""
    sid = httpx.post(
        f"{server.url}/v1/sessions", json={"agent_id": agent, "input": "go"}, timeout=10
    ).json()["id"]
    [pending] = wait_until(
        lambda: _get(server, f"/v1/sessions/{sid}/interrupts", status="pending")["data"],
        20,
        "the approval",
    )
    return sid, pending["id"]


def test_whoami_the_interrupts_inbox_and_rm(server: ServerProcess) -> None:
    """`whoami` in open mode and with keys; `interrupts ls` without a session lists all the
    tenant's pending ones, the one expiring soonest first; `sessions rm` closes, and with
    --purge erases after asking (a script must say --yes; admins only)."""
    env = _env(server.url)

    def run(*args: str, **extra: str) -> Any:
        out = _invoke(*args, env={**env, **extra})
        assert out.exit_code == 0, (args, out.output)
        return out

    me = json.loads(run("whoami", "--json").stdout)
    assert (me["tenant_id"], me["role"], me["auth"], me["key_id"]) == (
        "default",
        "admin",
        False,
        None,
    )
    assert "role    admin" in run("whoami").stdout

    for name, ttl in (("never", None), ("soon", 60)):
        tools = [{"name": "sleep", "policy": "approve"}]
        agent = scripted_agent(name, steps=APPROVE_STEPS, tools=tools)
        _agent(server, {**agent, "interrupt_ttl_s": ttl})
    never_sid, never = _waiting(server, "never")
    soon_sid, soon = _waiting(server, "soon")
    inbox = json.loads(run("interrupts", "ls", "--json").stdout)
    assert [i["id"] for i in inbox] == [soon, never]
    lines = run("interrupts", "ls").stdout.splitlines()
    assert lines[0].startswith(f"{soon}  approval  pending  expires in ")
    assert lines[1].strip() == f'{soon_sid}: sleep({{"seconds": 0}})'
    assert lines[2] == f"{never}  approval  pending  never expires"
    for args in ((never_sid,), ("--session", never_sid)):
        assert [i["id"] for i in json.loads(run("interrupts", "ls", *args, "--json").stdout)] == [
            never
        ]
    twice = _invoke("interrupts", "ls", never_sid, "--session", soon_sid, env=env)
    assert (twice.exit_code, twice.stdout) == (2, "")

    closed = json.loads(run("sessions", "rm", soon_sid, "--json").stdout)
    assert closed["closed_at"] is not None  # its waiting turn still waits: status `waiting`
    assert "closed (still readable" in run("sessions", "rm", soon_sid).stdout
    unasked = _invoke("sessions", "rm", soon_sid, "--purge", env=env)  # no terminal: no prompt
    assert unasked.exit_code == 2
    assert "--yes" in unasked.stderr
    asked = pexpect.spawn(
        sys.executable,
        ["-m", "tether", "sessions", "rm", soon_sid, "--purge"],
        env=env,
        encoding="utf-8",
        timeout=30,
    )
    asked.expect_exact("for good? [y/N]: ")
    asked.sendline("n")
    asked.expect_exact("not purged")
    asked.expect(pexpect.EOF)
    asked.close()
    assert asked.exitstatus == 1
    assert _get(server, f"/v1/sessions/{soon_sid}")["closed_at"], "still there"
    asked = pexpect.spawn(
        sys.executable,
        ["-m", "tether", "sessions", "rm", soon_sid, "--purge"],
        env=env,
        encoding="utf-8",
        timeout=30,
    )
    asked.expect_exact("for good? [y/N]: ")
    asked.sendline("y")
    asked.expect_exact(f"{soon_sid} purged")
    asked.expect(pexpect.EOF)
    asked.close()
    assert asked.exitstatus == 0
    assert _invoke("sessions", "show", soon_sid, env=env).exit_code == 5
    assert [i["id"] for i in json.loads(run("interrupts", "ls", "--json").stdout)] == [never]

    # with keys: who each one is; only an admin's may purge
    made = httpx.post(f"{server.url}/v1/keys", json={"role": "admin"}, timeout=10).json()
    admin = {"TETHER_API_KEY": made["key"]}
    write_key = httpx.post(
        f"{server.url}/v1/keys",
        json={"role": "write"},
        headers={"Authorization": f"Bearer {made['key']}"},
        timeout=10,
    ).json()
    writer = {"TETHER_API_KEY": write_key["key"]}
    wait_until(lambda: _invoke("whoami", env=env).exit_code == 4, 20, "auth to be on")
    me = json.loads(run("whoami", "--json", **writer).stdout)
    assert (me["role"], me["auth"], me["key_id"]) == ("write", True, write_key["id"])
    assert write_key["id"] in run("whoami", **writer).stdout
    refused = _invoke("sessions", "rm", never_sid, "--purge", "--yes", env={**env, **writer})
    assert refused.exit_code == 4, refused.output
    purged = json.loads(
        run("sessions", "rm", never_sid, "--purge", "--yes", "--json", **admin).stdout
    )
    assert purged == {"id": never_sid, "purged": True}
    assert json.loads(run("interrupts", "ls", "--json", **admin).stdout) == []


@pytest.mark.embedded
def test_keys_refuse_a_missing_store_and_list_whole_ids(tmp_path: Path) -> None:
    env = _env("http://127.0.0.1:1")
    typo = tmp_path / "tether-daat"
    for args in (("list",), ("create", "--tenant", "acme", "--role", "admin"), ("revoke", "x")):
        out = _invoke("keys", *args, "--data-dir", str(typo), env=env)
        assert out.exit_code == 2, out.output
        assert "no Tether store" in out.stderr
        assert "--create" in out.stderr
        assert not typo.exists(), "nothing made"

    data = str(tmp_path / "data")
    admin = ["--tenant", "acme", "--role", "admin", "--data-dir", data, "--create"]
    made = _invoke("keys", "create", *admin, env=env)
    assert made.exit_code == 0, made.output
    first = made.stdout.strip().splitlines()[-1]
    assert first.startswith("tth_")
    reader = ["--tenant", "a-rather-long-tenant-name", "--role", "read", "--data-dir", data]
    second = _invoke("keys", "create", *reader, "--name", "a long key name", "--json", env=env)
    assert second.exit_code == 0, second.output
    created = json.loads(second.stdout)
    assert created["key"].startswith("tth_")
    as_json = _invoke("keys", "list", "--data-dir", data, "--json", env=env)
    ids = [k["id"] for k in json.loads(as_json.stdout)]
    assert created["id"] in ids

    listed = _run("keys", "list", "--data-dir", data, env=env)  # a process, on 80 columns
    assert listed.returncode == 0, listed.stderr
    for key_id in ids:
        assert re.search(rf"(^|\s){key_id}(\s|$)", listed.stdout, re.M), listed.stdout
    assert max(len(line) for line in listed.stdout.splitlines()) <= 80
    assert first not in listed.stdout
    assert created["key"] not in listed.stdout

    revoked = _invoke("keys", "revoke", created["id"], "--data-dir", data, env=env)
    assert revoked.exit_code == 0, revoked.output
    nobody = "key_01arz3ndektsv4rrffq69g5fav"
    unknown = _invoke("keys", "revoke", nobody, "--data-dir", data, env=env)
    assert unknown.exit_code == 5
    assert "not found" in unknown.stderr
