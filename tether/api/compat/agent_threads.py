"""The agent-threads WebSocket protocol, version 1, at /compat/agent-threads/ws: the wire of
`@lleverage-ai/agent-threads`' `WsClient` (docs/compat/agent-threads.md).

A client says `hello`, then `subscribe`s to `session:<session id>` streams with an `afterSeq`;
it gets every event after it (replay), `replay-end`, then live events, no gap and no repeat;
the server `ping`s and the client answers `pong`. Events come from the session's Tether events
through streaming.Feed, translated by agent_threads_wire. Nothing is stored here.

Auth: the same keys, roles and tenants as /v1. `WsClient` opens the socket with a URL only,
so the key may come as `?access_token=<key>` (RFC 6750 §2.3) as well as in an
`Authorization: Bearer` header. A bad or missing key is refused at the handshake (HTTP 401),
before any protocol message: the protocol has no error code for it. A connection whose key is
revoked later is closed (1008) by api/stream_guard.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from tether import errors, ids, storable, views
from tether.api import cursors, deps
from tether.api import errors as api_errors
from tether.api.compat import agent_threads_wire as wire
from tether.auth import Role
from tether.node import Node
from tether.service import Service

log = logging.getLogger("tether.api.agent_threads")

PROTOCOL_VERSION = 1
_PAGE = 500
_CATCH_UP_S = 5.0  # a quiet subscription checks the store this often
_PONG_TIMEOUT_MIN_S = 2.0  # a pong may take 3 ping intervals, never less than this

router = APIRouter()


@router.websocket("/compat/agent-threads/ws")
async def threads(websocket: WebSocket) -> None:
    node: Node = websocket.app.state.node
    try:
        who = await deps.admit(websocket, query_token=True)
        who.require(Role.READ)
    except (errors.Unauthorized, errors.Forbidden) as exc:
        await _refuse(websocket, exc)
        return
    await websocket.accept()
    interval = node.settings.sse_ping_s
    await _Connection(websocket, node.service, who.tenant_id, interval).run()


async def _refuse(websocket: WebSocket, exc: errors.TetherError) -> None:
    status = api_errors.status_of(exc)
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        answer = api_errors.error_response(status, exc.code, exc.message, headers=headers)
        await websocket.send_denial_response(answer)
    else:  # the server cannot answer HTTP here: a policy-violation close is the next best
        await websocket.close(code=1008, reason=exc.code)


def decode(raw: str) -> dict[str, Any] | None:
    """A client message, checked as the package's `decodeClientMessage` does; else None.
    UnstorableInput if it holds text no surface accepts (DESIGN §8; tether/storable.py);
    InvalidRequest if a subscription's `afterSeq` is no position (tether/api/cursors.py)."""
    try:
        msg = storable.parse(raw)
    except ValueError:
        return None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        return None
    kind = msg["type"]
    if kind == "hello":
        version = msg.get("version")
        return msg if isinstance(version, int | float) and not isinstance(version, bool) else None
    if kind == "subscribe":
        # a seq the JavaScript client can hold (no overflow downstream), else InvalidRequest
        cursors.json_position(msg.get("afterSeq"), "afterSeq", wire.MAX_SEQ)
        return msg if isinstance(msg.get("streamId"), str) else None
    if kind == "unsubscribe":
        return msg if isinstance(msg.get("streamId"), str) else None
    return msg if kind == "pong" else None


