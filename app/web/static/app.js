// The API key (saved in this browser, checked, forgotten) and the page's
// start: with a good key, the account's options, styles, batches and gallery
// load, and a generation still running is followed again. Loaded before
// insights.js, whose key-form listener must run after this one's; uses the
// other files' functions (insights.js, batches.js and personas.js load after
// it: all are defined by DOMContentLoaded, when this file first calls them).
"use strict";

function showKeyState(text) { $("#key-status").textContent = text; }

const NO_KEY = "No key saved: make dev prints one (and keeps it in var/dev-api-key),"
  + " or run bff users create NAME.";

// A key is saved: the "save your key" reminders under the forms go.
function clearKeyReminders() {
  for (const box of [$("#form-error"), $("#batch-error"), $("#style-error")]) {
    if (box.textContent === NEED_KEY) box.textContent = "";
  }
}

async function checkKey() {
  if (!apiKey()) { showKeyState(NO_KEY); return false; }
  try {
    await api("GET", "/api/generate?limit=1");
    showKeyState("Key OK.");
    loadOptions();
    loadBatches();  // batches.js's
    return true;
  } catch (e) {
    showKeyState(`Key rejected: ${e.message}`);
    return false;
  }
}

// What the page shows of one key's account: gone when the key changes.
function clearAccount() {
  forgetGallery();  // gallery.js's
  stopWatching();
  forgetStyles();
  forgetBatches();
  forgetInsights();  // insights.js's
}

document.addEventListener("DOMContentLoaded", () => {
  $("#api-key").value = apiKey();
  $("#key-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    localStorage.setItem(KEY, $("#api-key").value.trim());
    clearAccount();  // the last key's: a refused key must not leave them shown
    if (await checkKey()) {
      clearKeyReminders();
      resumeRunning(await loadGallery(true));
    }
  });
  $("#key-forget").addEventListener("click", () => {
    localStorage.removeItem(KEY);
    $("#api-key").value = "";
    clearAccount();
    showKeyState("Key removed from this browser.");
  });
  checkKey().then(async (ok) => ok && resumeRunning(await loadGallery(true)));
});
