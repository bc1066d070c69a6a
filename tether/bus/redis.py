"""The Redis bus of cluster mode: wake-ups, stop signals and live deltas across processes.

Pub/sub is at most once, and that is all a bus may be here: events are durable in the store
and every reader can catch up from it. Whenever this node may have missed messages (Redis
restarted, our connection dropped), each local subscription is marked `lagged`, which sends
its reader back to the store. Workers still poll for work and heartbeats still read stops, so
a lost wake-up costs latency, never a turn.

Three paths, so that control never queues behind text:
- Data: commits and deltas go to an outbox that one task drains in pipelines, in order (a
  session's events and deltas share one channel, so their order holds end to end). A
  session's deltas wait up to `DELTA_FLUSH_S` and go out as one message per flush, its SSE
  JSON encoded once here: API nodes relay those bytes as they are. A commit goes at once,
  with the deltas before it. The text of the message in flight is also kept in two keys, so
  a reader joining on any node gets what it missed as one delta.
- Control: stop signals and "this turn ended" notices go straight out on a connection of
  their own, and are heard on a subscription of their own: a stop reaches its worker, and
  its confirmation the API node waiting for it, past any backlog of deltas.
- Work: one token per runnable turn on a Redis list; a worker with room takes one at a time
  (BLPOP), so each wake-up reaches one worker, not all of them. Workers still poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from tether import domain, errors, versions
from tether.bus import keys
from tether.bus.base import (
    DELTA_FLUSH_S,
    Committed,
    Delta,
    EndWatch,
    Item,
    Subscription,
)
from tether.bus.local import ENDS_MESSAGE, TURN_ENDS
from tether.views import compact_json

log = logging.getLogger("tether.bus")

PARTIAL_TTL_S = 3600  # a message in flight longer than this loses its catch-up text
WORK_TOKENS_MAX = 100_000  # wake-ups kept while no worker takes them
_RENEW_PARTIAL_S = PARTIAL_TTL_S / 4  # how often the catch-up text's TTL is pushed back
SUBSCRIPTION_LINGER_S = 2.0  # a session nobody follows stays subscribed this long
_ENDED_KEPT = 10_000  # turns remembered as ended (their late deltas are dropped)
_RECONNECT_S = (0.05, 0.1, 0.25, 0.5, 1.0)
_PING_S = 5.0  # a quiet subscription pings this often (under socket_timeout)
_TAKE_WORK_S = 1  # a BLPOP for work waits this long at most (whole seconds)
_CANCELLED = domain.EventType.TURN_CANCELLED.value


def _encode_events(events: list[domain.Event]) -> bytes:
    body = {"k": "e", "v": versions.EVENT_VERSION, "events": [e.as_dict() for e in events]}
    return compact_json(body).encode()


def _decode_event(raw: dict[str, Any], version: int) -> domain.Event:
    return domain.Event(
        session_id=raw["session_id"],
        seq=raw["seq"],
        type=domain.EventType(raw["type"]),
        turn_id=raw["turn_id"],
        data=versions.event_data(version, raw["type"], raw["data"]),
        created_at=datetime.fromisoformat(raw["created_at"]),
    )


def encode_delta(delta: Delta) -> bytes:
    """A delta on the wire: `d <turn> <message> <offset> <length>` and, after a newline, its
    SSE frame's JSON past `{"seq":N,` (Delta.wire)."""
    head = f"d {delta.turn_id} {delta.message_id} {delta.offset} {delta.length}\n".encode()
    return head + delta.wire


def decode_delta(session_id: str, data: bytes) -> Delta:
    head, _, wire = data.partition(b"\n")
    _, turn_id, message_id, offset, length = head.decode().split(" ")
    return Delta(session_id, turn_id, message_id, int(offset), wire=wire, length=int(length))


