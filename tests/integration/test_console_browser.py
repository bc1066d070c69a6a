"""The console in a real headless Chromium (DESIGN §12): streaming, Stop, the inbox, safety,
roles and reconnection, against a real server on the test's backend. Each test leaves
screenshots of what it saw (tests/console_browser.py: SCREENSHOTS)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from tests.console_browser import (
    Console,
    LiveServer,
    TcpProxy,
    blocked,
    browser_available,
    eventually,
    start_browser,
    stop_browser,
)
from tether.auth import Role
from tether.runtime.tools import ToolContext, builtin_registry

if not browser_available():  # CI installs them (.ci/run): there, missing is a failure
    if os.environ.get("CI"):
        raise RuntimeError("the browser tests need the chromium and chromium-driver packages")
    pytest.skip("chromium and chromedriver are not installed", allow_module_level=True)

STORY = "Once upon a time a careful agent streamed its answer, one token after another. "
HOSTILE = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script><b>bold?</b>'


class Recorder:
    """Tools that note each run, so a test can say what ran, and with what."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.tools = builtin_registry()
        self.tools.register(self.charge)
        self.tools.register(self.remove)
        self.tools.register(self.pick_colour)

    async def charge(self, amount: int) -> str:
        """Charge the customer's card."""
        self.calls.append(("charge", amount))
        return f"charged {amount}"

    async def remove(self, path: str) -> str:
        """Delete a file."""
        self.calls.append(("remove", path))
        return f"removed {path}"

    async def pick_colour(self, ctx: ToolContext) -> str:
        """Ask which colour to use."""
        answer = await ctx.ask({"question": "Which colour should the button be?"})
        self.calls.append(("pick_colour", answer))
        return f"picked {answer}"


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    driver = start_browser()
    try:
        yield driver
    finally:
        stop_browser(driver)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def live(tmp_path: Path, recorder: Recorder) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path, recorder.tools, sse_ping_s=5.0)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def console(browser: webdriver.Chrome, live: LiveServer) -> Iterator[Console]:
    page = Console(browser, live.url)
    yield page
    errors = page.script_errors()
    page.leave()  # its streams end before the server stops
    assert errors == []


def turn_block(status: str) -> str:
    return f'[data-role=transcript] .turn[data-status="{status}"]'


def test_streams_stops_within_a_second_and_rolls_back(live: LiveServer, console: Console) -> None:
    agent = live.agent("storyteller", {"reply": STORY, "tokens": 400, "token_delay_ms": 25}, [])
    sid = live.session(agent)
    console.open(f"#/sessions/{sid}")
    console.one("[data-role=link].link-live")

    console.one("[data-role=input]").send_keys("Tell me a story")
    console.one("[data-action=send]").click()
    streaming = ".msg-assistant[data-status=streaming] .msg-text"
    first = len(console.until(lambda: console.text(streaming), 10, "the first tokens"))
    grown = console.until(
        lambda: len(console.text(streaming)) > first + 40 and console.text(streaming),
        10,
        "more tokens while the turn runs",
    )
    assert STORY.startswith(grown[: len(STORY)])
    assert console.all(turn_block("running"))
    console.screenshot("session")

    started = time.monotonic()
    console.one("[data-action=stop]").click()
    console.until(
        lambda: (
            console.all(turn_block("cancelled"))
            and console.all(".msg-assistant[data-status=interrupted]")
        ),
        10,
        "the turn cancelled, with its partial text",
    )
    took = time.monotonic() - started
    assert took < 1.0, f"the stop showed after {took:.2f}s"
    [turn] = live.turns(sid)
    assert turn["status"] == "cancelled" and turn["reason"] == "client_cancelled"
    [kept] = [m for m in live.messages(sid) if m["role"] == "assistant"]
    assert kept["status"] == "interrupted"
    shown = console.text(".msg-assistant[data-status=interrupted] .msg-text")
    assert shown == kept["content"]  # the partial text, exactly: nothing lost, nothing doubled
    assert len(grown) <= len(shown)
    assert "client_cancelled" in console.text(f'[data-role=timeline] [data-turn-id="{turn["id"]}"]')
    assert console.one("[data-action=stop]").get_attribute("disabled") is not None

    # Rollback removes what the turn wrote; it asks for a second click
    console.one("[data-role=input]").send_keys("Another one")
    console.one("[data-action=send]").click()
    console.until(lambda: console.text(streaming), 10, "the second turn's tokens")
    rollback = console.one("[data-action=rollback]")
    rollback.click()
    assert rollback.text == "Confirm rollback"
    rollback.click()
    second = eventually(lambda: [t for t in live.turns(sid) if t["seq"] == 2], 5, "turn 2")[0]
    block = f'[data-turn-id="{second["id"]}"]'
    console.until(
        lambda: "rolled back" in console.text(f"[data-role=transcript] {block} .turn-head"),
        10,
        "the rolled-back turn",
    )
    assert not console.all(f"[data-role=transcript] {block} .msg")
    assert live.wait_turn(sid, second["id"], ("cancelled",))["status"] == "cancelled"
    assert all(m["turn_id"] != second["id"] for m in live.messages(sid))
    assert console.text(".msg-assistant[data-status=interrupted] .msg-text") == shown


