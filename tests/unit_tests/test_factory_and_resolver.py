"""AgentFactory (persona -> chat model), AgentTeamResolver (tenant + team -> run config) and Configuration."""

from __future__ import annotations

import shutil
from pathlib import Path

import openai
import pytest
from langchain_openai import ChatOpenAI

from nodes.configuration import Configuration
from personas.factory import AgentFactory
from personas.loader import DEFAULT_BUNDLE_DIR, Bundles
from personas.resolver import (
    AgentTeamResolver,
    TeamNotEnabled,
    TeamResolutionError,
    TeamRunConfig,
    UnknownTeam,
    UnknownTenant,
)
from personas.schema import AgentPersona
from tests.fakes.models import FakeAgentFactory


def with_model(persona: AgentPersona, **changes: object) -> AgentPersona:
    return persona.model_copy(update={"model": persona.model.model_copy(update=changes)})


# ---------------------------------------------------------------- AgentFactory


def test_auto_provider_without_key_or_base_url_is_offline(bundles: Bundles) -> None:
    factory = AgentFactory()
    evaluator = bundles.agents["evaluator"]

    assert evaluator.model.provider == "auto"
    assert factory.provider_for(evaluator) == "offline"
    assert factory.chat_model(evaluator) is None
    assert factory.model_label(evaluator) == "offline"


def test_from_env_without_provider_variables_is_offline(bundles: Bundles) -> None:
    # conftest removes OPENAI_API_KEY / OPENAI_BASE_URL
    factory = AgentFactory.from_env()

    assert factory.chat_model(bundles.agents["primary_responder"]) is None


