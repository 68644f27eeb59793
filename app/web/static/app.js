// Designer BFF page: plain JS, no build step. Every API call sends the key as
// "Authorization: Bearer"; live progress is follow.js's.
"use strict";

const KEY = "bff.apiKey";
const NEED_KEY = "Save your API key first.";
const $ = (sel, root = document) => root.querySelector(sel);
let cursor = null;

function apiKey() { return localStorage.getItem(KEY) || ""; }

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${apiKey()}` };
  let payload = body;
  if (body && !(body instanceof FormData)) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, { method, headers, body: payload });
  } catch (e) {  // no answer at all: the browser's own words ("Failed to fetch") say nothing
    throw new Error("the server cannot be reached: is it running? (bff dev, or make dev)");
  }
  if (resp.status === 204) return null;
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const err = data.error || {};
    // A list of fields' problems, or an object of figures (a budget's), already in the message.
    // A field's problem the message already says (an upload's, a provider's) is not said twice.
    const message = err.message || resp.statusText;
    const fields = Array.isArray(err.details) ? err.details : [];
    const detail = fields.filter((d) => !message.includes(d.message))
      .map((d) => `${d.field}: ${d.message}`).join("; ");
    throw new Error(`${message}${detail ? ` (${detail})` : ""}`);
  }
  return data;
}

// ---------------------------------------------------------------- key

function showKeyState(text) { $("#key-status").textContent = text; }

const NO_KEY = "No key saved: make dev prints one (and keeps it in var/dev-api-key),"
  + " or run bff users create NAME.";

// A key is saved: the "save your key" reminders under the forms go.
function clearKeyReminders() {
  for (const box of [$("#form-error"), $("#batch-error"), $("#style-error")]) {
    if (box.textContent === NEED_KEY) box.textContent = "";
  }
}

async function checkKey() {
  if (!apiKey()) { showKeyState(NO_KEY); return false; }
  try {
    await api("GET", "/api/generate?limit=1");
    showKeyState("Key OK.");
    loadOptions();
    loadBatches();  // batches.js's
    return true;
  } catch (e) {
    showKeyState(`Key rejected: ${e.message}`);
    return false;
  }
}

// ---------------------------------------------------------------- options

let catalogue = [];  // GET /api/providers: each model's availability, capabilities, prices
const RATIO = { square: "1:1", portrait: "3:4", landscape: "4:3" };

async function loadOptions() {
  try {
    loadStyles();  // the panel and the Persona picker: personas.js's
    catalogue = (await api("GET", "/api/providers")).items;
  } catch (e) { $("#cost").textContent = e.message; return; }
  markUnavailable();
  estimate();
}

// A model this server cannot use (no token for it) cannot be picked: it would
// only be refused. "auto" picks among the available ones.
function markUnavailable() {
  const picker = $("#provider");
  for (const option of picker.options) {
    const model = catalogue.find((p) => p.id === option.value);
    if (!model) continue;
    option.disabled = !model.available;
    option.textContent = model.available ? model.id : `${model.id} (not set up here)`;
    option.title = model.unavailableReason || "";
  }
  if (picker.selectedOptions[0]?.disabled) picker.value = "auto";
}

// Price per image x count, before submitting; with "auto", the dearest model
// that could serve it (as the daily cap counts it).
function estimate() {
  if (!catalogue.length) return;
  const pick = $("#provider").value;
  const quality = $("#quality").value;
  const count = Number($("#count").value);
  const ratio = RATIO[$("#size").value] || $("#size").value;
  const fits = (p) => p.available && p.capabilities.aspectRatios.includes(ratio)
    && p.capabilities.maxCount >= count;
  const pool = catalogue.filter((p) => (pick === "auto" ? fits(p) : p.id === pick));
  const line = $("#cost");
  if (!pool.length) { line.textContent = "No available model can make this."; return; }
  const price = Math.max(...pool.map((p) => p.prices[quality][ratio]));
  const each = `${count} × $${price.toFixed(3)}`;
  const total = `$${(price * count).toFixed(3)}`;
  line.textContent = pick === "auto"
    ? `Estimated cost: up to ${total} (${each}, the dearest model that fits)`
    : `Estimated cost: ${total} (${each} with ${pick})`;
}

// ---------------------------------------------------------------- stages

const LABEL = {
  idle: "waiting", pending: "retrying", running: "running…", completed: "done",
  skipped: "skipped", failed: "failed", unknown: "no news",
};

function resetStages() {
  $('#stages li[data-stage="refine"]')?.remove();  // only for a generation that refines
  for (const li of document.querySelectorAll("#stages li")) setStage(li.dataset.stage, "idle");
  $("#result").replaceChildren();
}

// The optional eighth stage: its row appears when a generation has it.
function refineRow() {
  const li = $("#stages li").cloneNode(true);
  li.dataset.stage = "refine";
  $(".name", li).textContent = "refine";
  $("#stages").append(li);
  return li;
}

function setStage(name, status, durationMs) {
  const li = $(`#stages li[data-stage="${name}"]`) || (name === "refine" ? refineRow() : null);
  if (!li) return;
  li.dataset.status = status;
  const ms = durationMs == null ? "" : ` in ${durationMs < 1000 ? `${durationMs} ms`
    : `${(durationMs / 1000).toFixed(1)} s`}`;
  $(".state", li).textContent = `${LABEL[status] || status}${ms}`;
}

