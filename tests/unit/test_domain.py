from __future__ import annotations

import pytest

from tether import domain, errors, ids, machines, specs
from tether.domain import SessionStatus, TurnStatus


def test_terminal_states_absorb() -> None:
    for status in domain.TERMINAL:
        assert machines.TURN_TRANSITIONS[status] == frozenset()
        assert status.terminal


def test_completed_only_from_running() -> None:
    # never completed once a stop was requested (cancelling) or while queued/waiting
    assert machines.sources_of(TurnStatus.COMPLETED) == (TurnStatus.RUNNING,)
    assert set(machines.sources_of(TurnStatus.CANCELLED)) == {
        TurnStatus.QUEUED,
        TurnStatus.RUNNING,
        TurnStatus.CANCELLING,
        TurnStatus.WAITING,
    }


@pytest.mark.parametrize(
    ("closed", "active", "queued", "expected"),
    [
        (False, None, False, SessionStatus.IDLE),
        (True, None, False, SessionStatus.CLOSED),
        (False, None, True, SessionStatus.QUEUED),
        (False, TurnStatus.RUNNING, True, SessionStatus.RUNNING),
        (False, TurnStatus.CANCELLING, False, SessionStatus.RUNNING),
        (True, TurnStatus.RUNNING, False, SessionStatus.RUNNING),
        (False, TurnStatus.WAITING, True, SessionStatus.WAITING),
    ],
)
def test_session_status_is_derived(
    closed: bool, active: TurnStatus | None, queued: bool, expected: SessionStatus
) -> None:
    assert domain.derive_session_status(closed, active, queued) is expected


def test_ids() -> None:
    sid = ids.new_session_id("eu-1")
    assert ids.check_session(sid) == sid
    assert ids.zone_of(sid) == "eu-1"
    assert ids.check("turn", ids.new("turn"))
    for bad in [
        "",
        "x.local",
        f"{ids.new_ulid().upper()}.local",
        f"{ids.new_ulid()}.",
        f"{ids.new_ulid()}.UPPER",
        f"{ids.new_ulid()}.{'z' * 33}",
    ]:
        with pytest.raises(errors.InvalidId):
            ids.check_session(bad)
    with pytest.raises(errors.InvalidId):
        ids.check("turn", ids.new("msg"))


def test_agent_spec_validation() -> None:
    with pytest.raises(ValueError, match=r"model\.model is required"):
        specs.AgentSpec.model_validate({"name": "x", "model": {"provider": "openai"}})
    with pytest.raises(ValueError, match="Extra inputs"):
        specs.AgentSpec.model_validate({"name": "x", "modle": {}})


@pytest.mark.parametrize("ttl", [specs.MAX_INTERRUPT_TTL_S + 1, 1e12, 1e308, 10**30])
def test_an_interrupt_ttl_past_a_year_is_refused_but_a_stored_one_reads(ttl: float) -> None:
    """No datetime can add 1e12 s to now: such a ttl failed every turn that paused. A client
    cannot give one; an agent stored before the bound still reads, at the bound."""
    tool = {"name": "sleep", "interrupt_ttl_s": ttl}
    with pytest.raises(ValueError, match="at most"):
        specs.AgentSpec.model_validate({"name": "a", "interrupt_ttl_s": ttl})
    with pytest.raises(ValueError, match="at most"):
        specs.AgentSpec.model_validate({"name": "a", "tools": [tool]})
    stored = specs.AgentSpec.from_stored({"name": "a", "interrupt_ttl_s": ttl, "tools": [tool]})
    assert stored.interrupt_ttl_s == stored.tools[0].interrupt_ttl_s == specs.MAX_INTERRUPT_TTL_S
    year = specs.AgentSpec.model_validate({"name": "a", "interrupt_ttl_s": 31_622_400})
    assert year.interrupt_ttl_s == specs.MAX_INTERRUPT_TTL_S
