// steerlab playground: plain JavaScript against the server's OpenAI-compatible API (steerlab/serve/API.md).
// No framework, no build step. Everything the page shows comes from the API; nothing is sent elsewhere.
"use strict";

// The API lives next to /playground/, wherever the server is mounted (a reverse proxy may add a prefix).
const BASE = location.pathname.replace(/playground\/?(index\.html)?$/, "");
const POLICIES = ["after_user", "all", "last_prompt"];
const POLICY_HINT = {
  after_user: "the assistant turn and every generated token (CAA)",
  all: "every token, the prompt included",
  last_prompt: "the last prompt token and every generated token (PAS)",
};
const DEFAULT_STRENGTH = 4;
// The strength schedule's grammar (steerlab/schedules.py): checked here so a typo is named before any request.
const SCHEDULE_RE = /^(constant|(first|decay):[1-9][0-9]*)$/;
const SCHEDULE_HINT = "constant: the same push everywhere; first:N: only the first N steered positions; " +
  "decay:H: the push halves every H positions";
const KEY_NAME = "steerlab.apiKey";

const state = {
  model: null,          // served model id (from /health)
  vectors: [],          // VECTOR objects from /v1/vectors
  chosen: new Map(),    // name -> {strength, layers:Set, positions, schedule, condition}  (condition: a vector name or "")
  focused: null,        // name whose details are shown
  mode: "compare",
  runs: [],             // AbortControllers of the streams in flight
};

const $ = (sel) => document.querySelector(sel);
function el(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(e.dataset, v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat()) if (kid !== null && kid !== undefined) e.append(kid);
  return e;
}
const fmt = (x, d = 3) => (typeof x === "number" && isFinite(x) ? +x.toFixed(d) + "" : String(x ?? "–"));
const signed = (x) => (x > 0 ? "+" : "") + fmt(x, 2);

// ------------------------------------------------------------------ API key (entered once, kept in the browser)

function getKey() {
  return sessionStorage.getItem(KEY_NAME) || localStorage.getItem(KEY_NAME) || "";
}
function setKey(key, remember) {
  sessionStorage.removeItem(KEY_NAME);
  localStorage.removeItem(KEY_NAME);
  if (key) (remember ? localStorage : sessionStorage).setItem(KEY_NAME, key);
}

function banner(text, kind = "warn") {
  const b = $("#banner");
  if (!text) { b.hidden = true; return; }
  b.textContent = text;
  b.className = "banner" + (kind === "error" ? " error" : "");
  b.hidden = false;
}

// ------------------------------------------------------------------ HTTP

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function errorMessage(resp) {
  let text = "";
  try { text = await resp.text(); } catch (_) { /* body lost */ }
  try {
    const j = JSON.parse(text);
    if (j.error && j.error.message) return j.error.message;
    if (typeof j.detail === "string") return j.detail;
    if (Array.isArray(j.detail)) return j.detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
  } catch (_) { /* not JSON */ }
  return text || `${resp.status} ${resp.statusText}`;
}

async function api(path, opts = {}) {
  const headers = Object.assign({}, opts.headers || {});
  const key = getKey();
  if (key) headers["Authorization"] = "Bearer " + key;
  const resp = await fetch(BASE + path, Object.assign({}, opts, { headers }));
  if (resp.status === 401) {
    banner("This server needs an API key: enter it at the top right.", "error");
    $("#api-key").focus();
  }
  if (!resp.ok) throw new ApiError(resp.status, await errorMessage(resp));
  return resp;
}
const getJSON = async (path) => (await api(path)).json();

// ------------------------------------------------------------------ server and vectors

async function loadHealth() {
  try {
    const h = await (await fetch(BASE + "health")).json();
    state.model = h.model;
    $("#server-dot").className = "dot ok";
    $("#server-text").textContent = `${h.model} · ${h.n_layers} layers · d=${h.hidden_size}`;
  } catch (e) {
    $("#server-dot").className = "dot bad";
    $("#server-text").textContent = "server not reachable";
  }
}

