"""Voice across the bundles: the voice catalog, and the effective voice settings of a (tenant, team).

A team's voice comes from layers, general to specific, each setting only the fields it names:

1. the speaking persona's `voice` block (agents/<persona>.yaml; the speaker is the team's `voice.speaker`
   node, else its first node),
2. the team's `voice` block (teams/<team>.yaml),
3. the tenant's `voice` block (tenants/<tenant>.yaml, for all its teams),
4. the tenant's overrides of that persona, then of that team (`overrides.agents.<persona>.voice`,
   `overrides.teams.<team>.voice`).

Later layers win field by field (nested blocks merge), except `allowed_voices`: every layer that sets a list
narrows the choice (the effective list is the catalog filtered by all of them), so a tenant can restrict a
team's voices but never add one the team excluded. `default_voice` must be in the effective list.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator

from personas.loader import (
    DEFAULT_BUNDLE_DIR,
    Bundles,
    Problem,
    _field_path,
    _line_of,
    deep_merge,
    parse_yaml_checked,
)
from personas.resolver import TeamRunConfig, fill_tenant_name
from personas.schema import AgentPersona, Identifier, StrictModel, VoiceSettings

CATALOG_FILE = "voice_catalog.yaml"


class CatalogVoice(StrictModel):
    """One voice people can choose."""

    id: Identifier
    name: str = Field(min_length=1)
    description: str = ""
    provider_voice: str | None = Field(None, min_length=1, description="Sent to the provider (default: the id).")

    @property
    def wire_id(self) -> str:
        return self.provider_voice or self.id


class VoiceCatalog(StrictModel):
    """personas/voice_catalog.yaml: every voice a team or tenant may allow."""

    voices: list[CatalogVoice] = Field(min_length=1)

    @field_validator("voices")
    @classmethod
    def _unique(cls, voices: list[CatalogVoice]) -> list[CatalogVoice]:
        ids = [v.id for v in voices]
        if len(set(ids)) != len(ids):
            raise ValueError("voice id listed twice")
        return voices

    @property
    def ids(self) -> list[str]:
        return [v.id for v in self.voices]

    def get(self, voice_id: str) -> CatalogVoice | None:
        return next((v for v in self.voices if v.id == voice_id), None)


class VoiceConfigError(ValueError):
    """The voice catalog or a team's layered voice settings are invalid; `problems` says where."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("invalid voice settings:\n" + "\n".join(f"  {p}" for p in problems))


def catalog_path(root: Path | str) -> Path:
    """The bundle directory's catalog, or the bundled one when the directory has none."""
    own = Path(root) / CATALOG_FILE
    return own if own.is_file() else DEFAULT_BUNDLE_DIR / CATALOG_FILE


def _rel(path: Path) -> str:
    return str(path.relative_to(path.parent.parent))


