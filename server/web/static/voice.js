// Voice, only where the server has a provider (GET /voice/voices says `available`): pick a voice, preview it,
// and talk over the provider's realtime connection with the ephemeral secret from POST /sessions/{id}/realtime;
// the realtime transcript goes back to POST /sessions/{id}/transcripts, so spoken turns land in the session.
import { ApiError } from "./api.js";
import { h, clear, showError, announce } from "./dom.js";

// a transcript post that fails is sent again after these waits (the same items: the server applies an item id
// once and answers a re-posted one as a duplicate), then the person is told what was said was not saved
export const POST_RETRY_MS = [1000, 2000, 4000];
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
/** The server refused the post (nothing of it applied, and the same post would be refused again: a 409
 * transcript_out_of_order, a 422); api.js has already waited out a 409 thread_busy and a 429. */
const refusedPost = (err) =>
  err instanceof ApiError && err.status >= 400 && err.status < 500 && err.status !== 408 && err.status !== 429 && err.code !== "thread_busy";

let ctx = null; // the open session's context; main.js updates it after every refresh
let activeCall = null; // the call in progress, whichever panel started it: ended on sign-out or another session
// session id -> the transcript posting running on it, of whichever call: a call's posts wait for an earlier
// call's (a stopped call may still be sending its last items again), so items reach the server in speaking order
const postings = new Map();

/** End the call in progress, if any (sign-out; another session opened): what was said is posted first. */
export function stopVoice() {
  if (activeCall) activeCall.stop();
}

export function voiceContext(next) {
  ctx = next;
}

export async function setupVoice(panel, initial) {
  ctx = initial;
  panel.hidden = true;
  clear(panel);
  let catalog;
  try {
    catalog = await ctx.api.voices(ctx.session.team);
  } catch {
    return; // no voice for this team or tenant: the controls stay hidden
  }
  if (!catalog.available || !catalog.voices.length) return;
  if (!ctx || ctx.session.id !== initial.session.id) return; // another session was opened meanwhile
  const select = h("select", { id: "voice-select" }, catalog.voices.map((v) => h("option", { value: v.id, selected: v.default }, `${v.name} — ${v.description}`)));
  const error = h("p", { class: "error", role: "alert", id: "voice-error", hidden: true });
  const preview = h("button", { type: "button", id: "voice-preview", class: "secondary" }, "Play a preview");
  const talk = h("button", { type: "button", id: "voice-talk", "aria-pressed": "false" }, "Talk");
  const state = h("span", { class: "muted", id: "voice-state" }, "");
  let call = null;
  let notYet = null; // the error line's "could not be saved yet", until a post of the call succeeds

  preview.addEventListener("click", async () => {
    showError(error, null);
    preview.disabled = true;
    try {
      const audio = new Audio(URL.createObjectURL(await ctx.api.preview(select.value, ctx.session.team)));
      await audio.play().catch(() => {
        throw new Error("The preview arrived but this browser could not play it.");
      });
    } catch (err) {
      showError(error, err);
    } finally {
      preview.disabled = false;
    }
  });

  talk.addEventListener("click", async () => {
    showError(error, null);
    if (call) {
      call.stop();
      return;
    }
    talk.disabled = true;
    try {
      call = await startCall(ctx, select.value, {
        onState: (text) => (state.textContent = text),
        onResult: () => {
          // the items that could not be saved went with this post: that message is over
          if (notYet && error.textContent === notYet) showError(error, null);
          notYet = null;
          ctx.refresh().catch((err) => showError(error, err)); // not an unhandled rejection
        },
        // the panel is another session's once that session is opened (the call ends, its last post may fail
        // later): then the status line says it, not a detached element
        onError: (err) => {
          notYet = err.pending ? err.message : null;
          if (error.isConnected) showError(error, err);
          else announce(err.message, { sticky: true });
        },
        onEnd: () => {
          call = null;
          talk.textContent = "Talk";
          talk.setAttribute("aria-pressed", "false");
          state.textContent = "";
        },
      });
      talk.textContent = "Stop talking";
      talk.setAttribute("aria-pressed", "true");
      announce("Connected: speak now.");
    } catch (err) {
      if (!(err instanceof CallCancelled)) showError(error, err); // ended while connecting: nothing went wrong
    } finally {
      talk.disabled = false;
    }
  });

  panel.append(
    h("h3", { class: "visually-hidden" }, "Voice"),
    h("div", { class: "row" }, h("label", { for: "voice-select" }, "Voice"), select, preview, talk, state),
    error,
  );
  panel.hidden = false;
}

