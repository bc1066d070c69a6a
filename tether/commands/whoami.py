"""`tether whoami`: who the server takes you for."""

from __future__ import annotations

from tether.commands import common
from tether.commands.common import DEFAULT, ApiKey, AsJson, Url


def whoami(as_json: AsJson = False, url: Url = DEFAULT, api_key: ApiKey = None) -> None:
    """Your tenant and role on the server, the API key you send, and whether the server
    requires keys at all."""
    with common.client(url, api_key) as tether:
        me = tether.me()
    if as_json:
        common.print_json(me)
        return
    if me.key_id is not None:
        key = f"{me.key_id} (tth_{me.key_prefix}_…)"
    else:
        key = "none (this server requires no key: it has none yet, or auth is off)"
    for name, value in (("server", url), ("tenant", me.tenant_id), ("role", me.role), ("key", key)):
        common.out.print(f"{name:<7} {common.esc(value)}", soft_wrap=True)
