// The "Saved styles" panel: the caller's personas (GET/POST /api/personas,
// PATCH/DELETE /api/personas/<id>) listed, added, edited, made default,
// deleted; the form's Persona picker follows every change. Editing moves the
// one style form into the style's card. Uses api.js's $, api(), apiKey() and
// NEED_KEY.
"use strict";

const NO_STYLES = "No saved styles yet: add one below.";
let editing = null;  // the style the form edits (its card holds the form), or null: adding

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
  const form = $("#style-form");
  if (form.closest("#style-list")) $("#styles-empty").after(form);  // not dropped with its card
  $("#style-list").replaceChildren(...personas.map(styleItem));
  $("#styles-empty").textContent = personas.length ? "" : NO_STYLES;
  // An edit under way goes on in the style's new card, its typing kept; gone, it ends.
  const mine = editing && personas.find((p) => p.id === editing.id);
  if (mine) { editing = mine; holdForm(mine); } else if (editing) stopEditing();
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
  const edit = Object.assign(document.createElement("button"),
    { type: "button", className: "ghost", textContent: "Edit" });
  edit.setAttribute("aria-label", `Edit the style “${p.name}”`);
  edit.addEventListener("click", () => startEditing(p));
  box.append(edit, makeDefault, del);
  return box;
}

// The form shows `p`'s fields, in its card, to be saved with PATCH.
function startEditing(p) {
  editing = p;
  $("#style-error").textContent = "";
  $("#style-name").value = p.name;
  $("#style-aesthetic").value = p.aesthetic || "";
  $("#style-keywords").value = p.keywords.join(", ");
  $("#style-palette").value = p.palette.join(", ");
  $("#style-description").value = p.description;
  $("#style-default").checked = p.isDefault;
  holdForm(p);
  $("#style-name").focus();
}

function holdForm(p) {
  const li = $(`#style-list li[data-id="${p.id}"]`);
  li.classList.add("editing");
  li.append($("#style-form"));
  $("#style-form-title").textContent = `Edit “${p.name}”`;
  $("#style-submit").textContent = "Save changes";
  $("#style-cancel").hidden = false;
}

// Back to adding: the form empty, under the list again; the keyboard's
// place back on the style's Edit button.
function stopEditing() {
  const id = editing?.id;
  editing = null;
  $("#style-list li.editing")?.classList.remove("editing");
  $("#styles-empty").after($("#style-form"));
  $("#style-form").reset();
  $("#style-error").textContent = "";
  $("#style-form-title").textContent = "Add a style";
  $("#style-submit").textContent = "Add style";
  $("#style-cancel").hidden = true;
  if (id) $(`#style-list li[data-id="${id}"] .style-actions button`)?.focus();
}

// Adds a style, or saves the one edited: every field as the form shows it.
async function saveStyle(event) {
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
  else if (editing) body.aesthetic = null;  // PATCH keeps a field left out: null clears it
  const button = $("#style-submit");
  const focused = document.activeElement === button;  // disabling it drops the focus
  button.disabled = true;
  try {
    if (editing) {
      await api("PATCH", `/api/personas/${editing.id}`, body);
      await loadStyles();  // (the form still in the card: its new one)
      stopEditing();
    } else {
      await api("POST", "/api/personas", body);
      $("#style-form").reset();
      await loadStyles();
    }
  } catch (e) {  // the API's words: a missing name, a keyword too long, 100 styles already
    errorBox.textContent = e.message;
  } finally {
    button.disabled = false;
    // Kept in the form (Escape there gives an edit up), unless moved on meanwhile.
    if (focused && document.activeElement === document.body) button.focus();
  }
}

// The key is forgotten: nobody's styles are shown.
function forgetStyles() {
  if (editing) stopEditing();
  $("#style-list").replaceChildren();
  $("#styles-empty").textContent = "Save your API key to see your saved styles.";
  fillPersonaPicker([]);
}

document.addEventListener("DOMContentLoaded", () => {
  $("#style-form").addEventListener("submit", saveStyle);
  $("#style-cancel").addEventListener("click", stopEditing);
  $("#style-form").addEventListener("keydown", (e) => {
    if (e.key === "Escape" && editing) stopEditing();
  });
});