function showStages(gen) {
  for (const st of gen.stages) setStage(st.name, st.status === "pending" && !st.attempts
    ? "idle" : st.status, st.durationMs);
}

function showResult(gen) {
  showStages(gen);
  const status = $("#gen-status");
  if (gen.status === "completed") {
    status.textContent = `Completed with ${gen.provider} (${gen.model}), cost $${gen.cost.toFixed(3)}.`;
  } else if (gen.error) {
    status.textContent = `${gen.status}: ${gen.error.stage}: ${gen.error.message}`;
  } else {
    status.textContent = `Generation ${gen.status}.`;
  }
  const imgs = gen.assets.map((a) => {
    const figure = document.createElement("figure");
    figure.className = `variant ${a.variant}`;
    const link = document.createElement("a");
    link.href = a.url; link.target = "_blank"; link.rel = "noopener";
    const img = document.createElement("img");
    img.src = a.url; img.width = a.width; img.height = a.height;
    img.alt = `${VARIANT[a.variant]} image for “${gen.prompt.original || "garment photo"}”`;
    link.append(img);
    const caption = document.createElement("figcaption");
    caption.className = "muted";
    caption.textContent = `${VARIANT[a.variant]} · ${a.width}×${a.height}`
      + (a.sourceAssetId ? ` · from #${a.sourceAssetId}` : "");
    figure.append(link, caption);
    if (gen.status === "completed") figure.append(refineButtons(gen, a));
    return figure;
  });
  $("#result").replaceChildren(...imgs);
}

// ---------------------------------------------------------------- submit

async function submit(event) {
  event.preventDefault();
  const errorBox = $("#form-error");
  errorBox.textContent = "";
  if (!apiKey()) { errorBox.textContent = NEED_KEY; $("#api-key").focus(); return; }
  const prompt = $("#prompt").value.trim();
  const file = $("#image").files[0];
  if (!prompt && !file) { errorBox.textContent = "Type a prompt or add a photo."; return; }
  const settings = {
    provider: $("#provider").value, quality: $("#quality").value, size: $("#size").value,
    strategy: $("#strategy").value, count: Number($("#count").value),
    enhance: $("#enhance").checked ? "auto" : "off",
  };
  if (file) settings.reference = $("#reference").checked ? "image" : "describe";
  // Only what was given: an empty field is no field.
  const fields = Object.entries({
    prompt, negativePrompt: $("#negative").value.trim(), personaId: $("#persona").value,
  }).filter(([, v]) => v);
  const button = $("#submit");
  button.disabled = true;
  try {
    let accepted;
    if (file) {
      const form = new FormData();
      form.append("image", file);
      form.append("settings", JSON.stringify(settings));
      for (const [k, v] of fields) form.append(k, v);
      accepted = await api("POST", "/api/generate/from-image", form);
    } else {
      accepted = await api("POST", "/api/generate/from-prompt",
        { ...Object.fromEntries(fields), settings });
    }
    await watch(accepted.id);
  } catch (e) {  // refused (watch() says a following's trouble in the Progress panel)
    errorBox.textContent = e.message;
    if (!watching) refused(file);
  } finally {
    button.disabled = false;
  }
}

// Nothing started: the Progress panel must not go on showing an earlier
// job's result as if it were this one's.
function refused(file) {
  resetStages();
  $("#gen-id").textContent = "";
  $("#gen-status").textContent = `Nothing started: ${file ? `${file.name} was` : "it was"}`
    + " refused (see under Generate).";
}

// ---------------------------------------------------------------- gallery

function card(gen) {
  const li = $("#card-tpl").content.firstElementChild.cloneNode(true);
  li.dataset.id = gen.id;
  li.dataset.status = gen.status;
  const label = gen.prompt.original || "garment photo";
  const shown = cardImages(li, gen, label);  // cards.js
  $(".badge", li).textContent = gen.status;
  $(".badge", li).dataset.status = gen.status;
  $(".prompt", li).textContent = label;
  $(".meta", li).textContent = `${new Date(gen.createdAt).toLocaleString()}`
    + `${gen.provider ? ` · ${gen.provider}` : ""}`;
  feedbackControls(li, gen, shown, label);
  if (gen.status === "failed") offerRetry(li, gen, label);
  const del = $(".delete", li);
  del.setAttribute("aria-label", `Delete “${label}”`);
  del.addEventListener("click", async () => {
    if (!confirm("Delete this generation and its images?")) return;
    try {
      await api("DELETE", `/api/generate/${gen.id}`);
      dropCards(gen.id);
      refreshBatchOf(gen);  // batches.js's: its counts change
    }
    catch (e) { $(".meta", li).textContent = e.message; }
  });
  return li;
}

