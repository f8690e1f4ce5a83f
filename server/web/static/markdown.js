// Markdown from the teams (knowledge-base answers, summaries) rendered with marked, then sanitised with
// DOMPurify before it touches the page: a reply can never inject markup, script, styles or event handlers.
import { marked } from "./vendor/marked.esm.js";
import DOMPurify from "./vendor/purify.es.mjs";

// Raw HTML in the Markdown (a summary may quote what a person typed, cut anywhere) is shown as text, never
// parsed: every "<" reaches marked as "&lt;", so it produces no tag of its own (a "<" inside `code` then shows
// as "&lt;", a small price). DOMPurify then removes anything unsafe marked did produce (javascript: links, say).
marked.use({ gfm: true, breaks: true });

/** Fill `el` with the rendered, sanitised Markdown of `text`. */
export function renderMarkdown(el, text) {
  const html = marked.parse(String(text ?? "").replace(/</g, "&lt;"), { async: false });
  el.innerHTML = DOMPurify.sanitize(html, { FORBID_TAGS: ["style", "form", "input"], FORBID_ATTR: ["style"] });
  for (const link of el.querySelectorAll("a[href]")) {
    link.setAttribute("rel", "noopener noreferrer");
    link.setAttribute("target", "_blank");
  }
  return el;
}
