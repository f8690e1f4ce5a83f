"""The web page never stores one turn twice: whatever fails after a turn was sent (the stream, its end, the read
of the session that follows), the page finds out whether the turn was stored before it invites a resend, and a
resend carries the turn's Idempotency-Key, so the server does not run it again.

Headless Chromium against a real offline `teamgraph serve`; the failures are made by Playwright's routing (the
server stores the turn, the page does not get to know it), what was stored is read from the server.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, Route, expect

from tests.browser.conftest import screenshot, sign_in
from tests.browser.test_web_app import ANSWERS, idle, new_session
from tests.integration_tests.live_server import DEMO_KEY, VENEO_KEY, LiveServer, auth, chat_turn

REPO = Path(__file__).resolve().parents[2]
START = "I'm ready to start the interview."
SERVER_ERROR = json.dumps({"error": {"code": "internal_error", "message": "Internal Server Error"}})


def stored(server: LiveServer, key: str, session_id: str) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/sessions/{session_id}", headers=auth(key))
    assert response.status_code == 200, response.text
    session: dict[str, Any] = response.json()
    return session


def user_messages(server: LiveServer, key: str, session_id: str) -> list[str]:
    return [m["content"] for m in stored(server, key, session_id)["transcript"] if m["role"] == "user"]


class SessionReads:
    """GET /sessions/{id} answers 500 while `failing`; counts the reads."""

    def __init__(self, page: Page, session_id: str) -> None:
        self.failing = False
        self.count = 0
        page.route(f"**/sessions/{session_id}", self.handle)

    def handle(self, route: Route) -> None:
        if route.request.method != "GET":
            route.continue_()
            return
        self.count += 1
        if self.failing:
            route.fulfill(status=500, content_type="application/json", body=SERVER_ERROR)
        else:
            route.continue_()


def uploaded_interview(page: Page, server: LiveServer) -> str:
    sign_in(page, server, DEMO_KEY)
    session_id = new_session(page)
    page.get_by_label("Resume").set_input_files(REPO / "examples" / "resume.md")
    expect(page.locator("#upload-resume-status")).to_contain_text("Resume uploaded")
    page.get_by_label("Job description").set_input_files(REPO / "examples" / "job_description.md")
    expect(page.locator("#upload-job_description-status")).to_contain_text("Job description uploaded")
    return session_id


@pytest.mark.allow_console("status of 500")
def test_an_answer_stored_when_the_session_read_fails_is_not_offered_again(page: Page, server: LiveServer) -> None:
    """Found in review: the answer was scored and stored, then the page's read of the session failed, and the page
    treated it as a failed answer: Submit enabled again with the answer in the box. Submitting it (the page's
    advice) stored the same answer again, as the answer to question 2. Now the page says the answer was saved and
    offers to show it; doing so shows question 2, one evaluation stored."""
    session_id = uploaded_interview(page, server)
    page.get_by_role("button", name="Start the interview").click()
    expect(page.get_by_role("heading", name="Question 1 of 3")).to_be_visible()
    reads = SessionReads(page, session_id)
    reads.failing = True
    page.get_by_label("Your answer").fill(ANSWERS[0])
    page.get_by_role("button", name="Submit answer").click()
    expect(page.locator("#answer-error")).to_be_visible()
    assert len(stored(server, DEMO_KEY, session_id)["state"]["evaluations"]) == 1  # stored on the server
    # found in review: the answer stayed in the (read-only) box beside "Scored. Preparing the next question…"
    expect(page.locator("#answer-error")).to_have_text(
        "Your answer was saved, but the next question could not be loaded. "
        "Do not submit it again: use “Show the reply”."
    )
    expect(page.get_by_role("button", name="Show the reply")).to_be_visible()
    expect(page.locator("#answer-input")).to_have_value("")
    expect(page.locator("#answer-input")).to_have_js_property("readOnly", True)
    expect(page.locator("#answer-input")).to_be_hidden()
    expect(page.locator("#answer-submit")).to_be_disabled()
    expect(page.locator("#answer-submit")).to_be_hidden()
    expect(page.locator("#answer-progress")).to_be_hidden()
    screenshot(page, "turn-stored-read-failed")
    reads.failing = False
    # the page's advice: what it offers now (before: Submit again, with the answer in the box)
    page.locator("#show-saved, #answer-submit:enabled").first.click()
    expect(page.get_by_role("heading", name="Question 2 of 3")).to_be_visible()
    evaluations = stored(server, DEMO_KEY, session_id)["state"]["evaluations"]
    assert [e["answer"] for e in evaluations] == [ANSWERS[0]]
    expect(page.locator("article.evaluation")).to_have_count(1)
    expect(page.get_by_label("Your answer")).to_have_value("")


@pytest.mark.allow_console("status of 500")
def test_a_stored_answer_whose_reads_give_up_leaves_a_view_drawn_meanwhile_alone(
    page: Page, server: LiveServer
) -> None:
    """Found in review: after an answer was stored its session reads failed (tried for ~2 s); meanwhile the person
    left the session and opened it again (that read succeeded: question 2 on screen). When the reads gave up, the
    page put away the answer box and Submit of that new view (found by id), leaving question 2 with no way to
    answer, and the error went to the old view's detached element."""
    session_id = uploaded_interview(page, server)
    page.get_by_role("button", name="Start the interview").click()
    expect(page.get_by_role("heading", name="Question 1 of 3")).to_be_visible()
    reads: list[Route] = []  # the session's reads after the answer was sent: the first is held

    def session_read(route: Route) -> None:
        if route.request.method != "GET":
            route.continue_()
            return
        reads.append(route)
        if len(reads) == 1 or len(reads) == 3:  # the read before the turn; the person opening the session again
            route.continue_()
        elif len(reads) > 3:
            route.fulfill(status=500, content_type="application/json", body=SERVER_ERROR)

    page.route(f"**/sessions/{session_id}", session_read)
    page.get_by_label("Your answer").fill(ANSWERS[0])
    page.get_by_role("button", name="Submit answer").click()
    for _ in range(150):  # the answer stored, the page's first read of the session after it (held)
        if len(reads) >= 2:
            break
        page.wait_for_timeout(100)
    assert len(reads) == 2, len(reads)
    open_another_session(page, session_id)
    page.locator(f'#session-list a[data-id="{session_id}"]').click()
    expect(page.get_by_role("heading", name="Question 2 of 3")).to_be_visible()
    reads[1].fulfill(status=500, content_type="application/json", body=SERVER_ERROR)
    for _ in range(60):  # two more reads, 1 s apart, then the page gives up
        if len(reads) >= 5:
            break
        page.wait_for_timeout(100)
    assert len(reads) == 5, len(reads)
    page.wait_for_timeout(500)
    expect(page.get_by_label("Your answer")).to_be_visible()
    expect(page.get_by_label("Your answer")).to_be_editable()
    expect(page.get_by_role("button", name="Submit answer")).to_be_visible()
    expect(page.locator("#answer-error")).to_be_hidden()
    expect(page.locator("#show-saved")).to_have_count(0)


