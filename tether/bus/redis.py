"""The Redis bus of cluster mode: wake-ups, stop signals and live deltas across processes.

Pub/sub is at most once, and that is all a bus may be here: events are durable in the store
and every reader can catch up from it. Whenever this node may have missed messages (Redis
restarted, our connection dropped), each local subscription is marked `lagged`, which sends
its reader back to the store. Workers still poll for work and heartbeats still read stops, so
a lost wake-up costs latency, never a turn.

Publishing never blocks the caller: commits and deltas go to an outbox that one task drains
in pipelines, in order (a session's events and deltas share one channel, so their order holds
end to end). The text of the message in flight is also kept in two keys, so a reader joining
on any node gets what it missed as one delta.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict, deque
from collections.abc import Callable
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from tether import domain, errors, versions
from tether.bus import keys
from tether.bus.base import Committed, Delta, Item, Subscription
from tether.bus.local import ENDS_MESSAGE

log = logging.getLogger("tether.bus")

PARTIAL_TTL_S = 3600  # a message in flight longer than this loses its catch-up text
_RECONNECT_S = (0.05, 0.1, 0.25, 0.5, 1.0)
_PING_S = 5.0  # a quiet subscription pings this often (under socket_timeout)


def _encode_events(events: list[domain.Event]) -> str:
    body = {"k": "e", "v": versions.EVENT_VERSION, "events": [e.as_dict() for e in events]}
    return json.dumps(body)


def _decode_event(raw: dict[str, Any], version: int) -> domain.Event:
    return domain.Event(
        session_id=raw["session_id"],
        seq=raw["seq"],
        type=domain.EventType(raw["type"]),
        turn_id=raw["turn_id"],
        data=versions.event_data(version, raw["type"], raw["data"]),
        created_at=datetime.fromisoformat(raw["created_at"]),
    )


def _encode_delta(delta: Delta) -> str:
    return json.dumps(
        {"k": "d", "t": delta.turn_id, "m": delta.message_id, "o": delta.offset, "x": delta.text}
    )


class RedisBus:
    def __init__(self, url: str, prefix: str = "tether"):
        self.names = keys.Names(prefix)
        # No hidden retries: a broken connection must surface, so we know to resync readers.
        self._redis = aioredis.from_url(
            url,
            decode_responses=True,
            retry=Retry(NoBackoff(), 0),
            socket_connect_timeout=2,
            socket_timeout=10,  # a connection dead without a reset must not hang us
            socket_keepalive=True,
        )
        self._subs: defaultdict[str, set[Subscription]] = defaultdict(set)
        self._confirmed: dict[str, asyncio.Future[None]] = {}  # channel -> subscribe ack
        self._pubsub: aioredis.client.PubSub | None = None
        self._outbox: deque[tuple[str, Any]] = deque()
        self._outbox_ready = asyncio.Event()
        self._outbox_empty = asyncio.Event()  # and nothing in flight
        self._outbox_empty.set()
        self._partial_of: dict[str, str] = {}  # session -> message id whose text we keep
        self._work = asyncio.Event()
        self._webhooks = asyncio.Event()
        self._stop_callback: Callable[[str], None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._connected = asyncio.Event()

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._listen(), name="tether-bus-listen"),
            asyncio.create_task(self._flush(), name="tether-bus-flush"),
        ]
        # Start degraded rather than not at all: the store is the truth, the bus catches up.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self._connected.wait()

    @property
    def up(self) -> bool:
        return self._connected.is_set()

    # --- publishing ----------------------------------------------------------------------------

    def publish_events(self, session_id: str, events: list[domain.Event]) -> None:
        self._enqueue("events", (session_id, events))

    def publish_delta(self, delta: Delta) -> None:
        self._enqueue("delta", delta)

    def notify_work(self) -> None:
        self._work.set()  # our own workers at once; the others through Redis
        self._enqueue("work", None)

    def notify_webhooks(self) -> None:
        self._webhooks.set()  # our own dispatcher at once; the others through Redis
        self._enqueue("webhooks", None)

    def signal_stop(self, turn_id: str) -> None:
        if self._stop_callback:
            self._stop_callback(turn_id)
        self._enqueue("stop", turn_id)

    def _enqueue(self, kind: str, item: Any) -> None:
        self._outbox.append((kind, item))
        self._outbox_ready.set()
        self._outbox_empty.clear()

    async def _flush(self) -> None:
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            batch = list(self._outbox)
            self._outbox.clear()
            if batch:
                await self._send(batch)
            if not self._outbox:
                self._outbox_empty.set()

    async def _send(self, batch: list[tuple[str, Any]]) -> None:
        try:
            pipe = self._redis.pipeline(transaction=False)
            self._write(pipe, batch)
            await pipe.execute()
        except Exception as exc:  # never let the one publishing task die
            # Dropped: events are durable; readers resync when the bus comes back.
            log.warning("bus publish failed (%d items dropped): %s", len(batch), exc)
            self._partial_of.clear()  # the partial keys may be behind now: start over

    def _write(self, pipe: Any, batch: list[tuple[str, Any]]) -> None:
        k = self.names
        pending: Delta | None = None  # consecutive deltas of one message go out as one

        def flush_delta() -> None:
            nonlocal pending
            if pending is None:
                return
            sid = pending.session_id
            if self._partial_of.get(sid) == pending.message_id:
                pipe.append(k.partial_text(sid), pending.text)
                pipe.expire(k.partial_text(sid), PARTIAL_TTL_S)  # APPEND may have re-made it
            else:
                self._partial_of[sid] = pending.message_id
                meta = {"t": pending.turn_id, "m": pending.message_id, "o": pending.offset}
                pipe.set(k.partial_meta(sid), json.dumps(meta), ex=PARTIAL_TTL_S)
                pipe.set(k.partial_text(sid), pending.text, ex=PARTIAL_TTL_S)
            pipe.publish(k.session(sid), _encode_delta(pending))
            pending = None

        work = webhooks = False
        for kind, item in batch:
            if kind == "delta":
                if (
                    pending is not None
                    and pending.message_id == item.message_id
                    and pending.offset + len(pending.text) == item.offset
                ):
                    pending = Delta(
                        pending.session_id,
                        pending.turn_id,
                        pending.message_id,
                        pending.offset,
                        pending.text + item.text,
                    )
                    continue
                flush_delta()
                pending = item
                continue
            flush_delta()
            if kind == "events":
                session_id, events = item
                if any(e.type in ENDS_MESSAGE for e in events):
                    self._partial_of.pop(session_id, None)
                    pipe.delete(k.partial_meta(session_id), k.partial_text(session_id))
                pipe.publish(k.session(session_id), _encode_events(events))
            elif kind == "stop":
                pipe.publish(k.stop, item)
            elif kind == "webhooks":
                webhooks = True
            else:
                work = True
        flush_delta()
        if work:
            pipe.publish(k.work, "")
        if webhooks:
            pipe.publish(k.webhooks, "")

    # --- reading -------------------------------------------------------------------------------

    async def subscribe(self, session_id: str) -> Subscription:
        """A live feed of the session; answers once Redis confirmed the subscription, so
        anything published after this returns is delivered. 503 if the bus is down."""
        pubsub = self._pubsub
        if pubsub is None:
            raise errors.Unavailable("live updates are unavailable (the bus is down), retry")
        sub = Subscription(session_id)
        channel = self.names.session(session_id)
        first = not self._subs[session_id]
        self._subs[session_id].add(sub)
        try:
            if first:
                self._confirmed[channel] = asyncio.get_running_loop().create_future()
                await pubsub.subscribe(channel)
            confirmed = self._confirmed.get(channel)
            if confirmed is not None:
                async with asyncio.timeout(5):
                    await asyncio.shield(confirmed)
        except (RedisError, OSError, TimeoutError) as exc:
            self.unsubscribe(sub)
            raise errors.Unavailable("live updates are unavailable (the bus is down)") from exc
        except BaseException:
            self.unsubscribe(sub)
            raise
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.session_id)
        if subs is None:
            return
        subs.discard(sub)
        if subs:
            return
        del self._subs[sub.session_id]
        channel = self.names.session(sub.session_id)
        self._confirmed.pop(channel, None)
        pubsub = self._pubsub
        if pubsub is not None:
            task = asyncio.get_running_loop().create_task(self._unsubscribe(pubsub, channel))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _unsubscribe(self, pubsub: aioredis.client.PubSub, channel: str) -> None:
        with contextlib.suppress(RedisError, OSError):
            if channel not in self._confirmed:  # nobody subscribed again meanwhile
                await pubsub.unsubscribe(channel)

    async def partial(self, session_id: str) -> Delta | None:
        try:
            meta, text = await self._redis.mget(
                self.names.partial_meta(session_id), self.names.partial_text(session_id)
            )
        except (RedisError, OSError):
            return None  # a reader then starts with the next live delta
        if meta is None or text is None:
            return None
        m = json.loads(meta)
        return Delta(session_id, m["t"], m["m"], m["o"], str(text))

    async def wait_for_work(self, max_wait_s: float) -> None:
        # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that
        # arrives as the wait ends, and a worker stopping would then never stop claiming
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max_wait_s):
                await self._work.wait()
        self._work.clear()

    async def wait_for_webhooks(self, max_wait_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max_wait_s):
                await self._webhooks.wait()
        self._webhooks.clear()

    def on_stop(self, callback: Callable[[str], None] | None) -> None:
        self._stop_callback = callback

    async def _listen(self) -> None:
        failures = 0
        while True:
            pubsub = self._redis.pubsub()
            try:
                channels = [self.names.work, self.names.stop, self.names.webhooks]
                channels += [self.names.session(sid) for sid in self._subs]
                for channel in channels[3:]:
                    self._confirmed.setdefault(channel, asyncio.get_running_loop().create_future())
                await pubsub.subscribe(*channels)
                self._pubsub = pubsub
                while True:
                    message = await pubsub.get_message(timeout=_PING_S)
                    if message is None:
                        await pubsub.ping()  # quiet: is the connection still there?
                        continue
                    if failures or not self._connected.is_set():
                        self._on_connected()
                        failures = 0
                    try:
                        self._dispatch(message)
                    except Exception:  # a malformed message must not stop the listener
                        log.exception("bus message dropped: %r", message)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                raise
            except Exception as exc:  # whatever it was, reconnect
                if self._connected.is_set():
                    log.warning("bus connection lost: %s", exc)
                self._connected.clear()
                self._pubsub = None
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                for subs in self._subs.values():
                    for sub in subs:
                        sub.lag()  # whatever was published meanwhile is lost to them
                self._work.set()  # workers poll the store meanwhile
                self._webhooks.set()
                await asyncio.sleep(_RECONNECT_S[min(failures, len(_RECONNECT_S) - 1)])
                failures += 1

    def _on_connected(self) -> None:
        self._connected.set()
        self._work.set()  # a wake-up may have been lost while we were away
        self._webhooks.set()
        for subs in self._subs.values():
            for sub in subs:
                sub.lag()

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind, channel, data = message["type"], message["channel"], message["data"]
        if kind == "subscribe":
            confirmed = self._confirmed.get(channel)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)
            return
        if kind == "unsubscribe" and channel in self._confirmed and self._pubsub is not None:
            # an unsubscribe raced a new reader's subscribe and won: subscribe again
            for sub in self._subs.get(channel.rsplit(":", 1)[1], ()):
                sub.lag()
            task = asyncio.get_running_loop().create_task(self._pubsub.subscribe(channel))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            return
        if kind != "message":
            return
        if channel == self.names.work:
            self._work.set()
        elif channel == self.names.webhooks:
            self._webhooks.set()
        elif channel == self.names.stop:
            if self._stop_callback:
                self._stop_callback(data)
        else:
            session_id = channel.rsplit(":", 1)[1]
            subs = self._subs.get(session_id)
            if not subs:
                return
            raw = json.loads(data)
            item: Item
            if raw["k"] == "e":
                version = raw.get("v", 1)  # a node from before versions sends none
                item = Committed([_decode_event(e, version) for e in raw["events"]])
            else:
                item = Delta(session_id, raw["t"], raw["m"], raw["o"], raw["x"])
            for sub in subs:
                sub.put(item)

    async def close(self) -> None:
        # what is still in the outbox goes out first (a worker's last events, a stop)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await self._outbox_empty.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._subs.clear()
        await self._redis.aclose()
