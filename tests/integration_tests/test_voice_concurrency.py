"""Spoken transcripts posted concurrently: each item is applied exactly once and in speaking order, whether the
posts land on one engine or on two engines sharing a SQLite file (two worker processes' worth of state)."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

from langchain_core.messages import HumanMessage

from server.voice import VoiceError, VoiceService
from server.voice.transcripts import TranscriptItem
from tests.conftest import make_settings, open_engine

RESUME = (Path(__file__).resolve().parents[2] / "examples" / "resume.md").read_text()
ANSWERS = [
    "At Acme I moved our batch jobs to Airflow on Kubernetes; failed runs dropped by 70% in two months.",
    "I used Kafka for 40 million shipment events a day and cut duplicate events to almost zero.",
]


def spoken(item_id: str, text: str, start: int) -> TranscriptItem:
    return TranscriptItem(
        id=item_id, role="user", text=text, started_at=1_740_819_600 + start, ended_at=1_740_819_600 + start + 8
    )


def voice_ids(state: dict[str, Any]) -> list[str]:
    return [m.additional_kwargs["voice"]["item_id"] for m in state["messages"] if isinstance(m, HumanMessage)]


async def test_overlapping_concurrent_posts_apply_each_item_once_in_order(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/tg.db"
    settings = make_settings(tmp_path, url)
    async with open_engine(url) as one, open_engine(url) as two:
        services = [(VoiceService(e.bundles, settings, e.resolver), e) for e in (one, two)]
        session = await one.create_session("demo", "interview")
        await one.attach_document(session, "resume", RESUME)
        a = spoken("a", "I'm ready.", 0)
        b = spoken("b", ANSWERS[0], 20)
        c = spoken("c", ANSWERS[1], 60)
        # a frontend re-posting everything not yet acknowledged: cumulative batches, each sent twice
        batches = [[a], [a, b], [a, b, c]] * 2
        results = await asyncio.gather(
            *(
                service.post_transcripts(engine, session, batch, "test")
                for (service, engine), batch in zip(itertools.cycle(services), batches, strict=False)
            )
        )
        applied = sorted(r["id"] for result in results for r in result["items"] if r["status"] == "applied")
        assert applied == ["a", "b", "c"]  # each exactly once
        state = await two.state(session)
        assert voice_ids(state) == ["a", "b", "c"]  # in speaking order
        assert [e["answer"] for e in state["evaluations"]] == ANSWERS  # each answer scored once
        assert state["voice"]["totals"]["user_items"] == 3


async def test_concurrent_disjoint_posts_never_reorder_the_conversation(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/tg.db"
    settings = make_settings(tmp_path, url)
    async with open_engine(url) as one, open_engine(url) as two:
        first, second = VoiceService(one.bundles, settings, one.resolver), VoiceService(two.bundles, settings)
        for round_ in range(4):
            session = await one.create_session("veneo", "veneo_chat")
            early = spoken(f"early{round_}", "How long does shipping take?", 0)
            late = spoken(f"late{round_}", "How do returns work?", 30)
            posts = [
                second.post_transcripts(two, session, [late], "t"),
                first.post_transcripts(one, session, [early], "t"),
            ]
            if round_ % 2:
                posts.reverse()
            outcomes = await asyncio.gather(*posts, return_exceptions=True)
            refused = [o for o in outcomes if isinstance(o, BaseException)]
            ids = voice_ids(await one.state(session))
            if refused:  # the later item won the race: the earlier one is refused, never applied after it
                (error,) = refused
                assert isinstance(error, VoiceError) and error.code == "transcript_out_of_order", error
                assert ids == [late.id]
            else:
                assert ids == [early.id, late.id]