@pytest.mark.allow_console("status of 500")
def test_a_started_interview_whose_session_read_fails_is_not_offered_start_again(
    page: Page, server: LiveServer
) -> None:
    """Found in review: Start's turn was stored (the questions exist), the read of the session failed, and Start was
    enabled again; clicking it sent "I'm ready…" as the answer to question 1. Now the page offers to show the
    questions instead."""
    session_id = uploaded_interview(page, server)
    reads = SessionReads(page, session_id)
    reads.failing = True
    page.get_by_role("button", name="Start the interview").click()
    expect(page.locator("#start-error")).to_be_visible()
    expect(page.locator("#start-error")).to_contain_text("saved")
    reads.failing = False
    page.locator("#show-saved, #start-interview:enabled").first.click()
    expect(page.get_by_role("heading", name="Question 1 of 3")).to_be_visible()
    session = stored(server, DEMO_KEY, session_id)
    assert [m["content"] for m in session["transcript"] if m["role"] == "user"] == [START]
    assert session["state"]["evaluations"] == []


@pytest.mark.allow_console("status of 500")
def test_a_chat_message_stored_when_the_session_read_fails_is_not_put_back_in_the_box(
    page: Page, server: LiveServer
) -> None:
    sign_in(page, server, VENEO_KEY)
    session_id = new_session(page)
    reads = SessionReads(page, session_id)
    reads.failing = True
    box = page.get_by_label("Your message")
    box.fill("How long does shipping take?")
    box.press("Enter")
    expect(page.locator("#chat-error")).to_contain_text("saved")
    expect(box).to_have_value("")
    reads.failing = False
    page.locator("#show-saved, #chat-send:enabled").first.click()
    expect(page.locator(".message.assistant")).to_have_count(1)
    idle(page)
    assert user_messages(server, VENEO_KEY, session_id) == ["How long does shipping take?"]


def error_after_store(status: int = 503, code: str = "audit_unavailable") -> Callable[[Route], None]:
    """A route handler: the turn runs and is stored; the stream ends in `event: error` instead of `event: end` (as
    when the closing audit write or the turn lock's check fails after the state was saved)."""

    def handle(route: Route) -> None:
        response = route.fetch()
        body = response.text()
        assert "event: end" in body, body[-300:]
        error = json.dumps({"status_code": status, "code": code, "message": "the turn failed after it was saved"})
        route.fulfill(
            response=response, body=body[: body.index("event: end")] + f"event: error\r\ndata: {error}\r\n\r\n"
        )

    return handle


def error_event(status: int, code: str, message: str) -> str:
    """A stream that is only an `event: error` (the turn failed before anything was stored)."""
    data = json.dumps({"status_code": status, "code": code, "message": message})
    return f"event: error\r\ndata: {data}\r\n\r\n"


def hold(page: Page, held: list[Route]) -> None:
    """The page's turns wait, unsent, until the test lets them go (or fails them)."""
    page.route("**/teams/veneo_chat/stream_events", lambda route: held.append(route))


def wait_for(page: Page, held: list[Route], count: int) -> None:
    for _ in range(100):
        if len(held) >= count:
            return
        page.wait_for_timeout(100)
    raise AssertionError(f"{len(held)} turns sent, {count} expected")


def test_a_chat_turn_stored_before_an_error_event_is_shown_not_sent_again(page: Page, server: LiveServer) -> None:
    """Found in review: an `event: error` after the turn was stored put the message back in the box with the error
    (only a cut stream made the page look at the session), inviting a resend: a second turn."""
    sign_in(page, server, VENEO_KEY)
    session_id = new_session(page)
    page.route("**/teams/veneo_chat/stream_events", error_after_store())
    box = page.get_by_label("Your message")
    box.fill("How long does shipping take?")
    box.press("Enter")
    expect(page.get_by_role("status")).to_contain_text("were saved")
    expect(page.locator(".message.assistant")).to_contain_text("3 to 5 business days")
    idle(page)
    expect(box).to_have_value("")
    expect(page.locator("#chat-error")).to_be_hidden()
    assert user_messages(server, VENEO_KEY, session_id) == ["How long does shipping take?"]


