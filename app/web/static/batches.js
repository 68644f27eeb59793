// The batch panel: a list of prompts (× colourways, × the user's personas)
// sent as one POST /api/batches matrix (its promptsText: the box as typed); the caller's newest batches; the one
// shown: its progress and cancel (GET /api/batches/<id>) and its generations'
// cards (GET /api/generate?batchId=), polled while it runs. Uses api.js's $,
// api(), apiKey() and NEED_KEY, gallery.js's card(), dropCards() and
// loadGallery(), and follow.js's sleep().
"use strict";

let batchId = null;  // the batch shown
let batchRuns = 0;  // bumped whenever another is shown (or none): an older loop then stops
const NO_STYLES_FOR_BATCH = "You have no saved styles yet: add one under Saved styles above.";

function batchSettings() {  // the main form's options, as a single submit sends them
  return {
    provider: $("#provider").value, quality: $("#quality").value, size: $("#size").value,
    strategy: $("#strategy").value, count: Number($("#count").value),
    enhance: $("#enhance").checked ? "auto" : "off",
  };
}

// The form's own fields, by the labels the designer sees.
const BATCH_FIELDS = { "matrix.promptsText": "Prompts", "matrix.colorways": "Colourways" };

// A refusal of what was typed, said by the box it was typed in ("Prompts:
// line 5 repeats line 2 …"), not as the API's field names; anything else as is.
function inBatchWords(error) {
  const ours = (error.fields || []).filter((d) => BATCH_FIELDS[d.field]);
  if (!ours.length) return error.message;
  return ours.map((d) => `${BATCH_FIELDS[d.field]}: ${d.message}`).join(" ");
}

async function submitBatch(event) {
  event.preventDefault();
  const errorBox = $("#batch-error");
  errorBox.textContent = "";
  if (!apiKey()) { errorBox.textContent = NEED_KEY; return; }
  // Sent as typed: the server reads it as `bff batch` reads a .txt file (notes, blank
  // lines and a prompt twice are its to judge: app/domain/batch_text.py), so both agree.
  const promptsText = $("#batch-prompts").value;
  if (!promptsText.trim()) { errorBox.textContent = "Type at least one prompt."; return; }
  const matrix = { promptsText, settings: batchSettings() };
  const negative = $("#negative").value.trim();  // "Leave out", as a single submit sends it
  if (negative) matrix.negativePrompt = negative;
  const colorways = $("#batch-colorways").value.split(",").map((c) => c.trim()).filter(Boolean);
  if (colorways.length) matrix.colorways = colorways;
  const button = $("#batch-submit");
  button.disabled = true;
  try {
    if ($("#batch-personas").checked) {
      const personas = (await api("GET", "/api/personas")).items.map((p) => p.id);
      if (!personas.length) throw new Error(NO_STYLES_FOR_BATCH);
      matrix.personas = personas;
    } else if ($("#persona").value) {  // the Persona picked above, as a single submit uses it
      matrix.personas = [$("#persona").value];
    }
    const accepted = await api("POST", "/api/batches", { matrix });
    followBatch(accepted.id);
    loadBatches();  // its row, among the others
  } catch (e) {
    errorBox.textContent = inBatchWords(e);
  } finally {
    button.disabled = false;
  }
}

// The caller's newest batches (however submitted: this form, `bff batch`, the
// API), each a button showing it; a running one is followed, unless one is already.
async function loadBatches() {
  if (!apiKey()) return;
  let items;
  try { items = (await api("GET", "/api/batches?limit=10")).items; } catch (e) {
    $("#batches-empty").textContent = e.message; return;
  }
  $("#batch-list").replaceChildren(...items.map(batchRow));
  $("#batches-empty").textContent = items.length ? "" : "No batches yet.";
  const running = items.find((b) => RUNNING.includes(b.status));
  if (running && !batchId) followBatch(running.id);
}

const RUNNING = ["pending", "processing"];
const STATE = {  // a batch's status, as the status line says it
  pending: "Waiting", processing: "Running", completed: "Finished", canceled: "Canceled",
};
const done = (c) => c.completed + c.failed + c.canceled + c.deleted;

function batchRow(batch) {
  const li = document.createElement("li");
  li.dataset.id = batch.id;
  const when = new Date(batch.createdAt).toLocaleString();
  const button = Object.assign(document.createElement("button"), {
    type: "button", className: "ghost",
    textContent: `${when} · ${batch.total} generation${batch.total === 1 ? "" : "s"}`,
  });
  button.setAttribute("aria-pressed", String(batch.id === batchId));
  button.addEventListener("click", () => followBatch(batch.id));
  li.append(button, Object.assign(document.createElement("span"), { className: "badge" }),
    Object.assign(document.createElement("span"), { className: "muted" }));
  fillRow(li, batch);
  return li;
}

// The row's status and tally (in place: its button may have the focus).
function fillRow(li, batch) {
  const badge = $(".badge", li);
  badge.textContent = batch.status;
  badge.dataset.status = batch.status;
  $(".muted", li).textContent = `${done(batch.counts)} of ${batch.total} done`;
}