def test_steer_the_running_turn_from_the_message_box(live: LiveServer, console: Console) -> None:
    """ "Steer the current turn": the message joins the turn that streams, shown as a steer in
    that turn once delivered, and the agent answers it in the same turn."""
    # 4 s an answer: the turn still runs when the steer is typed, also on a loaded machine
    agent = live.agent("steerable", {"reply": "echo", "tokens": 160, "token_delay_ms": 25}, [])
    sid = live.session(agent)
    turn = live.turn(sid, "Write the login page")
    console.open(f"#/sessions/{sid}")
    console.one("[data-role=link].link-live")
    console.until(lambda: console.all(turn_block("running")), 10, "the turn running")
    Select(console.one("[data-role=on-busy]")).select_by_value("steer")
    console.one("[data-role=input]").send_keys("Use JWT")
    console.one("[data-action=send]").click()
    notice = console.until(lambda: console.text("[role=status]"), 10, "the steer's notice")
    assert "Steer sent" in notice
    block = f'[data-role=transcript] [data-turn-id="{turn["id"]}"]'
    steer = console.until(
        lambda: [m for m in console.all(f"{block} .msg-user") if "steer" in m.text],
        15,
        "the steer shown in the turn",
    )
    assert "Use JWT" in steer[0].text
    live.wait_turn(sid, turn["id"], ("completed",))
    console.until(
        lambda: console.text(f"{block} .msg-assistant:last-child .msg-text").startswith("Use JWT"),
        10,
        "the answer to the steer",
    )
    assert [t["id"] for t in live.turns(sid)] == [turn["id"]]  # joined, not a new turn
    console.screenshot("session-steered")


def test_fork_from_a_finished_turn_opens_the_fork(live: LiveServer, console: Console) -> None:
    agent = live.agent("forkable", {"reply": "echo"}, [])
    sid = live.session(agent)
    first = live.turn(sid, "first question")
    live.wait_turn(sid, first["id"], ("completed",))
    second = live.turn(sid, "second question")
    live.wait_turn(sid, second["id"], ("completed",))
    console.open(f"#/sessions/{sid}")
    entry = f'[data-role=timeline] [data-turn-id="{first["id"]}"]'
    # the timeline is redrawn as events arrive: click the button as it is now
    console.until(lambda: console.one(f"{entry} [data-action=fork]").click() or True, 10, "fork")
    fork_id = console.until(
        lambda: (
            (h := console.driver.execute_script("return location.hash")) != f"#/sessions/{sid}"
            and h.removeprefix("#/sessions/")
        ),
        10,
        "the fork opened",
    )
    assert fork_id != sid
    console.until(lambda: console.all("[data-role=forked-from]"), 10, "the fork's origin")
    assert "after" in console.text("[data-role=forked-from]")
    texts = console.until(
        lambda: [e.text for e in console.all("[data-role=transcript] .msg-text")],
        10,
        "the copied history",
    )
    assert texts == ["first question", "first question"]
    assert len(console.all("[data-role=transcript] .turn")) == 1
    assert [m["content"] for m in live.messages(fork_id)] == ["first question"] * 2
    console.screenshot("session-fork")


