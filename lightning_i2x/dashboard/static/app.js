// The I2X dashboard: plain JavaScript, no build step, no external resource. It asks the server
// (i2x serve, or the TensorBoard plugin) for small JSON documents and PNGs on demand, or reads
// them from the page itself (i2x report --interactive). Styles are set through the CSSOM only,
// so the strict Content-Security-Policy needs no 'unsafe-inline'. Drawing helpers: draw.js; the
// class, pair and side-by-side pages: pages.js (one script when inlined: _report.py joins them).

import { color, contributionBars, el, fmt, legend, line, lineChart, virtualList } from "./draw.js";
import { classPage, comparePage, pairPage } from "./pages.js";

// -- data: the server, or what the page carries -------------------------------------------------
export function keyOf(path, params) {
  const entries = Object.entries(params).map(([k, v]) => [k, String(v)]).sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  return path + "?" + new URLSearchParams(entries).toString();
}

class Missing extends Error {}

class Source {
  constructor(inline) { this.inline = inline; }
  async json(path, params = {}) {
    if (this.inline) {
      const r = this.inline.responses[keyOf(path, params)];
      if (r === undefined) throw new Missing(`left out of this file (${this.inline.left_out.images} probe images past its size cap); open the run with i2x serve`);
      return r;
    }
    const r = await fetch(new URL(keyOf(path, params), document.baseURI), { credentials: "same-origin" });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.statusText);
    return body;
  }
  imageUrl(path, params) {
    if (this.inline) return this.inline.images[keyOf(path, params)] || null;
    return new URL(keyOf(path, params), document.baseURI).href;
  }
  async post(path, params, body, token) {
    const r = await fetch(new URL(keyOf(path, params), document.baseURI), {
      method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json", "X-I2X-Token": token || "" },
      body: JSON.stringify(body),
    });
    const out = await r.json();
    if (!r.ok) throw new Error(out.error || r.statusText);
    return out;
  }
}

// -- the application ---------------------------------------------------------------------------
class App {
  constructor(root, inline) {
    this.root = root;
    this.src = new Source(inline);
    this.inline = inline;
    this.view = null;
    this.t = null;
  }

  async start() {
    this.config = this.inline ? this.inline.config : await this.src.json("api/config");
    window.addEventListener("hashchange", () => this.route());
    await this.route();
  }

  state() { return Object.fromEntries(new URLSearchParams(location.hash.slice(1))); }

  go(changes) {
    const s = { ...this.state(), ...changes };
    for (const k of Object.keys(s)) if (s[k] === null || s[k] === undefined) delete s[k];
    location.hash = new URLSearchParams(s).toString();
  }

  link(text, changes, attrs = {}) {
    return el("a", { ...attrs, href: "#" + new URLSearchParams({ ...this.state(), ...changes }).toString(), text });
  }

  async route() {
    const s = this.state();
    const runs = this.config.runs;
    if (!runs.length) { this.root.replaceChildren(el("p", { class: "note", text: "No I2X run here (a run directory holds a manifest.json of format lightning-i2x-run)." })); return; }
    const run = runs.includes(s.run) ? s.run : runs[0];
    if (!this.ov || this.ov.name !== run || this.needsReload) {
      this.ov = await this.src.json("api/overview", { run });
      this.explained = this.src.json("api/explanation", { run });  // dearer: drawn when it comes
      this.explained.catch(() => {});
      this.needsReload = false;
      if (this.t === null || this.t >= this.ov.checkpoints.length) this.t = Math.max(0, this.ov.checkpoints.length - 1);
    }
    if (s.t !== undefined && !Number.isNaN(Number(s.t))) this.t = Math.max(0, Math.min(this.ov.checkpoints.length - 1, Number(s.t)));
    this.run = run;
    this.renderShell();
    const main = el("main", { id: "view" });
    this.root.append(main);
    try {
      if (s.view === "prototype") this.view = await this.prototypePage(main, Number(s.k));
      else if (s.view === "image") this.view = await this.imagePage(main, Number(s.i));
      else if (s.view === "class") this.view = await classPage(this, main, Number(s.c));
      else if (s.view === "pair") this.view = await pairPage(this, main, Number(s.a), Number(s.b));
      else if (s.view === "compare") this.view = await comparePage(this, main, s);
      else this.view = this.overviewPage(main, s);
      this.view.setT(this.t);
      document.body.dataset.view = s.view || "overview";
    } catch (e) {
      main.replaceChildren(el("p", { class: "note", id: "error", text: String(e.message || e) }));
      this.view = { setT() {} };
      document.body.dataset.view = "error";
    }
  }

