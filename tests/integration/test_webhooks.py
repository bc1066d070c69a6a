"""Webhooks (DESIGN §9) against a real receiver on loopback: Standard Webhooks signatures
checked with the `standardwebhooks` package, retries that keep the webhook-id, order per
session, 410, the delivery log and manual retry, timeouts, redirects, the SSRF guard, tenants."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet

from tests.helpers import Api, Server, running_server, wait_for
from tests.webhook_receiver import Answer, Receiver, fail_first, verify
from tether.auth import Role

QUICK = {  # retries in tens of milliseconds, so a test takes seconds
    "webhook_allow_private": True,  # the receiver is on loopback
    "webhook_backoff_s": 0.05,
    "webhook_backoff_max_s": 0.2,
    "webhook_timeout_s": 5.0,
    "secret_key": Fernet.generate_key().decode(),  # cluster mode seals with it
}
APPROVAL_AGENT = {
    "name": "asks",
    "model": {
        "provider": "scripted",
        "steps": [{"tool_calls": [{"name": "sleep", "arguments": {"seconds": 0}}]}],
        "reply": "done",
    },
    "tools": [{"name": "sleep", "policy": "approve"}],
}


@asynccontextmanager
async def hooked(tmp: Path, **overrides: Any) -> AsyncIterator[tuple[Server, httpx.AsyncClient]]:
    async with (
        running_server(tmp, **{**QUICK, **overrides}) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as client,
    ):
        yield server, client


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


async def _endpoint(c: httpx.AsyncClient, url: str, events: list[str] | None = None) -> Any:
    r = await c.post("/v1/webhooks", json={"url": url, "events": events or ["*"]})
    assert r.status_code == 201, r.text
    return r.json()


async def _deliveries(c: httpx.AsyncClient, wid: str, **params: Any) -> list[dict[str, Any]]:
    r = await c.get(f"/v1/webhooks/{wid}/deliveries", params={"limit": 200, **params})
    assert r.status_code == 200, r.text
    return r.json()["data"]  # type: ignore[no-any-return]


def _types(receiver: Receiver) -> list[str]:
    return [r.event["type"] for r in receiver.delivered()]


async def test_every_event_arrives_signed_with_the_objects_the_api_returns(
    tmp_path: Path, receiver: Receiver
) -> None:
    async with hooked(tmp_path) as (_, c):
        api = Api(c)
        hook = await _endpoint(c, receiver.url)
        assert hook["secret"].startswith("whsec_")
        assert hook["status"] == "enabled"
        # a turn that completes
        agent = await api.agent(reply="hello")
        sid = await api.session(agent)
        done = await api.wait_turn(sid, (await api.turn(sid))["id"])
        # one that fails, one that is cancelled
        broken = await api.agent(fail="no model today")
        sid2 = await api.session(broken)
        failed = await api.wait_turn(sid2, (await api.turn(sid2))["id"])
        slow = await api.agent(reply="echo", tokens=1000, token_delay_ms=20)
        sid3 = await api.session(slow)
        running = await api.turn(sid3)
        await wait_for(lambda: _running(api, sid3, running["id"]), 10, "the slow turn to run")
        stopped = (await c.post(f"/v1/sessions/{sid3}/interrupt", json={"wait": 10})).json()
        # one that waits on a human, whose interrupt then expires: the turn fails
        asks = (
            await c.post(
                "/v1/agents", json={**APPROVAL_AGENT, "interrupt_ttl_s": 0.3, "on_expire": "fail"}
            )
        ).json()["id"]
        sid4 = await api.session(asks)
        waited = await api.wait_turn(sid4, (await api.turn(sid4))["id"])
        # and a session closed
        closed = (await c.delete(f"/v1/sessions/{sid}")).json()

        await wait_for(lambda: len(receiver.delivered()) >= 7, 20, "seven deliveries")
        events = {}
        for got in receiver.delivered():
            event = verify(hook["secret"], got)  # raises unless the signature is right
            assert got.headers["webhook-signature"].startswith("v1,")
            assert int(got.headers["webhook-timestamp"]) > 0
            events[(event["type"], got.session_id)] = event
        assert sorted(events) == sorted(
            [
                ("turn.completed", sid),
                ("turn.failed", sid2),
                ("turn.cancelled", sid3),
                ("turn.waiting", sid4),
                ("interrupt.expired", sid4),
                ("turn.failed", sid4),
                ("session.closed", sid),
            ]
        )
        assert events[("turn.completed", sid)]["data"]["turn"] == done
        assert events[("turn.failed", sid2)]["data"]["turn"] == failed
        assert events[("turn.cancelled", sid3)]["data"]["turn"] == stopped["turn"]
        waiting = events[("turn.waiting", sid4)]["data"]
        assert waiting["turn"]["status"] == "waiting"
        assert [i["type"] for i in waiting["interrupts"]] == ["approval"]
        expired = events[("interrupt.expired", sid4)]["data"]["interrupt"]
        assert expired["id"] == waiting["interrupts"][0]["id"]
        assert expired["status"] == "expired"
        assert events[("turn.failed", sid4)]["data"]["turn"] == waited
        assert events[("session.closed", sid)]["data"]["session"] == closed
        for event in events.values():
            assert set(event) == {"type", "timestamp", "data"}
        # a session's deliveries in the order of its changes
        of_sid4 = [r.event["type"] for r in receiver.by_session()[sid4]]
        assert of_sid4 == ["turn.waiting", "interrupt.expired", "turn.failed"]
        assert receiver.delivered_ids() == {r.webhook_id: 1 for r in receiver.delivered()}


async def _running(api: Api, sid: str, tid: str) -> bool:
    return (await api.get_turn(sid, tid))["status"] == "running"


async def test_a_receiver_failing_three_times_gets_each_event_once(tmp_path: Path) -> None:
    with Receiver(fail_first(3)) as receiver:
        async with hooked(tmp_path) as (_, c):
            api = Api(c)
            hook = await _endpoint(c, receiver.url, ["turn.completed"])
            sid = await api.session(await api.agent(reply="hi"))
            turns = [(await api.turn(sid, f"t{i}"))["id"] for i in range(3)]

            async def all_delivered() -> Any:
                found = await _deliveries(c, hook["id"], status="delivered")
                return found if len(found) == 3 else None

            deliveries = await wait_for(all_delivered, 20, "three deliveries")
        counted = receiver.delivered_ids()
        assert len(counted) == 3 and set(counted.values()) == {1}, "each event delivered once"
        for webhook_id in counted:
            tries = receiver.attempts(webhook_id)
            assert [t.status for t in tries] == [500, 500, 500, 200]
            assert {t.webhook_id for t in tries} == {webhook_id}, "the same webhook-id"
            bodies = {t.body for t in tries}
            assert len(bodies) == 1, "the same body every time"
            for t in tries:
                verify(hook["secret"], t)  # every attempt signed anew, and right
        assert [r.event["data"]["turn"]["id"] for r in receiver.delivered()] == turns
        assert {d["id"] for d in deliveries} == set(counted)
        for d in deliveries:
            assert d["status"] == "delivered"
            assert d["attempts"] == 4
            assert [a["status_code"] for a in d["log"]] == [500, 500, 500, 200]
            assert all(a["duration_ms"] >= 0 and a["at"] for a in d["log"])
            assert d["log"][-1]["response"] == "ok"


async def test_order_per_session_and_one_in_flight(tmp_path: Path) -> None:
    """Two sessions, six turns each queued at once; the receiver is slow and fails each
    session's first event twice. Each session's events arrive in the order of its turns, and
    never two at once for one session; the sessions do not wait on each other."""

    def plan(got: Any) -> Answer:
        first_turn = got.event["data"]["turn"]["seq"] == 1
        if first_turn and got.attempt <= 2:
            return Answer(503, delay_s=0.02)
        return Answer(delay_s=0.02)

    with Receiver(plan) as receiver:
        async with hooked(tmp_path) as (_, c):
            api = Api(c)
            await _endpoint(c, receiver.url, ["turn.completed"])
            agent = await api.agent(reply="hi")
            sessions = [await api.session(agent) for _ in range(2)]
            order = {
                sid: [(await api.turn(sid, str(i)))["id"] for i in range(6)] for sid in sessions
            }
            await wait_for(lambda: len(receiver.delivered()) == 12, 30, "twelve deliveries")
        got = receiver.by_session()
        for sid in sessions:
            assert [r.event["data"]["turn"]["id"] for r in got[sid]] == order[sid]
        assert receiver.max_in_flight_per_session == 1


async def test_410_disables_the_endpoint_and_a_failed_delivery_can_be_sent_again(
    tmp_path: Path,
) -> None:
    gone = threading.Event()
    gone.set()
    with Receiver(lambda _: Answer(410) if gone.is_set() else Answer()) as receiver:
        async with hooked(tmp_path) as (_, c):
            api = Api(c)
            hook = await _endpoint(c, receiver.url)
            sid = await api.session(await api.agent(reply="hi"))
            await api.turn(sid)

            async def disabled() -> Any:
                current = (await c.get(f"/v1/webhooks/{hook['id']}")).json()
                return current if current["status"] == "disabled" else None

            endpoint = await wait_for(disabled, 20, "the endpoint disabled by the 410")
            assert endpoint["disabled_reason"] == "gone"
            [failed] = await _deliveries(c, hook["id"])
            assert failed["status"] == "failed"
            assert "410" in failed["error"]
            assert [a["status_code"] for a in failed["log"]] == [410]
            # nothing is queued for a disabled endpoint
            await api.wait_turn(sid, (await api.turn(sid, "again"))["id"])
            assert len(await _deliveries(c, hook["id"])) == 1
            retry = f"/v1/webhooks/{hook['id']}/deliveries/{failed['id']}/retry"
            r = await c.post(retry)
            assert r.status_code == 409, r.text
            assert r.json()["error"]["code"] == "webhook_disabled"

            gone.clear()
            r = await c.patch(f"/v1/webhooks/{hook['id']}", json={"status": "enabled"})
            assert r.json()["status"] == "enabled" and r.json()["disabled_reason"] is None
            r = await c.post(retry)
            assert r.status_code == 200, r.text
            assert r.json()["status"] == "pending"

            async def delivered() -> Any:
                [again] = await _deliveries(c, hook["id"])
                return again if again["status"] == "delivered" else None

            again = await wait_for(delivered, 20, "the retried delivery")
            assert [r.webhook_id for r in receiver.requests] == [failed["id"]] * 2
            assert [a["status_code"] for a in again["log"]] == [410, 200]
            r = await c.post(retry)
            assert r.status_code == 409
            assert r.json()["error"]["code"] == "delivery_not_failed"
            missing = f"/v1/webhooks/{hook['id']}/deliveries/dlv_01arz3ndektsv4rrffq69g5fav/retry"
            assert (await c.post(missing)).status_code == 404


async def test_timeouts_are_retried_until_the_window_closes(tmp_path: Path) -> None:
    with Receiver(lambda _: Answer(delay_s=3)) as receiver:
        async with hooked(tmp_path, webhook_timeout_s=0.3, webhook_retry_for_s=1.0) as (_, c):
            api = Api(c)
            hook = await _endpoint(c, receiver.url)
            sid = await api.session(await api.agent(reply="hi"))
            await api.turn(sid)

            async def failed() -> Any:
                found = await _deliveries(c, hook["id"], status="failed")
                return found[0] if found else None

            delivery = await wait_for(failed, 20, "the delivery to give up")
        assert delivery["attempts"] >= 2
        assert delivery["error"].startswith(f"gave up after {delivery['attempts']} attempts")
        assert all(a["status_code"] is None for a in delivery["log"])
        assert all("no answer within 0.3 s" in a["error"] for a in delivery["log"])
        assert len(receiver.attempts(delivery["id"])) == delivery["attempts"]


async def test_redirects_are_not_followed_and_answers_are_kept_short(tmp_path: Path) -> None:
    def plan(got: Any) -> Answer:
        if got.attempt == 1:
            return Answer(302, headers={"location": "/elsewhere"}, body=b"moved")
        return Answer(500, body=b"x" * 100_000)

    with Receiver(plan) as receiver:
        # a window long enough that the first failure is answered within it on a loaded
        # machine (then at least one retry follows), short enough to give up soon
        async with hooked(tmp_path, webhook_retry_for_s=2) as (_, c):
            api = Api(c)
            hook = await _endpoint(c, receiver.url)
            sid = await api.session(await api.agent(reply="hi"))
            await api.turn(sid)

            async def failed() -> Any:
                found = await _deliveries(c, hook["id"], status="failed")
                return found[0] if found else None

            delivery = await wait_for(failed, 20, "the delivery to give up")
        assert receiver.other_paths == [], "the redirect was not followed"
        first, *rest = delivery["log"]
        assert first["status_code"] == 302 and first["response"] == "moved"
        assert rest and all(a["status_code"] == 500 for a in rest)
        assert all(len(a["response"]) == 512 for a in rest), "only a prefix is kept"


async def test_filters_rotation_deletion_and_purge(tmp_path: Path, receiver: Receiver) -> None:
    async with hooked(tmp_path) as (_, c):
        api = Api(c)
        only_failures = await _endpoint(c, receiver.url, ["turn.failed"])
        everything = await _endpoint(c, receiver.url, ["*"])
        sid = await api.session(await api.agent(reply="hi"))
        await api.wait_turn(sid, (await api.turn(sid))["id"])
        await wait_for(lambda: len(receiver.delivered()) == 1, 20, "one delivery")
        assert await _deliveries(c, only_failures["id"]) == []
        # rotation: what is sent from now on is signed with the new secret only
        rotated = (await c.post(f"/v1/webhooks/{everything['id']}/rotate-secret")).json()
        assert rotated["secret"] != everything["secret"]
        await api.wait_turn(sid, (await api.turn(sid))["id"])
        await wait_for(lambda: len(receiver.delivered()) == 2, 20, "a second delivery")
        latest = receiver.delivered()[-1]
        verify(rotated["secret"], latest)
        with pytest.raises(Exception, match="signature"):
            verify(everything["secret"], latest)
        # the secret is never shown again
        listed = (await c.get("/v1/webhooks")).json()["data"]
        assert {w["id"] for w in listed} == {only_failures["id"], everything["id"]}
        assert all("secret" not in w for w in listed)
        shown = (await c.get(f"/v1/webhooks/{everything['id']}")).json()
        assert "secret" not in shown and rotated["secret"] not in json.dumps(shown)
        # purge deletes a session's deliveries with it
        assert (await c.delete(f"/v1/sessions/{sid}", params={"purge": "true"})).status_code == 204
        assert await _deliveries(c, everything["id"]) == []
        # deletion: 404 from then on
        assert (await c.delete(f"/v1/webhooks/{everything['id']}")).status_code == 204
        assert (await c.get(f"/v1/webhooks/{everything['id']}")).status_code == 404
        assert (await c.delete(f"/v1/webhooks/{everything['id']}")).status_code == 404
        assert (await c.get(f"/v1/webhooks/{everything['id']}/deliveries")).status_code == 404
        audit = (await c.get("/v1/audit")).json()["data"]
        actions = {a["action"] for a in audit}
        assert {"webhook.create", "webhook.rotate_secret", "webhook.delete"} <= actions
        assert everything["secret"] not in json.dumps(audit)
        assert rotated["secret"] not in json.dumps(audit)


async def test_deleting_or_disabling_an_endpoint_stops_its_pending_deliveries(
    tmp_path: Path,
) -> None:
    with Receiver(lambda _: Answer(500)) as receiver:
        async with hooked(tmp_path, webhook_backoff_s=0.5, webhook_backoff_max_s=0.5) as (
            server,
            c,
        ):
            api = Api(c)
            hooks = [await _endpoint(c, receiver.url) for _ in range(2)]
            sid = await api.session(await api.agent(reply="hi"))
            await api.wait_turn(sid, (await api.turn(sid))["id"])
            await wait_for(lambda: len(receiver.requests) >= 2, 20, "first attempts")
            await c.patch(f"/v1/webhooks/{hooks[0]['id']}", json={"status": "disabled"})
            await c.delete(f"/v1/webhooks/{hooks[1]['id']}")

            async def settled() -> Any:
                [delivery] = await _deliveries(c, hooks[0]["id"])
                return delivery if delivery["status"] != "sending" else None

            # failed at once, or, if an attempt was in flight, when it ends
            disabled = await wait_for(settled, 10, "the disabled endpoint's delivery to settle")
            assert disabled["status"] == "failed"
            assert disabled["error"] == "the endpoint was disabled"

            async def statuses() -> set[str]:
                from sqlalchemy import select

                from tether.store.schema import webhook_deliveries as d

                rows = await server.node.store.db.read(
                    lambda conn: conn.execute(select(d.c.status)).scalars().all()
                )
                return set(rows)

            # one may have been in flight: it ends failed too, never pending again
            await wait_for(lambda: _only_failed(statuses), 10, "no delivery left to send")


async def _only_failed(statuses: Any) -> bool:
    return await statuses() == {"failed"}


async def test_invalid_endpoints_are_refused(tmp_path: Path) -> None:
    async with hooked(tmp_path, webhook_allow_private=False) as (server, c):
        cases = [
            ({"url": "not a url", "events": ["*"]}, "destination_not_allowed"),
            ({"url": "ftp://example.com/x", "events": ["*"]}, "destination_not_allowed"),
            ({"url": "http://user:pw@example.com/x", "events": ["*"]}, "destination_not_allowed"),
            ({"url": "http://127.0.0.1:9/hook", "events": ["*"]}, "destination_not_allowed"),
            ({"url": "http://10.0.0.8/hook", "events": ["*"]}, "destination_not_allowed"),
            ({"url": "http://169.254.169.254/latest", "events": ["*"]}, "destination_not_allowed"),
            ({"url": "http://localhost:8080/", "events": ["*"]}, "destination_not_allowed"),
            ({"url": "https://example.com/h", "events": ["turn.exploded"]}, "validation_error"),
            ({"url": "https://example.com/h", "events": []}, "validation_error"),
            ({"url": "https://example.com/h"}, "validation_error"),
            ({"url": "https://example.com/h", "events": ["*"], "x": 1}, "validation_error"),
        ]
        for body, code in cases:
            r = await c.post("/v1/webhooks", json=body)
            assert r.status_code == 422, (body, r.text)
            assert r.json()["error"]["code"] == code, (body, r.text)
        assert (await c.get("/v1/webhooks")).json()["data"] == []
        made = await _endpoint(c, "https://receiver.example/hook", ["interrupt.expired"])
        r = await c.patch(f"/v1/webhooks/{made['id']}", json={"url": "http://[::1]/x"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "destination_not_allowed"
        for nothing in ({"url": None}, {"events": None}, {"status": "deleted"}, {"secret": "x"}):
            r = await c.patch(f"/v1/webhooks/{made['id']}", json=nothing)
            assert r.status_code == 422, (nothing, r.text)
        assert (await c.get(f"/v1/webhooks/{made['id']}")).json() == {
            k: v for k, v in made.items() if k != "secret"
        }
        assert (await c.get("/v1/webhooks/whk_01arz3ndektsv4rrffq69g5fav")).status_code == 404
        assert (await c.get("/v1/webhooks/nope")).status_code == 400
        assert server.node.dispatcher is not None


async def test_endpoints_are_tenant_configuration(tmp_path: Path, receiver: Receiver) -> None:
    async with hooked(tmp_path, auth="required") as (server, _):
        keys = {}
        for tenant in ("acme", "globex"):
            for role in (Role.ADMIN, Role.WRITE):
                _, keys[tenant, role] = await server.node.keys.create(tenant, role)

        def as_(tenant: str, role: Role) -> httpx.AsyncClient:
            auth = {"Authorization": f"Bearer {keys[tenant, role]}"}
            return httpx.AsyncClient(base_url=server.url, headers=auth, timeout=30)

        async with as_("acme", Role.ADMIN) as acme, as_("globex", Role.ADMIN) as globex:
            hook = await _endpoint(acme, receiver.url)
            path = f"/v1/webhooks/{hook['id']}"
            for method, url in [
                ("GET", path),
                ("PATCH", path),
                ("DELETE", path),
                ("GET", f"{path}/deliveries"),
                ("POST", f"{path}/rotate-secret"),
            ]:
                body = {"description": "mine now"} if method == "PATCH" else None
                r = await globex.request(method, url, json=body)
                assert r.status_code == 404, (method, url, r.text)
            assert (await globex.get("/v1/webhooks")).json()["data"] == []
            async with as_("acme", Role.WRITE) as writer:
                assert (await writer.get("/v1/webhooks")).status_code == 403
                assert (await writer.post("/v1/webhooks", json={})).status_code == 403
            # globex's turns are not acme's business
            gapi, aapi = Api(globex), Api(acme)
            gsid = await gapi.session(await gapi.agent(reply="hi"))
            await gapi.wait_turn(gsid, (await gapi.turn(gsid))["id"])
            asid = await aapi.session(await aapi.agent(reply="hi"))
            await aapi.wait_turn(asid, (await aapi.turn(asid))["id"])
            await wait_for(lambda: receiver.delivered(), 20, "acme's delivery")
            assert {r.session_id for r in receiver.delivered()} == {asid}


async def test_finished_deliveries_are_kept_for_a_while_only(
    tmp_path: Path, receiver: Receiver
) -> None:
    async with hooked(tmp_path, webhook_keep_s=0.5, reaper_interval_s=0.1) as (_, c):
        api = Api(c)
        hook = await _endpoint(c, receiver.url)
        sid = await api.session(await api.agent(reply="hi"))
        await api.wait_turn(sid, (await api.turn(sid))["id"])
        await wait_for(lambda: receiver.delivered(), 20, "the delivery")

        async def pruned() -> bool:
            return await _deliveries(c, hook["id"]) == []

        await wait_for(pruned, 20, "the delivered one pruned")


async def test_the_cursors_of_webhook_lists(tmp_path: Path, receiver: Receiver) -> None:
    """A webhook list's cursor is an endpoint id, a delivery list's the outbox seq: one
    counter for every tenant, 64 bits, so a cursor past 2^31 is taken and one past 2^63 - 1
    (or not digits at all) is 400 (2^63 answered 500 on both backends). Issued cursors page
    through."""
    async with hooked(tmp_path) as (_, c):
        api = Api(c)
        first = await _endpoint(c, receiver.url)
        await _endpoint(c, receiver.url)
        sid = await api.session(await api.agent(reply="hi"))
        for _ in range(2):
            await api.wait_turn(sid, (await api.turn(sid))["id"])
        await wait_for(lambda: len(receiver.delivered()) == 4, 20, "two deliveries each")
        deliveries = f"/v1/webhooks/{first['id']}/deliveries"
        for path, bad in [
            ("/v1/webhooks", "garbage"),
            ("/v1/webhooks", "agt_01arz3ndektsv4rrffq69g5fav"),
            (deliveries, str(2**63)),
            (deliveries, "9" * 5000),
            (deliveries, "²"),
            (deliveries, "-1"),
            (deliveries, "whk_01arz3ndektsv4rrffq69g5fav"),
        ]:
            r = await c.get(path, params={"cursor": bad})
            assert r.status_code == 400, (path, bad, r.text)
            error = r.json()["error"]
            assert error["code"] == "invalid_request" and error["details"] == {"param": "cursor"}
        for big in (str(2**31), str(2**63 - 1)):
            r = await c.get(deliveries, params={"cursor": big})
            assert r.status_code == 200 and len(r.json()["data"]) == 2, r.text
        for path in ("/v1/webhooks", deliveries):
            page = (await c.get(path, params={"limit": 1})).json()
            assert page["next_cursor"], page
            then = await c.get(path, params={"limit": 1, "cursor": page["next_cursor"]})
            assert then.status_code == 200, then.text
            assert then.json()["data"] and then.json()["data"] != page["data"], path