def test_approval_from_the_inbox_runs_the_tool_once(
    live: LiveServer, console: Console, recorder: Recorder
) -> None:
    agent = live.agent(
        "billing",
        {
            "steps": [
                {
                    "text": "I will charge the card.",
                    "tool_calls": [{"name": "charge", "arguments": {"amount": 5}}],
                }
            ],
            "reply": "Charged.",
        },
        [{"name": "charge", "policy": "approve"}],
    )
    sid = live.session(agent)
    turn = live.turn(sid, "Charge me 5")
    console.open("#/inbox")
    card = console.one("[data-interrupt-id]")
    assert "charge" in card.text and '"amount": 5' in card.text
    console.until(lambda: console.text("[data-role=inbox-count]") == "1", 10, "the count")
    card.find_element(By.CSS_SELECTOR, "[data-action=approve]").click()
    console.gone("[data-interrupt-id]")
    live.wait_turn(sid, turn["id"], ("completed",))
    assert recorder.calls == [("charge", 5)]

    console.go(f"#/sessions/{sid}")
    tool = console.one(".tool-call[data-outcome=completed]")
    assert "charge" in tool.text and '"amount": 5' in tool.text
    console.until(lambda: console.text(".msg-assistant:last-child .msg-text") == "Charged.", 10, "")
    console.screenshot("session-tools")


def test_edit_arguments_and_deny_with_a_reason(
    live: LiveServer, console: Console, recorder: Recorder
) -> None:
    agent = live.agent(
        "careful",
        {
            "steps": [
                {
                    "text": "Two things need your approval.",
                    "tool_calls": [
                        {"name": "charge", "arguments": {"amount": 500}},
                        {"name": "remove", "arguments": {"path": "/etc/passwd"}},
                    ],
                }
            ],
            "reply": "Done.",
        },
        [
            {"name": "charge", "policy": "approve", "editable": True, "interrupt_ttl_s": 600},
            {"name": "remove", "policy": "approve", "interrupt_ttl_s": 3600},
        ],
    )
    sid = live.session(agent)
    turn = live.turn(sid, "Charge and clean up")
    ask = live.agent(
        "asker",
        {"steps": [{"tool_calls": [{"name": "pick_colour", "arguments": {}}]}], "reply": "ok"},
        [{"name": "pick_colour"}],
    )
    live.turn(live.session(ask), "Make a button")
    console.open("#/inbox")
    eventually(lambda: len(console.all("[data-interrupt-id]")) == 3, 10, "three cards")
    cards = console.all("[data-interrupt-id]")
    # expiring soonest first, then those that never expire
    assert ["charge" in cards[0].text, "remove" in cards[1].text] == [True, True]
    assert "Which colour" in cards[2].text and "no expiry" in cards[2].text
    console.screenshot("inbox")

    editor = cards[0].find_element(By.CSS_SELECTOR, "[data-role=arguments]")
    editor.clear()
    editor.send_keys('{"amount": 50}')
    cards[0].find_element(By.CSS_SELECTOR, "[data-action=approve]").click()
    assert not cards[1].find_elements(By.CSS_SELECTOR, "[data-role=arguments]")  # not editable
    cards[1].find_element(By.CSS_SELECTOR, "[data-role=reason]").send_keys("never that file")
    cards[1].find_element(By.CSS_SELECTOR, "[data-action=deny]").click()
    eventually(lambda: len(console.all("[data-interrupt-id]")) == 1, 10, "two cards gone")
    live.wait_turn(sid, turn["id"], ("completed",))
    assert recorder.calls == [("charge", 50)]
    [denied] = [m for m in live.messages(sid) if m["role"] == "tool" and m["name"] == "remove"]
    assert "never that file" in denied["content"]


