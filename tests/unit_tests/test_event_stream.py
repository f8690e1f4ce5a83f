"""The stream_events encoder: LangServe's bytes, each message of a request dumped once while it is unchanged."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langserve.api_handler import _strip_internal_keys
from langserve.serialization import WellKnownLCSerializer
from sse_starlette.event import ensure_bytes

from server.event_stream import EventEncoder


def langserve_frame(event: dict[str, Any]) -> bytes:
    event = {**event, "metadata": _strip_internal_keys(event["metadata"])}
    return ensure_bytes({"data": WellKnownLCSerializer().dumps(event).decode("utf-8"), "event": "data"}, "\r\n")


def state_event(name: str, messages: list[Any]) -> dict[str, Any]:
    return {
        "event": "on_chain_start",
        "name": name,
        "data": {"input": {"messages": messages, "summary": 'ü\n"quoted"\r\u2028'}},
        "metadata": {"__langserve_version": "x", "langgraph_node": name, "tenant": "veneo"},
        "run_id": "r",
        "tags": [],
        "parent_ids": [],
    }


def test_a_message_is_dumped_once_per_request_and_again_when_a_field_is_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    question = HumanMessage("Wie lange dauert der Versand? 📦")  # no id yet, as a client sends it
    answer = AIMessage("Drei bis fünf Tage.", id="a1", response_metadata={"review": {"layers": [1.5, None]}})
    dumps: list[str] = []
    for cls in (HumanMessage, AIMessage):
        original = cls.model_dump

        def counting(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            dumps.append(str(self.content))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "model_dump", counting)
    encoder = EventEncoder()
    first = [state_event("a", [question]), state_event("b", [question, answer]), state_event("c", [question, answer])]
    assert [encoder.frame(e) for e in first] == [langserve_frame(e) for e in first]
    # three events with five message dumps in LangServe's encoding (counted above too); the encoder: one for the
    # message with an id, every time for the one without (not kept: id-less messages are one-off prompts)
    dumps.clear()
    again = EventEncoder()
    for e in first:
        again.frame(e)
    assert sorted(dumps) == sorted([str(question.content)] * 3 + [str(answer.content)])
    question.id = "h0"
    dumps.clear()
    for e in first:
        again.frame(e)
    assert dumps == [str(question.content)]  # kept from now on; the answer is unchanged

    # LangGraph's add_messages gives the message its id by assignment: the next event shows the id
    question.id = "h1"
    answer.content = "Drei bis fünf Werktage."
    later = state_event("d", [question, answer])
    assert again.frame(later) == langserve_frame(later)
    assert b'"id":"h1"' in again.frame(later) and "fünf Werktage".encode() in again.frame(later)


def test_chunks_and_other_models_are_encoded_as_langserve_encodes_them() -> None:
    chunk = AIMessageChunk(content="Drei ", id="run-1")
    event = {
        "event": "on_chat_model_stream",
        "name": "ChatOpenAI",
        "data": {"chunk": chunk},
        "metadata": {"langgraph_node": "primary_responder", "ls_provider": "openai", "__useragent": "x"},
        "run_id": "r",
        "tags": ["seq:step:1"],
        "parent_ids": ["p"],
    }
    encoder = EventEncoder()
    assert encoder.frame(event) == langserve_frame(event)
    assert encoder.frame(event).startswith(b"event: data\r\ndata: {") and encoder.frame(event).endswith(b"}\r\n\r\n")


def test_what_langserve_cannot_encode_fails_here_too() -> None:
    event = state_event("a", [object()])
    with pytest.raises(TypeError):
        EventEncoder().frame(event)
    with pytest.raises(TypeError):
        langserve_frame(event)


def test_a_message_with_extra_fields_is_dumped_again_when_one_is_added() -> None:
    message = AIMessage("Hallo", id="a1", voice={"name": "alloy"})  # an extra field (BaseMessage allows them)
    encoder = EventEncoder()
    first = state_event("a", [message])
    assert encoder.frame(dict(first)) == langserve_frame(first)
    message.speaker = "assistant"  # a new extra field, set on the same object
    later = state_event("b", [message])
    assert encoder.frame(dict(later)) == langserve_frame(later)
    assert b'"speaker":"assistant"' in langserve_frame(later)


def test_a_message_changed_in_place_inside_its_containers_is_dumped_again() -> None:
    """A node that edits a streamed message's nested dicts and lists in place: the next event carries the edit,
    as LangServe's encoding of that event would."""
    answer = AIMessage(
        [{"type": "text", "text": "Drei bis fünf Tage."}],
        id="a1",
        response_metadata={"review": {"layers": [1.5, None]}},
        additional_kwargs={"refusal": None},
        tool_calls=[{"name": "lookup", "args": {"order": "A-1"}, "id": "c1"}],
        voice={"name": "alloy"},
    )
    encoder = EventEncoder()
    first = state_event("a", [answer])
    assert encoder.frame(dict(first)) == langserve_frame(first)
    edits = [
        lambda: answer.response_metadata["review"]["layers"].append(2),
        lambda: answer.response_metadata["review"].update(layers=[1.5, True]),  # 1 == True, not the same JSON
        lambda: answer.additional_kwargs.update(refusal="nein"),
        lambda: answer.tool_calls[0]["args"].update(order="A-2"),
        lambda: answer.content.append({"type": "text", "text": " Werktage."}),  # type: ignore[union-attr]
        lambda: answer.content[0].update(text="Zwei Tage."),  # type: ignore[union-attr]
        lambda: answer.voice.update(name="echo"),  # type: ignore[attr-defined]
    ]
    for step, edit in enumerate(edits):
        edit()
        later = state_event(f"e{step}", [answer])
        assert encoder.frame(dict(later)) == langserve_frame(later), step


def test_messages_without_an_id_are_not_kept() -> None:
    """A model call's prompt list (on_chat_model_start) is built once: its id-less messages are never reused."""
    prompt = [HumanMessage("Systemprompt"), HumanMessage("Frage")]
    event = state_event("a", prompt)
    encoder = EventEncoder()
    assert encoder.frame(dict(event)) == langserve_frame(event)
    assert encoder._memo == {}
    kept = AIMessage("Antwort", id="a1")
    encoder.frame(state_event("b", [*prompt, kept]))
    assert [m for m, _, _ in encoder._memo.values()] == [kept]
