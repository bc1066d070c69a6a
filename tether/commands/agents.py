"""`tether agents ls|show|apply`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from tether.client import Tether, models
from tether.commands import common
from tether.commands.common import DEFAULT, ApiKey, AsJson, Exit, Url

app = typer.Typer(help="Agents: list, show, create or update from a file.", no_args_is_help=True)


@app.command("ls")
def ls(as_json: AsJson = False, url: Url = DEFAULT, api_key: ApiKey = None) -> None:
    """List agents."""
    with common.client(url, api_key) as tether:
        agents = list(tether.agents.list())
    if as_json:
        common.print_json(agents)
        return
    grid = common.Grid("id", "name", "model", "tools", ids=["id"])
    for a in agents:
        model = a.model.provider + (f" {a.model.model}" if a.model.model else "")
        tools = ", ".join(
            t.name + (f" ({t.policy})" if t.policy != "auto" else "") for t in a.tools
        )
        grid.add_row(a.id, a.name, model, tools)
    grid.print()


@app.command("show")
def show(
    agent: Annotated[str, typer.Argument(help="the agent's id or name")],
    as_json: AsJson = False,
    url: Url = DEFAULT,
    api_key: ApiKey = None,
) -> None:
    """An agent's whole definition."""
    with common.client(url, api_key) as tether:
        found = find(tether, agent)
    if found is None:
        common.fail(f"no agent {agent!r}", Exit.NOT_FOUND)
    if as_json:
        common.print_json(found)
    else:
        text = yaml.safe_dump(common.plain(found), sort_keys=False, allow_unicode=True)
        common.out.print(text.rstrip(), markup=False)


def find(tether: Tether, agent: str) -> models.Agent | None:
    """An agent by id (`agt_…`) or by name."""
    if agent.startswith("agt_"):
        return tether.agents.get(agent)
    return next((a for a in tether.agents.list() if a.name == agent), None)


@app.command("apply")
def apply(
    file: Annotated[
        Path,
        typer.Option(
            "-f", "--file", help="YAML or JSON: one agent definition or a list", exists=True
        ),
    ],
    as_json: AsJson = False,
    url: Url = DEFAULT,
    api_key: ApiKey = None,
) -> None:
    """Create the agents of FILE, or update those whose name exists (needs an admin key)."""
    definitions = _load(file)
    applied: list[dict[str, Any]] = []
    with common.client(url, api_key) as tether:
        existing = {a.name: a for a in tether.agents.list()}
        for definition in definitions:
            name = definition.get("name")
            if name in existing:
                agent = tether.agents.update(existing[name].id, **definition)
                applied.append({"action": "updated", "agent": agent})
            else:
                agent = tether.agents.create(definition)
                applied.append({"action": "created", "agent": agent})
    if as_json:
        common.print_json(applied)
        return
    for item in applied:
        common.out.print(f"{item['action']} {item['agent'].id} ({item['agent'].name})")


def _load(file: Path) -> list[dict[str, Any]]:
    try:
        loaded = yaml.safe_load(file.read_text())  # JSON is YAML too
    except (OSError, yaml.YAMLError) as exc:
        common.fail(f"cannot read {file}: {exc}", Exit.USAGE)
    items = loaded if isinstance(loaded, list) else [loaded]
    if not items or not all(isinstance(i, dict) and isinstance(i.get("name"), str) for i in items):
        common.fail(f"{file}: expected an agent definition with a name, or a list of them", 2)
    return items
