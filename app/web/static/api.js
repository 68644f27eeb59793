// The page's shared ground: plain JS, no build step, every file a classic
// deferred script sharing one global scope. Loaded first; every other file
// uses its $, apiKey() and api(). Every API call sends the key as
// "Authorization: Bearer".
"use strict";

const KEY = "bff.apiKey";
const NEED_KEY = "Save your API key first.";
const $ = (sel, root = document) => root.querySelector(sel);

function apiKey() { return localStorage.getItem(KEY) || ""; }

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${apiKey()}` };
  let payload = body;
  if (body && !(body instanceof FormData)) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, { method, headers, body: payload });
  } catch (e) {  // no answer at all: the browser's own words ("Failed to fetch") say nothing
    throw new Error("the server cannot be reached: is it running? (bff dev, or make dev)");
  }
  if (resp.status === 204) return null;
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const err = data.error || {};
    // A list of fields' problems, or an object of figures (a budget's), already in the message.
    // A field's problem the message already says (an upload's, a provider's) is not said twice.
    const message = err.message || resp.statusText;
    const fields = Array.isArray(err.details) ? err.details : [];
    const detail = fields.filter((d) => !message.includes(d.message))
      .map((d) => `${d.field}: ${d.message}`).join("; ");
    const error = new Error(`${message}${detail ? ` (${detail})` : ""}`);
    error.fields = fields;  // for a form that can say a problem by its own labels
    throw error;
  }
  return data;
}
