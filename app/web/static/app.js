// Designer BFF page: plain JS, no build step. Every API call sends the key as
// "Authorization: Bearer"; live progress is read from the SSE endpoint with
// fetch() streaming (EventSource cannot send headers), falling back to polling.
"use strict";

const KEY = "bff.apiKey";
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

async function checkKey() {
  if (!apiKey()) { showKeyState("No key saved."); return false; }
  try {
    await api("GET", "/api/generate?limit=1");
    showKeyState("Key OK.");
    loadOptions();
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
    const [models, personas] = await Promise.all([
      api("GET", "/api/providers"), api("GET", "/api/personas")]);
    catalogue = models.items;
    const picker = $("#persona");
    const chosen = picker.value;
    const option = (p) => Object.assign(document.createElement("option"),
      { value: p.id, textContent: p.name });
    picker.replaceChildren(picker.options[0], ...personas.items.map(option));
    picker.value = personas.items.some((p) => p.id === chosen) ? chosen : "";
  } catch (e) { $("#cost").textContent = e.message; return; }
  estimate();
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
  const why = pool[0].available ? "" : `; not available here: ${pool[0].unavailableReason}`;
  line.textContent = pick === "auto"
    ? `Estimated cost: up to ${total} (${each}, the dearest model that fits)`
    : `Estimated cost: ${total} (${each} with ${pick}${why})`;
}

// ---------------------------------------------------------------- stages

const LABEL = {
  idle: "waiting", pending: "retrying", running: "running…", completed: "done",
  skipped: "skipped", failed: "failed",
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

function parseBlock(block) {
  const ev = { event: "message", data: "" };
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const i = line.indexOf(":");
    const field = i < 0 ? line : line.slice(0, i);
    const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
    if (field === "data") ev.data += value;
    else ev[field] = value;
  }
  return ev;
}

// Follow a generation over SSE; resume with Last-Event-ID after a drop.
async function follow(id) {
  let lastId = null;
  for (let attempt = 0; attempt < 5; attempt++) {
    const headers = { Authorization: `Bearer ${apiKey()}` };
    if (lastId) headers["Last-Event-ID"] = lastId;
    let resp;
    try {
      resp = await fetch(`/api/generate/${id}/events`, { headers });
    } catch (e) { await sleep(1000); continue; }
    if (!resp.ok || !resp.body) break;  // e.g. 503: too many streams; poll instead
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const ev = parseBlock(buf.slice(0, cut));
          buf = buf.slice(cut + 2);
          if (ev.id) lastId = ev.id;
          if (ev.event === "stage") {
            const d = JSON.parse(ev.data);
            setStage(d.stage, d.status, d.durationMs);
            $("#gen-status").textContent = `${d.stage}: ${LABEL[d.status] || d.status}`;
          } else if (ev.event === "done") {
            return JSON.parse(ev.data);
          } else if (ev.event === "gone") {
            throw new Error("this generation was deleted");
          }
        }
      }
    } catch (e) {
      if (e.message.includes("deleted")) throw e;
    }
    await sleep(500);
  }
  return poll(id);
}

async function poll(id) {
  for (;;) {
    const gen = await api("GET", `/api/generate/${id}`);
    showStages(gen);
    // A completed generation refining an image stays "completed": wait for the refine too.
    const refining = gen.stages.some((s) => s.name === "refine" && ["pending", "running"].includes(s.status));
    if (["completed", "failed", "canceled"].includes(gen.status) && !refining) return gen;
    await sleep(1000);
  }
}

function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }

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
  if (!apiKey()) { errorBox.textContent = "Save your API key first."; $("#api-key").focus(); return; }
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
  } catch (e) {
    errorBox.textContent = e.message;
  } finally {
    button.disabled = false;
  }
}

// Show a submitted (or retried) generation's stages live, then its result.
async function watch(id) {
  resetStages();
  $("#gen-id").textContent = id;
  const status = $("#gen-status");
  status.textContent = QUEUED;
  // A job no worker takes looks the same as one about to start: say so after a while.
  const stuck = setTimeout(() => {
    if (status.textContent === QUEUED) status.textContent = STILL_QUEUED;
  }, 20000);
  loadGallery(true);
  try {
    showResult(await follow(id));
  } finally {
    clearTimeout(stuck);
  }
  loadGallery(true);
}

