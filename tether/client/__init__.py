"""A small Python client for the native API (httpx). Never imports the server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
from httpx_sse import connect_sse


class TetherAPIError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class Client:
    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8700",
        api_key: str | None = None,
        timeout: float = 30.0,
    ):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
                raise TetherAPIError(response.status_code, error["code"], error["message"])
            except (ValueError, KeyError):
                raise TetherAPIError(response.status_code, "http_error", response.text) from None
        return response.json() if response.content else None

    def list_agents(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/agents")["data"]  # type: ignore[no-any-return]

    def create_agent(self, definition: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/v1/agents", json=definition)  # type: ignore[no-any-return]

    def create_session(
        self, agent_id: str, metadata: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        body = {"agent_id": agent_id, "metadata": metadata or {}}
        return self._call("POST", "/v1/sessions", json=body)  # type: ignore[no-any-return]

    def get_session(self, session_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/sessions/{session_id}")  # type: ignore[no-any-return]

    def list_sessions(self, limit: int = 20) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/sessions", params={"limit": limit})["data"]  # type: ignore[no-any-return]

    def messages(self, session_id: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cursor = None
        while True:
            params = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
            page = self._call("GET", f"/v1/sessions/{session_id}/messages", params=params)
            out.extend(page["data"])
            cursor = page["next_cursor"]
            if not cursor:
                return out

    def start_turn(self, session_id: str, input: str, on_busy: str = "enqueue") -> dict[str, Any]:
        return self._call(  # type: ignore[no-any-return]
            "POST", f"/v1/sessions/{session_id}/turns", json={"input": input, "on_busy": on_busy}
        )

    def stream_turn(
        self, session_id: str, input: str, on_busy: str = "enqueue"
    ) -> Iterator[dict[str, Any]]:
        """Start a turn and yield its events (deltas included) until it ends."""
        body = {"input": input, "on_busy": on_busy, "stream": True}
        with connect_sse(
            self.http, "POST", f"/v1/sessions/{session_id}/turns", json=body, timeout=None
        ) as source:
            if source.response.status_code >= 400:
                source.response.read()
                error = source.response.json()["error"]
                raise TetherAPIError(source.response.status_code, error["code"], error["message"])
            for sse in source.iter_sse():
                yield json.loads(sse.data)
