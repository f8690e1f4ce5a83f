// One turn of a team over /stream_events, sent with an Idempotency-Key, and what to do when it does not end well.
import { ApiError } from "./api.js";
import { announce, h, showError, unannounce } from "./dom.js";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const STORE = "teamgraph.turn."; // sessionStorage: this tab's unsettled turn per session, {text, key, after}

/** A fresh random key (a UUID where the browser offers one: randomUUID needs a secure context). */
function newKey() {
  if (globalThis.crypto && typeof crypto.randomUUID === "function") return crypto.randomUUID();
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}

const memory = new Map(); // where sessionStorage is not available
function readPending(sessionId) {
  try {
    const raw = sessionStorage.getItem(STORE + sessionId);
    return raw ? JSON.parse(raw) : null;
  } catch {
    return memory.get(sessionId) || null;
  }
}
function writePending(sessionId, pending) {
  memory.set(sessionId, pending);
  try {
    if (pending) sessionStorage.setItem(STORE + sessionId, JSON.stringify(pending));
    else sessionStorage.removeItem(STORE + sessionId);
  } catch {
    // private mode or storage full: kept for the page's life only
  }
  if (!pending) memory.delete(sessionId);
}

const flights = new Map(); // session id -> the turn this page is running on it: {text, before, shown}

/** The turn this page is running on the session, or null: a view drawn mid-turn (a rename, a voice transcript
 * redraw the session) draws it busy, with what `shown` holds of the turn so far (the view keeps it there). */
export function turnInFlight(sessionId) {
  return flights.get(sessionId) || null;
}

/** Whether the page is still signed in with the key the turn's view was drawn with: once a 401 (or Sign out) has
 * signed it out, a turn stops where it is and writes nothing more into the page (main.js clears it). */
const signedIn = (ctx) => !ctx.signedIn || ctx.signedIn();
/** The status line, while still signed in. */
const say = (ctx, text, options) => signedIn(ctx) && announce(text, options);

const unsent = new Map(); // session id -> {text, error, index}: a failed turn's text whose view was not on screen
let told = null; // {sessionId, text}: the last "…in another session" message put in the status line

/**
 * A turn that was not stored failed while another session was on screen: its text (and the error) is kept for
 * its session, for the life of the page, and told in the status line; the session's view puts it back in its box
 * when it is drawn next (takeUnsent). Nothing is kept once signed out (forgetUnsent, which also drops the records
 * of unsettled turns).
 */
export function keepUnsent(sessionId, kept, what = "Your message") {
  if (kept.error && kept.error.saved) {
    // stored after all, without a reply: not "not sent", and its text is not put back in the box (a resend would
    // store it twice); the session shows the error when it is opened again
    unsent.set(sessionId, { ...kept, text: "" });
    told = { sessionId, text: `${what} in another session was saved, but no reply was made to it: open that session to see it.` };
  } else {
    unsent.set(sessionId, kept);
    told = { sessionId, text: `${what} in another session was not sent (${kept.error.message || kept.error}). It is back in its box when you open that session again.` };
  }
  announce(told.text, { sticky: true });
}

/** The kept text of a failed turn of this session, or null; taken (a second draw of the view has none). */
export function takeUnsent(sessionId) {
  const kept = unsent.get(sessionId) || null;
  unsent.delete(sessionId);
  // the status line's "…not sent" about this session has done its work (the box and its error say it now); a
  // newer message (another session's, or anything else since) stays
  if (kept && told && told.sessionId === sessionId) {
    unannounce(told.text);
    told = null;
  }
  return kept;
}

export function forgetUnsent() {
  unsent.clear();
  told = null;
  // the unsettled turns' records too (their text and key, this tab's sessionStorage): nothing of the tenant's is
  // left in the page; a resend after signing in again is a new turn
  memory.clear();
  try {
    const names = Array.from({ length: sessionStorage.length }, (_, i) => sessionStorage.key(i));
    for (const name of names) if (name && name.startsWith(STORE)) sessionStorage.removeItem(name);
  } catch {
    // no sessionStorage: `memory` was all there was
  }
}

/** The element `id` if it is on screen for this session (the view was drawn again mid-turn: its elements are new). */
export function live(id, sessionId) {
  const el = document.getElementById(id);
  const view = el && el.closest("[data-session]");
  return view && view.dataset.session === sessionId ? el : null;
}