def test_a_question_answered_in_the_inbox_reaches_the_tool(
    live: LiveServer, console: Console, recorder: Recorder
) -> None:
    agent = live.agent(
        "designer",
        {"steps": [{"tool_calls": [{"name": "pick_colour", "arguments": {}}]}], "reply": "ok"},
        [{"name": "pick_colour"}],
    )
    sid = live.session(agent)
    turn = live.turn(sid, "Make a button")
    console.open("#/inbox")
    card = console.one("[data-interrupt-id]")
    assert "Which colour should the button be?" in card.text
    card.find_element(By.CSS_SELECTOR, "[data-role=answer]").send_keys("teal")
    card.find_element(By.CSS_SELECTOR, "[data-action=answer]").click()
    console.gone("[data-interrupt-id]")
    live.wait_turn(sid, turn["id"], ("completed",))
    assert recorder.calls == [("pick_colour", "teal")]


def test_an_item_answered_elsewhere_just_disappears(live: LiveServer, console: Console) -> None:
    agent = live.agent(
        "billing",
        {"steps": [{"tool_calls": [{"name": "charge", "arguments": {"amount": 1}}]}]},
        [{"name": "charge", "policy": "approve"}],
    )
    sids = [live.session(agent) for _ in range(2)]
    for sid in sids:
        live.turn(sid, "go")
    eventually(lambda: all(live.pending(sid) for sid in sids), 10, "both approvals")
    console.open("#/inbox")
    eventually(lambda: len(console.all("[data-interrupt-id]")) == 2, 10, "two cards")

    # answered elsewhere between two refreshes: the console's own answer gets 409
    first = console.all("[data-interrupt-id]")[0]
    iid = first.get_attribute("data-interrupt-id")
    with blocked(console.driver, "*/v1/interrupts?*"):
        r = live.api.post(f"/v1/interrupts/{iid}/respond", json={"response": {"decision": "deny"}})
        assert r.status_code == 200
        first.find_element(By.CSS_SELECTOR, "[data-action=approve]").click()
        console.gone(f'[data-interrupt-id="{iid}"]')
    # and one answered elsewhere goes at the next refresh
    [other] = [i for sid in sids for i in live.pending(sid)]
    r = live.api.post(
        f"/v1/interrupts/{other['id']}/respond", json={"response": {"decision": "approve"}}
    )
    assert r.status_code == 200
    console.gone("[data-interrupt-id]")
    assert not console.all(".card-status.error, .notice-error:not([hidden])")


def test_hostile_output_is_shown_as_text_and_runs_nothing(
    live: LiveServer, console: Console
) -> None:
    agent = live.agent(
        "mallory",
        {
            "steps": [
                {
                    "text": HOSTILE,
                    "tool_calls": [{"name": "ask_user", "arguments": {"question": HOSTILE}}],
                }
            ],
            "reply": HOSTILE,
            "tokens": 40,
            "token_delay_ms": 5,
        },
        [{"name": "ask_user"}],
    )
    sid = live.session(agent)
    turn = live.turn(sid, HOSTILE)
    console.open("#/inbox")
    card = console.one("[data-interrupt-id]")
    assert console.text("[data-interrupt-id] .question") == HOSTILE
    card.find_element(By.CSS_SELECTOR, "[data-role=answer]").send_keys(HOSTILE)
    card.find_element(By.CSS_SELECTOR, "[data-action=answer]").click()
    live.wait_turn(sid, turn["id"], ("completed",))

    console.go(f"#/sessions/{sid}")
    console.until(
        lambda: len(console.all(".msg-assistant[data-status=completed]")) == 2, 10, "the replies"
    )
    texts = [e.get_attribute("textContent") for e in console.all(".msg .msg-text")]
    assert texts[0] == HOSTILE  # the user's input
    assert texts[1] == HOSTILE  # the first model step
    assert texts[2].startswith(HOSTILE[:20])  # the streamed final answer
    assert json.dumps(HOSTILE) in console.text(".tool-call .args")  # the arguments, as JSON
    console.one(".tool-result summary").click()
    assert HOSTILE in console.text(".tool-result pre")
    for tag in ("img", "script", "b"):
        assert not console.all(f"main {tag}"), tag
    assert console.driver.execute_script("return window.pwned === undefined")
    assert console.driver.title == "Tether console"


