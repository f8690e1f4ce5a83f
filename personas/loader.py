"""Load and validate a persona bundle directory; every problem is reported as file:line: field: reason."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from personas import DEFAULT_BUNDLE_DIR as DEFAULT_BUNDLE_DIR  # re-exported: importers know it from here
from personas.schema import KIND_MODELS, AgentPersona, TeamBundle, TenantBundle, TenantOverrides


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a bundle file."""

    file: str
    line: int | None
    field: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field or '(file)'}: {self.reason}"


class BundleError(Exception):
    """The bundle directory is invalid; nothing from it was loaded."""

    def __init__(self, problems: list[Problem], root: Path | None = None):
        self.problems = problems
        self.root = root  # the bundle directory: a problem's file is relative to its parent (or absolute)
        super().__init__("invalid persona bundles:\n" + "\n".join(f"  {p}" for p in problems))


@dataclass(frozen=True)
class Bundles:
    """A fully validated bundle directory."""

    root: Path
    agents: dict[str, AgentPersona]
    teams: dict[str, TeamBundle]
    tenants: dict[str, TenantBundle]
    sources: dict[tuple[str, str], Path] = field(default_factory=dict, compare=False)

    def knowledge_path(self, tenant_id: str) -> Path | None:
        tenant = self.tenants[tenant_id]
        return (self.root / tenant.knowledge) if tenant.knowledge else None


_FAST_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


Duplicate = tuple[int, str, str]  # (line, field path, message)
_MERGE_TAG = "tag:yaml.org,2002:merge"
_MERGE = object()  # the key of every `<<:` entry


