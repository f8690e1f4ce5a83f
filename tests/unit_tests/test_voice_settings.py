"""Voice settings in the bundles (schema, layering, validation), speech metrics, delivery feedback, and the one
function that composes a realtime session config. Pure: no provider, no database."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from nodes.evaluation_format import delivery_feedback
from personas.loader import DEFAULT_BUNDLE_DIR, BundleError, load_bundles
from personas.resolver import AgentTeamResolver
from personas.schema import AgentPersona, TeamBundle, TurnDetectionSettings, VoiceSettings, json_schema
from personas.voice import CATALOG_FILE, effective_voice, load_catalog
from server.voice.realtime import compose_realtime_session, turn_detection_param
from server.voice.transcripts import TranscriptItem, VoiceState, VoiceTurn, speech_metrics

QUESTIONS = [
    {"text": "Tell me about a migration you led.", "type": "behavioral", "difficulty": "medium", "skill": "x"},
    {
        "text": "How would you size a Kafka cluster for our event volume?",
        "type": "technical",
        "difficulty": "hard",
        "skill": "kafka",
    },
]


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    root = tmp_path / "personas"
    for kind in ("agents", "teams", "tenants", "knowledge"):
        shutil.copytree(DEFAULT_BUNDLE_DIR / kind, root / kind)
    return root


def edit_yaml(path: Path, change: Any) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def voice_of(bundles: Any, tenant: str, team: str) -> Any:
    return effective_voice(bundles, load_catalog(bundles.root), AgentTeamResolver(bundles).resolve(tenant, team))


def problems_of(root: Path) -> list[str]:
    with pytest.raises(BundleError) as err:
        load_bundles(root)
    return [str(p) for p in err.value.problems]


# ---- schema ----------------------------------------------------------------------------------------------------


def test_voice_blocks_are_part_of_every_bundle_kind_and_its_json_schema() -> None:
    kinds = json_schema()["kinds"]
    for kind in ("agents", "teams", "tenants"):
        assert "voice" in kinds[kind]["properties"], kind
    team_voice = TeamBundle.model_json_schema()["$defs"]["TeamVoiceSettings"]["properties"]
    assert {
        "realtime_model",
        "default_voice",
        "allowed_voices",
        "speed",
        "instructions",
        "turn_detection",
        "transcription",
        "preview_model",
        "speaker",
    } <= set(team_voice)


def test_voice_settings_are_strict() -> None:
    with pytest.raises(ValidationError, match="voice listed twice"):
        VoiceSettings(allowed_voices=["marin", "marin"])
    with pytest.raises(ValidationError, match="not in allowed_voices"):
        VoiceSettings(default_voice="ash", allowed_voices=["marin"])
    with pytest.raises(ValidationError):
        VoiceSettings(speed=3.0)
    with pytest.raises(ValidationError):
        VoiceSettings.model_validate({"voices": ["marin"]})  # a typo never silently does nothing
    with pytest.raises(ValidationError):
        AgentPersona.model_validate({"id": "x", "role": "r", "voice": {"speaker": "x"}})  # teams only
    # a list alone is fine: the default may come from another level
    assert VoiceSettings(allowed_voices=["sage"]).allowed_voices == ["sage"]


# ---- layering --------------------------------------------------------------------------------------------------


def test_bundled_teams_get_their_persona_team_and_tenant_voice(bundles: Any) -> None:
    demo = voice_of(bundles, "demo", "interview")
    assert demo.speaker == "question_generator"
    assert demo.default_voice == "cedar"  # the interviewer persona's voice
    assert demo.allowed == tuple(load_catalog().ids)  # demo restricts nothing
    assert demo.settings.turn_detection.eagerness == "low"
    assert demo.settings.turn_detection.create_response is False
    assert "{interview_status}" in demo.settings.instructions

    chat = voice_of(bundles, "veneo", "veneo_chat")
    assert chat.speaker == "primary_responder"
    assert chat.default_voice == "coral"  # the tenant's override of its chat team
    assert chat.allowed == ("marin", "cedar", "coral", "sage")  # the tenant's allow-list, catalog order
    assert "{safety_rules}" in chat.settings.instructions

    veneo_interview = voice_of(bundles, "veneo", "interview")
    assert veneo_interview.default_voice == "cedar"
    assert veneo_interview.allowed == ("marin", "cedar", "coral", "sage")


def test_layers_apply_general_to_specific_and_allow_lists_only_narrow(bundle_dir: Path) -> None:
    def team(data: dict[str, Any]) -> None:
        data["voice"].update(realtime_model="team-model", speed=1.1, allowed_voices=["sage", "cedar", "verse", "ash"])

    def tenant(data: dict[str, Any]) -> None:
        data["voice"] = {"speed": 1.2, "transcription": {"language": "en"}}
        data["voice"]["allowed_voices"] = ["sage", "verse", "marin"]
        data["overrides"] = {
            "teams": {"interview": {"voice": {"default_voice": "verse", "turn_detection": {"type": "server_vad"}}}}
        }

    edit_yaml(bundle_dir / "teams" / "interview.yaml", team)
    edit_yaml(bundle_dir / "tenants" / "demo.yaml", tenant)
    voice = voice_of(load_bundles(bundle_dir), "demo", "interview")
    assert voice.settings.realtime_model == "team-model"  # team beats the schema default
    assert voice.settings.speed == 1.2  # tenant beats team
    assert voice.default_voice == "verse"  # tenant's team override beats the persona's cedar
    assert voice.allowed == ("sage", "verse")  # team list ∩ tenant list; marin was never allowed by the team
    td = voice.settings.turn_detection
    assert (td.type, td.eagerness, td.create_response) == ("server_vad", "low", False)  # nested blocks merge
    assert voice.settings.transcription.language == "en"


def test_voice_problems_name_file_line_and_field(bundle_dir: Path) -> None:
    def tenant(data: dict[str, Any]) -> None:
        data["voice"] = {"allowed_voices": ["marin", "sage", "robot"]}

    def team(data: dict[str, Any]) -> None:
        data["voice"]["speaker"] = "nobody"

    edit_yaml(bundle_dir / "tenants" / "demo.yaml", tenant)
    edit_yaml(bundle_dir / "teams" / "veneo_chat.yaml", team)
    problems = problems_of(bundle_dir)
    assert any(
        p.startswith("personas/tenants/demo.yaml:") and "voice.allowed_voices[2]: unknown voice 'robot'" in p
        for p in problems
    ), problems
    assert any(
        p.startswith("personas/tenants/demo.yaml:")
        and "voice.allowed_voices: excludes the default voice 'cedar' set at personas/agents/question_generator.yaml:"
        in p
        for p in problems
    ), problems
    assert any(
        p.startswith("personas/teams/veneo_chat.yaml:") and "voice.speaker: 'nobody' is not a node" in p
        for p in problems
    ), problems


def test_a_tenant_override_is_checked_after_layering(bundle_dir: Path) -> None:
    def tenant(data: dict[str, Any]) -> None:
        data["overrides"]["teams"]["veneo_chat"]["voice"]["default_voice"] = "ash"  # not a Veneo brand voice

    edit_yaml(bundle_dir / "tenants" / "veneo.yaml", tenant)
    (problem,) = problems_of(bundle_dir)
    assert problem.startswith("personas/tenants/veneo.yaml:")
    assert "overrides.teams.veneo_chat.voice.default_voice: voice 'ash' is not allowed for team 'veneo_chat'" in problem

    def invalid(data: dict[str, Any]) -> None:
        data["overrides"]["teams"]["veneo_chat"]["voice"] = {"speed": 9}

    edit_yaml(bundle_dir / "tenants" / "veneo.yaml", invalid)
    (problem,) = problems_of(bundle_dir)  # the same re-validation as every other override
    assert "overrides.teams.veneo_chat.voice.speed" in problem


def test_a_duplicate_key_in_the_voice_catalog_is_reported(bundle_dir: Path) -> None:
    """Found in review: voice_catalog.yaml was read without the duplicate-key check every bundle file has: a
    second `name:` silently replaced the first."""
    (bundle_dir / CATALOG_FILE).write_text(
        "voices:\n  - {id: marin, name: Marin}\n  - id: cedar\n    name: Cedar\n    name: Other\n"
    )
    assert any(
        p.startswith("personas/voice_catalog.yaml:5: voices[1].name: duplicate key 'name' (first at line 4)")
        for p in problems_of(bundle_dir)
    ), problems_of(bundle_dir)


def test_a_bundle_directory_may_bring_its_own_catalog(bundle_dir: Path) -> None:
    assert load_catalog(bundle_dir).ids == load_catalog().ids  # none of its own: the bundled one
    (bundle_dir / CATALOG_FILE).write_text("voices:\n  - {id: marin, name: Marin}\n  - {id: marin, name: Again}\n")
    assert any(
        "personas/voice_catalog.yaml:1: voices: Value error, voice id listed twice" in p
        for p in problems_of(bundle_dir)
    )
    (bundle_dir / CATALOG_FILE).write_text(
        "voices:\n  - {id: marin, name: Marin}\n  - {id: cedar, name: Cedar}\n"
        "  - {id: house, name: House voice, provider_voice: voice_1234}\n"
        "  - {id: sage, name: Sage}\n"
    )
    problems = problems_of(bundle_dir)  # veneo allows coral, which this catalog lacks
    assert any("voice.allowed_voices" in p and "unknown voice 'coral'" in p for p in problems), problems


# ---- speech metrics and delivery feedback ---------------------------------------------------------------------


def test_speech_metrics_count_words_pace_and_fillers() -> None:
    text = "Um, so at Acme I, like, moved batch jobs to Airflow. Uh, you know, it cut failures by 70%."
    m = speech_metrics(text, 10.0)
    assert m["words"] == 19
    assert m["wpm"] == 114.0
    assert m["filler_words"] == {"um": 1, "like": 1, "uh": 1, "you know": 1}
    assert m["fillers"] == 4
    # "like" and "you know" as ordinary words are not fillers; a short item has no pace
    plain = speech_metrics("I would like to know if you know Kafka.", 1.5)
    assert (plain["fillers"], plain["wpm"]) == (0, None)


def test_delivery_feedback_names_pace_and_fillers_with_tips() -> None:
    line, tips = delivery_feedback({"wpm": 142.0, "fillers": 1, "filler_words": {"um": 1}})
    assert line == "Delivery: 142 words per minute (a comfortable pace), 1 filler word (um x1)."
    assert tips == []
    line, tips = delivery_feedback({"wpm": 195.0, "fillers": 4, "filler_words": {"um": 3, "like": 1}})
    assert "195 words per minute (fast)" in line and "4 filler words (um x3, like x1)" in line
    assert any("Slow down" in t for t in tips) and any("filler" in t for t in tips)
    line, tips = delivery_feedback({"wpm": None, "fillers": 0, "filler_words": {}})
    assert line == "Delivery: 0 filler words."


def test_voice_state_stays_bounded_while_totals_grow() -> None:
    state = VoiceState()
    for i in range(30):
        item = TranscriptItem(
            id=f"i{i}",
            role="user" if i % 2 else "assistant",
            text="hello there",
            started_at=1_700_000_000 + i * 10,
            ended_at=1_700_000_000 + i * 10 + 4,
        )
        turn = VoiceTurn(
            item_id=item.id,
            role=item.role,
            started_at=item.started_at,
            ended_at=item.ended_at,
            duration_s=item.seconds,
            words=2,
        )
        state = state.add(turn, keep=8)
    assert len(state.recent) == 8 and state.recent[-1].item_id == "i29"
    assert (state.totals.user_items, state.totals.assistant_items) == (15, 15)
    assert state.totals.user_speaking_s == 60.0 and state.totals.user_wpm == 30.0
    assert state.last_started_at is not None and state.last_started_at.timestamp() == 1_700_000_290


def test_transcript_items_validate_times() -> None:
    with pytest.raises(ValidationError, match="ended_at is before started_at"):
        TranscriptItem(id="a", role="user", text="x", started_at="2025-01-01T10:05:00Z", ended_at="2025-01-01T10:00Z")
    item = TranscriptItem(id="a", role="user", text="x", started_at=1_735_725_600_000, ended_at="2025-01-01T10:00:03")
    assert item.seconds == 3.0  # epoch milliseconds and a naive ISO time (UTC) mix


# ---- the realtime session config ------------------------------------------------------------------------------


def test_interview_session_config_carries_persona_role_and_current_question(bundles: Any) -> None:
    run = AgentTeamResolver(bundles).resolve("demo", "interview")
    voice = voice_of(bundles, "demo", "interview")
    catalog = load_catalog()
    state = {"role": "Data Engineer", "questions": QUESTIONS, "current": 1, "phase": "asking"}
    config = compose_realtime_session(voice, run, state, catalog.get("sage"))  # type: ignore[arg-type]
    assert config["type"] == "realtime" and config["model"] == "gpt-realtime-2.1-mini"
    assert config["audio"]["output"] == {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "sage", "speed": 1.0}
    assert config["audio"]["input"]["transcription"] == {"model": "gpt-4o-mini-transcribe"}
    assert config["audio"]["input"]["turn_detection"] == {
        "type": "semantic_vad",
        "eagerness": "low",
        "create_response": False,
        "interrupt_response": True,
    }
    assert config["max_output_tokens"] == 1200  # the interviewer persona's max_tokens
    instructions = config["instructions"]
    assert "You are the interviewer in a spoken mock interview. The role: Data Engineer." in instructions
    assert "Current question (2 of 2, technical, hard): How would you size a Kafka cluster" in instructions
    assert "do not answer it yourself".lower() in instructions.lower()
    assert "{" not in instructions  # every placeholder filled

    before = compose_realtime_session(voice, run, {}, catalog.get("cedar"))  # type: ignore[arg-type]
    assert "has not started yet" in before["instructions"] and "not stated" in before["instructions"]
    done = compose_realtime_session(voice, run, {**state, "phase": "done"}, catalog.get("cedar"))  # type: ignore[arg-type]
    assert "The interview is over" in done["instructions"]


def test_chat_session_config_carries_system_prompt_and_safety_rules(bundles: Any) -> None:
    run = AgentTeamResolver(bundles).resolve("veneo", "veneo_chat")
    voice = voice_of(bundles, "veneo", "veneo_chat")
    config = compose_realtime_session(
        voice, run, {"rolling_summary": "asked about returns"}, load_catalog().get("coral")
    )  # type: ignore[arg-type]
    instructions = config["instructions"]
    assert instructions.startswith("You are Veneo's friendly assistant.")
    assert "Summary of earlier conversation: asked about returns" in instructions
    assert "Do not help with these topics: weapons, self harm, medical advice." in instructions
    assert "except support@veneo.example" in instructions
    assert "Sorry, I can't help with that. I'm happy to help with questions about Veneo." in instructions
    assert config["audio"]["output"]["voice"] == "coral"
    assert config["audio"]["input"]["turn_detection"]["create_response"] is False  # reviewed replies only
    assert config["max_output_tokens"] == 600


def test_turn_detection_modes() -> None:
    assert turn_detection_param(TurnDetectionSettings(type="none")) is None
    server = turn_detection_param(TurnDetectionSettings(type="server_vad", silence_duration_ms=900))
    assert server == {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 900,
        "create_response": True,
        "interrupt_response": True,
    }