def cut_stream(route: Route) -> None:
    """The turn runs and is stored; the stream breaks before its end (a lost connection)."""
    response = route.fetch()
    body = response.text()
    route.fulfill(response=response, body=body[: body.index("event: end")])


def test_a_stored_turn_is_found_in_a_capped_transcript_window(page: Page, server: LiveServer) -> None:
    """Found in review: the page found a stored reply by transcript position (the messages after the old length);
    with `retention.archive_messages` the transcript is a window of the latest messages, its length the same
    before and after a turn, so a stored reply was never found. Here the window is two messages (the route keeps
    the last two, as a cap would); the page compares message ids."""
    sign_in(page, server, VENEO_KEY)
    session_id = new_session(page)

    def window(route: Route) -> None:
        if route.request.method != "GET":
            route.continue_()
            return
        response = route.fetch()
        session = response.json()
        session["transcript"] = session["transcript"][-2:]
        route.fulfill(response=response, body=json.dumps(session))

    page.route(f"**/sessions/{session_id}", window)
    box = page.get_by_label("Your message")
    box.fill("How long does shipping take?")
    box.press("Enter")
    idle(page)
    page.route("**/teams/veneo_chat/stream_events", cut_stream)
    box.fill("How do returns work?")
    box.press("Enter")
    expect(page.get_by_role("status")).to_contain_text("The connection dropped, but the reply was saved")
    idle(page)
    expect(box).to_have_value("")
    expect(page.locator("#chat-error")).to_be_hidden()
    assert user_messages(server, VENEO_KEY, session_id) == ["How long does shipping take?", "How do returns work?"]


@pytest.mark.allow_console("net::ERR_FAILED", "status of 500")
def test_a_resent_chat_message_carries_its_key_and_is_not_stored_twice(page: Page, server: LiveServer) -> None:
    """The turn is stored but its answer never reaches the page (the connection fails), and the session cannot be
    read to find out: the page keeps the text to send again. The resend carries the same Idempotency-Key, so the
    server answers that the turn was stored instead of running it again (before: no key, two turns)."""
    sign_in(page, server, VENEO_KEY)
    session_id = new_session(page)
    keys: list[str | None] = []

    def lost(route: Route) -> None:
        keys.append(route.request.headers.get("idempotency-key"))
        if len(keys) == 1:
            route.fetch()  # stored on the server...
            route.abort()  # ...and the connection fails before the page reads the stream
        else:
            route.continue_()

    page.route("**/teams/veneo_chat/stream_events", lost)
    reads = SessionReads(page, session_id)
    reads.failing = True
    box = page.get_by_label("Your message")
    box.fill("Do gift cards expire?")
    box.press("Enter")
    expect(page.locator("#chat-error")).to_be_visible()
    expect(box).to_have_value("Do gift cards expire?")  # not known to be stored: the text, to send again
    reads.failing = False
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("status")).to_contain_text("already saved")
    expect(page.locator(".message.assistant")).to_have_count(1)
    idle(page)
    assert len(keys) == 2 and keys[0] and keys[0] == keys[1], keys
    assert user_messages(server, VENEO_KEY, session_id) == ["Do gift cards expire?"]

    # a new message is a new turn with a new key (also when it repeats an earlier text)
    box.fill("Do gift cards expire?")
    box.press("Enter")
    expect(page.locator(".message.assistant")).to_have_count(2)
    idle(page)
    assert len(keys) == 3 and keys[2] and keys[2] != keys[0], keys
    assert user_messages(server, VENEO_KEY, session_id) == ["Do gift cards expire?"] * 2


def test_enter_while_a_reply_streams_sends_nothing(page: Page, server: LiveServer) -> None:
    """Found in review: Enter called form.requestSubmit(), which ignores the disabled Send button, and the box stayed
    editable during a turn: a second message could be sent mid-stream."""
    sign_in(page, server, VENEO_KEY)
    session_id = new_session(page)
    held: list[Route] = []
    page.route(
        "**/teams/veneo_chat/stream_events", lambda route: held.append(route)
    )  # the turn waits until the test lets it go
    box = page.get_by_label("Your message")
    box.fill("How long does shipping take?")
    box.press("Enter")
    expect(page.locator("#chat-log")).to_have_attribute("aria-busy", "true")
    box.focus()
    page.keyboard.type("A second message")
    page.keyboard.press("Enter")
    page.wait_for_timeout(500)
    assert len(held) == 1
    held[0].continue_()
    expect(page.locator(".message.assistant")).to_have_count(1)
    idle(page)
    assert user_messages(server, VENEO_KEY, session_id) == ["How long does shipping take?"]
    expect(box).to_have_value("")  # the box was read-only during the turn