def test_a_read_key_sees_no_controls(tmp_path: Path, browser: webdriver.Chrome) -> None:
    live = LiveServer(tmp_path, auth="required")
    try:
        _, admin = live.bg.run(live.server.node.keys.create("acme", Role.ADMIN))
        _, reader = live.bg.run(live.server.node.keys.create("acme", Role.READ))
        live.api.headers["Authorization"] = f"Bearer {admin}"
        agent = live.agent(
            "billing",
            {"steps": [{"tool_calls": [{"name": "sleep", "arguments": {"seconds": 0}}]}]},
            [{"name": "sleep", "policy": "approve"}],
        )
        sid = live.session(agent)
        live.turn(sid, "go")
        eventually(lambda: live.pending(sid), 10, "the approval")

        console = Console(browser, live.url)
        console.open(f"#/sessions/{sid}")
        key = console.one("[data-role=signin] [data-role=key]")
        console.screenshot("sign-in")
        key.send_keys("tth_000000000000_wrong")
        console.one("[data-action=sign-in]").click()
        console.until(lambda: "refused" in console.text("[data-role=signin]"), 10, "a refusal")
        console.one("[data-role=key]").send_keys(reader)
        console.one("[data-action=sign-in]").click()

        console.one("[data-role=link].link-live")
        console.one(".msg-user")
        console.one("[data-interrupt-id]")
        assert "acme" in console.text("#who") and "read" in console.text("#who")
        for control in ("stop", "rollback", "send", "approve", "deny"):
            assert not console.all(f"[data-action={control}]"), control
        assert not console.all("[data-role=input]")
        assert "read only" in console.text(".readonly")
        console.screenshot("session-read-only")
        console.go("#/inbox")
        console.one("[data-interrupt-id]")
        assert not console.all("[data-action=approve], [data-action=deny], [data-role=reason]")
        console.go("#/sessions")
        console.one(f'[data-session-id="{sid}"]')
        assert not console.all("[data-action=new-session]")
        # and the API refuses what the console does not offer
        as_reader = httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {reader}"})
        with as_reader:
            assert as_reader.post(f"/v1/sessions/{sid}/interrupt", json={}).status_code == 403
        console.one("[data-action=forget-key]").click()
        console.one("[data-role=signin]")
        assert console.driver.execute_script("return sessionStorage.length") == 0
        assert console.script_errors() == []
    finally:
        browser.get("about:blank")
        live.close()


def test_the_stream_survives_a_server_side_connection_drop(
    live: LiveServer, browser: webdriver.Chrome
) -> None:
    proxy = TcpProxy(live.server.port)
    live.bg.run(proxy.start())
    try:
        console = Console(browser, f"http://127.0.0.1:{proxy.port}")
        agent = live.agent("storyteller", {"reply": STORY, "tokens": 240, "token_delay_ms": 20}, [])
        sid = live.session(agent)
        console.open(f"#/sessions/{sid}")
        console.one("[data-role=link].link-live")
        turn = live.turn(sid, "Tell me a story")
        streaming = ".msg-assistant[data-status=streaming] .msg-text"
        seen = []  # the streamed text just after each reconnect
        for at in (20, 200):  # twice, each in the middle of the message
            console.until(lambda at=at: len(console.text(streaming)) > at, 15, f"{at} chars")
            streams = proxy.event_streams
            live.bg.run(proxy.drop())
            cut = len(console.text(streaming))
            eventually(lambda s=streams: proxy.event_streams > s, 10, "a reconnect")
            seen.append(
                console.until(
                    lambda cut=cut: len(text := console.text(streaming)) > cut + 20 and text,
                    15,
                    "text after the reconnect",
                )
            )
        live.wait_turn(sid, turn["id"], ("completed",))
        [reply] = [m for m in live.messages(sid) if m["role"] == "assistant"]
        console.until(
            lambda: console.text(".msg-assistant[data-status=completed] .msg-text"),
            10,
            "the completed message",
        )
        # what streamed across the drops is the reply's beginning: nothing doubled, no gap
        for text in seen:
            assert reply["content"].startswith(text), text
        assert len(seen[-1]) < len(reply["content"])
        assert console.text(".msg-assistant .msg-text") == reply["content"]
        assert console.script_errors() == []
    finally:
        browser.get("about:blank")
        live.bg.run(proxy.close())


