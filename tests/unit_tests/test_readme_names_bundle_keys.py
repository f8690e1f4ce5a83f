"""Every variable a shipped tenant bundle reads a key from is named in the README: TEAMGRAPH_DEMO_ADMIN_KEY, the only
way to try GET /audit on the demo tenant, was not."""

from __future__ import annotations

from pathlib import Path

from personas.loader import DEFAULT_BUNDLE_DIR, load_bundles

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_the_readme_names_every_key_variable_of_the_shipped_bundles() -> None:
    variables = {key.env for t in load_bundles(DEFAULT_BUNDLE_DIR).tenants.values() for key in t.api_keys if key.env}
    assert "TEAMGRAPH_DEMO_ADMIN_KEY" in variables
    assert sorted(v for v in variables if f"`{v}" not in README and f"env: {v}" not in README) == []
