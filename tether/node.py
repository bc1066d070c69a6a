"""One Tether process: store, bus, service, and, unless `workers=0`, workers and a reaper."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import IO, Any

import yaml

from tether import domain, errors
from tether.auth import Keys
from tether.bus import Bus, LocalBus
from tether.config import Settings
from tether.runtime.tools import ToolRegistry, builtin_registry, load_tools
from tether.service import DEFAULT_TENANT, Service
from tether.store import Leases, Store, open_store
from tether.store.audit import AuditLog
from tether.worker import Reaper, Worker

log = logging.getLogger("tether")

DEMO_AGENT = domain.AgentSpec(
    name="demo",
    instructions="Tether's demo agent: the scripted model, no LLM and no API key needed.",
    model=domain.ModelSpec(
        provider="scripted",
        steps=[
            domain.ScriptedStep(
                text="Let me check the clock first.",
                tool_calls=[domain.ScriptedToolCall(name="get_time")],
            )
        ],
        reply=(
            "Hello from Tether! I am the demo agent on the scripted model, so every word you "
            "see is a live token streamed over SSE, no LLM involved. Stop me mid-sentence, "
            "resume the stream from any event id, or define your own agent with POST /v1/agents."
        ),
        token_delay_ms=40,
    ),
    tools=[domain.ToolSpec(name="get_time"), domain.ToolSpec(name="sleep")],
)


class DataDirLocked(errors.TetherError):
    """Another Tether process is using this data directory."""

    code = "data_dir_locked"


class RefuseToStart(errors.TetherError):
    """This configuration is not safe to serve."""

    code = "refuse_to_start"


async def check_exposure(settings: Settings, keys: Keys) -> None:
    """Off loopback, Tether serves only with API keys (DESIGN §8)."""
    if settings.loopback:
        return
    if settings.auth == "disabled":
        raise RefuseToStart(
            f"auth is disabled, so tether serves only on a loopback address, not {settings.host}"
        )
    if not await keys.any_active():
        raise RefuseToStart(
            f"tether serve on {settings.host} needs API keys and none exists. Create one with\n"
            f"  tether keys create --tenant <tenant> --role admin --data-dir {settings.data_dir}\n"
            "or bind to 127.0.0.1 for local use without keys."
        )


class Node:
    """`api=False` is a worker process: no API, so no exposure check and no agents to load."""

    def __init__(self, settings: Settings, tools: ToolRegistry | None = None, *, api: bool = True):
        self.settings = settings
        self.api = api
        self.tools = tools or builtin_registry()
        if settings.tools:
            load_tools(settings.tools, self.tools)
        self.bus: Bus
        self.store: Store
        self.service: Service
        self.worker: Worker | None = None
        self.reaper: Reaper | None = None
        self._lock_file: IO[Any] | None = None
        self.streams: Counter[str] = Counter()  # open SSE connections per tenant
        self._auth_checked = (0.0, False)

    async def auth_required(self) -> bool:
        """`auto`: keys are required once one exists (re-checked every 2 s)."""
        if self.settings.auth != "auto":
            return self.settings.auth == "required"
        until, required = self._auth_checked
        if time.monotonic() >= until:
            required = await self.keys.any_active()
            self._auth_checked = (time.monotonic() + 2.0, required)
        return required

    @property
    def embedded(self) -> bool:
        return self.settings.embedded

    async def start(self) -> None:
        settings = self.settings
        if self.embedded:
            self._lock_data_dir(settings.data_dir)
        self.bus = await open_bus(settings)
        self.store = await open_store(
            settings.resolved_store_url,
            on_commit=self.bus.publish_events,
            pool_size=settings.store_pool_size,
        )
        self.service = Service(self.store, self.bus, self.tools, settings.zone, settings)
        self.keys = Keys(self.store)
        self.audit = AuditLog(self.store)
        if self.embedded:
            # we hold the data dir: every lease in the store belongs to a dead process
            await Leases(self.store).expire_all_leases()
        if self.api:
            await check_exposure(settings, self.keys)
            if settings.demo_agent:
                await self.service.upsert_agent(DEFAULT_TENANT, DEMO_AGENT)
            if settings.agents_file:
                for spec in load_agents_file(settings.agents_file):
                    await self.service.upsert_agent(DEFAULT_TENANT, spec)
        if settings.workers > 0:
            self.reaper = Reaper(self.store, self.bus, settings)
            await self.reaper.reap_once()
            await self.reaper.start()
            self.worker = Worker(self.store, self.bus, self.tools, settings)
            await self.worker.start()

    async def stop(self) -> None:
        if self.worker:
            await self.worker.stop(grace_s=self.settings.shutdown_grace_s)
        if self.reaper:
            await self.reaper.stop()
        await self.bus.close()
        await self.store.close()
        if self._lock_file:
            self._lock_file.close()

    def _lock_data_dir(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        lock = open(data_dir / "tether.lock", "a+")  # noqa: SIM115 - held for the process life
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            lock.close()
            raise DataDirLocked(f"another tether process is using {data_dir}") from exc
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        self._lock_file = lock


async def run_worker(settings: Settings) -> None:
    """A worker process until SIGTERM or SIGINT: then a graceful stop (Worker.stop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    node = Node(settings, api=False)
    await node.start()
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


def load_agents_file(path: Path) -> list[domain.AgentSpec]:
    """A YAML file holding one agent definition or a list of them."""
    loaded = yaml.safe_load(path.read_text())
    items = loaded if isinstance(loaded, list) else [loaded]
    try:
        return [domain.AgentSpec.model_validate(item) for item in items]
    except ValueError as exc:
        raise errors.InvalidAgent(f"{path}: {exc}") from exc
