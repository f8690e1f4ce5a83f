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


def test_the_key_ring_reads_the_env_file_of_the_app_s_settings(
    in_tmp_cwd: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # create_app's key ring read ./.env (Settings' class default) whatever file its settings were told to read
    from fastapi.testclient import TestClient
    from pydantic_settings import SettingsConfigDict

    from server.app import create_app
    from server.settings import Settings

    class NoDotEnv(Settings):
        model_config = SettingsConfigDict(**{**Settings.model_config, "env_file": None})

    class OtherFile(Settings):
        model_config = SettingsConfigDict(**{**Settings.model_config, "env_file": str(in_tmp_cwd / "other.env")})

    (in_tmp_cwd / ".env").write_text(f"{VAR}=key-in-dot-env\n")
    (in_tmp_cwd / "other.env").write_text(f"{VAR}=key-in-other-env\n")
    url = f"sqlite:///{in_tmp_cwd}/tg.db"
    for settings, works, refused in (
        (NoDotEnv(checkpoint_url=url), None, "key-in-dot-env"),
        (OtherFile(checkpoint_url=url), "key-in-other-env", "key-in-dot-env"),
    ):
        with TestClient(create_app(settings)) as client:
            if works:
                assert client.get("/teams", headers={"X-API-Key": works}).status_code == 200
            assert client.get("/teams", headers={"X-API-Key": refused}).status_code == 401
    assert f"env var {VAR} is not set (environment or .env); key disabled" in caplog.text


def test_settings_told_to_read_no_env_file_keep_the_key_ring_off_dot_env(in_tmp_cwd: Path) -> None:
    # `Settings(_env_file=None)` (what the tests and an embedding app pass) still read ./.env for tenant keys: the
    # file an instance was given is recorded on it and the key ring reads that one
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.settings import Settings

    (in_tmp_cwd / ".env").write_text(f"{VAR}=key-in-dot-env\n")
    (in_tmp_cwd / "given.env").write_text(f"{VAR}=key-in-given-env\n")
    url = f"sqlite:///{in_tmp_cwd}/tg.db"
    for settings, works, refused in (
        (Settings(_env_file=None, checkpoint_url=url), None, "key-in-dot-env"),  # type: ignore[call-arg]
        (Settings(_env_file=in_tmp_cwd / "given.env", checkpoint_url=url), "key-in-given-env", "key-in-dot-env"),  # type: ignore[call-arg]
        (Settings(checkpoint_url=url), "key-in-dot-env", "key-in-given-env"),
    ):
        with TestClient(create_app(settings)) as client:
            if works:
                assert client.get("/teams", headers={"X-API-Key": works}).status_code == 200
            assert client.get("/teams", headers={"X-API-Key": refused}).status_code == 401
