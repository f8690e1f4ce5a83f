// Teamgraph's public HTTP API, as any browser frontend would call it: a tenant key on every request,
// one error shape ({"error": {"code", "message", "field"}}), polite retries, and /stream_events read as
// server-sent events over fetch (EventSource cannot POST or send an Authorization header).

/** An error the API answered (or the network failed with: status 0). */
export class ApiError extends Error {
  constructor(status, code, message, field = null, retryAfter = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.field = field;
    this.retryAfter = retryAfter;
  }
}

/** What an Api that was closed (signed out, or replaced by a new sign-in) answers instead of sending anything
 * more with its key: callers say nothing about it (the page has moved on). */
export class SignedOutError extends Error {
  constructor() {
    super("Signed out: nothing more is sent with that key.");
    this.name = "SignedOutError";
    this.code = "signed_out";
  }
}

const RETRY_LIMIT = 3;
const MAX_WAIT_S = 30;

/** Wait `s` seconds; rejects with SignedOutError as soon as `closed` is aborted (at once if it already is). */
function sleep(s, closed) {
  return new Promise((resolve, reject) => {
    if (closed.aborted) return reject(new SignedOutError());
    const timer = setTimeout(() => {
      closed.removeEventListener("abort", stop);
      resolve();
    }, s * 1000);
    const stop = () => {
      clearTimeout(timer);
      reject(new SignedOutError());
    };
    closed.addEventListener("abort", stop, { once: true });
  });
}

function retryAfterSeconds(response) {
  const value = response.headers.get("Retry-After");
  const seconds = Number(value);
  if (value && Number.isFinite(seconds)) return Math.min(Math.max(seconds, 0.5), MAX_WAIT_S);
  const date = Date.parse(value || "");
  return Number.isNaN(date) ? 2 : Math.min(Math.max((date - Date.now()) / 1000, 0.5), MAX_WAIT_S);
}

async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: a proxy's error page, say
  }
  const error = body && body.error ? body.error : {};
  const fallback = response.status === 413 ? "The request is too large." : `The server answered ${response.status}.`;
  return new ApiError(
    response.status,
    error.code || "http_" + response.status,
    error.message || fallback,
    error.field || null,
    response.headers.get("Retry-After") ? retryAfterSeconds(response) : null,
  );
}

/** Whether waiting and sending the same request again is the right answer to this response. */
function retryable(response, code) {
  if (response.status === 429) return true;
  if (response.status === 409) return code === "thread_busy";
  return response.status === 503 && response.headers.has("Retry-After");
}

