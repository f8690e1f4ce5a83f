"""Browser tests: Debian's Chromium (headless, driven by Playwright for Python) against a real `teamgraph serve`.

No browser is downloaded: Playwright launches /usr/bin/chromium (`apt-get install chromium`; `.ci/run` installs
it when it is missing). One server serves every test of the module; each test signs in on a fresh page and fails
on any console error or uncaught exception the page produced.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Error, Page, Playwright, expect, sync_playwright

from tests.integration_tests.live_server import LiveServer

CHROMIUM = os.environ.get("TEAMGRAPH_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "docs" / "screenshots"
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}

expect.set_options(timeout=15_000)

# An init script standing in for the voice provider's side of a realtime call (as the fake OpenAI server stands in
# for its HTTP side): RTCPeerConnection whose data channel the test feeds realtime events (`emit`), a microphone,
# and the SDP answer of its WebRTC endpoint (any URL ending in /realtime/calls). window.fakeRealtime records the
# peers, the channels (each with what the page sent on it) and how many microphone tracks were stopped.
# `hold("mic")` / `hold("answer")` keep the microphone grant / the SDP answer waiting (a call still connecting)
# until `release(name)`; `asked` counts the microphone and answer requests made.
FAKE_REALTIME_JS = """
(() => {
  const gates = {};
  const record = (window.fakeRealtime = {
    peers: [],
    channels: [],
    micStopped: 0,
    asked: { mic: 0, answer: 0 },
    hold: (name) => (gates[name] = Promise.withResolvers()),
    release: (name) => gates[name].resolve(),
  });
  const held = (name) => (gates[name] ? gates[name].promise : Promise.resolve());
  class FakeChannel {
    constructor() {
      this.readyState = "open";
      this.sent = [];
      this.onmessage = null;
      record.channels.push(this);
    }
    send(message) {
      if (this.readyState !== "open") throw new DOMException("the channel is closed", "InvalidStateError");
      this.sent.push(JSON.parse(message));
    }
    emit(event) {
      this.onmessage({ data: JSON.stringify(event) });
    }
  }
  window.RTCPeerConnection = class {
    constructor() {
      this.connectionState = "new";
      this.channel = null;
      record.peers.push(this);
    }
    addTrack() {}
    createDataChannel() {
      return (this.channel = new FakeChannel());
    }
    async createOffer() {
      return { type: "offer", sdp: "v=0\\r\\n" };
    }
    async setLocalDescription(description) {
      this.localDescription = description;
    }
    async setRemoteDescription() {
      this.connectionState = "connected";
    }
    close() {
      this.connectionState = "closed";
      if (this.channel) this.channel.readyState = "closed";
    }
  };
  const track = { stop: () => (record.micStopped += 1) };
  const media = {
    getUserMedia: async () => {
      record.asked.mic += 1;
      await held("mic");
      return { getTracks: () => [track] };
    },
  };
  Object.defineProperty(navigator, "mediaDevices", { value: media, configurable: true });
  const realFetch = window.fetch.bind(window);
  const answer = async (init) => {
    record.asked.answer += 1;
    await held("answer");
    if (init && init.signal && init.signal.aborted) throw new DOMException("the request was aborted", "AbortError");
    return new Response("v=0\\r\\n", { status: 201, headers: { "Content-Type": "application/sdp" } });
  };
  window.fetch = (url, init) => (String(url).endsWith("/realtime/calls") ? answer(init) : realFetch(url, init));
})();
"""


# module scope, not session: while Playwright's sync API is started it keeps an event loop running on the main
# thread, and later tests of the suite call asyncio.run()
@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)")
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with LiveServer(tmp_path_factory.mktemp("web")) as live:
        yield live


class PageErrors(list[str]):
    """Console errors and uncaught exceptions of one page."""


@pytest.fixture
def page_errors() -> PageErrors:
    return PageErrors()


def _watch(page: Page, errors: PageErrors, allowed: tuple[str, ...] = ()) -> None:
    def on_console(message: ConsoleMessage) -> None:
        # the browser logs every 4xx/5xx fetch as a console error; tests that provoke one list its status
        if message.type == "error" and not any(a in message.text for a in allowed):
            errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))


@pytest.fixture
def page(browser: Browser, page_errors: PageErrors, request: pytest.FixtureRequest) -> Iterator[Page]:
    marker = request.node.get_closest_marker("allow_console")
    allowed: tuple[str, ...] = tuple(marker.args) if marker else ()
    context = browser.new_context(viewport=DESKTOP, accept_downloads=True)
    page = context.new_page()
    _watch(page, page_errors, allowed)
    yield page
    context.close()
    assert not page_errors, f"the page logged errors: {page_errors}"


def sign_in(page: Page, server: LiveServer, key: str, team_label: str | None = None) -> None:
    page.goto(server.url + "/")
    page.get_by_label("Tenant key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Sessions")).to_be_visible()
    if team_label:
        page.get_by_label("Team").select_option(label=team_label)


def screenshot(page: Page, name: str) -> None:
    """<name>.png of the whole page: into docs/screenshots with UPDATE_SCREENSHOTS=1 (the docs show them), else
    into a temporary directory, so a test run leaves the work tree as it was."""
    folder = SCREENSHOTS if os.environ.get("UPDATE_SCREENSHOTS") == "1" else Path(tempfile.gettempdir()) / "tg-shots"
    folder.mkdir(parents=True, exist_ok=True)
    page.evaluate("document.querySelectorAll('#chat-log').forEach((log) => (log.scrollTop = log.scrollHeight))")
    # the status toast is fixed to the viewport: in a full-page picture it would float over the content (and
    # Playwright's `style=` option is an inline style, which the page's CSP rightly refuses)
    page.evaluate("document.getElementById('status').hidden = true")
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)
    page.evaluate("document.getElementById('status').hidden = false")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "allow_console(*texts): console errors containing these texts are expected")


__all__ = ["DESKTOP", "FAKE_REALTIME_JS", "PHONE", "Error", "screenshot", "sign_in"]