class _Connection:
    """One client: its subscriptions (a task each), its heartbeat, one writer at a time."""

    def __init__(self, websocket: WebSocket, svc: Service, tenant: str, interval_s: float):
        self.ws = websocket
        self.svc = svc
        self.tenant = tenant
        self.interval_s = interval_s
        self.pong_timeout_s = max(_PONG_TIMEOUT_MIN_S, 3 * interval_s)  # 45 s by default
        self.subscriptions: dict[str, asyncio.Task[None]] = {}
        self.heartbeat: asyncio.Task[None] | None = None
        self.ping_unanswered_since: float | None = None
        self.writing = asyncio.Lock()

    async def run(self) -> None:
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                raw = message.get("text")
                try:
                    msg = decode(raw) if raw is not None else None
                except errors.InvalidRequest as exc:  # unstorable text, or no position
                    await self.error("INVALID_MESSAGE", f"Invalid message: {exc.message}")
                    continue
                if msg is None:
                    preview = (raw or "<binary>")[:100]
                    await self.error("INVALID_MESSAGE", f"Invalid message format (data: {preview})")
                    continue
                if not await self.handle(msg):
                    return
        except WebSocketDisconnect:
            return
        finally:
            tasks = [*self.subscriptions.values(), *([self.heartbeat] if self.heartbeat else [])]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def handle(self, msg: dict[str, Any]) -> bool:
        """Act on one message; False once the connection is to end."""
        kind = msg["type"]
        if kind == "hello":
            if msg["version"] != PROTOCOL_VERSION:
                expected = f"Expected protocol version {PROTOCOL_VERSION}, got {msg['version']}"
                await self.error("VERSION_MISMATCH", expected)
                await self.ws.close(code=1002, reason="Version mismatch")
                return False
            await self.send({"type": "server-hello", "version": PROTOCOL_VERSION})
            if self.heartbeat is None:
                self.heartbeat = asyncio.create_task(self.beat())
        elif kind == "pong":
            self.ping_unanswered_since = None
        elif self.heartbeat is None:
            pass  # before the handshake, as the package's server: ignored
        elif kind == "subscribe":
            await self.subscribe(msg["streamId"], msg.get("afterSeq") or 0)
        elif kind == "unsubscribe":
            self.unsubscribe(msg["streamId"])
        return True

    async def subscribe(self, stream: str, after_seq: int) -> None:
        self.unsubscribe(stream)  # a repeat replaces the subscription, as the package's server
        session_id = stream.removeprefix(wire.STREAM_PREFIX)
        try:
            if not stream.startswith(wire.STREAM_PREFIX):
                raise errors.InvalidId(f"stream ids are {wire.STREAM_PREFIX}<session id>")
            await self.svc.get_session(self.tenant, ids.check_session(session_id))
        except (errors.InvalidId, errors.NotFound) as exc:
            await self.error("UNKNOWN_STREAM", f"Unknown stream {stream}: {exc.message}", stream)
            return
        task = asyncio.create_task(self.pump(stream, session_id, after_seq))
        self.subscriptions[stream] = task
        task.add_done_callback(lambda done: self._forget(stream, done))

    def _forget(self, stream: str, task: asyncio.Task[None]) -> None:
        if self.subscriptions.get(stream) is task:
            del self.subscriptions[stream]

    def unsubscribe(self, stream: str) -> None:
        task = self.subscriptions.pop(stream, None)
        if task:
            task.cancel()

    async def pump(self, stream: str, session_id: str, after_seq: int) -> None:
        """Replay after `after_seq`, say `replay-end`, then follow live."""
        resume = wire.Resume.of(after_seq)
        mapper = wire.Mapper(stream, resume)
        cursor = resume.replay_after
        try:
            try:
                while True:
                    page = await self.svc.events_after(self.tenant, session_id, cursor, _PAGE)
                    for event in page:
                        cursor = event.seq
                        for stored in mapper.durable(event.as_dict()):
                            await self.send({"type": "event", "streamId": stream, "event": stored})
                    if len(page) < _PAGE:
                        break
            except errors.TetherError as exc:
                log.warning("replay of %s failed: %s", stream, exc)
                await self.error("REPLAY_FAILED", f"Failed to replay stream {stream}", stream)
                return
            end = {"type": "replay-end", "streamId": stream, "lastReplaySeq": mapper.last_seq}
            await self.send(end)
            # idle_s: a quiet stream re-reads the store now and then (a lost publish)
            follow = await self.svc.follow(self.tenant, session_id, cursor, idle_s=_CATCH_UP_S)
            async with contextlib.aclosing(follow) as batches:
                async for batch in batches:
                    for frame in batch:
                        for stored in mapper.frame(frame):
                            await self.send({"type": "event", "streamId": stream, "event": stored})
        except (WebSocketDisconnect, OSError, RuntimeError):
            return  # the client went away; the receive loop ends the connection

    async def beat(self) -> None:
        """Ping every interval; a ping unanswered for the timeout ends the connection."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                await asyncio.sleep(self.interval_s)
                since = self.ping_unanswered_since
                if since is not None and loop.time() - since > self.pong_timeout_s:
                    await self.ws.close(code=1001, reason="Heartbeat timeout")
                    return
                await self.send({"type": "ping"})
                if since is None:
                    self.ping_unanswered_since = loop.time()
        except (WebSocketDisconnect, OSError, RuntimeError):
            return

    async def error(self, code: str, message: str, stream: str | None = None) -> None:
        body: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if stream is not None:
            body["streamId"] = stream
        await self.send(body)

    async def send(self, message: dict[str, Any]) -> None:
        async with self.writing:
            await self.ws.send_text(views.compact_json(message))
