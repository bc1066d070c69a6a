"""Schemathesis driven through Hypothesis directly (its pytest plugin predates this pytest):
every operation of a schema, against a live server. For Tether's own OpenAPI, for the
vendors' seed contracts (verbatim copies of ../shared/specs/ in specs/ beside this file, so
CI needs nothing outside the repository), and for each compat surface's own routes (an
OpenAPI made from its router: what the seed contracts do not cover).

The cases are widened with nasty data (tests/acceptance/nasty.py): schema-valid and
schema-invalid cases, then about half of them with lone surrogates, deep nesting, huge
integers or odd cursors put into their query, headers, path or body.

`TETHER_FUZZ_CASES` sets the cases per surface (default 200, what `make test` runs; the full
campaign is 1000 or more: `TETHER_FUZZ_CASES=1000 make test`).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import requests
import schemathesis
from cryptography.fernet import Fernet
from fastapi import APIRouter
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi import checks
from schemathesis.specs.openapi.schemas import OpenApiSchema

from tests import helpers
from tests.acceptance import nasty, procs

SPECS = Path(__file__).resolve().parent / "specs"
# A fuzzed server's settings: auth on; a secret key, so that webhook endpoints can be made in
# cluster mode too (their secrets are sealed); no webhook dispatcher, so that the endpoints a
# campaign makes never send anything anywhere (their deliveries are still written and listed);
# keep-alive pings every 2 s, so that a stream which should have ended is seen within seconds
# (readback.py).
SERVER_SETTINGS: dict[str, Any] = {
    "auth": "required",
    "workers": 8,
    "webhook_concurrency": 0,
    "sse_ping_s": 2,
    "secret_key": Fernet.generate_key().decode(),
}
CASES = int(os.environ.get("TETHER_FUZZ_CASES", "200"))
# a surface's run takes seconds at the default; a full campaign on a loaded 2-core machine
# may take ~0.3 s a case: the per-test timeout grows with it (pytest's default is 120 s)
TIMEOUT_S = max(120, CASES // 2)
Cases = st.SearchStrategy[schemathesis.Case]
# how to widen an operation's cases (e.g. with ids that exist on the server)
Widen = Callable[[Any, Cases], Cases]


def vendor_schema(spec: str, base_url: str) -> OpenApiSchema:
    """A vendor's seed contract (a file in specs/), aimed at `base_url`."""
    schema = schemathesis.openapi.from_path(SPECS / spec)
    schema.config.update(base_url=base_url)
    return schema


def surface_schema(router: APIRouter, base_url: str) -> OpenApiSchema:
    """An OpenAPI of a compat surface's routes as the router declares them (the app leaves
    them out of /openapi.json: the vendors' contracts document them). Its statuses are only
    FastAPI's defaults, so check such a schema for 5xx, not for conformance."""
    routes = []
    for route in router.routes:
        if isinstance(route, APIRoute) and "{unmatched:path}" not in route.path:
            shown = copy.copy(route)
            shown.include_in_schema = True
            routes.append(shown)
    schema = schemathesis.openapi.from_dict(
        get_openapi(title=router.prefix, version="0", routes=routes)
    )
    schema.config.update(base_url=base_url)
    return schema


def operations(schema: OpenApiSchema) -> list[Any]:
    return [result.ok() for result in schema.get_all_operations()]


WRITES_WEIGH = 3  # an operation with a body draws this many times the examples of a read


def _weight(operation: Any) -> int:
    return WRITES_WEIGH if operation.body else 1


def per_operation(*schemas: OpenApiSchema, cases: int = CASES) -> int:
    """Examples per read operation so that the schemas' operations together make `cases`.
    Writes draw more (`WRITES_WEIGH`): what they store is what breaks reads later."""
    return math.ceil(cases / sum(_weight(op) for s in schemas for op in operations(s)))


