"""One Tether process: store, bus, service, and, unless `workers=0`, workers and a reaper."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import yaml

from tether import errors, gate, specs
from tether.auth import Keys
from tether.bus import Bus, LocalBus
from tether.config import Settings
from tether.runtime import mcp_servers
from tether.runtime.tools import ToolRegistry, builtin_registry, load_tools
from tether.service import DEFAULT_TENANT, Service
from tether.store import Store, open_store
from tether.webhooks.dispatcher import Dispatcher
from tether.worker import Reaper, Worker

log = logging.getLogger("tether")

DEMO_AGENT = specs.AgentSpec(
    name="demo",
    instructions="Tether's demo agent: the scripted model, no LLM and no API key needed.",
    model=specs.ModelSpec(
        provider="scripted",
        steps=[
            specs.ScriptedStep(
                text="Let me check the clock first.",
                tool_calls=[specs.ScriptedToolCall(name="get_time")],
            )
        ],
        reply=(
            "Hello from Tether! I am the demo agent on the scripted model, so every word you "
            "see is a live token streamed over SSE, no LLM involved. Stop me mid-sentence, "
            "resume the stream from any event id, or define your own agent with POST /v1/agents."
        ),
        token_delay_ms=40,
    ),
    tools=[specs.ToolSpec(name="get_time"), specs.ToolSpec(name="sleep")],
)


class RefuseToStart(errors.TetherError):
    """This configuration is not safe to serve."""

    code = "refuse_to_start"


async def check_exposure(settings: Settings, keys: Keys) -> None:
    """Off loopback, Tether serves only with API keys (DESIGN §8). Checked at start so an
    unusable server refuses at once; afterwards the gate (tether/gate.py) holds the line."""
    if settings.loopback:
        return
    if settings.auth == "disabled":
        raise RefuseToStart(
            f"auth is disabled, so tether serves only on a loopback address, not {settings.host}"
        )
    if not await keys.any_active():
        raise RefuseToStart(
            f"tether serve on {settings.host} needs API keys and none is active: create one "
            f"with `tether keys create --tenant <tenant> --role admin --data-dir "
            f"{settings.data_dir}` (or --store), or bind to 127.0.0.1 for local use without keys"
        )


class Node:
    """`api=False` is a worker process: no API, so no exposure check and no agents to load."""

    def __init__(self, settings: Settings, tools: ToolRegistry | None = None, *, api: bool = True):
        self.settings = settings
        self.api = api
        self.tools = tools or builtin_registry()
        if settings.tools:
            load_tools(settings.tools, self.tools)
        # the operator's MCP servers file: read once, refused here if unusable
        self.mcp = mcp_servers.from_settings(settings)
        self.bus: Bus
        self.store: Store
        self.service: Service
        self.keys: Keys
        self.gate: gate.Gate
        self.stream_watch: gate.StreamWatch
        self.worker: Worker | None = None
        self.reaper: Reaper | None = None
        self.dispatcher: Dispatcher | None = None  # webhook deliveries, where workers run
        self.streams: Counter[str] = Counter()  # open SSE connections per tenant
        self._opened = contextlib.AsyncExitStack()  # what start opened, closed in reverse

    async def auth_required(self) -> bool:
        """Whether a request without a key is refused: the gate's decision."""
        return await self.gate.required()

    async def start(self) -> None:
        """Open everything, in order; a failure closes what was opened and raises."""
        try:
            await self._start()
        except BaseException:
            await self._opened.aclose()
            raise

    async def _start(self) -> None:
        settings, opened = self.settings, self._opened
        self.bus = await open_bus(settings)
        opened.push_async_callback(self.bus.close)
        self.store = await open_store(
            settings.resolved_store_url,
            on_commit=self.bus.publish_events,
            on_outbox=self.bus.notify_webhooks,
            pool_size=settings.store_pool_size,
            serve=True,
        )
        opened.push_async_callback(self.store.close)
        self.service = Service(self.store, self.bus, self.tools, settings, self.mcp)
        self.keys = Keys(self.store)
        self.gate = gate.Gate(settings, self.keys)
        self.stream_watch = gate.StreamWatch(self.gate)
        self.keys.on_revoke = self.stream_watch.kick
        if self.store.exclusive:
            # the store's only server: every lease in it belongs to a dead process
            await self.store.leases.expire_all()
            await self.store.outbox.recover(before=datetime.max.replace(tzinfo=UTC))
        if self.api:
            await check_exposure(settings, self.keys)
            if settings.demo_agent:
                await self.service.agents.upsert(DEFAULT_TENANT, DEMO_AGENT)
            if settings.agents_file:
                for spec in load_agents_file(settings.agents_file):
                    await self.service.agents.upsert(DEFAULT_TENANT, spec)
            self.stream_watch.start()
            opened.push_async_callback(self.stream_watch.stop)
        if settings.workers > 0:
            self.reaper = Reaper(self.store, self.bus, settings)
            await self.reaper.reap_once()
            await self.reaper.start()
            opened.push_async_callback(self.reaper.stop)
            self.worker = Worker(self.store, self.bus, self.tools, settings, self.mcp)
            await self.worker.start()
            # whichever worker the node holds when it stops (a test may swap it)
            opened.push_async_callback(self._stop_worker)
        if settings.workers > 0 and settings.webhook_concurrency > 0:
            self.dispatcher = Dispatcher(self.store, self.bus, settings)
            await self.dispatcher.start()
            opened.push_async_callback(self.dispatcher.stop)

    async def stop(self) -> None:
        await self._opened.aclose()

    async def _stop_worker(self) -> None:
        if self.worker is not None:
            await self.worker.stop(grace_s=self.settings.shutdown_grace_s)


def stop_on_signals() -> asyncio.Event:
    """An event set on SIGTERM or SIGINT (installed at once: a signal during start counts)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def run_worker(node: Node, stop: asyncio.Event) -> None:
    """A started worker node until `stop` is set: then a graceful stop (Worker.stop)."""
    log.info("worker %s running", node.worker.id if node.worker else "-")
    try:
        await stop.wait()
    finally:
        await node.stop()


async def open_bus(settings: Settings) -> Bus:
    """In-process unless a bus URL is set (cluster mode: Redis)."""
    if settings.bus_url is None:
        return LocalBus()
    scheme = settings.bus_url.split("://", 1)[0]
    if scheme not in ("redis", "rediss", "unix"):
        raise errors.InvalidRequest(f"unsupported bus URL {settings.bus_url!r}: redis://host:port")
    from tether.bus.redis import RedisBus

    bus = RedisBus(settings.bus_url, settings.bus_prefix)
    await bus.start()
    if not bus.up:
        log.warning("the bus is not reachable yet; serving from the store until it is")
    return bus


def load_agents_file(path: Path) -> list[specs.AgentSpec]:
    """A YAML file holding one agent definition or a list of them."""
    loaded = yaml.safe_load(path.read_text())
    items = loaded if isinstance(loaded, list) else [loaded]
    try:
        return [specs.AgentSpec.model_validate(item) for item in items]
    except ValueError as exc:
        raise errors.InvalidAgent(f"{path}: {exc}") from exc
