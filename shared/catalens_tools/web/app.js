// catalens local web page: plain JS, no build step. Talks to the search API under /api (with the API key the local
// gateway injected into the page) and to the local-only routes under /local (catalog uploads, shopper events).
"use strict";

const API_KEY = document.querySelector('meta[name="catalens-api-key"]').content;
const API = document.querySelector('meta[name="catalens-api-base"]').content;
const $ = (selector) => document.querySelector(selector);

const state = {
  lastQuery: null, // {kind: "photo", blob} | {kind: "item", itemId}
  region: null, // the box drawn on the photo, [left, top, right, bottom] as fractions of its sides; null: whole photo
  queryId: null,
  searches: 0, // searches started; an answer renders only if no newer search started since (answers can overtake)
  ranks: new Map(), // item_id -> rank of the previous answer to the same query (shows re-ranking)
  categories: new Set(),
  brands: new Set(),
  uploads: new Map(), // item_id -> {li, started}
  items: [],
  tokens: new Map(), // shopper -> {token, header, expiresAt}: signed by the local stand-in for the shop's backend
};

// ------------------------------------------------------------------------------------------------------- plumbing
async function call(path, { method = "GET", body, headers = {}, api = true } = {}) {
  const response = await fetch((api ? API : "") + path, {
    method,
    body,
    headers: { "x-api-key": API_KEY, ...headers },
  });
  const type = response.headers.get("content-type") || "";
  const payload = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) {
    const message = payload && payload.message ? payload.message : String(payload).slice(0, 200);
    const error = new Error(`${response.status} ${payload && payload.code ? payload.code + ": " : ""}${message}`);
    error.status = response.status;
    throw error;
  }
  return payload;
}

// The API key is public (it is in this page), so personalising and erasing need a shopper token: the shop's backend
// signs one for the shopper its session knows. Locally /local/shopper-token plays that backend.
async function shopperHeaders() {
  const user = $("#shopper").value;
  if (!user) return {};
  let entry = state.tokens.get(user);
  if (!entry || entry.expiresAt - Date.now() / 1000 < 60) {
    const signed = await call(`/local/shopper-token?user=${encodeURIComponent(user)}`, { api: false });
    entry = { token: signed.token, header: signed.header, expiresAt: signed.expires_at };
    state.tokens.set(user, entry);
  }
  return { [entry.header]: entry.token };
}

function newId() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  return "q" + Date.now().toString(36) + Math.random().toString(36).slice(2, 10);
}

function toast(text, kind = "info") {
  const el = document.createElement("div");
  el.className = `toast ${kind}`;
  el.textContent = text;
  document.body.appendChild(el);
  setTimeout(() => el.remove(), 3500);
}

function photoUrl(key) {
  return "/local/photos/" + key.split("/").map(encodeURIComponent).join("/");
}

function money(fields) {
  if (fields.price === undefined || fields.price === null) return "";
  const currency = fields.currency || "EUR";
  try {
    return new Intl.NumberFormat(undefined, { style: "currency", currency }).format(fields.price);
  } catch {
    return `${fields.price} ${currency}`;
  }
}

// Phone photos are large; the API takes up to 4 MiB, and a 1024 px JPEG searches just as well and much faster.
async function shrink(blob, side = 1024) {
  try {
    const bitmap = await createImageBitmap(blob);
    const scale = Math.min(1, side / Math.max(bitmap.width, bitmap.height));
    if (scale === 1 && blob.type === "image/jpeg" && blob.size < 2e6) return blob;
    const canvas = document.createElement("canvas");
    canvas.width = Math.round(bitmap.width * scale);
    canvas.height = Math.round(bitmap.height * scale);
    canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    return await new Promise((resolve) => canvas.toBlob((b) => resolve(b || blob), "image/jpeg", 0.9));
  } catch {
    return blob; // not decodable here: let the API say what is wrong with it
  }
}

// ---------------------------------------------------------------------------------------------------------- search
function options() {
  const params = new URLSearchParams();
  params.set("k", $("#f-k").value || "12");
  // the shopper travels in the X-Shopper-Token header (shopperHeaders), never as a bare user_id
  if (!$("#personalize").checked) params.set("personalize", "false");
  if ($("#explain").checked) params.set("explain", "true");
  if ($("#f-auto").checked) params.set("category", "auto");
  else if ($("#f-category").value.trim()) params.set("category", $("#f-category").value.trim());
  if ($("#f-brand").value.trim()) params.set("brand", $("#f-brand").value.trim());
  if ($("#f-min").value) params.set("price_min", $("#f-min").value);
  if ($("#f-max").value) params.set("price_max", $("#f-max").value);
  return params;
}