  renderShell() {
    const ov = this.ov, T = ov.checkpoints.length;
    const slider = el("input", { type: "range", id: "ckpt", min: 0, max: Math.max(0, T - 1), value: this.t, "aria-label": "checkpoint" });
    const label = el("span", { id: "ckpt-label" });
    const setLabel = () => {
      const c = ov.checkpoints[this.t];
      label.textContent = c ? `checkpoint ${this.t} / ${T - 1} (epoch ${c.epoch}, step ${c.global_step})` : "no checkpoint yet";
    };
    slider.addEventListener("input", () => { this.t = Number(slider.value); setLabel(); this.view && this.view.setT(this.t); });
    setLabel();
    const runSel = this.config.runs.length > 1 ? el("select", { id: "run", onchange: (e) => this.go({ run: e.target.value, view: null, k: null, i: null }) },
      this.config.runs.map((r) => el("option", { value: r, selected: r === this.run, text: r }))) : null;
    const mode = this.inline ? "offline file: marks need i2x serve" : this.config.read_only ? "read-only" : null;
    this.root.replaceChildren(el("header", {},
      el("h1", { text: "I2X" }), runSel || el("span", { class: "muted", text: this.run }),
      el("nav", {}, this.link("overview", { run: this.run, view: "overview", k: null, i: null }),
        this.inline ? null : this.link("side by side", { run: this.run, view: "compare", k: null, i: null }, { id: "compare-link" })),
      slider, label, mode ? el("span", { class: "badge", text: mode }) : null,
      this.inline && this.inline.left_out.images ? el("span", { class: "note", text: `${this.inline.left_out.images} probe images left out of this file (size cap)` }) : null));
  }

  protoLink(k, extra = {}) {
    const mark = this.ov.marks[String(k)];
    return el("span", {}, this.link(`P-${k}`, { run: this.run, view: "prototype", k, i: null }, { "data-prototype": k, ...extra }),
      mark ? el("span", { class: `badge ${mark}`, text: mark }) : null);
  }

  pairLink([a, b]) {
    const names = this.ov.class_names;
    return this.link(`${names[a]} ↔ ${names[b]}`, { view: "pair", a, b, c: null, k: null, i: null }, { "data-pair": `${a}-${b}` });
  }