def test_sessions_waiting_first_live_filtered_and_paged_and_agents(
    live: LiveServer, console: Console
) -> None:
    approver = live.agent(
        "approver",
        {"steps": [{"tool_calls": [{"name": "charge", "arguments": {"amount": 9}}]}]},
        [{"name": "charge", "policy": "approve"}],
    )
    talker = live.agent("talker", {"reply": "Hi!", "tokens": 100, "token_delay_ms": 20}, [])
    waiting = live.session(approver, metadata={"customer": "c-42"})
    live.turn(waiting, "charge me")
    done = live.session(talker)
    first = live.turn(done, "hello")
    fresh = live.session(talker)
    eventually(lambda: live.pending(waiting), 10, "the approval")
    live.wait_turn(done, first["id"], ("completed",))

    console.open("#/sessions")
    rows = "[data-role=sessions] tr"
    console.until(lambda: len(console.all(rows)) == 3, 10, "three rows")
    order = console.attrs(rows, "data-session-id")
    assert order == [waiting, fresh, done]  # waiting first, then newest first
    # live: a turn started elsewhere shows in the list without a reload
    busy = live.turn(fresh, "talk to me")
    console.until(
        lambda: console.all(f'[data-session-id="{fresh}"][data-status="running"]'), 10, "running"
    )
    console.screenshot("sessions")
    live.wait_turn(fresh, busy["id"], ("completed",))
    console.until(
        lambda: console.all(f'[data-session-id="{fresh}"][data-status="idle"]'), 10, "idle again"
    )

    Select(console.one("[data-role=status-filter]")).select_by_value("waiting")
    console.until(lambda: len(console.all(rows)) == 1, 10, "only the waiting one")
    Select(console.one("[data-role=status-filter]")).select_by_value("")
    Select(console.one("[data-role=agent-filter]")).select_by_visible_text("talker")
    console.until(
        lambda: set(console.attrs(rows, "data-session-id")) == {fresh, done},
        10,
        "the talker's sessions",
    )
    Select(console.one("[data-role=agent-filter]")).select_by_value("")

    # paged: 25 a page, older ones behind "Older"
    more = [live.session(talker) for _ in range(25)]
    console.until(lambda: console.all(f'[data-session-id="{more[-1]}"]'), 10, "the newest")
    assert len(console.all(rows)) == 1 + 25  # the waiting one on top, then a page
    console.one("[data-role=older]").click()
    console.until(
        lambda: console.attrs(rows, "data-session-id") == [fresh, done, waiting],
        10,
        "page 2",
    )
    console.one("[data-role=newer]").click()
    console.until(lambda: console.all(f'[data-session-id="{more[-1]}"]'), 10, "page 1 again")

    # a new session from the console opens it
    Select(console.one("[data-role=new-session-agent]")).select_by_visible_text("talker")
    console.one("[data-action=new-session]").click()
    console.until(lambda: "#/sessions/" in console.driver.current_url, 10, "the new session")
    console.one("[data-role=link].link-live")

    console.go("#/agents")
    console.one(f'[data-agent-id="{approver}"] a').click()
    definition = console.one("[data-role=definition]").text
    assert '"name": "approver"' in definition and '"policy": "approve"' in definition
    assert not console.all("main button, main input, main textarea")  # read-only
    console.screenshot("agents")