@pytest.mark.allow_console("status of 409")
def test_a_key_the_server_holds_in_doubt_is_replaced_once_the_session_shows_the_turn_missing(
    page: Page, server: LiveServer
) -> None:
    """409 idempotent_turn_outcome_unknown: the server will not run the key's turn again (an earlier send of it
    may be stored). The page reads the session; the turn is not there, so it says so in words a person can act on,
    and the next send carries a new key, which the server runs once."""
    sign_in(page, server, VENEO_KEY)
    session_id = new_session(page)
    keys: list[str | None] = []

    def in_doubt(route: Route) -> None:
        keys.append(route.request.headers.get("idempotency-key"))
        if len(keys) == 1:
            body = {
                "error": {
                    "code": "idempotent_turn_outcome_unknown",
                    "message": "Idempotency-Key: ...",
                    "field": "Idempotency-Key",
                }
            }
            route.fulfill(status=409, content_type="application/json", body=json.dumps(body))
        else:
            route.continue_()

    page.route("**/teams/veneo_chat/stream_events", in_doubt)
    box = page.get_by_label("Your message")
    box.fill("Can I return shoes?")
    box.press("Enter")
    expect(page.locator("#chat-error")).to_have_text(
        "An earlier send of this message failed and it is not in the session: send it again."
    )
    expect(box).to_have_value("Can I return shoes?")
    page.get_by_role("button", name="Send").click()
    expect(page.locator(".message.assistant")).to_have_count(1)
    idle(page)
    assert len(keys) == 2 and keys[0] and keys[1] and keys[0] != keys[1], keys
    assert user_messages(server, VENEO_KEY, session_id) == ["Can I return shoes?"]


def test_a_failed_send_is_not_taken_for_a_turn_stored_meanwhile_by_someone_else(page: Page, server: LiveServer) -> None:
    """Found in review: after a failed send the page looked for any new user message and reply in the session,
    against the transcript of its last redraw. A turn stored since by another tab or the API made a send that never
    ran (here: `event: error` 503 before anything was stored) show "saved", and the text was not put back: lost.
    Now the page reads the session before sending and looks for this text's message with a reply after it."""
    sign_in(page, server, VENEO_KEY)
    session_id = new_session(page)
    assert chat_turn(server, session_id, "Do you ship abroad?").status_code == 200  # another tab, the API
    page.route(
        "**/teams/veneo_chat/stream_events",
        lambda route: route.fulfill(
            status=200,
            content_type="text/event-stream",
            body=error_event(503, "storage_unavailable", "The session store is unavailable; try again shortly."),
        ),
    )
    box = page.get_by_label("Your message")
    box.fill("How long does shipping take?")
    box.press("Enter")
    expect(page.locator("#chat-error")).to_have_text("The session store is unavailable; try again shortly.")
    expect(box).to_have_value("How long does shipping take?")  # to send again, not lost
    expect(page.get_by_role("status")).not_to_contain_text("saved")
    assert user_messages(server, VENEO_KEY, session_id) == ["Do you ship abroad?"]


def test_summarize_again_after_a_reload_mid_turn_makes_a_second_summary(page: Page, server: LiveServer) -> None:
    """Found in review: the key of a turn cut by a reload stayed in sessionStorage, and the next send of the same
    text on the session reused it: the server answered turn_already_stored and nothing ran (a second /summarize,
    "yes", one answer to two questions). Now the key is reused only while the session has not moved on past that
    turn as the page shows it."""
    sign_in(page, server, VENEO_KEY)
    session_id = new_session(page)
    box = page.get_by_label("Your message")
    box.fill("How do returns work?")
    box.press("Enter")
    expect(page.locator(".message.assistant")).to_have_count(1)
    idle(page)
    held: list[Route] = []
    hold(page, held)
    page.get_by_role("button", name="Summarize the conversation").click()
    wait_for(page, held, 1)
    sent = held[0].request
    page.unroute("**/teams/veneo_chat/stream_events")
    page.reload()  # mid-turn
    idle(page)
    # the turn the page sent runs to its end on the server (a keyed turn does without its client)
    headers = {
        **auth(VENEO_KEY),
        "Content-Type": "application/json",
        "Idempotency-Key": sent.headers["idempotency-key"],
    }
    with httpx.stream("POST", sent.url, headers=headers, content=sent.post_data, timeout=30) as response:
        assert response.status_code == 200 and "event: end" in response.read().decode()
    page.reload()  # the summary is on screen
    expect(page.locator(".message.summary")).to_have_count(1)
    idle(page)
    page.get_by_role("button", name="Summarize the conversation").click()  # a second summary, asked for
    expect(page.locator(".message.summary")).to_have_count(2)
    idle(page)
    assert user_messages(server, VENEO_KEY, session_id) == ["How do returns work?", "/summarize", "/summarize"]


def test_a_redraw_mid_turn_keeps_the_chat_busy_and_its_outcome_on_screen(page: Page, server: LiveServer) -> None:
    """Found in review: a redraw of the session during a turn (a rename, a voice transcript) drew Send enabled and
    the box editable while the turn ran, and the turn's error and restored text went to the old, detached
    elements. Now the view drawn mid-turn is busy, and the turn ends in it."""
    sign_in(page, server, VENEO_KEY)
    session_id = new_session(page)
    held: list[Route] = []
    hold(page, held)
    box = page.get_by_label("Your message")
    send = page.locator("#chat-send")

    def rename(title: str) -> None:
        page.get_by_role("button", name="Rename").click()
        page.get_by_label("New title").fill(title)
        page.get_by_role("button", name="Save").click()
        expect(page.get_by_role("heading", name=title, level=2)).to_be_visible()

    box.fill("How long does shipping take?")
    box.press("Enter")
    wait_for(page, held, 1)
    rename("Shipping")
    expect(send).to_be_disabled()
    expect(box).to_have_js_property("readOnly", True)
    expect(page.locator("#chat-log")).to_have_attribute("aria-busy", "true")
    expect(page.locator(".message.user")).to_have_text(["YouHow long does shipping take?"])
    held[0].continue_()
    expect(page.locator(".message.assistant:not(.pending)")).to_have_count(1)
    idle(page)
    assert user_messages(server, VENEO_KEY, session_id) == ["How long does shipping take?"]

    # a turn that fails after a redraw: its error and its text in the view on screen
    box.fill("Do gift cards expire?")
    box.press("Enter")
    wait_for(page, held, 2)
    rename("Shipping and gift cards")
    expect(send).to_be_disabled()
    held[1].fulfill(
        status=200,
        content_type="text/event-stream",
        body=error_event(503, "storage_unavailable", "The session store is unavailable; try again shortly."),
    )
    expect(page.locator("#chat-error")).to_have_text("The session store is unavailable; try again shortly.")
    expect(box).to_have_value("Do gift cards expire?")
    expect(send).to_be_enabled()
    expect(box).to_have_js_property("readOnly", False)
    assert user_messages(server, VENEO_KEY, session_id) == ["How long does shipping take?"]