async function loadVectors(focus) {
  const list = $("#vector-list");
  try {
    const j = await getJSON("v1/vectors");
    state.vectors = j.data || [];
    if (getKey() || state.vectors.length) banner(null);
  } catch (e) {
    list.replaceChildren(el("li", { class: "empty", text: "cannot list vectors: " + e.message }));
    return;
  }
  for (const name of [...state.chosen.keys()]) if (!vectorByName(name)) state.chosen.delete(name);
  if (state.focused && !vectorByName(state.focused)) state.focused = null;
  if (focus) state.focused = focus;
  if (!state.focused && state.vectors.length) state.focused = state.vectors[0].id;
  for (const c of state.chosen.values()) if (c.condition && !vectorByName(c.condition)) c.condition = "";
  renderVectorList();
  renderControls();
  renderMeta();
  renderReadoutChoices();
}

const vectorByName = (name) => state.vectors.find((v) => v.id === name);

function defaultsFor(v) {
  const layers = v.selected_layers && v.selected_layers.length ? v.selected_layers : v.layers;
  return {
    strength: typeof v.strength === "number" ? v.strength : DEFAULT_STRENGTH,
    layers: new Set(layers),
    positions: POLICIES.includes(v.positions) ? v.positions : "after_user",
    schedule: "constant",
    condition: "",
  };
}

// Condition vectors (CAST, `steerlab condition train`): a steering term may be conditioned on one of them.
const conditionVectors = () => state.vectors.filter((v) => v.method === "condition" && v.extra && v.extra.condition);

// The layer the server reads a vector at when a read-out names only the vector (as sl.readout chooses it).
function readoutLayer(v) {
  const chosen = v.selected_layers && v.selected_layers.length ? v.selected_layers : v.layers;
  return chosen[chosen.length > 1 ? Math.floor(chosen.length / 2) : 0];
}

function renderVectorList() {
  const list = $("#vector-list");
  if (!state.vectors.length) {
    list.replaceChildren(el("li", { class: "empty", text: "no vectors served yet: register one below" }));
    return;
  }
  list.replaceChildren(...state.vectors.map((v) => {
    const id = "pick-" + v.id;
    return el("li", { class: v.id === state.focused ? "focused" : null, dataset: { vector: v.id } },
      el("input", {
        type: "checkbox", id, checked: state.chosen.has(v.id), "aria-label": "steer with " + v.id,
        onchange: (ev) => {
          if (ev.target.checked) state.chosen.set(v.id, defaultsFor(v)); else state.chosen.delete(v.id);
          state.focused = v.id;
          renderVectorList(); renderControls(); renderMeta();
        },
      }),
      el("button", { type: "button", class: "vname", text: v.id, title: "show details",
        onclick: () => { state.focused = v.id; renderVectorList(); renderMeta(); } }),
      el("span", { class: "badge", text: v.method || "?" }),
      el("span", { class: "vlayers", text: "L" + compactLayers(v.layers) }));
  }));
}

function compactLayers(layers) {
  const xs = [...layers].map(Number).sort((a, b) => a - b);
  const out = [];
  for (let i = 0; i < xs.length; i++) {
    let j = i;
    while (j + 1 < xs.length && xs[j + 1] === xs[j] + 1) j++;
    out.push(j > i + 1 ? `${xs[i]}-${xs[j]}` : j === i + 1 ? `${xs[i]},${xs[j]}` : `${xs[i]}`);
    i = j;
  }
  return out.join(",");
}

function sliderRange(v, s) {
  const grid = (v.extra && v.extra.grid_strengths) || [];
  const m = Math.max(8, 2 * Math.abs(s), ...grid.map((x) => Math.abs(+x) || 0));
  return Math.ceil(m / 4) * 4;
}

