"""Persona bundles: YAML agents, teams and tenants, their schema, loader and AgentFactory."""