// Words (q): alone a text search (GET /search?q=); beside the photo on show, they re-rank its matches.
function words() {
  return $("#words").value.trim();
}

async function searchWords() {
  if (!words()) return;
  if (!state.lastQuery || state.lastQuery.kind === "item") state.lastQuery = { kind: "words" };
  state.ranks = new Map();
  await runSearch();
}

async function searchPhoto(blob) {
  const small = await shrink(blob);
  const preview = $("#query-preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(small);
  preview.hidden = false;
  $("#drop").classList.add("has-photo");
  $("#region-help").hidden = false;
  state.region = null;
  $("#region-box").hidden = true;
  state.lastQuery = { kind: "photo", blob: small };
  state.ranks = new Map();
  await runSearch();
}

async function moreLikeThis(itemId) {
  state.lastQuery = { kind: "item", itemId };
  state.ranks = new Map();
  $("#query-preview").src = "";
  $("#query-preview").hidden = true;
  $("#region-box").hidden = true;
  $("#region-help").hidden = true;
  $("#drop").classList.remove("has-photo");
  await runSearch();
  window.scrollTo({ top: 0, behavior: "smooth" });
}

async function runSearch() {
  const query = state.lastQuery;
  if (!query) return;
  const search = ++state.searches;
  state.queryId = newId();
  const params = options();
  $("#summary").textContent = "Searching…";
  try {
    let answer;
    const shopper = await shopperHeaders();
    if (words()) params.set("q", words());
    if (query.kind === "words") {
      if (!words()) return;
      answer = await call(`/search?${params}`, { headers: shopper });
    } else if (query.kind === "photo") {
      if (state.region) params.set("region", state.region.map((v) => v.toFixed(4)).join(","));
      else if ($("#subject").checked) params.set("region", "auto");
      if ($("#groups").value) params.set("groups", $("#groups").value);
      answer = await call(`/search?${params}`, {
        method: "POST",
        body: query.blob,
        headers: { "Content-Type": query.blob.type || "image/jpeg", ...shopper },
      });
    } else {
      answer = await call(`/items/${encodeURIComponent(query.itemId)}/similar?${params}`, { headers: shopper });
    }
    if (search === state.searches) render(answer, query);
  } catch (error) {
    if (search !== state.searches) return;
    $("#summary").textContent = `Search failed: ${error.message}`;
    $("#results").replaceChildren();
  }
}

// Before the first search the summary tells what to do next, which depends on whether there is anything to find.
const EMPTY_CATALOG =
  "No products yet: open Merchant (top right) and drop product photos there, " +
  "or start the stack with a folder of photos (make run CATALOG=path/to/photos).";

function idleSummary(itemCount) {
  if (itemCount === 0) return EMPTY_CATALOG;
  const count = typeof itemCount === "number" ? `${itemCount} products in the catalog · ` : "";
  return `${count}Drop, paste or choose a photo above to find products like it.`;
}

function render(answer, query) {
  const hits = answer.hits || [];
  const took = answer.timings_ms?.total ?? null; // the service's own total (the parts would count it twice)
  const region = answer.query && answer.query.region;
  const source = region ? region.source : null;
  const said = answer.query && answer.query.q ? ` and the words “${answer.query.q}”` : "";
  const what =
    query.kind === "words"
      ? `the words “${answer.query.q}”`
      : (query.kind === "item"
          ? `“${query.itemId}”`
          : { request: "the box you drew", subject: "the main subject of your photo" }[source] || "your photo") +
        said;
  showRegion(region);
  const guess = answer.category;
  const filtered = answer.query && "category_filter" in answer.query;
  $("#summary").textContent =
    `${hits.length} products ${query.kind === "words" ? "matching" : "like"} ${what}` +
    (answer.personalized ? ` · re-ranked for ${$("#shopper").value}` : "") +
    (answer.calibrated ? " · calibrated to shoppers' photos" : "") +
    (guess ? ` · looks like ${guess.name} (${Math.round(guess.confidence * 100)}%)` : "") +
    (filtered ? (answer.query.category_filter ? " · only that category" : " · no category to filter to") : "") +
    ` · index ${answer.index_version || "—"} (${answer.item_count ?? "?"} items)` +
    (took !== null ? ` · ${took.toFixed(0)} ms` : "") +
    (hits.length ? " · pick a product below and ask for more like it" : "");
  const grid = $("#results");
  grid.replaceChildren();
  const previous = state.ranks;
  state.ranks = new Map();
  showGroups(answer.groups || []);
  (answer.groups || []).forEach((group, number) => {
    const head = Object.assign(document.createElement("h3"), { className: "group-head" });
    head.textContent =
      `Product ${number + 1} in your photo` + (group.category ? ` · looks like ${group.category.name}` : "");
    grid.appendChild(head);
    group.hits.forEach((hit, rank) => grid.appendChild(card(hit, rank, null)));
  });
  if (answer.groups) {
    const head = Object.assign(document.createElement("h3"), { className: "group-head" });
    head.textContent = answer.groups.length ? "The whole photo" : "No separate products found · the whole photo";
    grid.appendChild(head);
  }
  hits.forEach((hit, rank) => {
    state.ranks.set(hit.item_id, rank);
    grid.appendChild(card(hit, rank, previous.has(hit.item_id) ? previous.get(hit.item_id) - rank : null));
    if (hit.fields.category) state.categories.add(hit.fields.category);
    if (hit.fields.brand) state.brands.add(hit.fields.brand);
  });
  if (!hits.length) {
    const empty = Object.assign(document.createElement("p"), { className: "empty" });
    empty.textContent = answer.item_count === 0 ? EMPTY_CATALOG : "No matching products. Try clearing the filters.";
    grid.replaceChildren(empty);
  }
  fillDatalist("#categories", state.categories);
  fillDatalist("#brands", state.brands);
}

// The box the answer says was searched, drawn over the preview (its fractions fit the preview at any size).
function showRegion(region) {
  const box = $("#region-box");
  if (!region || region.source === "full" || $("#query-preview").hidden) {
    box.hidden = true;
    return;
  }
  placeBox(box, region.normalized);
}

// groups=N: one numbered box per product region the answer found.
function showGroups(groups) {
  const holder = $("#query-photo");
  holder.querySelectorAll(".region-box.group").forEach((node) => node.remove());
  if ($("#query-preview").hidden) return;
  groups.forEach((group, number) => {
    const box = Object.assign(document.createElement("div"), { className: "region-box group" });
    box.appendChild(Object.assign(document.createElement("span"), { textContent: String(number + 1) }));
    holder.appendChild(box);
    placeBox(box, group.region.normalized);
  });
}

function placeBox(box, [left, top, right, bottom]) {
  const img = $("#query-preview");
  const width = img.clientWidth;
  const height = img.clientHeight;
  Object.assign(box.style, {
    left: `${left * width}px`,
    top: `${top * height}px`,
    width: `${(right - left) * width}px`,
    height: `${(bottom - top) * height}px`,
  });
  box.hidden = false;
}

// Drag a box on the preview: the search then looks at that part of the photo only (region=l,t,r,b as fractions).
function wireRegionDrawing() {
  const holder = $("#query-photo");
  const img = $("#query-preview");
  let start = null;
  const at = (event) => {
    const rect = img.getBoundingClientRect();
    const x = Math.min(1, Math.max(0, (event.clientX - rect.left) / rect.width));
    const y = Math.min(1, Math.max(0, (event.clientY - rect.top) / rect.height));
    return [x, y];
  };
  const boxOf = (a, b) => [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[0], b[0]), Math.max(a[1], b[1])];
  holder.addEventListener("pointerdown", (event) => {
    if (img.hidden || event.button !== 0) return;
    event.preventDefault();
    start = at(event);
    holder.setPointerCapture(event.pointerId);
  });
  holder.addEventListener("pointermove", (event) => {
    if (start) placeBox($("#drag-box"), boxOf(start, at(event)));
  });
  holder.addEventListener("pointerup", (event) => {
    if (!start) return;
    const box = boxOf(start, at(event));
    start = null;
    $("#drag-box").hidden = true;
    if (box[2] - box[0] < 0.02 || box[3] - box[1] < 0.02) return; // a click, not a box
    state.region = box;
    state.ranks = new Map();
    runSearch();
  });
  $("#region-clear").addEventListener("click", () => {
    state.region = null;
    $("#subject").checked = false;
    state.ranks = new Map();
    runSearch();
  });
}

