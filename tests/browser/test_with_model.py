"""The web app with a model and a voice provider: the local OpenAI-compatible fake server behind a real
`teamgraph serve` whose chat reviewer lets drafts stream (`stream_drafts: true`, as a tenant may choose).

Checks what only shows with a provider: chat tokens arriving one by one before the reviewed reply, and the voice
controls (catalog, a preview that plays, the realtime bootstrap up to the provider's WebRTC endpoint).
"""

from __future__ import annotations

import io
import json
import re
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Playwright, Route, expect

from bench.bundle import make_bench_bundles
from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, DESKTOP, FAKE_REALTIME_JS, PageErrors, _watch, sign_in
from tests.fakes.openai_server import Audio, FakeOpenAIServer, Reply
from tests.integration_tests.live_server import DEMO_KEY, VENEO_KEY, LiveServer

REPLY = "Standard shipping takes three to five business days within the EU."


def tiny_wav() -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\x00\x00" * 800)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, fake: FakeOpenAIServer) -> Iterator[LiveServer]:
    workdir = tmp_path_factory.mktemp("web-model")
    bundles = make_bench_bundles(workdir / "personas")
    env = {"OPENAI_BASE_URL": fake.base_url, "OPENAI_API_KEY": "test-key", "TEAMGRAPH_PERSONAS_DIR": str(bundles)}
    with LiveServer(workdir, env=env) as live:
        yield live


@pytest.fixture(scope="module")
def media_browser(playwright: Playwright) -> Iterator[Browser]:
    """Chromium with a fake microphone that needs no permission prompt."""
    args = [*CHROMIUM_ARGS, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=args, headless=True)
    yield browser
    browser.close()


@pytest.fixture
def page(media_browser: Browser, page_errors: PageErrors, request: pytest.FixtureRequest) -> Iterator[Page]:
    marker = request.node.get_closest_marker("allow_console")
    context = media_browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    _watch(page, page_errors, tuple(marker.args) if marker else ())
    yield page
    context.close()
    assert not page_errors, f"the page logged errors: {page_errors}"


def test_chat_tokens_stream_before_the_reviewed_reply(page: Page, server: LiveServer, fake: FakeOpenAIServer) -> None:
    # the responder streams its reply word by word, slowly enough to see it grow; any other model call gets "ok"
    fake.enqueue(Reply(REPLY))
    sign_in(page, server, VENEO_KEY)
    page.get_by_role("button", name="New session").click()
    expect(page.get_by_role("heading", name="Untitled session")).to_be_visible()
    # every text the pending reply shows, even when several tokens land in one network read
    page.evaluate(
        """() => {
          window.partials = [];
          new MutationObserver((records) => {
            for (const r of records) {
              if (r.target.classList?.contains('body') && r.target.parentElement?.classList.contains('pending')) {
                for (const n of r.addedNodes) window.partials.push(n.textContent);
              }
            }
          }).observe(document.body, {subtree: true, childList: true});
        }"""
    )
    page.get_by_label("Your message").fill("How long does shipping take?")
    page.get_by_role("button", name="Send").click()
    expect(page.locator(".message.assistant .body")).to_have_text(re.compile("three to five business days"))
    partials: list[str] = page.evaluate("window.partials")
    growing = [p for p in dict.fromkeys(partials) if p and REPLY.startswith(p) and p != REPLY]
    assert len(growing) >= 2, f"no token-by-token rendering seen: {partials[:10]}"