def test_from_env_with_an_api_key_uses_openai(bundles: Bundles, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    factory = AgentFactory.from_env()

    model = factory.chat_model(bundles.agents["primary_responder"])

    assert isinstance(model, ChatOpenAI)
    assert model.openai_api_key is not None
    assert model.openai_api_key.get_secret_value() == "sk-from-env"


@pytest.mark.parametrize("agent", ["evaluator", "question_generator", "primary_responder", "safety_reviewer"])
def test_api_key_gives_chat_openai_configured_like_the_persona(bundles: Bundles, agent: str) -> None:
    persona = bundles.agents[agent]
    factory = AgentFactory(api_key="sk-test")

    model = factory.chat_model(persona)

    assert isinstance(model, ChatOpenAI)
    assert model.model_name == persona.model.name
    assert model.temperature == persona.model.temperature
    assert model.max_tokens == persona.model.max_tokens
    assert model.request_timeout == persona.model.timeout_s
    assert model.max_retries == persona.model.max_retries
    assert model.openai_api_key is not None
    assert model.openai_api_key.get_secret_value() == "sk-test"
    assert factory.model_label(persona) == persona.model.name


def test_persona_settings_reach_the_model_exactly(bundles: Bundles) -> None:
    persona = with_model(
        bundles.agents["evaluator"], name="llama3.1:8b", temperature=1.3, max_tokens=77, timeout_s=4.5, max_retries=3
    )

    model = AgentFactory(api_key="sk-test").chat_model(persona)

    assert isinstance(model, ChatOpenAI)
    assert (model.model_name, model.temperature, model.max_tokens, model.request_timeout, model.max_retries) == (
        "llama3.1:8b",
        1.3,
        77,
        4.5,
        3,
    )


def test_persona_base_url_is_honoured_and_wins_over_the_factory_one(bundles: Bundles) -> None:
    persona = with_model(bundles.agents["primary_responder"], base_url="http://127.0.0.1:11434/v1")

    alone = AgentFactory().chat_model(persona)
    with_factory_url = AgentFactory(api_key="sk-test", base_url="http://factory.example/v1").chat_model(persona)

    assert isinstance(alone, ChatOpenAI)
    assert alone.openai_api_base == "http://127.0.0.1:11434/v1"
    assert isinstance(with_factory_url, ChatOpenAI)
    assert with_factory_url.openai_api_base == "http://127.0.0.1:11434/v1"


def test_factory_base_url_without_key_uses_a_placeholder_key(bundles: Bundles) -> None:
    persona = bundles.agents["chat_summarizer"]
    factory = AgentFactory(base_url="http://127.0.0.1:8000/v1")

    model = factory.chat_model(persona)

    assert factory.provider_for(persona) == "openai"
    assert isinstance(model, ChatOpenAI)
    assert model.openai_api_base == "http://127.0.0.1:8000/v1"
    assert model.openai_api_key is not None
    assert model.openai_api_key.get_secret_value()  # the SDK refuses an empty key
    assert factory.model_label(persona) == "gpt-4o-mini"


def test_same_settings_share_one_cached_model_and_different_settings_do_not(bundles: Bundles) -> None:
    factory = AgentFactory(api_key="sk-test")
    evaluator = bundles.agents["evaluator"]

    first = factory.chat_model(evaluator)
    again = factory.chat_model(bundles.agents["evaluator"])
    hotter = factory.chat_model(with_model(evaluator, temperature=0.9))

    assert first is again
    assert hotter is not first
    assert isinstance(hotter, ChatOpenAI)
    assert hotter.temperature == 0.9


def test_offline_provider_stays_offline_even_with_a_key(bundles: Bundles) -> None:
    scorer = bundles.agents["fallback_scorer"]
    factory = AgentFactory(api_key="sk-test", base_url="http://127.0.0.1:8000/v1")

    assert scorer.model.provider == "offline"
    assert factory.chat_model(scorer) is None
    assert factory.model_label(scorer) == "offline"


def test_openai_provider_without_a_key_still_builds_a_model(bundles: Bundles) -> None:
    """provider: openai is explicit; the factory must not silently fall back to offline."""
    persona = with_model(bundles.agents["evaluator"], provider="openai")

    assert AgentFactory().provider_for(persona) == "openai"
    assert AgentFactory().model_label(persona) == "gpt-4o-mini"
    with pytest.raises(openai.OpenAIError, match="api_key"):
        AgentFactory().chat_model(persona)


# ---------------------------------------------------------------- AgentTeamResolver


def test_demo_resolves_to_interview_with_its_override(resolver: AgentTeamResolver, bundles: Bundles) -> None:
    run = resolver.resolve("demo")

    assert run.tenant == "demo"
    assert run.team.id == "interview"
    assert run.team.params.num_questions == 3
    # the override changes only what it names; the rest of the team is the bundle's
    assert run.team.params.rubric == bundles.teams["interview"].params.rubric
    assert bundles.teams["interview"].params.num_questions == 5
    assert {node: p.id for node, p in run.agents.items()} == {
        "question_generator": "question_generator",
        "evaluator": "evaluator",
        "fallback_scorer": "fallback_scorer",
        "summarizer": "interview_summarizer",
    }
    assert run.knowledge_path is None


def test_veneo_default_team_with_persona_override(resolver: AgentTeamResolver, bundles: Bundles) -> None:
    run = resolver.resolve("veneo")

    assert run.team.id == "veneo_chat"
    responder = run.persona("primary_responder")
    assert responder.model.temperature == 0.2
    # deep merge: the rest of the persona's model settings and prompts are kept
    assert responder.model.max_tokens == 600
    assert responder.model.name == "gpt-4o-mini"
    prompts = bundles.agents["primary_responder"].prompts  # {tenant_name} filled; not_found is Veneo's own
    assert responder.prompts["system"] == prompts["system"].replace("{tenant_name}", "Veneo")
    assert (
        responder.prompts["not_found"]
        == bundles.tenants["veneo"].overrides.agents["primary_responder"]["prompts"]["not_found"]
    )
    assert bundles.agents["primary_responder"].model.temperature == 0.3
    reviewer, shipped = run.persona("safety_reviewer"), bundles.agents["safety_reviewer"]
    assert reviewer.model_dump(exclude={"safety"}) == shipped.model_dump(exclude={"safety"})
    assert reviewer.safety.pii_allow == ["support@veneo.example"]  # Veneo's own address, in its bundle
    assert reviewer.safety.refusal_message == shipped.safety.refusal_message.replace("{tenant_name}", "Veneo")
    assert reviewer.safety.model_dump(exclude={"pii_allow", "refusal_message"}) == shipped.safety.model_dump(
        exclude={"pii_allow", "refusal_message"}
    )
    assert run.knowledge_path == str(DEFAULT_BUNDLE_DIR / "knowledge" / "veneo.md")


def test_veneo_may_also_use_interview_without_demo_overrides(resolver: AgentTeamResolver) -> None:
    run = resolver.resolve("veneo", "interview")

    assert run.team.id == "interview"
    assert run.team.params.num_questions == 5


def test_team_not_enabled_for_tenant_is_403(resolver: AgentTeamResolver) -> None:
    with pytest.raises(TeamNotEnabled) as info:
        resolver.resolve("demo", "veneo_chat")

    assert info.value.status == 403
    assert "'veneo_chat'" in str(info.value)
    assert "'demo'" in str(info.value)
    assert (info.value.tenant, info.value.team) == ("demo", "veneo_chat")


def test_unknown_team_is_404(resolver: AgentTeamResolver) -> None:
    with pytest.raises(UnknownTeam) as info:
        resolver.resolve("veneo", "sales")

    assert info.value.status == 404
    assert "'sales'" in str(info.value)


def test_unknown_tenant_is_404(resolver: AgentTeamResolver) -> None:
    with pytest.raises(UnknownTenant) as info:
        resolver.resolve("acme", "interview")

    assert info.value.status == 404
    assert "'acme'" in str(info.value)


def test_session_team_wins_over_the_default(resolver: AgentTeamResolver) -> None:
    run = resolver.resolve("veneo", None, {"team": "interview", "thread_id": "t1"})

    assert run.team.id == "interview"


def test_session_team_matching_the_request_is_fine(resolver: AgentTeamResolver) -> None:
    assert resolver.resolve("veneo", "interview", {"team": "interview"}).team.id == "interview"


def test_session_of_another_team_refuses_the_request(resolver: AgentTeamResolver) -> None:
    with pytest.raises(TeamResolutionError) as info:
        resolver.resolve("veneo", "veneo_chat", {"team": "interview"})

    assert "'interview'" in str(info.value)
    assert "'veneo_chat'" in str(info.value)
    assert 400 <= info.value.status < 500


def test_session_cannot_smuggle_in_a_team_the_tenant_lacks(resolver: AgentTeamResolver) -> None:
    with pytest.raises(TeamNotEnabled):
        resolver.resolve("demo", None, {"team": "veneo_chat"})


def test_unmapped_node_is_a_clear_key_error(resolver: AgentTeamResolver) -> None:
    with pytest.raises(KeyError, match=r"interview.*safety_reviewer"):
        resolver.resolve("demo").persona("safety_reviewer")


# ---------------------------------------------------------------- Configuration.from_runnable_config


def test_configuration_from_server_built_config(resolver: AgentTeamResolver) -> None:
    run = resolver.resolve("veneo")
    factory = FakeAgentFactory()

    cfg = Configuration.from_runnable_config(
        {
            "configurable": {
                "thread_id": "t-1",
                "tenant": "veneo",
                "team": "veneo_chat",
                "team_run_config": run,
                "agent_factory": factory,
            }
        }
    )

    assert cfg.run is run
    assert cfg.agent_factory is factory
    assert (cfg.tenant, cfg.team, cfg.thread_id) == ("veneo", "veneo_chat", "t-1")
    assert cfg.persona("primary_responder").model.temperature == 0.2
    assert cfg.params.memory.max_messages == 16
    assert cfg.model("primary_responder") is None
    assert cfg.model_label("primary_responder") == "offline"


def test_configuration_accepts_a_serialised_run_config(resolver: AgentTeamResolver) -> None:
    run = resolver.resolve("demo")

    cfg = Configuration.from_runnable_config({"configurable": {"team_run_config": run.model_dump()}})

    assert isinstance(cfg.run, TeamRunConfig)
    assert cfg.run == run
    assert cfg.params.num_questions == 3


def test_configuration_resolves_from_bundles_with_only_team_and_tenant() -> None:
    """Under `langgraph dev` only tenant and team arrive; the tenant override must still apply."""
    cfg = Configuration.from_runnable_config({"configurable": {"team": "interview", "tenant": "demo"}})

    assert (cfg.tenant, cfg.team) == ("demo", "interview")
    assert cfg.params.num_questions == 3
    assert cfg.persona("summarizer").id == "interview_summarizer"
    assert isinstance(cfg.agent_factory, AgentFactory)


def test_configuration_picks_a_tenant_enabling_the_graph_when_none_is_given() -> None:
    cfg = Configuration.from_runnable_config({"configurable": {}, "metadata": {"graph_id": "veneo_chat"}})

    assert (cfg.tenant, cfg.team) == ("veneo", "veneo_chat")
    assert cfg.persona("primary_responder").model.temperature == 0.2


def test_configuration_reads_another_bundle_dir(tmp_path: Path) -> None:
    root = tmp_path / "personas"
    for kind in ("agents", "teams", "tenants", "knowledge"):
        shutil.copytree(DEFAULT_BUNDLE_DIR / kind, root / kind)
    demo = root / "tenants" / "demo.yaml"
    demo.write_text(demo.read_text().replace("num_questions: 3", "num_questions: 7"))

    cfg = Configuration.from_runnable_config(
        {"configurable": {"team": "interview", "tenant": "demo", "bundle_dir": str(root)}}
    )

    assert cfg.params.num_questions == 7


def test_configuration_refuses_a_team_the_tenant_lacks() -> None:
    with pytest.raises(TeamNotEnabled):
        Configuration.from_runnable_config({"configurable": {"team": "veneo_chat", "tenant": "demo"}})


@pytest.mark.parametrize("config", [None, {}, {"configurable": {"tenant": "demo"}}])
def test_configuration_without_a_team_is_a_clear_error(config: dict | None) -> None:
    with pytest.raises(ValueError, match=r"config\['configurable'\]\['team'\] is required"):
        Configuration.from_runnable_config(config)  # type: ignore[arg-type]
