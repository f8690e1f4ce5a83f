// The chat (veneo_chat, under the tenant's own name): the transcript (Markdown rendered safely), replies streamed token by token where the tenant lets
// drafts through, otherwise shown whole once the safety reviewer has passed them; blocked or rewritten replies
// carry a badge with the reason category; /summarize is a button.
import { h, clear, showError, announce } from "./dom.js";
import { renderMarkdown } from "./markdown.js";
import { runTurn, showStored, nodeOutput, turnInFlight, live, keepUnsent, takeUnsent } from "./turn.js";

const ACTIONS = { block: "Blocked", rewrite: "Rewritten" };

export function renderChat(root, ctx) {
  const { session } = ctx;
  const name = ctx.tenantName || "Assistant"; // the tenant's display name (GET /teams tenant_name)
  clear(root);
  root.dataset.session = session.id; // the turn running on it finds this view's elements (turn.js live)
  const log = h("div", { class: "chat-log", id: "chat-log", role: "log", "aria-live": "polite", "aria-label": "Conversation", "aria-busy": "false", tabindex: "0" });
  for (const message of session.transcript) log.append(messageView(message, name));
  const form = h("form", { class: "composer", novalidate: true });
  const input = h("textarea", { id: "chat-input", rows: 3, required: true, "aria-describedby": "chat-error chat-hint" });
  const error = h("p", { class: "error", role: "alert", id: "chat-error", hidden: true });
  const send = h("button", { type: "submit", id: "chat-send" }, "Send");
  const summarize = h("button", { type: "button", id: "chat-summarize", class: "secondary" }, "Summarize the conversation");
  form.append(
    h("label", { for: "chat-input" }, "Your message"),
    input,
    h("p", { class: "hint", id: "chat-hint" }, "Enter sends, Shift+Enter starts a new line."),
    error,
    h("div", { class: "row" }, send, summarize),
  );
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      if (!send.disabled) form.requestSubmit(); // requestSubmit ignores a disabled submit button
    }
  });
  // drawn again mid-turn (a rename, a voice transcript): still busy, the turn so far shown
  const flight = turnInFlight(session.id);
  if (flight) {
    setBusy(session.id, true, { log, send, summarize, input });
    drawTurn(log, flight.shown, session.transcript.some((m) => m.id && flight.before && !flight.before.has(m.id) && m.role === "user"), name);
  } else {
    if (!session.transcript.length) log.append(h("p", { class: "muted empty-chat" }, ctx.hint || `Ask anything about ${name}…`)); // GET /teams hint
    // a message that failed while another session was on screen: back in the box, with why
    const kept = takeUnsent(session.id);
    if (kept) {
      input.value = kept.text;
      showError(error, kept.error);
    }
  }

  async function sendText(text) {
    const id = session.id;
    showError(error, null);
    setBusy(id, true);
    const empty = log.querySelector(".empty-chat");
    if (empty) empty.remove();
    const shown = { text, streamed: "", reply: null };
    drawTurn(log, shown, false, name);
    let stored;
    try {
      stored = await runTurn(ctx, text, (event) => {
        if (event.event === "on_chat_model_stream") {
          const chunk = event.data && event.data.chunk;
          const piece = chunk && typeof chunk.content === "string" ? chunk.content : "";
          if (piece) {
            shown.streamed += piece;
            const pending = live("chat-pending", id);
            if (pending) showStreamed(pending, shown.streamed);
          }
        }
        const reviewed = nodeOutput(event, "safety_reviewer", "summarizer");
        if (reviewed && Array.isArray(reviewed.messages) && reviewed.messages.length) {
          const last = reviewed.messages[reviewed.messages.length - 1];
          shown.reply = { role: "assistant", content: last.content, metadata: last.response_metadata || {} };
          const pending = live("chat-pending", id);
          if (pending) pending.replaceWith(messageView(shown.reply, name));
        }
      }, shown);
    } catch (err) {
      // not stored (runTurn read the session to be sure): the text back in the box, to send again (same key);
      // in this view as it is now (it may have been drawn again mid-turn)
      const pending = live("chat-pending", id);
      if (pending) pending.remove();
      setBusy(id, false);
      const box = live("chat-input", id);
      const errorEl = live("chat-error", id);
      if (!box || !errorEl) {
        // another session is shown: the text is kept for this one (back in its box when it is opened again)
        if (ctx.signedIn()) keepUnsent(id, { text, error: err });
        return;
      }
      if (!err.saved) box.value = text; // saved without a reply: sending it again would store it twice
      showError(errorEl, err);
      box.focus();
      return;
    }
    // stored: a failed read of the session now must not invite a resend (it would be a second turn)
    const errorEl = live("chat-error", id);
    if (stored && errorEl) await showStored(ctx, "chat-input", errorEl);
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (send.disabled) return; // a turn is running
    const text = input.value.trim();
    if (!text) {
      showError(error, new Error("Type a message first."));
      return input.focus();
    }
    input.value = "";
    sendText(text);
  });
  summarize.addEventListener("click", () => {
    announce("Summarizing the conversation…");
    sendText("/summarize");
  });
  root.append(log, form);
  log.scrollTop = log.scrollHeight;
}

