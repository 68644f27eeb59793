// Insights view: GET /api/stats drawn with Chart.js (vendor/chart.umd.min.js,
// the global `Chart`); uses api(), apiKey() and $() from api.js. Each chart is
// a Chart instance on its canvas, so Chart.getChart(canvas).data is what it shows.
"use strict";

const PROVIDER_COLORS = {
  "google-imagen": "#2d5fa8", "openai-dalle3": "#2f7a4b", "openai-gpt-image": "#8a5cc2",
  local: "#c9a227",
};
const MORE_COLORS = ["#7a3e2b", "#3d8b8b", "#e07a5f", "#6b6661"];
const INK = { ok: "#2f7a4b", bad: "#b3261e", run: "#2d5fa8", accent: "#7a3e2b", grey: "#c9c3bc" };
const BAR = { maxBarThickness: 48 };
const DAYS = 30;

const usd = (v) => `$${Number(v).toFixed(v >= 1 ? 2 : 3)}`;
const stageOrder = () => [...document.querySelectorAll("#stages li")].map((li) => li.dataset.stage);

// Stages in pipeline order, then any other key (e.g. "unknown").
function byStage(keys) {
  const order = stageOrder();
  return [...order.filter((s) => keys.includes(s)), ...keys.filter((k) => !order.includes(k))];
}

// The last `n` UTC days, oldest first, as YYYY-MM-DD (the API's day keys).
function lastDays(n) {
  const now = new Date();
  return Array.from({ length: n }, (_, i) => new Date(Date.UTC(
    now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate() - (n - 1 - i),
  )).toISOString().slice(0, 10));
}

// One chart per canvas: replace it, or say why there is none.
function draw(id, config, empty, summary) {
  const canvas = document.getElementById(id);
  Chart.getChart(canvas)?.destroy();
  const box = canvas.parentElement;
  let note = $(".empty", box);
  if (!note) {
    note = Object.assign(document.createElement("p"), { className: "empty muted" });
    box.append(note);
  }
  canvas.hidden = Boolean(empty);
  note.hidden = !empty;
  note.textContent = empty || "";
  box.classList.toggle("is-empty", Boolean(empty));
  canvas.setAttribute("aria-label", empty || summary);
  if (!empty) new Chart(canvas, config);
}

function spendChart(stats) {
  const days = lastDays(DAYS);
  const byDay = new Map(stats.costByDay.map((d) => [d.day.slice(0, 10), d.byProvider]));
  const providers = [...new Set(stats.costByDay.flatMap((d) => Object.keys(d.byProvider)))].sort();
  const datasets = providers.map((p, i) => ({
    label: p, data: days.map((d) => byDay.get(d)?.[p] ?? 0), stack: "spend", ...BAR,
    backgroundColor: PROVIDER_COLORS[p] || MORE_COLORS[i % MORE_COLORS.length],
  }));
  const cap = stats.dailyCap;
  if (cap != null) {
    datasets.push({
      type: "line", label: "Daily cap", data: days.map(() => cap), stack: "cap",
      borderColor: INK.bad, borderDash: [6, 4], borderWidth: 2, pointRadius: 0,
    });
  }
  const spent = days.reduce((sum, d) => sum + Object.values(byDay.get(d) || {})
    .reduce((a, b) => a + b, 0), 0);
  const capText = cap == null ? "no daily cap" : `daily cap ${usd(cap)}`;
  draw("chart-spend", {
    type: "bar",
    data: { labels: days, datasets },
    options: {
      scales: {
        x: { stacked: true, ticks: { callback(v) { return this.getLabelForValue(v).slice(5); } } },
        y: { stacked: true, beginAtZero: true, ticks: { callback: (v) => usd(v) } },
      },
      plugins: { tooltip: { callbacks: { label: (c) => `${c.dataset.label}: ${usd(c.raw)}` } } },
    },
  }, providers.length || cap != null ? "" : "Nothing spent yet.",
  `Spend per day by provider, last ${DAYS} days: ${usd(spent)} in all; ${capText}.`);
}

