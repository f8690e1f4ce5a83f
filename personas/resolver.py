"""AgentTeamResolver: (tenant, requested team, session metadata) -> the team's run config, or a clear refusal."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from personas.loader import Bundles, deep_merge
from personas.schema import AgentPersona, TeamBundle


class TeamResolutionError(Exception):
    """The caller may not use the requested team; `status` is the HTTP status a server should answer."""

    status = 400
    code = "team_error"

    def __init__(self, message: str, *, tenant: str, team: str | None):
        super().__init__(message)
        self.tenant = tenant
        self.team = team


class UnknownTenant(TeamResolutionError):
    status = 404
    code = "tenant_not_found"


class UnknownTeam(TeamResolutionError):
    status = 404
    code = "team_not_found"


class TeamNotEnabled(TeamResolutionError):
    status = 403
    code = "team_not_enabled"


class FilledTextError(ValueError):
    """A persona's or team's text is invalid once the tenant's name fills `{tenant_name}` (too long for its
    field): a problem of the tenant's bundle. `problems` are (field path in the tenant file, reason): the
    override that sets the text, else the tenant's `name`."""

    def __init__(self, tenant: str, problems: list[tuple[tuple[Any, ...], str]]):
        super().__init__("; ".join(f"{'.'.join(map(str, loc))}: {reason}" for loc, reason in problems))
        self.tenant = tenant
        self.problems = problems


def _filled_problems(
    exc: ValidationError, override: dict[str, Any], prefix: tuple[str, ...]
) -> list[tuple[tuple[Any, ...], str]]:
    problems: list[tuple[tuple[Any, ...], str]] = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        value_at: Any = override
        for part in loc:
            value_at = value_at.get(part) if isinstance(value_at, dict) else None
        where = (*prefix, *loc) if value_at is not None else ("name",)
        problems.append((where, f"with the tenant's name filled in: {error['msg']}"))
    return problems


TENANT_NAME = "{tenant_name}"


def fill_tenant_name(value: Any, name: str) -> Any:
    """`value` (a bundle's data: dicts, lists, strings) with every `{tenant_name}` replaced by the tenant's display
    name; other placeholders stay for the code that renders them (a name cannot hold braces: schema)."""
    if isinstance(value, str):
        return value.replace(TENANT_NAME, name)
    if isinstance(value, dict):
        return {k: fill_tenant_name(v, name) for k, v in value.items()}
    if isinstance(value, list):
        return [fill_tenant_name(v, name) for v in value]
    return value


class TeamRunConfig(BaseModel):
    """Everything a team's nodes may vary on, for one tenant: tenant overrides already applied, `{tenant_name}`
    filled in the personas' and the team's texts."""

    model_config = ConfigDict(frozen=True)

    tenant: str
    tenant_name: str = ""  # the tenant's display name: its bundle's `name`, else its id
    team: TeamBundle
    agents: dict[str, AgentPersona]  # node name -> persona
    knowledge_path: str | None = None

    def persona(self, node: str) -> AgentPersona:
        try:
            return self.agents[node]
        except KeyError:
            raise KeyError(f"team {self.team.id!r} maps no persona to node {node!r}") from None


class AgentTeamResolver:
    """Decides which team serves a request and builds its TeamRunConfig (cached per tenant and team)."""

    def __init__(self, bundles: Bundles):
        self.bundles = bundles
        self._cache: dict[tuple[str, str], TeamRunConfig] = {}

    def resolve(
        self, tenant_id: str, requested_team: str | None = None, session: dict[str, Any] | None = None
    ) -> TeamRunConfig:
        """A session keeps the team it was created with; otherwise the requested team, else the tenant's default."""
        tenant = self.bundles.tenants.get(tenant_id)
        if tenant is None:
            raise UnknownTenant(f"unknown tenant {tenant_id!r}", tenant=tenant_id, team=requested_team)
        session_team = (session or {}).get("team")
        if session_team and requested_team and session_team != requested_team:
            raise TeamResolutionError(
                f"session belongs to team {session_team!r}, not {requested_team!r}",
                tenant=tenant_id,
                team=requested_team,
            )
        team_id = session_team or requested_team or tenant.default_team
        if team_id not in self.bundles.teams:
            raise UnknownTeam(
                f"unknown team {team_id!r}; teams for tenant {tenant_id!r}: {', '.join(tenant.enabled_teams)}",
                tenant=tenant_id,
                team=team_id,
            )
        if team_id not in tenant.enabled_teams:
            raise TeamNotEnabled(
                f"team {team_id!r} is not enabled for tenant {tenant_id!r}; enabled: {', '.join(tenant.enabled_teams)}",
                tenant=tenant_id,
                team=team_id,
            )
        key = (tenant_id, team_id)
        if key not in self._cache:
            self._cache[key] = self._build(tenant_id, team_id)
        return self._cache[key]

    def _build(self, tenant_id: str, team_id: str) -> TeamRunConfig:
        tenant = self.bundles.tenants[tenant_id]
        name = tenant.name.strip() or tenant.id
        team_override = tenant.overrides.teams.get(team_id, {})
        team_data = deep_merge(self.bundles.teams[team_id].model_dump(exclude_unset=True), team_override)
        problems: list[tuple[tuple[Any, ...], str]] = []
        try:  # the loader validated every text unfilled; a long name can still make one too long
            team = TeamBundle.model_validate(fill_tenant_name(team_data, name))
        except ValidationError as exc:
            problems = _filled_problems(exc, team_override, ("overrides", "teams", team_id))
            raise FilledTextError(tenant_id, problems) from None
        agents: dict[str, AgentPersona] = {}
        for node, persona_id in team.nodes.items():
            agent_override = tenant.overrides.agents.get(persona_id, {})
            data = deep_merge(self.bundles.agents[persona_id].model_dump(exclude_unset=True), agent_override)
            try:
                agents[node] = AgentPersona.model_validate(fill_tenant_name(data, name))
            except ValidationError as exc:
                problems += _filled_problems(exc, agent_override, ("overrides", "agents", persona_id))
        if problems:
            raise FilledTextError(tenant_id, problems)
        knowledge = self.bundles.knowledge_path(tenant_id)
        return TeamRunConfig(
            tenant=tenant_id,
            tenant_name=name,
            team=team,
            agents=agents,
            knowledge_path=str(knowledge) if knowledge else None,
        )