def _parse(text: str, loader_class: type[yaml.SafeLoader]) -> tuple[yaml.Node | None, Any, list[Duplicate]]:
    loader = loader_class(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None, []
        duplicates = duplicate_keys(node, loader)  # before construction: it flattens `<<` into the tree in place
        try:
            data = loader.construct_document(node)
        except (ValueError, OverflowError) as exc:  # a value its tag cannot hold: `x: 2026-13-45` (a date)
            raise _unreadable_scalar(node, exc) from None
        return node, data, duplicates
    finally:
        loader.dispose()


def _unreadable_scalar(root: yaml.Node, exc: Exception) -> yaml.constructor.ConstructorError:
    """A YAML error at the scalar whose value its (implicit) type cannot hold, e.g. a date with month 13, so the
    file's problem names its line (construction raises a bare ValueError without one)."""
    constructor = yaml.constructor.SafeConstructor()
    stack, seen = [root], set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            try:
                constructor.construct_object(node, deep=True)
            except (ValueError, OverflowError) as error:
                kind = node.tag.rsplit(":", 1)[-1]
                problem = f"{node.value!r} is not a valid {kind} ({error}); quote it to keep it as text"
                return yaml.constructor.ConstructorError(None, None, problem, node.start_mark)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(reversed(node.value))
        elif isinstance(node, yaml.MappingNode):
            stack.extend(n for pair in reversed(node.value) for n in reversed(pair))
    return yaml.constructor.ConstructorError(None, None, f"a value cannot be read ({exc})", root.start_mark)


def parse_yaml_checked(text: str) -> tuple[yaml.Node | None, Any, list[Duplicate]]:
    """A YAML document's node tree (for line numbers), its data, as yaml.compose and yaml.safe_load give them, and
    the keys its mappings repeat (see duplicate_keys), from one parse with libyaml (it is many times faster: the
    server reads every bundle file at start-up). A file libyaml refuses is parsed again by PyYAML's own parser,
    whose error messages name what is wrong."""
    try:
        return _parse(text, _FAST_LOADER)
    except yaml.YAMLError:
        if _FAST_LOADER is yaml.SafeLoader:
            raise
        return _parse(text, yaml.SafeLoader)


def parse_yaml(text: str) -> tuple[yaml.Node | None, Any]:
    """parse_yaml_checked without the repeated keys."""
    node, data, _duplicates = parse_yaml_checked(text)
    return node, data


def duplicate_keys(node: yaml.Node, constructor: yaml.constructor.SafeConstructor) -> list[Duplicate]:
    """(line, field path, message) for every key a mapping repeats: YAML loaders keep the last one silently, so a
    copy-pasted `retention:` block would change the policy without a word. Run on the composed tree, before
    construction flattens merges into it: a key that overrides one a `<<: *anchor` brings is not a duplicate, a
    second `<<:` is. Keys compare as loaded (`1` and `0x1` are the same int; `1` and `'1'` differ)."""
    found: list[Duplicate] = []
    seen: set[int] = set()  # an alias shares its anchor's node

    def loaded(key_node: yaml.Node) -> Any:
        if key_node.tag == _MERGE_TAG:
            return _MERGE
        if not isinstance(key_node, yaml.ScalarNode):
            return None  # a sequence or mapping as a key: not a bundle's concern
        return constructor.construct_object(key_node, deep=True)

    def walk(node: yaml.Node, loc: tuple[Any, ...]) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, value_node in node.value:
                key = loaded(key_node)
                name = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                if key is not None:
                    line = key_node.start_mark.line + 1
                    if key in first:
                        path = _field_path(loc if key is _MERGE else (*loc, name))
                        found.append((line, path, f"duplicate key {name!r} (first at line {first[key]})"))
                    else:
                        first[key] = line
                walk(value_node, loc if key is _MERGE or name is None else (*loc, name))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*loc, i))

    walk(node, ())
    return found


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """Line (1-based) of the YAML node at a pydantic error location, or of its nearest existing parent."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for part in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == str(part):
                    child = value_node
                    line = key_node.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line


def _field_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _validation_problems(rel: str, err: ValidationError, node: yaml.Node | None, prefix=()) -> list[Problem]:
    problems = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-after")))
        full = (*prefix, *loc)
        problems.append(Problem(rel, _line_of(node, full), _field_path(full), e["msg"]))
    return problems


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Merge override into a copy of base; nested mappings merge, everything else replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_bundles(
    root: Path | str = DEFAULT_BUNDLE_DIR,
    *,
    known_graphs: set[str] | None = None,
    reserved_variables: Collection[str] = (),
) -> Bundles:
    """Validate every YAML file under root/{agents,teams,tenants}; raise BundleError listing all problems.

    `reserved_variables`: environment variables a tenant key may not be read from (`api_keys[].env`), as the
    server reads them for something else (server/variables.py: its settings); this package knows none of them."""
    root = Path(root).resolve()
    problems: list[Problem] = []
    parsed: dict[str, dict[str, Any]] = {kind: {} for kind in KIND_MODELS}
    nodes: dict[tuple[str, str], yaml.Node | None] = {}
    sources: dict[tuple[str, str], Path] = {}
    broken: dict[str, set[str]] = {kind: set() for kind in KIND_MODELS}  # files that failed: not "unknown" elsewhere
    unloaded_overrides: list[tuple[str, yaml.Node | None, TenantOverrides]] = []  # of tenant files that failed

    if root.exists() and not root.is_dir():
        reason = "not a directory: give the bundle directory (holding agents/, teams/, tenants/), not one file"
        raise BundleError([Problem(str(root), None, "", reason)], root)
    if not root.is_dir():
        raise BundleError([Problem(str(root), None, "", "bundle directory does not exist")], root)

    for kind, model in KIND_MODELS.items():
        for path in sorted((root / kind).glob("*.y*ml")):
            rel = str(path.relative_to(root.parent)) if root.parent in path.parents else str(path)
            broken[kind].add(path.stem)  # until it validates
            try:
                text = path.read_text(encoding="utf-8")
                node, data, duplicates = parse_yaml_checked(text)
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                problems.append(
                    Problem(rel, mark.line + 1 if mark else None, "", f"not valid YAML: {getattr(exc, 'problem', exc)}")
                )
                continue
            except (OSError, UnicodeDecodeError) as exc:
                problems.append(Problem(rel, None, "", f"cannot read file: {exc}"))
                continue
            if not isinstance(data, dict):
                problems.append(Problem(rel, 1, "", f"expected a mapping of fields, got {type(data).__name__}"))
                continue
            if duplicates:
                problems.extend(Problem(rel, line, field, message) for line, field, message in duplicates)
                continue
            try:
                obj = model.model_validate(data)
            except ValidationError as exc:
                problems.extend(_validation_problems(rel, exc, node))
                if kind == "tenants":  # its overrides are still checked, when they are well-formed themselves
                    with contextlib.suppress(ValidationError):
                        unloaded_overrides.append(
                            (rel, node, TenantOverrides.model_validate(data.get("overrides", {})))
                        )
                continue
            obj_id = obj.id  # type: ignore[attr-defined]
            if obj_id in parsed[kind]:
                other = sources[(kind, obj_id)]
                problems.append(
                    Problem(rel, _line_of(node, ("id",)), "id", f"duplicate id {obj_id!r} (also in {other.name})")
                )
                continue
            if path.stem != obj_id:
                problems.append(
                    Problem(rel, _line_of(node, ("id",)), "id", f"id {obj_id!r} must match the file name {path.stem!r}")
                )
                continue
            parsed[kind][obj_id] = obj
            broken[kind].discard(path.stem)
            nodes[(kind, obj_id)] = node
            sources[(kind, obj_id)] = path

    agents: dict[str, AgentPersona] = parsed["agents"]  # type: ignore[assignment]
    teams: dict[str, TeamBundle] = parsed["teams"]  # type: ignore[assignment]
    tenants: dict[str, TenantBundle] = parsed["tenants"]  # type: ignore[assignment]

    def rel_of(kind: str, obj_id: str) -> str:
        return str(sources[(kind, obj_id)].relative_to(root.parent))

    def override_problems(rel: str, node: yaml.Node | None, overrides: TenantOverrides) -> list[Problem]:
        """A tenant's overrides merged into the personas and teams they change, each validated again."""
        found: list[Problem] = []
        kinds: tuple[tuple[str, dict[str, Any], Mapping[str, Any], type[BaseModel], str], ...] = (
            ("agents", overrides.agents, agents, AgentPersona, "unknown agent persona"),
            ("teams", overrides.teams, teams, TeamBundle, "unknown team"),
        )
        for kind, changes, known, model, unknown in kinds:
            for obj_id, override in changes.items():
                loc = ("overrides", kind, obj_id)
                if obj_id in broken[kind]:
                    continue
                if obj_id not in known:
                    found.append(Problem(rel, _line_of(node, loc), _field_path(loc), f"{unknown} {obj_id!r}"))
                    continue
                merged = deep_merge(known[obj_id].model_dump(exclude_unset=True), override)
                try:
                    model.model_validate(merged)
                except ValidationError as exc:
                    found.extend(_validation_problems(rel, exc, node, prefix=loc))
                if kind == "teams":
                    found.extend(remapped_node_problems(rel, node, loc, merged, teams[obj_id].nodes))
        return found

    def remapped_node_problems(
        rel: str, node: yaml.Node | None, loc: tuple[str, ...], merged: dict[str, Any], nodes_before: dict[str, str]
    ) -> list[Problem]:
        """A team override's node remap (`nodes: {primary_responder: my_persona}`) naming an unknown persona."""
        if merged.get("nodes", {}) == nodes_before:
            return []
        return [
            Problem(
                rel,
                _line_of(node, (*loc, "nodes", node_name)),
                f"{_field_path(loc)}.nodes.{node_name}",
                f"unknown agent persona {persona_id!r}",
            )
            for node_name, persona_id in merged.get("nodes", {}).items()
            if persona_id not in agents and persona_id not in broken["agents"]
        ]

    for team in teams.values():
        node = nodes[("teams", team.id)]
        if known_graphs is not None and team.graph not in known_graphs:
            problems.append(
                Problem(
                    rel_of("teams", team.id),
                    _line_of(node, ("graph",)),
                    "graph",
                    f"unknown graph {team.graph!r}; known: {', '.join(sorted(known_graphs))}",
                )
            )
        for node_name, persona_id in team.nodes.items():
            if persona_id not in agents and persona_id not in broken["agents"]:
                problems.append(
                    Problem(
                        rel_of("teams", team.id),
                        _line_of(node, ("nodes", node_name)),
                        f"nodes.{node_name}",
                        f"unknown agent persona {persona_id!r}",
                    )
                )

    for tenant in tenants.values():
        node = nodes[("tenants", tenant.id)]
        rel = rel_of("tenants", tenant.id)
        for i, team_id in enumerate(tenant.enabled_teams):
            if team_id not in teams and team_id not in broken["teams"]:
                problems.append(
                    Problem(
                        rel, _line_of(node, ("enabled_teams", i)), f"enabled_teams[{i}]", f"unknown team {team_id!r}"
                    )
                )
        if tenant.knowledge and not (root / tenant.knowledge).is_file():
            problems.append(
                Problem(rel, _line_of(node, ("knowledge",)), "knowledge", f"file not found: {tenant.knowledge}")
            )
        for i, key in enumerate(tenant.api_keys):
            if key.env is not None and key.env in reserved_variables:
                instead = f"TEAMGRAPH_{tenant.id.upper().replace('-', '_')}_TENANT_API_KEY"
                problems.append(
                    Problem(
                        rel,
                        _line_of(node, ("api_keys", i, "env")),
                        f"api_keys[{i}].env",
                        f"{key.env} is a Teamgraph setting's variable: the setting would read this tenant's key, and "
                        f"the tenant the setting's value as its key; name another variable (e.g. {instead})",
                    )
                )
        problems.extend(override_problems(rel, node, tenant.overrides))
    for rel, node, overrides in unloaded_overrides:
        problems.extend(override_problems(rel, node, overrides))

    if not tenants and not problems:
        problems.append(Problem(str(root), None, "tenants", "no tenant bundles found"))
    bundles = Bundles(root=root, agents=agents, teams=teams, tenants=tenants, sources=sources)
    if not problems:  # voice settings combine persona, team, tenant and overrides: checked once those are valid
        from personas.voice import voice_problems

        problems.extend(voice_problems(bundles, nodes))
    if problems:
        raise BundleError(problems, root)
    return bundles


@lru_cache(maxsize=8)
def load_bundles_cached(root: str, reserved_variables: frozenset[str] = frozenset()) -> Bundles:
    """Load once per process per directory (graphs loaded by `langgraph dev` resolve through this; Studio's logins
    pass the server's `reserved_variables`, see load_bundles)."""
    from graphs.registry import GRAPH_MODULES

    return load_bundles(root, known_graphs=set(GRAPH_MODULES), reserved_variables=reserved_variables)
