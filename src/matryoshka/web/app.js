// The slider page: plain DOM, no libraries, no network beyond this server's own API.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, full: null, dimHits: null, query: "", seq: 0, compareSeq: 0 };

async function api(path, body) {
  const response = await fetch(path, body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
  return data;
}

function showError(error) {
  const box = $("error");
  box.hidden = !error;
  box.textContent = error ? String(error.message || error) : "";
}

function debounce(fn, ms) {
  let timer = null;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}

function currentDim() { return Number($("dim").value); }
function currentK() { return Number($("k").value); }

// The filter box's JSON, or undefined when empty; a box that is not JSON is said before any request.
function currentFilter() {
  const text = $("filter").value.trim();
  if (!text) return undefined;
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new Error(`The filter is not valid JSON: ${error.message}`);
  }
}

function searchBody(extra) {
  const body = { query: state.query, k: currentK(), ...extra };
  const filter = currentFilter();
  if (filter !== undefined) body.filter = filter;
  return body;
}

function setDim(dim) {
  const full = state.info.full_dim;
  $("dim").value = dim;
  $("dim-value").textContent = dim;
  $("dim-title").textContent = dim === 1 ? "1 dim" : `${dim} dims`;
  $("compare-dim").textContent = dim;
  $("dim-share").textContent = `of ${full} (${(100 * dim / full).toFixed(1)}%, ${(dim * 4).toLocaleString()} bytes per vector)`;
  for (const button of document.querySelectorAll("button.mark")) {
    button.setAttribute("aria-pressed", String(Number(button.dataset.dim) === dim));
  }
}

function renderInfo(info) {
  $("info").textContent = `${info.model || "precomputed vectors"} · ${info.corpus_size.toLocaleString()} documents · ` +
    `${info.full_dim} dims · head ${info.head_dim}${info.binary_head ? " bits (binary)" : ""} · ${info.store} store · default funnel ${info.default_schedule_text}`;
  const slider = $("dim");
  slider.max = info.full_dim;
  const marks = $("dim-marks");
  const buttons = $("mark-buttons");
  for (const dim of info.marks) {
    const option = document.createElement("option");
    option.value = dim;
    option.label = String(dim);
    marks.appendChild(option);
    const button = document.createElement("button");
    button.type = "button";
    button.className = "mark";
    button.dataset.dim = dim;
    button.textContent = dim === info.full_dim ? `${dim} (d)` : `${dim} (d/${Math.round(info.full_dim / dim)})`;
    button.addEventListener("click", () => { setDim(dim); onDimChange(); });
    buttons.appendChild(button);
  }
  setDim(info.marks[Math.min(1, info.marks.length - 1)]);
  const fields = Object.entries(info.fields || {});
  $("filter-fields").textContent = fields.length
    ? `This index's fields: ${fields.map(([name, type]) => `${name} (${type})`).join(", ")}.`
    : "This index has no metadata fields.";
}

function renderHits(list, hits, otherIds) {
  list.replaceChildren();
  for (const hit of hits) {
    const item = document.createElement("li");
    item.dataset.id = hit.id;
    if (otherIds.has(hit.id)) item.classList.add("shared");
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = hit.score.toFixed(3);
    const id = document.createElement("span");
    id.className = "doc-id";
    id.textContent = hit.id;
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = hit.text.length > 220 ? hit.text.slice(0, 220) + "…" : hit.text;
    item.append(score, id, text);
    if (hit.fields && Object.keys(hit.fields).length) {
      const fields = document.createElement("span");
      fields.className = "fields muted small";
      fields.textContent = Object.entries(hit.fields)
        .map(([name, value]) => `${name}: ${Array.isArray(value) ? value.join(", ") : value}`).join(" · ");
      item.append(fields);
    }
    list.appendChild(item);
  }
}

function renderComparison() {
  if (!state.full || !state.dimHits) return;
  const fullIds = new Set(state.full.hits.map((h) => h.id));
  const dimIds = new Set(state.dimHits.hits.map((h) => h.id));
  renderHits($("results-dim"), state.dimHits.hits, fullIds);
  renderHits($("results-full"), state.full.hits, dimIds);
  const shared = [...dimIds].filter((id) => fullIds.has(id)).length;
  const k = state.full.hits.length;
  const overlap = $("overlap");
  if (!k) {
    overlap.dataset.overlap = "0";
    overlap.textContent = "No document matches the filter.";
    return;
  }
  overlap.dataset.overlap = String(shared);
  overlap.textContent = `overlap@${k}: ${shared}/${k} (${Math.round(100 * shared / k)}%) of the full-dimension results ` +
    `are found at ${state.dimHits.dim} dims`;
  overlap.dataset.dim = String(state.dimHits.dim);
  $("dim-timing").textContent = `${state.dimHits.mode} search · encode ${state.dimHits.encode_ms.toFixed(1)} ms · ` +
    `search ${state.dimHits.search_ms.toFixed(1)} ms`;
}

