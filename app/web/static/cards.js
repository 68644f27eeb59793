// A gallery card's images and feedback, for gallery.js's card(). Uses api.js's
// $ and api(), and refine.js's refineButtons(), when a card is built.
"use strict";

// The image a card shows: the first, or the one picked under it. With
// several, small thumbnails pick one; feedback and refines go to the one shown.
function cardImages(li, gen, label) {
  const assets = gen.assets;
  const shown = { asset: assets[0] };
  if (!shown.asset) {
    $(".img-link", li).replaceWith(Object.assign(document.createElement("div"),
      { className: "placeholder", textContent: gen.status }));
    return shown;
  }
  const show = (asset) => {
    shown.asset = asset;
    const i = assets.indexOf(asset);
    const img = $(".img-link img", li);
    img.src = asset.url; img.width = asset.width; img.height = asset.height;
    img.alt = assets.length > 1 ? `Generated image ${i + 1} of ${assets.length} for “${label}”`
      : `Generated image for “${label}”`;
    $(".img-link", li).href = asset.url;
    for (const b of li.querySelectorAll(".thumbs button")) {
      b.setAttribute("aria-pressed", String(b.dataset.assetId === String(asset.id)));
    }
    $(".actions > .refine", li)?.remove();
    if (gen.status === "completed") $(".actions", li).prepend(refineButtons(gen, asset));
  };
  if (assets.length > 1) $("figure", li).insertBefore(thumbs(assets, show), $("figcaption", li));
  show(shown.asset);
  return shown;
}

function thumbs(assets, show) {
  const box = document.createElement("div");
  box.className = "thumbs";
  box.setAttribute("role", "group");
  box.setAttribute("aria-label", `${assets.length} images`);
  const note = document.createElement("span");
  note.className = "count muted";
  note.textContent = `${assets.length} images: your ♥, rating and ★ go to the one shown`;
  box.append(note);
  assets.forEach((asset, i) => {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.assetId = asset.id;
    const variant = asset.variant === "original" ? "" : ` (${VARIANT[asset.variant]})`;
    button.setAttribute("aria-label", `Show image ${i + 1} of ${assets.length}${variant}`);
    const img = document.createElement("img");
    img.src = asset.url; img.alt = ""; img.loading = "lazy";
    button.append(img);
    button.addEventListener("click", () => show(asset));
    box.append(button);
  });
  return box;
}

// Heart, rating and "exceptional" (API: outlier) show the saved state, then
// each answer's; each is one per generation, about the image `shown` when given.
function feedbackControls(li, gen, shown, label) {
  const [heart, exceptional, rating] = [".heart", ".exceptional", ".rating"].map((c) => $(c, li));
  const show = (fb) => {
    heart.setAttribute("aria-pressed", String(fb.heart));
    exceptional.setAttribute("aria-pressed", String(fb.outlier));
    rating.value = fb.rating ?? "";
    // The API replaces a rating but cannot remove one: once rated, "–" is not offered.
    if (fb.rating != null) {
      rating.querySelector('option[value=""]')?.remove();
      rating.title = "A new rating replaces this one; a rating cannot be removed.";
    }
  };
  show(gen.feedback);
  const send = async (body) => {
    try {
      const out = await api("POST", `/api/generate/${gen.id}/feedback`,
        { ...body, assetId: shown.asset?.id });
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
  for (const el of [heart, exceptional, rating.closest("label")]) el.hidden = !shown.asset;
}
