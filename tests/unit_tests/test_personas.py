"""Persona bundles: the shipped ones validate; every mistake is reported as file:line: field: reason."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from graphs.registry import GRAPH_MODULES
from personas.loader import DEFAULT_BUNDLE_DIR, BundleError, Problem, load_bundles, parse_yaml
from personas.schema import ApiKey, json_schema
from server.cli import app

REPO = Path(__file__).resolve().parents[2]
TEAMGRAPH = REPO / ".venv" / "bin" / "teamgraph"
KNOWN_GRAPHS = set(GRAPH_MODULES)


# ---------------------------------------------------------------- helpers


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    """A writable copy of the shipped bundles at tmp_path/personas."""
    root = tmp_path / "personas"
    for kind in ("agents", "teams", "tenants", "knowledge"):
        shutil.copytree(DEFAULT_BUNDLE_DIR / kind, root / kind)
    return root


def replace(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{old!r} should occur once in {path}"
    path.write_text(text.replace(old, new), encoding="utf-8")


def line_of(path: Path, needle: str) -> int:
    """1-based number of the only line of path that contains needle."""
    hits = [i for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if needle in line]
    assert len(hits) == 1, f"{needle!r} should be on exactly one line of {path}: {hits}"
    return hits[0]


def problems_of(root: Path) -> list[Problem]:
    with pytest.raises(BundleError) as info:
        load_bundles(root, known_graphs=KNOWN_GRAPHS)
    assert info.value.problems, "a BundleError must list at least one problem"
    return info.value.problems


def in_file(problems: list[Problem], rel: str) -> list[Problem]:
    return [p for p in problems if p.file == rel]


# ---------------------------------------------------------------- the shipped bundles


def test_shipped_bundles_validate() -> None:
    bundles = load_bundles(DEFAULT_BUNDLE_DIR, known_graphs=KNOWN_GRAPHS)

    assert set(bundles.agents) == {
        "question_generator",
        "evaluator",
        "fallback_scorer",
        "interview_summarizer",
        "primary_responder",
        "safety_reviewer",
        "chat_summarizer",
    }
    assert set(bundles.teams) == {"interview", "veneo_chat"}
    assert set(bundles.tenants) == {"demo", "veneo"}
    assert bundles.knowledge_path("veneo") == DEFAULT_BUNDLE_DIR / "knowledge" / "veneo.md"
    assert bundles.knowledge_path("veneo").is_file()
    assert bundles.knowledge_path("demo") is None


def test_json_schema_describes_the_three_kinds() -> None:
    schema = json_schema()

    assert set(schema["kinds"]) == {"agents", "teams", "tenants"}
    agents = schema["kinds"]["agents"]
    assert {"id", "role", "model", "prompts", "safety", "tools"} <= set(agents["properties"])
    assert set(agents["required"]) == {"id", "role"}
    # unknown keys are forbidden, so an editor using the schema flags typos too
    assert agents["additionalProperties"] is False
    assert {"id", "graph", "nodes"} <= set(schema["kinds"]["teams"]["required"])
    assert {"enabled_teams", "default_team"} <= set(schema["kinds"]["tenants"]["properties"])
    json.dumps(schema)  # serialisable as is


# ---------------------------------------------------------------- one mistake per test


def test_unknown_key_is_reported_with_file_line_and_field(bundle_dir: Path) -> None:
    path = bundle_dir / "agents" / "evaluator.yaml"
    replace(path, "  temperature: 0.1", "  temprature: 0.1")

    problems = in_file(problems_of(bundle_dir), "personas/agents/evaluator.yaml")

    assert len(problems) == 1
    assert problems[0].line == line_of(path, "temprature")
    assert problems[0].field == "model.temprature"
    assert "not permitted" in problems[0].reason


def test_wrong_type_is_reported(bundle_dir: Path) -> None:
    path = bundle_dir / "agents" / "evaluator.yaml"
    replace(path, "  temperature: 0.1", '  temperature: "hot"')

    problems = in_file(problems_of(bundle_dir), "personas/agents/evaluator.yaml")

    assert [(p.line, p.field) for p in problems] == [(line_of(path, "temperature"), "model.temperature")]
    assert "valid number" in problems[0].reason


def test_out_of_range_value_is_reported(bundle_dir: Path) -> None:
    path = bundle_dir / "agents" / "evaluator.yaml"
    replace(path, "  temperature: 0.1", "  temperature: 5")

    problems = in_file(problems_of(bundle_dir), "personas/agents/evaluator.yaml")

    assert [(p.line, p.field) for p in problems] == [(line_of(path, "temperature"), "model.temperature")]
    assert "less than or equal to 2" in problems[0].reason


def test_missing_required_field_is_reported(bundle_dir: Path) -> None:
    path = bundle_dir / "agents" / "evaluator.yaml"
    replace(path, "role: Interview answer evaluator\n", "")

    problems = in_file(problems_of(bundle_dir), "personas/agents/evaluator.yaml")

    # a missing key has no line of its own: the mapping that lacks it starts on line 1
    assert [(p.line, p.field) for p in problems] == [(1, "role")]
    assert "required" in problems[0].reason.lower()


def test_yaml_syntax_error_reports_its_line(bundle_dir: Path) -> None:
    path = bundle_dir / "tenants" / "demo.yaml"
    replace(path, "default_team: interview", "default_team: interview: again")

    problems = problems_of(bundle_dir)

    assert len(problems) == 1
    assert problems[0].file == "personas/tenants/demo.yaml"
    assert problems[0].line == line_of(path, "default_team")
    assert problems[0].reason.startswith("not valid YAML")
    assert str(problems[0]).startswith(f"personas/tenants/demo.yaml:{problems[0].line}: ")

    # PyYAML's own wording, not libyaml's ("... not allowed in this context"): the loader parses with libyaml
    # for speed and asks PyYAML again only for a file libyaml refuses
    assert problems[0].reason == "not valid YAML: mapping values are not allowed here"


@pytest.mark.parametrize("path", sorted(DEFAULT_BUNDLE_DIR.rglob("*.yaml")), ids=lambda p: p.name)
def test_parse_yaml_gives_what_compose_and_safe_load_give(path: Path) -> None:
    text = path.read_text(encoding="utf-8")

    node, data = parse_yaml(text)

    assert data == yaml.safe_load(text)
    expected = yaml.compose(text)
    assert node is not None and expected is not None
    assert [(k.value, k.start_mark.line) for k, _ in node.value] == [
        (k.value, k.start_mark.line) for k, _ in expected.value
    ]


@pytest.mark.parametrize(
    ("text", "problem", "line"),
    [
        ("a: 1\nb: *missing\n", "found undefined alias 'missing'", 1),
        ("a: 1\n\tb: 2\n", "found character '\\t' that cannot start any token", 1),
        ("- x\ny: 1\n", "expected <block end>, but found '?'", 1),
    ],
)
def test_parse_yaml_errors_are_pyyamls(text: str, problem: str, line: int) -> None:
    with pytest.raises(yaml.MarkedYAMLError) as caught:
        parse_yaml(text)

    assert caught.value.problem == problem
    assert caught.value.problem_mark is not None and caught.value.problem_mark.line == line


def test_parse_yaml_of_an_empty_file_is_none() -> None:
    assert parse_yaml("") == (None, None)
    assert parse_yaml("# only a comment\n") == (None, None)


def test_file_that_is_not_a_mapping_is_reported(bundle_dir: Path) -> None:
    (bundle_dir / "agents" / "notes.yaml").write_text("- just\n- a list\n", encoding="utf-8")

    problems = problems_of(bundle_dir)

    assert [(p.file, p.line) for p in problems] == [("personas/agents/notes.yaml", 1)]
    assert "mapping" in problems[0].reason


def test_team_mapping_a_node_to_an_unknown_persona(bundle_dir: Path) -> None:
    path = bundle_dir / "teams" / "veneo_chat.yaml"
    replace(path, "safety_reviewer: safety_reviewer", "safety_reviewer: safety_bot")

    problems = problems_of(bundle_dir)

    assert [(p.file, p.line, p.field) for p in problems] == [
        ("personas/teams/veneo_chat.yaml", line_of(path, "safety_bot"), "nodes.safety_reviewer")
    ]
    assert "unknown agent persona 'safety_bot'" in problems[0].reason


def test_team_naming_an_unregistered_graph(bundle_dir: Path) -> None:
    path = bundle_dir / "teams" / "veneo_chat.yaml"
    replace(path, "graph: veneo_chat", "graph: sales_chat")

    problems = problems_of(bundle_dir)

    assert [(p.file, p.line, p.field) for p in problems] == [
        ("personas/teams/veneo_chat.yaml", line_of(path, "graph:"), "graph")
    ]
    assert "unknown graph 'sales_chat'" in problems[0].reason


def test_tenant_enabling_an_unknown_team(bundle_dir: Path) -> None:
    path = bundle_dir / "tenants" / "veneo.yaml"
    replace(path, "enabled_teams: [veneo_chat, interview]", "enabled_teams: [veneo_chat, interview, sales]")

    problems = problems_of(bundle_dir)

    assert [(p.file, p.line, p.field) for p in problems] == [
        ("personas/tenants/veneo.yaml", line_of(path, "enabled_teams"), "enabled_teams[2]")
    ]
    assert "unknown team 'sales'" in problems[0].reason


def test_default_team_not_among_enabled_teams(bundle_dir: Path) -> None:
    path = bundle_dir / "tenants" / "demo.yaml"
    replace(path, "default_team: interview", "default_team: veneo_chat")

    problems = problems_of(bundle_dir)

    assert len(problems) == 1
    problem = problems[0]
    assert problem.file == "personas/tenants/demo.yaml"
    assert "default_team 'veneo_chat' is not in enabled_teams" in problem.reason
    # the problem points at the offending field, not at the top of the file
    assert problem.field == "default_team"
    assert problem.line == line_of(path, "default_team")


def test_tenant_agent_override_that_breaks_a_persona_is_reported_in_the_tenant_file(bundle_dir: Path) -> None:
    path = bundle_dir / "tenants" / "veneo.yaml"
    replace(path, "temperature: 0.2", "temperature: 9")

    problems = problems_of(bundle_dir)

    assert [(p.file, p.line, p.field) for p in problems] == [
        (
            "personas/tenants/veneo.yaml",
            line_of(path, "temperature: 9"),
            "overrides.agents.primary_responder.model.temperature",
        )
    ]
    assert "less than or equal to 2" in problems[0].reason
    # the persona file itself is fine and must not be blamed
    assert not in_file(problems, "personas/agents/primary_responder.yaml")


def test_tenant_team_override_that_breaks_a_team_is_reported_in_the_tenant_file(bundle_dir: Path) -> None:
    path = bundle_dir / "tenants" / "demo.yaml"
    replace(path, "num_questions: 3", "num_questions: 0")

    problems = problems_of(bundle_dir)

    assert [(p.file, p.line, p.field) for p in problems] == [
        ("personas/tenants/demo.yaml", line_of(path, "num_questions"), "overrides.teams.interview.params.num_questions")
    ]
    assert "greater than or equal to 1" in problems[0].reason


def test_tenant_override_of_an_unknown_persona(bundle_dir: Path) -> None:
    path = bundle_dir / "tenants" / "veneo.yaml"
    replace(path, "    primary_responder:\n", "    primary_responderr:\n")

    problems = problems_of(bundle_dir)

    assert [(p.file, p.line, p.field) for p in problems] == [
        ("personas/tenants/veneo.yaml", line_of(path, "primary_responderr"), "overrides.agents.primary_responderr")
    ]
    assert "unknown agent persona" in problems[0].reason


def test_api_key_with_both_sha256_and_env(bundle_dir: Path) -> None:
    path = bundle_dir / "tenants" / "demo.yaml"
    digest = ApiKey.digest("tg-admin-key")
    replace(path, "    env: TEAMGRAPH_DEMO_ADMIN_KEY\n", f"    env: TEAMGRAPH_DEMO_ADMIN_KEY\n    sha256: {digest}\n")

    problems = problems_of(bundle_dir)

    assert [(p.file, p.line, p.field) for p in problems] == [
        ("personas/tenants/demo.yaml", line_of(path, "id: demo-admin"), "api_keys[1]")
    ]
    assert "exactly one of sha256" in problems[0].reason


def test_id_not_matching_the_file_name(bundle_dir: Path) -> None:
    path = bundle_dir / "tenants" / "veneo.yaml"
    replace(path, "id: veneo\n", "id: veneo_shop\n")

    problems = problems_of(bundle_dir)

    assert [(p.file, p.line, p.field) for p in problems] == [("personas/tenants/veneo.yaml", 1, "id")]
    assert "must match the file name 'veneo'" in problems[0].reason


def test_all_problems_of_several_files_are_reported_at_once(bundle_dir: Path) -> None:
    demo = bundle_dir / "tenants" / "demo.yaml"
    veneo = bundle_dir / "tenants" / "veneo.yaml"
    replace(demo, "num_questions: 3", "num_questions: lots")
    replace(veneo, "name: Veneo", "nmae: Veneo")

    with pytest.raises(BundleError) as info:
        load_bundles(bundle_dir, known_graphs=KNOWN_GRAPHS)

    problems = info.value.problems
    assert sorted((p.file, p.line, p.field) for p in problems) == [
        (
            "personas/tenants/demo.yaml",
            line_of(demo, "num_questions"),
            "overrides.teams.interview.params.num_questions",
        ),
        ("personas/tenants/veneo.yaml", line_of(veneo, "nmae"), "nmae"),
    ]
    message = str(info.value)
    assert "personas/tenants/demo.yaml" in message
    assert "personas/tenants/veneo.yaml" in message


def test_a_broken_persona_is_not_also_reported_as_unknown_by_its_team(bundle_dir: Path) -> None:
    """One mistake, one problem: the team that uses an invalid persona should not call it 'unknown'."""
    path = bundle_dir / "agents" / "evaluator.yaml"
    replace(path, "  temperature: 0.1", "  temperature: 5")

    problems = problems_of(bundle_dir)

    assert [(p.file, p.field) for p in problems] == [("personas/agents/evaluator.yaml", "model.temperature")]


def test_missing_bundle_directory(tmp_path: Path) -> None:
    with pytest.raises(BundleError) as info:
        load_bundles(tmp_path / "nowhere")

    assert "does not exist" in str(info.value)


# ---------------------------------------------------------------- the CLI

runner = CliRunner()
PROBLEM_LINE = re.compile(r"^(?P<file>\S+\.yaml):(?P<line>\d+): (?P<field>\S+): (?P<reason>.+)$")


def test_cli_validate_accepts_the_shipped_bundles() -> None:
    result = runner.invoke(app, ["personas", "validate", str(DEFAULT_BUNDLE_DIR)])

    assert result.exit_code == 0, result.output
    assert "ok: 7 agents, 2 teams, 2 tenants" in result.stdout


def test_cli_validate_prints_one_line_per_problem_and_exits_1(
    bundle_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(bundle_dir.parent)  # paths are printed relative to it
    evaluator = bundle_dir / "agents" / "evaluator.yaml"
    veneo = bundle_dir / "tenants" / "veneo.yaml"
    replace(evaluator, "  temperature: 0.1", "  temprature: 0.1")
    replace(veneo, "temperature: 0.2", "temperature: 9")

    result = runner.invoke(app, ["personas", "validate", str(bundle_dir)])

    assert result.exit_code == 1
    lines = [m.groupdict() for m in map(PROBLEM_LINE.match, result.stderr.splitlines()) if m]
    assert {
        "file": "personas/agents/evaluator.yaml",
        "line": str(line_of(evaluator, "temprature")),
        "field": "model.temprature",
        "reason": "Extra inputs are not permitted",
    } in lines
    assert {
        "file": "personas/tenants/veneo.yaml",
        "line": str(line_of(veneo, "temperature: 9")),
        "field": "overrides.agents.primary_responder.model.temperature",
        "reason": "Input should be less than or equal to 2",
    } in lines
    assert "problem(s) in" in result.stderr
    assert "ok:" not in result.output


def test_cli_schema_prints_json() -> None:
    result = runner.invoke(app, ["personas", "schema"])

    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)["kinds"]) == {"agents", "teams", "tenants"}


def test_teamgraph_executable_validates_bundles(bundle_dir: Path, tmp_path: Path) -> None:
    good = subprocess.run(
        [str(TEAMGRAPH), "personas", "validate"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith("ok: 7 agents, 2 teams, 2 tenants")

    path = bundle_dir / "tenants" / "demo.yaml"
    replace(path, "default_team: interview", "default_team: interview: again")
    bad = subprocess.run(
        [str(TEAMGRAPH), "personas", "validate", str(bundle_dir)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1
    assert f"personas/tenants/demo.yaml:{line_of(path, 'default_team')}: (file): not valid YAML" in bad.stderr
    assert bad.stdout == ""


def test_teamgraph_executable_prints_schema(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(TEAMGRAPH), "personas", "schema"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout)["kinds"]) == {"agents", "teams", "tenants"}


def test_cli_validate_reports_a_duplicate_key_with_file_and_line(
    bundle_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: YAML keeps the last of two equal keys without a word, so a copy-pasted block (a second
    `retention:`, here a second `params:`) silently changed the policy and `personas validate` said ok."""
    monkeypatch.chdir(bundle_dir.parent)  # paths are printed relative to it
    demo = bundle_dir / "tenants" / "demo.yaml"
    replace(demo, "        num_questions: 3\n", "        num_questions: 3\n      params:\n        num_questions: 8\n")
    result = runner.invoke(app, ["personas", "validate", str(bundle_dir)])
    assert result.exit_code == 1, result.output
    lines = [m.groupdict() for m in map(PROBLEM_LINE.match, result.stderr.splitlines()) if m]
    assert {
        "file": "personas/tenants/demo.yaml",
        "line": str(line_of(demo, "num_questions: 3") + 1),
        "field": "overrides.teams.interview.params",
        "reason": f"duplicate key 'params' (first at line {line_of(demo, 'num_questions: 3') - 1})",
    } in lines, result.stderr