def generated(operation: Any) -> Cases:
    """Schema-valid and, where the operation has something to violate, schema-invalid cases."""
    modes = [operation.as_strategy(generation_mode=GenerationMode.POSITIVE)]
    with contextlib.suppress(Exception):  # nothing to negate: no parameters, no body
        modes.append(operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))
    return st.one_of(modes)


@st.composite
def nastier(draw: st.DrawFn, operation: Any, cases: Cases) -> tuple[schemathesis.Case, bool]:
    """A case, and whether nasty data was put into it (then it no longer says whether the
    schema allows it: the checks of valid data accepted and invalid data refused are off,
    the others hold, first of all no 5xx)."""
    case = draw(cases)
    if not draw(st.booleans()):
        return case, False
    # One place takes the poison, as a probe would put it there; others now and then too.
    places = (
        ["header"] + ["query"] * bool(operation.query) + ["path"] * bool(operation.path_parameters)
    )
    places += ["body"] * 2 * isinstance(case.body, dict | list)
    target = draw(st.sampled_from(places))

    def now(place: str) -> bool:
        return place == target or draw(st.integers(0, 5)) == 0

    query = dict(case.query or {})
    params = [p.name for p in operation.query]
    if params and now("query"):
        name = draw(st.sampled_from(params))
        positional = any(word in name for word in ("cursor", "after", "token", "seq"))
        query[name] = draw(
            nasty.NUMERIC_LOOKALIKES if positional and draw(st.booleans()) else nasty.CURSORS
        )
    case.query = query
    headers = case.headers
    if now("header"):
        for param in operation.headers:
            if param.name.lower() != "authorization" and draw(st.booleans()):
                headers[param.name] = draw(nasty.HEADER_TEXT)
        if operation.method.lower() in ("get", "post"):
            values = nasty.NUMERIC_LOOKALIKES | nasty.HEADER_TEXT | nasty.CURSORS
            headers["Last-Event-ID"] = draw(values.filter(nasty.sendable))
    path = dict(case.path_parameters or {})
    if operation.path_parameters and now("path"):
        name = draw(st.sampled_from([p.name for p in operation.path_parameters]))
        path[name] = draw(nasty.url_text())
    case.path_parameters = path
    if isinstance(case.body, dict | list) and now("body"):
        # mostly the same shape with a poisoned spot (what gets past validation), else broken
        spoil = st.sampled_from([nasty.poisoned, nasty.poisoned, nasty.mutated])
        case.body = draw(draw(spoil)(copy.deepcopy(case.body)))
    # Made by hand now: no claim left on whether the schema allows it (schemathesis would
    # re-check, with a validator that cannot even read a lone surrogate).
    object.__setattr__(case, "_meta", None)
    return case, True


FRESH = "<fresh>"  # in a template: a new name each time (agent names are unique)
_fresh = itertools.count()


