"""Every TEAMGRAPH_ variable the code, the tests, the benchmarks or the Makefile read, or the README, docs/ and
deploy/ tell an operator to set, is one `teamgraph` accepts: a name it does not know stops it
(server.settings.unknown_variables), so a new variable read or documented somewhere must be added to Settings or
OTHER_VARIABLES, or the CLI would refuse to start where it is set."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest

from server.settings import TENANT_KEY_VARIABLE, Settings, known_variables, unknown_variables

REPO = Path(__file__).resolve().parents[2]
NAME = re.compile(r"\bTEAMGRAPH_[A-Z0-9_]*[A-Z0-9]\b")
# a docstring naming an old bug's wrong output; the misspellings tests (and the README's example) make on purpose
NOT_VARIABLES = {
    "TEAMGRAPH_TEAMGRAPH_OPENAI_API_KEY",
    "TEAMGRAPH_CHECKPIONT_URL",
    "TEAMGRAPH_PROT",
    "TEAMGRAPH_ZZZ",
    "TEAMGRAPH_OPENAI_API_KY",
}


def test_every_variable_read_anywhere_is_known() -> None:
    files = [REPO / "Makefile", REPO / "README.md", *(REPO / ".ci").rglob("*")]
    for docs in ("docs", "deploy"):  # what an operator is told to set
        files += (REPO / docs).rglob("*")
    for top in ("server", "checkpoints", "personas", "nodes", "graphs", "states", "evals", "bench", "tests"):
        files += (REPO / top).rglob("*.py")
    found = {n for f in files if f.is_file() for n in NAME.findall(f.read_text(errors="replace"))} - NOT_VARIABLES
    assert "TEAMGRAPH_CHECKPOINT_URL" in found and "TEAMGRAPH_STORAGE_WATCH_S" in found  # the scan sees them
    assert any(
        f.suffix == ".md" and f.is_file() and "TEAMGRAPH_DOCUMENT_READ_TIMEOUT_S" in f.read_text() for f in files
    )
    known = known_variables()
    missing = sorted(n for n in found if n not in known and not TENANT_KEY_VARIABLE.match(n))
    assert missing == []


def test_unknown_names_get_the_closest_known_one_and_tenant_keys_pass(tmp_path: Path) -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    environ = {
        "TEAMGRAPH_PROT": "8001",
        "TEAMGRAPH_OPENIA_API_KEY": "sk-x",  # a near-miss of a setting, though shaped like a tenant key
        "TEAMGRAPH_ACME_API_KEY": "k",  # a tenant key of bundles elsewhere
        # found in review: refused as close to TEAMGRAPH_OPENAI_API_KEY, though it is tenant open's key
        "TEAMGRAPH_OPEN_API_KEY": "k",
        "TEAMGRAPH_OPENAI_API_KY": "sk-x",  # one letter missing: a slip
        "TEAMGRAPH_OPENAI_ADMIN_KEY": "k",  # tenant openai's admin key
        "TEAMGRAPH_VENEO_API_KEY": "k",
        "TEAMGRAPH_BLAS_THREADS": "2",
        "TEAMGRAPH_TEST_POSTGRES_URL": "postgresql://x",
        "teamgraph_log_level": "DEBUG",  # pydantic-settings reads names in any case
        "OTHER_TOOL_SETTING": "1",
    }
    (tmp_path / ".env").write_text("TEAMGRAPH_ZZZ=1\n")
    assert unknown_variables(settings, environ, tmp_path / ".env") == [
        "TEAMGRAPH_OPENAI_API_KY: not a Teamgraph setting; did you mean TEAMGRAPH_OPENAI_API_KEY?",
        "TEAMGRAPH_OPENIA_API_KEY: not a Teamgraph setting; did you mean TEAMGRAPH_OPENAI_API_KEY?",
        "TEAMGRAPH_PROT: not a Teamgraph setting; did you mean TEAMGRAPH_PORT?",
        f"TEAMGRAPH_ZZZ (in {tmp_path / '.env'}): not a Teamgraph setting (see the settings in README.md)",
    ]


def test_a_tenant_file_that_does_not_parse_still_names_its_key_variables(tmp_path: Path) -> None:
    # found in review: an impossible date in a tenant file (a ValueError, not a YAMLError) made every command end in
    # a traceback from this check, and a tenant file with a YAML error made its own key variable "not a setting"
    # instead of leaving the bundle's problem to the bundle loader
    demo_key, acme_key = "TEAMGRAPH_" + "DEMO_APP_TOKEN", "TEAMGRAPH_" + "ACME_KEY"  # names only these bundles give
    personas = tmp_path / "personas"
    (personas / "tenants").mkdir(parents=True)
    (personas / "tenants" / "demo.yaml").write_text(
        f"id: demo\ncreated: 2026-13-45\napi_keys:\n  - {{id: app, env: {demo_key}}}\n"
    )
    (personas / "tenants" / "acme.yaml").write_text(
        f"id: acme\nenabled_teams: [veneo_chat\napi_keys:\n  - {{id: app, env: '{acme_key}'}}\n"
    )
    settings = Settings(_env_file=None, personas_dir=personas)  # type: ignore[call-arg]
    environ = {demo_key: "k", acme_key: "k", "TEAMGRAPH_PROT": "1"}
    assert unknown_variables(settings, environ, tmp_path / ".env") == [
        "TEAMGRAPH_PROT: not a Teamgraph setting; did you mean TEAMGRAPH_PORT?"
    ]


def test_the_light_list_of_setting_variables_is_the_settings_own() -> None:
    """server/variables.py names them for `personas validate`, which does not import the settings: a field added to
    Settings (or an alias) must be added there too, or a tenant key could still be read from its variable."""
    from pydantic import AliasChoices

    from server.variables import RESERVED_VARIABLES, SETTING_VARIABLES

    read = set()
    for field, info in Settings.model_fields.items():
        read.add(f"TEAMGRAPH_{field.upper()}")
        if isinstance(info.validation_alias, AliasChoices):
            read.update(c.upper() for c in info.validation_alias.choices if isinstance(c, str))
    assert sorted(SETTING_VARIABLES) == sorted(read)
    assert known_variables() <= RESERVED_VARIABLES


def test_uvicorn_s_factory_warns_of_each_unknown_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Found in review: `uvicorn --factory server.app:app_from_env` (the factory's own docstring) skipped the check
    `teamgraph` makes, and started silently on its default database with TEAMGRAPH_CHECKPIONT_URL set. It warns,
    one line per variable, and still starts (other hosts may import it)."""
    from server.app import app_from_env
    from server.settings import get_settings

    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.upper().startswith("TEAMGRAPH_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("TEAMGRAPH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TEAMGRAPH_CHECKPIONT_URL", f"sqlite:///{tmp_path}/meant.db")
    (tmp_path / ".env").write_text("TEAMGRAPH_PROT=8001\n")
    get_settings.cache_clear()
    try:
        with caplog.at_level(logging.WARNING):
            app = app_from_env()
    finally:
        get_settings.cache_clear()

    assert app.title == "Teamgraph"
    warned = [r.getMessage() for r in caplog.records if r.name == "server.app"]
    assert warned == [
        "TEAMGRAPH_CHECKPIONT_URL: not a Teamgraph setting; did you mean TEAMGRAPH_CHECKPOINT_URL? (ignored; "
        "`teamgraph serve` refuses to start with it)",
        "TEAMGRAPH_PROT (in .env): not a Teamgraph setting; did you mean TEAMGRAPH_PORT? (ignored; `teamgraph serve` "
        "refuses to start with it)",
    ]
