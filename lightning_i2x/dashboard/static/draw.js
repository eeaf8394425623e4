// Drawing helpers of the dashboard: DOM and SVG elements, line charts, bars, legends, a list that
// draws only the rows in view. Styles through the CSSOM only (the strict CSP has no 'unsafe-inline').

export const SVG = "http://www.w3.org/2000/svg";
export const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
export const color = (c) => COLORS[c % COLORS.length];

export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) if (c !== null && c !== undefined && c !== false) e.append(c);
  return e;
}

export function svg(tag, attrs = {}) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

export const fmt = (x, d = 3) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));

// -- charts ------------------------------------------------------------------------------------
// Lines over x = 0..n-1 with a cursor; returns {node, setCursor(x)}.
export function lineChart(series, { width = 460, height = 200, ymin = null, ymax = null, label = "", bands = null } = {}) {
  const pad = { l: 36, r: 8, t: 10, b: 22 };
  const n = Math.max(1, ...series.map((s) => s.values.length));
  const vals = series.flatMap((s) => s.values).filter((v) => v !== null);
  let lo = ymin ?? Math.min(0, ...vals), hi = ymax ?? Math.max(1e-9, ...vals);
  if (bands) for (const b of bands) if (b !== null) { lo = Math.min(lo, -b); hi = Math.max(hi, b); }
  if (hi === lo) hi = lo + 1;
  const X = (i) => pad.l + (n <= 1 ? 0 : (i / (n - 1)) * (width - pad.l - pad.r));
  const Y = (v) => pad.t + (1 - (v - lo) / (hi - lo)) * (height - pad.t - pad.b);
  const root = svg("svg", { class: "chart", width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label });
  root.append(svg("line", { class: "axis", x1: pad.l, x2: width - pad.r, y1: Y(lo), y2: Y(lo) }));
  root.append(svg("line", { class: "axis", x1: pad.l, x2: pad.l, y1: pad.t, y2: height - pad.b }));
  for (const v of [lo, hi]) { const t = svg("text", { x: 2, y: Y(v) + 3 }); t.textContent = fmt(v, 2); root.append(t); }
  if (lo < 0 && hi > 0) root.append(svg("line", { class: "axis", x1: pad.l, x2: width - pad.r, y1: Y(0), y2: Y(0), "stroke-dasharray": "2 3" }));
  if (bands) for (const sign of [1, -1]) {
    const pts = bands.map((b, i) => (b === null ? null : `${X(i)},${Y(sign * b)}`)).filter(Boolean).join(" ");
    root.append(svg("polyline", { points: pts, fill: "none", stroke: "#aaa", "stroke-dasharray": "4 3" }));
  }
  const xl = svg("text", { x: width - pad.r - 60, y: height - 6 }); xl.textContent = label; root.append(xl);
  for (const s of series) {
    const pts = s.values.map((v, i) => (v === null ? null : `${X(i)},${Y(v)}`)).filter(Boolean).join(" ");
    const line = svg("polyline", { points: pts, fill: "none", stroke: s.color, "stroke-width": s.bold ? 2.5 : 1.4, "data-series": s.name });
    const title = svg("title"); title.textContent = s.name; line.append(title);
    root.append(line);
  }
  const cursor = svg("line", { class: "cursor", y1: pad.t, y2: height - pad.b, x1: X(0), x2: X(0) });
  root.append(cursor);
  return { node: root, setCursor(i) { const x = X(Math.max(0, Math.min(n - 1, i))); cursor.setAttribute("x1", x); cursor.setAttribute("x2", x); cursor.dataset.at = i; } };
}

// signed horizontal bars: blue raises the class, red lowers it; widths relative to the largest |value|
export function contributionBars(bars) {
  const top = Math.max(1e-12, ...bars.map((b) => Math.abs(b.value)));
  return el("div", { class: "bars" }, bars.map((b) => el("div", { class: "bar-row" },
    el("span", { class: "bar-label", text: `ch ${b.channel}` }),
    (() => { const bar = el("span", { class: "bar" }); Object.assign(bar.style, { display: "inline-block", height: "0.8em",
      width: `${(45 * Math.abs(b.value)) / top}%`, background: b.value > 0 ? "#2b8cbe" : "#e34a33" }); return bar; })(),
    el("span", { class: "muted", text: ` ${fmt(b.value, 3)}` }))));
}

export function legend(names, only = null) {
  return el("div", { class: "legend" }, names.map((name, c) => (only !== null && only !== c ? null : el("span", {}, (() => { const i = el("i"); i.style.background = color(c); return i; })(), name))));
}

// A list that draws only the rows in view (rows of fixed height).
export function virtualList(items, renderRow, { rowHeight = 26, height = 300, id } = {}) {
  const box = el("div", { class: "vlist", id });
  box.style.height = `${Math.min(height, Math.max(rowHeight, items.length * rowHeight) + 2)}px`;
  const spacer = el("div", { class: "spacer" });
  spacer.style.height = `${items.length * rowHeight}px`;
  box.append(spacer);
  const draw = () => {
    const first = Math.max(0, Math.floor(box.scrollTop / rowHeight) - 4);
    const last = Math.min(items.length, Math.ceil((box.scrollTop + (box.clientHeight || height)) / rowHeight) + 4);
    spacer.replaceChildren();
    for (let i = first; i < last; i++) {
      const row = el("div", { class: "row", "data-index": i }, renderRow(items[i], i));
      row.style.top = `${i * rowHeight}px`;
      spacer.append(row);
    }
  };
  box.addEventListener("scroll", draw);
  requestAnimationFrame(draw);
  draw();
  return box;
}

export function line(g, x1, y1, x2, y2) { g.beginPath(); g.moveTo(x1, y1); g.lineTo(x2, y2); g.stroke(); }
