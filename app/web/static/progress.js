// The Progress panel's stages and result: what follow.js (and refine.js)
// show there. Uses api.js's $, and refine.js's VARIANT and refineButtons().
"use strict";

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