function renderControls() {
  const box = $("#controls");
  if (!state.chosen.size) {
    box.replaceChildren(el("p", { class: "hint", text: "No vector chosen: both columns would be the unsteered model." }));
    renderSweepChoices();
    return;
  }
  box.replaceChildren(...[...state.chosen].map(([name, c]) => {
    const v = vectorByName(name);
    const range = sliderRange(v, c.strength);
    const num = el("input", { type: "number", step: "0.5", value: c.strength, class: "strength-num",
      "aria-label": name + " strength" });
    const slider = el("input", { type: "range", min: -range, max: range, step: "0.5", value: c.strength,
      class: "strength-slider", "aria-label": name + " strength slider" });
    slider.addEventListener("input", () => { c.strength = +slider.value; num.value = slider.value; syncSweepDefault(); });
    num.addEventListener("input", () => {
      if (num.value === "" || !isFinite(+num.value)) return;
      c.strength = +num.value; slider.value = num.value; syncSweepDefault();
    });
    const chips = el("div", { class: "chips" }, v.layers.map((L) => el("button", {
      type: "button", class: "chip" + (c.layers.has(L) ? " on" : ""), text: String(L), dataset: { layer: L },
      title: "apply at layer " + L,
      onclick: (ev) => {
        if (c.layers.has(L) && c.layers.size === 1) return; // at least one layer
        c.layers.has(L) ? c.layers.delete(L) : c.layers.add(L);
        ev.target.classList.toggle("on", c.layers.has(L));
      },
    })));
    const pos = el("select", { class: "positions", "aria-label": name + " positions" },
      POLICIES.map((p) => el("option", { value: p, text: p, selected: p === c.positions, title: POLICY_HINT[p] })));
    pos.addEventListener("change", () => { c.positions = pos.value; });
    const sched = el("input", { type: "text", class: "schedule", value: c.schedule, spellcheck: "false",
      placeholder: "constant", "aria-label": name + " schedule", title: SCHEDULE_HINT });
    sched.addEventListener("input", () => {
      c.schedule = sched.value.trim().toLowerCase() || "constant";
      sched.classList.toggle("bad", !SCHEDULE_RE.test(c.schedule));
    });
    const conds = conditionVectors().filter((x) => x.id !== name);
    const cond = el("select", { class: "condition", "aria-label": name + " condition",
      title: "steer only when this condition vector fires on the prompt (decided once, at prefill)" },
      el("option", { value: "", text: conds.length ? "always" : "always (no condition vector served)", selected: !c.condition }),
      conds.map((x) => el("option", { value: x.id, text: "if " + x.id, selected: x.id === c.condition })));
    cond.addEventListener("change", () => { c.condition = cond.value; });
    return el("div", { class: "ctl", dataset: { vector: name } },
      el("div", { class: "ctl-head" },
        el("span", { class: "name", text: name }), el("span", { class: "badge", text: v.method || "?" }),
        el("button", { type: "button", class: "btn ghost small reset", text: "reset", title: "back to the vector's own settings",
          onclick: () => { state.chosen.set(name, defaultsFor(v)); renderControls(); } })),
      el("div", { class: "strength" }, slider, num),
      el("div", { class: "scale" }, el("span", { text: -range }), el("span", { text: "0" }), el("span", { text: "+" + range })),
      el("div", { class: "field" }, el("span", { text: "layers" }), chips),
      el("div", { class: "field" }, el("span", { text: "positions" }), pos),
      el("div", { class: "field" }, el("span", { text: "schedule" }), sched),
      el("div", { class: "field" }, el("span", { text: "condition" }), cond));
  }));
  renderSweepChoices();
}

function renderReadoutChoices() {
  const sel = $("#readout-vector");
  const prev = sel.value;
  const usable = state.vectors.filter((v) => !v.per_position);
  sel.replaceChildren(el("option", { value: "", text: "none" }),
    ...usable.map((v) => el("option", { value: v.id, text: `${v.id} @L${readoutLayer(v)}`, selected: v.id === prev })));
}

// ------------------------------------------------------------------ metadata panel

