// The "New image" form: its options (what this server can use, an estimated
// cost), the photo drop zone, and its submit (POST /api/generate/from-prompt or
// /from-image), then followed in the Progress panel by follow.js's watch().
// Uses api.js's $, api(), apiKey() and NEED_KEY, follow.js's watch() and
// watching, progress.js's resetStages() and personas.js's loadStyles().
"use strict";

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

document.addEventListener("DOMContentLoaded", () => {
  $("#gen-form").addEventListener("submit", submit);
  for (const id of ["provider", "quality", "size", "count"]) {
    $(`#${id}`).addEventListener("change", estimate);
  }
  setupDrop();
});
