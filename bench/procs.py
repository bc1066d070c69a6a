"""Child processes of the benchmarks and the acceptance tests (tests/acceptance/procs.py)."""

from __future__ import annotations

import subprocess
from typing import Any


def stop(proc: subprocess.Popen[Any] | None, grace_s: float = 10) -> None:
    """End `proc` if it runs: SIGTERM, and SIGKILL if it has not exited after `grace_s`."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