// Show batch `id` below the list: its progress, and a card for each of its
// generations (gallery.js's, with cards.js's images), till every one is final.
async function followBatch(id) {
  const run = ++batchRuns;
  if (id !== batchId) $("#batch-gallery").replaceChildren();  // (its own cards are kept)
  batchId = id;
  $("#batch-run").hidden = false;
  $("#batch-archive").hidden = true;
  for (const b of document.querySelectorAll("#batch-list button")) {
    b.setAttribute("aria-pressed", String(b.closest("li").dataset.id === id));
  }
  let ran = false;  // it ran while shown: the gallery's cards of it are out of date
  for (;;) {
    let batch;
    try {
      batch = await api("GET", `/api/batches/${id}`);
      if (run !== batchRuns) return;  // another batch is shown meanwhile, or the key forgotten
      showBatch(batch);
      await showMembers(id, run);
    } catch (e) {
      if (run === batchRuns) $("#batch-status").textContent = e.message;
      return;
    }
    if (!RUNNING.includes(batch.status)) break;
    ran = true;
    await sleep(1000);
  }
  if (ran) loadGallery(true);
}

function showBatch(batch) {
  const c = batch.counts;
  $("#batch-progress").max = batch.total;
  $("#batch-progress").value = done(c);
  // A sentence for the designer; the id (for bff and the API) under it, small.
  $("#batch-status").textContent = [`${STATE[batch.status] || batch.status}:`
    + ` ${done(c)} of ${batch.total} done`,
  ...["failed", "canceled", "deleted"].filter((k) => c[k]).map((k) => `${c[k]} ${k}`),
  `$${batch.cost.toFixed(3)}`].join(" · ");
  $("#batch-id").textContent = `Batch ${batch.id}`;
  const running = RUNNING.includes(batch.status);
  $("#batch-cancel").hidden = !running;
  $("#batch-archive").hidden = running;
  const row = $(`#batch-list li[data-id="${batch.id}"]`);
  if (row) fillRow(row, batch);
}

// A card per member, in the batch's order; one is built again only when its
// status or images changed, so a poll leaves a card being used (its focus,
// its message) be.
async function showMembers(id, run) {
  // Newest first, each created a moment after the one before it: reversed,
  // the batch's own order (a matrix's prompts outermost).
  const gens = (await api("GET", `/api/generate?batchId=${id}&limit=100`)).items.reverse();
  if (run !== batchRuns) return;
  const box = $("#batch-gallery");
  const key = (gen) => `${gen.status} ${gen.assets.length}`;
  const built = (gen) => { const li = card(gen); li.dataset.key = key(gen); return li; };
  const shown = [...box.children];
  if (shown.length !== gens.length || shown.some((li, i) => li.dataset.id !== gens[i].id)) {
    box.replaceChildren(...gens.map(built));
    return;
  }
  gens.forEach((gen, i) => { if (shown[i].dataset.key !== key(gen)) shown[i].replaceWith(built(gen)); });
}

// A member retried (its batch reopens) or deleted (its counts change): its
// batch, if shown, is read again, and followed till it ends.
function refreshBatchOf(gen) {
  if (gen.batchId && gen.batchId === batchId) followBatch(batchId);
}

// The key is forgotten or changed: no batch of the last one's is shown.
function forgetBatches() {
  batchRuns++;
  batchId = null;
  $("#batch-run").hidden = true;
  $("#batch-gallery").replaceChildren();
  $("#batch-list").replaceChildren();
  $("#batches-empty").textContent = "Save your API key to see your batches.";
}

async function cancelBatch() {
  const id = batchId;
  if (!id) return;
  try {
    const batch = await api("POST", `/api/batches/${id}/cancel`);
    if (batchId === id) showBatch(batch);  // (not if another batch is shown since)
  } catch (e) {
    $("#batch-status").textContent = e.message;
  }
}

// The batch shown, with its generations and images (the API cancels any still
// running first): their cards go from the whole page, its row from the list.
async function deleteBatch() {
  const id = batchId;
  if (!id || !confirm("Delete this batch, its generations and their images?"
    + " Any still running are cancelled.")) return;
  const members = [...$("#batch-gallery").children].map((li) => li.dataset.id);
  try {
    await api("DELETE", `/api/batches/${id}`);
  } catch (e) { $("#batch-status").textContent = e.message; return; }
  members.forEach(dropCards);  // gallery.js's
  if (batchId === id) {
    batchRuns++;  // its poll stops
    batchId = null;
    $("#batch-run").hidden = true;
  }
  loadBatches();
}

// The archive needs the Authorization header: fetched, then saved from a blob URL.
async function downloadArchive() {
  const resp = await fetch(`/api/batches/${batchId}/archive`,
    { headers: { Authorization: `Bearer ${apiKey()}` } });
  if (!resp.ok) { $("#batch-error").textContent = `Download failed (${resp.status})`; return; }
  const link = Object.assign(document.createElement("a"), {
    href: URL.createObjectURL(await resp.blob()), download: `${batchId}.zip`,
  });
  link.click();
  URL.revokeObjectURL(link.href);
}

document.addEventListener("DOMContentLoaded", () => {
  $("#batch-form").addEventListener("submit", submitBatch);
  $("#batch-cancel").addEventListener("click", cancelBatch);
  $("#batch-archive").addEventListener("click", downloadArchive);
  $("#batch-delete").addEventListener("click", deleteBatch);
});
