"""The compat surfaces' part of the fuzz campaign (tests/acceptance/fuzz.py), on a real server
with auth on, TETHER_FUZZ_CASES cases per surface (Gumloop, Factory, TrueFoundry):

- the vendor's own seed contract (specs/ beside this file): every answer's status is
  documented and its body conforms, no 5xx, auth is not ignored;
- the surface's other routes, as its router declares them: no 5xx;

with nasty data, and ids of real sessions in every state (idle, running, waiting, done);
then whatever the surface accepted must read back on every surface. And the agent-threads
WebSocket, which has no contract: TETHER_FUZZ_CASES messages made from nasty data
(tests/acceptance/threads_fuzz.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi import checks

from tests import helpers
from tests.acceptance import fuzz, readback, threads_fuzz
from tests.acceptance.procs import ServerProcess, create_key
from tether.api.compat import factory, gumloop, truefoundry

TENANT = "acme"  # create_key's


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    data = tmp_path_factory.mktemp("compat") / "data"
    key = create_key(data, tenant=TENANT)
    server = ServerProcess(data, **fuzz.SERVER_SETTINGS).start()
    yield server.url, key
    server.stop()


def _running_sessions(url: str, key: str) -> list[str]:
    """Sessions whose turn runs (for minutes): for the seed contracts' stops only, whose
    answers never stream."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as c:
        slow = helpers.scripted_agent(f"slow{time.monotonic_ns()}", tokens=10**6, token_delay_ms=5)
        agent = c.post("/v1/agents", json=slow)
        assert agent.status_code == 201, agent.text
        made = []
        for _ in range(3):
            r = c.post("/v1/sessions", json={"agent_id": agent.json()["id"], "input": "go"})
            assert r.status_code == 201, r.text
            made.append(str(r.json()["id"]))
        return made


SURFACES: dict[str, tuple[APIRouter, str, str]] = {
    # surface: (its router, its seed contract, where that contract's paths start)
    "gumloop": (gumloop.router, "gumloop-cancel-session.openapi.yaml", gumloop.PREFIX),
    "factory": (factory.router, "factory-interrupt-session.openapi.yaml", "/compat/factory"),
    "truefoundry": (
        truefoundry.router,
        "truefoundry-cancel-turn.openapi.yaml",
        f"/compat/truefoundry/{TENANT}",
    ),
}


@pytest.mark.timeout(fuzz.TIMEOUT_S)
@pytest.mark.parametrize("surface", sorted(SURFACES))
def test_surface(live: tuple[str, str], surface: str) -> None:
    url, key = live
    router, spec, seed_base = SURFACES[surface]
    seed = fuzz.vendor_schema(spec, url + seed_base)
    own = fuzz.surface_schema(router, url)
    per_operation = fuzz.per_operation(seed, own)
    reader = readback.Reader(url, key, TENANT)
    earlier = set(reader.lists())  # read back after the surfaces before this one
    reader.failures.clear()  # theirs, reported there
    world = fuzz.seed_world(url, key)
    running = _running_sessions(url, key)
    stops = fuzz.World(
        path={name: ids + running for name, ids in world.path.items() if "ession" in name}
    )
    # TrueFoundry's contract types sessionId as any string yet documents 400 for an invalid
    # one (`<ulid>.<zone>`): a schema-valid id answered 400 is the contract, not a failure.
    lenient: list[Any] = [checks.positive_data_acceptance] if surface == "truefoundry" else []
    outcome = fuzz.sweep(own, url=url, key=key, world=world, pin=fuzz.json_pages)
    outcome += fuzz.run_stateless(
        seed,
        key=key,
        per_operation=per_operation,
        excluded_checks=lenient,
        widen=fuzz.with_real_ids(stops),
    )
    outcome += fuzz.run_stateless(
        own,
        key=key,
        per_operation=per_operation,
        only_checks=[not_a_server_error],
        widen=fuzz.with_real_ids(world),
        path={"tenant": TENANT} if surface == "truefoundry" else None,
    )
    print(outcome.summary(surface))  # shown with -rP: the campaign's record
    assert not outcome.failures, outcome.report()
    assert len(outcome.statuses) >= fuzz.CASES
    assert 200 in outcome.statuses

    try:
        for session_id in running:  # if no cancel reached them: they would run for minutes
            reader.stop(session_id)
        reader.sessions([s for s in reader.lists() if s not in earlier])
    finally:
        reader.close()
    assert not reader.failures, "\n".join(reader.failures[:20])


@pytest.mark.timeout(fuzz.TIMEOUT_S)
def test_agent_threads(live: tuple[str, str]) -> None:
    url, key = live
    world = fuzz.seed_world(url, key)
    streams = [f"session:{sid}" for sid in world.path["session_id"]]
    record, failures = threads_fuzz.run(url, key, streams)
    print(record)  # shown with -rP: the campaign's record
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:15])
