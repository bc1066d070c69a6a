"""The scripted model: deterministic turns of any shape, no LLM needed (DESIGN §7).

The step it plays is the number of assistant messages the turn being run (the turn of the last
message) holds after its first user message, so a turn resumed from a checkpoint continues
the script where it stopped, and a steer (a user message delivered mid-turn) does not start
it again. `reply: "echo"` answers with the latest user message: a steer's, once one arrived.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncGenerator, Iterator

from tether import domain, errors, ids, specs
from tether.runtime.model import Finished, ModelEvent, ModelRequest, TextDelta, UsageReport


def _tokens(text: str, count: int | None) -> Iterator[str]:
    """The reply as tokens, lazily: a million-token reply costs no memory up front."""
    words = text.split(" ")
    if count is None:
        if text:
            yield from (w if i == len(words) - 1 else w + " " for i, w in enumerate(words))
        return
    cycle = itertools.cycle([w for w in words if w] if text.strip() else ["token"])
    yield from (next(cycle) + " " for _ in range(count))


def _step(messages: list[domain.Message]) -> int:
    """Assistant messages of the current turn after its first user message."""
    if not messages:
        return 0
    turn_id = messages[-1].turn_id
    first_user = next(
        (i for i, m in enumerate(messages) if m.turn_id == turn_id and m.role == "user"), None
    )
    if first_user is None:
        first_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    return sum(
        1 for m in messages[first_user + 1 :] if m.role == "assistant" and m.turn_id == turn_id
    )


class ScriptedModel:
    def __init__(self, spec: specs.ModelSpec):
        self.spec = spec

    async def aclose(self) -> None:
        pass

    async def stream(self, request: ModelRequest) -> AsyncGenerator[ModelEvent, None]:
        if self.spec.fail:
            raise errors.ModelError(self.spec.fail)
        messages = request.messages
        last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
        step = _step(messages)
        if step < len(self.spec.steps):
            scripted = self.spec.steps[step]
            tokens = _tokens(scripted.text, None)
        else:
            scripted = None
            reply = self.spec.reply
            if reply == "echo":
                reply = request.messages[last_user].content or "" if last_user >= 0 else ""
            tokens = _tokens(reply, self.spec.tokens)
        delay = self.spec.token_delay_ms / 1000
        loop = asyncio.get_running_loop()
        start = loop.time()
        emitted = 0
        for i, token in enumerate(tokens, 1):
            # To a fixed schedule: behind it, every due token goes at once (no sleep), so a
            # busy server falls back to fewer, larger deltas instead of ever later ones.
            wait = start + i * delay - loop.time() if delay else 0.0
            if wait > 0:
                await asyncio.sleep(wait)
            emitted += 1
            yield TextDelta(token)
        if scripted and scripted.tool_calls:
            for call in scripted.tool_calls:
                yield domain.ToolCall(f"call_{ids.new_ulid()}", call.name, dict(call.arguments))
        prompt_chars = sum(len(m.content or "") for m in request.messages)
        yield UsageReport(input_tokens=prompt_chars // 4 + 1, output_tokens=emitted)
        yield Finished("tool_calls" if scripted and scripted.tool_calls else "stop")