function fillDatalist(selector, values) {
  $(selector).replaceChildren(...[...values].sort().map((v) => Object.assign(document.createElement("option"), { value: v })));
}

function card(hit, rank, moved) {
  const node = $("#card-template").content.firstElementChild.cloneNode(true);
  const fields = hit.fields || {};
  node.dataset.itemId = hit.item_id;
  node.querySelector("img").src = photoUrl(hit.image_key);
  node.querySelector("img").alt = fields.title || hit.item_id;
  node.querySelector(".title").textContent = fields.title || hit.item_id;
  node.querySelector(".brand-name").textContent = [fields.brand, fields.category].filter(Boolean).join(" · ");
  node.querySelector(".price").textContent = money(fields);
  const score = Math.max(0, Math.min(1, hit.score));
  node.querySelector(".bar span").style.width = `${(score * 100).toFixed(0)}%`;
  node.querySelector(".value").textContent = hit.score.toFixed(3);
  if (moved) {
    const badge = document.createElement("span");
    badge.className = moved > 0 ? "moved up" : "moved down";
    badge.textContent = moved > 0 ? `▲${moved}` : `▼${-moved}`;
    badge.title = "rank change since the last answer to this query";
    node.querySelector(".score").appendChild(badge);
  }
  if (hit.explain) {
    const dl = node.querySelector(".explain");
    for (const [name, value] of Object.entries(hit.explain)) {
      dl.append(Object.assign(document.createElement("dt"), { textContent: name }));
      dl.append(Object.assign(document.createElement("dd"), { textContent: Number(value).toFixed(3) }));
    }
    dl.hidden = false;
  }
  node.querySelector(".photo").addEventListener("click", () => shopperEvent("click", hit.item_id, node));
  node.querySelector(".cart").addEventListener("click", () => shopperEvent("add_to_cart", hit.item_id, node));
  node.querySelector(".more").addEventListener("click", () => moreLikeThis(hit.item_id));
  return node;
}

