"""The one typed view of config["configurable"] that every node reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import RunnableConfig

from personas.factory import AgentFactory
from personas.loader import DEFAULT_BUNDLE_DIR, load_bundles_cached
from personas.resolver import AgentTeamResolver, TeamRunConfig
from personas.schema import AgentPersona, TeamParams

_default_factory: AgentFactory | None = None
_default_resolvers: dict[str, AgentTeamResolver] = {}


def _fallback_factory() -> AgentFactory:
    global _default_factory
    if _default_factory is None:
        _default_factory = AgentFactory.from_env()
    return _default_factory


def _fallback_run_config(configurable: dict[str, Any], metadata: dict[str, Any]) -> TeamRunConfig:
    """Graphs run outside the server (`langgraph dev`, a notebook) resolve tenant and team from the bundles."""
    root = str(configurable.get("bundle_dir") or DEFAULT_BUNDLE_DIR)
    resolver = _default_resolvers.get(root)
    if resolver is None:
        resolver = _default_resolvers[root] = AgentTeamResolver(load_bundles_cached(root))
    team = configurable.get("team") or metadata.get("graph_id")
    if not team:
        raise ValueError("config['configurable']['team'] is required to run a team graph")
    # under `langgraph dev` with custom auth, the authenticated tenant wins over anything a client sent
    tenant = configurable.get("langgraph_auth_user_id") or configurable.get("tenant")
    if not tenant:
        # the first tenant that enables this team, so Studio works without any configuration
        tenant = next((t.id for t in resolver.bundles.tenants.values() if team in t.enabled_teams), None)
        if tenant is None:
            raise ValueError(f"no tenant enables team {team!r}; set config['configurable']['tenant']")
    return resolver.resolve(tenant, team)


def warm_defaults() -> None:
    """Load the default bundles and provider settings now (at graph import), not inside a running node."""
    _fallback_factory()
    root = str(DEFAULT_BUNDLE_DIR)
    if root not in _default_resolvers:
        _default_resolvers[root] = AgentTeamResolver(load_bundles_cached(root))


@dataclass(frozen=True)
class Configuration:
    """Tenant, team, personas and parameters for one run, as built by the server from the bundles."""

    run: TeamRunConfig
    agent_factory: AgentFactory
    thread_id: str | None = None

    @classmethod
    def from_runnable_config(cls, config: RunnableConfig | None) -> Configuration:
        config = config or {}
        configurable: dict[str, Any] = dict(config.get("configurable") or {})
        run = configurable.get("team_run_config")
        if run is None:
            run = _fallback_run_config(configurable, dict(config.get("metadata") or {}))
        elif isinstance(run, dict):
            run = TeamRunConfig.model_validate(run)
        factory = configurable.get("agent_factory") or _fallback_factory()
        return cls(run=run, agent_factory=factory, thread_id=configurable.get("thread_id"))

    @property
    def tenant(self) -> str:
        return self.run.tenant

    @property
    def team(self) -> str:
        return self.run.team.id

    @property
    def params(self) -> TeamParams:
        return self.run.team.params

    def persona(self, node: str) -> AgentPersona:
        return self.run.persona(node)

    def model(self, node: str) -> BaseChatModel | None:
        """The chat model for the persona that plays `node`, or None offline."""
        return self.agent_factory.chat_model(self.persona(node))

    def model_label(self, node: str) -> str:
        return self.agent_factory.model_label(self.persona(node))