  // -- overview --------------------------------------------------------------------------------
  overviewPage(main, s) {
    const ov = this.ov, names = ov.class_names;
    const cls = s.cls !== undefined && s.cls !== "" ? Number(s.cls) : null;
    const pair = s.pair || "";
    const conf = lineChart(ov.confidence.map((v, c) => ({ name: names[c], values: v, color: color(c), bold: c === cls })), { ymin: 0, ymax: 1, label: "checkpoint" });
    const now = el("table", { class: "small", id: "conf-now" });
    const drawNow = (t) => now.replaceChildren(el("tr", {}, el("th", { text: "class" }), el("th", { text: `confidence @${t}` })),
      ...names.map((n, c) => el("tr", {}, el("td", { text: n }), el("td", { text: fmt(ov.confidence[c][t]) }))),
      el("tr", {}, el("td", { text: "probe accuracy" }), el("td", { text: fmt(ov.accuracy[t]) })));
    const unc = el("section", { class: "card", id: "uncertain-card" }, el("h2", { text: "Uncertain prototypes (one row per prototype, with its pairs)" }),
      el("p", { class: "muted", text: "explaining the run…" }));
    const sus = el("section", { class: "card", id: "suspects-card" }, el("h2", { text: "Suspected shortcuts" }), el("p", { class: "muted", text: "explaining the run…" }));
    let order = null, t = this.t;
    const setOrder = () => { if (order) for (const li of order.children) li.classList.toggle("resolved", li.dataset.interval !== "" && Number(li.dataset.interval) < t); };
    this.explained.then((d) => {
      const c = this.explanationCards(d, cls, pair);
      order = c.order;
      unc.replaceChildren(unc.firstChild, c.filters, c.uncertain);
      sus.replaceChildren(sus.firstChild, c.suspects, el("h2", { text: "Learning order (pair resolved after interval)" }), order);
      setOrder();
      main.dataset.explained = "1";
    }, (e) => { for (const card of [unc, sus]) card.replaceChildren(card.firstChild, el("p", { class: "note", text: String(e.message || e) })); });
    const all = ov.has_prototypes ? virtualList([...Array(ov.num_prototypes).keys()], (k) => [this.protoLink(k), el("span", { class: "muted", text: `  in ${ov.holding[k]} probe images` })], { id: "all-prototypes", height: 240 }) : el("p", { class: "muted", text: "no prototypes yet" });
    main.append(el("div", { class: "grid" },
      el("section", { class: "card" }, el("h2", { text: "Confidence of the true class, per class" }), conf.node, legend(names), now,
        el("p", { id: "class-links" }, "class pages: ", names.map((n, c) => [this.link(n, { view: "class", c, k: null, i: null }, { "data-class": c }), " "]))),
      unc, sus,
      ov.channels ? el("section", { class: "card", id: "channels" }, el("h2", { text: `Disentangled channels (EPIC): purity ${fmt(ov.channels.purity_before, 2)} → ${fmt(ov.channels.purity_after, 2)}` }),
        el("table", { class: "small" }, el("tr", {}, el("th", { text: "channel" }), el("th", { text: "purity before" }), el("th", { text: "after" }), el("th", { text: "class it weighs most" })),
          ov.channels.channels.map((c) => el("tr", {}, el("td", { text: `ch ${c.channel}` }), el("td", { text: fmt(c.purity_before, 2) }), el("td", { text: fmt(c.purity_after, 2) }), el("td", { text: names[c.top_class] }))))) : null,
      ov.xfeatures ? el("section", { class: "card", id: "xfeatures" }, el("h2", { text: "X-features (XNN): a few concepts per class that sum to its score" }),
        el("table", { class: "small" }, el("tr", {}, el("th", { text: "class" }), el("th", { text: "n_x" }), el("th", { text: "held-out R²" }),
          el("th", { text: "top probe images per x-feature" }), el("th", { text: "bars: contributions + bias = explained (network)" })),
        ov.xfeatures.filter((x) => cls === null || x.class === cls).map((x) => el("tr", { "data-class": x.class }, el("td", { text: names[x.class] }),
          el("td", { text: String(x.n_x) }), el("td", { text: fmt(x.r2, 3) }),
          el("td", {}, x.top_images.map((imgs, f) => [`x${f + 1}: `, imgs.map((i) => [this.link(`#${i}`, { view: "image", i, k: null }), " "]), el("br")])),
          el("td", {}, x.bars.map((b) => [this.link(`#${b.image}`, { view: "image", i: b.image, k: null }), ": ",
            b.contributions.map((v, f) => `x${f + 1} ${fmt(v, 2)}`).join(" + "), ` + bias ${fmt(b.bias, 2)} = ${fmt(b.explained, 2)} (${fmt(b.score, 2)})`, el("br")])))))) : null,
      el("section", { class: "card" }, el("h2", { text: `All ${ov.num_prototypes} prototypes` }), all,
        el("p", { class: "muted" }, `${ov.num_probe} probe images, ${ov.checkpoints.length} checkpoints, feature map ${ov.feature_shape.join("×")}; open image `,
          el("input", { type: "number", id: "goto-image", min: 0, max: ov.num_probe - 1, value: 0, onchange: (e) => this.go({ view: "image", i: e.target.value, k: null }) })),
        this.inline ? null : el("p", { class: "muted" }, "files: ", ov.files.slice(0, 3).map((f) => [el("a", { href: new URL(keyOf("api/file", { run: this.run, path: f }), document.baseURI).href, text: f }), " "]), ov.files.length > 3 ? `and ${ov.files.length - 3} more` : "")),
      ov.twin ? this.twinCard(ov.twin) : null));
    return { setT: (nt) => {
      conf.setCursor(nt); drawNow(nt); t = nt; setOrder();
    } };
  }