@pytest.mark.allow_console("status of 409")
def test_a_key_in_doubt_whose_message_is_stored_without_a_reply_is_not_offered_for_an_identical_resend(
    page: Page, server: LiveServer
) -> None:
    """409 idempotent_turn_outcome_unknown, and the session holds the message without a reply (a turn that failed
    after its first step, with TEAMGRAPH_DURABILITY=async|sync): the page says the message was saved and no reply
    was made, instead of "send it again" (which would store it a second time). The stored message is made by
    routing the session read."""
    sign_in(page, server, VENEO_KEY)
    session_id = new_session(page)
    text = "Can I return shoes?"
    doubt: list[bool] = []

    def in_doubt(route: Route) -> None:
        doubt.append(True)
        body = {"error": {"code": "idempotent_turn_outcome_unknown", "message": "...", "field": "Idempotency-Key"}}
        route.fulfill(status=409, content_type="application/json", body=json.dumps(body))

    def session_read(route: Route) -> None:
        if route.request.method != "GET" or not doubt:
            route.continue_()
            return
        response = route.fetch()
        session = response.json()
        session["transcript"].append({"id": "stored-without-reply", "role": "user", "content": text, "metadata": {}})
        route.fulfill(response=response, body=json.dumps(session))

    page.route("**/teams/veneo_chat/stream_events", in_doubt)
    page.route(f"**/sessions/{session_id}", session_read)
    box = page.get_by_label("Your message")
    box.fill(text)
    box.press("Enter")
    expect(page.locator("#chat-error")).to_contain_text("Your message was saved, but no reply was made to it.")
    expect(page.locator("#chat-error")).not_to_contain_text("send it again")
    expect(box).to_have_value("")  # not offered for a resend: it would be stored twice


@pytest.mark.allow_console("status of 409")
def test_a_message_saved_without_a_reply_while_another_session_is_open_is_not_called_unsent(
    page: Page, server: LiveServer
) -> None:
    """Found in review: the status line said "Your message in another session was not sent (Your message was saved,
    but no reply was made to it…)", and the text was put back in the session's box, inviting a second store. The
    session's message is made by routing the session read, as above."""
    sign_in(page, server, VENEO_KEY)
    first = new_session(page)
    text = "Can I return shoes?"
    held: list[Route] = []
    hold(page, held)
    doubt: list[bool] = []

    def session_read(route: Route) -> None:
        if route.request.method != "GET" or not doubt:
            route.continue_()
            return
        response = route.fetch()
        session = response.json()
        session["transcript"].append({"id": "stored-without-reply", "role": "user", "content": text, "metadata": {}})
        route.fulfill(response=response, body=json.dumps(session))

    page.route(f"**/sessions/{first}", session_read)
    box = page.get_by_label("Your message")
    box.fill(text)
    box.press("Enter")
    wait_for(page, held, 1)
    open_another_session(page, first)
    doubt.append(True)
    body = {"error": {"code": "idempotent_turn_outcome_unknown", "message": "...", "field": "Idempotency-Key"}}
    held[0].fulfill(status=409, content_type="application/json", body=json.dumps(body))
    status = page.get_by_role("status")
    expect(status).to_have_text(
        "Your message in another session was saved, but no reply was made to it: open that session to see it."
    )
    page.locator(f'#session-list a[data-id="{first}"]').click()
    expect(page.locator("#team-view")).to_have_attribute("data-session", first)
    expect(page.locator("#chat-error")).to_contain_text("Your message was saved, but no reply was made to it.")
    expect(box).to_have_value("")


def test_an_api_error_event_after_the_turn_was_stored_is_not_taken_for_a_refusal(
    page: Page, server: LiveServer
) -> None:
    """Found in review: an `event: error` forwards an ApiError's own status (a 4xx too), and the page took any 4xx
    for a refusal before the turn ran: the text went back in the box and its key was dropped, though the turn was
    stored; a resend stored it twice. A stream's error event now makes the page read the session."""
    sign_in(page, server, VENEO_KEY)
    session_id = new_session(page)
    page.route("**/teams/veneo_chat/stream_events", error_after_store(422, "invalid_state"))
    box = page.get_by_label("Your message")
    box.fill("How long does shipping take?")
    box.press("Enter")
    expect(page.get_by_role("status")).to_contain_text("were saved")
    idle(page)
    expect(box).to_have_value("")
    expect(page.locator("#chat-error")).to_be_hidden()
    assert user_messages(server, VENEO_KEY, session_id) == ["How long does shipping take?"]