/** startCall's rejection when the call was ended while still connecting (sign-out, another session, a new call). */
export class CallCancelled extends Error {
  constructor() {
    super("The call was ended before it connected.");
    this.name = "CallCancelled";
  }
}

/** The realtime call, as in docs/voice.md: microphone in, voice out, transcript items posted back in order. */
export async function startCall(callCtx, voice, { onState, onResult, onError, onEnd }) {
  if (!window.RTCPeerConnection || !navigator.mediaDevices) throw new Error("This browser cannot make voice calls.");
  const sessionId = callCtx.session.id;
  // still signed in with the key the call was started with: once Sign out or a 401 has signed the page out, no
  // post goes out with that key (a failed one is not sent again) and nothing is said (the page shows the sign-in
  // form by then, or the workspace of whoever signed in next)
  const signedIn = () => !callCtx.signedIn || callCtx.signedIn();
  // registered before the first await: sign-out or another session can end the call while it is still connecting
  // (stopVoice found nothing to stop before, and the call connected afterwards with the microphone live); what it
  // holds is released at once, and each await below turns into CallCancelled
  let mic = null;
  let pc = null;
  let released = false;
  let cancelled = false;
  let connected = null; // the connected call's stop, once connected
  const answerRequest = new AbortController();
  const release = () => {
    if (pc && pc.connectionState !== "closed") pc.close();
    if (mic && !released) mic.getTracks().forEach((t) => t.stop()); // once
    released = released || !!mic;
  };
  const handle = {
    stop: () => {
      if (connected) return connected();
      if (cancelled) return;
      cancelled = true;
      if (activeCall === handle) activeCall = null;
      answerRequest.abort();
      release();
    },
  };
  if (activeCall) activeCall.stop(); // one call at a time: the microphone is not shared
  activeCall = handle;
  /** `promise`'s value, or CallCancelled (whatever it settled with) when the call was ended meanwhile. */
  const step = async (promise) => {
    let value;
    try {
      value = await promise;
    } catch (err) {
      throw cancelled ? new CallCancelled() : err;
    }
    if (cancelled) throw new CallCancelled();
    return value;
  };
  let boot;
  let events;
  const host = () => new URL(boot.webrtc_url).host;
  try {
    boot = await step(callCtx.api.realtime(sessionId, voice));
    const microphone = () => {
      throw new Error("The microphone is not available: allow it for this page and try again.");
    };
    // kept as soon as granted: granted after the call ended, it is released with the rest
    await step(navigator.mediaDevices.getUserMedia({ audio: true }).then((stream) => (mic = stream), microphone));
    pc = new RTCPeerConnection();
    const speaker = new Audio();
    speaker.autoplay = true;
    pc.ontrack = (event) => (speaker.srcObject = event.streams[0]);
    pc.addTrack(mic.getTracks()[0]);
    events = pc.createDataChannel("oai-events");
    await step(pc.setLocalDescription(await step(pc.createOffer())));
    const unreachable = () => {
      throw new Error(`The voice service at ${host()} could not be reached. Try again later.`);
    };
    const answer = await step(
      fetch(boot.webrtc_url, {
        method: "POST",
        body: pc.localDescription.sdp,
        headers: { Authorization: `Bearer ${boot.client_secret}`, "Content-Type": "application/sdp" },
        signal: answerRequest.signal,
      }).catch(unreachable),
    );
    if (!answer.ok) throw new Error(`The voice service refused the connection (${answer.status}).`);
    const sdp = await step(answer.text().catch(unreachable));
    await step(pc.setRemoteDescription({ type: "answer", sdp }));
  } catch (err) {
    if (activeCall === handle) activeCall = null;
    release();
    throw err;
  }
  const peer = pc;
  const tracks = mic.getTracks();

  const times = {};
  const pending = [];
  let posting = false;
  let stopped = false; // Stop (or a lost connection) ended the call
  const now = () => new Date().toISOString();
  // one post at a time (items apply in speaking order); items transcribed while one is in flight go in the next,
  // sent as soon as it ends: not left waiting for the next realtime event, which after Stop never comes. A post
  // that fails is sent again (POST_RETRY_MS; the ids make it safe), then the person is told: the items stay
  // pending while the call runs (its next item posts them again), after Stop nothing posts them any more. A post
  // the server refused (a 4xx: out of order, invalid) is not sent again: its items are dropped, and said so.
  function flush() {
    if (posting || !pending.length) return;
    posting = true;
    // the first post goes out now when nothing is ahead of it (at sign-out, while the key is still the page's);
    // otherwise after the earlier call's posting has ended (a new call at once after Stop)
    const ahead = postings.get(sessionId);
    const run = (ahead ? ahead.then(post) : post()).catch(() => {}); // post tells its own failures
    postings.set(sessionId, run);
    run.finally(() => postings.get(sessionId) === run && postings.delete(sessionId));
  }
  async function post() {
    let failed = null;
    for (let attempt = 0; pending.length; attempt += 1) {
      if (!signedIn()) {
        pending.length = 0; // signed out: nothing more goes out with that key, and nothing is said
        break;
      }
      const items = pending.slice();
      try {
        const result = await callCtx.api.transcripts(sessionId, items);
        pending.splice(0, items.length); // acknowledged; anything else is posted next
        attempt = -1; // the next batch has its own retries
        if (events.readyState === "open") {
          // after Stop the channel is closed: the items still land in the session, there is just no voice to update
          events.send(JSON.stringify({ type: "session.update", session: result.session_update }));
          if (result.speak) {
            events.send(JSON.stringify({ type: "response.create", response: { instructions: `Say exactly this, and nothing else: ${result.speak}` } }));
          }
        }
        onResult(result);
      } catch (err) {
        if (refusedPost(err)) {
          pending.splice(0, items.length);
          failed = err;
          break;
        }
        if (attempt >= POST_RETRY_MS.length) {
          failed = err;
          break;
        }
        await sleep(POST_RETRY_MS[attempt]);
      }
    }
    posting = false;
    if (failed && signedIn()) {
      const lost = refusedPost(failed) || stopped; // nothing will post these items again
      // the server's 409 names item indexes and timestamps: the person is told what happened instead
      const why = failed.code === "transcript_out_of_order" ? "something said after it was saved first" : failed.message;
      const told = new Error(lost
        ? `What you said in the call was not saved to the session (${why}).`
        : `What you said could not be saved yet (${why}); it is sent again with what you say next.`);
      told.pending = !lost; // the items are still to be posted: a later post that succeeds saves them
      try {
        onError(told);
      } catch {
        // the panel's handler: the next call's posts still go on
      }
    }
  }
  events.onmessage = ({ data }) => {
    const e = JSON.parse(data);
    if (e.type === "input_audio_buffer.speech_started") (times[e.item_id] = { started_at: now() }), onState("Listening…");
    if (e.type === "input_audio_buffer.speech_stopped") (times[e.item_id] = { ...times[e.item_id], ended_at: now() }), onState("Thinking…");
    if (e.type === "conversation.item.input_audio_transcription.completed") {
      pending.push({ id: e.item_id, role: "user", text: e.transcript, ...times[e.item_id] });
      flush();
    }
    if (e.type === "response.output_audio_transcript.delta" && !times[e.item_id]) (times[e.item_id] = { started_at: now() }), onState("Speaking…");
    if (e.type === "response.output_audio_transcript.done") {
      pending.push({ id: e.item_id, role: "assistant", text: e.transcript, ...times[e.item_id], ended_at: now() });
      flush();
    }
  };
  peer.onconnectionstatechange = () => {
    if (["failed", "closed"].includes(peer.connectionState)) stop(peer.connectionState === "failed" ? new Error("The voice connection was lost.") : null);
  };
  function stop(err = null) {
    if (stopped) return; // Stop, then the "closed" state change it causes
    stopped = true;
    if (activeCall === handle) activeCall = null;
    tracks.forEach((t) => t.stop());
    if (peer.connectionState !== "closed") peer.close();
    flush(); // what is pending now; one in flight posts the rest when it ends
    if (err && signedIn()) onError(err);
    onEnd();
  }
  connected = () => stop();
  onState("Connected");
  return handle;
}