function renderFunnel(result) {
  const body = $("funnel").tBodies[0];
  body.replaceChildren();
  const widest = Math.max(...result.stages.map((s) => s.keep));
  result.stages.forEach((stage, i) => {
    const row = body.insertRow();
    row.insertCell().textContent = stage.stage === "filter" ? "filter" : String(i + 1);
    const dim = stage.stage === "filter" ? "—" : stage.dim;
    for (const value of [dim, stage.keep.toLocaleString(), stage.ms.toFixed(3)]) {
      const cell = row.insertCell();
      cell.className = "num";
      cell.textContent = value;
    }
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.max(2, 100 * stage.keep / widest)}%`;
    bar.title = `${stage.keep} kept`;
    row.insertCell().appendChild(bar);
  });
  const passed = result.filter_passed === undefined ? "" : ` · ${result.filter_passed.toLocaleString()} documents pass the filter`;
  $("full-timing").textContent = `${result.plan} · encode ${result.encode_ms.toFixed(1)} ms · ` +
    `search ${result.search_ms.toFixed(1)} ms${passed}`;
}

async function searchAtDim() {
  if (!state.query) return;
  const seq = ++state.seq;
  const list = $("results-dim");
  list.classList.add("stale");
  list.setAttribute("aria-busy", "true");
  try {
    const dimHits = await api("/search", searchBody({ dim: currentDim() }));
    if (seq !== state.seq) return;  // a newer slider position has been asked for
    state.dimHits = dimHits;
    showError(null);
    renderComparison();
  } catch (error) { if (seq === state.seq) showError(error); }
  if (seq === state.seq) {
    list.classList.remove("stale");
    list.setAttribute("aria-busy", "false");
  }
}

async function runSearch(event) {
  if (event) event.preventDefault();
  state.query = $("query").value.trim();
  if (!state.query) return;
  try {
    state.full = await api("/search", searchBody({}));
    renderFunnel(state.full);
    await searchAtDim();
  } catch (error) { showError(error); }
}

async function runCompare(event) {
  if (event) event.preventDefault();
  const texts = $("compare-texts").value.split("\n").map((t) => t.trim()).filter(Boolean);
  const query = $("compare-query").value.trim();
  if (!texts.length || !query) return;
  const dim = currentDim();
  const dims = dim === state.info.full_dim ? [dim] : [dim, state.info.full_dim];
  const seq = ++state.compareSeq;
  try {
    const result = await api("/similarity", { query, texts, dims });
    if (seq !== state.compareSeq) return;
    const atDim = result.similarities.map((row) => row[0]);
    const atFull = result.similarities.map((row) => row[row.length - 1]);
    const rank = (values) => {
      const order = values.map((v, i) => [v, i]).sort((a, b) => b[0] - a[0]);
      const ranks = new Array(values.length);
      order.forEach(([, i], r) => { ranks[i] = r + 1; });
      return ranks;
    };
    const dimRanks = rank(atDim), fullRanks = rank(atFull);
    const body = $("compare").tBodies[0];
    body.replaceChildren();
    texts.forEach((text, i) => {
      const row = body.insertRow();
      row.insertCell().textContent = text;
      for (const value of [atDim[i], atFull[i]]) {
        const cell = row.insertCell();
        cell.className = "num";
        const bar = document.createElement("span");
        bar.className = "bar";
        bar.style.width = `${Math.max(0, 60 * value)}px`;
        cell.append(`${value.toFixed(3)} `, bar);
      }
      const ranks = row.insertCell();
      ranks.className = "num";
      ranks.textContent = `${dimRanks[i]} / ${fullRanks[i]}`;
    });
    $("compare").dataset.dim = String(dim);  // the dim the shown values belong to
    showError(null);
  } catch (error) { if (seq === state.compareSeq) showError(error); }
}

const onDimChange = debounce(() => { searchAtDim(); runCompare(); }, 120);

async function start() {
  try {
    state.info = await api("/info");
  } catch (error) { showError(error); return; }
  renderInfo(state.info);
  $("search-form").addEventListener("submit", runSearch);
  $("k").addEventListener("change", () => runSearch());
  $("compare-form").addEventListener("submit", runCompare);
  $("dim").addEventListener("input", () => { setDim(currentDim()); onDimChange(); });
  runCompare();
}

start();