class _Gathering:
    """A session's deltas waiting in the outbox: pieces of one message, end to end."""

    __slots__ = ("end", "message_id", "offset", "pieces", "session_id", "turn_id")

    def __init__(self, delta: Delta):
        self.session_id = delta.session_id
        self.turn_id = delta.turn_id
        self.message_id = delta.message_id
        self.offset = delta.offset
        self.end = delta.end
        self.pieces = [delta.text]

    def delta(self) -> Delta:
        text = "".join(self.pieces)
        return Delta(self.session_id, self.turn_id, self.message_id, self.offset, text)


def _client(url: str, **options: Any) -> aioredis.Redis:
    # No hidden retries: a broken connection must surface, so we know to resync readers.
    return aioredis.from_url(
        url,
        retry=Retry(NoBackoff(), 0),
        socket_connect_timeout=2,
        socket_keepalive=True,
        **{"socket_timeout": 10, **options},  # a connection dead without a reset must not hang
    )


class RedisBus:
    def __init__(self, url: str, prefix: str = "tether"):
        self.names = keys.Names(prefix)
        self._redis = _client(url)  # data: the outbox's pipelines, reads
        self._control = _client(url)  # stops and ends, published at once
        self._blocking = _client(url, socket_timeout=_TAKE_WORK_S + 10)  # BLPOP for work
        self._session_channel = self.names.session("").encode()
        self._subs: defaultdict[str, set[Subscription]] = defaultdict(set)
        self._confirmed: dict[bytes, asyncio.Future[None]] = {}  # channel -> subscribe ack
        self._pubsub: aioredis.client.PubSub | None = None
        self._outbox: list[tuple[str, Any]] = []
        self._gathering: dict[str, _Gathering] = {}  # session -> its deltas in the outbox
        self._outbox_ready = asyncio.Event()
        self._flush_due: asyncio.TimerHandle | None = None
        self._outbox_empty = asyncio.Event()  # and nothing in flight
        self._outbox_empty.set()
        self._partial_of: dict[str, tuple[str, float]] = {}  # session -> (message, renew at)
        self._work = asyncio.Event()
        self._want_work = asyncio.Event()  # a worker with room waits: take a token
        self._webhooks = asyncio.Event()
        self._stop_callback: Callable[[str], None] | None = None
        self._end_watches: defaultdict[str, set[EndWatch]] = defaultdict(set)
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._tasks: list[asyncio.Task[None]] = []
        self._sending: set[asyncio.Task[Any]] = set()
        self._connected = asyncio.Event()
        self._control_connected = asyncio.Event()

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._listen(), name="tether-bus-listen"),
            asyncio.create_task(self._listen_control(), name="tether-bus-control"),
            asyncio.create_task(self._flush(), name="tether-bus-flush"),
        ]
        # Start degraded rather than not at all: the store is the truth, the bus catches up.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self._connected.wait()
                await self._control_connected.wait()

    @property
    def up(self) -> bool:
        return self._connected.is_set()

    # --- publishing ----------------------------------------------------------------------------

    def publish_events(self, session_id: str, events: list[domain.Event]) -> None:
        self._gathering.pop(session_id, None)  # later deltas go after these events
        for event in events:
            if event.type in TURN_ENDS and event.turn_id:
                self._turn_ends(session_id, event.turn_id, event.type)
        self._enqueue("events", (session_id, events))

    def _turn_ends(self, session_id: str, turn_id: str, type: domain.EventType) -> None:
        if type is domain.EventType.TURN_CANCELLED:
            # a stopped turn's text still waiting here is not sent after its end (its end
            # keeps the text as an interrupted message)
            self._outbox = [
                (kind, item)
                for kind, item in self._outbox
                if not (kind == "delta" and item.turn_id == turn_id)
            ]
        self._heard_end(session_id, turn_id, type.value)
        notice = f"{session_id} {turn_id} {type.value}"
        self._send_now(self._control.publish(self.names.ends, notice))

    def publish_delta(self, delta: Delta) -> None:
        gathering = self._gathering.get(delta.session_id)
        if (
            gathering is not None
            and gathering.message_id == delta.message_id
            and gathering.end == delta.offset
        ):
            gathering.pieces.append(delta.text)
            gathering.end = delta.end
            return
        self._gathering[delta.session_id] = gathering = _Gathering(delta)
        self._outbox.append(("delta", gathering))
        self._outbox_empty.clear()
        if self._flush_due is None and not self._outbox_ready.is_set():
            loop = asyncio.get_running_loop()
            self._flush_due = loop.call_later(DELTA_FLUSH_S, self._outbox_ready.set)

    def notify_work(self, *, local: bool = False) -> None:
        self._work.set()  # our own workers at once
        if not local:
            self._enqueue("work", None)  # and one worker anywhere

    def notify_webhooks(self) -> None:
        self._webhooks.set()  # our own dispatcher at once; the others through Redis
        self._enqueue("webhooks", None)

    def signal_stop(self, turn_id: str) -> None:
        if self._stop_callback:
            self._stop_callback(turn_id)
        self._send_now(self._control.publish(self.names.stop, turn_id))

    def _send_now(self, command: Any) -> None:
        task = asyncio.ensure_future(command)
        self._sending.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[Any]) -> None:
        self._sending.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("bus control message lost: %s", exc)  # the store and polling back it

    def _enqueue(self, kind: str, item: Any) -> None:
        self._outbox.append((kind, item))
        self._outbox_ready.set()
        self._outbox_empty.clear()

    async def _flush(self) -> None:
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            if self._flush_due is not None:
                self._flush_due.cancel()
                self._flush_due = None
            batch, self._outbox = self._outbox, []
            self._gathering.clear()
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
        now = time.monotonic()
        work = 0
        webhooks = False
        for kind, item in batch:
            if kind == "delta":
                delta = item.delta()
                sid = delta.session_id
                kept = self._partial_of.get(sid)
                if kept is not None and kept[0] == delta.message_id:
                    pipe.append(k.partial_text(sid), delta.text)
                    if now >= kept[1]:  # APPEND may have re-made an expired key
                        pipe.expire(k.partial_text(sid), PARTIAL_TTL_S)
                        self._partial_of[sid] = (delta.message_id, now + _RENEW_PARTIAL_S)
                else:
                    self._partial_of[sid] = (delta.message_id, now + _RENEW_PARTIAL_S)
                    meta = {"t": delta.turn_id, "m": delta.message_id, "o": delta.offset}
                    pipe.set(k.partial_meta(sid), json.dumps(meta), ex=PARTIAL_TTL_S)
                    pipe.set(k.partial_text(sid), delta.text, ex=PARTIAL_TTL_S)
                pipe.publish(k.session(sid), encode_delta(delta))
            elif kind == "events":
                session_id, events = item
                if any(e.type in ENDS_MESSAGE for e in events):
                    self._partial_of.pop(session_id, None)
                    pipe.delete(k.partial_meta(session_id), k.partial_text(session_id))
                pipe.publish(k.session(session_id), _encode_events(events))
            elif kind == "webhooks":
                webhooks = True
            else:
                work += 1
        if work:
            pipe.rpush(k.work, *[b""] * work)
            pipe.ltrim(k.work, -WORK_TOKENS_MAX, -1)
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
        channel = self.names.session(session_id).encode()
        self._subs[session_id].add(sub)
        try:
            if channel not in self._confirmed:  # else subscribed, or lingering: no round trip
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
        # Kept a moment: a session's next turn is often followed right away (no round trip).
        loop = asyncio.get_running_loop()
        loop.call_later(SUBSCRIPTION_LINGER_S, self._let_go, sub.session_id)

    def _let_go(self, session_id: str) -> None:
        if self._subs.get(session_id):
            return  # followed again meanwhile
        channel = self.names.session(session_id).encode()
        self._confirmed.pop(channel, None)
        pubsub = self._pubsub
        if pubsub is not None:
            task = asyncio.get_running_loop().create_task(self._unsubscribe(pubsub, channel))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _unsubscribe(self, pubsub: aioredis.client.PubSub, channel: bytes) -> None:
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
        text = text.decode() if isinstance(text, bytes) else text
        return Delta(session_id, m["t"], m["m"], m["o"], text)

    # --- work ----------------------------------------------------------------------------------

    async def wait_for_work(self, max_wait_s: float, *, take: bool = True) -> None:
        if take and not self._work.is_set():
            self._want_work.set()
            if not any(t.get_name() == "tether-bus-work" for t in self._tasks):
                self._tasks.append(asyncio.create_task(self._take_work(), name="tether-bus-work"))
        # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that
        # arrives as the wait ends, and a worker stopping would then never stop claiming
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max_wait_s):
                    await self._work.wait()
        finally:
            self._want_work.clear()
        self._work.clear()

    async def _take_work(self) -> None:
        """While this process's worker has room and waits, take wake-ups, one at a time."""
        failures = 0
        while True:
            await self._want_work.wait()
            try:
                taken = await self._blocking.blpop([self.names.work], timeout=_TAKE_WORK_S)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the worker polls meanwhile
                log.debug("taking work failed: %s", exc)
                await asyncio.sleep(_RECONNECT_S[min(failures, len(_RECONNECT_S) - 1)])
                failures += 1
                continue
            if taken is not None:
                self._want_work.clear()
                self._work.set()

    async def wait_for_webhooks(self, max_wait_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max_wait_s):
                await self._webhooks.wait()
        self._webhooks.clear()

    def on_stop(self, callback: Callable[[str], None] | None) -> None:
        self._stop_callback = callback

    # --- ends ----------------------------------------------------------------------------------

    def watch_ends(self, session_id: str) -> EndWatch:
        watch = EndWatch(session_id)
        self._end_watches[session_id].add(watch)
        return watch

    def unwatch_ends(self, watch: EndWatch) -> None:
        watches = self._end_watches.get(watch.session_id)
        if watches is not None:
            watches.discard(watch)
            if not watches:
                del self._end_watches[watch.session_id]

    def turn_ended(self, turn_id: str) -> bool:
        """Heard to have been stopped: the live text still on its way is dropped (the
        turn's end holds it), so none arrives after the stop was confirmed."""
        return turn_id in self._ended

    def _heard_end(self, session_id: str, turn_id: str, type: str) -> None:
        if type == _CANCELLED:  # a stop's answer may go out before its deltas arrive
            self._ended[turn_id] = None
            if len(self._ended) > _ENDED_KEPT:
                self._ended.popitem(last=False)
        for watch in self._end_watches.get(session_id, ()):
            watch.saw(turn_id)

    # --- listening -----------------------------------------------------------------------------

    async def _listen(self) -> None:
        """The data subscription: the sessions this node's readers follow."""

        def channels() -> list[bytes]:
            wanted = {self.names.session(sid).encode() for sid in self._subs}
            for channel in list(self._confirmed):
                if channel not in wanted:  # lingering: not subscribed on a new connection
                    del self._confirmed[channel]
            for channel in wanted:
                self._confirmed.setdefault(channel, asyncio.get_running_loop().create_future())
            # one channel at least (nobody publishes on it): a pubsub with none would not wait
            return [self.names.node.encode(), *(self.names.session(s).encode() for s in self._subs)]

        def lost() -> None:
            self._connected.clear()
            self._pubsub = None
            for subs in self._subs.values():
                for sub in subs:
                    sub.lag()  # whatever was published meanwhile is lost to them

        def connected(pubsub: aioredis.client.PubSub) -> None:
            self._pubsub = pubsub
            self._connected.set()
            for subs in self._subs.values():
                for sub in subs:
                    sub.lag()

        await self._keep_listening("data", channels, self._dispatch, connected, lost)

    async def _listen_control(self) -> None:
        """The control subscription: stops, ends and webhook wake-ups, on a connection of
        their own."""

        def channels() -> list[bytes]:
            return [
                self.names.stop.encode(),
                self.names.ends.encode(),
                self.names.webhooks.encode(),
            ]

        def lost() -> None:
            self._control_connected.clear()

        def connected(_: aioredis.client.PubSub) -> None:
            self._control_connected.set()
            self._work.set()  # a wake-up may have been lost while we were away
            self._webhooks.set()

        await self._keep_listening("control", channels, self._dispatch_control, connected, lost)

    async def _keep_listening(
        self,
        name: str,
        channels: Callable[[], list[bytes]],
        dispatch: Callable[[dict[str, Any]], None],
        connected: Callable[[aioredis.client.PubSub], None],
        lost: Callable[[], None],
    ) -> None:
        failures = 0
        up = False
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(*channels())
                if name == "data":
                    self._pubsub = pubsub  # readers may subscribe (confirmed below)
                while True:
                    message = await pubsub.get_message(timeout=_PING_S)
                    if message is None:
                        await pubsub.ping()  # quiet: is the connection still there?
                        continue
                    if not up:
                        connected(pubsub)
                        up, failures = True, 0
                    try:
                        dispatch(message)
                    except Exception:  # a malformed message must not stop the listener
                        log.exception("bus message dropped: %r", message)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                raise
            except Exception as exc:  # whatever it was, reconnect
                if up:
                    log.warning("bus connection lost (%s): %s", name, exc)
                up = False
                lost()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                self._work.set()  # workers poll the store meanwhile
                self._webhooks.set()
                await asyncio.sleep(_RECONNECT_S[min(failures, len(_RECONNECT_S) - 1)])
                failures += 1

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind, channel, data = message["type"], message["channel"], message["data"]
        if kind == "subscribe":
            confirmed = self._confirmed.get(channel)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)
            return
        if kind == "unsubscribe":
            if channel in self._confirmed and self._pubsub is not None:
                # A reader came back after the UNSUBSCRIBE was sent: its SUBSCRIBE went after
                # it (an UNSUBSCRIBE is only sent for a channel nobody wants at that moment),
                # so Redis applied them in that order and the channel is subscribed. Once
                # more does no harm, should that order ever not hold.
                task = asyncio.get_running_loop().create_task(self._pubsub.subscribe(channel))
                task.add_done_callback(lambda t: t.cancelled() or t.exception())
            return
        if kind != "message" or not channel.startswith(self._session_channel):
            return
        session_id = channel[len(self._session_channel) :].decode()
        subs = self._subs.get(session_id)
        if not subs:
            return
        item: Item
        if data[:1] == b"d":
            item = decode_delta(session_id, data)
            if item.turn_id in self._ended:
                return  # it ended (we heard out of band): its text is in its end already
        else:
            raw = json.loads(data)
            version = raw.get("v", 1)  # a node from before versions sends none
            item = Committed([_decode_event(e, version) for e in raw["events"]])
        for sub in subs:
            sub.put(item)

    def _dispatch_control(self, message: dict[str, Any]) -> None:
        if message["type"] != "message":
            return
        channel, data = message["channel"].decode(), message["data"].decode()
        if channel == self.names.stop:
            if self._stop_callback:
                self._stop_callback(data)
        elif channel == self.names.ends:
            session_id, turn_id, type = data.split(" ")
            self._heard_end(session_id, turn_id, type)
        elif channel == self.names.webhooks:
            self._webhooks.set()

    async def close(self) -> None:
        # what is still in the outbox goes out first (a worker's last events, a stop)
        self._outbox_ready.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await self._outbox_empty.wait()
                if self._sending:
                    await asyncio.wait(list(self._sending))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._subs.clear()
        for client in (self._redis, self._control, self._blocking):
            await client.aclose()