def test_a_cut_turn_whose_message_the_server_redacted_is_found_stored(page: Page, server: LiveServer) -> None:
    """The safety reviewer stores the person's message with its email and card number replaced ("[email removed]",
    "[card number removed]"); after a cut stream the page still recognises the stored message as the one it sent:
    the stored reply is shown, the text is not put back in the box, one user message is stored."""
    sign_in(page, server, VENEO_KEY)
    session_id = new_session(page)
    page.route("**/teams/veneo_chat/stream_events", cut_stream)
    text = "My email is jane.doe@example.com and my card is 4111 1111 1111 1111: how do returns work?"
    box = page.get_by_label("Your message")
    box.fill(text)
    box.press("Enter")
    expect(page.get_by_role("status")).to_contain_text("The connection dropped, but the reply was saved")
    idle(page)
    screenshot(page, "turn-redacted-found")
    expect(box).to_have_value("")
    expect(page.locator("#chat-error")).to_be_hidden()
    messages = user_messages(server, VENEO_KEY, session_id)
    assert len(messages) == 1 and "[email removed]" in messages[0] and "[card number removed]" in messages[0]
    assert "jane.doe@example.com" not in messages[0]
    expect(page.locator(".message.user")).to_have_count(1)
    expect(page.locator(".message.assistant")).to_have_count(1)


# the matcher as it was: the stored message's parts joined by a lazy gap, one RegExp (the reference for meaning)
REGEX_MATCHER = """(stored, text) => {
  if (stored === text) return true;
  const parts = stored.split(/\\[(?:email|card number|phone) removed\\]/);
  const escape = (s) => s.replace(/[.*+?^${}()|[\\]\\\\]/g, "\\\\$&");
  return parts.length > 1 && new RegExp(`^${parts.map(escape).join("[^]+?")}$`).test(text);
}"""


def test_the_redaction_matcher_never_backtracks_and_means_what_the_pattern_meant(
    page: Page, server: LiveServer
) -> None:
    """Found in review: turn.js matched a stored (redacted) message against the sent text with a RegExp of its
    parts joined by `[^]+?`; 30 redactions against a 5,000-character text that differs backtrack for ever and the
    tab froze. The matcher now never backtracks (one indexOf scan per part): the pathological input answers in well
    under a second, and on small inputs (where the pattern is quick) it answers what the pattern answered."""
    page.goto(server.url + "/")
    page.evaluate(
        """() => {
          window.timing = null;
          setTimeout(async () => {
            const { sameText } = await import("/app/turn.js");
            const stored = Array(31).fill("a").join("[email removed]"); // 30 redactions
            const text = "a".repeat(5000) + "b"; // does not end like the stored message
            const started = performance.now();
            const same = sameText(stored, text);
            window.timing = { same, ms: performance.now() - started };
          }, 0);
        }"""
    )
    # polled from outside the page with page.evaluate (the page's CSP forbids the eval that wait_for_function's
    # string predicate uses: it failed so once in CI); a frozen page blocks evaluate until pytest's timeout
    deadline = time.monotonic() + 5
    while (timing := page.evaluate("window.timing")) is None:
        assert time.monotonic() < deadline, "the matcher took more than 5 s"
        page.wait_for_timeout(20)
    assert timing["same"] is False and timing["ms"] < 500, timing
    # every stored message of up to 5 tokens over {a, b, a marker} (the three markers in turn) against every text
    # of up to 7 characters over {a, b}: 364 x 255 pairs, each answered as the pattern answered it (before, 4,000
    # "random" pairs whose generator collapsed past 2^53 were 25 distinct pairs)
    result = page.evaluate(
        """async () => {
          const { sameText } = await import("/app/turn.js");
          const regex = """
        + REGEX_MATCHER
        + """;
          const markers = ["[email removed]", "[card number removed]", "[phone removed]"];
          const words = (alphabet, longest) => {
            const all = [[]];
            let level = [[]];
            for (let n = 1; n <= longest; n += 1) {
              level = level.flatMap((w) => alphabet.map((c) => [...w, c]));
              all.push(...level);
            }
            return all;
          };
          const storedMessages = words(["a", "b", "M"], 5).map((tokens) => {
            let marker = 0;
            return tokens.map((t) => (t === "M" ? markers[marker++ % 3] : t)).join("");
          });
          const texts = words(["a", "b"], 7).map((w) => w.join(""));
          const wrong = [];
          const pairs = new Set();
          let same = 0;
          const check = (stored, sent) => {
            pairs.add(JSON.stringify([stored, sent]));
            const answer = sameText(stored, sent);
            if (answer !== regex(stored, sent)) wrong.push([stored, sent]);
            if (answer) same += 1;
          };
          for (const stored of storedMessages) for (const sent of texts) check(stored, sent);
          const more = [["a[phone removed]", "a"], ["x", "x"], ["x", "y"], ["[card number removed]x", "yx"]];
          for (const [stored, sent] of more) check(stored, sent);
          return { wrong: wrong.slice(0, 20), pairs: pairs.size, same };
        }"""
    )
    assert result["wrong"] == [], result
    assert result["pairs"] == 364 * 255 + 4, result
    assert 1_000 < result["same"] < 364 * 255, result  # both answers are common


def open_another_session(page: Page, current: str) -> str:
    """New session, while `current` is open (whose heading may also be "Untitled session")."""
    page.get_by_role("button", name="New session").click()
    page.wait_for_url(lambda url: "#session=" in url and not url.endswith(current))
    other = page.url.rsplit("#session=", 1)[1]
    expect(page.locator("#team-view")).to_have_attribute("data-session", other)
    return other


