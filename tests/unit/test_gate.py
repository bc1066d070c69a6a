"""The one decision on who may come in (tether/gate.py), on a real store: the bind address and
the keys that exist decide, and a revoke never opens the server again."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests import helpers
from tether import errors
from tether.auth import Keys, Role
from tether.config import Settings
from tether.gate import Gate, StreamWatch
from tether.store import Store, open_store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    url = helpers.BACKEND.get("store_url") or f"sqlite:///{tmp_path / 'tether.db'}"
    opened = await open_store(url)
    try:
        yield opened
    finally:
        await opened.close()


def gate(store: Store, host: str = "127.0.0.1", auth: str = "auto") -> Gate:
    return Gate(Settings(host=host, auth=auth), Keys(store))  # type: ignore[arg-type]


async def test_off_loopback_a_key_is_always_required(store: Store) -> None:
    for auth in ("auto", "required", "disabled"):  # disabled is refused at start anyway
        for host in ("0.0.0.0", "10.1.2.3", "::", "tether.example.com"):
            assert await gate(store, host, auth).required(), (host, auth)


async def test_on_loopback_the_setting_decides(store: Store) -> None:
    assert await gate(store, auth="required").required()
    assert not await gate(store, auth="disabled").required()
    assert not await gate(store, "localhost", "auto").required()
    assert not await gate(store, "::1", "auto").required()
    await Keys(store).create("acme", Role.READ)
    assert not await gate(store, auth="disabled").required(), "disabled: open, keys or not"


async def test_auto_on_loopback_stays_closed_once_a_key_existed(store: Store) -> None:
    the_gate = gate(store)
    assert not await the_gate.required()
    assert (await the_gate.admit(None)).tenant_id == "default"
    info, _ = await the_gate.keys.create("acme", Role.ADMIN)  # made here: closed at once
    assert await the_gate.required()
    await the_gate.keys.revoke(info.id)
    assert await the_gate.required(), "revoking the last key leaves the server closed"
    with pytest.raises(errors.Unauthorized):
        await the_gate.admit(None)
    # another process (a restart, another API node) sees it the same way: a key existed
    assert await gate(store).required()


async def test_a_bad_key_is_refused_even_when_open(store: Store) -> None:
    the_gate = gate(store, auth="disabled")
    with pytest.raises(errors.Unauthorized):
        await the_gate.admit("tth_000000000000_nope")
    _, key = await Keys(store).create("acme", Role.WRITE)
    who = await the_gate.admit(key)
    assert (who.tenant_id, who.role) == ("acme", Role.WRITE)


async def test_stream_watch_ends_what_is_no_longer_admitted(store: Store) -> None:
    the_gate = gate(store)
    watch = StreamWatch(the_gate)
    elsewhere = Keys(store)  # another API node: no signal reaches this one
    kept_info, kept_key = await elsewhere.create("acme", Role.READ)
    gone_info, gone_key = await elsewhere.create("acme", Role.READ)
    ended: list[str] = []
    watch.add(await the_gate.admit(kept_key), lambda: ended.append("kept"))
    watch.add(await the_gate.admit(gone_key), lambda: ended.append("gone"))
    forget = watch.add(await the_gate.admit(gone_key), lambda: ended.append("closed"))
    forget()  # a stream that ended by itself is not ended again
    assert await watch.check() == 0
    await elsewhere.revoke(gone_info.id)
    assert await watch.check() == 1
    assert ended == ["gone"]
    assert await watch.check() == 0, "each stream is ended once"
    assert kept_info.revoked_at is None


async def test_stream_watch_ends_keyless_streams_once_keys_are_required(store: Store) -> None:
    the_gate = gate(store)
    watch = StreamWatch(the_gate)
    ended: list[str] = []
    watch.add(await the_gate.admit(None), lambda: ended.append("anonymous"))
    assert await watch.check() == 0
    await the_gate.keys.create("acme", Role.ADMIN)
    assert await watch.check() == 1
    assert ended == ["anonymous"]