  // The explanation's cards of the overview (uncertain prototypes, suspects, learning order), once
  // api/explanation answered; filtered by class and pair.
  explanationCards(d, cls, pair) {
    const ov = this.ov, names = ov.class_names, ex = d.explanation;
    const filters = el("div", { class: "filters" },
      el("label", { text: "class " }), el("select", { id: "filter-class", onchange: (e) => this.go({ cls: e.target.value || null, pair: null }) },
        el("option", { value: "", text: "all" }), names.map((n, c) => el("option", { value: c, selected: c === cls, text: n }))),
      el("label", { text: "pair " }), el("select", { id: "filter-pair", onchange: (e) => this.go({ pair: e.target.value || null }) },
        el("option", { value: "", text: "all" }),
        [...new Set((ex ? ex.uncertain : []).flatMap((u) => u.pairs.map((p) => p.classes.join("-"))))]
          .filter((p) => cls === null || p.split("-").map(Number).includes(cls))
          .map((p) => el("option", { value: p, selected: p === pair, text: p.split("-").map((c) => names[c]).join(" ↔ ") }))));
    const rows = (ex ? ex.uncertain : []).map((u) => ({ ...u, pairs: u.pairs.filter((p) => (cls === null || p.classes.includes(cls)) && (!pair || p.classes.join("-") === pair)) }))
      .filter((u) => u.pairs.length);
    const uncertain = rows.length ? virtualList(rows, (u) => [this.protoLink(u.prototype), " ",
      el("span", { class: "muted" }, u.pairs.map((p, j) => [j ? "; " : "", this.pairLink(p.classes),
        ` (${p.flips} flips, ${fmt(p.score, 2)})`])),
      ex.suspects && ex.suspects.includes(u.prototype) ? el("span", { class: "badge suspect", text: "suspect" }) : null], { id: "uncertain" })
      : el("p", { class: "muted", id: "uncertain", text: ex ? "no uncertain prototype (for this filter)" : d.note });
    const suspects = !ex ? el("p", { class: "muted", text: d.note }) : ex.suspects === null
      ? el("p", { class: "muted", text: "not measured: add RelianceMeasure() to I2XCallback(measures=[...]) or call reliance_of_run(run, model)" })
      : el("p", { id: "suspects" }, ex.suspects.length ? ex.suspects.map((k) => [this.protoLink(k), " "]) : "none");
    const order = el("ol", { class: "order", id: "order" }, (ex ? ex.learning_order : [])
      .filter((o) => (cls === null || o.classes.includes(cls)) && (!pair || o.classes.join("-") === pair)).slice(0, 60)
      .map((o) => el("li", { "data-interval": o.interval === null ? "" : o.interval, text: `${names[o.classes[0]]}/${names[o.classes[1]]} ` + (o.interval === null ? "unresolved" : `@ interval ${o.interval}`) })));
    return { filters, uncertain, suspects, order };
  }

