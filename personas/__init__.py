"""Persona bundles: YAML agents, teams and tenants, their schema, loader and AgentFactory."""

from pathlib import Path

# the shipped bundles; here rather than in the loader so the CLI can name it without importing pydantic
DEFAULT_BUNDLE_DIR = Path(__file__).resolve().parent