const QUEUED = "Queued…";
const STILL_QUEUED = "Still queued after 20 s: no worker has taken it yet "
  + "(busy with earlier jobs, or not running: make dev starts one).";

// ---------------------------------------------------------------- gallery

function card(gen) {
  const li = $("#card-tpl").content.firstElementChild.cloneNode(true);
  li.dataset.id = gen.id;
  li.dataset.status = gen.status;
  const asset = gen.assets[0];
  const img = $("img", li);
  const label = gen.prompt.original || "garment photo";
  if (asset) {
    img.src = asset.url; img.width = asset.width; img.height = asset.height;
    img.alt = `Generated image for “${label}”`;
    $(".img-link", li).href = asset.url;
  } else {
    $(".img-link", li).replaceWith(Object.assign(document.createElement("div"),
      { className: "placeholder", textContent: gen.status }));
  }
  $(".badge", li).textContent = gen.status;
  $(".badge", li).dataset.status = gen.status;
  $(".prompt", li).textContent = label;
  $(".meta", li).textContent = `${new Date(gen.createdAt).toLocaleString()}`
    + `${gen.provider ? ` · ${gen.provider}` : ""}`;
  feedbackControls(li, gen, asset, label);
  if (asset && gen.status === "completed") $(".actions", li).prepend(refineButtons(gen, asset));
  if (gen.status === "failed") offerRetry(li, gen, label);
  const del = $(".delete", li);
  del.setAttribute("aria-label", `Delete “${label}”`);
  del.addEventListener("click", async () => {
    if (!confirm("Delete this generation and its images?")) return;
    try { await api("DELETE", `/api/generate/${gen.id}`); li.remove(); }
    catch (e) { $(".meta", li).textContent = e.message; }
  });
  return li;
}

// Heart, rating and "exceptional" (API: outlier) show the saved state, then each answer's.
function feedbackControls(li, gen, asset, label) {
  const [heart, exceptional, rating] = [".heart", ".exceptional", ".rating"].map((c) => $(c, li));
  const show = (fb) => {
    heart.setAttribute("aria-pressed", String(fb.heart));
    exceptional.setAttribute("aria-pressed", String(fb.outlier));
    rating.value = fb.rating ?? "";
  };
  show(gen.feedback);
  const send = async (body) => {
    try {
      const out = await api("POST", `/api/generate/${gen.id}/feedback`,
        { ...body, assetId: asset?.id });
      show(out.feedback);
      $(".meta", li).textContent = out.removedAt ? "Taken back." : "Thanks, feedback saved.";
    } catch (e) { $(".meta", li).textContent = e.message; }
  };
  heart.setAttribute("aria-label", `Heart “${label}”`);
  heart.addEventListener("click", () => send({ feedbackType: "heart" }));
  exceptional.setAttribute("aria-label", `Mark “${label}” as exceptional`);
  exceptional.addEventListener("click", () => send({ feedbackType: "outlier" }));
  rating.setAttribute("aria-label", `Rate “${label}” from 1 to 5`);
  rating.addEventListener("change", () => rating.value
    && send({ feedbackType: "rating", rating: Number(rating.value) }));
  for (const el of [heart, exceptional, rating.closest("label")]) el.hidden = !asset;
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
  } catch (e) {
    $("#gallery-empty").textContent = e.message;
  }
}

// ---------------------------------------------------------------- wiring

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
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); }
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

document.addEventListener("DOMContentLoaded", () => {
  $("#api-key").value = apiKey();
  $("#key-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    localStorage.setItem(KEY, $("#api-key").value.trim());
    if (await checkKey()) loadGallery(true);
  });
  $("#key-forget").addEventListener("click", () => {
    localStorage.removeItem(KEY);
    $("#api-key").value = "";
    $("#gallery").replaceChildren();
    showKeyState("Key removed from this browser.");
  });
  $("#gen-form").addEventListener("submit", submit);
  for (const id of ["provider", "quality", "size", "count"]) {
    $(`#${id}`).addEventListener("change", estimate);
  }
  $("#refresh").addEventListener("click", () => loadGallery(true));
  $("#more").addEventListener("click", () => loadGallery(false));
  setupDrop();
  checkKey().then((ok) => ok && loadGallery(true));
});