const REDACTED = /\[(?:email|card number|phone) removed\]/; // what PII redaction leaves in a stored message
/**
 * Whether a stored user message is this text (as stored: the PII it carried may have been redacted). Each
 * redaction marker stands for some non-empty part of the text: the stored text's first part is a prefix of the
 * text, its last part a suffix, and the parts between are found in order, each after a non-empty gap. No
 * backtracking: one indexOf scan per part (its leftmost match after the previous one), never a backtracking
 * pattern: a message with many redactions against a long text that differs (a RegExp of the parts joined by
 * `[^]+?` took polynomial time and froze the tab) answers at once.
 */
export function sameText(stored, text) {
  if (typeof stored !== "string" || typeof text !== "string") return false;
  if (stored === text) return true;
  const parts = stored.split(REDACTED);
  if (parts.length < 2) return false;
  const first = parts[0];
  const last = parts[parts.length - 1];
  if (!text.startsWith(first)) return false;
  let at = first.length; // where the next gap starts
  const end = text.length - last.length; // where the last part must start
  for (const part of parts.slice(1, -1)) {
    const found = text.indexOf(part, at + 1); // after a gap of one character at least
    if (found < 0 || found + part.length > end - 1) return false;
    at = found + part.length;
  }
  return end >= at + 1 && text.endsWith(last);
}

const lastId = (transcript) => (transcript.length ? transcript[transcript.length - 1].id || null : null);

/** The messages stored after message `after` (all of them when it is null), or null when it is not in the
 * transcript (a window that has moved past it). */
function storedAfter(transcript, after) {
  if (!after) return transcript;
  const at = transcript.findIndex((m) => m.id === after);
  return at < 0 ? null : transcript.slice(at + 1);
}

/** Whether the messages stored after `after` hold this text's user message (one turn: no other user message). */
function onlyThisTurn(transcript, after, text) {
  const users = (storedAfter(transcript, after) || []).filter((m) => m.role === "user");
  return users.length === 1 && sameText(users[0].content, text);
}

/**
 * The Idempotency-Key of this text as the session's next turn. The key of the last unsettled send of the same
 * text on the session (a resend after a failure, also after a reload of the tab) only while that send can be the
 * one the person is repeating: the session (`current`, read just now) still ends where it ended when the key was
 * made, or its only turn since is that text; and the page (`seen`) does not show that turn (then this is a new
 * message: "yes" to the next question, a second /summarize). Otherwise a new key, kept with the session's last
 * message id.
 */
function keyFor(sessionId, text, current, seen) {
  const pending = readPending(sessionId);
  if (pending && pending.text === text && "after" in pending) {
    const unchanged = lastId(current) === pending.after || onlyThisTurn(current, pending.after, text);
    const shown = (storedAfter(seen, pending.after) || []).some((m) => m.role === "user" && sameText(m.content, text));
    if (unchanged && !shown) return pending.key;
  }
  const key = newKey();
  writePending(sessionId, { text, key, after: lastId(current) });
  return key;
}

/** Whether the server refused the request before running the turn (nothing stored, the key unused): an HTTP
 * status of the request, never an `event: error` of its stream (the turn had started). */
function refused(error) {
  return error instanceof ApiError && !error.inStream && error.status >= 400 && error.status < 500 && ![408, 409, 429].includes(error.status);
}

/** What the session holds of the turn this page sent: "turn" (this text as a user message, a reply after it),
 * "message" (the user message only: the turn failed after its first step), or null; by message id, against the
 * ids stored before the turn (with an archive limit the transcript is a window, and positions move). */
async function findStored(ctx, before, text, attempts) {
  let found = null;
  for (let attempt = 0; attempt < attempts; attempt += 1) {
    if (attempt) await sleep(1500);
    if (!signedIn(ctx)) break; // a 401 signed the page out: the session is not read with that key again
    try {
      const now = await ctx.api.session(ctx.session.id);
      const added = now.transcript.filter((m) => m.id && !before.has(m.id));
      const at = added.findIndex((m) => m.role === "user" && sameText(m.content, text));
      if (at >= 0 && added.slice(at + 1).some((m) => m.role === "assistant")) return "turn";
      if (at >= 0) found = "message";
    } catch {
      // still offline: keep trying a few times
    }
  }
  return found;
}

/**
 * Send `text` as the next human message of the open session, calling onEvent for each stream event; `shown`: the
 * view's own record of the turn so far, for a redraw mid-turn (turnInFlight).
 * Resolves when the turn is stored (streamed to its end, answered by the server as stored before, or found in the
 * session after a failure); rejects when it may not be, the text then being safe to send again: the resend
 * carries the same Idempotency-Key, so a turn the server stored after all (or still runs: a keyed turn runs to
 * its end without its client) is not stored twice; the server answers it with `turn_already_stored`.
 */
