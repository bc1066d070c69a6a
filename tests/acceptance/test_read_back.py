"""A property of the whole API: whatever it accepted reads back. Hypothesis makes agents,
sessions with metadata, turns with input and answers to questions, through each surface that
makes them, out of nasty-but-maybe-valid values (tests/acceptance/nasty.py: lone surrogates,
odd characters, deep nesting, huge numbers). Each write may be refused (4xx), never a 5xx; and
once the server took it, its turns end (never failed or stuck for it), and every read of it on
every surface answers 2xx: get, list, events (JSON page and SSE), messages, turns, interrupts,
the compat surfaces' reads and streams, agent-threads' replay.

Examples: TETHER_FUZZ_CASES / 20, at least 10 (10 in `make test`, 50 in the full campaign with
TETHER_FUZZ_CASES=1000): each makes a session, runs its turns and reads it some thirty ways."""

from __future__ import annotations

import itertools
import json
import reprlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.acceptance import fuzz, nasty, readback
from tests.acceptance.procs import ServerProcess, create_key

TENANT = "acme"
EXAMPLES = max(10, fuzz.CASES // 20)
FACTORY = readback.FACTORY
GUMLOOP = readback.GUMLOOP
_names = itertools.count()


@dataclass
class Live:
    url: str
    key: str
    http: httpx.Client
    agents: dict[str, str] = field(default_factory=dict)  # kind -> id


def _agent(
    kind: str, name: str, instructions: str = "", metadata: Any = None, ttl: Any = None
) -> dict[str, Any]:
    """An agent of a kind: `echo` replies, `careful` asks approval for a tool, `curious` asks a
    question; `ttl` (nasty numbers too) is when its interrupts expire, set on the agent and on
    its tools."""
    steps: list[dict[str, Any]] = []
    tools: list[dict[str, Any]] = [{"name": "sleep"}, {"name": "ask_user"}]
    if kind == "careful":
        steps = [{"tool_calls": [{"name": "sleep", "arguments": {"seconds": 0}}]}]
        tools = [{"name": "sleep", "policy": "approve"}]
    elif kind == "curious":
        steps = [{"tool_calls": [{"name": "ask_user", "arguments": {"question": "and?"}}]}]
    model = {"provider": "scripted", "steps": steps, "reply": "echo", "tokens": 7}
    body = {"name": name, "instructions": instructions, "model": model, "tools": tools}
    if ttl is not None:
        body["interrupt_ttl_s"] = ttl
        tools[0]["interrupt_ttl_s"] = ttl
    return body | ({"metadata": metadata} if metadata is not None else {})


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    data = tmp_path_factory.mktemp("readback") / "data"
    key = create_key(data, tenant=TENANT)
    server = ServerProcess(data, **fuzz.SERVER_SETTINGS).start()
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as http:
        it = Live(server.url, key, http)
        for kind in ("echo", "careful", "curious"):
            r = http.post("/v1/agents", json=_agent(kind, f"{kind}-{time.monotonic_ns()}"))
            assert r.status_code == 201, r.text
            it.agents[kind] = r.json()["id"]
        yield it
    server.stop()


@dataclass(repr=False)
class Plan:
    surface: str
    kind: str
    agent: tuple[str, Any] | None  # a new agent's nasty (instructions, metadata), or None
    ttl: Any  # when a new agent's interrupts expire (on it and on its tool), or None
    metadata: Any
    name: str
    first: str | None
    second: str
    answer: Any

    def __repr__(self) -> str:  # deep values shown in part: failures stay readable
        shown = reprlib.Repr()
        shown.maxlevel, shown.maxstring, shown.maxother = 4, 40, 40
        fields = ", ".join(f"{k}={shown.repr(v)}" for k, v in vars(self).items())
        return f"Plan({fields})"


PLANS = st.builds(
    Plan,
    surface=st.sampled_from(["v1", "factory", "gumloop", "truefoundry"]),
    kind=st.sampled_from(["echo", "careful", "curious"]),
    agent=st.none() | st.tuples(nasty.text(), nasty.OBJECTS),
    ttl=st.none() | nasty.DURATIONS,
    metadata=nasty.OBJECTS,
    name=nasty.text(),
    first=st.none() | nasty.text(),
    second=nasty.text(),
    answer=nasty.JSON,
)


class Run:
    """One plan carried out: every write's answer checked (a refusal is fine, a 5xx is not)."""

    def __init__(self, live: Live, plan: Plan, failures: list[str]):
        self.http = live.http
        self.plan = plan
        self.failures = failures

    def write(self, method: str, path: str, body: Any) -> dict[str, Any] | None:
        """The answer if the server took it, else None."""
        # json.dumps escapes a lone surrogate as `\\ud800`, valid JSON (httpx's own would raise)
        sent = {"content": json.dumps(body), "headers": {"content-type": "application/json"}}
        try:
            r = self.http.request(method, path, **sent)
        except httpx.HTTPError as exc:
            self.failures.append(f"{method} {path}: no answer {exc!r}\n  {self.plan}")
            return None
        if r.status_code >= 500:
            answer = f"{r.status_code} {r.text[:200]}"
            self.failures.append(f"{method} {path} -> {answer}\n  {self.plan}")
        if not r.is_success:
            return None
        if "json" not in r.headers.get("content-type", ""):
            return {}  # a stream
        try:
            return r.json()  # type: ignore[no-any-return]
        except ValueError:
            self.failures.append(f"{method} {path} -> {r.status_code}: not JSON\n  {self.plan}")
            return None

    def agent(self, live: Live) -> tuple[str, str]:
        """(id, name) of the agent to use: a new one with nasty fields if the server took it."""
        if self.plan.agent is not None or self.plan.ttl is not None:
            name = f"n{next(_names)}-{time.monotonic_ns()}"
            instructions, metadata = self.plan.agent or ("", None)
            body = _agent(self.plan.kind, name, instructions, metadata, self.plan.ttl)
            made = self.write("POST", "/v1/agents", body)
            if made is not None:
                return made["id"], name
        agent_id = live.agents[self.plan.kind]
        return agent_id, agent_id

    def session(self, agent_id: str, agent_name: str) -> str | None:
        plan = self.plan
        if plan.surface == "v1":
            body = {"agent_id": agent_id, "metadata": plan.metadata}
            made = self.write("POST", "/v1/sessions", body | _maybe("input", plan.first))
        elif plan.surface == "factory":
            body = {"agentId": agent_id, "metadata": plan.metadata}
            made = self.write("POST", f"{FACTORY}/sessions", body | _maybe("message", plan.first))
        elif plan.surface == "gumloop":
            body = {"metadata": plan.metadata, "name": plan.name} | _maybe("input", plan.first)
            made = self.write("POST", f"{GUMLOOP}/agents/{agent_id}/sessions", body)
            made = made and made["session"]
        else:
            made = self.write("POST", _tf(), {"agent_name": agent_name})
            made = made and made["data"]
            if made and plan.first is not None:
                self._tf_turn(made["id"], plan.first)
        return made["id"] if made else None

    def _tf_turn(self, session_id: str, text: str) -> None:
        item = {"type": "user.message", "content": text}
        self.write("POST", f"{_tf()}/{session_id}/turns", {"input": [item]})

    def another_turn(self, session_id: str, _: readback.Reader) -> None:
        text, surface = self.plan.second, self.plan.surface
        if surface == "v1":
            self.write("POST", f"/v1/sessions/{session_id}/turns", {"input": text})
        elif surface == "factory":
            self.write("POST", f"{FACTORY}/sessions/{session_id}/messages", {"content": text})
        elif surface == "gumloop":
            body = {"input": text, "delivery": "queued"}
            self.write("POST", f"{GUMLOOP}/sessions/{session_id}/messages", body)
        else:
            self._tf_turn(session_id, text)

    def answer(self, session_id: str, reader: readback.Reader) -> None:
        """Answer what the session waits on (if it does): an approval with a nasty reason, a
        question with nasty JSON."""
        page = reader.read("GET", f"/v1/sessions/{session_id}/interrupts?status=pending")
        for interrupt in page["data"] if page else []:
            response: Any = self.plan.answer
            if interrupt["type"] == "approval":
                response = {"decision": "approve", "reason": self.plan.name}
            path = f"/v1/interrupts/{interrupt['id']}/respond"
            self.write("POST", path, {"response": response})


def _tf() -> str:
    return f"/compat/truefoundry/{TENANT}/v1/agents/sessions"


def _maybe(name: str, value: Any) -> dict[str, Any]:
    return {name: value} if value is not None else {}


@pytest.mark.timeout(fuzz.TIMEOUT_S)
def test_whatever_was_accepted_reads_back(live: Live) -> None:
    failures: list[str] = []
    accepted: list[str] = []  # sessions the server took: their reads are what is tested
    reader = readback.Reader(live.url, live.key, TENANT)

    @given(plan=PLANS)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.generate],  # the server's state moves on: a replay is not the same run
        suppress_health_check=list(HealthCheck),
    )
    def one(plan: Plan) -> None:
        run = Run(live, plan, failures)
        reader.failures.clear()
        agent_id, agent_name = run.agent(live)
        session_id = run.session(agent_id, agent_name)
        if session_id is None:
            return  # refused (a 5xx is recorded)
        accepted.append(session_id)
        for step in (run.answer, run.another_turn, run.answer):
            if session_id not in reader.settle([session_id]):
                break  # stuck (recorded): its streams would not end
            step(session_id, reader)
        else:
            reader.sessions([session_id])
            turns = reader.read("GET", f"/v1/sessions/{session_id}/turns", params={"limit": 1000})
            for turn in turns["data"] if turns else []:
                if turn["status"] == "failed":
                    reader.failures.append(f"turn {turn['id']} failed: {turn.get('error')}")
        failures.extend(f"{f}\n  {plan}" for f in reader.failures)

    try:
        one()
        reader.failures.clear()
        reader.lists()  # every page of every list, with all of it in
        failures.extend(reader.failures)
    finally:
        reader.close()
    print(f"read-back: {EXAMPLES} plans, {len(accepted)} sessions accepted and read back")
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:15])
