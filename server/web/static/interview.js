// Interview practice: upload a resume and a job description, answer the tailored questions, see each
// evaluation stream in (scores chart, strengths, improvements, example answer, who scored it), then the summary
// with a chart across questions, a Markdown export and print-to-PDF.
import { h, clear, showError, announce } from "./dom.js";
import { scoreChart } from "./chart.js";
import { renderMarkdown } from "./markdown.js";
import { runTurn, showStored, nodeOutput, turnInFlight, live, keepUnsent, takeUnsent } from "./turn.js";

const ACCEPT = ".txt,.md,.markdown,.pdf,.docx,text/plain,text/markdown,application/pdf,application/vnd.openxmlformats-officedocument.wordprocessingml.document";
const KINDS = [
  ["resume", "Resume"],
  ["job_description", "Job description"],
];

const UPLOAD_HELP = {
  413: "That file is too large. ",
  415: "That file type is not supported: use txt, md, pdf or docx. ",
  422: "That file could not be read. ",
};

export function renderInterview(root, ctx) {
  const { session } = ctx;
  const state = session.state || {};
  const questions = state.questions || [];
  const evaluations = state.evaluations || [];
  clear(root);
  root.dataset.session = session.id; // the turn running on it finds this view's elements (turn.js live)
  if (!questions.length) return root.append(setupView(ctx));
  const current = questions[state.current ?? evaluations.length];
  root.append(h("p", { class: "muted" }, `Role: ${state.role || "not named"} · questions by ${state.questions_by || "the generator"}`));
  const intro = session.transcript.find((m) => m.metadata && m.metadata.kind === "intro");
  if (intro) root.append(h("p", { class: "intro" }, intro.content));
  const list = h("ol", { class: "evaluations", "aria-label": "Evaluations so far" });
  evaluations.forEach((evaluation, i) => list.append(h("li", {}, evaluationCard(evaluation, i, questions.length))));
  root.append(list);
  if (state.phase === "done" || state.summary) {
    root.append(summaryView(ctx, state));
  } else if (current) {
    root.append(questionView(ctx, current, evaluations.length, questions.length, list));
  }
}

// ---- before the first question ---------------------------------------------------------------------------

function setupView(ctx) {
  const { session } = ctx;
  const state = session.state || {};
  const form = h("form", { class: "card setup", novalidate: true });
  const startError = h("p", { class: "error", role: "alert", id: "start-error", hidden: true });
  form.append(h("h3", {}, "Your documents"), h("p", {}, "Upload your resume and the job description (txt, md, pdf or docx). The questions are tailored to both."));
  for (const [kind, name] of KINDS) {
    const id = `upload-${kind}`;
    const status = h("p", { class: "muted", id: `${id}-status` }, state[kind] ? `${name} uploaded (${state[kind].length} characters).` : "Not uploaded yet.");
    const error = h("p", { class: "error", role: "alert", id: `${id}-error`, hidden: true });
    const input = h("input", { type: "file", id, accept: ACCEPT, "aria-describedby": `${id}-status ${id}-error` });
    input.addEventListener("change", async () => {
      const file = input.files[0];
      if (!file) return;
      showError(error, null);
      input.removeAttribute("aria-invalid");
      status.textContent = `Uploading ${file.name}…`;
      try {
        const result = await ctx.api.upload(session.id, kind, file);
        if (!ctx.signedIn()) return; // signed out while it was on its way: nothing said on the sign-in form
        status.textContent = `${name} uploaded: ${result.filename} (${result.characters} characters).`;
        announce(`${name} uploaded.`);
        state[kind] = "x".repeat(result.characters); // only its presence matters before the first turn
        start.disabled = !(state.resume && state.job_description);
      } catch (err) {
        if (!ctx.signedIn()) return; // the same (a SignedOutError or any other answer): no word, no focus taken
        status.textContent = state[kind] ? `${name} uploaded earlier.` : "Not uploaded yet.";
        showError(error, new Error((UPLOAD_HELP[err.status] || "") + err.message));
        input.setAttribute("aria-invalid", "true");
        input.value = "";
        input.focus();
      }
    });
    form.append(h("div", { class: "field" }, h("label", { for: id }, name), input, status, error));
  }
  const start = h("button", { type: "submit", id: "start-interview", disabled: !(state.resume && state.job_description) }, "Start the interview");
  form.append(start, startError);
  if (turnInFlight(session.id)) {
    // drawn again while Start's turn runs (a rename): still starting
    start.disabled = true;
    start.textContent = "Preparing your questions…";
  }
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (start.disabled) return;
    start.disabled = true;
    start.textContent = "Preparing your questions…";
    showError(startError, null);
    try {
      await runTurn(ctx, "I'm ready to start the interview.", () => {});
    } catch (err) {
      // in the view as it is now (it may have been drawn again mid-turn)
      const button = live("start-interview", session.id);
      const errorEl = live("start-error", session.id);
      if (button) {
        button.disabled = false;
        button.textContent = "Start the interview";
      }
      if (errorEl) showError(errorEl, err);
      return;
    }
    // started (stored): a failed read of the session now must not offer Start again (its message would be
    // taken as the answer to question 1)
    const errorEl = live("start-error", session.id);
    if (errorEl) await showStored(ctx, "answer-input", errorEl);
  });
  return form;
}