function outcomeCharts(stats) {
  const c = stats.counts;
  const outcomes = { completed: c.completed, failed: c.failed, canceled: c.canceled,
    "in progress": c.inProgress };
  // The rate is of the finished ones (completed or failed), not of the total.
  const rate = stats.successRate == null ? "none finished"
    : `${Math.round(stats.successRate * 100)} % of those finished succeeded`;
  const each = Object.entries(outcomes).map(([name, n]) => `${n} ${name}`).join(", ");
  draw("chart-outcomes", {
    type: "doughnut",
    data: {
      labels: Object.keys(outcomes),
      datasets: [{ data: Object.values(outcomes),
        backgroundColor: [INK.ok, INK.bad, INK.grey, INK.run] }],
    },
    options: { plugins: { legend: { position: "right" } } },
  }, c.total ? "" : "No generations yet.",
  `Outcomes of ${c.total} generations: ${each}; ${rate}.`);

  const stages = byStage(Object.keys(stats.failuresByStage));
  draw("chart-failures", {
    type: "bar",
    data: { labels: stages,
      datasets: [{ label: "failed generations", data: stages.map((s) => stats.failuresByStage[s]),
        backgroundColor: INK.bad, ...BAR }] },
    options: { plugins: { legend: { display: false } },
      scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } },
  }, stages.length ? "" : "No failures.",
  `Failed generations by stage: ${stages.map((s) => `${s} ${stats.failuresByStage[s]}`).join(", ")}.`);
}

function durationChart(stats) {
  const d = stats.stageDurationsMs;
  const stages = byStage(Object.keys(d));
  const series = (key, label, color) => ({ label, data: stages.map((s) => d[s][key]),
    backgroundColor: color, ...BAR });
  draw("chart-durations", {
    type: "bar",
    data: { labels: stages,
      datasets: [series("p50", "median", INK.run), series("p95", "95th percentile", INK.accent)] },
    options: { scales: { y: { beginAtZero: true, title: { display: true, text: "ms" } } } },
  }, stages.length ? "" : "No completed stages yet.",
  `Stage durations, median and 95th percentile: ${stages
    .map((s) => `${s} ${d[s].p50} / ${d[s].p95} ms`).join(", ")}.`);
}

function personaChart(stats) {
  const rows = stats.imagesByPersona;
  draw("chart-personas", {
    type: "bar",
    data: { labels: rows.map((r) => r.name),
      datasets: [{ label: "images", data: rows.map((r) => r.images), ...BAR,
        backgroundColor: rows.map((r) => (r.personaId ? INK.accent : INK.grey)) }] },
    options: { indexAxis: "y", plugins: { legend: { display: false } },
      scales: { x: { beginAtZero: true, ticks: { precision: 0 } } } },
  }, rows.length ? "" : "No images yet.",
  `Images per persona: ${rows.map((r) => `${r.name} ${r.images}`).join(", ")}.`);
}

// A long term's label is cut short; its tooltip shows it whole.
function short(value) {
  const label = this.getLabelForValue(value);
  return label.length > 32 ? `${label.slice(0, 31)}…` : label;
}

function termChart(stats) {
  const { top, bottom, good, bad } = stats.learntTerms;
  const terms = [...top, ...[...bottom].reverse()];  // one ranking, best at the top
  // Strong past the optimiser's thresholds, pale on the way there from the 0.5 start;
  // grey, what was asked for (a garment, colour, ...): no threshold applies to it.
  const tint = (t) => (t.subject ? INK.grey : t.score >= good ? INK.ok
    : t.score >= 0.5 ? "#9cc9ab" : t.score < bad ? INK.bad : "#e5a7a2");
  $("#chart-terms").parentElement.style.height = `${Math.max(160, 24 * terms.length + 40)}px`;
  $("#terms-note").textContent = `Scores run from 0 to 1. At ${good} or more a term is added to `
    + `your prompts; below ${bad} it goes to the negative prompt. Grey: it names what you `
    + "asked for (a garment, colour, material, pattern or detail), so it is never made "
    + "negative, nor added to a prompt asking for something else.";
  draw("chart-terms", {
    type: "bar",
    data: { labels: terms.map((t) => t.token),
      datasets: [{ label: "score", data: terms.map((t) => t.score),
        backgroundColor: terms.map(tint) }] },
    options: { indexAxis: "y", plugins: { legend: { display: false } },
      scales: { x: { min: 0, max: 1 }, y: { ticks: { autoSkip: false, callback: short } } } },
  }, terms.length ? "" : "Nothing learnt yet: heart, rate or mark images exceptional.",
  `Best terms: ${top.map((t) => t.token).join(", ")}. Worst: ${bottom.map((t) => t.token)
    .join(", ") || "none"}.`);
}

