"""Session state migrations: one plain function per version step per team, in one table (MIGRATIONS).

A function takes the state of version N-1 (a dict of channel values) and returns the channels it changes so the
state is version N; it never touches the transcript's messages. `upgrade` applies the steps in order. To change a
team's state: bump VERSION in states/<team>.py, update its model, add the step here, and add a test that loads a
real stored session of the old version (tests/fixtures/v1) and checks the upgraded one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from states import interview, veneo_chat

Migration = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class TeamState:
    version: int
    model: type[BaseModel]
    private: frozenset[str] = frozenset()  # channels of one turn or one node: never read out of a session

    @property
    def public(self) -> frozenset[str]:
        """The channels a session read (a state snapshot, an export) holds: the graph's state less its private
        ones."""
        return frozenset(self.model.model_fields) - self.private


# by graph id (graphs/<id>.py): teams that share a graph share its state
TEAMS: dict[str, TeamState] = {
    "interview": TeamState(interview.VERSION, interview.InterviewSession, interview.PRIVATE_CHANNELS),
    "veneo_chat": TeamState(veneo_chat.VERSION, veneo_chat.ChatSession, veneo_chat.PRIVATE_CHANNELS),
}
# metadata key of every checkpoint: the state version its values have (absent: version 1, from before versions)
METADATA_KEY = "schema_version"


class SessionSchemaTooNew(Exception):
    """A session written by a newer Teamgraph: reading or running it here could corrupt it."""

    status = 409
    code = "session_schema_too_new"

    def __init__(self, session_id: str, graph: str, stored: int, known: int):
        super().__init__(
            f"session {session_id!r} was stored with {graph} state version {stored}, and this Teamgraph knows "
            f"versions up to {known}: serve it with the newer Teamgraph release that wrote it"
        )
        self.session_id, self.stored, self.known = session_id, stored, known


def public_channels(graph: str) -> frozenset[str]:
    """The channels a read of a session of graph `graph` holds; for a graph not known here, those any known graph
    shows and none keeps private."""
    if graph in TEAMS:
        return TEAMS[graph].public
    return frozenset().union(*(t.public for t in TEAMS.values())) - frozenset().union(
        *(t.private for t in TEAMS.values())
    )


def current_version(graph: str) -> int:
    return TEAMS[graph].version if graph in TEAMS else 1


def stored_version(metadata: Mapping[str, object] | None) -> int:
    """The state version a checkpoint's metadata records (1 for checkpoints from before versions)."""
    value = (metadata or {}).get(METADATA_KEY, 1)
    return int(value) if isinstance(value, int | str) else 1


# --- veneo_chat ---

_V1_INPUT_BLOCKS = {"prompt_injection", "disallowed_topic"}  # the v1 rules blocked these on the user's message


def chat_v1_to_v2(state: dict[str, Any]) -> dict[str, Any]:
    """Review decisions get `layers`: one record per layer the v1 decision names in `reviewed_by` ("rules",
    "rules+llm"), with the decision's verdict and category on the layer that decided and `pass` on the others.
    Version 1 kept no scores or times, so those stay empty and `detail` says so; the stage follows what the v1
    reviewer checked (its rules blocked injections and disallowed topics on the user's message, the rest on
    the reply)."""
    decisions = state.get("review_decisions")
    if not decisions:
        return {}
    upgraded = []
    for decision in decisions:
        if "layers" in decision:
            upgraded.append(decision)
            continue
        names = [n.strip() for n in str(decision.get("reviewed_by") or "rules").split("+") if n.strip()]
        action, category = decision.get("action", "approve"), decision.get("category", "ok")
        stage = "input" if action == "block" and category in _V1_INPUT_BLOCKS else "reply"
        layers = []
        for i, name in enumerate(names):
            decided = action != "approve" and i == len(names) - 1  # the last layer named is the one that acted
            layers.append({
                "layer": name, "stage": stage,
                "verdict": {"block": "block", "rewrite": "rewrite"}.get(action, "pass") if decided else "pass",
                "category": category if decided else "ok", "score": None, "ms": None,
                "detail": "migrated from a version-1 decision: no score or time was recorded",
            })  # fmt: skip
        upgraded.append({**decision, "layers": layers})
    return {"review_decisions": upgraded}


# --- interview ---


def interview_v1_to_v2(state: dict[str, Any]) -> dict[str, Any]:
    """A session with questions gets one answer key per question (nodes/answer_keys.py), built from its questions,
    resume and job description as the question generator builds them now; a session without questions (still in
    set-up) or with keys already is left alone."""
    questions = state.get("questions")
    if not questions or state.get("answer_keys"):
        return {}
    from nodes.answer_keys import answer_keys

    plain = [q if isinstance(q, dict) else q.model_dump() for q in questions]
    return {"answer_keys": answer_keys(plain, state.get("resume") or "", state.get("job_description") or "")}


MIGRATIONS: dict[tuple[str, int], Migration] = {
    # (graph id, the version it produces): the function
    ("veneo_chat", 2): chat_v1_to_v2,
    ("interview", 2): interview_v1_to_v2,
}


def upgrade(graph: str, values: dict[str, Any], from_version: int) -> dict[str, Any]:
    """The channels that change when `values` (state version `from_version`) is brought to the current version."""
    changes: dict[str, Any] = {}
    state = dict(values)
    for version in range(from_version + 1, current_version(graph) + 1):
        step = MIGRATIONS.get((graph, version))
        if step is None:
            raise AssertionError(f"no migration of {graph} state to version {version} in states/migrations.py")
        update = step(state)
        state.update(update)
        changes.update(update)
    return changes