// ---- one question ----------------------------------------------------------------------------------------

function questionView(ctx, question, index, total, list) {
  const section = h("section", { class: "card question", "aria-labelledby": "question-title" });
  section.append(
    h("h3", { id: "question-title" }, `Question ${index + 1} of ${total}`),
    h("p", { class: "muted" }, [question.type, question.difficulty].filter(Boolean).join(" · ")),
    h("p", { class: "question-text", id: "question-text" }, question.text),
  );
  const form = h("form", { class: "answer-form", novalidate: true });
  const textarea = h("textarea", { id: "answer-input", rows: 6, required: true, "aria-describedby": "question-text answer-error" });
  const error = h("p", { class: "error", role: "alert", id: "answer-error", hidden: true });
  const submit = h("button", { type: "submit", id: "answer-submit" }, "Submit answer");
  const progress = h("p", { class: "progress", id: "answer-progress", hidden: true });
  form.append(h("label", { for: "answer-input" }, "Your answer"), textarea, error, h("div", { class: "row" }, submit, progress));
  const id = ctx.session.id;
  const flight = turnInFlight(id);
  if (flight) {
    // drawn again while an answer is being scored (a rename): still busy, the answer and its progress shown
    submit.disabled = true;
    textarea.readOnly = true;
    if (flight.shown.index === index) textarea.value = flight.text;
    progress.hidden = false;
    progress.textContent = flight.shown.progress || "Scoring your answer…";
    if (flight.shown.evaluation && flight.shown.index === index) list.append(h("li", {}, evaluationCard(flight.shown.evaluation, index, total)));
  } else {
    // an answer that failed while another session was on screen: back in the box, with why (for this question)
    const kept = takeUnsent(id);
    if (kept && kept.index === index) {
      textarea.value = kept.text;
      showError(error, kept.error);
    }
  }
  const setProgress = (shown, text) => {
    shown.progress = text;
    const el = live("answer-progress", id);
    if (el) el.textContent = text;
  };
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (submit.disabled) return; // an answer is being scored
    const answer = textarea.value.trim();
    if (!answer) {
      showError(error, new Error("Type your answer first."));
      return textarea.focus();
    }
    showError(error, null);
    submit.disabled = true;
    textarea.readOnly = true;
    progress.hidden = false;
    const shown = { index, progress: "", evaluation: null };
    setProgress(shown, "Scoring your answer…");
    let stored;
    try {
      stored = await runTurn(ctx, answer, (event) => {
        const output = nodeOutput(event, "evaluator", "fallback_scorer");
        if (event.event === "on_chain_start" && event.name === "fallback_scorer") setProgress(shown, "The model did not score it; the fallback scorer is scoring your answer…");
        if (output && Array.isArray(output.evaluations) && output.evaluations.length && !shown.evaluation) {
          // the evaluation is on screen as soon as the scoring node ends
          shown.evaluation = output.evaluations[output.evaluations.length - 1];
          const evaluations = live("answer-progress", id) && document.querySelector("ol.evaluations");
          if (evaluations) evaluations.append(h("li", {}, evaluationCard(shown.evaluation, index, total)));
          setProgress(shown, index + 1 < total ? "Scored. Preparing the next question…" : "Scored. Writing your summary…");
        }
        if (nodeOutput(event, "summarizer")) setProgress(shown, "Summary ready.");
      }, shown);
    } catch (err) {
      // not stored (runTurn read the session to be sure): the answer stays, to submit again (same key); in the
      // view as it is now (it may have been drawn again mid-turn)
      const button = live("answer-submit", id);
      const box = live("answer-input", id);
      const progressEl = live("answer-progress", id);
      const errorEl = live("answer-error", id);
      if (!button || !box || !errorEl) {
        // another session is shown: the answer is kept for this one (back in its box when it is opened again)
        if (ctx.signedIn()) keepUnsent(id, { text: answer, error: err, index }, "Your answer");
        return;
      }
      button.disabled = false;
      box.readOnly = false;
      if (err.saved) box.value = ""; // saved without a reply: submitting it again would store it twice
      else if (!box.value) box.value = answer;
      if (progressEl) progressEl.hidden = true;
      showError(errorEl, err);
      box.focus();
      return;
    }
    // stored: a failed read of the session now must not offer Submit again (the answer would be stored twice,
    // the second time as the answer to the next question)
    if (stored.stored !== "before" && ctx.signedIn()) announce(`Answer ${index + 1} scored.`); // "before": turn.js said it was saved
    const errorEl = live("answer-error", id);
    if (!errorEl) return;
    const next = index + 1 < total ? "the next question" : "your summary";
    const saved = `Your answer was saved, but ${next} could not be loaded. Do not submit it again: use “Show the reply”.`;
    if (await showStored(ctx, index + 1 < total ? "answer-input" : "summary-title", errorEl, saved)) return;
    // the view was drawn again while the reads were tried (the person left the session and came back): its box
    // and Submit are for the next question, not this answer's to put away
    if (!errorEl.isConnected) return;
    // the answer is stored (its evaluation is above): not left in a box beside a progress line that waits for
    // nothing; the box and Submit are put away (emptied, read-only, disabled) until the session is shown again
    const box = live("answer-input", id);
    const button = live("answer-submit", id);
    const progressEl = live("answer-progress", id);
    if (box) {
      box.value = "";
      for (const el of [box, ...box.labels]) el.hidden = true;
    }
    if (button) button.hidden = true;
    if (progressEl) progressEl.hidden = true;
  });
  section.append(form);
  return section;
}