# the fake provider has no CORS headers (the real one has): the browser refuses its answer and says so
@pytest.mark.allow_console("blocked by CORS policy", "net::ERR_FAILED")
def test_voice_controls_preview_and_realtime_bootstrap(
    page: Page, server: LiveServer, fake: FakeOpenAIServer, tmp_path: Path
) -> None:
    fake.enqueue_voice(Audio(tiny_wav(), "audio/wav"))
    sign_in(page, server, VENEO_KEY)
    page.get_by_role("button", name="New session").click()
    voice = page.get_by_label("Voice")
    expect(voice).to_be_visible()
    expect(voice).to_have_value("coral")  # Veneo's chat voice
    expect(voice.locator("option")).to_have_count(4)  # Veneo's four brand voices

    page.get_by_role("button", name="Play a preview").click()
    expect(page.get_by_role("button", name="Play a preview")).to_be_enabled()
    expect(page.locator("#voice-error")).to_be_hidden()
    assert any(r["path"].endswith("/audio/speech") for r in fake.voice_requests)

    # Talk: an ephemeral secret from the server, then the SDP offer to the provider's WebRTC endpoint, which the
    # fake cannot answer: the page says so, and nothing is left half-open
    page.get_by_role("button", name="Talk").click()
    expect(page.locator("#voice-error")).to_have_text(
        f"The voice service at 127.0.0.1:{fake.port} could not be reached. Try again later."
    )
    assert any(r["path"].endswith("/realtime/client_secrets") for r in fake.voice_requests)
    expect(page.get_by_role("button", name="Talk")).to_have_attribute("aria-pressed", "false")


def test_signing_out_ends_a_voice_call(page: Page, server: LiveServer) -> None:
    """Sign-out hid the workspace and dropped the key but left the call talking (microphone open, the provider
    connection up) with nothing on screen to stop it. The provider's realtime side is faked (FAKE_REALTIME_JS)."""
    page.add_init_script(FAKE_REALTIME_JS)
    sign_in(page, server, VENEO_KEY)
    page.get_by_role("button", name="New session").click()
    page.get_by_role("button", name="Talk").click()
    expect(page.get_by_role("button", name="Stop talking")).to_have_attribute("aria-pressed", "true")
    assert page.evaluate("window.fakeRealtime.peers.map((p) => p.connectionState)") == ["connected"]
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("Tenant key")).to_be_visible()
    assert page.evaluate("window.fakeRealtime.peers.map((p) => p.connectionState)") == ["closed"]
    assert page.evaluate("window.fakeRealtime.micStopped") == 1
    assert page.locator("#voice-panel *").count() == 0
    sign_in(page, server, VENEO_KEY)
    page.get_by_role("button", name="New session").click()
    expect(page.get_by_role("button", name="Talk")).to_have_attribute("aria-pressed", "false")