@functools.lru_cache(maxsize=8)
def _load_catalog(path: str, mtime: float) -> VoiceCatalog:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
        node, data, duplicates = parse_yaml_checked(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise VoiceConfigError(
            [Problem(_rel(file), mark.line + 1 if mark else None, "", f"not valid YAML: {exc}")]
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise VoiceConfigError([Problem(_rel(file), None, "", f"cannot read file: {exc}")]) from None
    if duplicates:  # YAML keeps the last of two equal keys without a word: refused, as in every bundle file
        raise VoiceConfigError([Problem(_rel(file), line, field, message) for line, field, message in duplicates])
    try:
        return VoiceCatalog.model_validate(data)
    except ValidationError as exc:
        raise VoiceConfigError(
            [
                Problem(_rel(file), _line_of(node, tuple(e["loc"])), _field_path(tuple(e["loc"])), e["msg"])
                for e in exc.errors()
            ]
        ) from None


def load_catalog(root: Path | str = DEFAULT_BUNDLE_DIR) -> VoiceCatalog:
    """The voice catalog for a bundle directory (read once per file version); raises VoiceConfigError."""
    path = catalog_path(root)
    try:
        mtime = path.stat().st_mtime
    except OSError as exc:
        raise VoiceConfigError([Problem(str(path), None, "", f"cannot read file: {exc}")]) from None
    return _load_catalog(str(path), mtime)


@dataclass(frozen=True)
class VoiceLayer:
    """What one bundle file says about a team's voice: the fields it sets, and where."""

    kind: str  # agents | teams | tenants: the file that holds the block
    obj_id: str
    loc: tuple[str, ...]  # the voice block's path inside that file
    values: dict[str, Any]


@dataclass(frozen=True)
class EffectiveVoice:
    """A team's voice for one tenant, all layers applied and checked against the catalog."""

    tenant: str
    team: str
    speaker: str  # the node whose persona speaks
    persona: AgentPersona  # that persona, tenant overrides applied (its model settings: timeout, base_url)
    settings: VoiceSettings  # merged; allowed_voices and default_voice are the effective ones
    allowed: tuple[str, ...]  # catalog order

    @property
    def default_voice(self) -> str:
        return self.settings.default_voice


def speaker_node(run: TeamRunConfig) -> str:
    return run.team.voice.speaker or next(iter(run.team.nodes))


def voice_layers(bundles: Bundles, run: TeamRunConfig) -> list[VoiceLayer]:
    tenant = bundles.tenants[run.tenant]
    team_id = run.team.id
    persona_id = run.team.nodes.get(speaker_node(run), "")
    layers = []
    if persona_id in bundles.agents:
        layers.append(
            VoiceLayer(
                "agents", persona_id, ("voice",), bundles.agents[persona_id].voice.model_dump(exclude_unset=True)
            )
        )
    layers.append(VoiceLayer("teams", team_id, ("voice",), bundles.teams[team_id].voice.model_dump(exclude_unset=True)))
    layers.append(VoiceLayer("tenants", tenant.id, ("voice",), tenant.voice.model_dump(exclude_unset=True)))
    agent_override = tenant.overrides.agents.get(persona_id, {}).get("voice")
    if isinstance(agent_override, dict):
        layers.append(VoiceLayer("tenants", tenant.id, ("overrides", "agents", persona_id, "voice"), agent_override))
    team_override = tenant.overrides.teams.get(team_id, {}).get("voice")
    if isinstance(team_override, dict):
        layers.append(VoiceLayer("tenants", tenant.id, ("overrides", "teams", team_id, "voice"), team_override))
    return layers


def _problem(
    bundles: Bundles, nodes: dict[tuple[str, str], Any] | None, layer: VoiceLayer, field: tuple[Any, ...], reason: str
) -> Problem:
    source = bundles.sources.get((layer.kind, layer.obj_id))
    if source is None:
        file = f"{layer.kind}/{layer.obj_id}.yaml"
    else:
        file = str(source.relative_to(bundles.root.parent)) if bundles.root.parent in source.parents else str(source)
    loc = (*layer.loc, *field)
    line = _line_of((nodes or {}).get((layer.kind, layer.obj_id)), loc) if nodes else None
    return Problem(file, line, _field_path(loc), reason)


def effective_voice(
    bundles: Bundles,
    catalog: VoiceCatalog,
    run: TeamRunConfig,
    nodes: dict[tuple[str, str], Any] | None = None,
) -> EffectiveVoice:
    """Apply the layers of `run`'s team for its tenant; raises VoiceConfigError naming file, line and field."""
    layers = voice_layers(bundles, run)
    problems: list[Problem] = []
    speaker = speaker_node(run)
    if speaker not in run.team.nodes:
        layer = next((lay for lay in reversed(layers) if "speaker" in lay.values), layers[0])
        problems.append(
            _problem(
                bundles,
                nodes,
                layer,
                ("speaker",),
                f"{speaker!r} is not a node of team {run.team.id!r}; nodes: {', '.join(run.team.nodes)}",
            )
        )
        raise VoiceConfigError(problems)
    allowed = catalog.ids
    last_list: VoiceLayer | None = None
    for layer in layers:
        listed = layer.values.get("allowed_voices") or []
        for i, voice in enumerate(listed):
            if catalog.get(voice) is None:
                problems.append(
                    _problem(
                        bundles,
                        nodes,
                        layer,
                        ("allowed_voices", i),
                        f"unknown voice {voice!r}; the catalog has: {', '.join(catalog.ids)}",
                    )
                )
        if listed:
            allowed = [v for v in allowed if v in listed]
            last_list = layer
    if not allowed and last_list is not None and not problems:
        problems.append(
            _problem(
                bundles,
                nodes,
                last_list,
                ("allowed_voices",),
                f"no voice is left for team {run.team.id!r} of tenant {run.tenant!r}: "
                "the allow-lists of the persona, team and tenant have no voice in common",
            )
        )
    chosen_layer = next((lay for lay in reversed(layers) if "default_voice" in lay.values), None)
    if chosen_layer is not None:
        default = str(chosen_layer.values["default_voice"])
        if catalog.get(default) is None:
            problems.append(
                _problem(
                    bundles,
                    nodes,
                    chosen_layer,
                    ("default_voice",),
                    f"unknown voice {default!r}; the catalog has: {', '.join(catalog.ids)}",
                )
            )
        elif allowed and default not in allowed:
            reason = f"voice {default!r} is not allowed for team {run.team.id!r} of tenant {run.tenant!r}"
            if last_list is not None and layers.index(last_list) > layers.index(chosen_layer):
                # a later allow-list excluded an earlier default: the fix belongs where the list is
                where = _problem(bundles, nodes, chosen_layer, ("default_voice",), "")
                at = f"{where.file}:{where.line}" if where.line else where.file
                problems.append(
                    _problem(
                        bundles,
                        nodes,
                        last_list,
                        ("allowed_voices",),
                        f"excludes the default voice {default!r} set at {at} ({where.field}); "
                        "allow it, or set default_voice beside this list",
                    )
                )
            else:
                problems.append(
                    _problem(
                        bundles, nodes, chosen_layer, ("default_voice",), f"{reason}; allowed: {', '.join(allowed)}"
                    )
                )
    else:
        schema_default = VoiceSettings().default_voice
        default = schema_default if schema_default in allowed else (allowed[0] if allowed else schema_default)
    if problems:
        raise VoiceConfigError(problems)
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = deep_merge(merged, {k: v for k, v in layer.values.items() if k not in ("allowed_voices", "speaker")})
    merged["allowed_voices"] = allowed
    merged["default_voice"] = default
    merged = fill_tenant_name(merged, run.tenant_name or run.tenant)  # instructions, preview_text
    try:
        settings = VoiceSettings.model_validate(merged)
    except ValidationError as exc:  # each layer validated alone; their combination still must be valid
        last = layers[-1]
        raise VoiceConfigError(
            [_problem(bundles, nodes, last, tuple(e["loc"]), e["msg"]) for e in exc.errors()]
        ) from None
    return EffectiveVoice(run.tenant, run.team.id, speaker, run.agents[speaker], settings, tuple(allowed))


def voice_problems(bundles: Bundles, nodes: dict[tuple[str, str], Any]) -> list[Problem]:
    """Every voice problem of an otherwise valid bundle directory (for the loader): the catalog, and the
    layered settings of each team each tenant enables."""
    from personas.resolver import AgentTeamResolver, FilledTextError

    try:
        catalog = load_catalog(bundles.root)
    except VoiceConfigError as exc:
        return exc.problems
    resolver = AgentTeamResolver(bundles)
    problems: list[Problem] = []
    seen: set[str] = set()
    for tenant in bundles.tenants.values():
        for team_id in tenant.enabled_teams:
            try:
                effective_voice(bundles, catalog, resolver.resolve(tenant.id, team_id), nodes)
                continue
            except VoiceConfigError as exc:
                found = exc.problems
            except FilledTextError as exc:  # the tenant's name made a persona's or team's text invalid
                layer = VoiceLayer("tenants", tenant.id, (), {})
                found = [_problem(bundles, nodes, layer, loc, reason) for loc, reason in exc.problems]
            for problem in found:
                if str(problem) not in seen:  # a team file's problem shows once, not once per tenant
                    seen.add(str(problem))
                    problems.append(problem)
    return problems
