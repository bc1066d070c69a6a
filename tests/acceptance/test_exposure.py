"""Off loopback, Tether serves only with API keys (real processes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.acceptance.procs import ServerProcess, backend_env, create_key, store_args
from tests.acceptance.test_startup import assert_refused
from tests.helpers import free_port


def _serve(data: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable,
        "-m",
        "tether",
        "serve",
        "--data-dir",
        str(data),
        "--port",
        str(free_port()),
        *args,
    ]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=60, env={**os.environ, **backend_env(), **env}
    )


def test_refuses_public_bind_without_keys(tmp_path: Path) -> None:
    out = _serve(tmp_path / "d", "--host", "0.0.0.0")
    assert_refused(out, "needs API keys", "tether keys create")
    out = _serve(tmp_path / "d", "--host", "0.0.0.0", TETHER_AUTH="disabled")
    assert_refused(out, "loopback")


def test_public_bind_with_a_key_requires_it(tmp_path: Path) -> None:
    data = tmp_path / "d"
    key = create_key(data)
    assert key.startswith("tth_")
    listed = subprocess.run(
        [sys.executable, "-m", "tether", "keys", "list", *store_args(data)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "acme" in listed.stdout
    assert key not in listed.stdout
    server = ServerProcess(data, host="0.0.0.0")
    server.env["TETHER_HOST"] = "0.0.0.0"
    server.start()
    try:
        assert httpx.get(f"{server.url}/v1/sessions").status_code == 401
        r = httpx.get(f"{server.url}/v1/sessions", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200
        assert httpx.get(f"{server.url}/healthz").status_code == 200  # open for probes
    finally:
        server.stop()