// --------------------------------------------------------------------------------------------------------- shopper
async function shopperEvent(type, itemId, node) {
  const user = $("#shopper").value;
  if (!user) {
    toast("Pick a shopper (top right) to record clicks and carts.", "warn");
    return;
  }
  try {
    await call("/local/events", {
      api: false,
      method: "POST",
      body: JSON.stringify({ user_id: user, type, item_id: itemId, query_id: state.queryId }),
      headers: { "Content-Type": "application/json" },
    });
    node.classList.add(type === "add_to_cart" ? "carted" : "clicked");
    toast(`${type.replace(/_/g, " ")} recorded for ${user}: ${itemId}`);
    // the event travels table → stream → profile function; then the same query is re-ranked
    setTimeout(async () => {
      await showProfile();
      await runSearch();
    }, 1200);
  } catch (error) {
    toast(`Could not record the event: ${error.message}`, "error");
  }
}

async function showProfile() {
  const user = $("#shopper").value;
  const box = $("#profile");
  if (!user) {
    box.hidden = true;
    return;
  }
  try {
    const profile = await call(`/local/profile/${encodeURIComponent(user)}`, { api: false });
    box.hidden = false;
    if (!profile.exists) {
      box.textContent = `${user}: no profile yet — clicks and add-to-carts build one; until then results are purely visual.`;
      return;
    }
    const summary = profile.summary || {};
    const events = Object.entries(summary.events || {}).map(([k, v]) => `${v} ${k.replace(/_/g, " ")}`);
    const names = (weights) => Object.keys(weights || {}).join(", ") || "—";
    const recent = [...new Set(summary.recent || [])].reverse().slice(0, 4);
    box.textContent =
      `${user}'s profile · ${events.join(", ") || "no events"} · likes ${names(summary.categories)}` +
      ` (brands: ${names(summary.brands)}) · confidence ${Math.round((summary.confidence || 0) * 100)}%` +
      (recent.length ? ` · recently: ${recent.join(", ")}` : "");
  } catch (error) {
    box.hidden = false;
    box.textContent = `profile: ${error.message}`;
  }
}

async function forgetShopper() {
  const user = $("#shopper").value;
  if (!user) return;
  try {
    await call(`/users/${encodeURIComponent(user)}/profile`, { method: "DELETE", headers: await shopperHeaders() });
    toast(`${user}'s profile erased`);
    await showProfile();
    await runSearch();
  } catch (error) {
    toast(`Could not erase: ${error.message}`, "error");
  }
}

