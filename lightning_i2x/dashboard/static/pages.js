// The dashboard's class and pair pages (Figs. 3-5 as SVG) and two runs side by side; each page
// takes the App (its overview, its data source, its links) and returns { setT }.

import { color, el, fmt, legend, lineChart, svg } from "./draw.js";

// Rows (prototypes) x intervals as SVG: a cell's colour is its value (blue > 0, red < 0), its text
// what passed tau; row labels open the prototype page; the slider's interval is framed.
export function heatGrid(app, rows, n, { value, text, outlined = () => false, label, id }) {
  const cell = 30, left = 150, top = 22, W = left + n * cell + 10, H = top + rows.length * 24 + 8;
  const root = svg("svg", { class: "grid-svg", id, width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img" });
  const hi = Math.max(1e-9, ...rows.flatMap((r, i) => [...Array(n).keys()].map((t) => Math.abs(value(r, t) ?? 0))));
  for (let t = 0; t < n; t++) { const h = svg("text", { x: left + t * cell + cell / 2, y: 14, "text-anchor": "middle" }); h.textContent = `T${t}`; root.append(h); }
  rows.forEach((r, i) => {
    const y = top + i * 24, a = svg("text", { x: 4, y: y + 16, class: "proto-label", "data-prototype": r.prototype });
    a.textContent = label(r);
    a.addEventListener("click", () => app.go({ view: "prototype", k: r.prototype, c: null, a: null, b: null }));
    root.append(a);
    for (let t = 0; t < n; t++) {
      const v = value(r, t) ?? 0, x = v / hi;
      const fill = x >= 0 ? `rgba(33,102,172,${Math.abs(x)})` : `rgba(178,24,43,${Math.abs(x)})`;
      const rect = svg("rect", { x: left + t * cell, y, width: cell - 2, height: 22, fill, stroke: "#ddd", "data-t": t, "data-row": i });
      const title = svg("title"); title.textContent = `P-${r.prototype}, interval ${t}: ${fmt(value(r, t))}`; rect.append(title);
      root.append(rect);
      const s = text(r, t);
      if (s) { const tx = svg("text", { x: left + t * cell + cell / 2 - 1, y: y + 15, "text-anchor": "middle", class: Math.abs(x) > 0.6 ? "on-dark" : "" }); tx.textContent = s; root.append(tx); }
    }
    if (outlined(r)) root.append(svg("rect", { x: left - 1, y: y - 1, width: n * cell, height: 24, fill: "none", stroke: "#000", "stroke-width": 1.8 }));
  });
  const frame = svg("rect", { class: "cursor-frame", y: top - 2, width: cell, height: rows.length * 24 + 2, fill: "none" });
  root.append(frame);
  return { node: root, setT(t) { const c = Math.max(0, Math.min(n - 1, t)); frame.setAttribute("x", left + c * cell - 1); root.dataset.interval = c; } };
}

// Fig. 4: one row per interval (time flows down): T_t, then the classes that lost confidence to
// the class, each with its prototypes as labels that open the prototype page.
export function checkpointGraph(app, g, c) {
  const names = app.ov.class_names, row = 46, W = 760, H = 10 + g.length * row;
  const root = svg("svg", { class: "grid-svg", id: "graph", width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img" });
  const rows = g.map((r, i) => {
    const y = 10 + i * row + 18, band = svg("rect", { x: 0, y: y - 20, width: W, height: row - 4, fill: "none", class: "graph-row", "data-interval": r.interval });
    root.append(band);
    if (i) root.append(svg("line", { x1: 24, x2: 24, y1: y - row + 16, y2: y - 16, stroke: "#999" }));
    root.append(svg("circle", { cx: 24, cy: y, r: 15, fill: color(c), stroke: "#000" }));
    const node = svg("text", { x: 24, y: y + 4, "text-anchor": "middle", class: "on-dark" }); node.textContent = `T${r.interval}`; root.append(node);
    if (!r.sources.length) { const n = svg("text", { x: 60, y: y + 4, class: "muted" }); n.textContent = "no class lost confidence to it"; root.append(n); }
    r.sources.slice(0, 6).forEach((src, j) => {
      const x = 60 + j * 115;
      root.append(svg("rect", { x, y: y - 18, width: 108, height: 16, rx: 4, fill: color(src.class) }));
      const n = svg("text", { x: x + 54, y: y - 6, "text-anchor": "middle", class: "on-dark" }); n.textContent = `${names[src.class]} →`; root.append(n);
      src.prototypes.slice(0, 4).forEach((k, m) => {
        const a = svg("text", { x: x + 2 + m * 27, y: y + 12, class: "proto-label", "data-prototype": k, "data-edge": `${src.class}-${c}-${r.interval}` });
        a.textContent = `P-${k}`;
        a.addEventListener("click", () => app.go({ view: "prototype", k, c: null }));
        root.append(a);
      });
      if (src.prototypes.length > 4) { const more = svg("text", { x: x + 2 + 4 * 27, y: y + 12, class: "muted" }); more.textContent = `+${src.prototypes.length - 4}`; root.append(more); }
    });
    if (r.sources.length > 6) { const more = svg("text", { x: W - 60, y: y + 4, class: "muted" }); more.textContent = `+${r.sources.length - 6} classes`; root.append(more); }
    return band;
  });
  return { node: root, setT(t) { const c2 = Math.max(0, Math.min(rows.length - 1, t)); rows.forEach((b, i) => b.classList.toggle("now", i === c2)); root.dataset.interval = c2; } };
}

export async function classPage(app, main, c) {
  const names = app.ov.class_names;
  const d = await app.src.json("api/class", { run: app.run, c });
  const n = d.thresholds.length;
  const head = el("h2", {}, `Class ${names[c]}`, " ", el("span", { class: "muted", text: `shared: ${d.shared.map((k) => `P-${k}`).join(", ") || "none"}; specialised: ${d.specialised.map((k) => `P-${k}`).join(", ") || "none"}` }));
  if (!n) { main.append(head, el("p", { class: "note", id: "class-note", text: d.note || "no interval yet (needs two checkpoints)" })); return { setT() {} }; }
  const grid = heatGrid(app, d.rows, n, { id: "evolution", value: (r, t) => r.beta[t], text: (r, t) => (r.against[t] === null ? "" : names[r.against[t]].slice(0, 4)),
    label: (r) => `P-${r.prototype}${r.kind ? ` (${r.kind})` : ""}` });
  const graph = checkpointGraph(app, d.graph, c);
  const now = el("p", { id: "class-now" });
  main.append(head, el("p", {}, "its uncertain pairs: ", d.pairs.length ? d.pairs.map((p) => [app.pairLink(p), " "]) : "none"),
    el("div", { class: "grid" },
      el("section", { class: "card" }, el("h2", { text: "Evolution (Fig. 3): what each prototype did to its confidence per interval (blue raised, red lowered; label: the competing class past τ)" }), grid.node, now),
      el("section", { class: "card" }, el("h2", { text: "Checkpoint graph (Fig. 4): who lost confidence to it, by which prototypes (click one)" }), graph.node)));
  return { setT: (t) => {
    const b = Math.min(t, n - 1);
    grid.setT(b); graph.setT(b);
    const src = d.graph[b].sources;
    now.textContent = `interval ${b} (τ ${fmt(d.thresholds[b])}): ` + (src.length ? src.map((e) => `${names[e.class]} → ${names[c]} by ${e.prototypes.map((k) => `P-${k}`).join(", ")}`).join("; ") : "no class lost confidence to it");
  } };
}

export async function pairPage(app, main, a, b) {
  const names = app.ov.class_names;
  const d = await app.src.json("api/pair", { run: app.run, a, b });
  const n = d.thresholds.length;
  const head = el("h2", {}, `${names[a]} vs ${names[b]}`, " ", app.link(`class ${names[a]}`, { view: "class", c: a, a: null, b: null }), " ",
    app.link(`class ${names[b]}`, { view: "class", c: b, a: null, b: null }));
  if (!n || !d.rows.length) { main.append(head, el("p", { class: "note", id: "pair-note", text: d.note || (n ? "no prototype separated them above τ" : "no interval yet (needs two checkpoints)") })); return { setT() {} }; }
  const grid = heatGrid(app, d.rows, n, { id: "pair-grid", value: (r, t) => r.diff[t], text: (r, t) => (r.over[t] ? (r.diff[t] > 0 ? "+" : "−") : ""),
    outlined: (r) => r.flips !== null, label: (r) => `P-${r.prototype}${r.flips !== null ? ` uncertain, ${r.flips} flips` : ""}` });
  const now = el("p", { id: "pair-now" });
  main.append(head, el("section", { class: "card" },
    el("h2", { text: `Pair view (Fig. 5): β[t][k, ${names[a]}] − β[t][k, ${names[b]}] (blue: towards ${names[a]}, red: towards ${names[b]}; ± past τ; uncertain ones outlined)` }), grid.node, now));
  return { setT: (t) => {
    const c = Math.min(t, n - 1);
    grid.setT(c);
    const moved = d.rows.filter((r) => r.over[c]).map((r) => `P-${r.prototype} towards ${r.diff[c] > 0 ? names[a] : names[b]}`);
    now.textContent = `interval ${c}: ${moved.join(", ") || "none past τ"}`;
  } };
}

// Two runs (or two checkpoints of one run) side by side on the same probe.
export async function comparePage(app, main, s) {
  const ov = app.ov, names = ov.class_names, runs = app.config.runs;
  if (app.inline) throw new Error("side by side needs i2x serve (this file holds one run)");
  const other = runs.includes(s.other) ? s.other : runs.find((r) => r !== app.run) || app.run;
  const ob = other === app.run ? ov : await app.src.json("api/overview", { run: other });
  const U = ob.checkpoints.length;
  let u = s.u !== undefined && !Number.isNaN(Number(s.u)) ? Math.max(0, Math.min(U - 1, Number(s.u))) : U - 1, t = app.t, asked = 0;
  const pick = el("select", { id: "compare-other", onchange: (e) => app.go({ other: e.target.value, u: null }) },
    runs.map((r) => el("option", { value: r, selected: r === other, text: r === app.run ? `${r} (the same run)` : r })));
  const slider = el("input", { type: "range", id: "ckpt-other", min: 0, max: Math.max(0, U - 1), value: u, "aria-label": "checkpoint of the second run" });
  const label = el("span", { id: "ckpt-other-label" });
  const chart = (o) => lineChart(o.confidence.map((v, c) => ({ name: names[c], values: v, color: color(c) })), { ymin: 0, ymax: 1, label: "checkpoint" });
  const ca = chart(ov), cb = chart(ob);
  const table = el("table", { class: "small", id: "compare-table" });
  const changes = el("div", { id: "compare-changes" });
  const list = (title, kind, d, run) => el("p", { "data-kind": kind }, `${title}: ${d.count}`, d.count ? " — " : "",
    d.images.map((i) => [app.link(`#${i}`, { run, view: "image", i, other: null, u: null }, { "data-image": i }), " "]), d.count > d.images.length ? "…" : "");
  const refresh = async () => {
    const mine = ++asked;
    label.textContent = `${other}: checkpoint ${u} / ${U - 1}`;
    ca.setCursor(t); cb.setCursor(u);
    const d = await app.src.json("api/compare", { run: app.run, t, other, u });
    if (mine !== asked) return;  // a later move of a slider answered first
    table.replaceChildren(el("tr", {}, el("th", { text: "class" }), el("th", { text: `${app.run} @${t}` }), el("th", { text: `${other} @${u}` }), el("th", { text: "Δ" })),
      ...names.map((n, c) => el("tr", {}, el("td", { text: n }), el("td", { text: fmt(d.confidence[0][c]) }), el("td", { text: fmt(d.confidence[1][c]) }),
        el("td", { text: fmt(d.confidence[1][c] - d.confidence[0][c]) }))),
      el("tr", {}, el("td", { text: "probe accuracy" }), el("td", { text: fmt(d.accuracy[0]) }), el("td", { text: fmt(d.accuracy[1]) }), el("td", { text: fmt(d.accuracy[1] - d.accuracy[0]) })));
    changes.replaceChildren(el("p", { class: "muted", text: `${d.changed} probe images change class` }),
      list(`right only in ${other} @${u} (fixed)`, "fixed", d.fixed, other), list(`right only in ${app.run} @${t} (broken)`, "broken", d.broken, app.run));
    main.dataset.compared = `${t}-${u}`;
  };
  slider.addEventListener("input", () => { u = Number(slider.value); refresh().catch(showError); });
  const showError = (e) => changes.replaceChildren(el("p", { class: "note", id: "compare-error", text: String(e.message || e) }));
  main.append(el("h2", { text: "Side by side on the same probe" }),
    el("p", { class: "controls" }, `${app.run} at the checkpoint of the slider above, next to `, pick, " at ", slider, " ", label),
    el("div", { class: "grid" },
      el("section", { class: "card" }, el("h2", { text: `${app.run}: confidence of the true class` }), ca.node, legend(names)),
      el("section", { class: "card" }, el("h2", { text: `${other}: confidence of the true class` }), cb.node, legend(names)),
      el("section", { class: "card" }, el("h2", { text: "At the two checkpoints" }), table, changes)));
  return { setT: (nt) => { t = nt; refresh().catch(showError); } };
}
