// URL query string <-> page state -> /api/search or /api/similar -> a grid of hits;
// /api/items/KEY -> the detail dialog. Plain JS, no build step, no dependencies.
"use strict";

const FILTERS = ["source", "min_width", "max_width", "min_height", "max_height",
  "model", "model_version", "captioned_after"];
const DEFAULT_MODE = "hybrid";
const DEFAULT_K = "20";
const WINDOW = 1000; // the service serves offset + k <= WINDOW
const TOKEN_COOKIE = "imgindex_token";

const $ = (id) => document.getElementById(id);
const form = $("search-form");
const dialog = $("detail");

let lastResults = null; // the API path whose hits the grid shows; reused when only `item` changes
let generation = 0; // bumps on every render, so a slow old answer never paints over a newer one
let inflight = null; // AbortController of the results request in flight
let closingForToken = false; // the dialog closes to show the token form: keep `item` in the URL

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

// ---- state: the URL query string is the single source of truth -------------------------------

function readState(search) {
  const p = new URLSearchParams(search);
  const filters = {};
  for (const name of FILTERS) {
    const value = (p.get(name) || "").trim();
    if (value) filters[name] = value;
  }
  return {
    q: p.get("q") || "", mode: p.get("mode") || DEFAULT_MODE, k: p.get("k") || DEFAULT_K,
    offset: p.get("offset") || "0", similar: p.get("similar") || "", item: p.get("item") || "",
    filters,
  };
}

function stateQuery(state) {
  const p = new URLSearchParams();
  if (state.q) p.set("q", state.q);
  if (state.similar) p.set("similar", state.similar);
  if (state.mode !== DEFAULT_MODE) p.set("mode", state.mode);
  if (state.k !== DEFAULT_K) p.set("k", state.k);
  if (state.offset !== "0") p.set("offset", state.offset);
  for (const [name, value] of Object.entries(state.filters)) p.set(name, value);
  if (state.item) p.set("item", state.item);
  const text = p.toString();
  return text ? "?" + text : location.pathname;
}

function navigate(state, replace = false) {
  const url = stateQuery(state);
  if (replace) history.replaceState(null, "", url); else history.pushState(null, "", url);
  render(state);
}

function formState() {
  const data = new FormData(form);
  const filters = {};
  for (const name of FILTERS) {
    const value = String(data.get(name) || "").trim();
    if (value) filters[name] = value;
  }
  return {
    q: String(data.get("q") || ""), mode: String(data.get("mode") || DEFAULT_MODE),
    k: String(data.get("k") || DEFAULT_K), offset: "0", similar: "", item: "", filters,
  };
}

function fillForm(state) {
  form.elements.q.value = state.q;
  for (const radio of form.querySelectorAll("input[name=mode]")) radio.checked = radio.value === state.mode;
  const select = form.elements.k;
  if (![...select.options].some((o) => o.value === state.k)) select.add(new Option(state.k));
  select.value = state.k;
  for (const name of FILTERS) form.elements[name].value = state.filters[name] || "";
  const count = Object.keys(state.filters).length;
  $("filter-count").hidden = count === 0;
  $("filter-count").textContent = String(count);
  if (count) $("filters").open = true;
}

function resultsPath(state) {
  const p = new URLSearchParams({ k: state.k, offset: state.offset });
  for (const [name, value] of Object.entries(state.filters)) p.set(name, value);
  if (state.similar) return `/api/similar/${encodeURIComponent(state.similar)}?${p}`;
  if (!state.q) return null;
  p.set("q", state.q);
  p.set("mode", state.mode);
  return `/api/search?${p}`;
}

// ---- the API: bearer token from the cookie, {"error": ...} bodies become ApiError --------------

function readToken() {
  for (const part of document.cookie.split(";")) {
    const [name, ...rest] = part.trim().split("=");
    if (name === TOKEN_COOKIE) return rest.join("=");
  }
  return "";
}

function storeToken(token) {
  const secure = location.protocol === "https:" ? "; Secure" : "";
  document.cookie = `${TOKEN_COOKIE}=${token}; path=/; SameSite=Strict${secure}`;
}

async function api(path, signal) {
  const headers = { Accept: "application/json" };
  const token = readToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(path, { headers, signal, credentials: "same-origin" });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, `Cannot reach the search service (${err.message}).`);
  }
  const body = await response.json().catch(() => null);
  if (response.status === 401) {
    // A late answer to a request sent with an older token says nothing about the current one.
    if (token === readToken()) {
      askForToken(token ? "That token was refused; enter the right one." : "This index needs an access token.");
    }
    throw new ApiError(401, (body && body.error) || "An access token is needed.");
  }
  if (!response.ok) {
    const message = (body && body.error) || `HTTP ${response.status} ${response.statusText}`;
    throw new ApiError(response.status, message);
  }
  if (body === null) {
    throw new ApiError(response.status, "The service answered with something other than JSON.");
  }
  showVersion(response.headers.get("X-Index-Version") || body.version);
  return body;
}

