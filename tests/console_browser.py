"""Driving the console in a real headless Chromium (Debian's `chromium` + `chromedriver`).

Selenium blocks while it talks to the browser, so the Tether server of a browser test runs on
an event loop of its own, in a thread (`Background`): the test is plain synchronous code, and
the server keeps serving the browser while the test waits on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from tests.helpers import Server, settings_for
from tether.runtime.tools import ToolRegistry

T = TypeVar("T")

CHROMIUM = os.environ.get("TETHER_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("TETHER_CHROMEDRIVER", "/usr/bin/chromedriver")
# Screenshots of each view: a folder the test run keeps. `make screenshots` points it at
# docs/console/, the committed ones the README shows.
SCREENSHOTS = Path(
    os.environ.get(
        "TETHER_SCREENSHOTS_DIR",
        Path(__file__).resolve().parent.parent / "build" / "console-screenshots",
    )
)


def browser_available() -> bool:
    return Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()


class Background:
    """An event loop on a thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.loop.shutdown_asyncgens()

        self.run(drain())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class LiveServer:
    """A Tether server on a background loop, with a synchronous API client for the test."""

    def __init__(self, tmp: Path, tools: ToolRegistry | None = None, **overrides: Any):
        self.bg = Background()
        self.server = Server(settings_for(tmp, **overrides), tools)
        self.bg.run(self.server.start())
        self.url = self.server.url
        self.api = httpx.Client(base_url=self.url, timeout=30)

    def close(self) -> None:
        self.api.close()
        try:
            self.bg.run(self.server.stop())
        finally:
            self.bg.close()

    # --- API shortcuts for setting up a scene ---------------------------------------------

    def agent(self, name: str, model: dict[str, Any], tools: list[dict[str, Any]]) -> str:
        body = {"name": name, "model": {"provider": "scripted", **model}, "tools": tools}
        r = self.api.post("/v1/agents", json=body)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def session(self, agent_id: str, **body: Any) -> str:
        r = self.api.post("/v1/sessions", json={"agent_id": agent_id, **body})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def turn(self, sid: str, text: str) -> dict[str, Any]:
        r = self.api.post(f"/v1/sessions/{sid}/turns", json={"input": text})
        assert r.status_code == 202, r.text
        return r.json()  # type: ignore[no-any-return]

    def get_turn(self, sid: str, tid: str) -> dict[str, Any]:
        r = self.api.get(f"/v1/sessions/{sid}/turns/{tid}")
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    def turns(self, sid: str) -> list[dict[str, Any]]:
        r = self.api.get(f"/v1/sessions/{sid}/turns", params={"limit": 1000})
        assert r.status_code == 200, r.text
        return r.json()["data"]  # type: ignore[no-any-return]

    def messages(self, sid: str) -> list[dict[str, Any]]:
        r = self.api.get(f"/v1/sessions/{sid}/messages", params={"limit": 1000})
        assert r.status_code == 200, r.text
        return r.json()["data"]  # type: ignore[no-any-return]

    def pending(self, sid: str) -> list[dict[str, Any]]:
        r = self.api.get(f"/v1/sessions/{sid}/interrupts", params={"status": "pending"})
        assert r.status_code == 200, r.text
        return r.json()["data"]  # type: ignore[no-any-return]

    def wait_turn(self, sid: str, tid: str, statuses: tuple[str, ...], timeout: float = 20) -> Any:
        return eventually(
            lambda: (t := self.get_turn(sid, tid))["status"] in statuses and t,
            timeout,
            f"turn {tid} to be {'/'.join(statuses)}",
        )


def eventually(check: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `check` until it answers something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(StaleElementReferenceException):
            value = check()
            if value:
                return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def start_browser() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="tether-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.profile_dir = profile  # type: ignore[attr-defined]
    return driver


def stop_browser(driver: webdriver.Chrome) -> None:
    try:
        driver.quit()
    finally:
        shutil.rmtree(driver.profile_dir, ignore_errors=True)  # type: ignore[attr-defined]


class Console:
    """The console in the browser, for one test: find things by their data-* hooks, wait."""

    def __init__(self, driver: webdriver.Chrome, base_url: str):
        self.driver = driver
        self.base = base_url
        driver.get_log("browser")  # forget what earlier tests logged

    def open(self, route: str = "#/sessions") -> None:
        # a blank page first: the previous test's page (and its streams) is gone
        self.driver.get("about:blank")
        self.driver.get(f"{self.base}/console/{route}")

    def leave(self) -> None:
        self.driver.get("about:blank")

    def go(self, route: str) -> None:
        self.driver.execute_script("location.hash = arguments[0]", route)

    def all(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def one(self, css: str, timeout: float = 10) -> WebElement:
        return eventually(lambda: next(iter(self.all(css)), None), timeout, css)

    def gone(self, css: str, timeout: float = 10) -> None:
        eventually(lambda: not self.all(css), timeout, f"{css} to go")

    def text(self, css: str) -> str:
        """The text of the first element matching `css` ("" if none), read in one go."""
        script = "return document.querySelector(arguments[0])?.textContent ?? ''"
        return str(self.driver.execute_script(script, css))

    def attrs(self, css: str, name: str) -> list[str]:
        """Attribute `name` of every element matching `css`, read in one go."""
        script = (
            "return [...document.querySelectorAll(arguments[0])]"
            ".map(e => e.getAttribute(arguments[1]))"
        )
        return list(self.driver.execute_script(script, css, name))

    def until(self, check: Callable[[], T], timeout: float, what: str) -> T:
        try:
            return WebDriverWait(
                self.driver,
                timeout,
                poll_frequency=0.02,
                ignored_exceptions=[StaleElementReferenceException],
            ).until(lambda _: check(), message=what)
        except TimeoutException as exc:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}") from exc

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def script_errors(self) -> list[str]:
        """What the page logged that means broken code: uncaught errors, CSP refusals."""
        bad = ("Uncaught", "Content Security Policy", "TrustedHTML", "Trusted Type")
        return [
            entry["message"]
            for entry in self.driver.get_log("browser")
            if any(word in entry["message"] for word in bad)
        ]


@contextlib.contextmanager
def blocked(driver: webdriver.Chrome, *patterns: str) -> Iterator[None]:
    """Requests to URLs matching `patterns` fail while inside (DevTools protocol)."""
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": list(patterns)})
    try:
        yield
    finally:
        driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": []})


class TcpProxy:
    """A loopback TCP proxy in front of a server that can cut every connection at once: a
    server-side connection drop, as a restarted load balancer or a lost node makes."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = 0
        self.event_streams = 0  # connections that asked for an events stream
        self._links: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        await self.drop()
        if self._server:
            self._server.close()
            await self._server.wait_closed()

    async def drop(self) -> None:
        """Cut every open connection, both ways, without a goodbye."""
        for writer in list(self._links):
            writer.transport.abort()
        self._links.clear()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.transport.abort()
            return
        self._links.update((client_w, server_w))

        async def pipe(
            src: asyncio.StreamReader, dst: asyncio.StreamWriter, from_client: bool
        ) -> None:
            try:
                while chunk := await src.read(65536):
                    if from_client and b"/events" in chunk.split(b"\r\n", 1)[0]:
                        self.event_streams += 1
                    dst.write(chunk)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(client_r, server_w, True), pipe(server_r, client_w, False))
        self._links.difference_update((client_w, server_w))
