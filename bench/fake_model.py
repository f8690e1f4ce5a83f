"""The benchmark's model: deterministic, zero latency, so only orchestration is measured.

`BenchChatModel` answers every plain prompt with the same ~50-token text (streamed token by token when the
caller streams), and every structured call with valid JSON for the schema asked for. Nodes ask for structured
output through `nodes.model_calls.ask_structured`: this model has no tool calling, so `with_structured_output`
raises NotImplementedError and the node appends "Reply with only a JSON object that matches this JSON Schema:
{schema}" to the prompt; the model reads the schema's title and answers with a valid instance:

- `ReviewOutput` (chat safety reviewer): approve, so the reviewer's LLM path runs on every chat turn;
- `QuestionSet` (interview question generator): five questions (the node keeps the team's num_questions);
- `EvaluationOutput` (interview evaluator): a score for every rubric criterion named in the prompt.

`BenchFactory` hands this model to every persona (`provider_for` says "openai"), so every node takes its LLM
path exactly as with a real provider, without a network.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

from personas.factory import AgentFactory
from personas.schema import AgentPersona

MODEL_LABEL = "bench-fake"

# 50 whitespace-separated tokens; streamed as 50 chunks
ANSWER = (
    "Thanks for asking. Standard shipping within the EU takes three to five business days, and express "
    "shipping takes one to two business days. Orders placed before two in the afternoon ship the same day. "
    "You can follow every parcel from your account page, and our team is happy to help with anything else."
)
ANSWER_TOKENS = re.findall(r"\S+\s*", ANSWER)

_JSON_INSTRUCTION = "Reply with only a JSON object that matches this JSON Schema:"
_DEFAULT_RUBRIC = ["relevance", "structure", "specificity", "impact", "communication"]
_RUBRIC_LINE = re.compile(r"^\s*-\s*([A-Za-z_][\w-]*):", re.MULTILINE)


def _text(message: BaseMessage) -> str:
    return message.content if isinstance(message.content, str) else json.dumps(message.content)


def structured_answer(title: str, prompt: str) -> dict[str, Any]:
    """A valid instance of the schema named `title` (unknown schemas get an empty object)."""
    if title == "ReviewOutput":
        return {"action": "approve", "category": "ok", "reason": "The draft is safe and on topic."}
    if title == "QuestionSet":
        kinds = ["behavioral", "technical", "situational"]
        return {
            "questions": [
                {
                    "text": f"Tell me about a project where you used Python and SQL at scale (question {i + 1}).",
                    "type": kinds[i % 3],
                    "difficulty": "medium",
                    "skill": "Python",
                }
                for i in range(5)
            ]
        }
    if title == "EvaluationOutput":
        criteria = _RUBRIC_LINE.findall(prompt) or _DEFAULT_RUBRIC
        return {
            "scores": [{"criterion": c, "score": 4} for c in dict.fromkeys(criteria)],
            "overall": 4.0,
            "strengths": ["Concrete example with numbers", "Clear structure"],
            "improvements": ["Say more about your own contribution", "Name the trade-offs you weighed"],
            "example_answer": "At Acme I moved our pipelines to Kafka; lag fell from ten minutes to 20 s.",
        }
    return {}


def reply_for(messages: list[BaseMessage]) -> str:
    """The fixed answer, or JSON when the prompt asks for a JSON object of a schema."""
    for message in reversed(messages):
        text = _text(message)
        if text.startswith(_JSON_INSTRUCTION):
            schema = json.loads(text[len(_JSON_INSTRUCTION) :])
            prompt = "\n".join(_text(m) for m in messages)
            return json.dumps(structured_answer(str(schema.get("title", "")), prompt))
    return ANSWER


class BenchChatModel(BaseChatModel):
    """Deterministic, zero-latency chat model: a fixed ~50-token answer, streamed token by token."""

    @property
    def _llm_type(self) -> str:
        return MODEL_LABEL

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=AIMessage(reply_for(messages)))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self._generate(messages, stop)

    # BaseChatModel reports each chunk to the callbacks (on_llm_new_token) itself
    def _chunks(self, messages: list[BaseMessage]) -> list[str]:
        text = reply_for(messages)
        return ANSWER_TOKENS if text is ANSWER else [text]

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for token in self._chunks(messages):
            yield ChatGenerationChunk(message=AIMessageChunk(content=token))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        for token in self._chunks(messages):
            yield ChatGenerationChunk(message=AIMessageChunk(content=token))


class BenchFactory(AgentFactory):
    """Every persona gets the bench model: nodes take their LLM path (streaming, structured review, scoring)."""

    def __init__(self) -> None:
        super().__init__()
        self.model = BenchChatModel()

    def provider_for(self, persona: AgentPersona) -> Any:
        return "openai"

    def chat_model(self, persona: AgentPersona) -> BaseChatModel | None:
        return self.model

    def model_label(self, persona: AgentPersona) -> str:
        return MODEL_LABEL