def until(page: Page, condition: str, timeout_s: float = 15.0) -> None:
    """Wait until the page's `condition` holds (wait_for_function evaluates a string, which the page's CSP forbids)."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(condition):
        assert time.monotonic() < deadline, f"still not true after {timeout_s} s: {condition}"
        page.wait_for_timeout(20)


def test_signing_out_ends_a_call_that_is_still_connecting(page: Page, server: LiveServer) -> None:
    """The call was registered only once connected: signed out while the microphone prompt was open, stopVoice found
    nothing, and the call then connected with the microphone live and no button left to stop it."""
    page.add_init_script(FAKE_REALTIME_JS)
    sign_in(page, server, VENEO_KEY)
    page.get_by_role("button", name="New session").click()
    page.evaluate("window.fakeRealtime.hold('mic')")  # the microphone grant is still pending
    page.get_by_role("button", name="Talk").click()
    until(page, "window.fakeRealtime.asked.mic === 1")
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("Tenant key")).to_be_visible()
    page.evaluate("window.fakeRealtime.release('mic')")  # granted after the sign-out
    page.wait_for_timeout(300)
    assert page.evaluate("window.fakeRealtime.peers.map((p) => p.connectionState)") == []  # no connection made
    assert page.evaluate("window.fakeRealtime.micStopped") == 1  # the late microphone is off again
    assert page.evaluate("window.fakeRealtime.asked.answer") == 0


def test_opening_another_session_ends_a_call_that_is_still_connecting(page: Page, server: LiveServer) -> None:
    """As above, with the provider's SDP answer outstanding when another session is opened: the old call connected
    afterwards and kept posting what was said to the session left behind."""
    page.add_init_script(FAKE_REALTIME_JS)
    sign_in(page, server, VENEO_KEY)
    page.get_by_role("button", name="New session").click()
    page.evaluate("window.fakeRealtime.hold('answer')")
    page.get_by_role("button", name="Talk").click()
    until(page, "window.fakeRealtime.asked.answer === 1")
    first = page.url
    page.get_by_role("button", name="New session").click()
    page.wait_for_url(lambda url: url != first and "#session=" in url)
    expect(page.get_by_role("button", name="Talk")).to_be_enabled()  # the new session's controls
    states = "window.fakeRealtime.peers.map((p) => p.connectionState)"
    assert page.evaluate(states) == ["closed"]  # hung up at once, the microphone with it
    assert page.evaluate("window.fakeRealtime.micStopped") == 1
    page.evaluate("window.fakeRealtime.release('answer')")
    page.wait_for_timeout(300)
    assert page.evaluate(states) == ["closed"]
    assert page.evaluate("window.fakeRealtime.micStopped") == 1
    expect(page.get_by_role("button", name="Talk")).to_have_attribute("aria-pressed", "false")
    expect(page.locator("#voice-error")).to_be_hidden()


@pytest.mark.allow_console("status of 401")
def test_a_key_refused_when_a_call_refreshes_the_session_signs_out_quietly(
    page: Page, server: LiveServer, page_errors: PageErrors
) -> None:
    """A transcript posted, then the session re-read with a key the server no longer accepts (a real 401: the
    request goes out with an unknown key): the sign-out happened, and `onResult: () => ctx.refresh()` left an
    unhandled rejection behind."""
    page.add_init_script(FAKE_REALTIME_JS)
    sign_in(page, server, VENEO_KEY)
    page.get_by_role("button", name="New session").click()
    page.get_by_role("button", name="Talk").click()
    expect(page.get_by_role("button", name="Stop talking")).to_have_attribute("aria-pressed", "true")
    revoked = {"authorization": "Bearer tg-revoked-key"}  # a key the server does not know
    page.route(
        "**/sessions/*",
        lambda route: (
            route.continue_(headers={**route.request.headers, **revoked})
            if route.request.method == "GET"
            else route.continue_()
        ),
    )
    page.evaluate(
        """(() => {
          const channel = window.fakeRealtime.channels[0];
          channel.emit({ type: "input_audio_buffer.speech_started", item_id: "item_1" });
          channel.emit({ type: "input_audio_buffer.speech_stopped", item_id: "item_1" });
          const done = "conversation.item.input_audio_transcription.completed";
          channel.emit({ type: done, item_id: "item_1", transcript: "How long does shipping take?" });
        })()"""
    )
    expect(page.locator("#signin-error")).to_have_text(re.compile(r"^Your key is no longer accepted"))
    page.wait_for_timeout(300)
    assert page_errors == []
    assert page.evaluate("window.fakeRealtime.peers.map((p) => p.connectionState)") == ["closed"]


SAID = """(() => {
  const channel = window.fakeRealtime.channels[window.fakeRealtime.channels.length - 1];
  channel.emit({ type: "input_audio_buffer.speech_started", item_id: "item_1" });
  channel.emit({ type: "input_audio_buffer.speech_stopped", item_id: "item_1" });
  const done = "conversation.item.input_audio_transcription.completed";
  channel.emit({ type: done, item_id: "item_1", transcript: "How long does shipping take?" });
})()"""


@pytest.mark.allow_console("status of 401")
def test_a_voice_post_refused_with_a_401_says_nothing_on_the_sign_in_page(page: Page, server: LiveServer) -> None:
    """Found in review: the key revoked mid-call, the transcript post answered 401: the page signed out (the voice
    panel went with the workspace) and the post's failure was then written into the status line of the sign-in
    page ("What you said in the call was not saved to the session (unknown API key)")."""
    page.add_init_script(FAKE_REALTIME_JS)
    sign_in(page, server, VENEO_KEY)
    page.get_by_role("button", name="New session").click()
    page.get_by_role("button", name="Talk").click()
    expect(page.get_by_role("button", name="Stop talking")).to_have_attribute("aria-pressed", "true")
    revoked = {"authorization": "Bearer tg-revoked-key"}  # a key the server does not know
    page.route("**/sessions/*/transcripts", lambda route: route.continue_(headers={**route.request.headers, **revoked}))
    page.evaluate(SAID)
    expect(page.locator("#signin-error")).to_have_text(re.compile(r"^Your key is no longer accepted"))
    page.wait_for_timeout(500)
    assert page.locator("#status").text_content() == ""


@pytest.mark.allow_console("status of 502")
def test_a_failing_voice_post_is_not_sent_again_or_told_after_sign_out(page: Page, server: LiveServer) -> None:
    """Found in review: a transcript post answered 502, then Sign out: the post was sent again three times with
    the forgotten key, and ~7 s later its failure was told in the status line, of the sign-in page or (another
    tenant signed in meanwhile) of that tenant's workspace."""
    page.add_init_script(FAKE_REALTIME_JS)
    sign_in(page, server, VENEO_KEY)
    page.get_by_role("button", name="New session").click()
    page.get_by_role("button", name="Talk").click()
    expect(page.get_by_role("button", name="Stop talking")).to_have_attribute("aria-pressed", "true")
    posts: list[str] = []

    def bad_gateway(route: Route) -> None:
        posts.append(route.request.headers.get("authorization", ""))
        route.fulfill(status=502, content_type="application/json", body='{"error": {"code": "bad_gateway"}}')

    page.route("**/sessions/*/transcripts", bad_gateway)
    page.evaluate(SAID)
    until(page, "window.fakeRealtime.peers.length === 1")
    deadline = time.monotonic() + 5
    while not posts:
        assert time.monotonic() < deadline, "no transcript post"
        page.wait_for_timeout(20)
    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("Tenant key").fill(DEMO_KEY)  # another tenant, in the same page (no reload)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Sessions")).to_be_visible()
    page.get_by_role("button", name="New session").click()
    page.wait_for_timeout(7_500)  # the retries (1, 2, 4 s) and the message would be over by now
    assert posts == [f"Bearer {VENEO_KEY}"], posts  # the first post only: no retry with the forgotten key
    assert "saved" not in (page.locator("#status").text_content() or "")
    expect(page.locator("#voice-error")).to_be_hidden()