/** During a turn: Send and Summarize disabled, the box read-only (nothing typed mid-turn is lost or sent beside
 * it), the log busy; on the elements of the session's view as it is now, or those given (a view being drawn). */
function setBusy(sessionId, on, els = null) {
  const { log, send, summarize, input } = els || {
    log: live("chat-log", sessionId),
    send: live("chat-send", sessionId),
    summarize: live("chat-summarize", sessionId),
    input: live("chat-input", sessionId),
  };
  if (send) send.disabled = on;
  if (summarize) summarize.disabled = on;
  if (input) input.readOnly = on;
  if (log) log.setAttribute("aria-busy", on ? "true" : "false");
}

/** The running turn at the end of the log: the message sent (unless the session already holds it) and the reply
 * so far (#chat-pending while it streams). */
function drawTurn(log, shown, storedMessage, name) {
  if (!storedMessage) log.append(messageView({ role: "user", content: shown.text, metadata: {} }, name));
  if (shown.reply) {
    log.append(messageView(shown.reply, name));
    return;
  }
  const pending = h("div", { class: "message assistant pending", id: "chat-pending" }, h("p", { class: "who" }, name), h("div", { class: "body" }, "…"));
  if (shown.streamed) showStreamed(pending, shown.streamed);
  log.append(pending);
  pending.scrollIntoView({ block: "end" });
}

function showStreamed(pending, text) {
  pending.querySelector(".body").textContent = text; // plain text while streaming; Markdown once the reply is final
  pending.classList.add("streaming");
}

function messageView(message, name) {
  const meta = message.metadata || {};
  const user = message.role === "user";
  const kind = meta.kind === "summary" ? "Summary" : user ? "You" : name;
  const el = h("div", { class: `message ${user ? "user" : "assistant"}${meta.kind === "summary" ? " summary" : ""}` });
  const who = h("p", { class: "who" }, kind);
  const action = meta.review_action || (meta.review && meta.review.action);
  if (ACTIONS[action]) {
    const category = meta.review_category || (meta.review && meta.review.category) || "policy";
    const reason = meta.review && meta.review.reason ? `: ${meta.review.reason}` : "";
    who.append(" ", h("span", { class: `badge ${action}`, title: `${ACTIONS[action]} by the safety reviewer${reason}` }, `${ACTIONS[action]} · ${category.replace(/_/g, " ")}`));
  }
  el.append(who);
  const body = h("div", { class: "body markdown" });
  if (user) body.textContent = message.content;
  else renderMarkdown(body, message.content);
  el.append(body);
  if (meta.knowledge_section) el.append(h("p", { class: "source muted" }, `From the knowledge base: ${meta.knowledge_section}`));
  return el;
}
