"""A tenant key named under `env:` is read from the `.env` file too, as the README says settings are (the file
Settings reads, in the working directory; the real environment wins). It was read from os.environ only: a key in
`.env` was "env var ... is not set; key disabled"."""

from __future__ import annotations

from pathlib import Path

import pytest

from personas.loader import DEFAULT_BUNDLE_DIR, load_bundles
from server.auth import Caller, KeyRing, development_keys

VAR = "TEAMGRAPH_VENEO_API_KEY"  # personas/tenants/veneo.yaml: {id: veneo-app, env: TEAMGRAPH_VENEO_API_KEY}


@pytest.fixture
def in_tmp_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(VAR, raising=False)
    return tmp_path


def test_a_key_in_the_dot_env_file_is_enabled(in_tmp_cwd: Path) -> None:
    (in_tmp_cwd / ".env").write_text(f"TEAMGRAPH_LOG_LEVEL=INFO\n{VAR}=veneo-app-key-from-dotenv\n")
    keyring = KeyRing(load_bundles(DEFAULT_BUNDLE_DIR))
    assert keyring.identify("veneo-app-key-from-dotenv") == Caller("veneo", "veneo-app", "user")
    assert "veneo-app-key-from-dotenv" in keyring.env_keys  # masked in logs like any env key


def test_the_real_environment_wins_over_dot_env(in_tmp_cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (in_tmp_cwd / ".env").write_text(f"{VAR}=the-dotenv-value\n")
    monkeypatch.setenv(VAR, "the-environment-value")
    keyring = KeyRing(load_bundles(DEFAULT_BUNDLE_DIR))
    assert keyring.identify("the-environment-value") == Caller("veneo", "veneo-app", "user")
    assert keyring.identify("the-dotenv-value") is None


def test_a_published_key_in_dot_env_counts_as_a_development_key(in_tmp_cwd: Path) -> None:
    (in_tmp_cwd / ".env").write_text(f"{VAR}=tg-veneo-key\n")  # the README's key, under the app key's variable
    assert "veneo/veneo-app" in development_keys(load_bundles(DEFAULT_BUNDLE_DIR))