  // The causal twin a TwinMeasure stored: fidelity, effects per concept, edges, its three figures.
  twinCard(t) {
    const head = ["concept", "alignment R²", "direct", "mediated", "total", "decoded total", "moved as intended"];
    const table = el("table", { class: "small", id: "twin-effects" }, el("tr", {}, head.map((h) => el("th", { text: h }))),
      t.concepts.map((c) => el("tr", {}, el("td", { text: c.name }), el("td", { text: fmt(c.alignment_r2) }), el("td", { text: fmt(c.direct, 2) }),
        el("td", { text: fmt(c.mediated, 2) }), el("td", { text: fmt(c.total, 2) }), el("td", { text: fmt(c.decoded_total, 2) }), el("td", { text: fmt(c.intended, 2) }))));
    const figures = t.views.map((v) => {
      const src = this.src.imageUrl("api/twin.png", { run: this.run, view: v });
      return src ? el("img", { class: "twin", "data-twin-view": v, src, alt: `twin ${v}` }) : null;
    });
    return el("section", { class: "card", id: "twin" }, el("h2", { text: `Causal twin surrogate (logit of class ${this.ov.class_names[t.target] ?? t.target})` }),
      el("p", { class: "muted", text: `fidelity ${fmt(t.fidelity, 3)} on held-out images; reconstructions classified alike ${fmt(t.reconstruction_fidelity, 3)}` }),
      table, el("p", { class: "muted", text: "edges: " + (t.edges.map((e) => `${e.from} → ${e.to} (${fmt(e.weight, 2)})`).join(", ") || "none") }), figures);
  }