STORE_DOWN = error_event(503, "storage_unavailable", "The session store is unavailable; try again shortly.")


def test_a_message_that_fails_while_another_session_is_open_is_back_in_its_box(page: Page, server: LiveServer) -> None:
    """Found in review: a turn that failed (not stored) while the person had opened another session dropped its text:
    the view it belonged to was gone, and the text went nowhere. Now the status line says so, and the text is back
    in its session's box (with the error) when the person opens that session again; sending it is one turn."""
    sign_in(page, server, VENEO_KEY)
    first = new_session(page)
    held: list[Route] = []
    hold(page, held)
    box = page.get_by_label("Your message")
    text = "How long does shipping take?"
    box.fill(text)
    box.press("Enter")
    wait_for(page, held, 1)
    open_another_session(page, first)
    held[0].fulfill(status=200, content_type="text/event-stream", body=STORE_DOWN)
    expect(page.get_by_role("status")).to_contain_text(
        "Your message in another session was not sent (The session store is unavailable; try again shortly.)"
    )
    expect(box).to_have_value("")  # this session's box is its own
    page.locator(f'#session-list a[data-id="{first}"]').click()
    expect(page.locator("#team-view")).to_have_attribute("data-session", first)
    expect(box).to_have_value(text)
    expect(page.locator("#chat-error")).to_have_text("The session store is unavailable; try again shortly.")
    screenshot(page, "turn-unsent-back-in-its-box")
    assert user_messages(server, VENEO_KEY, first) == []
    page.unroute("**/teams/veneo_chat/stream_events")
    page.get_by_role("button", name="Send").click()
    expect(page.locator(".message.assistant")).to_have_count(1)
    idle(page)
    assert user_messages(server, VENEO_KEY, first) == [text]


def test_opening_a_session_clears_only_its_own_unsent_message(page: Page, server: LiveServer) -> None:
    """Found in review: opening a session whose message had failed cleared the status line, also when it said
    something newer: that a message in a third session had failed too (its text kept for that session)."""
    sign_in(page, server, VENEO_KEY)
    held: list[Route] = []
    hold(page, held)
    box = page.get_by_label("Your message")
    first = new_session(page)
    box.fill("How long does shipping take?")
    box.press("Enter")
    wait_for(page, held, 1)
    second = open_another_session(page, first)
    box.fill("Do gift cards expire?")
    box.press("Enter")
    wait_for(page, held, 2)
    open_another_session(page, second)
    status = page.get_by_role("status")
    held[0].fulfill(status=200, content_type="text/event-stream", body=STORE_DOWN)
    expect(status).to_contain_text("Your message in another session was not sent")
    page.wait_for_timeout(300)
    held[1].fulfill(status=200, content_type="text/event-stream", body=STORE_DOWN)
    expect(status).to_have_text("Checking whether your message was saved…")  # the second turn's checks, then
    expect(status).to_contain_text("Your message in another session was not sent")  # its own message
    told = status.text_content() or ""
    page.locator(f'#session-list a[data-id="{first}"]').click()
    expect(page.locator("#team-view")).to_have_attribute("data-session", first)
    expect(box).to_have_value("How long does shipping take?")
    expect(status).to_have_text(told)  # the second session's message: not the first's to clear
    page.locator(f'#session-list a[data-id="{second}"]').click()
    expect(page.locator("#team-view")).to_have_attribute("data-session", second)
    expect(box).to_have_value("Do gift cards expire?")
    expect(status).to_have_text("")  # its own: cleared, the box and its error say it now


def test_an_answer_that_fails_while_another_session_is_open_is_back_in_its_box(page: Page, server: LiveServer) -> None:
    """As for the chat: an interview answer that failed while another session was open is back in the answer box of
    its question (with the error) when the person opens that session again."""
    first = uploaded_interview(page, server)
    page.get_by_role("button", name="Start the interview").click()
    expect(page.get_by_role("heading", name="Question 1 of 3")).to_be_visible()
    held: list[Route] = []
    page.route("**/teams/interview/stream_events", lambda route: held.append(route))
    page.get_by_label("Your answer").fill(ANSWERS[0])
    page.get_by_role("button", name="Submit answer").click()
    wait_for(page, held, 1)
    open_another_session(page, first)
    held[0].fulfill(status=200, content_type="text/event-stream", body=STORE_DOWN)
    expect(page.get_by_role("status")).to_contain_text("Your answer in another session was not sent")
    page.locator(f'#session-list a[data-id="{first}"]').click()
    expect(page.get_by_role("heading", name="Question 1 of 3")).to_be_visible()
    expect(page.get_by_label("Your answer")).to_have_value(ANSWERS[0])
    expect(page.locator("#answer-error")).to_have_text("The session store is unavailable; try again shortly.")
    expect(page.get_by_role("button", name="Submit answer")).to_be_enabled()
    assert stored(server, DEMO_KEY, first)["state"]["evaluations"] == []


def revoked(route: Route) -> None:
    """The request goes out with a key the real server does not know (a key revoked mid-turn): 401."""
    route.continue_(headers={**route.request.headers, "authorization": "Bearer tg-revoked-key"})