// -------------------------------------------------------------------------------------------------------- merchant
async function uploadPhotos(files) {
  const fields = new URLSearchParams();
  for (const [id, name] of [["#u-category", "category"], ["#u-brand", "brand"], ["#u-price", "price"]]) {
    if ($(id).value.trim()) fields.set(name, $(id).value.trim());
  }
  if ($("#u-price").value) fields.set("currency", "EUR");
  for (const file of files) {
    const name = file.name.replace(/[\\/]/g, "_") || "photo.jpg";
    const itemId = name.replace(/\.[^.]+$/, "");
    const params = new URLSearchParams(fields);
    params.set("title", $("#u-title").value.trim() || itemId.replace(/[-_]+/g, " "));
    const li = document.createElement("li");
    li.innerHTML = `<span class="name"></span> <span class="state">uploading…</span>`;
    li.querySelector(".name").textContent = name;
    $("#uploads").prepend(li);
    const started = performance.now();
    try {
      await call(`/local/catalog/${encodeURIComponent(name)}?${params}`, {
        api: false,
        method: "PUT",
        body: file,
        headers: { "Content-Type": file.type || "application/octet-stream" },
      });
      li.querySelector(".state").textContent = "indexing…";
      state.uploads.set(itemId, { li, started });
      waitSearchable(itemId, li, started);
    } catch (error) {
      li.querySelector(".state").textContent = `failed: ${error.message}`;
      li.classList.add("error");
    }
  }
}

async function waitSearchable(itemId, li, started) {
  for (let attempt = 0; attempt < 120; attempt++) {
    try {
      await call(`/items/${encodeURIComponent(itemId)}`);
      const seconds = ((performance.now() - started) / 1000).toFixed(1);
      li.querySelector(".state").innerHTML = `searchable in ${seconds}s <button class="ghost small">find similar</button>`;
      li.querySelector("button").addEventListener("click", () => moreLikeThis(itemId));
      li.classList.add("done");
      refreshItems();
      return;
    } catch (error) {
      if (error.status !== 404) {
        li.querySelector(".state").textContent = `error: ${error.message}`;
      }
    }
    await new Promise((resolve) => setTimeout(resolve, attempt < 40 ? 250 : 1000));
  }
  li.querySelector(".state").textContent = "not searchable after 60 s — see the dead-letter queue count";
  li.classList.add("error");
}

async function refreshItems() {
  try {
    const listing = await call("/local/catalog", { api: false });
    state.items = listing.items || [];
    drawItems();
  } catch (error) {
    $("#items").textContent = error.message;
  }
}

function drawItems() {
  const filter = $("#item-filter").value.trim().toLowerCase();
  const shown = state.items.filter((item) => !filter || item.name.toLowerCase().includes(filter));
  $("#item-count").textContent = `(${state.items.length})`;
  $("#items").replaceChildren(
    ...shown.slice(0, 300).map((item) => {
      const li = document.createElement("li");
      li.innerHTML = `<img loading="lazy" alt=""><span class="name"></span><button class="ghost small more">similar</button><button class="danger small">delete</button>`;
      li.querySelector("img").src = photoUrl(item.key);
      li.querySelector(".name").textContent = item.name;
      li.querySelector(".more").addEventListener("click", () => moreLikeThis(item.item_id));
      li.querySelector(".danger").addEventListener("click", () => deleteItem(item, li));
      return li;
    }),
  );
}