  // -- prototype page ----------------------------------------------------------------------------
  async prototypePage(main, k) {
    const ov = this.ov, names = ov.class_names;
    const p = await this.src.json("api/prototype", { run: this.run, k });
    const marks = this.config.marks;
    const canMark = !this.inline && !this.config.read_only;
    const markBox = el("div", { id: "marks" }, el("span", { text: "mark: " }), [...marks, null].map((m) => el("button", {
      class: p.mark === m ? "on" : "", "data-mark": m === null ? "clear" : m, disabled: !canMark, text: m === null ? "clear" : m,
      onclick: async () => {
        const out = await this.src.post("api/marks", { run: this.run }, { prototype: k, mark: m }, this.config.token);
        ov.marks = out.marks;
        for (const b of markBox.querySelectorAll("button")) b.classList.toggle("on", b.dataset.mark === (m === null ? "clear" : m));
        markBox.dataset.saved = m === null ? "clear" : m;
      } })), canMark ? null : el("span", { class: "muted", text: this.inline ? " (marks need i2x serve)" : " (read-only server)" }));
    const spriteUrl = p.patches.length ? this.src.imageUrl("api/sprite.png", { run: this.run, k }) : null;
    let sprite;
    if (spriteUrl) {
      sprite = el("img", { class: "sprite", id: "sprite", src: spriteUrl, alt: `patches of P-${k}`, title: "click a patch to open its probe image" });
      sprite.addEventListener("load", () => { sprite.style.width = `${sprite.naturalWidth * 4}px`; });
      sprite.addEventListener("click", (e) => {
        const n = Math.floor((e.offsetX / sprite.clientWidth) * (sprite.naturalWidth + p.patch_gap) / (p.patch_size[1] + p.patch_gap));
        const patch = p.patches[Math.max(0, Math.min(p.patches.length - 1, n))];
        this.go({ view: "image", i: patch.image, k: null });
      });
    } else sprite = el("p", { class: "muted", text: ov.image_shape ? "no patch (no probe location holds it)" : "the run holds no probe images" });
    const inten = lineChart([{ name: `P-${k}`, values: p.intensity, color: "#333" }], { ymin: 0, label: "checkpoint" });
    let beta = null;
    if (p.beta) beta = lineChart(names.map((n, c) => ({ name: n, values: p.beta.map((row) => row[c]), color: color(c) })), { label: "interval", bands: p.thresholds });
    const rel = p.reliance;
    const status = el("table", { class: "small", id: "status" },
      el("tr", {}, el("td", { text: "reliance" }), el("td", { text: rel ? `${fmt(rel.reliance)} (drop ${fmt(rel.drop)}, random ${fmt(rel.random_drop)}, ${rel.count} images)` : "not measured" })),
      el("tr", {}, el("td", { text: "suspect" }), el("td", { text: p.suspect === null ? "unknown (no reliance)" : p.suspect ? "yes: relied on, salient, at a fixed place at the edge" : "no" })),
      el("tr", {}, el("td", { text: "shared by" }), el("td", { text: p.shared_in.map((c) => names[c]).join(", ") || "none" })),
      el("tr", {}, el("td", { text: "specialised in" }), el("td", { text: p.specialised_in.map((c) => names[c]).join(", ") || "none" })),
      el("tr", {}, el("td", { text: "uncertain between" }), el("td", { text: p.uncertain.map((u) => `${names[u.classes[0]]} ↔ ${names[u.classes[1]]} (${u.flips} flips)`).join("; ") || "none" })),
      el("tr", {}, el("td", { text: "probe images" }), el("td", { text: `${p.num_holding}: ` + p.holding_per_class.map((n, c) => (n ? `${names[c]} ${n}` : null)).filter(Boolean).join(", ") })));
    const now = el("p", { id: "proto-now" });
    const thumbs = el("div", { class: "thumbs", id: "holders" });
    for (const h of p.holders) thumbs.append(this.thumb(h, k));
    main.append(...[el("h2", {}, `Prototype P-${k}`, p.suspect ? el("span", { class: "badge suspect", text: "suspect" }) : null), markBox,
      el("div", { class: "grid" },
        el("section", { class: "card" }, el("h2", { text: `Its ${p.patches.length} probe patches nearest the centroid` }), sprite, status),
        el("section", { class: "card" }, el("h2", { text: "Mean intensity in the images holding it" }), inten.node, now),
        el("section", { class: "card" }, el("h2", { text: "Ridge coefficient per class over the intervals (dashed: ±τ)" }),
          beta ? [beta.node, legend(names)] : el("p", { class: "muted", text: p.note || "no explanation" })),
        el("section", { class: "card" }, el("h2", { text: `Probe images holding it (${p.holders.length} of ${p.num_holding}, cells outlined)` }), thumbs))].filter(Boolean));
    return { setT: (t) => {
      inten.setCursor(t);
      const b = p.beta ? Math.min(t, p.beta.length - 1) : null;
      if (beta) beta.setCursor(b);
      now.textContent = `checkpoint ${t}: intensity ${fmt(p.intensity[t])}` + (b !== null && b >= 0 ? `; interval ${b}: ` + names.map((n, c) => `${n} ${fmt(p.beta[b][c], 2)}`).join(", ") : "");
    } };
  }

  thumb(h, k) {
    const ov = this.ov, [fh, fw] = ov.feature_shape, scale = 3;
    const [H, W] = ov.image_shape || [fh * 8, fw * 8];
    const c = el("canvas", { width: W * scale, height: H * scale, "data-image": h.image, title: `probe image ${h.image} (${ov.class_names[h.label]})` });
    c.addEventListener("click", () => this.go({ view: "image", i: h.image, k: null }));
    const draw = (img) => {
      const g = c.getContext("2d");
      g.imageSmoothingEnabled = false;
      if (img) g.drawImage(img, 0, 0, c.width, c.height); else { g.fillStyle = "#eee"; g.fillRect(0, 0, c.width, c.height); }
      g.strokeStyle = "#ff2"; g.lineWidth = 2;
      const set = new Set(h.cells), ch = c.height / fh, cw = c.width / fw;
      for (const cell of h.cells) {
        const i = Math.floor(cell / fw), j = cell % fw;
        if (!set.has(cell - fw) || i === 0) line(g, j * cw, i * ch, (j + 1) * cw, i * ch);
        if (!set.has(cell + fw) || i === fh - 1) line(g, j * cw, (i + 1) * ch, (j + 1) * cw, (i + 1) * ch);
        if (j === 0 || !set.has(cell - 1)) line(g, j * cw, i * ch, j * cw, (i + 1) * ch);
        if (j === fw - 1 || !set.has(cell + 1)) line(g, (j + 1) * cw, i * ch, (j + 1) * cw, (i + 1) * ch);
      }
    };
    const url = ov.image_shape ? this.src.imageUrl("api/image.png", { run: this.run, i: h.image }) : null;
    if (url) { const img = new Image(); img.onload = () => draw(img); img.onerror = () => draw(null); img.src = url; } else draw(null);
    return c;
  }

