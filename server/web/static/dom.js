// Small DOM helpers: build elements without innerHTML (so nothing from the API is ever parsed as HTML).

/** h("p", {class: "x", onclick: fn}, "text", child) -> HTMLElement */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

export const $ = (selector, root = document) => root.querySelector(selector);

/** Show an API error next to what caused it (role=alert: screen readers announce it). */
export function showError(target, error) {
  target.textContent = error ? error.message || String(error) : "";
  target.hidden = !error;
}

let statusTimer = null;
/** A polite status line ("Saved", "Busy, retrying in 2 s"). */
export function announce(text, { sticky = false } = {}) {
  const status = document.getElementById("status");
  status.textContent = text;
  clearTimeout(statusTimer);
  if (!sticky && text) statusTimer = setTimeout(() => (status.textContent = ""), 6000);
}

/** Clear the status line if it still says `text` (a newer message, about something else, stays). */
export function unannounce(text) {
  if (text && document.getElementById("status").textContent === text) announce("");
}
