"""Async streams: a session's events, and a turn's, resuming by themselves (see _streams).
The mirror of _sync_streams; they are made by `await`-ing the call that opens them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

import httpx
import httpx_sse

from tether.client import _base, _calls, _streams, errors, models

if TYPE_CHECKING:
    from tether.client.async_client import AsyncTether


class AsyncEventStream:
    """A session's events, live, for as long as you iterate (`async for`): durable events
    exactly once and in order, text deltas without gap or repeat, across dropped connections.
    Use it in an `async with` block, or `await close()`, to end the connection early."""

    def __init__(self, client: AsyncTether, session_id: str, cursor: _streams.Cursor):
        self._client = client
        self.session_id = session_id
        self._cursor = cursor
        self._response: httpx.Response | None = None
        self._events = self._run()

    async def _start(self) -> None:
        self._response = await self._open_with_retries()

    @property
    def last_seq(self) -> int:
        """The seq of the last durable event received: where a new stream would resume."""
        return self._cursor.after

    def _request(self) -> _streams.Request:
        return _streams.events_request(self.session_id, self._cursor)

    def _take(self, event: models.Event) -> list[models.Event]:
        return self._cursor.take(event)

    def _passed(self, event: models.Event) -> None:
        self._cursor.passed(event)

    async def _settle(self) -> None:
        """Called after each frame's events are yielded."""

    @property
    def _over(self) -> bool:
        return False

    async def _open(self) -> httpx.Response:
        request = self._request()
        http = self._client._http
        headers, content = dict(request.headers), None
        if request.json is not None:
            content, content_type = _base.json_body(request.json)
            headers.update(content_type)
        sent = http.build_request(
            request.method,
            request.path,
            headers=headers,
            content=content,
            timeout=self._client._config.stream_http_timeout(),
        )
        response = await http.send(sent, stream=True)
        if response.status_code >= 400:
            try:
                await response.aread()
            finally:
                await response.aclose()
            raise errors.from_response(response)
        return response

    async def _open_with_retries(self) -> httpx.Response:
        failures = 0
        while True:
            try:
                return await self._open()
            except (httpx.TransportError, errors.APIError) as exc:
                failures += 1
                await asyncio.sleep(_streams.reconnect_delay(self._client._config, exc, failures))

    async def _run(self) -> AsyncGenerator[models.Event, None]:
        failures = 0
        while not self._over:
            failure: Exception | None = None
            try:
                response, self._response = self._response or await self._open(), None
                try:
                    async for sse in httpx_sse.EventSource(response).aiter_sse():
                        if not sse.data:
                            continue
                        for event in self._take(_streams.parse(sse.data)):
                            failures = 0
                            # counted as given before it is: a reader that stops here has it
                            self._passed(event)
                            yield event
                        await self._settle()
                        if self._over:
                            return
                finally:
                    await response.aclose()
            except (httpx.TransportError, _streams.Gap, errors.APIError) as exc:
                failure = exc
            except httpx_sse.SSEError as exc:
                raise errors.TetherClientError(f"not an event stream: {exc}") from exc
            if self._over:
                return
            failures += 1
            await asyncio.sleep(_streams.reconnect_delay(self._client._config, failure, failures))

    def __aiter__(self) -> AsyncIterator[models.Event]:
        return self

    async def __anext__(self) -> models.Event:
        return await self._events.__anext__()

    async def close(self) -> None:
        """End the stream and its connection."""
        await self._events.aclose()
        if self._response is not None:
            await self._response.aclose()
            self._response = None

    async def __aenter__(self) -> AsyncEventStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class AsyncTurnStream(AsyncEventStream):
    """One turn's events, from its creation (or `after`) until it ends or waits for a human;
    the async mirror of `TurnStream` (`await stream.text()`, `await stream.final()`)."""

    def __init__(self, client: AsyncTether, record: _streams.TurnRecord):
        self._record = record
        super().__init__(client, record.session_id, record.cursor)

    def _request(self) -> _streams.Request:
        return self._record.request()

    def _take(self, event: models.Event) -> list[models.Event]:
        return self._record.take(event)

    def _passed(self, event: models.Event) -> None:
        self._record.passed(event)

    async def _settle(self) -> None:
        if self._record.waiting_seen and self._record.turn_id:
            call = _calls.get_turn(self.session_id, self._record.turn_id)
            self._record.still_waiting(await self._client._call(call))

    @property
    def _over(self) -> bool:
        return self._record.over

    @property
    def turn_id(self) -> str | None:
        """The turn's id (known from its first event on)."""
        return self._record.turn_id

    @property
    def turn(self) -> models.Turn | None:
        """The turn as last seen on the stream."""
        return self._record.turn

    @property
    def messages(self) -> list[models.Message]:
        """The turn's messages finished so far."""
        return list(self._record.messages)

    @property
    def interrupts(self) -> list[models.Interrupt]:
        """The interrupts the turn waits on."""
        return list(self._record.interrupts.values())

    @property
    def waiting(self) -> bool:
        """Whether the stream ended because the turn waits for answers to `interrupts`."""
        return self._record.over and self.turn is not None and self.turn.status == "waiting"

    async def text_deltas(self) -> AsyncIterator[str]:
        """Only the text, as it streams."""
        async for event in self:
            if event.delta:
                yield event.delta

    async def until_done(self) -> AsyncTurnStream:
        """Read the stream to its end (the turn ended or waits)."""
        async for _ in self:
            pass
        return self

    async def text(self) -> str:
        """Wait for the end; the text of the turn's last assistant message."""
        return (await self.until_done())._record.final_text()

    async def final(self) -> models.Turn:
        """Wait for the end; the turn as it ended (or as it waits)."""
        await self.until_done()
        if self.turn is None:
            assert self.turn_id is not None
            return await self._client._call(_calls.get_turn(self.session_id, self.turn_id))
        return self.turn

    async def follow(self) -> AsyncTurnStream:
        """The rest of this turn, from where this stream stopped (see `TurnStream.follow`)."""
        return await opened(AsyncTurnStream(self._client, self._record.rest()))

    async def __aenter__(self) -> AsyncTurnStream:
        return self


S = TypeVar("S", bound=AsyncEventStream)


async def opened(stream: S) -> S:
    """The stream with its first connection open: a refusal (404, 409…) is raised here."""
    await stream._start()
    return stream
