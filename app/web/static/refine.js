// Stage 7 on the page: "Upscale ×2" and "Cut out" under each finished image.
// Uses api.js's $ and api(), follow.js's follow(), takePanel() and letGo(),
// progress.js's showResult(), gallery.js's loadGallery() and batches.js's
// refreshBatchOf(), when a button is clicked.
const VARIANT = { original: "Original", upscaled: "Upscaled", cutout: "Cut-out" };

// "Upscale ×2" and "Cut out" for one image: each adds a variant (a refine
// job of its own), followed live like a generation; a variant it already
// has is not offered again.
function refineButtons(gen, asset) {
  const has = (variant, key) => gen.assets.some((a) => a.sourceAssetId === asset.id
    && a.variant === variant && (!key || a.width === asset.width * 2));
  const box = document.createElement("div");
  box.className = "refine";
  const offers = [
    ["Upscale ×2", { upscale: 2 }, has("upscaled", "x2")],
    ["Cut out", { removeBackground: true }, asset.variant === "cutout" || has("cutout")],
  ];
  for (const [label, body, done] of offers) {
    if (done) continue;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "ghost";
    button.textContent = label;
    button.setAttribute("aria-label", `${label} image #${asset.id}`);
    button.addEventListener("click", () => refine(gen.id, asset.id, body, box));
    box.append(button);
  }
  return box;
}

// The refine takes the Progress panel over as watch() does (takePanel): Cancel
// then cancels this refine (a completed generation's cancel stops its refine).
async function refine(genId, assetId, body, box) {
  for (const b of box.querySelectorAll("button")) b.disabled = true;
  let mine = null;
  try {
    await api("POST", `/api/generate/${genId}/assets/${assetId}/refine`, body);
    mine = takePanel(genId);
    $("#gen-status").textContent = "Refining…";
    const gen = await follow(genId, mine.stop.signal);
    showResult(gen);
    refreshBatchOf(gen);  // batches.js's: a member's card there shows its new images too
    const st = gen.stages.find((s) => s.name === "refine");
    if (st && st.status === "failed") $("#gen-status").textContent = `refine failed: ${st.error}`;
    loadGallery(true);
  } catch (e) {
    if (mine?.stop.signal.aborted) return;
    // Refused: said on the card clicked (the Progress panel may be out of view).
    const card = !mine && box.closest("li.item");
    (card ? $(".meta", card) : $("#gen-status")).textContent = e.message;
    for (const b of box.querySelectorAll("button")) b.disabled = false;
  } finally {
    if (mine) letGo(mine);
  }
}
