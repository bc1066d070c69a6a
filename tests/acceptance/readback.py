"""Every read of a session, and every list, on every surface: /v1, Factory, Gumloop,
TrueFoundry and agent-threads. Whatever the API accepted must read back: each read answers
2xx with a body that parses (JSON, each SSE frame's data, each WebSocket message). The
failures are collected, not raised, so one run names them all."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.sync.client import connect

FACTORY = "/compat/factory/api/v0"
GUMLOOP = "/compat/gumloop/api/v1"
AT_REST = ("idle", "closed", "waiting")  # sessions
BUSY = ("queued", "running", "cancelling")  # turns
STREAM_S = 30


@dataclass
class Reader:
    url: str
    key: str
    tenant: str
    failures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        auth = {"Authorization": f"Bearer {self.key}"}
        self.http = httpx.Client(base_url=self.url, headers=auth, timeout=60)
        self.truefoundry = f"/compat/truefoundry/{self.tenant}/v1/agents/sessions"

    def close(self) -> None:
        self.http.close()

    # --- one read ------------------------------------------------------------------------

    def _failed(self, what: str, detail: str) -> None:
        self.failures.append(f"{what}: {detail}"[:1000])

    def read(self, method: str, path: str, **kwargs: Any) -> Any:
        """The answer's JSON, or None after recording why it did not read."""
        what = f"{method} {path} {kwargs.get('params') or ''}"
        try:
            r = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            self._failed(what, f"no answer: {exc!r}")
            return None
        if not r.is_success:
            self._failed(what, f"{r.status_code} {r.text[:300]}")
            return None
        try:
            return r.json()
        except ValueError as exc:
            self._failed(what, f"{r.status_code} body is not JSON: {exc}")
            return None

    @contextmanager
    def _stream(self, method: str, path: str, **kwargs: Any) -> Iterator[Iterator[Any] | None]:
        """The data of each SSE frame, parsed; None (and recorded) if the stream did not open."""
        what = f"{method} {path} (SSE) {kwargs.get('params') or ''}"
        try:
            with self.http.stream(method, path, **kwargs) as r:
                if not r.is_success:
                    r.read()
                    self._failed(what, f"{r.status_code} {r.text[:300]}")
                    yield None
                    return
                yield self._frames(what, r)
        except httpx.HTTPError as exc:
            self._failed(what, f"stream broke: {exc!r}")

    def _frames(self, what: str, response: httpx.Response) -> Iterator[Any]:
        """Each frame's data; a stream of a session at rest must end, and one that has not
        after STREAM_S (keep-alive pings come every few seconds) is recorded and left."""
        deadline = time.monotonic() + STREAM_S
        for line in response.iter_lines():
            if time.monotonic() > deadline:
                self._failed(what, f"the stream did not end in {STREAM_S}s")
                return
            if line.startswith("data:"):
                try:
                    yield json.loads(line[5:])
                except ValueError as exc:
                    self._failed(what, f"a frame is not JSON: {exc}: {line[:200]}")

    # --- a session -----------------------------------------------------------------------

    def stop(self, session_id: str) -> None:
        """Stop whatever the session runs or has queued, for it to come to rest."""
        body = {"scope": "all", "wait": 10}
        self.read("POST", f"/v1/sessions/{session_id}/interrupt", json=body)

    def settle(self, session_ids: list[str], timeout: float = 60) -> list[str]:
        """Wait, all at once and up to `timeout` in all, for the sessions to come to rest;
        answers those that did. One that does not is recorded (a turn stuck queued or
        running is a failure of its own: a worker could not carry it)."""
        deadline = time.monotonic() + timeout
        waiting, at_rest = list(session_ids), []
        while waiting:
            for session_id in list(waiting):
                session = self.read("GET", f"/v1/sessions/{session_id}")
                if session is None or session["status"] in AT_REST:
                    waiting.remove(session_id)  # None: recorded, it does not even read
                    at_rest += [session_id] if session else []
            if waiting and time.monotonic() > deadline:
                for session_id in waiting:
                    self._failed(f"session {session_id}", f"not at rest after {timeout}s")
                break
            if waiting:
                time.sleep(0.1)
        return at_rest

    def sessions(self, session_ids: list[str]) -> None:
        """Every read of each session once at rest; the others (their streams would follow
        them on and on) are recorded as not at rest."""
        for session_id in self.settle(session_ids):
            self.session(session_id)

    def session(self, session_id: str) -> None:
        """Every read of one session at rest, on every surface."""
        v1 = self.read("GET", f"/v1/sessions/{session_id}")
        if v1 is None:
            return
        turns = self.read("GET", f"/v1/sessions/{session_id}/turns", params={"limit": 1000})
        turn_ids = [t["id"] for t in turns["data"]] if turns else []
        # a turn queued behind one that waits has not begun: its stream would wait with it
        ended = [t["id"] for t in turns["data"] if t["status"] not in BUSY] if turns else []
        for turn_id in turn_ids:
            self.read("GET", f"/v1/sessions/{session_id}/turns/{turn_id}")
        self.read("GET", f"/v1/sessions/{session_id}/messages", params={"limit": 1000})
        self._events(session_id, v1["last_event_seq"])
        asks = self.read("GET", f"/v1/sessions/{session_id}/interrupts", params={"limit": 1000})
        for interrupt in asks["data"] if asks else []:
            self.read("GET", f"/v1/interrupts/{interrupt['id']}")

        self.read("GET", f"{FACTORY}/sessions/{session_id}")
        self.read("GET", f"{FACTORY}/sessions/{session_id}/messages", params={"limit": 1000})

        self.read("GET", f"{GUMLOOP}/sessions/{session_id}")
        with self._stream(
            "GET", f"{GUMLOOP}/sessions/{session_id}", params={"stream": "true"}
        ) as parts:
            for _ in parts or ():
                pass  # at rest, the replay ends by itself

        tf = f"{self.truefoundry}/{session_id}"
        self.read("GET", tf)
        self.read("GET", f"{tf}/turns", params={"limit": 25})
        self.read("GET", f"{tf}/events", params={"limit": 100})
        for turn_id in turn_ids:
            self.read("GET", f"{tf}/turns/{turn_id}")
            self.read("GET", f"{tf}/turns/{turn_id}/events", params={"limit": 25})
        for turn_id in ended:
            with self._stream("POST", f"{tf}/turns/{turn_id}/subscribe", json={}) as events:
                for _ in events or ():
                    pass  # the turn is over or waits: the stream ends
        self._threads(session_id)

    def _events(self, session_id: str, last_seq: int) -> None:
        path = f"/v1/sessions/{session_id}/events"
        after = 0
        while True:
            page = self.read("GET", path, params={"stream": "false", "after": after})
            if page is None or not page["next_cursor"]:
                break
            after = int(page["next_cursor"])
        with self._stream("GET", path) as events:
            if last_seq == 0:
                return  # opened; nothing to replay, and it would wait for news
            for event in events or ():
                if event.get("seq", 0) >= last_seq:
                    return

    def _threads(self, session_id: str) -> None:
        what = f"agent-threads session:{session_id}"
        socket = self.url.replace("http", "ws", 1) + "/compat/agent-threads/ws"
        url = f"{socket}?access_token={self.key}"
        try:
            with connect(url, open_timeout=30, close_timeout=5) as ws:
                ws.send(json.dumps({"type": "hello", "version": 1}))
                stream = f"session:{session_id}"
                ws.send(json.dumps({"type": "subscribe", "streamId": stream, "afterSeq": 0}))
                while True:
                    message = json.loads(ws.recv(timeout=30))
                    if message["type"] == "error":
                        self._failed(what, str(message)[:300])
                        return
                    if message["type"] == "replay-end":
                        return
        except Exception as exc:  # a refused handshake, a closed connection, a timeout
            self._failed(what, f"{exc!r}")

    # --- every list ----------------------------------------------------------------------

    def _pages(self, path: str, params: dict[str, Any], name: str, field: str) -> list[Any]:
        """Every item of a list, page by page; each page must read."""
        items: list[Any] = []
        cursor: str | None = None
        while True:
            page = self.read("GET", path, params={**params, **({name: cursor} if cursor else {})})
            if page is None:
                return items
            items += next(v for k, v in page.items() if isinstance(v, list))
            cursor = page.get(field) if field in page else page["pagination"]["next_page_token"]
            if not cursor:
                return items

    def lists(self) -> list[str]:
        """Every page of every list, on every surface; answers the session ids seen."""
        agents = self._pages("/v1/agents", {"limit": 100}, "cursor", "next_cursor")
        sessions = self._pages("/v1/sessions", {"limit": 100}, "cursor", "next_cursor")
        self._pages("/v1/audit", {"limit": 1000}, "cursor", "next_cursor")
        self._pages("/v1/interrupts", {"limit": 1000}, "cursor", "next_cursor")
        for hook in self._pages("/v1/webhooks", {"limit": 1000}, "cursor", "next_cursor"):
            path = f"/v1/webhooks/{hook['id']}/deliveries"
            self._pages(path, {"limit": 200}, "cursor", "next_cursor")
        self._pages(f"{FACTORY}/sessions", {"limit": 100}, "cursor", "nextCursor")
        for agent in agents:
            listed = {"page_size": 100}
            self._pages(f"{GUMLOOP}/agents/{agent['id']}/sessions", listed, "cursor", "next_cursor")
            by_name = {"agent_name": agent["id"], "limit": 100}
            self._pages(self.truefoundry, by_name, "page_token", "next_page_token")
        return [s["id"] for s in sessions]
