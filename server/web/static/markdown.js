// Markdown from the teams (knowledge-base answers, summaries) rendered with marked, then sanitised with
// DOMPurify before it touches the page: a reply can never inject script, styles or event handlers.
import { marked } from "./vendor/marked.esm.js";
import DOMPurify from "./vendor/purify.es.mjs";

marked.setOptions({ gfm: true, breaks: true });

/** Fill `el` with the rendered, sanitised Markdown of `text`. */
export function renderMarkdown(el, text) {
  const html = marked.parse(String(text ?? ""), { async: false });
  el.innerHTML = DOMPurify.sanitize(html, { FORBID_TAGS: ["style", "form", "input"], FORBID_ATTR: ["style"] });
  for (const link of el.querySelectorAll("a[href]")) {
    link.setAttribute("rel", "noopener noreferrer");
    link.setAttribute("target", "_blank");
  }
  return el;
}
