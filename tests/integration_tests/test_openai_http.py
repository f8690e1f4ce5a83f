"""The ChatOpenAI the AgentFactory builds, exercised over real HTTP against the local OpenAI-compatible server."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import HumanMessage

from nodes.evaluator import evaluator
from nodes.fallback_scorer import fallback_scorer
from personas.factory import AgentFactory
from personas.resolver import AgentTeamResolver, TeamRunConfig
from tests.conftest import open_engine
from tests.fakes.openai_server import Error, FakeOpenAIServer, Reply, Slow, Structured

QUESTION = {
    "text": "Tell me about a time you improved a Kafka pipeline.",
    "type": "behavioral",
    "difficulty": "medium",
    "skill": "Kafka",
}
ANSWER = "When I was at Acme I led the redesign of our Kafka pipeline; as a result latency dropped 40%."
EVALUATION = {
    "scores": [
        {"criterion": c, "score": s}
        for c, s in [("relevance", 4), ("structure", 5), ("specificity", 3), ("impact", 4), ("communication", 4)]
    ],
    "overall": 4.0,
    "strengths": ["Clear STAR structure"],
    "improvements": ["Say what you measured"],
    "example_answer": "Situation: our pipeline lagged... Result: latency fell by 40% within a month.",
}


def with_evaluator_model(run: TeamRunConfig, **changes: Any) -> TeamRunConfig:
    persona = run.agents["evaluator"]
    persona = persona.model_copy(update={"model": persona.model.model_copy(update=changes)})
    return run.model_copy(update={"agents": {**run.agents, "evaluator": persona}})


def config_for(run: TeamRunConfig, factory: AgentFactory) -> dict[str, Any]:
    return {
        "configurable": {
            "thread_id": "t",
            "tenant": run.tenant,
            "team": run.team.id,
            "team_run_config": run,
            "agent_factory": factory,
        }
    }


def interview_state() -> dict[str, Any]:
    return {
        "messages": [HumanMessage(ANSWER)],
        "questions": [QUESTION],
        "current": 0,
        "evaluations": [],
        "job_description": "Senior Data Engineer: Kafka, Python",
        "role": "Senior Data Engineer",
    }


@pytest.fixture
def factory(fake_openai: FakeOpenAIServer) -> AgentFactory:
    return AgentFactory(api_key="sk-test-not-real", base_url=fake_openai.base_url)


async def test_evaluator_sends_persona_settings_over_http(fake_openai, factory, resolver: AgentTeamResolver) -> None:
    run = resolver.resolve("demo", "interview")
    fake_openai.enqueue(Structured(EVALUATION))
    update = await evaluator(interview_state(), config_for(run, factory))

    evaluation = update["evaluations"][0]
    assert evaluation["scored_by"] == "gpt-4o-mini"
    assert evaluation["scores"]["structure"] == 5
    body = fake_openai.last_request
    persona = run.agents["evaluator"].model
    assert body["model"] == persona.name
    assert body["temperature"] == persona.temperature
    # langchain-openai sends the token limit under OpenAI's current name
    assert body["max_completion_tokens"] == persona.max_tokens
    assert body["response_format"]["type"] == "json_schema"
    assert ANSWER in str(body["messages"])


async def test_structured_output_by_tool_call(fake_openai, factory, resolver: AgentTeamResolver) -> None:
    run = with_evaluator_model(resolver.resolve("demo", "interview"), structured_output="function_calling")
    fake_openai.enqueue(Structured(EVALUATION))
    update = await evaluator(interview_state(), config_for(run, factory))

    assert update["evaluations"][0]["overall"] == 4.0
    body = fake_openai.last_request
    assert body["tools"][0]["function"]["name"] == "EvaluationOutput"
    assert "response_format" not in body


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        (Error(500, "upstream exploded"), "HTTP 500"),
        (Error(429, "slow down", retry_after=0.01), "HTTP 429"),
        (Slow(3.0, Reply("too late")), "timeout"),
        (Reply("I think this answer is quite good overall!"), "ValidationError"),
    ],
    ids=["500", "429", "timeout", "junk"],
)
async def test_evaluator_falls_back(fake_openai, factory, resolver: AgentTeamResolver, behaviour, reason) -> None:
    # the 0.5 s limit is what the timeout case tests; the others get time to answer on a loaded machine (a 500
    # reported as "timeout" was a flake of a full run)
    timeout_s = 0.5 if isinstance(behaviour, Slow) else 10.0
    run = with_evaluator_model(resolver.resolve("demo", "interview"), timeout_s=timeout_s, max_retries=0)
    fake_openai.set_default(behaviour)
    config = config_for(run, factory)
    state = interview_state()

    update = await evaluator(state, config)
    assert "evaluations" not in update
    assert reason in update["evaluator_error"] or (reason == "ValidationError" and "Error" in update["evaluator_error"])

    scored = await fallback_scorer({**state, **update}, config)
    evaluation = scored["evaluations"][0]
    assert evaluation["scored_by"] == "fallback"
    assert evaluation["fallback_reason"] == update["evaluator_error"]
    assert set(evaluation["scores"]) == {c.name for c in run.team.params.rubric}


async def test_retries_honour_persona_max_retries(fake_openai, factory, resolver: AgentTeamResolver) -> None:
    run = with_evaluator_model(resolver.resolve("demo", "interview"), max_retries=1)
    fake_openai.enqueue(Error(500), Structured(EVALUATION))
    update = await evaluator(interview_state(), config_for(run, factory))
    assert update["evaluations"][0]["scored_by"] == "gpt-4o-mini"
    assert len(fake_openai.requests) == 2


async def test_interview_over_http_streams_summary_tokens(fake_openai, tmp_path) -> None:
    """A whole interview through the engine: questions and scores by the model, the summary streamed as SSE."""
    questions = {
        "questions": [
            {
                "text": "Tell me about a Kafka pipeline you improved.",
                "type": "behavioral",
                "difficulty": "medium",
                "skill": "Kafka",
            },
            {
                "text": "How do you test Airflow DAGs before release?",
                "type": "technical",
                "difficulty": "hard",
                "skill": "Airflow",
            },
        ]
    }
    narrative = "You gave structured answers with clear results. Next, quantify your impact more often."
    # the evaluator persona retries once (max_retries: 1), so the second answer meets two 500s
    fake_openai.enqueue(Structured(questions), Structured(EVALUATION), Error(500), Error(500), Reply(narrative))
    factory = AgentFactory(api_key="sk-test-not-real", base_url=fake_openai.base_url)
    async with open_engine(f"sqlite:///{tmp_path}/tg.db", factory) as engine:
        session = await engine.create_session("demo", "interview")
        state = await engine.run_turn(
            session,
            {"resume": "Jane, data engineer, Kafka and Airflow.", "messages": [{"role": "user", "content": "Start"}]},
        )
        assert [q["text"] for q in state["questions"]] == [q["text"] for q in questions["questions"]]
        assert state["questions_by"] == "gpt-4o-mini"

        await engine.run_turn(session, {"messages": [{"role": "user", "content": ANSWER}]})
        events = [
            e
            async for e in engine.stream_turn(
                session,
                {
                    "messages": [
                        {
                            "role": "user",
                            "content": "I write unit tests for each operator and run the DAG in a staging run.",
                        }
                    ]
                },
            )
        ]
        state = await engine.state(session)

    assert [e["scored_by"] for e in state["evaluations"]] == ["gpt-4o-mini", "fallback"]
    tokens = [e.text for e in events if e.kind == "token" and e.node == "summarizer"]
    assert len(tokens) > 3 and "".join(tokens).strip() == narrative
    assert state["summary"]["narrative"] == narrative and state["phase"] == "done"
    assert fake_openai.requests[-1]["stream"] is True