@dataclass
class World:
    """Real objects for cases to name, per parameter name (generated ids name nothing, and
    nasty data must get past the lookup to find anything), and bodies the server takes, per
    operation (`METHOD /path`), for the poison to ride past validation into storage: a schema
    as rich as an agent's rarely yields a body that is valid as a whole."""

    path: dict[str, list[str]] = field(default_factory=dict)
    query: dict[str, list[str]] = field(default_factory=dict)
    body: dict[str, list[str]] = field(default_factory=dict)
    templates: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def _templates(agent: str, agent_name: str) -> dict[str, list[dict[str, Any]]]:
    scripted = {"provider": "scripted", "reply": "echo", "tokens": 5}
    hello = {"k": "v", "n": 1, "list": [1, "x"], "nested": {"a": {"b": "c"}}}
    tf = "/compat/truefoundry/{tenant}/v1/agents/sessions"
    return {
        "POST /v1/agents": [
            {"name": FRESH, "instructions": "be brief", "metadata": hello, "model": scripted}
        ],
        "PATCH /v1/agents/{agent_id}": [{"instructions": "be brief", "metadata": hello}],
        "POST /v1/sessions": [
            {"agent_id": agent, "metadata": hello, "input": "hello"},
            {"agent_id": agent, "input": [{"role": "user", "content": "hello"}]},
        ],
        "POST /v1/sessions/{session_id}/turns": [
            {"input": "hello"},
            {"input": [{"role": "user", "content": "hello"}], "on_busy": "enqueue"},
        ],
        "POST /v1/interrupts/{interrupt_id}/respond": [
            {"response": {"decision": "approve", "reason": "fine"}},
            {"response": {"answer": "yes"}, "resolved_by": "someone"},
        ],
        "POST /compat/factory/api/v0/sessions": [
            {"agentId": agent, "metadata": hello, "message": "hello"}
        ],
        "POST /compat/factory/api/v0/sessions/{sessionId}/messages": [{"content": "hello"}],
        "POST /compat/gumloop/api/v1/agents/{agent_id}/sessions": [
            {"input": "hello", "metadata": hello, "name": "a name"}
        ],
        "POST /compat/gumloop/api/v1/sessions/{session_id}/messages": [
            {"input": "hello", "delivery": "queued"}
        ],
        f"POST {tf}": [{"agent_name": agent_name}],
        f"POST {tf}/{{session_id}}/turns": [
            {"input": [{"type": "user.message", "content": "hello"}]}
        ],
    }


def seed_world(url: str, key: str) -> World:
    """Agents, and sessions at rest in each state a surface tells apart: idle, completed,
    waiting on an approval (with its interrupt). No turn here runs for long: a stream drawn
    on one must end."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:

        def made(path: str, body: dict[str, Any]) -> dict[str, Any]:
            r = c.post(path, json=body)
            assert r.status_code == 201, r.text
            return r.json()  # type: ignore[no-any-return]

        stamp = time.monotonic_ns()
        # first, so that the turns below write deliveries for it
        hook = made("/v1/webhooks", {"url": "https://hooks.example.com/fuzz", "events": ["*"]})
        echo = made("/v1/agents", helpers.scripted_agent(f"echo{stamp}", reply="echo", tokens=5))
        call = {"name": "sleep", "arguments": {"seconds": 0}}
        careful = made(
            "/v1/agents",
            {
                "name": f"careful{stamp}",
                "model": {"provider": "scripted", "steps": [{"tool_calls": [call]}]},
                "tools": [{"name": "sleep", "policy": "approve"}],
            },
        )
        idle = made("/v1/sessions", {"agent_id": echo["id"]})
        done = made("/v1/sessions", {"agent_id": echo["id"], "input": "hi"})
        waiting = made("/v1/sessions", {"agent_id": careful["id"], "input": "go"})

        def asks() -> list[str]:
            page = c.get(f"/v1/sessions/{waiting['id']}/interrupts").json()
            return [i["id"] for i in page["data"]]

        interrupts = procs.wait_until(asks, 30, "the approval")
        procs.wait_until(
            lambda: c.get(f"/v1/sessions/{done['id']}").json()["status"] == "idle", 30, "rest"
        )

        def deliveries() -> list[str]:
            page = c.get(f"/v1/webhooks/{hook['id']}/deliveries").json()
            return [d["id"] for d in page["data"]]

        delivered = procs.wait_until(deliveries, 30, "a delivery in the outbox")
    sessions = [done["id"], idle["id"], waiting["id"]]  # the first with its turn first
    turns = [s["turn"]["id"] for s in (done, waiting)]
    agents = [echo["id"], careful["id"]]
    names = [echo["name"], careful["name"]]
    return World(
        path={
            "session_id": sessions,
            "sessionId": sessions,
            "turn_id": turns,
            "agent_id": agents,
            "interrupt_id": interrupts,
            "webhook_id": [hook["id"]],
            "delivery_id": delivered,
        },
        query={"agent_id": agents, "agent_name": names, "last_turn_id": turns},
        body={"agent_id": agents, "agentId": agents, "agent_name": names},
        templates=_templates(echo["id"], echo["name"]),
    )


def with_real_ids(world: World) -> Widen:
    """Also draw cases whose path, query and top-level body fields name the world's objects."""

    def widen(_: Any, cases: Cases) -> Cases:
        @st.composite
        def real(draw: st.DrawFn) -> schemathesis.Case:
            case = draw(cases)

            def named(values: dict[str, Any], pools: dict[str, list[str]]) -> dict[str, Any]:
                out = dict(values)
                for name, ids in pools.items():  # mostly real: nasty data must get past them
                    if name in out and ids and draw(st.integers(0, 3)):
                        out[name] = draw(st.sampled_from(ids))
                return out

            case.path_parameters = named(case.path_parameters or {}, world.path)
            case.query = named(case.query or {}, world.query)
            if isinstance(case.body, dict):
                case.body = named(case.body, world.body)
            templates = world.templates.get(f"{case.method.upper()} {case.path}")
            if templates and draw(st.booleans()):
                body = copy.deepcopy(draw(st.sampled_from(templates)))
                if body.get("name") == FRESH:
                    body["name"] = f"fz{next(_fresh)}-{time.monotonic_ns()}"
                case.body = body
            return case

        return real()

    return widen


