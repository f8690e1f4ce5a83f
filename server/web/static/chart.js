// Score charts as plain SVG (no library: a few bars on a 0-5 scale), each with a text alternative.
const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, text = null) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== null) el.textContent = text;
  return el;
}

const label = (s) => String(s).replace(/_/g, " ");

/**
 * Horizontal bars: rows = criteria, one bar per series (e.g. one per question), scale 0..max.
 * @param {string[]} criteria
 * @param {{name: string, values: Record<string, number>}[]} series
 */
export function scoreChart(title, criteria, series, max = 5) {
  const labelW = 100, barH = 14, gap = 4, rowPad = 10, width = 360, plotW = width - labelW - 36;
  const rowH = series.length * (barH + gap) + rowPad;
  const legendH = series.length > 1 ? 22 : 0;
  const height = legendH + criteria.length * rowH + 20;
  const description = criteria
    .map((c) => `${label(c)}: ${series.map((s) => `${series.length > 1 ? s.name + " " : ""}${s.values[c] ?? "n/a"}`).join(", ")}`)
    .join("; ");
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": `${title}. ${description}` });
  root.append(svg("title", {}, title));
  series.forEach((s, i) => {
    if (series.length < 2) return;
    const x = labelW + i * 62;
    root.append(svg("rect", { x, y: 4, width: 12, height: 12, class: `bar s${i % 6}` }));
    root.append(svg("text", { x: x + 16, y: 14, class: "legend" }, s.name));
  });
  for (let t = 0; t <= max; t += 1) {
    const x = labelW + (plotW * t) / max;
    root.append(svg("line", { x1: x, x2: x, y1: legendH, y2: height - 16, class: "grid" }));
    root.append(svg("text", { x, y: height - 4, class: "tick" }, String(t)));
  }
  criteria.forEach((criterion, row) => {
    const y0 = legendH + row * rowH + rowPad / 2;
    root.append(svg("text", { x: labelW - 8, y: y0 + (series.length * (barH + gap)) / 2 + 4, class: "label" }, label(criterion)));
    series.forEach((s, i) => {
      const value = Number(s.values[criterion] ?? 0);
      const y = y0 + i * (barH + gap);
      root.append(svg("rect", { x: labelW, y, width: Math.max((plotW * value) / max, 1), height: barH, class: `bar s${i % 6}` }));
      root.append(svg("text", { x: labelW + (plotW * value) / max + 4, y: y + barH - 3, class: "value" }, String(value)));
    });
  });
  return root;
}