function scoredBy(evaluation) {
  if (evaluation.scored_by === "fallback") {
    return h("span", { class: "badge fallback" }, `Scored by the fallback scorer${evaluation.fallback_reason ? ` (${evaluation.fallback_reason})` : ""}`);
  }
  return h("span", { class: "badge model" }, `Scored by the model (${evaluation.scored_by || "unknown"})`);
}

export function evaluationCard(evaluation, index, total) {
  const scores = evaluation.scores || {};
  const card = h("article", { class: "card evaluation", "aria-labelledby": `evaluation-${index}` });
  card.append(
    h("h3", { id: `evaluation-${index}`, tabindex: "-1" }, `Answer ${index + 1} of ${total}: ${evaluation.overall ?? "?"} / 5`),
    scoredBy(evaluation),
    h("p", { class: "question-text" }, evaluation.question || ""),
    h("details", {}, h("summary", {}, "Your answer"), h("p", {}, evaluation.answer || "")),
    scoreChart(`Scores for answer ${index + 1}`, Object.keys(scores), [{ name: "Score", values: scores }]),
    listBlock("Strengths", evaluation.strengths),
    listBlock("To improve", evaluation.improvements),
  );
  if (evaluation.delivery && evaluation.delivery.feedback) card.append(h("p", {}, evaluation.delivery.feedback));
  if (evaluation.example_answer) {
    card.append(h("details", { class: "example" }, h("summary", {}, "Example answer"), h("p", {}, evaluation.example_answer)));
  }
  return card;
}

function listBlock(title, items) {
  if (!items || !items.length) return null;
  return h("div", { class: "feedback" }, h("h4", {}, title), h("ul", {}, items.map((item) => h("li", {}, item))));
}

// ---- the end ---------------------------------------------------------------------------------------------

