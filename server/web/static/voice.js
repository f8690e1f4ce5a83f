// Voice, only where the server has a provider (GET /voice/voices says `available`): pick a voice, preview it,
// and talk over the provider's realtime connection with the ephemeral secret from POST /sessions/{id}/realtime;
// the realtime transcript goes back to POST /sessions/{id}/transcripts, so spoken turns land in the session.
import { h, clear, showError, announce } from "./dom.js";

let ctx = null; // the open session's context; main.js updates it after every refresh
let activeCall = null; // the call in progress, whichever panel started it: ended on sign-out or another session

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
        onResult: () => ctx.refresh().catch((err) => showError(error, err)), // not an unhandled rejection
        onError: (err) => showError(error, err),
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
  const now = () => new Date().toISOString();
  // one post at a time (items apply in speaking order); items transcribed while one is in flight go in the next,
  // sent as soon as it ends: not left waiting for the next realtime event, which after Stop never comes
  async function flush() {
    if (posting || !pending.length) return;
    posting = true;
    const items = pending.slice();
    let posted = false;
    try {
      const result = await callCtx.api.transcripts(sessionId, items);
      pending.splice(0, items.length); // acknowledged; anything else is re-posted next time (ids make it safe)
      posted = true;
      if (events.readyState === "open") {
        // after Stop the channel is closed: the items still land in the session, there is just no voice to update
        events.send(JSON.stringify({ type: "session.update", session: result.session_update }));
        if (result.speak) {
          events.send(JSON.stringify({ type: "response.create", response: { instructions: `Say exactly this, and nothing else: ${result.speak}` } }));
        }
      }
      onResult(result);
    } catch (err) {
      onError(err); // the items stay pending: the next flush posts them again
    } finally {
      posting = false;
    }
    if (posted && pending.length) await flush();
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
  let stopped = false;
  function stop(err = null) {
    if (stopped) return; // Stop, then the "closed" state change it causes
    stopped = true;
    if (activeCall === handle) activeCall = null;
    tracks.forEach((t) => t.stop());
    if (peer.connectionState !== "closed") peer.close();
    flush(); // what is pending now; one in flight posts the rest when it ends
    if (err) onError(err);
    onEnd();
  }
  connected = () => stop();
  onState("Connected");
  return handle;
}
