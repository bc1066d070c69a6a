"""`tether serve` as a separate process on a temp data dir, with RSS and CPU sampled from /proc."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from bench import procs

SAMPLE_S = 0.1
_TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def raise_fd_limit() -> None:
    """1,000 streams need over 2,000 sockets between client and server; children inherit this."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # time.monotonic()
    user: float  # the server's CPU seconds so far
    system: float
    rss_kb: int
    machine: float  # the whole machine's busy CPU seconds so far
    steal: float  # CPU seconds the hypervisor gave to other guests so far


def _machine_cpu_s() -> tuple[float, float]:
    """CPU seconds the whole machine has spent busy (all cores: user, nice, system, irq,
    softirq) and stolen (by the hypervisor, for other guests), from /proc/stat."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    return sum(ticks[i] for i in (0, 1, 2, 5, 6)) / _TICK, ticks[7] / _TICK


def wait_for_quiet(max_wait_s: float, busy_below: float = 20.0) -> float:
    """Wait (at most `max_wait_s`) until the machine's CPU use over one second is under
    `busy_below` % of a core: other work would skew the figures. Returns the last reading."""
    deadline = time.monotonic() + max_wait_s
    while True:
        t0, (busy0, _) = time.monotonic(), _machine_cpu_s()
        time.sleep(1.0)
        busy = 100 * (_machine_cpu_s()[0] - busy0) / (time.monotonic() - t0)
        if busy < busy_below or time.monotonic() >= deadline:
            return round(busy, 1)


class Server:
    """Usage: `with Server(workers=128) as server: ...`; the process is killed on exit."""

    def __init__(
        self,
        workers: int,
        profile: Path | None = None,
        ready_timeout_s: float = 30.0,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.workers = workers
        self.args = args  # more `tether serve` options (cluster mode: --store, --bus)
        self.env = env or {}  # more settings, TETHER_<NAME>
        self.profile = profile  # py-spy collapsed stacks of the whole run go here
        self.ready_timeout_s = ready_timeout_s
        self.port = free_port()
        self.data_dir = Path(tempfile.mkdtemp(prefix="tether-bench-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.spy: subprocess.Popen[bytes] | None = None
        self.samples: list[Sample] = []
        self.hwm_kb = 0
        self.idle_rss_kb = 0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample_loop, daemon=True)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> Server:
        tether = Path(sys.executable).parent / "tether"
        cmd = [str(tether), "serve", "--data-dir", str(self.data_dir)]
        cmd += ["--port", str(self.port), "--workers", str(self.workers), *self.args]
        env = {**os.environ, "TETHER_LOG_LEVEL": "warning", **self.env}
        log = (self.data_dir / "server.log").open("wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self.idle_rss_kb = self._status().get("VmRSS", 0)
        self._sampler.start()
        if self.profile:
            self._start_spy(self.profile)
        return self

    def _start_spy(self, output: Path) -> None:
        spy = Path(sys.executable).parent / "py-spy"
        if not spy.exists():
            raise RuntimeError(f"--profile needs py-spy: {sys.executable} -m pip install py-spy")
        output.parent.mkdir(parents=True, exist_ok=True)
        # --gil: only the thread running Python (the event loop, SQLite inline), not the idle
        # thread pool; --nonblocking: do not pause the server to sample it
        cmd = [str(spy), "record", "--pid", str(self.pid), "--rate", "100", "--format", "raw"]
        cmd += ["--gil", "--nonblocking"]
        self.spy = subprocess.Popen([*cmd, "--output", str(output)], stdout=subprocess.DEVNULL)

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._sampler.is_alive():
            self._sampler.join(2)
        if self.spy and self.spy.poll() is None:
            self.spy.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
            try:
                self.spy.wait(30)
            except subprocess.TimeoutExpired:
                self.spy.kill()
        procs.stop(self.proc)
        if kind is not None:
            sys.stderr.write(f"--- server log (tail) ---\n{self.log_tail()}\n")
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return (self.data_dir / "server.log").read_text(errors="replace")[-chars:]
        return ""

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        url = f"http://127.0.0.1:{self.port}/readyz"
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}):\n{self.log_tail()}")
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {self.ready_timeout_s} s")

    # --- /proc sampling ------------------------------------------------------------------------

    def _status(self) -> dict[str, int]:
        """VmRSS and VmHWM in kB."""
        out: dict[str, int] = {}
        with contextlib.suppress(OSError), open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":")
                    out[key] = int(value.split()[0])
        return out

    def _cpu_s(self) -> tuple[float, float]:
        """User and system CPU seconds of the server, all threads."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) / _TICK, int(fields[12]) / _TICK

    def _sample_loop(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            try:
                status, (user, system) = self._status(), self._cpu_s()
            except OSError:
                return  # the server is gone
            self.hwm_kb = max(self.hwm_kb, status.get("VmHWM", 0))
            rss = status.get("VmRSS", 0)
            now = time.monotonic()
            self.samples.append(Sample(now, user, system, rss, *_machine_cpu_s()))

    def peak_rss_mb(self) -> float:
        return round(max((s.rss_kb for s in self.samples), default=0) / 1024, 1)

    def cpu_percent(self, start: float, end: float) -> dict[str, float]:
        """CPU use over [start, end] (100 = one core): the server's, its system (kernel) part,
        the whole machine's and the time stolen by the hypervisor (to spot other load), from
        the samples inside the window."""
        inside = [s for s in self.samples if start <= s.at <= end]
        if len(inside) < 2:
            return {}
        a, b = inside[0], inside[-1]

        def pct(seconds: float) -> float:
            return round(100 * seconds / (b.at - a.at), 1)

        return {
            "server_cpu_percent": pct(b.user + b.system - a.user - a.system),
            "server_sys_cpu_percent": pct(b.system - a.system),
            "machine_cpu_percent": pct(b.machine - a.machine),
            "machine_steal_percent": pct(b.steal - a.steal),
        }

    def cpu_seconds(self, start: float, end: float) -> float | None:
        """The server's CPU seconds (user + system, all threads) over a span that covers all of
        [start, end]: from the last sample at or before `start` to the first at or after `end`
        (waited for; samples are SAMPLE_S apart, so the span overshoots by less than that at
        each end). None when there is no such pair."""
        deadline = time.monotonic() + 10 * SAMPLE_S
        while time.monotonic() < deadline and not (self.samples and self.samples[-1].at >= end):
            time.sleep(SAMPLE_S / 2)
        samples = list(self.samples)  # the sampler thread appends meanwhile
        before = [s for s in samples if s.at <= start]
        after = [s for s in samples if s.at >= end]
        if not before or not after:
            return None
        a, b = before[-1], after[0]
        return b.user + b.system - a.user - a.system

    def stats(self, start: float, end: float) -> dict[str, float]:
        return {
            **self.cpu_percent(start, end),
            "server_idle_rss_mb": round(self.idle_rss_kb / 1024, 1),
            "server_peak_rss_mb": self.peak_rss_mb(),
            "server_vm_hwm_mb": round(self.hwm_kb / 1024, 1),
        }
