"""A real webhook receiver on loopback for the tests: an HTTP server in threads of its own
(independent of the test's event loop, or usable from sync tests), recording every request
and answering as the test says."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook


@dataclass
class Received:
    webhook_id: str
    headers: dict[str, str]
    body: str
    at: float  # time.time() when it arrived
    attempt: int  # 1 for the first request with this webhook-id
    status: int = 0  # what we answered (0: no answer, the request was dropped)

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]

    @property
    def session_id(self) -> str:
        data = self.event["data"]
        for key in ("turn", "interrupt"):
            if key in data:
                return str(data[key]["session_id"])
        return str(data["session"]["id"])


@dataclass
class Answer:
    status: int = 200
    delay_s: float = 0.0
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)


Plan = Callable[[Received], Answer]


class Receiver:
    """`plan` decides each answer (default: 200 at once). `path`: anything else is 404."""

    def __init__(self, plan: Plan | None = None, path: str = "/hook"):
        self.plan: Plan = plan or (lambda _: Answer())
        self.path = path
        self.requests: list[Received] = []
        self.other_paths: list[str] = []
        self._lock = threading.Lock()
        self._tries: Counter[str] = Counter()
        self._in_flight: Counter[str] = Counter()  # per session
        self.max_in_flight_per_session = 0
        self.release = threading.Event()  # a plan may wait on it (a hung receiver)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver._handle(self)

            def do_GET(self) -> None:
                with receiver._lock:
                    receiver.other_paths.append(self.path)
                self.send_response(404)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{path}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("content-length", "0"))
        body = handler.rfile.read(length).decode()
        if handler.path != self.path:
            with self._lock:
                self.other_paths.append(handler.path)
            handler.send_response(404)
            handler.end_headers()
            return
        headers = {k.lower(): v for k, v in handler.headers.items()}
        webhook_id = headers.get("webhook-id", "")
        with self._lock:
            self._tries[webhook_id] += 1
            got = Received(webhook_id, headers, body, time.time(), self._tries[webhook_id])
            self.requests.append(got)
            session = _session_of(got)
            self._in_flight[session] += 1
            self.max_in_flight_per_session = max(
                self.max_in_flight_per_session, self._in_flight[session]
            )
        try:
            answer = self.plan(got)
            if answer.delay_s:
                self.release.wait(answer.delay_s)
            got.status = answer.status
            handler.send_response(answer.status)
            for name, value in answer.headers.items():
                handler.send_header(name, value)
            handler.send_header("content-length", str(len(answer.body)))
            handler.end_headers()
            handler.wfile.write(answer.body)
        except OSError:
            got.status = 0  # the sender hung up first
        finally:
            with self._lock:
                self._in_flight[session] -= 1

    # --- what arrived ---------------------------------------------------------------------------

    def delivered(self) -> list[Received]:
        """The requests answered 2xx, in the order they arrived."""
        with self._lock:
            return [r for r in self.requests if 200 <= r.status < 300]

    def delivered_ids(self) -> Counter[str]:
        return Counter(r.webhook_id for r in self.delivered())

    def attempts(self, webhook_id: str) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.webhook_id == webhook_id]

    def by_session(self) -> dict[str, list[Received]]:
        grouped: dict[str, list[Received]] = defaultdict(list)
        for r in self.delivered():
            grouped[r.session_id].append(r)
        return grouped


def _session_of(got: Received) -> str:
    try:
        return got.session_id
    except (ValueError, KeyError):
        return ""


def verify(secret: str, got: Received) -> dict[str, Any]:
    """The event, once `standardwebhooks` accepts its signature (raises if it does not)."""
    return Webhook(secret).verify(got.body, got.headers)  # type: ignore[no-any-return]


def fail_first(times: int, status: int = 500) -> Plan:
    """Answer `status` to the first `times` attempts of every webhook-id, then 200."""
    return lambda got: Answer(status) if got.attempt <= times else Answer()