def left_behind(page: Page) -> list[tuple[str, Any]]:
    """What of the workspace a sign-out by a 401 left in the page: error areas, the status line, the focus."""
    left: list[tuple[str, Any]] = []
    for area in ("sessions-error", "session-error", "rename-error", "chat-error", "answer-error"):
        shown = page.evaluate(
            f"(() => {{ const el = document.getElementById('{area}'); return el && el.textContent; }})()"
        )
        if shown:
            left.append((area, shown))
    if status := page.locator("#status").text_content():
        left.append(("status", status))
    if (focused := page.evaluate("document.activeElement.id")) != "key-input":
        left.append(("focus", focused))
    left.extend(("sessionStorage", record) for record in turn_records(page))
    return left


def turn_records(page: Page) -> list[str]:
    """The page's records of unsettled turns in sessionStorage (`teamgraph.turn.<session id>`: text and key)."""
    records: list[str] = page.evaluate(
        "Object.keys(sessionStorage).filter((k) => k.startsWith('teamgraph.turn.'))"
        ".map((k) => `${k}: ${sessionStorage.getItem(k)}`)"
    )
    return records


def test_sign_out_leaves_no_record_of_an_unsettled_turn(page: Page, server: LiveServer) -> None:
    """Found in review: a failed turn's record (its text and Idempotency-Key, in sessionStorage, kept so that a
    resend after a reload carries the same key) outlived Sign out: the tenant's text stayed in the tab."""
    sign_in(page, server, VENEO_KEY)
    session_id = new_session(page)
    page.route(
        "**/teams/veneo_chat/stream_events",
        lambda route: route.fulfill(status=200, content_type="text/event-stream", body=STORE_DOWN),
    )
    box = page.get_by_label("Your message")
    box.fill("My card is 4111 1111 1111 1111: can I return shoes?")
    box.press("Enter")
    expect(page.locator("#chat-error")).to_have_text("The session store is unavailable; try again shortly.")
    assert [r.split(":", 1)[0] for r in turn_records(page)] == [f"teamgraph.turn.{session_id}"]
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("Tenant key")).to_be_visible()
    assert turn_records(page) == []


@pytest.mark.allow_console("status of 401")
@pytest.mark.parametrize("when", ["send", "check"])
def test_a_key_refused_mid_turn_leaves_nothing_of_the_turn_behind(page: Page, server: LiveServer, when: str) -> None:
    """A 401 during a chat turn signs the page out; the turn then stops there: no error, status or text of it is
    written into the page afterwards, nothing is kept for the session, and the session reads after a cut stream stop
    (`send`: the turn's own request is refused; `check`: the turn was stored, its stream cut, and the reads of the
    session that look for it are refused)."""
    sign_in(page, server, VENEO_KEY)
    session_id = new_session(page)
    reads: list[str] = []  # the session reads refused (once the turn was sent)
    if when == "send":
        page.route("**/teams/veneo_chat/stream_events", revoked)
    else:

        def refused_read(route: Route) -> None:
            reads.append(route.request.method)
            revoked(route)

        def cut_then_revoked(route: Route) -> None:
            # the reads are refused before the cut reaches the page: registered after it, the page's first read
            # could come first and find the stored turn (seen once on a loaded CI machine)
            page.route(f"**/sessions/{session_id}", refused_read)
            cut_stream(route)

        page.route("**/teams/veneo_chat/stream_events", cut_then_revoked)
    box = page.get_by_label("Your message")
    box.fill("How long does shipping take?")
    box.press("Enter")
    expect(page.locator("#signin-error")).to_have_text(re.compile(r"^Your key is no longer accepted"))
    page.wait_for_timeout(4_000)  # what the turn still does after its answer (a cut stream: reads 1.5 s apart)
    assert left_behind(page) == []
    assert len(reads) <= 1, reads  # the first check signed the page out: no more reads with that key
    page.unroute("**/teams/veneo_chat/stream_events")
    page.unroute(f"**/sessions/{session_id}")
    sign_in(page, server, VENEO_KEY)
    page.locator(f'#session-list a[data-id="{session_id}"]').click()
    expect(page.locator("#team-view")).to_have_attribute("data-session", session_id)
    expect(box).to_have_value("")
    expect(page.locator("#chat-error")).to_be_hidden()
    screenshot(page, f"turn-401-{when}-signed-in-again")


@pytest.mark.allow_console("status of 401")
def test_a_key_refused_while_an_answer_is_scored_leaves_nothing_of_it_behind(page: Page, server: LiveServer) -> None:
    """As for the chat: a 401 on an interview answer signs the page out and the answer's turn writes nothing more
    (no error, no "Answer 1 scored", no answer kept for the session), and the focus stays on the key field."""
    session_id = uploaded_interview(page, server)
    page.get_by_role("button", name="Start the interview").click()
    expect(page.get_by_role("heading", name="Question 1 of 3")).to_be_visible()
    page.route("**/teams/interview/stream_events", revoked)
    page.get_by_label("Your answer").fill(ANSWERS[0])
    page.get_by_role("button", name="Submit answer").click()
    expect(page.locator("#signin-error")).to_have_text(re.compile(r"^Your key is no longer accepted"))
    page.wait_for_timeout(1_000)
    assert left_behind(page) == []
    page.unroute("**/teams/interview/stream_events")
    sign_in(page, server, DEMO_KEY)
    page.locator(f'#session-list a[data-id="{session_id}"]').click()
    expect(page.get_by_role("heading", name="Question 1 of 3")).to_be_visible()
    expect(page.get_by_label("Your answer")).to_have_value("")
    expect(page.locator("#answer-error")).to_be_hidden()
    assert stored(server, DEMO_KEY, session_id)["state"]["evaluations"] == []