async function deleteItem(item, li) {
  try {
    await call(`/local/catalog/${encodeURIComponent(item.name)}`, { api: false, method: "DELETE" });
    li.classList.add("deleting");
    const started = performance.now();
    for (let attempt = 0; attempt < 60; attempt++) {
      try {
        await call(`/items/${encodeURIComponent(item.item_id)}`);
      } catch (error) {
        if (error.status === 404) {
          toast(`${item.name} removed from search in ${((performance.now() - started) / 1000).toFixed(1)}s`);
          break;
        }
      }
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    await refreshItems();
    if (state.lastQuery) await runSearch();
  } catch (error) {
    toast(`Delete failed: ${error.message}`, "error");
  }
}

async function refreshStatus() {
  try {
    const status = await call("/local/status", { api: false });
    $("#status").textContent =
      `index ${status.index_version || "—"} · ${status.item_count ?? "?"} items · queue ${status.queue ?? "?"} · DLQ ${status.dlq ?? "?"}`;
    $("#status").classList.toggle("warn", (status.dlq || 0) > 0);
    $("#dlq").textContent = status.dlq ? `${status.dlq} photo(s) in the dead-letter queue (could not be ingested)` : "";
    if (!state.lastQuery) $("#summary").textContent = idleSummary(status.item_count);
  } catch {
    $("#status").textContent = "local stack not reachable";
  }
}

// ----------------------------------------------------------------------------------------------------------- wiring
function firstImage(list) {
  for (const item of list || []) {
    const file = item.kind === "file" ? item.getAsFile() : item;
    if (file && (file.type || "").startsWith("image/")) return file;
  }
  return null;
}

function wire() {
  wireRegionDrawing();
  const drop = $("#drop");
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => {
      e.preventDefault();
      drop.classList.add("over");
    });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const file = firstImage(e.dataTransfer.files) || firstImage(e.dataTransfer.items);
    if (file) searchPhoto(file);
    else toast("That was not an image file.", "warn");
  });
  document.addEventListener("paste", (e) => {
    if (e.target.closest && e.target.closest("input")) return;
    const file = firstImage(e.clipboardData && e.clipboardData.items);
    if (file) searchPhoto(file);
  });
  for (const id of ["#file", "#capture"]) {
    $(id).addEventListener("change", (e) => e.target.files[0] && searchPhoto(e.target.files[0]));
  }
  $("#words-form").addEventListener("submit", (e) => {
    e.preventDefault();
    searchWords();
  });
  $("#words").addEventListener("search", () => !words() && state.lastQuery?.kind !== "words" && runSearch());
  $("#camera").addEventListener("click", openCamera);
  $("#camera-close").addEventListener("click", closeCamera);
  $("#snap").addEventListener("click", snap);
  $("#filters").addEventListener("submit", (e) => {
    e.preventDefault();
    state.ranks = new Map();
    runSearch();
  });
  $("#clear-filters").addEventListener("click", () => {
    for (const id of ["#f-category", "#f-brand", "#f-min", "#f-max"]) $(id).value = "";
    runSearch();
  });
  $("#explain").addEventListener("change", runSearch);
  $("#f-auto").addEventListener("change", runSearch);
  $("#groups").addEventListener("change", runSearch);
  $("#subject").addEventListener("change", () => {
    state.region = null; // the detector chooses the box now
    runSearch();
  });
  $("#personalize").addEventListener("change", runSearch);
  $("#shopper").addEventListener("change", async () => {
    state.ranks = new Map();
    await showProfile();
    await runSearch();
  });
  $("#forget").addEventListener("click", forgetShopper);
  const toggleMerchant = (open) => {
    $("#merchant").hidden = !open;
    $("#merchant-toggle").setAttribute("aria-expanded", String(open));
    if (open) refreshItems();
  };
  $("#merchant-toggle").addEventListener("click", () => toggleMerchant($("#merchant").hidden));
  $("#merchant-close").addEventListener("click", () => toggleMerchant(false));
  $("#upload-files").addEventListener("change", (e) => uploadPhotos([...e.target.files]));
  const uploadDrop = $("#upload-drop");
  uploadDrop.addEventListener("dragover", (e) => e.preventDefault());
  uploadDrop.addEventListener("drop", (e) => {
    e.preventDefault();
    uploadPhotos([...e.dataTransfer.files].filter((f) => (f.type || "").startsWith("image/")));
  });
  $("#item-filter").addEventListener("input", drawItems);
  $("#compact").addEventListener("click", async () => {
    try {
      await call("/local/compact", { api: false, method: "POST" });
      toast("Compaction started (the builder runs in its own process)");
    } catch (error) {
      toast(error.message, "error");
    }
  });
}

let stream = null;
async function openCamera() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    $("#capture").click(); // no camera API (e.g. not a secure context): fall back to the file picker's camera
    return;
  }
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" } });
    $("#video").srcObject = stream;
    $("#camera-box").hidden = false;
  } catch (error) {
    toast(`Camera unavailable: ${error.message}`, "warn");
  }
}

function closeCamera() {
  if (stream) stream.getTracks().forEach((t) => t.stop());
  stream = null;
  $("#camera-box").hidden = true;
}

function snap() {
  const video = $("#video");
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  canvas.toBlob((blob) => {
    closeCamera();
    if (blob) searchPhoto(blob);
  }, "image/jpeg", 0.9);
}

async function start() {
  wire();
  try {
    const config = await call("/local/config", { api: false });
    for (const user of config.users || []) {
      $("#shopper").append(Object.assign(document.createElement("option"), { value: user, textContent: user }));
    }
    for (const c of config.categories || []) state.categories.add(c);
    for (const b of config.brands || []) state.brands.add(b);
    fillDatalist("#categories", state.categories);
    fillDatalist("#brands", state.brands);
  } catch (error) {
    toast(`config: ${error.message}`, "error");
  }
  refreshStatus();
  setInterval(refreshStatus, 3000);
}

start();