// A generation deleted: its cards go (gallery and batch alike), and its stages
// and images must not stay under Progress as if it were still there.
function dropCards(id) {
  for (const li of document.querySelectorAll(`li.item[data-id="${id}"]`)) li.remove();
  if (!$("#gallery").children.length && !cursor) {
    $("#gallery-empty").textContent = "No generations yet.";  // as loadGallery() says it
  }
  if ($("#gen-id").textContent === id) stopWatching("That generation was deleted.");
}

function offerRetry(li, gen, label) {
  const reason = $(".reason", li);
  reason.hidden = false;
  reason.textContent = [gen.error?.stage, gen.error?.message].filter(Boolean).join(": ");
  const retry = $(".retry", li);
  retry.hidden = false;
  retry.setAttribute("aria-label", `Retry “${label}”`);
  retry.addEventListener("click", async () => {
    retry.disabled = true;
    try {
      await api("POST", `/api/generate/${gen.id}/retry`);
      refreshBatchOf(gen);  // batches.js's: its batch runs again
      await watch(gen.id);
    } catch (e) { $(".meta", li).textContent = e.message; retry.disabled = false; }
  });
}

async function loadGallery(reset) {
  if (!apiKey()) return;
  if (reset) cursor = null;
  const query = new URLSearchParams({ limit: "12" });
  if (cursor) query.set("cursor", cursor);
  try {
    const page = await api("GET", `/api/generate?${query}`);
    const cards = page.items.map(card);
    if (reset) $("#gallery").replaceChildren(...cards);
    else $("#gallery").append(...cards);
    cursor = page.nextCursor;
    $("#more").hidden = !cursor;
    $("#gallery-empty").textContent = $("#gallery").children.length ? "" : "No generations yet.";
    return page.items;
  } catch (e) {
    $("#gallery-empty").textContent = e.message;
    return null;
  }
}

// ---------------------------------------------------------------- wiring

// The drop zone is no control of its own: its file input (covering it, unseen)
// is the one keyboard stop, and opens the chooser on Space as any file input
// does, and on Enter; "Remove photo" is a button beside it, not inside one.
function setupDrop() {
  const drop = $("#drop");
  const input = $("#image");
  const show = () => {
    const f = input.files[0];
    $("#drop-name").textContent = f ? f.name : "";
    $("#drop-clear").hidden = !f;
    $("#reference-choice").hidden = !f;  // only an uploaded photo can be sent as it is
    drop.classList.toggle("has-file", Boolean(f));
  };
  input.addEventListener("change", show);
  input.addEventListener("keydown", (e) => {  // else Enter submits the form, as in a text field
    if (e.key === "Enter") { e.preventDefault(); input.click(); }
  });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    if (e.dataTransfer.files.length) { input.files = e.dataTransfer.files; show(); }
  });
  $("#drop-clear").addEventListener("click", () => { input.value = ""; show(); });
}

// What the page shows of one key's account: gone when the key changes.
function clearAccount() {
  $("#gallery").replaceChildren();
  stopWatching();
  forgetStyles();
  forgetBatches();
}

document.addEventListener("DOMContentLoaded", () => {
  $("#api-key").value = apiKey();
  $("#key-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    localStorage.setItem(KEY, $("#api-key").value.trim());
    clearAccount();  // the last key's: a refused key must not leave them shown
    if (await checkKey()) {
      clearKeyReminders();
      resumeRunning(await loadGallery(true));
    }
  });
  $("#key-forget").addEventListener("click", () => {
    localStorage.removeItem(KEY);
    $("#api-key").value = "";
    clearAccount();
    showKeyState("Key removed from this browser.");
  });
  $("#gen-form").addEventListener("submit", submit);
  $("#gen-cancel").addEventListener("click", cancelWatched);
  for (const id of ["provider", "quality", "size", "count"]) {
    $(`#${id}`).addEventListener("change", estimate);
  }
  // Work sent from elsewhere (bff, the API) shows up: batches too.
  $("#refresh").addEventListener("click", () => { loadGallery(true); loadBatches(); });
  $("#more").addEventListener("click", () => loadGallery(false));
  setupDrop();
  checkKey().then(async (ok) => ok && resumeRunning(await loadGallery(true)));
});