function askForToken(text) {
  if (dialog.open) { // the modal dialog would make the token form inert; the URL keeps the item
    closingForToken = true;
    dialog.close();
  }
  const auth = $("auth");
  auth.querySelector("label").textContent = text;
  auth.hidden = false;
  $("token").focus();
}

function showVersion(version) {
  const named = version && version !== "none";
  $("version").textContent = named
    ? `index version ${version}` : "an index directory (no collection version)";
}

function showMessage(element, text) {
  element.textContent = text || "";
  element.hidden = !text;
}

// ---- results ----------------------------------------------------------------------------------

async function render(state) {
  fillForm(state);
  const path = resultsPath(state);
  if (path !== lastResults) await loadResults(state, path);
  if (state.item) openItem(state.item);
  else if (dialog.open) dialog.close();
}

async function loadResults(state, path) {
  const mine = ++generation;
  if (inflight) inflight.abort();
  inflight = new AbortController();
  showMessage($("message"), "");
  if (!path) {
    lastResults = path;
    paintHits(state, null);
    return;
  }
  $("results").setAttribute("aria-busy", "true");
  try {
    const body = await api(path, inflight.signal);
    if (mine !== generation) return;
    lastResults = path;
    paintHits(state, body);
  } catch (err) {
    if (err.name === "AbortError" || mine !== generation) return;
    lastResults = null;
    paintHits(state, null);
    if (err.status !== 401) showMessage($("message"), err.message); // 401: the token form asks
  } finally {
    if (mine === generation) $("results").removeAttribute("aria-busy");
  }
}

function paintHits(state, body) {
  const list = $("results");
  list.replaceChildren(...(body ? body.hits.map((hit) => hitElement(hit, body.mode)) : []));
  $("summary").replaceChildren(...(body ? summary(state, body) : []));
  const pager = $("pager");
  pager.hidden = !body || (body.offset === 0 && body.hits.length < body.k);
  if (!body) return;
  $("prev").disabled = body.offset === 0;
  $("next").disabled = body.hits.length < body.k || body.offset + body.k >= WINDOW;
  $("page-info").textContent = `page ${Math.floor(body.offset / body.k) + 1}`;
}

function summary(state, body) {
  const parts = [];
  const first = body.offset + 1;
  const last = body.offset + body.hits.length;
  const range = body.hits.length ? `${first}–${last}` : "No results";
  if (body.mode === "similar") {
    parts.push(`${range} like `, el("code", {}, body.query));
    if (state.q) {
      const search = { ...state, similar: "", offset: "0" };
      const back = el("a", { href: stateQuery(search) }, `back to “${state.q}”`);
      back.addEventListener("click", (event) => {
        event.preventDefault();
        navigate(search);
      });
      parts.push(" · ", back);
    }
  } else {
    parts.push(`${range} for “${body.query}” (${body.mode})`);
  }
  parts.push(` · ${Number(body.took_ms).toFixed(1)} ms`);
  return parts;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  node.append(...children);
  return node;
}

function formatScore(value) {
  return value === null || value === undefined ? "–" : Number(value).toPrecision(3);
}

// Why a hit ranks where it does: each side's rank and score (both sides in hybrid mode).
function explanation(hit, mode) {
  const side = (name, rank, score) => (rank === null || rank === undefined
    ? `${name}: not ranked` : `${name} #${rank} (${formatScore(score)})`);
  const vector = side("vector", hit.vector_rank, hit.vector_score);
  const keyword = side("keyword", hit.keyword_rank, hit.keyword_score);
  if (mode === "keyword") return keyword;
  return mode === "hybrid" ? `${vector} · ${keyword}` : vector;
}

function hitElement(hit, mode) {
  const item = el("li", { class: "hit" });
  Object.assign(item.dataset, {
    key: hit.key, source: hit.source ?? "", width: hit.width ?? "", height: hit.height ?? "",
    model: hit.model ?? "", modelVersion: hit.model_version ?? "", captionedAt: hit.captioned_at ?? "",
    rank: hit.rank, score: hit.score,
    vectorRank: hit.vector_rank ?? "", keywordRank: hit.keyword_rank ?? "",
  });
  // `loading` before `src`: an image whose src is set first starts loading at once
  const img = el("img", { loading: "lazy", decoding: "async", alt: hit.caption || hit.key });
  img.src = hit.thumbnail_url;
  const open = el("button", { type: "button", class: "thumb", title: hit.key }, img);
  open.addEventListener("click", () => navigate({ ...readState(location.search), item: hit.key }));
  const why = explanation(hit, mode);
  item.append(
    open,
    el("p", { class: "caption" }, hit.caption || "(no caption)"),
    el("p", { class: "score", title: why }, `#${hit.rank} · score ${formatScore(hit.score)}`),
    el("p", { class: "why" }, why),
  );
  return item;
}

