// Following one generation in the Progress panel: its stage events over SSE,
// read with fetch() streaming (EventSource cannot send headers), falling back
// to polling; a cancel; picking a running one up again after a reload. Uses
// api.js's $, api() and apiKey(), progress.js's LABEL, setStage(), showStages(),
// resetStages() and showResult(), and gallery.js's loadGallery().
"use strict";

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

// Follow a generation over SSE; resume with Last-Event-ID after a drop. An
// aborted `signal` (another generation is followed now) stops it, throwing.
async function follow(id, signal) {
  let lastId = null;
  for (let attempt = 0; attempt < 5; attempt++) {
    const headers = { Authorization: `Bearer ${apiKey()}` };
    if (lastId) headers["Last-Event-ID"] = lastId;
    let resp;
    try {
      resp = await fetch(`/api/generate/${id}/events`, { headers, signal });
    } catch (e) { signal?.throwIfAborted(); await sleep(1000); continue; }
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
      signal?.throwIfAborted();
      if (e.message.includes("deleted")) throw e;
    }
    await sleep(500);
  }
  return poll(id, signal);
}

async function poll(id, signal) {
  for (;;) {
    signal?.throwIfAborted();
    const gen = await api("GET", `/api/generate/${id}`);
    signal?.throwIfAborted();
    showStages(gen);
    // A completed generation refining an image stays "completed": wait for the refine too.
    const refining = gen.stages.some((s) => s.name === "refine" && ["pending", "running"].includes(s.status));
    if (["completed", "failed", "canceled"].includes(gen.status) && !refining) return gen;
    await sleep(1000);
  }
}

function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }

// The generation the Progress panel follows, and how to stop following it:
// following another (a submit, a retry) stops it, so two never write there.
let watching = null;

// Show a submitted, retried or (after a reload) still running generation's
// stages live, then its result. `gen`: what is known of it already.
async function watch(id, { gen = null, reveal = true } = {}) {
  const mine = takePanel(id, reveal);
  if (gen) showStages(gen);
  const status = $("#gen-status");
  status.textContent = gen?.status === "processing" ? "Running…" : QUEUED;
  // A job no worker takes looks the same as one about to start: say so after a while.
  const stuck = setTimeout(() => {
    if (status.textContent === QUEUED) status.textContent = STILL_QUEUED;
  }, 20000);
  loadGallery(true);
  try {
    showResult(await follow(id, mine.stop.signal));
  } catch (e) {
    if (mine.stop.signal.aborted) return;
    lost(id, e);
  } finally {
    clearTimeout(stuck);
    letGo(mine);
  }
  loadGallery(true);
}

// The Progress panel taken for generation `id` (a submit, a retry, a refine):
// the one followed there till now stops writing to it, and Cancel is this one's.
function takePanel(id, reveal = true) {
  watching?.stop.abort();
  const mine = { id, stop: new AbortController() };
  watching = mine;
  resetStages();
  $("#gen-id").textContent = id;
  $("#gen-cancel").hidden = false;
  if (reveal) revealProgress();
  return mine;
}

// `mine`'s following has ended: Cancel goes, unless another took the panel since.
function letGo(mine) {
  if (watching === mine) { watching = null; $("#gen-cancel").hidden = true; }
}

const QUEUED = "Queued…";
const STILL_QUEUED = "Still queued after 20 s: no worker has taken it yet "
  + "(busy with earlier jobs, or not running: make dev starts one).";

// Following stopped with no final answer (the server went away, the job was
// deleted): say so, and leave no stage spinning as if news were coming.
function lost(id, error) {
  for (const li of document.querySelectorAll("#stages li")) {
    if (["running", "pending"].includes(li.dataset.status)) setStage(li.dataset.stage, "unknown");
  }
  $("#gen-status").textContent = error.message.includes("deleted") ? "This generation was deleted."
    : `No news of ${id}: ${error.message}. Reload the page to see how it ended.`;
}

// The Progress panel, down to its status line, may be off screen (a phone;
// Retry far down the gallery): bring it in.
function revealProgress() {
  const top = $("#progress").getBoundingClientRect().top;
  const bottom = $("#gen-status").getBoundingClientRect().bottom;
  if (top < 0 || bottom > window.innerHeight) $("#progress").scrollIntoView({ block: "start" });
}

async function cancelWatched() {
  const mine = watching;
  if (!mine) return;
  const button = $("#gen-cancel");
  button.disabled = true;
  try {
    await api("POST", `/api/generate/${mine.id}/cancel`);
    // Its commit wakes the stream before this answer is sent: the ending
    // (or another job, followed since) may be shown already. Keep it.
    if (watching === mine) $("#gen-status").textContent = "Canceling…";
  } catch (e) {
    if (watching === mine) $("#gen-status").textContent = e.message;
  } finally {
    button.disabled = false;
  }
}

// The key is forgotten, or the job shown deleted: it is no longer followed, nor shown.
function stopWatching(message = "Nothing running yet.") {
  watching?.stop.abort();
  watching = null;
  resetStages();
  $("#gen-id").textContent = "";
  $("#gen-cancel").hidden = true;
  $("#gen-status").textContent = message;
}

// After a reload the page goes on following the newest single generation not
// yet final (a batch's belong to the batch): else its card said "pending" for ever.
function resumeRunning(items) {
  if (watching || !items) return;
  const running = items.find((g) => !g.batchId && ["pending", "processing"].includes(g.status));
  if (running) watch(running.id, { gen: running, reveal: false });
}

document.addEventListener("DOMContentLoaded", () => {
  $("#gen-cancel").addEventListener("click", cancelWatched);
});