@dataclass
class Outcome:
    """What a run saw: each answer's status, and each failed check (never raised mid-run:
    the server's state moves on, so a replay would not show the same thing)."""

    statuses: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def __add__(self, other: Outcome) -> Outcome:
        return Outcome(self.statuses + other.statuses, self.failures + other.failures)

    def summary(self, surface: str) -> str:
        """One line for the campaign's record: how many answers, of which statuses."""
        counts: dict[int, int] = {}
        for status in self.statuses:
            counts[status // 100] = counts.get(status // 100, 0) + 1
        shown = ", ".join(f"{kind}xx {n}" for kind, n in sorted(counts.items()))
        failed = len(self.failures)
        return f"fuzz {surface}: {len(self.statuses)} cases ({shown}), {failed} failures"

    def report(self, limit: int = 8) -> str:
        """Distinct failures (by their first line), each with one example."""
        seen: dict[str, str] = {}
        for failure in self.failures:
            seen.setdefault(failure.splitlines()[0], failure)
        shown = list(seen.values())[:limit]
        return f"{len(self.failures)} failures, {len(seen)} distinct:\n\n" + "\n\n".join(shown)


def json_pages(path: str, query: dict[str, Any]) -> None:
    """For a sweep: reads that may stream answer at once. /v1 events as a JSON page; a
    Gumloop `last_cursor` is read only by a stream, which on a session at rest ends."""
    if path.endswith("/events") and path.startswith("/v1/"):
        query["stream"] = "false"
    if "last_cursor" in query:
        query["stream"] = "true"


def sweep(
    schema: OpenApiSchema,
    *,
    url: str,
    key: str,
    world: World,
    pin: Callable[[str, dict[str, Any]], None] | None = None,
) -> Outcome:
    """Every query parameter of every operation, and `Last-Event-ID` where a stream may
    resume, with each of `nasty.EDGE_VALUES` (the rest of the request valid, on real objects):
    never a 5xx. What random cases reach only by luck, deterministically. `pin(path, query)`
    edits each request's query last."""
    outcome = Outcome()
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=auth, timeout=60) as http:
        for operation in operations(schema):
            path = operation.path
            for param in operation.path_parameters:
                pool = world.path.get(param.name) or (["acme"] if param.name == "tenant" else [])
                if not pool:
                    break
                path = path.replace("{" + param.name + "}", pool[0])
            else:
                required = {
                    p.name: world.query[p.name][0]
                    for p in operation.query
                    if p.is_required and world.query.get(p.name)
                }
                method = operation.method.upper()
                body = {} if method == "POST" else None
                places = [("query", p.name) for p in operation.query]
                if method == "GET" or path.endswith("/subscribe"):
                    places.append(("header", "Last-Event-ID"))
                for (where, name), value in itertools.product(places, nasty.EDGE_VALUES):
                    query, headers = dict(required), dict[str, bytes]()
                    if where == "query":
                        query[name] = value
                    elif value.isprintable() and value == value.strip():
                        headers[name] = value.encode()  # UTF-8 bytes, as a client sends them
                    else:
                        continue
                    if pin is not None:
                        pin(path, query)
                    sent = {"params": query, "headers": headers, "json": body}
                    try:
                        try:
                            r = http.request(method, path, **sent)
                        except httpx.TransportError:  # the server dropped the connection
                            r = http.request(method, path, **sent)  # after a 5xx: once more
                    except httpx.HTTPError as exc:
                        outcome.failures.append(
                            f"{method} {path} {where} {name}={value!r}: {exc!r}"
                        )
                        continue
                    outcome.statuses.append(r.status_code)
                    if r.status_code >= 500:
                        shown = f"{name}={value[:40]!r}"
                        answer = f"{r.status_code} {r.text[:200]}"
                        outcome.failures.append(f"{method} {path} {where} {shown} -> {answer}")
    return outcome


