// The web app's shell: sign-in with a tenant key (kept in sessionStorage: this tab only), the teams the tenant
// may use, the session list, and the open session (its id in the URL hash, its state always from the server).
import { Api, ApiError, SignedOutError } from "./api.js";
import { $, h, clear, showError, announce } from "./dom.js";
import { renderInterview } from "./interview.js";
import { renderChat } from "./chat.js";
import { setupVoice, stopVoice, voiceContext } from "./voice.js";
import { forgetUnsent } from "./turn.js";

const KEY = "teamgraph.key";
const TEAM = "teamgraph.team";
const DRAFTS = ["chat-input", "answer-input"];
const app = { api: null, teams: [], team: null, cursor: null, session: null, tenantName: "" };

/** The session id in the URL hash, or null; a URIError for a malformed one (a typed or cut link: `%E0`). */
const hashSession = () => {
  const match = location.hash.match(/^#session=(.+)$/);
  return match ? decodeURIComponent(match[1]) : null;
};

/** The tenant key was accepted once and is refused now (revoked or rotated): nothing more is done with it. */
class SignedInApi extends Api {
  async fetch(...args) {
    try {
      return await super.fetch(...args);
    } catch (error) {
      if (error instanceof ApiError && error.status === 401 && app.api === this) {
        signOut(new Error(`Your key is no longer accepted (${error.message}); sign in again.`));
      }
      throw error;
    }
  }
}

function onWait(seconds, error) {
  const what = error.code === "thread_busy" ? "This session is still answering a previous message" : "The server is busy";
  announce(`${what}; trying again in ${Math.ceil(seconds)} s…`);
}

// ---- sign in ---------------------------------------------------------------------------------------------

function showSignIn(error = null) {
  app.api = null;
  $("#workspace").hidden = true;
  $("#topbar-tools").hidden = true;
  $("#signin").hidden = false;
  showError($("#signin-error"), error);
  $("#key-input").setAttribute("aria-invalid", error ? "true" : "false");
  $("#key-input").focus();
}

let signingIn = null; // the Api of a sign-in still checking its key: a newer sign-in replaces it

async function signIn(key, { quiet = false } = {}) {
  if (signingIn) signingIn.close(); // its retries stop: only the newest key is checked
  const api = new SignedInApi(key, { onWait });
  signingIn = api;
  let teams;
  try {
    teams = await api.teams();
  } catch (error) {
    // a newer sign-in replaced this one (its wait stopped, or its answer came after): that one tells its outcome
    if (error instanceof SignedOutError || api.closed) return;
    signingIn = null;
    if (error instanceof ApiError && error.status === 401) {
      sessionStorage.removeItem(KEY);
      showSignIn(new Error(quiet ? "Your key is no longer accepted; sign in again." : `That key was not accepted (${error.message}).`));
      return;
    }
    showSignIn(error);
    return;
  }
  if (api.closed) return; // answered after a newer sign-in replaced it
  signingIn = null;
  if (app.api) app.api.close();
  sessionStorage.setItem(KEY, key);
  app.api = api;
  app.teams = teams;
  app.tenantName = (teams[0] && teams[0].tenant_name) || ""; // the tenant's display name (GET /teams)
  $("#signin").hidden = true;
  $("#key-input").value = "";
  $("#workspace").hidden = false;
  $("#topbar-tools").hidden = false;
  const select = $("#team-select");
  clear(select, ...teams.map((t) => h("option", { value: t.id, title: t.description }, teamName(t.id))));
  const saved = sessionStorage.getItem(TEAM);
  const team = teams.find((t) => t.id === saved) || teams.find((t) => t.default) || teams[0];
  await chooseTeam(team ? team.id : null, { keepSession: true });
  await route();
}

/** Back to sign-in: the key forgotten, a voice call ended, and nothing of this tenant's left in the page. */
function signOut(error = null) {
  sessionStorage.removeItem(KEY);
  history.replaceState(null, "", location.pathname);
  showSession(null); // ends a voice call (posting what was said) before the key is dropped
  forgetUnsent(); // the text of failed turns kept for their sessions
  // the key's Api stops: retries waiting for their Retry-After (a busy session, a rate limit) are not sent with
  // it, and whatever still calls it gets SignedOutError; closed after showSession(null), whose voice call's last
  // post has gone out by then
  if (app.api) app.api.close();
  Object.assign(app, { api: null, teams: [], team: null, cursor: null, tenantName: "" });
  clear($("#session-list"));
  clear($("#team-select"));
  clear($("#team-view"));
  clear($("#voice-panel"));
  $("#voice-panel").hidden = true;
  $("#session-title").textContent = "";
  $("#more-sessions").hidden = true;
  for (const id of ["sessions-error", "session-error", "rename-error"]) showError($(`#${id}`), null);
  document.title = "Teamgraph";
  announce(""); // the status line too: what the workspace was doing is over
  showSignIn(error);
}

export function teamName(id) {
  return { interview: "Interview practice", veneo_chat: `${app.tenantName || "Assistant"} chat` }[id] || id;
}

async function chooseTeam(team, { keepSession = false } = {}) {
  app.team = team;
  if (team) sessionStorage.setItem(TEAM, team);
  $("#team-select").value = team || "";
  if (!keepSession && app.session && app.session.team !== team) {
    history.replaceState(null, "", location.pathname);
    showSession(null);
  }
  await loadSessions();
}

// ---- sessions --------------------------------------------------------------------------------------------

async function loadSessions({ more = false } = {}) {
  const list = $("#session-list");
  showError($("#sessions-error"), null);
  if (!app.team) return clear(list);
  const api = app.api;
  try {
    const page = await api.sessions(app.team, more ? app.cursor : null);
    if (app.api !== api) return; // signed out meanwhile: nothing of that tenant goes back into the page
    app.cursor = page.next_cursor;
    if (!more) clear(list);
    for (const s of page.items) list.append(sessionItem(s));
    if (!list.children.length) list.append(h("li", { class: "muted" }, "No sessions yet."));
    $("#more-sessions").hidden = !app.cursor;
  } catch (error) {
    if (app.api === api) showError($("#sessions-error"), error);
  }
}

function sessionItem(s) {
  const current = app.session && app.session.id === s.id;
  const when = new Date(s.updated_at);
  return h(
    "li",
    {},
    h(
      "a",
      { href: `#session=${encodeURIComponent(s.id)}`, "aria-current": current ? "page" : null, "data-id": s.id },
      h("span", { class: "session-name" }, s.title || "Untitled session"),
      h("time", { datetime: s.updated_at, class: "muted" }, when.toLocaleString([], { dateStyle: "medium", timeStyle: "short" })),
    ),
  );
}

async function newSession() {
  const api = app.api;
  try {
    const session = await api.createSession(app.team);
    if (app.api !== api) return; // signed out meanwhile (the key was refused: the sign-in form says why)
    await loadSessions();
    if (app.api !== api) return;
    location.hash = `session=${encodeURIComponent(session.id)}`;
    announce("New session started.");
  } catch (error) {
    if (app.api === api) showError($("#sessions-error"), error);
  }
}

async function route() {
  if (!app.api) return;
  let id;
  try {
    id = hashSession();
  } catch {
    showSession(null);
    return showError($("#sessions-error"), new Error("The link names no session: its session id is not valid. Pick a session from the list."));
  }
  if (!id) return showSession(null);
  const api = app.api;
  try {
    const session = await api.session(id);
    if (app.api !== api) return;
    if (session.team !== app.team && app.teams.some((t) => t.id === session.team)) await chooseTeam(session.team, { keepSession: true });
    showSession(session);
    for (const a of document.querySelectorAll("#session-list a")) {
      a.toggleAttribute("aria-current", a.dataset.id === id);
      if (a.dataset.id === id) a.setAttribute("aria-current", "page");
    }
  } catch (error) {
    if (app.api !== api) return; // signed out meanwhile (the key was refused: the sign-in form says why)
    showSession(null);
    const message = error.status === 404 ? new Error("That session does not exist (it may have been deleted).") : error;
    showError($("#sessions-error"), message);
  }
}

/** Re-read the open session from the server and draw it again (after every turn). */
async function refresh({ focus = null } = {}) {
  if (!app.session) return;
  const api = app.api;
  let session;
  try {
    session = await api.session(app.session.id);
  } catch (error) {
    if (app.api !== api) return; // signed out by this very answer (a 401): the sign-in form says why
    throw error;
  }
  if (app.api !== api || !app.session || app.session.id !== session.id) return; // signed out or moved on meanwhile
  showSession(session, { focus });
  loadSessions(); // titles and order change with each turn
}

function showSession(session, { focus = null } = {}) {
  const changed = !app.session || !session || app.session.id !== session.id;
  if (changed) stopVoice(); // the controls of a call in progress are about to go: it could not be stopped any more
  app.session = session;
  $("#empty-state").hidden = !!session;
  $("#session-panel").hidden = !session;
  $("#rename-form").hidden = true;
  showError($("#session-error"), null);
  if (!session) return;
  $("#session-title").textContent = session.title || "Untitled session";
  document.title = `${session.title || "Session"} · Teamgraph`;
  const api = app.api;
  const hint = (app.teams.find((t) => t.id === session.team) || {}).hint || ""; // GET /teams: the tenant's own
  // signedIn: still signed in with the key this view was drawn with (a 401 or Sign out since: nothing of the
  // tenant goes back into the page)
  const ctx = { api, session, tenantName: app.tenantName, hint, refresh, signedIn: () => app.api === api, showSessionError: (e) => showError($("#session-error"), e) };
  // what the person is typing survives a redraw of the same session (a refresh lands while they type)
  const drafts = changed ? [] : DRAFTS.map((id) => document.getElementById(id)).filter((el) => el && !el.readOnly && el.value);
  const kept = drafts.map((el) => [el.id, el.value]);
  const view = $("#team-view");
  if (session.team === "interview") renderInterview(view, ctx);
  else renderChat(view, ctx);
  for (const [id, value] of kept) {
    const el = document.getElementById(id);
    if (el && !el.value) el.value = value;
  }
  if (changed) setupVoice($("#voice-panel"), ctx);
  else voiceContext(ctx);
  const target = focus ? document.getElementById(focus) : changed ? $("#session-title") : null;
  if (target) target.focus();
}

// ---- rename and delete -----------------------------------------------------------------------------------

function startRename() {
  $("#rename-form").hidden = false;
  $("#rename-input").value = app.session.title;
  showError($("#rename-error"), null);
  $("#rename-input").focus();
}

async function saveRename(event) {
  event.preventDefault();
  const title = $("#rename-input").value.trim();
  if (!title) return showError($("#rename-error"), new Error("A title cannot be empty."));
  const api = app.api;
  try {
    await api.rename(app.session.id, title);
    if (app.api !== api) return; // signed out meanwhile
    await refresh({ focus: "session-title" });
    if (app.api !== api) return;
    announce("Session renamed.");
  } catch (error) {
    if (app.api !== api) return; // signed out by a 401: the sign-in form says why, and has the focus
    showError($("#rename-error"), error);
    $("#rename-input").focus();
  }
}

async function deleteSession() {
  const title = app.session.title || "this session";
  if (!window.confirm(`Delete "${title}"? Its transcript is removed for good.`)) return;
  const api = app.api;
  try {
    await api.remove(app.session.id);
    if (app.api !== api) return; // signed out meanwhile
    history.replaceState(null, "", location.pathname);
    showSession(null);
    await loadSessions();
    if (app.api !== api) return;
    announce("Session deleted.");
    $("#new-session").focus();
  } catch (error) {
    if (app.api === api) showError($("#session-error"), error);
  }
}

// ---- wiring ----------------------------------------------------------------------------------------------

function start() {
  $("#signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("#key-input").value.trim();
    if (!key) return showSignIn(new Error("Enter your tenant key."));
    signIn(key);
  });
  $("#sign-out").addEventListener("click", () => signOut());
  $("#team-select").addEventListener("change", (event) => chooseTeam(event.target.value));
  $("#new-session").addEventListener("click", newSession);
  $("#more-sessions").addEventListener("click", () => loadSessions({ more: true }));
  $("#rename-button").addEventListener("click", startRename);
  $("#rename-cancel").addEventListener("click", () => {
    $("#rename-form").hidden = true;
    $("#rename-button").focus();
  });
  $("#rename-form").addEventListener("submit", saveRename);
  $("#rename-form").addEventListener("keydown", (event) => {
    if (event.key === "Escape") $("#rename-cancel").click();
  });
  $("#delete-button").addEventListener("click", deleteSession);
  window.addEventListener("hashchange", route);
  // paper has no disclosure triangles: print every example answer, then close again what was closed
  let closed = [];
  window.addEventListener("beforeprint", () => {
    closed = [...document.querySelectorAll("details:not([open])")];
    closed.forEach((d) => (d.open = true));
  });
  window.addEventListener("afterprint", () => closed.forEach((d) => (d.open = false)));
  const key = sessionStorage.getItem(KEY);
  if (key) signIn(key, { quiet: true });
  else showSignIn();
}

start();
