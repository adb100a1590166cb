// The zitops console: reads the agent's own API and draws it. No framework,
// no build step. Text from the API only ever reaches the page through
// textContent, never innerHTML, so prompts and error messages cannot inject markup.
(() => {
  "use strict";

  const TOKEN_KEY = "zitops.token";
  const STATUS_EVERY_MS = 2000;
  const VRAM_EVERY_MS = 5000;
  const JOB_EVERY_MS = 400;
  const COLORS = { allocated: "#1f6feb", reserved: "#8250df", used: "#d1242f" };

  const $ = (id) => document.getElementById(id);
  const timers = [];
  const charts = new Map();
  let imageUrl = null;

  class Unauthorized extends Error {}

  // One element, with text children only (strings become text nodes).
  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (key === "className") node.className = value;
      else if (key === "title") node.title = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function replaceRows(tbody, rows, columns, empty) {
    tbody.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: String(columns), className: "muted" }, empty))]));
  }

  async function api(path, options = {}) {
    const headers = new Headers(options.headers || {});
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.set("Authorization", "Bearer " + token);
    const resp = await fetch(path, { ...options, headers, cache: "no-store" });
    if (resp.status === 401) throw new Unauthorized("the agent refused the token");
    return resp;
  }

  async function apiJson(path, options) {
    const resp = await api(path, options);
    const body = await resp.json().catch(() => null);
    if (!resp.ok) {
      const message = body && body.error && body.error.message ? body.error.message : resp.statusText;
      throw new Error(`${resp.status}: ${message}`);
    }
    return body;
  }

  const fmt = {
    time: (epoch) => (epoch ? new Date(epoch * 1000).toLocaleTimeString() : "–"),
    secs: (s) => (typeof s === "number" ? (s < 10 ? s.toFixed(2) : s.toFixed(0)) + " s" : "–"),
    mib: (v) => (typeof v === "number" ? Math.round(v).toString() : "–"),
    duration(s) {
      if (typeof s !== "number") return "–";
      const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
      return h ? `${h} h ${m} min` : m ? `${m} min ${Math.floor(s % 60)} s` : `${s.toFixed(0)} s`;
    },
  };

  // --- auth ------------------------------------------------------------------------------

  function showAuth(message) {
    for (const t of timers.splice(0)) clearTimeout(t);
    $("main").hidden = true;
    $("auth").hidden = false;
    $("auth-error").textContent = message || "";
    $("summary").textContent = "needs a token";
    $("forget-token").hidden = !sessionStorage.getItem(TOKEN_KEY);
    $("token").focus();
  }

  function handle(err, where) {
    if (err instanceof Unauthorized) {
      showAuth(sessionStorage.getItem(TOKEN_KEY) ? "That token was refused; check it and try again." : "");
      return true;
    }
    $("summary").textContent = `${where}: ${err.message}`;
    return false;
  }

  // --- status ------------------------------------------------------------------------------

  function startupText(startup) {
    if (!startup) return "–";
    const parts = [];
    for (const [key, value] of Object.entries(startup)) {
      if (key.endsWith("_s") && key !== "total_s" && typeof value === "number") {
        parts.push(`${key.slice(0, -2).replace(/_/g, " ")} ${fmt.secs(value)}`);
      }
    }
    const head = `${startup.source || "start"} ${fmt.secs(startup.total_s)}`;
    return parts.length ? `${head} (${parts.join(", ")})` : head;
  }

  function spareText(standby, worker) {
    if (!standby || standby.enabled === false) return "off";
    const spare = (standby.spares || []).find((s) => s.id === worker.id);
    if (!spare) return standby.off && standby.off[worker.id] ? `off: ${standby.off[worker.id]}` : "none";
    const preload = spare.preload && spare.preload.state ? `, preload ${spare.preload.state}` : "";
    return `pid ${spare.pid} ${spare.state}${preload}`;
  }

  function renderStatus(s) {
    const ready = s.ready ? "ready" : `not ready: ${(s.reasons || []).join("; ")}`;
    $("summary").textContent = `${s.profile} · ${ready}`;
    $("summary").className = s.ready ? "ok" : "bad";
    const q = s.queue || {};
    const model = s.model && typeof s.model === "object" ? [s.model.name, s.model.note].filter(Boolean).join(" – ") : s.model;
    const items = [
      ["profile", s.profile], ["model", model], ["engine", s.engine], ["ready", ready],
      ["queue", `${q.depth ?? "–"} waiting of ${q.cap ?? "–"}`], ["running", q.running ?? "–"],
      ["uptime", fmt.duration(s.uptime_s ?? s.api_uptime_s)], ["NVML", s.nvml], ["auth", s.auth],
      ["version", s.version],
    ];
    const os = s.object_store;
    if (os && os.configured) {
      items.push(["object store", `${os.url} · ${os.up ? "up" : `down: ${os.reason || "unknown"}`}` +
        (os.checked_at ? ` · checked ${fmt.time(os.checked_at)}` : "")]);
    } else if (os) items.push(["object store", "none (images on this host)"]);
    if (s.draining) items.push(["draining", "yes"]);
    if (s.degraded) items.push(["degraded", typeof s.degraded === "string" ? s.degraded : JSON.stringify(s.degraded)]);
    $("overview-list").replaceChildren(...items.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { "data-field": k }, v ?? "–")]));

    const workers = (s.workers || []).map((w) => {
      const v = w.vram || {};
      const used = v.nvml_used_mib ?? v.device_used_mib;
      const cpu = w.gpu == null && !v.simulated && !v.device_total_mib;
      const vram = cpu ? "n/a (CPU)" : `${fmt.mib(v.allocated_mib)} alloc / ${fmt.mib(v.reserved_mib)} reserved / ${fmt.mib(used)} of ${fmt.mib(v.device_total_mib)}${v.simulated ? " (simulated)" : ""}`;
      const jobs = `${w.jobs_done ?? 0} (${w.jobs_total ?? 0} total)` +
        (w.current_job ? `, running ${String(w.current_job).slice(0, 8)}` : "");
      return el("tr", { "data-worker": w.id },
        el("td", {}, w.id), el("td", {}, w.gpu ?? "cpu"),
        el("td", { className: `state state-${w.state}`, title: w.last_exit ? `last exit: ${w.last_exit}` : "" }, w.state),
        el("td", {}, w.pid ?? "–"), el("td", {}, jobs), el("td", {}, startupText(w.startup)),
        el("td", {}, vram), el("td", {}, spareText(s.standby, w)));
    });
    replaceRows($("worker-rows"), workers, 8, "no workers");

    const recoveries = (s.recoveries || []).slice(-20).reverse().map((r) => el("tr", {},
      el("td", {}, fmt.time(r.time)), el("td", {}, r.kind),
      el("td", {}, r.worker ? `${r.worker}${r.incarnation !== null && r.incarnation !== undefined ? " #" + r.incarnation : ""}` : "–"),
      el("td", {}, r.reason)));
    replaceRows($("recovery-rows"), recoveries, 4, "none");

    const failures = (s.recent_failures || []).map((f) => {
      const error = el("td", {}, `${f.exc_type || "error"}: ${f.message || ""}`);
      if (f.traceback) error.append(el("details", {}, el("summary", {}, "traceback"), el("pre", {}, f.traceback)));
      const prompt = typeof f.prompt === "string" && f.prompt.length > 120 ? f.prompt.slice(0, 120) + "…" : f.prompt;
      return el("tr", {}, el("td", {}, f.time || fmt.time(f.ts)), el("td", {}, f.kind || "job"),
        el("td", {}, f.worker_id || "–"), el("td", {}, f.job_id || "–"), error,
        el("td", { title: f.prompt || "" }, prompt || "–"), el("td", {}, f.action || "–"));
    });
    replaceRows($("failure-rows"), failures, 7, "none");

    const hooks = s.webhooks || { enabled: false };
    const deliveries = (hooks.recent || []).map((d) => el("tr", { "data-delivery": d.job_id },
      el("td", {}, fmt.time(d.created_at)), el("td", { title: d.job_id }, String(d.job_id).slice(0, 8)),
      el("td", { className: `state state-${d.state}` }, d.state), el("td", {}, d.attempts ?? 0),
      el("td", {}, d.last_status ?? "–"), el("td", {}, d.last_error || "–")));
    replaceRows($("webhook-rows"), deliveries, 6, hooks.enabled === false ? "webhooks off" : "none");
    $("webhook-counts").textContent = hooks.enabled === false ? "off (webhooks.secret_file is not set)"
      : Object.entries(hooks.counts || {}).map(([k, v]) => `${k} ${v}`).join(" · ") || "no deliveries yet";
  }

  async function statusLoop() {
    try {
      renderStatus(await apiJson("status"));
    } catch (err) {
      if (handle(err, "status")) return;
    }
    timers.push(setTimeout(statusLoop, STATUS_EVERY_MS));
  }

  // --- VRAM chart ------------------------------------------------------------------------

  function chartWidth() {
    return Math.max(300, $("charts").clientWidth - 8);
  }

  function makeChart(key, series) {
    const box = el("div", { className: "chart", "data-gpu": key, "data-samples": "0" },
      el("h3", {}, (key === "cpu" ? "CPU worker (no GPU)" : `GPU ${key}`) +
        (series.total_mib ? ` · ${fmt.mib(series.total_mib)} MiB total` : "")));
    $("charts").append(box);
    const usedLabel = series.used_from === "nvml" ? "NVML used" : "device used (worker report)";
    const opts = {
      width: chartWidth(), height: 200,
      // From 0 to just above the data, not to the card's total: a slow leak must show as a slope.
      // The last hour, whatever the number of samples: uPlot's auto range around one sample spans years.
      scales: { x: { time: true, range: () => { const now = Date.now() / 1000; return [now - 3600, now]; } }, y: { range: (u, min, max) => [0, Math.max(max * 1.15, 1)] } },
      axes: [{}, { label: "MiB", size: 60 }],
      hooks: { setScale: [(u, key) => {
        if (key === "x") box.dataset.xSpanS = String(Math.round(u.scales.x.max - u.scales.x.min));
      }] },
      series: [
        {},
        { label: "torch allocated", stroke: COLORS.allocated, width: 2 },
        { label: "torch reserved", stroke: COLORS.reserved, width: 2 },
        { label: usedLabel, stroke: COLORS.used, width: 2, dash: [6, 3] },
      ],
    };
    const chart = new uPlot(opts, [[], [], [], []], box);
    charts.set(key, chart);
    return chart;
  }

  function renderVram(history) {
    const gpus = history.gpus || {};
    $("charts-empty").hidden = Object.keys(gpus).length > 0;
    for (const [key, series] of Object.entries(gpus)) {
      const chart = charts.get(key) || makeChart(key, series);
      chart.setData([series.t, series.allocated_mib, series.reserved_mib, series.used_mib]);
      chart.root.parentElement.dataset.samples = String(series.t.length);
    }
  }

  async function vramLoop() {
    try {
      renderVram(await apiJson("v1/vram/history"));
    } catch (err) {
      if (handle(err, "VRAM history")) return;
    }
    timers.push(setTimeout(vramLoop, VRAM_EVERY_MS));
  }

  window.addEventListener("resize", () => {
    for (const chart of charts.values()) chart.setSize({ width: chartWidth(), height: 200 });
  });

  // --- try a prompt ------------------------------------------------------------------------

  async function loadSamplers() {
    const select = document.querySelector("#generate-form select[name=sampler]");
    if (select.options.length > 1) return;
    for (const s of await apiJson("sdapi/v1/samplers")) {
      const value = (s.aliases && s.aliases[0]) || s.name;
      select.append(el("option", { value }, s.name));
    }
  }

  function jobBody(form) {
    const data = new FormData(form);
    const body = { prompt: String(data.get("prompt") || "") };
    for (const name of ["width", "height", "steps", "seed"]) {
      const raw = String(data.get(name) || "").trim();
      if (raw !== "") body[name] = Number(raw);
    }
    const sampler = String(data.get("sampler") || "");
    if (sampler) body.sampler = sampler;
    return body;
  }

  function jobState(text, running) {
    $("job-state").textContent = text;
    $("job-progress").hidden = !running;
  }

  async function showImage(job) {
    const resp = await api(job.images[0].replace(/^\//, ""));
    if (!resp.ok) throw new Error(`image: ${resp.status}`);
    if (imageUrl) URL.revokeObjectURL(imageUrl);
    imageUrl = URL.createObjectURL(await resp.blob());
    const img = $("job-image");
    img.src = imageUrl;
    const p = job.params || {};
    const t = job.timings || {};
    $("job-caption").textContent = `${p.width}×${p.height}, ${p.steps} steps, ${p.sampler}, seed ${(p.seeds || [])[0]}` +
      (typeof t.engine === "number" ? `; engine ${fmt.secs(t.engine)}` : "");
    $("job-figure").hidden = false;
  }

  async function generate(event) {
    event.preventDefault();
    const form = event.target;
    const button = $("generate");
    button.disabled = true;
    $("job").hidden = false;
    $("job-error").textContent = "";
    $("job-figure").hidden = true;
    jobState("submitting…", true);
    try {
      const accepted = await apiJson("v1/jobs", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(jobBody(form)),
      });
      const started = performance.now();
      let job = accepted;
      while (!["succeeded", "failed", "cancelled"].includes(job.status)) {
        jobState(`job ${accepted.id}: ${job.status}, ${fmt.secs((performance.now() - started) / 1000)}`, true);
        await new Promise((resolve) => setTimeout(resolve, JOB_EVERY_MS));
        job = await apiJson(`v1/jobs/${encodeURIComponent(accepted.id)}`);
      }
      jobState(`job ${accepted.id}: ${job.status} after ${fmt.secs((performance.now() - started) / 1000)}`, false);
      if (job.status === "succeeded") await showImage(job);
      else $("job-error").textContent = job.error || `the job was ${job.status}`;
    } catch (err) {
      jobState("", false);
      if (!handle(err, "generate")) $("job-error").textContent = err.message;
    } finally {
      button.disabled = false;
    }
  }

  // --- start -------------------------------------------------------------------------------

  async function start() {
    for (const t of timers.splice(0)) clearTimeout(t);
    try {
      renderStatus(await apiJson("status"));
    } catch (err) {
      if (!handle(err, "status")) timers.push(setTimeout(start, STATUS_EVERY_MS));
      return;
    }
    $("auth").hidden = true;
    $("main").hidden = false;
    $("forget-token").hidden = !sessionStorage.getItem(TOKEN_KEY);
    timers.push(setTimeout(statusLoop, STATUS_EVERY_MS));
    vramLoop();
    loadSamplers().catch((err) => handle(err, "samplers"));
  }

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token").value = "";
    start();
  });
  $("forget-token").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showAuth("");
  });
  $("generate-form").addEventListener("submit", generate);
  start();
})();
