// "Your generations": the caller's newest first, a page at a time
// (GET /api/generate?cursor=), each a card with retry and delete. Uses api.js's
// $, api() and apiKey(), cards.js's images and feedback, follow.js's watch()
// and stopWatching(), and batches.js's refreshBatchOf() and loadBatches().
"use strict";

let cursor = null;  // the next page's, or null: no more

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

// Another key's (or none): its cards, its next page and "Load more" go.
function forgetGallery() {
  $("#gallery").replaceChildren();
  cursor = null;
  $("#more").hidden = true;
  $("#gallery-empty").textContent = "Save your API key to see your generations.";
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

document.addEventListener("DOMContentLoaded", () => {
  // Work sent from elsewhere (bff, the API) shows up: batches too.
  $("#refresh").addEventListener("click", () => { loadGallery(true); loadBatches(); });
  $("#more").addEventListener("click", () => loadGallery(false));
});
