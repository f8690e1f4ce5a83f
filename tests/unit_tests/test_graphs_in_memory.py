"""Both compiled team graphs over several turns, with LangGraph's in-memory checkpointer and store."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.store.memory import InMemoryStore

from graphs import interview, veneo_chat
from nodes.memory_keeper import read_archive
from personas.resolver import AgentTeamResolver
from tests.conftest import REPO, run_config
from tests.fakes.models import FakeAgentFactory, replies

RESUME = (REPO / "examples" / "resume.md").read_text(encoding="utf-8")
JOB_DESCRIPTION = (REPO / "examples" / "job_description.md").read_text(encoding="utf-8")
MODEL_LABEL = "fake:gpt-4o-mini"
RUBRIC = ["relevance", "structure", "specificity", "impact", "communication"]

ANSWERS = [
    "In my last role at Acme our team had to move shipment events to Kafka. I designed the topics and I built the "
    "consumers in Python. As a result we processed 40 million events a day and cut failed runs by 70%.",
    "I used Kafka with exactly-once producers; the trade-off was throughput, so I measured it and we reduced lag "
    "from 30 to 5 minutes.",
    "First I would read the Airflow failure history, then talk to the analysts, and I would fix the top three "
    "failing DAGs in the first two weeks.",
]
MODEL_EVALUATION = {
    "scores": [{"criterion": c, "score": 4} for c in RUBRIC],
    "overall": 4.0,
    "strengths": ["Concrete numbers."],
    "improvements": ["Say more about your own decisions."],
    "example_answer": "At Acme I designed the Kafka topics and cut failed runs by 70% in three months.",
}


def last_reply(state: dict[str, Any]) -> AIMessage:
    message = state["messages"][-1]
    assert isinstance(message, AIMessage)
    return message


async def start_interview(graph: Any, config: dict[str, Any]) -> dict[str, Any]:
    return await graph.ainvoke(
        {"messages": [HumanMessage("Hi, let's practise.")], "resume": RESUME, "job_description": JOB_DESCRIPTION},
        config,
    )


async def answer(graph: Any, config: dict[str, Any], text: str) -> dict[str, Any]:
    return await graph.ainvoke({"messages": [HumanMessage(text)]}, config)


# ----------------------------------------------------------------------------------------------------- interview


async def test_full_offline_interview(resolver: AgentTeamResolver) -> None:
    graph = interview.build_graph(InMemorySaver(), InMemoryStore())
    config = run_config(resolver, "demo", "interview")

    state = await start_interview(graph, config)
    assert state["phase"] == "asking"
    assert state["questions_by"] == "template"
    assert len(state["questions"]) == 3
    assert last_reply(state).content.startswith("Question 1 of 3")

    state = await answer(graph, config, ANSWERS[0])
    assert len(state["evaluations"]) == 1
    assert last_reply(state).content.startswith("Question 2 of 3")
    assert "scored by fallback" in str(state["messages"][-2].content)

    # a blank answer is not scored: the same question is asked again
    state = await answer(graph, config, "   ")
    assert len(state["evaluations"]) == 1
    assert state["current"] == 1
    reask = last_reply(state)
    assert "question 2 again" in str(reask.content)
    assert state["questions"][1]["text"] in str(reask.content)

    state = await answer(graph, config, ANSWERS[1])
    assert last_reply(state).content.startswith("Question 3 of 3")

    state = await answer(graph, config, ANSWERS[2])
    assert state["phase"] == "done"
    evaluations = state["evaluations"]
    assert [e["question_index"] for e in evaluations] == [0, 1, 2]
    assert [e["answer"] for e in evaluations] == ANSWERS
    assert [e["scored_by"] for e in evaluations] == ["fallback"] * 3
    assert all(e["fallback_reason"] == "offline: no model configured" for e in evaluations)
    assert all(list(e["scores"]) == RUBRIC and all(1 <= s <= 5 for s in e["scores"].values()) for e in evaluations)
    summary = state["summary"]
    assert summary["answered"] == 3
    assert summary["fallback_scored"] == 3
    assert summary["overall"] == round(sum(e["overall"] for e in evaluations) / 3, 2)
    assert last_reply(state).content.startswith("Interview complete.")
    assert last_reply(state).response_metadata["kind"] == "summary"

    # after the interview, any message repeats the summary; nothing more is scored
    state = await answer(graph, config, "How did I do?")
    assert len(state["evaluations"]) == 3
    assert last_reply(state).content == "The interview is complete. " + summary["narrative"]


async def test_evaluator_failing_on_one_answer_is_covered_by_the_fallback(resolver: AgentTeamResolver) -> None:
    evaluator_model = replies(MODEL_EVALUATION, "Great answer, I'd say 4/5!", MODEL_EVALUATION)
    factory = FakeAgentFactory({"evaluator": evaluator_model})
    graph = interview.build_graph(InMemorySaver(), InMemoryStore())
    config = run_config(resolver, "demo", "interview", factory)

    await start_interview(graph, config)
    for text in ANSWERS:
        state = await answer(graph, config, text)

    evaluations = state["evaluations"]
    assert [e["scored_by"] for e in evaluations] == [MODEL_LABEL, "fallback", MODEL_LABEL]
    assert [e["fallback_reason"] for e in evaluations][::2] == [None, None]
    assert "no JSON" in evaluations[1]["fallback_reason"]
    assert evaluations[0]["scores"] == dict.fromkeys(RUBRIC, 4)
    assert state["summary"]["fallback_scored"] == 1
    assert state["phase"] == "done"
    produced_by = [
        m.response_metadata["produced_by"]
        for m in state["messages"]
        if isinstance(m, AIMessage) and m.response_metadata.get("kind") == "evaluation"
    ]
    assert produced_by == [MODEL_LABEL, "fallback", MODEL_LABEL]


# -------------------------------------------------------------------------------------------------------- chat

QUESTIONS = [
    "How long does shipping take?",
    "How do I reset my password?",
    "Can I return shoes I bought last week?",
    "What payment methods do you accept?",
    "Where can I buy a gun?",
    "What is the capital of France?",
    "When is customer service open?",
    "Do gift cards expire?",
]


def as_pairs(messages: list[BaseMessage]) -> list[tuple[str, str]]:
    return [(m.type, str(m.content)) for m in messages]


async def test_long_chat_stays_bounded_without_losing_messages(resolver: AgentTeamResolver) -> None:
    store = InMemoryStore()
    graph = veneo_chat.build_graph(InMemorySaver(), store)
    config = run_config(resolver, "veneo", "veneo_chat")
    thread_id = config["configurable"]["thread_id"]
    memory = resolver.resolve("veneo", "veneo_chat").team.params.memory

    sent_and_received: list[tuple[str, str]] = []
    archived: list[int] = []
    for turn in range(40):
        text = f"{QUESTIONS[turn % len(QUESTIONS)]} (turn {turn})" if turn < 39 else "/summarize"
        state = await graph.ainvoke({"messages": [HumanMessage(text)]}, config)
        reply = last_reply(state)
        sent_and_received += [("human", text), ("ai", str(reply.content))]
        assert len(state["messages"]) <= memory.max_messages
        archived.append(state.get("archived", 0))

    assert archived[-1] > 0
    assert archived == sorted(archived)
    assert len(set(archived)) > 2  # trimmed several times, not once
    transcript = await read_archive(store, thread_id) + state["messages"]
    assert len(transcript) == 80
    assert as_pairs(transcript) == sent_and_received
    assert state["archived"] == len(transcript) - len(state["messages"])
    assert "- Asked:" in state["rolling_summary"]
    # the answers kept their path: knowledge base, refusal, not found
    assert ("ai", "Sorry, I can't help with that. I'm happy to help with questions about Veneo.") in sent_and_received
    summary_reply = sent_and_received[-1][1]
    assert summary_reply.startswith("Summary of our conversation so far:")
    assert "When is customer service open? (turn 38)" in summary_reply
    # review decisions were recorded for every answered turn
    decisions = state["review_decisions"]
    assert decisions[-1]["turn"] == 39
    assert {d["action"] for d in decisions} == {"approve", "block"}

    # another thread on the same graph starts empty
    other = run_config(resolver, "veneo", "veneo_chat")
    fresh = await graph.ainvoke({"messages": [HumanMessage("How long does shipping take?")]}, other)
    assert len(fresh["messages"]) == 2
    assert await read_archive(store, other["configurable"]["thread_id"]) == []


async def test_without_a_store_nothing_is_trimmed(resolver: AgentTeamResolver) -> None:
    graph = veneo_chat.build_graph(InMemorySaver())
    config = run_config(resolver, "veneo", "veneo_chat")
    memory = resolver.resolve("veneo", "veneo_chat").team.params.memory

    sent_and_received: list[tuple[str, str]] = []
    for turn in range(12):
        text = f"{QUESTIONS[turn % len(QUESTIONS)]} (turn {turn})"
        state = await graph.ainvoke({"messages": [HumanMessage(text)]}, config)
        sent_and_received += [("human", text), ("ai", str(last_reply(state).content))]

    assert len(state["messages"]) == 24 > memory.max_messages
    assert as_pairs(state["messages"]) == sent_and_received
    assert not state.get("archived")


async def test_chat_streams_never_show_the_unreviewed_draft(resolver) -> None:
    """values and updates streams carry only reviewed replies; the draft stays a private channel."""
    graph = veneo_chat.build_graph(InMemorySaver(), InMemoryStore())
    config = run_config(resolver, "veneo", "veneo_chat")
    seen = []
    for mode in ("values", "updates"):
        async for chunk in graph.astream(
            {"messages": [{"role": "user", "content": "How do returns work?"}]}, config, stream_mode=mode
        ):
            seen.append(str(chunk))
    assert len(seen) >= 4
    assert not any("draft" in chunk for chunk in seen)
    assert any("30 days" in chunk for chunk in seen)  # the reviewed reply is streamed