  // -- image page --------------------------------------------------------------------------------
  async imagePage(main, i) {
    const ov = this.ov, names = ov.class_names, [fh, fw] = ov.feature_shape;
    const d = await this.src.json("api/image", { run: this.run, i });
    const [H, W] = d.image_shape || [fh * 16, fw * 16];
    const scale = Math.max(1, Math.floor(336 / Math.max(H, W)));
    const canvas = el("canvas", { class: "big", id: "image-canvas", width: W * scale, height: H * scale });
    const heat = el("canvas", { width: fw, height: fh });
    const info = el("div", { id: "cell-info", class: "muted", text: "hover a cell: its prototype, intensity and distance to the centroid" });
    const outlines = el("input", { type: "checkbox", id: "outlines", checked: true });
    const showMap = el("input", { type: "checkbox", id: "show-map", checked: true });
    let img = null, hover = null, t = this.t;
    const cw = canvas.width / fw, ch = canvas.height / fh;
    const draw = () => {
      const g = canvas.getContext("2d");
      g.imageSmoothingEnabled = false;
      g.clearRect(0, 0, canvas.width, canvas.height);
      if (img) g.drawImage(img, 0, 0, canvas.width, canvas.height); else { g.fillStyle = "#222"; g.fillRect(0, 0, canvas.width, canvas.height); }
      const cam = d.cams[t] || [];
      if (showMap.checked && cam.length) {
        const hg = heat.getContext("2d"), data = hg.createImageData(fw, fh), hi = Math.max(1e-9, ...cam.map((v) => v || 0));
        cam.forEach((v, n) => { const x = Math.max(0, (v || 0) / hi); data.data.set([255 * Math.min(1, 2 * x), 255 * Math.max(0, 2 * x - 1), 40, 150 * x], 4 * n); });
        hg.putImageData(data, 0, 0);
        g.imageSmoothingEnabled = true;
        g.drawImage(heat, 0, 0, canvas.width, canvas.height);
        g.imageSmoothingEnabled = false;
      }
      if (d.cells && outlines.checked) {
        g.strokeStyle = "rgba(255,255,255,0.7)"; g.lineWidth = 1;
        for (let a = 0; a < fh; a++) for (let b = 0; b < fw; b++) {
          const k = d.cells[a][b];
          if (b + 1 < fw && d.cells[a][b + 1] !== k) line(g, (b + 1) * cw, a * ch, (b + 1) * cw, (a + 1) * ch);
          if (a + 1 < fh && d.cells[a + 1][b] !== k) line(g, b * cw, (a + 1) * ch, (b + 1) * cw, (a + 1) * ch);
        }
      }
      if (hover && d.cells) {
        const k = d.cells[hover[0]][hover[1]];
        g.strokeStyle = "#0ff"; g.lineWidth = 2.5;
        for (let a = 0; a < fh; a++) for (let b = 0; b < fw; b++) if (d.cells[a][b] === k) g.strokeRect(b * cw + 1, a * ch + 1, cw - 2, ch - 2);
      }
    };
    const describe = () => {
      if (!hover) return;
      const [a, b] = hover;
      if (!d.cells) { info.textContent = `cell (${a}, ${b}): saliency ${fmt((d.cams[t] || [])[a * fw + b])}; no prototypes yet`; return; }
      const k = d.cells[a][b];
      info.dataset.prototype = k;
      info.textContent = `cell (${a}, ${b}): P-${k} · intensity ${fmt(d.intensity[String(k)][t])} at checkpoint ${t} · distance to centroid ${d.distances ? fmt(d.distances[a * fw + b]) : "not stored"} · saliency ${fmt((d.cams[t] || [])[a * fw + b])}`;
    };
    canvas.addEventListener("mousemove", (e) => {
      const r = canvas.getBoundingClientRect();
      const cell = [Math.min(fh - 1, Math.floor(((e.clientY - r.top) / r.height) * fh)), Math.min(fw - 1, Math.floor(((e.clientX - r.left) / r.width) * fw))];
      if (!hover || cell[0] !== hover[0] || cell[1] !== hover[1]) { hover = cell; draw(); describe(); }
    });
    canvas.addEventListener("mouseleave", () => { hover = null; draw(); });
    canvas.addEventListener("click", () => { if (hover && d.cells) this.go({ view: "prototype", k: d.cells[hover[0]][hover[1]], i: null }); });
    outlines.addEventListener("change", draw);
    showMap.addEventListener("change", draw);
    const url = d.image_shape ? this.src.imageUrl("api/image.png", { run: this.run, i }) : null;
    if (url) { img = new Image(); img.onload = draw; img.src = url; }
    const conf = lineChart(names.map((n, c) => ({ name: n, values: d.confidences.map((row) => row[c]), color: color(c), bold: c === d.label })), { ymin: 0, ymax: 1, label: "checkpoint" });
    const now = el("p", { id: "image-now" });
    const protos = el("ul", { id: "image-prototypes" });
    const drawProtos = () => protos.replaceChildren(...Object.entries(d.intensity).sort((x, y) => (y[1][t] ?? -1) - (x[1][t] ?? -1))
      .map(([k, v]) => el("li", {}, this.protoLink(Number(k)), ` intensity ${fmt(v[t])}`)));
    main.append(...[el("h2", {}, `Probe image ${i} (class ${names[d.label]})`, " ",
      i > 0 ? this.link("← previous", { view: "image", i: i - 1 }) : null, " ", i + 1 < ov.num_probe ? this.link("next →", { view: "image", i: i + 1 }) : null),
      url ? null : el("p", { class: "note", text: d.image_shape ? "this probe image is left out of this file" : "the run holds no probe images: the map is shown alone" }),
      el("div", { class: "grid" },
        el("section", { class: "card" }, el("h2", { text: "Saliency map and its prototype cells" }), canvas,
          el("div", {}, el("label", {}, outlines, " outlines"), " ", el("label", {}, showMap, " saliency map")), info),
        el("section", { class: "card" }, el("h2", { text: "Its confidence in every class over training" }), conf.node, legend(names), now,
          el("h2", { text: "Its prototypes (intensity at this checkpoint)" }), protos),
        d.contributions ? el("section", { class: "card", id: "contributions" },
          el("h2", { text: `Channel contributions to ${names[d.contributions.predicted]}: logit ${fmt(d.contributions.logit, 2)} = channels + bias ${fmt(d.contributions.bias, 2)}` }),
          contributionBars(d.contributions.bars)) : null)].filter(Boolean));
    return { setT: (nt) => {
      t = nt; conf.setCursor(t); draw(); describe(); drawProtos();
      const row = d.confidences[t] || [];
      now.textContent = `checkpoint ${t}: ` + names.map((n, c) => `${n} ${fmt(row[c], 2)}`).join(", ");
      canvas.dataset.t = t;
    } };
  }
}


const blob = document.getElementById("i2x-data");
const app = new App(document.getElementById("app"), blob ? JSON.parse(blob.textContent) : null);
app.start().catch((e) => {
  document.getElementById("app").replaceChildren(el("p", { class: "note", id: "error", text: `the dashboard failed: ${e.message || e}` }));
});