// ---- the detail dialog ------------------------------------------------------------------------

const DETAIL_FIELDS = [
  ["key", "key"], ["source", "source"], ["member", "member"], ["url", "url"], ["alt_text", "alt text"],
  ["size", "size"], ["sha256", "sha256"], ["model", "model"], ["model_version", "model version"],
  ["captioned_at", "captioned at"], ["metadata", "metadata"],
];

// The dialog opens once the item's metadata (or its error) is in, so a 401 never flashes it open.
async function openItem(key) {
  const current = () => readState(location.search).item === key;
  let body = null;
  let error = null;
  try {
    body = await api(`/api/items/${encodeURIComponent(key)}`);
  } catch (err) {
    error = err;
  }
  if (!current()) return; // closed or moved on while the request was out
  if (error && error.status === 401) return; // the token form asks; the URL keeps the item
  dialog.dataset.key = key;
  if (body) {
    paintItem(body.item);
  } else {
    paintItem({ key, caption: key, image_url: "" });
    showMessage($("detail-message"), error.message);
  }
  if (!dialog.open) dialog.showModal();
}

function detailValue(item, field) {
  if (field === "size") return item.width && item.height ? `${item.width} × ${item.height}` : null;
  const value = item[field];
  if (value === null || value === undefined || value === "") return null;
  if (field === "url") return el("a", { href: value, target: "_blank", rel: "noopener noreferrer" }, value);
  if (field === "metadata") return el("pre", {}, JSON.stringify(value, null, 2));
  return String(value);
}

function paintItem(item) {
  const image = $("detail-image");
  const link = $("detail-link");
  image.hidden = !item.image_url;
  if (item.image_url) {
    image.src = item.image_url;
    link.href = item.image_url;
  } else {
    image.removeAttribute("src");
    link.removeAttribute("href");
  }
  image.alt = item.caption || item.key;
  showMessage($("detail-message"), "");
  $("detail-caption").textContent = item.caption || "(no caption)";
  const rows = [];
  for (const [field, label] of DETAIL_FIELDS) {
    const value = detailValue(item, field);
    if (value !== null) rows.push(el("dt", {}, label), el("dd", { "data-field": field }, value));
  }
  $("detail-meta").replaceChildren(...rows);
}

// ---- wiring -----------------------------------------------------------------------------------

function submitSearch(event) {
  event.preventDefault();
  const state = formState();
  if (!state.q.trim()) {
    showMessage($("message"), "Type some words to search for.");
    form.elements.q.focus();
    return;
  }
  navigate(state);
}

function submitToken(event) {
  event.preventDefault();
  const token = $("token").value.trim();
  // RFC 6750's b64token: what travels unquoted in both the Authorization header and the cookie
  if (!/^[A-Za-z0-9\-._~+/]+=*$/.test(token)) {
    askForToken("A token holds only letters, digits and -._~+/ (optionally ending in =).");
    return;
  }
  storeToken(token);
  $("auth").hidden = true;
  $("token").value = "";
  lastResults = null;
  render(readState(location.search));
}

function page(step) {
  const state = readState(location.search);
  const k = Number(state.k);
  navigate({ ...state, item: "", offset: String(Math.max(0, Number(state.offset) + step * k)) });
  window.scrollTo({ top: 0 });
}

function setUp() {
  form.addEventListener("submit", submitSearch);
  for (const input of form.querySelectorAll("input[name=mode], select[name=k]")) {
    input.addEventListener("change", () => {
      const state = { ...formState(), similar: readState(location.search).similar };
      if (state.q.trim() || state.similar) navigate(state);
    });
  }
  $("clear-filters").addEventListener("click", () => {
    for (const name of FILTERS) form.elements[name].value = "";
    const state = formState();
    if (state.q.trim()) navigate(state); else fillForm(state);
  });
  $("auth").addEventListener("submit", submitToken);
  $("prev").addEventListener("click", () => page(-1));
  $("next").addEventListener("click", () => page(1));
  $("more-like-this").addEventListener("click", () => {
    navigate({ ...readState(location.search), similar: dialog.dataset.key, offset: "0", item: "" });
  });
  dialog.addEventListener("close", () => {
    if (closingForToken) {
      closingForToken = false;
      return;
    }
    const state = readState(location.search);
    if (state.item) navigate({ ...state, item: "" });
  });
  window.addEventListener("popstate", () => render(readState(location.search)));
  document.addEventListener("keydown", (event) => {
    if (event.key === "/" && !dialog.open && document.activeElement.tagName !== "INPUT") {
      event.preventDefault();
      form.elements.q.focus();
    }
  });
  render(readState(location.search));
}

setUp();