function renderMeta() {
  const body = $("#meta-body");
  const del = $("#delete-vector");
  const v = state.focused && vectorByName(state.focused);
  if (!v) {
    $("#meta-title").textContent = "Vector details";
    del.hidden = true;
    body.replaceChildren(el("p", { class: "hint", text: "Click a vector's name to see where it came from and what it was measured to do." }));
    return;
  }
  $("#meta-title").textContent = "Vector · " + v.id;
  del.hidden = false;
  const d = defaultsFor(v);
  const facts = [
    ["method", v.method], ["model", v.model_id], ["layers", compactLayers(v.layers)],
    ["chosen strength", typeof v.strength === "number" ? fmt(v.strength) : `none (default ${DEFAULT_STRENGTH})`],
    ["positions", v.positions || "none (default after_user)"],
    ["selected layers", v.selected_layers ? compactLayers(v.selected_layers) : "all"],
    ["read at", v.position], ["trained on", v.n_train ? v.n_train + " examples" : null],
    ["hidden size", v.hidden_size], ["created", v.created], ["file size", v.bytes ? (v.bytes / 1024).toFixed(1) + " KiB" : null],
  ].filter(([, x]) => x !== undefined && x !== null && x !== "");
  const parts = [el("dl", { class: "meta-grid" }, facts.map(([k, x]) => el("div", {}, el("dt", { text: k }), el("dd", { text: String(x) }))))];

  const norms = Object.entries(v.norms || {}).map(([L, n]) => [+L, +n]).sort((a, b) => a[0] - b[0]);
  if (norms.length) {
    const top = Math.max(...norms.map(([, n]) => n)) || 1;
    parts.push(el("h3", { text: "norm per layer" }), el("div", { class: "norms" }, norms.flatMap(([L, n]) => [
      el("span", { text: "L" + L + (d.layers.has(L) ? " •" : ""), title: d.layers.has(L) ? "applied by default" : null }),
      el("div", {}, el("div", { class: "bar", style: `width:${(100 * n / top).toFixed(1)}%` })),
      el("span", { class: "num", text: fmt(n) })])));
  }
  const effect = effectRows(v.effect);
  if (effect) {
    parts.push(el("h3", { text: "measured effect on held-apart pairs" }), el("p", { class: "hint", text: "gap = log p(positive) − log p(negative) per token, in nats; a positive shift moves answers the trained way." }), effect);
  } else {
    parts.push(el("p", { class: "hint", text: "No effect table in this file's metadata (an 'effect' entry with EffectReport.rows())." }));
  }
  if (v.selection_summary) parts.push(el("h3", { text: "selection (PAS)" }), kvTable(v.selection_summary));
  if (v.extra && Object.keys(v.extra).length) {
    parts.push(el("details", {}, el("summary", { text: "all metadata" }), el("pre", { class: "json", text: JSON.stringify(v.extra, null, 2) })));
  }
  body.replaceChildren(...parts);
}

// The effect table: rows of {strength, mean_gap, shift, ci_low, ci_high} (EffectReport.rows), or an object
// carrying such rows, or anything else as key/value.
function effectRows(effect) {
  if (!effect) return null;
  let rows = Array.isArray(effect) ? effect : Array.isArray(effect.rows) ? effect.rows : null;
  if (!rows) return typeof effect === "object" ? kvTable(effect) : null;
  rows = rows.filter((r) => r && typeof r === "object");
  if (!rows.length) return null;
  const ORDER = ["strength", "mean_gap", "shift", "ci"];
  const hasCI = rows.some((r) => "ci_low" in r && "ci_high" in r);
  let cols = [...new Set(rows.flatMap((r) => Object.keys(r)))].filter((c) => !(hasCI && (c === "ci_low" || c === "ci_high")));
  if (hasCI) cols.push("ci");
  cols.sort((a, b) => (ORDER.indexOf(a) + 1 || 99) - (ORDER.indexOf(b) + 1 || 99));
  const head = { strength: "strength", mean_gap: "mean gap", shift: "shift vs unsteered", ci: "95% interval of the shift" };
  rows = [...rows].sort((a, b) => (+a.strength || 0) - (+b.strength || 0));
  return el("table", { class: "data effect" },
    el("thead", {}, el("tr", {}, cols.map((c) => el("th", { text: head[c] || c.replace(/_/g, " ") })))),
    el("tbody", {}, rows.map((r) => el("tr", {}, cols.map((c) => {
      if (c === "ci") return el("td", { text: `[${fmt(r.ci_low, 2)}, ${fmt(r.ci_high, 2)}]` });
      const x = r[c];
      const cls = c === "shift" && typeof x === "number" ? (x > 0 ? "pos" : x < 0 ? "neg" : null) : null;
      if (c === "strength" && typeof x === "number") return el("td", { text: x === 0 ? "0 (unsteered)" : signed(x) });
      return el("td", { class: cls, text: c === "shift" && typeof x === "number" ? signed(x) : fmt(x) });
    })))));
}

function kvTable(obj) {
  return el("table", { class: "data" }, el("tbody", {}, Object.entries(obj).map(([k, x]) =>
    el("tr", {}, el("td", { text: k }), el("td", { text: typeof x === "object" ? JSON.stringify(x) : fmt(x) })))));
}