/** A fresh random key (a UUID where the browser offers one: randomUUID needs a secure context). */
function newKey() {
  if (globalThis.crypto && typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export class Api {
  /**
   * @param {string} key the tenant key (sent as a Bearer token)
   * @param {{base?: string, onWait?: (seconds: number, error: ApiError) => void}} options
   */
  constructor(key, { base = "", onWait = () => {} } = {}) {
    this.key = key;
    this.base = base;
    this.onWait = onWait;
    this.pendingCreate = null; // {content, key}: a create that may have landed, whose key the next one reuses
    this.closer = new AbortController(); // aborted by close()
  }

  /**
   * Done with this key (sign-out, a 401, a new sign-in): a retry waiting for its Retry-After stops at once and
   * nothing more is sent: that wait, a request whose answer would be retried and every later request reject with
   * SignedOutError. A request already sent is not cancelled (sign-out's last transcript post goes out just
   * before); its answer comes back as usual, only never retried.
   */
  close() {
    this.closer.abort();
  }

  get closed() {
    return this.closer.signal.aborted;
  }

  headers(extra = {}) {
    return { Authorization: `Bearer ${this.key}`, ...extra };
  }

  /** fetch with the key; 409 thread_busy, 429 and 503+Retry-After are retried after Retry-After (not once
   * closed: SignedOutError). */
  async fetch(method, path, { json, form, signal, accept = "application/json", headers = {} } = {}) {
    const init = { method, signal, headers: this.headers({ Accept: accept, ...headers }) };
    if (json !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(json);
    } else if (form !== undefined) {
      init.body = form; // the browser sets the multipart boundary
    }
    for (let attempt = 0; ; attempt += 1) {
      if (this.closed) throw new SignedOutError();
      let response;
      try {
        response = await fetch(this.base + path, init);
      } catch (cause) {
        if (cause.name === "AbortError") throw cause;
        throw new ApiError(0, "network_error", "The server could not be reached. Check your connection and try again.");
      }
      if (response.ok) return response;
      const error = await errorFrom(response);
      if (attempt < RETRY_LIMIT && retryable(response, error.code)) {
        if (this.closed) throw new SignedOutError(); // closed while this request was on its way: no retry, no word
        const wait = retryAfterSeconds(response);
        this.onWait(wait, error);
        await sleep(wait, this.closer.signal);
        continue;
      }
      throw error;
    }
  }

  async json(method, path, options = {}) {
    const response = await this.fetch(method, path, options);
    return response.status === 204 ? null : response.json();
  }

  teams() {
    return this.json("GET", "/teams");
  }
  sessions(team, cursor = null) {
    const query = new URLSearchParams({ team, limit: "50" });
    if (cursor) query.set("cursor", cursor);
    return this.json("GET", `/sessions?${query}`);
  }
  /** One key per session to create, sent again on each retry (fetch's 429/503 retries resend the same request)
   * and kept after a failure that may have created it (a network error: the create may have landed and only its
   * answer been lost; a 5xx; retries run out), so the next create of the same team and title (the person's next
   * click) is answered the session the first one created instead of creating a second. A new key only once the
   * create succeeded or was refused with a 4xx other than 408/429 (nothing was created), or for another team or
   * title. */
  async createSession(team, title = "") {
    const content = JSON.stringify([team, title]);
    if (!this.pendingCreate || this.pendingCreate.content !== content) this.pendingCreate = { content, key: newKey() };
    const pending = this.pendingCreate;
    const headers = { "Idempotency-Key": pending.key };
    try {
      const session = await this.json("POST", "/sessions", { json: { team, title }, headers });
      if (this.pendingCreate === pending) this.pendingCreate = null;
      return session;
    } catch (error) {
      // refused, nothing created (429 and 408 say nothing about whether an earlier send of the key landed)
      const refused =
        error instanceof ApiError && error.status >= 400 && error.status < 500 && ![408, 429].includes(error.status);
      if (refused && this.pendingCreate === pending) this.pendingCreate = null;
      throw error;
    }
  }
  session(id) {
    return this.json("GET", `/sessions/${encodeURIComponent(id)}`);
  }
  rename(id, title) {
    return this.json("PATCH", `/sessions/${encodeURIComponent(id)}`, { json: { title } });
  }
  remove(id) {
    return this.json("DELETE", `/sessions/${encodeURIComponent(id)}`);
  }
  upload(id, kind, file) {
    const form = new FormData();
    form.append("kind", kind);
    form.append("file", file, file.name);
    return this.json("POST", `/sessions/${encodeURIComponent(id)}/documents`, { form });
  }
  voices(team) {
    return this.json("GET", `/voice/voices?team=${encodeURIComponent(team)}`);
  }
  async preview(voice, team) {
    const response = await this.fetch("POST", "/voice/preview", { json: { voice, team }, accept: "audio/*" });
    return response.blob();
  }
  realtime(id, voice) {
    return this.json("POST", `/sessions/${encodeURIComponent(id)}/realtime`, { json: { voice } });
  }
  transcripts(id, items) {
    return this.json("POST", `/sessions/${encodeURIComponent(id)}/transcripts`, { json: { items } });
  }

  /**
   * One turn on /teams/{team}/stream_events: calls onEvent(event) for every LangChain stream event.
   * Resolves when the server sends `event: end`; a stream cut before that rejects with code "stream_lost", an
   * `event: error` with the error's status and code ("stream_error" when the server names none) and `inStream`
   * set (unlike the request's own HTTP status, it comes after the turn started). `key`: the
   * turn's Idempotency-Key, sent again on the automatic 409/429/503 retries.
   */
  async streamEvents(team, threadId, input, onEvent, { signal, key = null } = {}) {
    const response = await this.fetch("POST", `/teams/${encodeURIComponent(team)}/stream_events`, {
      json: { input, config: { configurable: { thread_id: threadId } } },
      accept: "text/event-stream",
      signal,
      headers: key ? { "Idempotency-Key": key } : {},
    });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const message = parseSse(block);
          if (message.event === "end") return;
          if (message.event === "error") {
            const body = safeJson(message.data) || {};
            const error = new ApiError(body.status_code || 500, body.code || "stream_error", body.message || "The turn failed on the server.");
            error.inStream = true; // the turn had started: its status does not say that nothing ran
            throw error;
          }
          if (message.data) {
            const event = safeJson(message.data);
            if (event) onEvent(event);
          }
        }
      }
    } catch (cause) {
      if (cause instanceof ApiError || cause.name === "AbortError") throw cause;
      throw new ApiError(0, "stream_lost", "The connection was lost while the reply was streaming.");
    }
    throw new ApiError(0, "stream_lost", "The connection closed before the reply was complete.");
  }
}

function parseSse(block) {
  const message = { event: "message", data: "" };
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) message.event = line.slice(6).trim();
    else if (line.startsWith("data:")) message.data += line.slice(5).trimStart();
  }
  return message;
}

function safeJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}