function heartedImages(stats) {
  const items = stats.mostHearted.map((h) => {
    const li = document.createElement("li");
    const link = Object.assign(document.createElement("a"),
      { href: h.url, target: "_blank", rel: "noopener" });
    const img = Object.assign(document.createElement("img"), { src: h.url, width: h.width,
      height: h.height, loading: "lazy", alt: `Hearted image for “${h.prompt || "garment photo"}”` });
    const caption = Object.assign(document.createElement("span"), { className: "muted",
      textContent: `♥ ${h.hearts} · ${h.prompt || "garment photo"}` });
    link.append(img);
    li.append(link, caption);
    return li;
  });
  $("#hearted").replaceChildren(...items);
  $("#hearted-empty").hidden = items.length > 0;
}

function tiles(stats) {
  $("#tile-total").textContent = String(stats.counts.total);
  $("#tile-success").textContent = stats.successRate == null ? "–"
    : `${Math.round(stats.successRate * 100)} %`;
  $("#tile-spent").textContent = usd(stats.totalCost);
  // What generate made, as the persona chart counts them; refine's variants apart.
  $("#tile-images").textContent = String(stats.images);
  const variants = $("#tile-variants");
  variants.hidden = !stats.variants;
  variants.textContent = `+ ${stats.variants} refined variant${stats.variants === 1 ? "" : "s"}`;
}

let insightsRuns = 0;  // bumped by each load and by forgetInsights(): an older answer is dropped

// Another key's (or none): its figures, charts and hearted images go, not
// left for the next person at this browser to read as theirs.
function forgetInsights() {
  insightsRuns++;
  for (const id of ["tile-total", "tile-success", "tile-spent", "tile-images"]) {
    $(`#${id}`).textContent = "–";
  }
  $("#tile-variants").hidden = true;
  const charts = typeof Chart !== "undefined";
  for (const canvas of document.querySelectorAll("#insights canvas")) {
    if (charts) Chart.getChart(canvas)?.destroy();
    canvas.hidden = true;
  }
  for (const note of document.querySelectorAll("#insights .chart .empty")) note.hidden = true;
  $("#terms-note").textContent = "";
  $("#hearted").replaceChildren();
  $("#hearted-empty").hidden = true;
  $("#insights-status").textContent = "Save your API key to see your insights.";
  delete $("#insights").dataset.state;
}

async function loadInsights() {
  const view = $("#insights");
  const status = $("#insights-status");
  if (!apiKey()) { status.textContent = "Save your API key to see your insights."; return; }
  if (typeof Chart === "undefined") { status.textContent = "The charting library did not load."; return; }
  const run = ++insightsRuns;
  view.dataset.state = "loading";
  status.textContent = "Loading…";
  try {
    const stats = await api("GET", "/api/stats");
    if (run !== insightsRuns) return;  // the key was forgotten or changed meanwhile
    for (const part of [tiles, spendChart, outcomeCharts, durationChart, personaChart, termChart,
      heartedImages]) part(stats);
    status.textContent = `Updated at ${new Date().toLocaleTimeString()}.`;
    view.dataset.state = "ready";
  } catch (e) {
    if (run !== insightsRuns) return;
    status.textContent = e.message;
    view.dataset.state = "error";
  }
}

// Two views, one page: #insights shows the dashboard, anything else the studio.
function showView() {
  const view = location.hash === "#insights" ? "insights" : "studio";
  $("#studio").hidden = view !== "studio";
  $("#insights").hidden = view !== "insights";
  for (const a of document.querySelectorAll(".views a")) {
    if (a.dataset.view === view) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (view === "insights") loadInsights();
}

document.addEventListener("DOMContentLoaded", () => {
  if (typeof Chart !== "undefined") {
    Object.assign(Chart.defaults, { animation: false, maintainAspectRatio: false, color: "#6b6661" });
    Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
  }
  window.addEventListener("hashchange", showView);
  $("#insights-refresh").addEventListener("click", loadInsights);
  // app.js saves the key first (its listener was added first).
  $("#key-form").addEventListener("submit", () => { if (!$("#insights").hidden) loadInsights(); });
  showView();
});
