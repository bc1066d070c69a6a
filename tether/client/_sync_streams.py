"""Sync streams: a session's events, and a turn's, resuming by themselves (see _streams)."""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator
from types import TracebackType
from typing import TYPE_CHECKING

import httpx
import httpx_sse

from tether.client import _base, _calls, _streams, errors, models

if TYPE_CHECKING:
    from tether.client.client import Tether


class EventStream:
    """A session's events, live, for as long as you iterate: durable events exactly once and in
    order, text deltas without gap or repeat, across dropped connections. Use it in a `with`
    block, or `close()` it, to end the connection early."""

    def __init__(self, client: Tether, session_id: str, cursor: _streams.Cursor):
        self._client = client
        self.session_id = session_id
        self._cursor = cursor
        self._response: httpx.Response | None = None
        self._response = self._open_with_retries()
        self._events = self._run()

    @property
    def last_seq(self) -> int:
        """The seq of the last durable event received: where a new stream would resume."""
        return self._cursor.after

    # -- what subclasses change -------------------------------------------------------------

    def _request(self) -> _streams.Request:
        return _streams.events_request(self.session_id, self._cursor)

    def _take(self, event: models.Event) -> list[models.Event]:
        return self._cursor.take(event)

    def _passed(self, event: models.Event) -> None:
        self._cursor.passed(event)

    def _settle(self) -> None:
        """Called after each frame's events are yielded."""

    @property
    def _over(self) -> bool:
        return False

    # -- the connection loop -------------------------------------------------------------------

    def _open(self) -> httpx.Response:
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
        response = http.send(sent, stream=True)
        if response.status_code >= 400:
            try:
                response.read()
            finally:
                response.close()
            raise errors.from_response(response)
        return response

    def _open_with_retries(self) -> httpx.Response:
        failures = 0
        while True:
            try:
                return self._open()
            except (httpx.TransportError, errors.APIError) as exc:
                failures += 1
                time.sleep(_streams.reconnect_delay(self._client._config, exc, failures))

    def _run(self) -> Generator[models.Event, None, None]:
        failures = 0
        while not self._over:
            failure: Exception | None = None
            try:
                response, self._response = self._response or self._open(), None
                try:
                    for sse in httpx_sse.EventSource(response).iter_sse():
                        if not sse.data:
                            continue
                        for event in self._take(_streams.parse(sse.data)):
                            failures = 0
                            # counted as given before it is: a reader that stops here has it
                            self._passed(event)
                            yield event
                        self._settle()
                        if self._over:
                            return
                finally:
                    response.close()
            except (httpx.TransportError, _streams.Gap, errors.APIError) as exc:
                failure = exc
            except httpx_sse.SSEError as exc:
                raise errors.TetherClientError(f"not an event stream: {exc}") from exc
            if self._over:
                return
            failures += 1  # dropped, or ended by the server before our end: come back
            time.sleep(_streams.reconnect_delay(self._client._config, failure, failures))

    # -- iteration ---------------------------------------------------------------------------

    def __iter__(self) -> Iterator[models.Event]:
        return self

    def __next__(self) -> models.Event:
        return next(self._events)

    def close(self) -> None:
        """End the stream and its connection."""
        self._events.close()
        if self._response is not None:
            self._response.close()
            self._response = None

    def __enter__(self) -> EventStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class TurnStream(EventStream):
    """One turn's events, from its creation (or `after`) until it ends or waits for a human.

    Iterate it for the events as they come, or call `text()` / `final()` to wait for the end.
    After the stream: `turn` is the turn as it ended (or waits), `messages` its finished
    messages, `interrupts` what it waits on (empty unless `waiting`).
    """

    def __init__(self, client: Tether, record: _streams.TurnRecord):
        self._record = record
        super().__init__(client, record.session_id, record.cursor)

    def _request(self) -> _streams.Request:
        return self._record.request()

    def _take(self, event: models.Event) -> list[models.Event]:
        return self._record.take(event)

    def _passed(self, event: models.Event) -> None:
        self._record.passed(event)

    def _settle(self) -> None:
        if self._record.waiting_seen and self._record.turn_id:
            turn = self._client._call(_calls.get_turn(self.session_id, self._record.turn_id))
            self._record.still_waiting(turn)

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
        """The turn's messages finished so far (user input, assistant, tool results)."""
        return list(self._record.messages)

    @property
    def interrupts(self) -> list[models.Interrupt]:
        """The interrupts the turn waits on."""
        return list(self._record.interrupts.values())

    @property
    def waiting(self) -> bool:
        """Whether the stream ended because the turn waits for answers to `interrupts`."""
        return self._record.over and self.turn is not None and self.turn.status == "waiting"

    def text_deltas(self) -> Iterator[str]:
        """Only the text, as it streams."""
        for event in self:
            if event.delta:
                yield event.delta

    def until_done(self) -> TurnStream:
        """Read the stream to its end (the turn ended or waits)."""
        for _ in self:
            pass
        return self

    def text(self) -> str:
        """Wait for the end; the text of the turn's last assistant message: its answer, or the
        partial text kept when it was stopped."""
        return self.until_done()._record.final_text()

    def final(self) -> models.Turn:
        """Wait for the end; the turn as it ended (or as it waits)."""
        self.until_done()
        if self.turn is None:
            assert self.turn_id is not None
            return self._client._call(_calls.get_turn(self.session_id, self.turn_id))
        return self.turn

    def follow(self) -> TurnStream:
        """The rest of this turn, from where this stream stopped: after answering what it
        waits on (`interrupts`), or after stopping it, to see how it ended. No event and no
        text is given twice."""
        return TurnStream(self._client, self._record.rest())

    def __enter__(self) -> TurnStream:
        return self
