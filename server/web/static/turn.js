// One turn of a team over /stream_events, sent with an Idempotency-Key, and what to do when it does not end well.
import { ApiError } from "./api.js";
import { announce, h, showError } from "./dom.js";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const STORE = "teamgraph.turn."; // sessionStorage: this tab's unsettled turn per session, {text, key}

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

/** The Idempotency-Key of this text as the session's next turn: the key of the last unsettled send of the same
 * text on the session (a resend after a failure, also after a reload of the tab), else a new one. */
function keyFor(sessionId, text) {
  const pending = readPending(sessionId);
  if (pending && pending.text === text) return pending.key;
  const key = newKey();
  writePending(sessionId, { text, key });
  return key;
}

/** Whether the server refused the turn before running it (nothing stored, the key unused). */
function refused(error) {
  return error instanceof ApiError && error.status >= 400 && error.status < 500 && ![408, 409, 429].includes(error.status);
}

/** The turn this page sent, if the session now holds it: a user message and a reply that were not there before
 * (by message id: with an archive limit the transcript is a window, and positions move). */
async function findStored(ctx, before, attempts) {
  for (let attempt = 0; attempt < attempts; attempt += 1) {
    if (attempt) await sleep(1500);
    try {
      const now = await ctx.api.session(ctx.session.id);
      const added = now.transcript.filter((m) => m.id && !before.has(m.id));
      if (added.some((m) => m.role === "user") && added.some((m) => m.role === "assistant")) return true;
    } catch {
      // still offline: keep trying a few times
    }
  }
  return false;
}

/**
 * Send `text` as the next human message of the open session, calling onEvent for each stream event.
 * Resolves when the turn is stored (streamed to its end, answered by the server as stored before, or found in the
 * session after a failure); rejects when it may not be, the text then being safe to send again: the resend
 * carries the same Idempotency-Key, so a turn the server stored after all (or still runs: a keyed turn runs to
 * its end without its client) is not stored twice; the server answers it with `turn_already_stored`.
 */
export async function runTurn(ctx, text, onEvent) {
  const { api, session } = ctx;
  const before = new Set(session.transcript.map((m) => m.id).filter(Boolean));
  const key = keyFor(session.id, text);
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
    if (error instanceof ApiError && error.code === "idempotent_turn_outcome_unknown") writePending(session.id, null);
    // the turn may be stored (a stream cut, or an error after the state was saved): the session says
    const lost = error instanceof ApiError && error.code === "stream_lost";
    announce(lost ? "The connection was lost while the reply was streaming; checking the session…" : "Checking whether your message was saved…", { sticky: lost });
    if (await findStored(ctx, before, lost ? 8 : 2)) {
      writePending(session.id, null);
      announce(lost ? "The connection dropped, but the reply was saved: it is shown from the server." : "The turn ended in an error, but your message and its reply were saved: they are shown from the server.");
      return { stored: "found" };
    }
    if (error instanceof ApiError && error.code === "idempotent_turn_outcome_unknown") {
      // the server would not tell whether an earlier send was stored; the session says it was not
      throw new ApiError(error.status, error.code, "An earlier send of this message failed and it is not in the session: send it again.");
    }
    if (lost) {
      throw new ApiError(0, "stream_lost", "The connection was lost and the reply did not arrive. Check your connection, then send your message again: it will not be saved twice.");
    }
    throw error;
  }
  writePending(session.id, null);
  if (replayed) announce("This message was already saved: it is shown from the server.");
  return { stored: replayed ? "before" : "now" };
}

/**
 * After a stored turn: show the session as the server has it. A failed read is not a failed turn (the message is
 * stored: sending it again would be a second turn), so it is tried again; then the error is shown in `errorEl`
 * with a "Show the reply" button (#show-saved) that reads the session again. The caller keeps its controls
 * disabled: the redraw of the session gives fresh ones.
 */
export async function showStored(ctx, focus, errorEl) {
  for (let attempt = 0; ; attempt += 1) {
    try {
      await ctx.refresh({ focus });
      return true;
    } catch (error) {
      if (attempt >= 2) break;
      await sleep(1000);
    }
  }
  showError(errorEl, new Error("Your message was saved, but the reply could not be loaded. Do not send it again: use “Show the reply”."));
  const again = h("button", { type: "button", id: "show-saved", class: "secondary" }, "Show the reply");
  again.addEventListener("click", async () => {
    again.disabled = true;
    if (!(await showStored(ctx, focus, errorEl))) again.remove();
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