export async function runTurn(ctx, text, onEvent, shown = {}) {
  const { session } = ctx;
  if (flights.has(session.id)) throw new ApiError(0, "turn_running", "A reply is still on its way: wait for it, then send your message.");
  const flight = { text, before: null, shown };
  flights.set(session.id, flight);
  try {
    return await sendTurn(ctx, text, onEvent, flight);
  } finally {
    flights.delete(session.id);
  }
}

async function sendTurn(ctx, text, onEvent, flight) {
  const { api, session } = ctx;
  // the session as it is now, not as last drawn: another tab, the API or a voice call may have added to it
  let current = session.transcript;
  try {
    current = (await api.session(session.id)).transcript;
  } catch {
    // unreadable just now: what the page shows (the send will tell)
  }
  if (!signedIn(ctx)) throw new ApiError(401, "signed_out", "Signed out before the message was sent."); // by that read's 401
  const before = new Set(current.map((m) => m.id).filter(Boolean));
  flight.before = before;
  const key = keyFor(session.id, text, current, session.transcript);
  let replayed = false;
  try {
    await api.streamEvents(session.team, session.id, { messages: [{ type: "human", content: text }] }, (event) => {
      if (event.event === "on_custom_event" && event.name === "turn_already_stored") replayed = true;
      else onEvent(event);
    }, { key });
  } catch (error) {
    if (error && error.name === "AbortError") throw error;
    if (refused(error)) {
      writePending(session.id, null); // nothing ran: the next send of it is a new turn
      throw error;
    }
    const doubt = error instanceof ApiError && error.code === "idempotent_turn_outcome_unknown";
    if (doubt) writePending(session.id, null); // the server takes that key no more
    // the turn may be stored (a stream cut, or an error after the state was saved): the session says
    const lost = error instanceof ApiError && error.code === "stream_lost";
    say(ctx, lost ? "The connection was lost while the reply was streaming; checking the session…" : "Checking whether your message was saved…", { sticky: lost });
    const found = await findStored(ctx, before, text, lost ? 8 : 2);
    if (found === "turn") {
      writePending(session.id, null);
      say(ctx, lost ? "The connection dropped, but the reply was saved: it is shown from the server." : "The turn ended in an error, but your message and its reply were saved: they are shown from the server.");
      return { stored: "found" };
    }
    if (doubt) {
      // the server would not tell whether an earlier send was stored; the session says
      const told = new ApiError(error.status, error.code, found === "message"
        ? "Your message was saved, but no reply was made to it. Sending it again would store it a second time: reload the session to see it, or write a new message."
        : "An earlier send of this message failed and it is not in the session: send it again.");
      told.saved = found === "message"; // stored: the text is not offered for a resend
      throw told;
    }
    if (lost) {
      throw new ApiError(0, "stream_lost", "The connection was lost and the reply did not arrive. Check your connection, then send your message again: it will not be saved twice.");
    }
    throw error;
  }
  writePending(session.id, null);
  if (replayed) say(ctx, "This message was already saved: it is shown from the server.");
  return { stored: replayed ? "before" : "now" };
}

const SAVED_UNREAD = "Your message was saved, but the reply could not be loaded. Do not send it again: use “Show the reply”.";

/**
 * After a stored turn: show the session as the server has it. A failed read is not a failed turn (the message is
 * stored: sending it again would be a second turn), so it is tried again; then `message` (that it was saved) is
 * shown in `errorEl` with a "Show the reply" button (#show-saved) that reads the session again, and false is
 * returned. The caller keeps its controls disabled: the redraw of the session gives fresh ones.
 */
export async function showStored(ctx, focus, errorEl, message = SAVED_UNREAD) {
  for (let attempt = 0; ; attempt += 1) {
    try {
      await ctx.refresh({ focus });
      return true;
    } catch (error) {
      if (attempt >= 2) break;
      await sleep(1000);
    }
  }
  if (!errorEl.isConnected) return false; // the view was drawn again meanwhile: it has its own controls
  showError(errorEl, new Error(message));
  const again = h("button", { type: "button", id: "show-saved", class: "secondary" }, "Show the reply");
  again.addEventListener("click", async () => {
    again.disabled = true;
    if (!(await showStored(ctx, focus, errorEl, message))) again.remove();
  });
  errorEl.after(again);
  again.focus();
  return false;
}

/** The final output of a graph node in a stream event, or null. */
export function nodeOutput(event, ...names) {
  if (event.event !== "on_chain_end" || !names.includes(event.name)) return null;
  const output = event.data && event.data.output;
  return output && typeof output === "object" ? output : null;
}
