// The batch form: a list of prompts (× colourways, × the user's personas) sent
// as one POST /api/batches matrix; then the batch's progress, its images and a
// cancel, polled from GET /api/batches/<id>. Uses app.js's $, api() and apiKey().
"use strict";

let batchId = null;
const NO_STYLES_FOR_BATCH = "You have no saved styles yet: add one under Saved styles above.";

function batchSettings() {  // the main form's options, as a single submit sends them
  return {
    provider: $("#provider").value, quality: $("#quality").value, size: $("#size").value,
    strategy: $("#strategy").value, count: Number($("#count").value),
    enhance: $("#enhance").checked ? "auto" : "off",
  };
}

async function submitBatch(event) {
  event.preventDefault();
  const errorBox = $("#batch-error");
  errorBox.textContent = "";
  if (!apiKey()) { errorBox.textContent = NEED_KEY; return; }
  const prompts = $("#batch-prompts").value.split("\n").map((p) => p.trim()).filter(Boolean);
  if (!prompts.length) { errorBox.textContent = "Type at least one prompt."; return; }
  const matrix = { prompts, settings: batchSettings() };
  const colorways = $("#batch-colorways").value.split(",").map((c) => c.trim()).filter(Boolean);
  if (colorways.length) matrix.colorways = colorways;
  const button = $("#batch-submit");
  button.disabled = true;
  try {
    if ($("#batch-personas").checked) {
      const personas = (await api("GET", "/api/personas")).items.map((p) => p.id);
      if (!personas.length) throw new Error(NO_STYLES_FOR_BATCH);
      matrix.personas = personas;
    }
    const accepted = await api("POST", "/api/batches", { matrix });
    followBatch(accepted.id);
  } catch (e) {
    errorBox.textContent = e.message;
  } finally {
    button.disabled = false;
  }
}

async function followBatch(id) {
  batchId = id;
  $("#batch-run").hidden = false;
  $("#batch-archive").hidden = true;
  $("#batch-gallery").replaceChildren();
  for (;;) {
    if (batchId !== id) return;  // another batch was submitted meanwhile
    let batch;
    try { batch = await api("GET", `/api/batches/${id}`); } catch (e) {
      $("#batch-status").textContent = e.message; return;
    }
    showBatch(batch);
    if (batch.status !== "pending" && batch.status !== "processing") break;
    await sleep(1000);
  }
  await showBatchImages(id);
  loadGallery(true);
}

function showBatch(batch) {
  const c = batch.counts;
  const done = c.completed + c.failed + c.canceled + c.deleted;
  $("#batch-progress").max = batch.total;
  $("#batch-progress").value = done;
  $("#batch-status").textContent = `${batch.id}: ${batch.status}, ${done} of ${batch.total} done`
    + ` (${c.completed} completed, ${c.failed} failed, ${c.canceled} canceled`
    + `${c.deleted ? `, ${c.deleted} deleted` : ""}),`
    + ` cost $${batch.cost.toFixed(3)}`;
  const running = batch.status === "pending" || batch.status === "processing";
  $("#batch-cancel").hidden = !running;
  $("#batch-archive").hidden = running;
}

async function showBatchImages(id) {
  const page = await api("GET", `/api/generate?batchId=${id}&limit=100`);
  const items = page.items.flatMap((gen) => gen.assets.map((a) => {
    const li = document.createElement("li");
    li.className = "item";
    const img = Object.assign(document.createElement("img"), {
      src: a.url, width: a.width, height: a.height, loading: "lazy",
      alt: `Generated image for “${gen.prompt.original}”`,
    });
    const caption = Object.assign(document.createElement("span"), {
      className: "prompt", textContent: gen.prompt.original,
    });
    li.append(img, caption);
    return li;
  }));
  $("#batch-gallery").replaceChildren(...items);
}

async function cancelBatch() {
  if (!batchId) return;
  try { showBatch(await api("POST", `/api/batches/${batchId}/cancel`)); } catch (e) {
    $("#batch-error").textContent = e.message;
  }
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
});