async function deleteFocused() {
  const name = state.focused;
  if (!name || !confirm(`Remove the vector '${name}' from the server? Requests running now keep it until they finish.`)) return;
  try {
    await api("v1/vectors/" + encodeURIComponent(name), { method: "DELETE" });
    state.chosen.delete(name);
    state.focused = null;
    await loadVectors();
  } catch (e) {
    banner(`could not remove '${name}': ${e.message}`, "error");
  }
}

// ------------------------------------------------------------------ upload

async function upload(ev) {
  ev.preventDefault();
  const err = $("#upload-error"), ok = $("#upload-ok");
  err.hidden = ok.hidden = true;
  const file = $("#upload-file").files[0];
  const name = $("#upload-name").value.trim();
  if (!file) { err.textContent = "Choose a vector file first."; err.hidden = false; return; }
  if (!name) { err.textContent = "Give the vector a name."; err.hidden = false; return; }
  $("#upload-btn").disabled = true;
  try {
    const resp = await api("v1/vectors?name=" + encodeURIComponent(name), {
      method: "POST", headers: { "Content-Type": "application/octet-stream" }, body: file,
    });
    const v = await resp.json();
    ok.textContent = `Registered '${v.id}' (${v.method}, layers ${compactLayers(v.layers)}).`;
    ok.hidden = false;
    $("#upload-form").reset();
    $("#upload-file-label").textContent = "choose or drop a .safetensors or .gguf file";
    await loadVectors(v.id);
  } catch (e) {
    err.textContent = `Not registered: ${e.message}`;
    err.hidden = false;
  } finally {
    $("#upload-btn").disabled = false;
  }
}

function fileChosen() {
  const f = $("#upload-file").files[0];
  $("#upload-file-label").textContent = f ? `${f.name} · ${(f.size / 1024).toFixed(1)} KiB` : "choose or drop a .safetensors or .gguf file";
  if (f && !$("#upload-name").value) {
    $("#upload-name").value = f.name.replace(/\.(safetensors|gguf)$/i, "").replace(/[^A-Za-z0-9._-]/g, "-").replace(/^[^A-Za-z0-9]+/, "").slice(0, 64);
  }
}

// ------------------------------------------------------------------ generation

function steeringList(override) {
  // override: {name, strength} for the swept vector
  const out = [];
  for (const [name, c] of state.chosen) {
    const strength = override && override.name === name ? override.strength : c.strength;
    if (strength === 0) continue; // zero adds nothing: leave it out
    const term = { vector: name, strength, layers: [...c.layers].sort((a, b) => a - b), positions: c.positions };
    if (c.schedule !== "constant") term.schedule = c.schedule;
    if (c.condition) term.condition = c.condition;
    out.push(term);
  }
  return out;
}

function describe(steering) {
  if (!steering.length) return "no vector";
  return steering.map((s) => `${s.vector} ${signed(s.strength)} @L${compactLayers(s.layers)} ${s.positions}` +
    (s.schedule ? ` ${s.schedule}` : "") + (s.condition ? ` if ${s.condition}` : "")).join("  +  ");
}

function makeColumn(id, title, sub, cls) {
  const col = el("article", { class: "col " + cls, id, dataset: { state: "waiting" } },
    el("div", { class: "col-head" },
      el("div", { class: "col-title" }, el("span", { text: title }), el("span", { class: "state", text: "waiting" })),
      el("div", { class: "col-sub", text: sub })),
    el("div", { class: "col-text" }),
    el("div", { class: "col-foot" }));
  return col;
}

function setColState(col, s) {
  col.dataset.state = s;
  col.querySelector(".state").textContent = s;
}

function requestBody(steering, readout) {
  const body = {
    model: state.model || undefined,
    messages: [{ role: "user", content: $("#prompt").value }],
    max_tokens: Math.max(1, +$("#max-tokens").value || 48),
    temperature: Math.max(0, +$("#temperature").value || 0),
    stream: true,
    stream_options: { include_usage: true },
  };
  const seed = $("#seed").value;
  if (seed !== "") body.seed = +seed;
  if (steering.length) body.steering = steering;
  if (readout) body.readout = [readout];
  return body;
}

// ------------------------------------------------------------------ conditions and read-out in a column