function summaryView(ctx, state) {
  const summary = state.summary || {};
  const evaluations = state.evaluations || [];
  const criteria = Object.keys(summary.averages || (evaluations[0] || {}).scores || {});
  const series = evaluations.map((e, i) => ({ name: `Q${i + 1}`, values: e.scores || {} }));
  if (summary.averages) series.push({ name: "Average", values: summary.averages });
  const section = h("section", { class: "card summary", "aria-labelledby": "summary-title" });
  const narrative = h("div", { class: "markdown" });
  renderMarkdown(narrative, summary.narrative || "");
  section.append(
    h("h3", { id: "summary-title", tabindex: "-1" }, `Summary: ${summary.overall ?? "?"} / 5 overall`),
    narrative,
    scoreChart("Scores per criterion across questions", criteria, series),
    scoreTable(criteria, evaluations, summary),
    listBlock("Next steps", summary.next_steps),
    h("p", { class: "muted" }, `${summary.answered ?? evaluations.length} answered; ${summary.fallback_scored ?? 0} scored by the fallback scorer; summary written by ${summary.written_by || "the summarizer"}.`),
  );
  const exportButton = h("button", { type: "button", id: "export-markdown" }, "Download as Markdown");
  exportButton.addEventListener("click", () => {
    const blob = new Blob([toMarkdown(ctx.session, state)], { type: "text/markdown" });
    const link = h("a", { href: URL.createObjectURL(blob), download: `${slug(ctx.session.title || "interview")}.md`, hidden: true });
    document.body.append(link);
    link.click();
    setTimeout(() => {
      URL.revokeObjectURL(link.href);
      link.remove();
    }, 1000);
    announce("Markdown file downloaded.");
  });
  const printButton = h("button", { type: "button", id: "print-report", class: "secondary" }, "Print or save as PDF");
  printButton.addEventListener("click", () => window.print());
  section.append(h("div", { class: "row no-print" }, exportButton, printButton));
  return section;
}

function scoreTable(criteria, evaluations, summary) {
  const head = h("tr", {}, h("th", { scope: "col" }, "Criterion"), evaluations.map((_, i) => h("th", { scope: "col" }, `Q${i + 1}`)), h("th", { scope: "col" }, "Average"));
  const rows = criteria.map((c) =>
    h("tr", {}, h("th", { scope: "row" }, c.replace(/_/g, " ")), evaluations.map((e) => h("td", {}, (e.scores || {})[c] ?? "")), h("td", {}, (summary.averages || {})[c] ?? "")),
  );
  const table = h("table", { class: "scores" }, h("caption", {}, "Scores (1 to 5)"), h("thead", {}, head), h("tbody", {}, rows));
  return h("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": "Scores table" }, table);
}

const slug = (text) => text.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "") || "interview";

/** The interview as a Markdown document: questions, answers, scores, feedback and the summary. */
export function toMarkdown(session, state) {
  const lines = [`# ${session.title || "Interview practice"}`, ""];
  if (state.role) lines.push(`Role: ${state.role}`, "");
  (state.evaluations || []).forEach((e, i) => {
    lines.push(`## Question ${i + 1}: ${e.question}`, "", `**Answer:** ${e.answer}`, "", `**Score:** ${e.overall} / 5 (scored by ${e.scored_by === "fallback" ? "the fallback scorer" : e.scored_by})`, "");
    lines.push("| criterion | score |", "| --- | --- |", ...Object.entries(e.scores || {}).map(([k, v]) => `| ${k.replace(/_/g, " ")} | ${v} |`), "");
    if ((e.strengths || []).length) lines.push("**Strengths**", "", ...e.strengths.map((s) => `- ${s}`), "");
    if ((e.improvements || []).length) lines.push("**To improve**", "", ...e.improvements.map((s) => `- ${s}`), "");
    if (e.example_answer) lines.push("**Example answer**", "", `> ${e.example_answer}`, "");
  });
  const s = state.summary;
  if (s) {
    lines.push("## Summary", "", `Overall: ${s.overall} / 5`, "", s.narrative || "", "");
    if (s.averages) lines.push("| criterion | average |", "| --- | --- |", ...Object.entries(s.averages).map(([k, v]) => `| ${k.replace(/_/g, " ")} | ${v} |`), "");
    if ((s.next_steps || []).length) lines.push("**Next steps**", "", ...s.next_steps.map((n, i) => `${i + 1}. ${n}`), "");
  }
  return lines.join("\n");
}
