"""Tenant API keys: `Authorization: Bearer <key>` or `X-API-Key`, matched by sha256 against the tenant bundles."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic_settings import BaseSettings

from personas.loader import Bundles

log = logging.getLogger(__name__)

# the development keys the README publishes ("tg-demo-key", "tg-veneo-key"): a key with one of these hashes is a
# development key even in a bundle that lost its `dev: true` flag
DEV_KEY_DIGESTS = frozenset({
    "e7aab4b439baa8c615eb31e352f5b4259085813fbcd95a65a5a346a6bdfb1bb3",
    "f06298dbd890949e8195b38536df16733b1591246772a2a767c66531622a3394",
})  # fmt: skip


def key_environ(settings: BaseSettings | None = None) -> dict[str, str]:
    """The variables a tenant's `env:` keys are read from: the `.env` file `settings` read (the one it was given,
    `Settings(_env_file=...)`, else its class's env_file, by default Settings' `.env`; a relative name is in the
    working directory), with the real environment winning over it, as it does for the settings."""
    from dotenv import dotenv_values

    from server.settings import Settings

    if isinstance(settings, Settings):
        files: list[Any] = list(settings.env_files)  # what this instance read (`Settings(_env_file=...)` too)
    else:
        env_file = (type(settings) if settings is not None else Settings).model_config.get("env_file")
        files = [env_file] if isinstance(env_file, str | Path) else list(env_file or ())
    values: dict[str, str] = {}
    for file in files:  # as pydantic-settings reads several: a later file wins
        if Path(file).is_file():
            values.update({k: v for k, v in dotenv_values(file, encoding="utf-8").items() if v is not None})
    return {**values, **os.environ}


@dataclass(frozen=True)
class Caller:
    """Who is calling: the tenant, which of its keys (its id, never the key) and that key's role."""

    tenant: str
    key_id: str
    role: str


class KeyRing:
    """sha256(key) -> Caller, built once at start-up from the tenant bundles and the named variables (environment
    or the `.env` file of `settings`, key_environ)."""

    def __init__(
        self, bundles: Bundles, environ: Mapping[str, str] | None = None, settings: BaseSettings | None = None
    ):
        environ = key_environ(settings) if environ is None else environ
        self._by_digest: dict[str, Caller] = {}
        self.env_keys: list[str] = []  # raw values of env-var keys, so logs can mask them
        for tenant in bundles.tenants.values():
            for key in tenant.api_keys:
                digest = key.sha256
                if key.env:
                    value = environ.get(key.env)
                    if not value:
                        log.warning(
                            "tenant %s key %s: env var %s is not set (environment or .env); key disabled",
                            tenant.id,
                            key.id,
                            key.env,
                        )
                        continue
                    digest = hashlib.sha256(value.encode()).hexdigest()
                    self.env_keys.append(value)
                assert digest is not None
                self._by_digest[digest] = Caller(tenant=tenant.id, key_id=key.id, role=key.role)

    def identify(self, presented: str | None) -> Caller | None:
        if not presented:
            return None
        return self._by_digest.get(hashlib.sha256(presented.strip().encode()).hexdigest())


def development_keys(bundles: Bundles, environ: Mapping[str, str] | None = None) -> list[str]:
    """ "tenant/key id" of every enabled development key: flagged `dev: true`, or one whose value the README
    publishes (known by its hash, also when read from an environment variable or `.env`)."""
    environ = key_environ() if environ is None else environ
    found = []
    for tenant in bundles.tenants.values():
        for key in tenant.api_keys:
            value = environ.get(key.env) if key.env else None
            digest = hashlib.sha256(value.encode()).hexdigest() if value else key.sha256
            if digest is not None and (key.dev or digest in DEV_KEY_DIGESTS):
                found.append(f"{tenant.id}/{key.id}")
    return found


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key from `Authorization: Bearer ...` or `X-API-Key` (header names are case-insensitive)."""
    auth = headers.get("authorization") or headers.get("Authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        return value.strip() if scheme.lower() == "bearer" and value.strip() else None
    return headers.get("x-api-key") or headers.get("X-API-Key")