// The steering echo of the last chunk says, per conditioned term, whether its condition fired and its score.
function showConditions(col, echo) {
  const lines = echo.filter((t) => t.condition !== undefined && t.fired !== undefined).map((t) => {
    const scores = Object.entries(t.condition_scores || {}).map(([n, x]) => `${n} ${fmt(x)}`).join(", ");
    const what = typeof t.condition === "string" ? t.condition : JSON.stringify(t.condition);
    return el("div", { class: "cond " + (t.fired ? "fired" : "quiet"), dataset: { vector: t.vector, fired: t.fired } },
      el("span", { class: "cond-flag", text: t.fired ? "fired" : "not fired" }),
      el("span", { text: `${t.vector} if ${what}` + (scores ? ` · score ${scores}` : "") +
        (t.fired ? "" : ` · ${t.vector} not applied`) }));
  });
  if (!lines.length) return;
  col.dataset.fired = echo.some((t) => t.fired === true);
  col.querySelector(".col-head").append(...lines);
}

// A strip under the answer: one cell per generated token, coloured by the read-out vector's raw projection
// (green along the vector, red against it; one scale for every column of the run, so they compare).
function readoutStrip(col, name) {
  const v = vectorByName(name);
  const strip = el("div", { class: "readout-strip", dataset: { vector: name } },
    el("div", { class: "readout-head" },
      el("span", { text: `read-out · ${name} @L${v ? readoutLayer(v) : "?"} · raw projection per token` }),
      el("span", { class: "readout-scale" })),
    el("div", { class: "readout-tokens" }));
  col.insertBefore(strip, col.querySelector(".col-foot"));
  return { strip, tokens: strip.querySelector(".readout-tokens"), prompt: null };
}

// A content chunk's read-out: its last value is the chunk's own token; the first chunk's also has the prompt's.
function addReadout(ro, values, piece) {
  if (!values) {
    if (piece && ro.tokens.lastChild) ro.tokens.lastChild.textContent += piece;
    return;
  }
  let raw = values.raw, cos = values.cosine;
  if (ro.prompt === null) {
    ro.prompt = raw.slice(0, -1);
    raw = raw.slice(-1); cos = cos.slice(-1);
  }
  raw.forEach((x, i) => ro.tokens.append(el("span", {
    class: "rtok", dataset: { raw: x, cos: cos[i] }, title: `raw ${fmt(x)} · cosine ${fmt(cos[i])}`,
    text: i === raw.length - 1 ? piece : "" })));
  ro.strip.dataset.prompt = ro.prompt.length;
}

function recolour() {
  const cells = [...document.querySelectorAll("#columns .rtok")];
  const top = Math.max(1e-6, ...cells.map((c) => Math.abs(+c.dataset.raw)));
  for (const c of cells) {
    const x = +c.dataset.raw, a = (0.1 + 0.65 * Math.abs(x) / top).toFixed(3);
    c.style.backgroundColor = x >= 0 ? `rgba(15, 157, 118, ${a})` : `rgba(217, 72, 95, ${a})`;
    c.classList.toggle("neg", x < 0);
  }
  for (const s of document.querySelectorAll("#columns .readout-scale")) s.textContent = `${fmt(-top, 2)} … 0 … +${fmt(top, 2)}`;
}

