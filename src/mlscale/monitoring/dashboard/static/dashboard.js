// The dashboard page: polls api/summary and draws it. All numbers are computed server-side;
// this file only formats and plots, so a bug here cannot make the page lie about a value.
"use strict";

(function () {
  const REFRESH_MS = Number(document.body.dataset.refreshMs) || 1000;
  const C = { cyan: "#22d3ee", violet: "#a78bfa", green: "#34d399", amber: "#fbbf24", red: "#f87171",
              muted: "#8793a8", grid: "#1e2738", text: "#c9d3e3" };
  const CONFIG = { displayModeBar: false, responsive: true };
  const state = { updates: 0, last: null, failures: 0 };
  // With auth on, the key lives in this tab's sessionStorage only and travels in the
  // Authorization header; it is never put in a URL, a cookie or the page. AUTH says the server
  // itself checks keys (ask before the first poll); a gateway in front may check them too, so a
  // 401 or 403 always brings up the prompt.
  const AUTH = document.body.dataset.auth === "1";
  const KEY_ITEM = "mlscale.dashboard.key";
  const hasKey = () => !!sessionStorage.getItem(KEY_ITEM);
  const authHeaders = () => (hasKey() ? { Authorization: "Bearer " + sessionStorage.getItem(KEY_ITEM) } : {});
  function askForKey(message) {
    const form = document.getElementById("auth-form");
    form.hidden = false;
    document.getElementById("auth-error").textContent = message || "";
  }
  document.getElementById("auth-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = document.getElementById("auth-key");
    sessionStorage.setItem(KEY_ITEM, input.value.trim());
    input.value = "";
    document.getElementById("auth-form").hidden = true;
    clearTimeout(state.timer);
    refresh();
  });
  // Snapshot pictures need the key too: <img src> cannot send a header, so fetch them as blobs.
  const blobs = new Map();
  function loadImages(root) {
    if (!hasKey()) return;
    root.querySelectorAll("img[data-src]").forEach(async (img) => {
      const url = img.dataset.src;
      if (!blobs.has(url)) {
        const response = await fetch(url, { headers: authHeaders() });
        if (!response.ok) return;
        blobs.set(url, URL.createObjectURL(await response.blob()));
      }
      img.src = blobs.get(url);
    });
  }
  window.__dashboard = state;

  function baseLayout(extra) {
    return Object.assign({
      paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
      font: { color: C.text, size: 11, family: "Inter, Segoe UI, system-ui, sans-serif" },
      margin: { l: 48, r: 12, t: 8, b: 30 },
      xaxis: { gridcolor: C.grid, zeroline: false, linecolor: C.grid, tickformat: "%H:%M:%S" },
      yaxis: { gridcolor: C.grid, zeroline: false, linecolor: C.grid, rangemode: "tozero" },
      legend: { orientation: "h", x: 0, y: 1.12, font: { size: 11 } },
      hovermode: "x unified", showlegend: true,
    }, extra || {});
  }

  const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) =>
    ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  const isNum = (v) => typeof v === "number" && isFinite(v);
  function fmt(v, digits) {
    if (!isNum(v)) return "–";
    const a = Math.abs(v);
    if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
    return v.toFixed(digits ?? (a >= 100 ? 0 : a >= 10 ? 1 : 2));
  }
  const pct = (v) => (isNum(v) ? (v * 100).toFixed(v < 0.1 && v > 0 ? 2 : 1) + "%" : "–");
  function ms(seconds) {
    if (!isNum(seconds)) return "–";
    const m = seconds * 1000;
    return m >= 1000 ? (m / 1000).toFixed(2) + " s" : fmt(m, m < 10 ? 2 : 1) + " ms";
  }
  function bytes(v) {
    if (!isNum(v)) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return v.toFixed(i ? 1 : 0) + " " + units[i];
  }
  function ago(since) {
    let t = typeof since === "number" ? since * 1000 : Date.parse(since);
    if (!isFinite(t)) return "–";
    const s = Math.max(0, (Date.now() - t) / 1000);
    if (s < 60) return Math.round(s) + " s ago";
    if (s < 3600) return Math.round(s / 60) + " min ago";
    return Math.round(s / 3600) + " h ago";
  }
  const times = (series) => series.time.map((t) => new Date(t * 1000));
  const toMs = (arr) => arr.map((v) => (isNum(v) ? v * 1000 : null));

  function setPanel(id, panelState, error) {
    const el = document.getElementById(id);
    el.classList.toggle("unconfigured", panelState !== "ok");
    el.classList.toggle("failed", panelState === "error");
    const empty = el.querySelector(".empty");
    empty.textContent = panelState === "error" ? "source failed: " + (error || "unknown error") : "not configured";
    return panelState === "ok";
  }

  function setStat(id, value, hint, level) {
    const el = document.getElementById(id);
    el.querySelector(".value").textContent = value;
    el.querySelector(".hint").textContent = hint || "";
    el.classList.remove("good", "warn", "bad");
    if (level) el.classList.add(level);
  }

  // With several worker processes each keeps its own history, and the browser's polls may reach
  // different workers: every point is a correct rate over its own step, so points are merged by time
  // here instead of letting the chart jump between histories.
  const points = new Map();
  const HISTORY_SECONDS = 300;
  function mergeSeries(series) {
    const keys = Object.keys(series);
    series.time.forEach((t, i) => {
      const point = {};
      for (const k of keys) point[k] = series[k][i];
      points.set(t, point);
    });
    const ordered = [...points.keys()].sort((a, b) => a - b);
    const newest = ordered[ordered.length - 1];
    const kept = ordered.filter((t) => newest - t <= HISTORY_SECONDS);
    for (const t of ordered) if (newest - t > HISTORY_SECONDS) points.delete(t);
    const merged = {};
    for (const k of keys) merged[k] = kept.map((t) => points.get(t)[k]);
    return merged;
  }

  function drawMetrics(m, windowSeconds) {
    const ok = m.status === "ok" || (m.status === "error" && m.series);
    for (const id of ["panel-requests", "panel-latency", "panel-batch", "panel-cache"]) {
      setPanel(id, ok ? "ok" : m.status, m.error);
    }
    if (!ok) return;
    const s = mergeSeries(m.series), x = times(s), w = m.window;

    const success = s.requests_per_second.map((v, i) => v - s.errors_per_second[i] - s.rejected_per_second[i]);
    Plotly.react("chart-requests", [
      { x, y: s.requests_per_second, name: "total", type: "scatter", mode: "lines",
        line: { color: C.cyan, width: 2, shape: "spline" }, fill: "tozeroy", fillcolor: "rgba(34,211,238,0.08)" },
      { x, y: success, name: "success", type: "scatter", mode: "lines", line: { color: C.green, width: 1.2 } },
      { x, y: s.errors_per_second, name: "errors", type: "scatter", mode: "lines", line: { color: C.red, width: 1.5 } },
      { x, y: s.rejected_per_second, name: "rejected", type: "scatter", mode: "lines", line: { color: C.amber, width: 1.2, dash: "dot" } },
    ], baseLayout(), CONFIG);

    Plotly.react("chart-latency", [
      { x, y: toMs(s.p50), name: "p50", type: "scatter", mode: "lines", line: { color: C.green, width: 2 } },
      { x, y: toMs(s.p90), name: "p90", type: "scatter", mode: "lines", line: { color: C.cyan, width: 2 } },
      { x, y: toMs(s.p99), name: "p99", type: "scatter", mode: "lines", line: { color: C.violet, width: 2 } },
      { x, y: toMs(s.queue_wait_p99), name: "queue wait p99", type: "scatter", mode: "lines",
        line: { color: C.amber, width: 1.2, dash: "dot" } },
    ], baseLayout(), CONFIG);

    const batches = (w && w.batch_sizes) || [];
    let lower = 0;
    const labels = batches.map((b) => {
      const label = b.le === null || !isFinite(b.le) ? "> " + fmt(lower, 0) : (b.le - lower <= 1 ? fmt(b.le, 0) : fmt(lower + 1, 0) + "–" + fmt(b.le, 0));
      if (isNum(b.le)) lower = b.le;
      return label;
    });
    document.getElementById("batch-window").textContent = "last " + Math.round((w && w.seconds) || windowSeconds) + " s · mean " + fmt(s.batch_size_mean.filter(isNum).slice(-1)[0], 1);
    Plotly.react("chart-batch", [
      { x: labels, y: batches.map((b) => b.count), type: "bar", name: "batches",
        marker: { color: C.violet, line: { color: "#c4b5fd", width: 0 } }, hovertemplate: "%{x}: %{y} batches<extra></extra>" },
    ], baseLayout({ showlegend: false, hovermode: "closest", bargap: 0.25,
      xaxis: { type: "category", gridcolor: C.grid, title: { text: "batch size", font: { size: 11, color: C.muted } } } }), CONFIG);

    Plotly.react("chart-cache", [
      { x, y: s.cache_hit_ratio.map((v) => (isNum(v) ? v * 100 : null)), name: "hit ratio %", type: "scatter",
        mode: "lines", line: { color: C.green, width: 2 }, fill: "tozeroy", fillcolor: "rgba(52,211,153,0.08)" },
    ], baseLayout({ showlegend: false, yaxis: { gridcolor: C.grid, range: [0, 100], ticksuffix: "%" },
      margin: { l: 48, r: 12, t: 4, b: 26 } }), CONFIG);
    const rows = ((w && w.cache) || []).map((r) => `<tr><td>${esc(r.cache)}</td><td>${esc(r.tier)}</td>
      <td>${fmt(r.hits, 0)}</td><td>${fmt(r.misses, 0)}</td><td>${pct(r.hit_ratio)}</td><td>${bytes(r.bytes)}</td></tr>`);
    document.querySelector("#table-cache tbody").innerHTML = rows.join("") || `<tr><td colspan="6" class="muted">no cache lookups yet</td></tr>`;
  }

  function drawHeadline(d) {
    const w = d.metrics && d.metrics.window;
    const span = w && isNum(w.seconds) ? "last " + Math.round(w.seconds) + " s" : "";
    setStat("stat-rps", w ? fmt(w.requests_per_second) : "–", w ? fmt(w.requests, 0) + " in " + Math.round(w.seconds || 0) + " s" : "");
    const er = w ? w.error_ratio : null;
    setStat("stat-errors", pct(er), w ? fmt(w.rejected, 0) + " rejected" : "", isNum(er) ? (er > 0.05 ? "bad" : er > 0.01 ? "warn" : "good") : null);
    setStat("stat-p50", w ? ms(w.p50) : "–", w ? "p90 " + ms(w.p90) : "");
    setStat("stat-p99", w ? ms(w.p99) : "–", span);
    setStat("stat-inflight", w ? fmt(w.inflight, 0) : "–", "now");
    const hr = w ? w.cache_hit_ratio : null;
    setStat("stat-cache", pct(hr), span, isNum(hr) ? (hr >= 0.5 ? "good" : "warn") : null);
    const models = d.models.status === "ok" ? d.models.data : null;
    if (models) {
      const ready = models.filter((m) => m.ready !== false).length;
      setStat("stat-models", ready + " / " + models.length, "", ready === models.length ? "good" : "warn");
    } else setStat("stat-models", "–", d.models.status);
    const alerts = d.alerts.status === "ok" ? d.alerts.data : null;
    if (alerts) {
      const firing = alerts.filter((a) => a.state === "firing").length;
      const pending = alerts.filter((a) => a.state === "pending").length;
      setStat("stat-alerts", String(firing), pending + " pending", firing ? "bad" : "good");
    } else if (w && isNum(w.alerts_firing)) {
      setStat("stat-alerts", fmt(w.alerts_firing, 0), "from metrics", w.alerts_firing ? "bad" : "good");
    } else setStat("stat-alerts", "–", d.alerts.status);
  }

  function drawModels(d) {
    if (!setPanel("panel-models", d.models.status, d.models.error)) return;
    const perModel = {};
    for (const r of (d.metrics.window && d.metrics.window.per_model) || []) {
      const agg = perModel[r.model] || (perModel[r.model] = { rps: 0, requests: 0, errors: 0, p50: null, p99: null });
      agg.rps += r.requests_per_second || 0;
      agg.requests += r.requests || 0;
      agg.errors += (r.error_ratio || 0) * (r.requests || 0);
      agg.p50 = Math.max(agg.p50 ?? 0, r.p50 ?? 0) || agg.p50;
      agg.p99 = Math.max(agg.p99 ?? 0, r.p99 ?? 0) || agg.p99;
    }
    const rows = d.models.data.map((m) => {
      const versions = (m.versions || []).map((v) => {
        const info = typeof v === "object" && v !== null ? v : { version: v };
        const extra = info.traffic !== undefined ? " · " + pct(info.traffic) : "";
        const failed = info.state && !["READY", "ready"].includes(info.state);
        return `<span class="chip${failed ? " failed" : ""}" title="${esc(info.reason || info.state || "")}">` +
          `v${esc(info.version ?? info.name)}${esc(extra)}</span>`;
      }).join("");
      const aliases = Object.entries(m.aliases || {}).map(([a, v]) => `<span class="chip alias">${esc(a)} → v${esc(v)}</span>`).join("");
      const ready = m.ready === false ? "unready" : "ready";
      const p = perModel[m.name] || {};
      return `<tr><td><b>${esc(m.name)}</b></td><td>${versions}</td><td>${aliases || '<span class="muted">–</span>'}</td>
        <td><span class="badge ${ready}">${ready === "ready" ? "ready" : esc(m.state || "not ready")}</span></td>
        <td>${fmt(p.rps)}</td><td>${ms(p.p50)}</td><td>${ms(p.p99)}</td><td>${p.requests ? pct(p.errors / p.requests) : "–"}</td></tr>`;
    });
    document.querySelector("#table-models tbody").innerHTML = rows.join("") || `<tr><td colspan="8" class="muted">no models loaded</td></tr>`;
  }

  function drawDrift(d) {
    if (!setPanel("panel-drift", d.drift.status, d.drift.error)) return;
    const root = document.getElementById("drift-monitors");
    const monitors = d.drift.data.monitors;
    // Drift results change once per monitor run, not per poll: redraw only when they do.
    const signature = JSON.stringify(monitors);
    if (root.dataset.signature === signature) return;
    root.dataset.signature = signature;
    const layoutKey = JSON.stringify(monitors.map((m) => [m.name, m.features.map((f) => f.feature)]));
    if (root.dataset.key !== layoutKey) {
      root.dataset.key = layoutKey;
      root.innerHTML = monitors.map((m, i) => `<div class="monitor"><div class="monitor-head" id="drift-head-${i}"></div>
        <div class="features">${m.features.map((f, j) => `<div class="feature" id="drift-${i}-${j}">
          <div class="fhead"><span class="fname">${esc(f.feature)}</span><span class="fverdict"></span></div>
          <div class="ftest"></div><div class="fchart" id="drift-chart-${i}-${j}"></div></div>`).join("")}</div></div>`).join("")
        || `<div class="muted">no monitor results yet</div>`;
    }
    monitors.forEach((m, i) => {
      const name = `<span class="name">${esc(m.name)}</span>` + (m.model ? `<span class="muted">model ${esc(m.model)}</span>` : "");
      let verdict;
      if (m.error) verdict = `<span class="badge drifted">failed</span><span class="muted">${esc(m.error)}</span>`;
      else if (!m.features.length) verdict = `<span class="muted">waiting for the first window of rows</span>`;
      else verdict = `<span class="badge ${m.drifted ? "drifted" : "ok"}">${m.drifted ? "drift detected" : "no drift"}</span>
        <span class="muted">${pct(m.drift_share)} of features drifted${isNum(m.threshold) ? " (dataset drift at " + pct(m.threshold) + ")" : ""}${m.rows ? " · " + fmt(m.rows, 0) + " rows" : ""}</span>`;
      document.getElementById(`drift-head-${i}`).innerHTML = name + verdict;
      m.features.forEach((f, j) => {
        const card = document.getElementById(`drift-${i}-${j}`);
        card.classList.toggle("drifted", f.drifted);
        card.querySelector(".fverdict").innerHTML = `<span class="badge ${f.drifted ? "drifted" : "ok"}">${f.drifted ? "drifted" : "stable"}</span>`;
        card.querySelector(".ftest").textContent = `${f.test || "test"} = ${fmt(f.value, 3)} (threshold ${fmt(f.threshold, 3)})`;
        const h = f.histogram;
        if (!h) {
          document.getElementById(`drift-chart-${i}-${j}`).innerHTML = `<div class="cerror">${esc(f.error || "no histogram")}</div>`;
          return;
        }
        const bar = (y, name, color) => ({ x: h.x, y, name, type: "bar", width: h.width || undefined,
          marker: { color, opacity: 0.65 }, hovertemplate: name + " %{y:.1%}<extra></extra>" });
        Plotly.react(`drift-chart-${i}-${j}`, [bar(h.reference, "reference", C.muted), bar(h.current, "current", f.drifted ? C.red : C.cyan)],
          baseLayout({ barmode: "overlay", bargap: h.kind === "numeric" ? 0 : 0.2, showlegend: false, hovermode: "closest",
            margin: { l: 34, r: 6, t: 4, b: 22 }, yaxis: { gridcolor: C.grid, tickformat: ".0%", rangemode: "tozero" },
            xaxis: { gridcolor: C.grid, type: h.kind === "numeric" ? "linear" : "category" } }), CONFIG);
      });
    });
  }

  function drawAlerts(d) {
    if (!setPanel("panel-alerts", d.alerts.status, d.alerts.error)) return;
    const rows = d.alerts.data.map((a) => `<tr><td><span class="badge ${esc(a.state)}">${esc(a.state)}</span></td>
      <td><b>${esc(a.rule)}</b>${a.severity ? ` <span class="muted">${esc(a.severity)}</span>` : ""}</td>
      <td>${isNum(a.value) ? fmt(a.value, 3) : esc(a.value)}</td><td class="muted">${ago(a.since)}</td><td>${esc(a.message)}</td></tr>`);
    document.querySelector("#table-alerts tbody").innerHTML = rows.join("") || `<tr><td colspan="5" class="muted">all quiet</td></tr>`;
  }

  function cameraState(c) {
    if (c.connected === false) return ["firing", "offline"];
    if (c.warming_up) return ["pending", "warming up"];
    if (isNum(c.lag_seconds) && c.lag_seconds > 1) return ["warn", "lagging"];
    return ["ok", "live"];
  }

  function drawCameras(d) {
    if (!setPanel("panel-cameras", d.cameras.status, d.cameras.error)) return;
    const cards = d.cameras.data.map((c) => {
      const [badge, label] = cameraState(c);
      const events = (c.events || []).slice(0, 4).map((e) => `<div class="event">
        ${e.snapshot_url ? `<img ${hasKey() ? "data-src" : "src"}="${esc(e.snapshot_url)}" alt="">` : ""}
        <span class="badge firing">${esc(e.label)}</span><span>${isNum(e.score) ? fmt(e.score, 2) : ""}</span>
        <span class="muted">${ago(e.time)}</span></div>`).join("");
      const counts = Object.entries(c.event_counts || {}).map(([k, n]) => `${esc(k)} ${fmt(n, 0)}`).join(" · ");
      return `<div class="camera"><div class="cname"><span>${esc(c.camera)}</span>
        <span class="badge ${badge}">${label}</span></div>
        <div class="kv"><span title="frames per second read / analysed">fps in / out</span><span>${fmt(c.input_fps, 1)} / ${fmt(c.processed_fps, 1)}</span>
        <span title="frames replaced by a newer one before analysis">dropped</span><span>${fmt(c.dropped, 0)}</span>
        <span title="how far verdicts trail the newest frame">lag</span><span>${ms(c.lag_seconds)}</span>
        <span title="capture to verdict latency">p50 / p99</span><span>${ms(c.latency_p50)} / ${ms(c.latency_p99)}</span></div>
        ${c.last_error ? `<div class="cerror">${esc(c.last_error)}</div>` : ""}
        <div class="events">${counts ? `<div class="muted">${counts}</div>` : ""}${events || '<span class="muted">no anomalies</span>'}</div></div>`;
    });
    document.getElementById("cameras").innerHTML = cards.join("") || `<div class="muted">no cameras</div>`;
    loadImages(document.getElementById("cameras"));
  }

  function setStatus(live, text) {
    document.getElementById("status-dot").className = "dot " + (live ? "live" : "stale");
    document.getElementById("status-text").textContent = text;
  }

  async function refresh() {
    try {
      if (AUTH && !sessionStorage.getItem(KEY_ITEM)) {
        askForKey("");
        throw new Error("waiting for an API key");
      }
      const response = await fetch("api/summary", { cache: "no-store", headers: authHeaders() });
      if (response.status === 401 || response.status === 403) {
        sessionStorage.removeItem(KEY_ITEM);
        askForKey(response.status === 401 ? "That key was not accepted." : "That key lacks the read scope.");
        throw new Error("HTTP " + response.status);
      }
      if (!response.ok) throw new Error("HTTP " + response.status);
      const d = await response.json();
      drawHeadline(d);
      drawMetrics(d.metrics, d.window_seconds);
      drawModels(d);
      drawDrift(d);
      drawAlerts(d);
      drawCameras(d);
      state.last = d;
      state.updates += 1;
      state.failures = 0;
      setStatus(true, "live · updated " + new Date(d.time * 1000).toLocaleTimeString());
      document.getElementById("foot-window").textContent = "headline numbers over the last " + Math.round(d.window_seconds) + " s";
    } catch (err) {
      state.failures += 1;
      setStatus(false, "no data: " + err.message);
    } finally {
      state.timer = setTimeout(refresh, REFRESH_MS);
    }
  }
  refresh();
})();
