// The "Saved styles" panel: the caller's personas (GET/POST /api/personas,
// PATCH/DELETE /api/personas/<id>) listed, added, made default, deleted; the
// form's Persona picker follows every change. Uses app.js's $, api() and apiKey().
"use strict";

const NO_STYLES = "No saved styles yet: add one below.";

// Comma-separated text as the API's list: "navy, , camel" is ["navy", "camel"].
function commaList(text) { return text.split(",").map((s) => s.trim()).filter(Boolean); }

// Fetch the personas; show them in the panel and the Persona picker.
async function loadStyles() {
  if (!apiKey()) return;
  try {
    const personas = (await api("GET", "/api/personas")).items;
    showStyles(personas);
    fillPersonaPicker(personas);
  } catch (e) {
    $("#styles-empty").textContent = e.message;
  }
}

function fillPersonaPicker(personas) {
  const picker = $("#persona");
  const chosen = picker.value;
  const option = (p) => Object.assign(document.createElement("option"),
    { value: p.id, textContent: p.name });
  picker.replaceChildren(picker.options[0], ...personas.map(option));
  picker.value = personas.some((p) => p.id === chosen) ? chosen : "";
}

function showStyles(personas) {
  $("#style-list").replaceChildren(...personas.map(styleItem));
  $("#styles-empty").textContent = personas.length ? "" : NO_STYLES;
}

function styleItem(p) {
  const li = document.createElement("li");
  li.dataset.id = p.id;
  const name = Object.assign(document.createElement("strong"), { textContent: p.name });
  const head = document.createElement("div");
  head.className = "style-name";
  head.append(name);
  if (p.isDefault) {
    head.append(Object.assign(document.createElement("span"),
      { className: "badge", textContent: "default" }));
  }
  const facts = [
    p.keywords.length ? `Keywords: ${p.keywords.join(", ")}` : "",
    p.palette.length ? `Colours: ${p.palette.join(", ")}` : "",
    p.aesthetic ? `Aesthetic: ${p.aesthetic}` : "",
  ].filter(Boolean);
  const meta = Object.assign(document.createElement("span"),
    { className: "meta muted", textContent: facts.join(" · ") || "No keywords or colours." });
  meta.setAttribute("aria-live", "polite");  // a refused button's message lands here: said aloud
  const about = Object.assign(document.createElement("span"),
    { className: "muted", textContent: p.description, hidden: !p.description });
  li.append(head, meta, about, styleActions(p, meta));
  return li;
}

function styleActions(p, meta) {
  const box = document.createElement("div");
  box.className = "style-actions";
  const button = (text, label, className, action) => {
    const b = Object.assign(document.createElement("button"),
      { type: "button", className, textContent: text });
    b.setAttribute("aria-label", label);
    b.addEventListener("click", async () => {
      b.disabled = true;
      try { await action(); await loadStyles(); } catch (e) {
        meta.textContent = e.message;
        b.disabled = false;
      }
    });
    return b;
  };
  const makeDefault = p.isDefault
    ? button("Unset default", `Unset “${p.name}” as the default`, "ghost",
      () => api("PATCH", `/api/personas/${p.id}`, { isDefault: false }))
    : button("Make default", `Make “${p.name}” the default`, "ghost",
      () => api("PATCH", `/api/personas/${p.id}`, { isDefault: true }));
  const del = button("Delete", `Delete the style “${p.name}”`, "danger", async () => {
    if (!confirm(`Delete the style “${p.name}”? Images made with it are kept.`)) return;
    await api("DELETE", `/api/personas/${p.id}`);
  });
  box.append(makeDefault, del);
  return box;
}

async function addStyle(event) {
  event.preventDefault();
  const errorBox = $("#style-error");
  errorBox.textContent = "";
  if (!apiKey()) { errorBox.textContent = NEED_KEY; $("#api-key").focus(); return; }
  const body = {
    name: $("#style-name").value, description: $("#style-description").value.trim(),
    keywords: commaList($("#style-keywords").value),
    palette: commaList($("#style-palette").value), isDefault: $("#style-default").checked,
  };
  const aesthetic = $("#style-aesthetic").value.trim();
  if (aesthetic) body.aesthetic = aesthetic;
  const button = $("#style-submit");
  button.disabled = true;
  try {
    await api("POST", "/api/personas", body);
    $("#style-form").reset();
    await loadStyles();
  } catch (e) {  // the API's words: a missing name, a keyword too long, 100 styles already
    errorBox.textContent = e.message;
  } finally {
    button.disabled = false;
  }
}

// The key is forgotten: nobody's styles are shown.
function forgetStyles() {
  $("#style-list").replaceChildren();
  $("#styles-empty").textContent = "Save your API key to see your saved styles.";
  fillPersonaPicker([]);
}

document.addEventListener("DOMContentLoaded", () => {
  $("#style-form").addEventListener("submit", addStyle);
});
