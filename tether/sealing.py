"""Tenants' secrets at rest (a model provider key of their own, DESIGN §8): sealed with the
server's secret key (Fernet: AES-CBC + HMAC) before they are stored, opened only to be used.

The key is `TETHER_SECRET_KEY` (several, comma-separated, rotate: the first seals, any opens).
Embedded mode without one makes one on first need, in the data dir, readable by its owner
only. Cluster mode without one cannot seal: every node and worker must share the key, so
making one here would only lock the others out.

A sealed secret names its tenant inside the ciphertext, so one copied into another tenant's
agent does not open there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from tether import errors
from tether.config import Settings

KEY_FILE = "secret.key"


class Sealer:
    def __init__(self, settings: Settings):
        self._configured = settings.secret_key
        self._key_file = settings.data_dir / KEY_FILE if settings.embedded else None
        self._fernet: MultiFernet | None = None

    def seal(self, tenant: str, secret: str) -> str:
        """The stored form of `secret`; SecretKeyMissing when this server cannot seal."""
        fernet = self._keys(create=True)
        if fernet is None:
            raise errors.SecretKeyMissing(
                "this server cannot store API keys: TETHER_SECRET_KEY is not configured; "
                "use model.api_key_env, or ask the operator to set a secret key"
            )
        return fernet.encrypt(json.dumps({"tenant": tenant, "secret": secret}).encode()).decode()

    def open(self, tenant: str, sealed: str) -> str:
        """The secret `seal` stored; ProviderKeyUnavailable if it cannot be opened here."""
        fernet = self._keys(create=False)
        if fernet is None:
            raise errors.ProviderKeyUnavailable(
                "the agent's own API key cannot be opened: this server has no secret key "
                "(TETHER_SECRET_KEY, or the data dir's secret.key)"
            )
        try:
            content = json.loads(fernet.decrypt(sealed.encode()))
        except (InvalidToken, ValueError) as exc:
            raise errors.ProviderKeyUnavailable(
                "the agent's own API key cannot be opened with this server's secret key "
                "(was TETHER_SECRET_KEY changed?); set the key again with PATCH"
            ) from exc
        if not isinstance(content, dict) or content.get("tenant") != tenant:
            raise errors.ProviderKeyUnavailable("the agent's API key belongs to another tenant")
        return str(content["secret"])

    def _keys(self, create: bool) -> MultiFernet | None:
        if self._fernet is None:
            keys = self._configured_keys() or self._file_keys(create)
            if keys:
                self._fernet = MultiFernet([Fernet(key) for key in keys])
        return self._fernet

    def _configured_keys(self) -> list[bytes]:
        if self._configured is None:
            return []
        return [k.strip().encode() for k in self._configured.get_secret_value().split(",")]

    def _file_keys(self, create: bool) -> list[bytes]:
        if self._key_file is None:
            return []
        if create and not self._key_file.exists():
            _create_key_file(self._key_file)
        try:
            return [self._key_file.read_bytes().strip()]
        except FileNotFoundError:
            return []


def _create_key_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # O_EXCL: never overwrite a key that seals stored secrets
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "wb") as file:
        file.write(Fernet.generate_key())