// Stream one chat completion into a column (OpenAI server-sent events).
async function streamInto(col, steering, readout) {
  const ctrl = new AbortController();
  state.runs.push(ctrl);
  const text = col.querySelector(".col-text"), foot = col.querySelector(".col-foot");
  const t0 = performance.now();
  let ttft = null, tokens = 0, finish = null;
  const showError = (msg) => {
    setColState(col, "error");
    col.insertBefore(el("div", { class: "msg error col-error", role: "alert", text: msg }), foot);
  };
  try {
    const body = requestBody(steering, readout);
    const ro = readout ? readoutStrip(col, readout) : null;
    const shown = Object.assign({}, body, { stream: undefined, stream_options: undefined });
    col.append(el("details", { class: "req" }, el("summary", { text: "request body (POST /v1/chat/completions)" }),
      el("pre", { class: "json", text: JSON.stringify(shown, null, 2) })));
    const resp = await api("v1/chat/completions", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body), signal: ctrl.signal,
    });
    setColState(col, "streaming");
    const reader = resp.body.getReader();
    const dec = new TextDecoder();
    let buf = "", done = false;
    while (!done) {
      const r = await reader.read();
      if (r.done) break;
      buf += dec.decode(r.value, { stream: true });
      let i;
      while ((i = buf.search(/\r?\n\r?\n/)) >= 0) {
        const event = buf.slice(0, i);
        buf = buf.slice(i).replace(/^\r?\n\r?\n/, "");
        const data = event.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
        if (!data) continue;
        if (data === "[DONE]") { done = true; break; }
        let chunk;
        try { chunk = JSON.parse(data); } catch (_) { continue; }
        if (chunk.error) { showError(chunk.error.message || JSON.stringify(chunk.error)); return; }
        const ch = chunk.choices && chunk.choices[0];
        if (ch && ch.delta && ch.delta.content) {
          if (ttft === null) ttft = performance.now() - t0;
          text.textContent += ch.delta.content;
          col.dataset.chunks = +(col.dataset.chunks || 0) + 1; // how many pieces arrived (streaming, not one blob)
        }
        if (ro && ch && !ch.finish_reason && (chunk.readout || (ch.delta && ch.delta.content))) {
          addReadout(ro, chunk.readout && chunk.readout[readout], (ch.delta && ch.delta.content) || "");
          if (chunk.readout) recolour();
        }
        if (ch && ch.finish_reason) {
          finish = ch.finish_reason;
          if (Array.isArray(chunk.steering)) showConditions(col, chunk.steering);
        }
        if (chunk.usage) tokens = chunk.usage.completion_tokens;
      }
    }
    const secs = (performance.now() - t0) / 1000;
    foot.replaceChildren(
      el("span", { text: `${tokens || "?"} tokens` }),
      el("span", { text: `first ${ttft === null ? "–" : (ttft / 1000).toFixed(2) + " s"}` }),
      el("span", { text: `${secs.toFixed(1)} s` + (tokens ? ` · ${(tokens / secs).toFixed(1)} tok/s` : "") }),
      finish ? el("span", { text: { length: "hit max tokens", content_filter: "stopped by a read-out rule" }[finish] || "finished" }) : null);
    if (!text.textContent) text.append(el("span", { class: "hint", text: "(empty answer)" }));
    setColState(col, "done");
  } catch (e) {
    if (e.name === "AbortError") { setColState(col, "stopped"); return; }
    showError(e.message);
  } finally {
    state.runs = state.runs.filter((c) => c !== ctrl);
    if (!state.runs.length) { $("#run-btn").disabled = false; $("#stop-btn").disabled = true; }
  }
}

function parseStrengths() {
  const xs = $("#sweep-strengths").value.split(/[\s,;]+/).filter(Boolean).map(Number);
  if (xs.some((x) => !isFinite(x))) throw new Error("strengths must be numbers, e.g. -8, -4, 0, 4, 8");
  if (xs.length < 3 || xs.length > 5) throw new Error("a sweep takes 3 to 5 strengths");
  return xs;
}

function run(ev) {
  if (ev) ev.preventDefault();
  if (state.runs.length) return;
  if (!$("#prompt").value.trim()) { banner("Write a prompt first."); return; }
  banner(null);
  const bad = [...state.chosen].find(([, c]) => !SCHEDULE_RE.test(c.schedule));
  if (bad) {
    banner(`${bad[0]}: unknown strength schedule "${bad[1].schedule}"; use constant, first:N or decay:H ` +
      "(N, H positive integers).", "error");
    return;
  }
  const cols = $("#columns");
  const jobs = [];
  const readout = $("#readout-vector").value || null;
  if (state.mode === "compare") {
    const steering = steeringList();
    jobs.push([makeColumn("col-unsteered", "Unsteered", "no vector", "unsteered"), []]);
    const sign = steering.length && steering.every((t) => t.strength < 0) ? " neg" : steering.length && steering.every((t) => t.strength > 0) ? " pos" : "";
    jobs.push([makeColumn("col-steered", "Steered", describe(steering), "steered" + sign), steering]);
    if (!steering.length) banner("No vector is ticked (or all strengths are 0): both columns are the unsteered model.");
  } else {
    const name = $("#sweep-vector").value;
    if (!name) { banner("Tick a vector to sweep its strength."); return; }
    let xs;
    try { xs = parseStrengths(); } catch (e) { banner(e.message, "error"); return; }
    xs.forEach((s, i) => {
      const steering = steeringList({ name, strength: s });
      const cls = s === 0 ? "unsteered sweep" : "steered sweep " + (s < 0 ? "neg" : "pos");
      jobs.push([makeColumn("col-sweep-" + i, `${name} ${signed(s)}`, describe(steering), cls), steering]);
    });
  }
  $("#columns-empty").hidden = true;
  cols.style.setProperty("--ncols", jobs.length);
  cols.replaceChildren(...jobs.map(([c]) => c));
  $("#run-btn").disabled = true;
  $("#stop-btn").disabled = false;
  // All at once: the server batches them into the same forward passes.
  const runs = jobs.map(([col, steering]) => streamInto(col, steering, readout));
  if (state.mode === "compare") Promise.all(runs).then(() => markDivergence(jobs[0][0], jobs[1][0]));
}

