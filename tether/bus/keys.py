"""Every Redis key and channel name Tether uses, in one place. All start with the deployment's
prefix (`bus_prefix`), so deployments (and test runs) can share one Redis."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Names:
    prefix: str

    @property
    def work(self) -> str:
        """List: one token per turn that became runnable; a worker with room takes one
        (BLPOP) and claims."""
        return f"{self.prefix}:work"

    @property
    def webhooks(self) -> str:
        """Channel: webhook deliveries became due (dispatchers wake and claim)."""
        return f"{self.prefix}:webhooks"

    @property
    def stop(self) -> str:
        """Channel: a stop was written for a turn (payload: the turn id)."""
        return f"{self.prefix}:stop"

    @property
    def ends(self) -> str:
        """Channel: a turn ended (payload: `<session id> <turn id> <terminal event type>`),
        for the stops waiting on it; its events follow on the session's channel."""
        return f"{self.prefix}:ends"

    @property
    def node(self) -> str:
        """Channel nobody publishes on: every node's data subscription holds it, so that it
        is never empty."""
        return f"{self.prefix}:node"

    def session(self, session_id: str) -> str:
        """Channel: a session's committed events and live deltas, in publish order."""
        return f"{self.prefix}:session:{session_id}"

    def partial_meta(self, session_id: str) -> str:
        """String (JSON): the message in flight in a session: turn, message id, first offset."""
        return f"{self.prefix}:partial:{session_id}:meta"

    def partial_text(self, session_id: str) -> str:
        """String: that message's text so far (APPENDed as it streams)."""
        return f"{self.prefix}:partial:{session_id}:text"