@pytest.mark.allow_console("status of 502")
def test_could_not_be_saved_yet_goes_once_the_next_post_saves_it(page: Page, server: LiveServer) -> None:
    """Found in review: during a call, a post that failed with its retries said "What you said could not be saved
    yet…; it is sent again with what you say next", and the message stayed after the next post had saved it."""
    page.add_init_script(FAKE_REALTIME_JS)
    sign_in(page, server, VENEO_KEY)
    page.get_by_role("button", name="New session").click()
    page.get_by_role("button", name="Talk").click()
    expect(page.get_by_role("button", name="Stop talking")).to_have_attribute("aria-pressed", "true")
    posts: list[list[str]] = []

    def down_four_times(route: Route) -> None:
        posts.append([item["id"] for item in json.loads(route.request.post_data or "{}")["items"]])
        if len(posts) <= 4:  # the post and its three retries
            route.fulfill(status=502, content_type="application/json", body='{"error": {"code": "bad_gateway"}}')
        else:
            route.continue_()

    page.route("**/sessions/*/transcripts", down_four_times)
    page.evaluate(SAID)
    error = page.locator("#voice-error")
    expect(error).to_contain_text("What you said could not be saved yet", timeout=12_000)
    page.evaluate(
        """(() => {
          const channel = window.fakeRealtime.channels[0];
          channel.emit({ type: "input_audio_buffer.speech_started", item_id: "item_2" });
          channel.emit({ type: "input_audio_buffer.speech_stopped", item_id: "item_2" });
          const done = "conversation.item.input_audio_transcription.completed";
          channel.emit({ type: done, item_id: "item_2", transcript: "And to Norway?" });
        })()"""
    )
    expect(page.locator(".message.user")).to_have_count(2)  # both saved, the session drawn again
    expect(error).to_be_hidden()
    assert posts[-1] == ["item_1", "item_2"], posts
