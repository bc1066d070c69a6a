"""The README stays true: its quickstart commands work as a new user would run them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.procs import ServerProcess
from tether.config import Settings

README = Path(__file__).parents[2] / "README.md"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "data").start()
    yield proc
    proc.stop()


def _blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)


def test_readme_curl_example_streams_tokens(server: ServerProcess) -> None:
    script = next(b for b in _blocks() if "curl" in b).replace("8700", str(server.port))
    out = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    frames = [json.loads(line[5:]) for line in out.stdout.splitlines() if line.startswith("data:")]
    kinds = [f["type"] for f in frames]
    assert kinds[-1] == "turn.completed"
    assert kinds.count("message.delta") > 10, "tokens streamed one by one"
    assert "tool.completed" in kinds
    ids = [line for line in out.stdout.splitlines() if line.startswith("id:")]
    assert len(ids) == len(frames)


def test_chat_cli_converses(server: ServerProcess) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tether", "chat", "--url", server.url],
        input="hi there\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "Hello from Tether!" in out.stdout
    assert "get_time" in out.stdout


def test_readme_sdk_example_runs(server: ServerProcess) -> None:
    [script] = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TETHER_URL": server.url},
    )
    assert out.returncode == 0, out.stderr
    assert "Hello from Tether!" in out.stdout


def test_readme_documents_every_setting() -> None:
    text = README.read_text()
    for name in Settings.model_fields:
        assert f"`TETHER_{name.upper()}`" in text, f"README config table lacks {name}"