def test_cli_validate_reports_an_impossible_date_with_file_and_line(
    bundle_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: `x: 2026-13-45` (YAML reads it as a date, month 13) was a ValueError traceback from
    `personas validate`: only YAML syntax errors were reported."""
    monkeypatch.chdir(bundle_dir.parent)
    demo = bundle_dir / "tenants" / "demo.yaml"
    demo.write_text(demo.read_text(encoding="utf-8") + "x: 2026-13-45\n", encoding="utf-8")
    result = runner.invoke(app, ["personas", "validate", str(bundle_dir)])
    assert result.exit_code == 1, result.output
    assert (
        f"personas/tenants/demo.yaml:{line_of(demo, 'x: 2026-13-45')}: (file): not valid YAML: '2026-13-45' is "
        "not a valid timestamp (month must be in 1..12); quote it to keep it as text" in result.stderr
    ), result.stderr


WARM_OVERRIDES = (
    "overrides:\n"
    "  agents:\n"
    "    evaluator:\n"
    "      model: &warm {{temperature: 0.2, max_tokens: 800}}\n"
    "    question_generator:\n"
    "      model: {{<<: *warm, {rest}}}\n"
    "  teams:\n"
)


def test_an_override_of_a_merged_key_is_not_a_duplicate(bundle_dir: Path) -> None:
    """Found in review: duplicates were looked for after PyYAML had flattened `<<` into the mapping, so the
    override `temperature: 0.5` next to `<<: *warm` (which brings temperature: 0.2) was 'duplicate key', exit 1,
    and the server refused bundles that loaded before. YAML says the mapping's own key wins."""
    demo = bundle_dir / "tenants" / "demo.yaml"
    replace(demo, "overrides:\n  teams:\n", WARM_OVERRIDES.format(rest="temperature: 0.5"))

    bundles = load_bundles(bundle_dir, known_graphs=KNOWN_GRAPHS)

    override = bundles.tenants["demo"].overrides.agents["question_generator"]["model"]
    assert override == {"temperature": 0.5, "max_tokens": 800}
    result = runner.invoke(app, ["personas", "validate", str(bundle_dir)])
    assert result.exit_code == 0, result.output


def test_a_duplicate_next_to_a_merge_is_still_reported(bundle_dir: Path) -> None:
    demo = bundle_dir / "tenants" / "demo.yaml"
    replace(demo, "overrides:\n  teams:\n", WARM_OVERRIDES.format(rest="temperature: 0.5, temperature: 0.7"))
    line = line_of(demo, "<<: *warm")

    problems = problems_of(bundle_dir)

    assert [(p.line, p.field, p.reason) for p in problems] == [
        (
            line,
            "overrides.agents.question_generator.model.temperature",
            f"duplicate key 'temperature' (first at line {line})",
        )
    ]


def test_a_repeated_merge_key_is_a_duplicate(bundle_dir: Path) -> None:
    demo = bundle_dir / "tenants" / "demo.yaml"
    replace(demo, "overrides:\n  teams:\n", WARM_OVERRIDES.format(rest="<<: *warm"))
    line = line_of(demo, "<<: *warm")

    problems = problems_of(bundle_dir)

    assert [(p.line, p.field, p.reason) for p in problems] == [
        (line, "overrides.agents.question_generator.model", f"duplicate key '<<' (first at line {line})")
    ]


@pytest.mark.parametrize(
    ("text", "duplicates"),
    [
        ("a:\n  1: x\n  '1': y\n", []),  # an int and a str: two keys, as safe_load gives them
        ("a:\n  1: x\n  0x1: y\n", [(3, "a.0x1", "duplicate key '0x1' (first at line 2)")]),  # both the int 1
        ("a: 1\nb: 2\na: 3\n", [(3, "a", "duplicate key 'a' (first at line 1)")]),
        ("- {x: 1}\n- {x: 2, x: 3}\n", [(2, "[1].x", "duplicate key 'x' (first at line 2)")]),
    ],
)
def test_duplicates_compare_keys_as_loaded(text: str, duplicates: list[tuple[int, str, str]]) -> None:
    from personas.loader import parse_yaml_checked

    _node, data, found = parse_yaml_checked(text)

    assert found == duplicates
    assert data == yaml.safe_load(text)


@pytest.mark.parametrize("source", ["environment", ".env"])
def test_cli_validate_checks_the_directory_the_server_reads(
    bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    """Found in review: with TEAMGRAPH_PERSONAS_DIR=/tmp/p2, `personas validate` checked ./personas and said ok
    while `teamgraph serve` refused /tmp/p2. It validates what the settings name, and prints paths that open from
    the working directory."""
    from server.settings import Settings

    demo = bundle_dir / "tenants" / "demo.yaml"
    replace(demo, "default_team: interview", "default_team: nosuch")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("TEAMGRAPH_PERSONAS_DIR", raising=False)
    if source == "environment":
        monkeypatch.setenv("TEAMGRAPH_PERSONAS_DIR", str(bundle_dir))
    else:
        (elsewhere / ".env").write_text(f"TEAMGRAPH_PERSONAS_DIR={bundle_dir}\n")
    assert Settings().personas_dir == bundle_dir  # what the server would read

    result = runner.invoke(app, ["personas", "validate"])

    assert result.exit_code == 1, result.output
    lines = [m.groupdict() for m in map(PROBLEM_LINE.match, result.stderr.splitlines()) if m]
    assert [(line["file"], line["field"]) for line in lines] == [(str(demo), "default_team")], result.stderr
    assert Path(lines[0]["file"]).resolve() == demo.resolve()
    assert f"1 problem(s) in {bundle_dir}" in result.stderr


def test_cli_validate_prints_paths_relative_to_the_working_directory_under_it(
    bundle_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    demo = bundle_dir / "tenants" / "demo.yaml"
    replace(demo, "default_team: interview", "default_team: nosuch")
    monkeypatch.chdir(bundle_dir)

    result = runner.invoke(app, ["personas", "validate", "."])

    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(f"tenants/demo.yaml:{line_of(demo, 'default_team')}: default_team: "), result.stderr


def test_a_tenant_with_a_bad_field_still_has_its_overrides_checked(bundle_dir: Path) -> None:
    """Found in review: a tenant file with a bad default_team and a bad override (temperature: hot) reported the
    first only; the README says every problem is listed. Its overrides are checked against the personas too."""
    demo = bundle_dir / "tenants" / "demo.yaml"
    replace(demo, "default_team: interview", "default_team: nosuch")
    replace(
        demo,
        "overrides:\n  teams:\n",
        "overrides:\n  agents:\n    evaluator:\n      model: {temperature: hot}\n  teams:\n",
    )

    problems = problems_of(bundle_dir)

    assert [(p.file, p.line, p.field) for p in problems] == [
        ("personas/tenants/demo.yaml", line_of(demo, "default_team"), "default_team"),
        (
            "personas/tenants/demo.yaml",
            line_of(demo, "temperature: hot"),
            "overrides.agents.evaluator.model.temperature",
        ),
    ], problems


@pytest.mark.parametrize("variable", ["TEAMGRAPH_OPENAI_API_KEY", "OPENAI_API_KEY", "TEAMGRAPH_PORT"])
def test_cli_validate_refuses_a_tenant_key_read_from_a_setting_variable(
    bundle_dir: Path, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    """Found in review: tenant `openai` with its key named by the README's rule, TEAMGRAPH_<TENANT>_API_KEY, reads
    TEAMGRAPH_OPENAI_API_KEY, the provider key setting's variable: the tenant's key would be sent to the provider
    and the provider key would open the tenant. A key variable that is a setting's is refused, file:line."""
    monkeypatch.chdir(bundle_dir.parent)
    tenant = bundle_dir / "tenants" / "openai.yaml"
    (bundle_dir / "tenants" / "demo.yaml").rename(tenant)
    replace(tenant, "id: demo\n", "id: openai\n")
    replace(tenant, "env: TEAMGRAPH_DEMO_ADMIN_KEY", f"env: {variable}")

    result = runner.invoke(app, ["personas", "validate", str(bundle_dir)])

    assert result.exit_code == 1, result.output
    lines = [m.groupdict() for m in map(PROBLEM_LINE.match, result.stderr.splitlines()) if m]
    assert [(line["file"], line["line"], line["field"]) for line in lines] == [
        ("personas/tenants/openai.yaml", str(line_of(tenant, f"env: {variable}")), "api_keys[1].env")
    ], result.stderr
    assert lines[0]["reason"].startswith(f"{variable} is a Teamgraph setting's variable")
    assert "TEAMGRAPH_OPENAI_TENANT_API_KEY" in lines[0]["reason"]


def test_the_server_refuses_a_tenant_key_read_from_a_setting_variable(bundle_dir: Path) -> None:
    """The same check where the server loads the bundles (create_app: `teamgraph serve`'s workers, uvicorn)."""
    from server.app import create_app
    from server.settings import Settings

    replace(bundle_dir / "tenants" / "demo.yaml", "env: TEAMGRAPH_DEMO_ADMIN_KEY", "env: TEAMGRAPH_OPENAI_API_KEY")

    with pytest.raises(BundleError) as info:
        create_app(Settings(_env_file=None, personas_dir=bundle_dir, checkpoint_url="memory://"))  # type: ignore[call-arg]

    assert [p.field for p in info.value.problems] == ["api_keys[1].env"]


def test_studio_logins_refuse_a_tenant_key_read_from_a_setting_variable(bundle_dir: Path) -> None:
    """Found in review: `langgraph dev` / Studio build their key ring from load_bundles_cached, which did not get
    the check, so with `env: TEAMGRAPH_OPENAI_API_KEY` the provider key logged in as that tenant's admin."""
    from server.studio_auth import studio_bundles

    replace(bundle_dir / "tenants" / "demo.yaml", "env: TEAMGRAPH_DEMO_ADMIN_KEY", "env: TEAMGRAPH_OPENAI_API_KEY")

    with pytest.raises(BundleError) as info:
        studio_bundles(str(bundle_dir))

    assert [p.field for p in info.value.problems] == ["api_keys[1].env"]