// Dim the part of the steered answer that equals the unsteered one, so the change stands out.
function markDivergence(a, b) {
  if (a.dataset.state !== "done" || b.dataset.state !== "done") return;
  const ta = a.querySelector(".col-text"), tb = b.querySelector(".col-text");
  const x = ta.textContent, y = tb.textContent;
  let n = 0;
  while (n < x.length && n < y.length && x[n] === y[n]) n++;
  if (x === y) { b.querySelector(".col-foot").append(el("span", { class: "same-note", text: "same as unsteered" })); return; }
  if (n === 0) return;
  for (const [t, s] of [[ta, x], [tb, y]]) {
    t.replaceChildren(el("span", { class: "shared", title: "the same in both answers", text: s.slice(0, n) }),
      el("span", { class: "diverged", text: s.slice(n) }));
  }
}

function stop() { for (const c of state.runs) c.abort(); }

// ------------------------------------------------------------------ modes and sweep choices

function setMode(mode) {
  state.mode = mode;
  for (const t of document.querySelectorAll(".tab")) {
    t.classList.toggle("active", t.dataset.mode === mode);
    t.setAttribute("aria-selected", t.dataset.mode === mode);
  }
  $("#sweep-row").hidden = mode !== "sweep";
}

function renderSweepChoices() {
  const sel = $("#sweep-vector");
  const prev = sel.value;
  sel.replaceChildren(...[...state.chosen.keys()].map((n) => el("option", { value: n, text: n, selected: n === prev })));
  if (!state.chosen.size) sel.append(el("option", { value: "", text: "(tick a vector)" }));
  syncSweepDefault();
}

let sweepEdited = false;
function syncSweepDefault() {
  // Until the user types their own list, the sweep spans -s .. +s around the swept vector's slider.
  if (sweepEdited) return;
  const c = state.chosen.get($("#sweep-vector").value);
  const s = Math.abs(c ? c.strength : 8) || 8;
  const xs = [-s, -s / 2, 0, s / 2, s].map((x) => +x.toFixed(2));
  $("#sweep-strengths").value = xs.join(", ");
}

// ------------------------------------------------------------------ start

function init() {
  const key = getKey();
  $("#api-key").value = key;
  $("#key-remember").checked = !!localStorage.getItem(KEY_NAME);
  $("#key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    setKey($("#api-key").value.trim(), $("#key-remember").checked);
    banner(null);
    loadVectors();
  });
  $("#refresh-vectors").addEventListener("click", () => loadVectors());
  $("#upload-form").addEventListener("submit", upload);
  $("#upload-file").addEventListener("change", fileChosen);
  const drop = $(".file");  // a file dropped on the upload box is chosen as if picked
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    if (ev.dataTransfer.files.length) { $("#upload-file").files = ev.dataTransfer.files; fileChosen(); }
  });
  $("#run-form").addEventListener("submit", run);
  $("#stop-btn").addEventListener("click", stop);
  $("#delete-vector").addEventListener("click", deleteFocused);
  $("#prompt").addEventListener("keydown", (ev) => { if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) run(ev); });
  for (const t of document.querySelectorAll(".tab")) t.addEventListener("click", () => setMode(t.dataset.mode));
  $("#sweep-vector").addEventListener("change", () => syncSweepDefault());
  $("#sweep-strengths").addEventListener("input", () => { sweepEdited = true; });
  loadHealth();
  loadVectors();
}

init();