def run_stateless(
    schema: OpenApiSchema,
    *,
    key: str,
    per_operation: int,
    excluded_checks: Sequence[Any] = (),
    only_checks: Sequence[Any] | None = None,
    widen: Widen | None = None,
    path: dict[str, str] | None = None,
    pin: Callable[[schemathesis.Case], None] | None = None,
) -> Outcome:
    """Call every operation with generated, widened, half of them nasty cases, and validate
    each answer: no 5xx and, unless `only_checks` narrows them (or the case is nasty), status
    documented, body conforming, auth not ignored. `path` pins path parameters and `pin`
    edits each case last."""
    outcome = Outcome()
    auth = {"Authorization": f"Bearer {key}"}
    sent = {"timeout": 20, "headers": auth}
    for operation in operations(schema):
        strategy = generated(operation)
        if widen is not None:
            strategy = widen(operation, strategy)

        @given(drawn=nastier(operation, strategy))
        @settings(
            max_examples=per_operation * _weight(operation),
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
            phases=[Phase.generate],
        )
        def check(drawn: tuple[schemathesis.Case, bool]) -> None:
            case, is_nasty = drawn
            if path:
                case.path_parameters = {**(case.path_parameters or {}), **path}
            if pin is not None:
                pin(case)
            case.headers = {**(case.headers or {}), **auth}  # even where it drew "no key"
            try:
                # an SSE answer is read for this long in all (one may follow a queued turn)
                response = case.call(headers=auth, timeout=20)
            except requests.RequestException as exc:
                outcome.failures.append(f"{case.operation.label}: no answer: {exc}"[:2000])
                return
            outcome.statuses.append(response.status_code)
            # a nasty path may route elsewhere (an empty id: the list, or 405): only the
            # promise of no 5xx holds
            chosen = [not_a_server_error] if is_nasty else only_checks
            try:
                case.validate_response(
                    response,
                    checks=list(chosen) if chosen is not None else None,
                    additional_checks=[checks.ignored_auth] if chosen is None else [],
                    # Whether a case is "invalid" is schemathesis' guess from what it drew, before
                    # the key was added, real ids put in, unknown query parameters ignored (as
                    # HTTP APIs commonly do): it mistakes such cases for refusals owed.
                    excluded_checks=[checks.negative_data_rejection, *excluded_checks],
                    headers=auth,
                    transport_kwargs=sent,
                )
            except (AssertionError, FailureGroup) as exc:
                where = f"{case.operation.label} -> {response.status_code}"
                outcome.failures.append(f"{where}: {str(exc).strip()}"[:3000])
            except (RecursionError, ValueError) as exc:  # the report of a very deep body
                where = f"{case.operation.label} -> {response.status_code}"
                body = response.text[:300]
                outcome.failures.append(f"{where}: a check failed ({exc!r}): {body}")

        check()
    return outcome
