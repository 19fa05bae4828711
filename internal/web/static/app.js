// npumesh dashboard: polls /api/v1/nodes and /api/v1/stats every 2 s and
// draws them. Plain DOM: every piece of data goes through textContent or
// setAttribute; no HTML is ever parsed from strings (web_test.go checks).
"use strict";

(function () {
  const POLL_MS = 2000;
  const TIMEOUT_MS = 8000;
  const HISTORY = 150; // samples kept for the charts: 5 minutes at 2 s
  const KEY_STORE = "npumesh.apiKey";
  const SVG = "http://www.w3.org/2000/svg";

  const state = {
    key: readKey(),
    waitingForKey: false,
    timer: 0,
    history: [], // {t, rps, tps, ttft50, ttft95, lat50, lat95}
    prev: null, // previous stats, for counter deltas
  };

  // ---- small DOM helpers -------------------------------------------------

  function $(id) { return document.getElementById(id); }

  // el builds an element; strings among the children become text nodes.
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === undefined || v === null || v === false) continue;
        if (k === "class") e.className = v;
        else if (k === "text") e.textContent = v;
        else e.setAttribute(k, v === true ? "" : String(v));
      }
    }
    for (const c of children) {
      if (c === undefined || c === null || c === false) continue;
      e.append(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
    }
    return e;
  }

  function svg(tag, attrs) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    return e;
  }

  function readKey() {
    try { return localStorage.getItem(KEY_STORE) || ""; } catch (_) { return ""; }
  }

  function storeKey(k) {
    try {
      if (k) localStorage.setItem(KEY_STORE, k); else localStorage.removeItem(KEY_STORE);
    } catch (_) { /* storage disabled: the key lives for this page only */ }
  }

  // ---- formatting ----------------------------------------------------------

  function num(v, digits) {
    if (typeof v !== "number" || !isFinite(v)) return "–";
    if (digits === undefined) digits = Math.abs(v) >= 100 ? 0 : Math.abs(v) >= 10 ? 1 : 2;
    return v.toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: 0 });
  }

  function count(v) {
    if (typeof v !== "number" || !isFinite(v)) return "–";
    return Math.round(v).toLocaleString();
  }

  function ms(v) {
    if (typeof v !== "number" || !isFinite(v) || v <= 0) return "–";
    if (v >= 1000) return num(v / 1000, 2) + " s";
    return num(v, v >= 100 ? 0 : 1) + " ms";
  }

  function bytes(v) {
    if (typeof v !== "number" || v <= 0) return "";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return num(v, v >= 10 ? 0 : 1) + " " + units[i];
  }

  function ago(seconds) {
    if (typeof seconds !== "number" || !isFinite(seconds)) return "–";
    if (seconds < 0) seconds = 0;
    if (seconds < 10) return num(seconds, 1) + " s ago";
    if (seconds < 90) return Math.round(seconds) + " s ago";
    if (seconds < 5400) return Math.round(seconds / 60) + " min ago";
    return Math.round(seconds / 3600) + " h ago";
  }

  function duration(seconds) {
    if (typeof seconds !== "number" || !isFinite(seconds)) return "–";
    const s = Math.floor(seconds);
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
    return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
  }

  // secondsBetween is the age of an RFC 3339 time at `now` (ms since epoch).
  function secondsBetween(rfc3339, now) {
    const t = Date.parse(rfc3339);
    if (isNaN(t)) return NaN;
    return (now - t) / 1000;
  }

  function str(v) {
    if (v === undefined || v === null) return "";
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  }

  // ---- fetching ------------------------------------------------------------

  class AuthError extends Error {}

  async function getJSON(path) {
    const headers = { "Accept": "application/json" };
    if (state.key) headers["Authorization"] = "Bearer " + state.key;
    const ctl = new AbortController();
    const t = setTimeout(() => ctl.abort(), TIMEOUT_MS);
    let resp;
    try {
      resp = await fetch(path, { headers, cache: "no-store", signal: ctl.signal });
    } finally {
      clearTimeout(t);
    }
    if (resp.status === 401) throw new AuthError("the API key was refused");
    if (!resp.ok) {
      let msg = resp.status + " " + resp.statusText;
      try {
        const body = await resp.json();
        if (body && body.error && body.error.message) msg += ": " + body.error.message;
      } catch (_) { /* not JSON */ }
      throw new Error(path + ": " + msg);
    }
    return resp.json();
  }

  async function poll() {
    state.timer = 0;
    if (state.waitingForKey) return;
    try {
      const [cluster, stats] = await Promise.all([getJSON("/api/v1/nodes"), getJSON("/api/v1/stats")]);
      render(cluster || {}, stats || {});
      setConn("ok", "live");
      banner("");
    } catch (err) {
      if (err instanceof AuthError) {
        askForKey(state.key ? "The stored API key was refused. Enter a valid one." : "");
        setConn("auth", "API key needed");
        return;
      }
      const what = err && err.name === "AbortError" ? "the coordinator did not answer in time" : (err && err.message) || String(err);
      setConn("down", "unreachable");
      banner("Cannot load the cluster view (" + what + "). Retrying every " + POLL_MS / 1000 + " s.");
    }
    schedule();
  }

  function schedule() {
    if (!state.timer && !state.waitingForKey) state.timer = setTimeout(poll, POLL_MS);
  }

  function setConn(kind, text) {
    const c = $("conn");
    c.dataset.state = kind;
    $("conn-text").textContent = text;
    $("forget-key").hidden = !state.key;
  }

  function banner(text) {
    const b = $("banner");
    b.textContent = text;
    b.hidden = !text;
  }

  // ---- API key prompt --------------------------------------------------------

  function askForKey(why) {
    state.waitingForKey = true;
    const d = $("key-dialog");
    if (why) $("key-why").textContent = why;
    if (!d.open) {
      if (typeof d.showModal === "function") d.showModal(); else d.setAttribute("open", "");
    }
    $("key-input").focus();
  }

  function onKeySubmit(ev) {
    ev.preventDefault();
    const k = $("key-input").value.trim();
    if (!k) return;
    state.key = k;
    storeKey(k);
    $("key-input").value = "";
    const d = $("key-dialog");
    if (typeof d.close === "function" && d.open) d.close(); else d.removeAttribute("open");
    state.waitingForKey = false;
    setConn("connecting", "connecting…");
    poll();
  }

  function forgetKey() {
    state.key = "";
    storeKey("");
    $("forget-key").hidden = true;
    if (state.timer) { clearTimeout(state.timer); state.timer = 0; }
    poll();
  }

  // ---- rendering -------------------------------------------------------------

  function render(cluster, stats) {
    const now = Date.parse(stats.time) || Date.now(); // the coordinator's clock
    const nodes = Array.isArray(cluster.nodes) ? cluster.nodes : [];
    const departed = Array.isArray(cluster.departed) ? cluster.departed : [];
    record(stats, now);
    renderTiles(stats, nodes, departed);
    renderCharts();
    renderNodes(nodes, departed, now);
    renderModels(nodes, stats);
    renderExtra(cluster);
    $("updated").textContent = "Updated " + new Date().toLocaleTimeString() + " · refreshes every " + POLL_MS / 1000 + " s";
  }

  function record(s, now) {
    const p = state.prev;
    let rps = NaN, tps = NaN;
    if (p) {
      const dt = (now - p.now) / 1000;
      const dr = s.requests_total - p.requests_total;
      const dtok = s.completion_tokens_total - p.completion_tokens_total;
      if (dt > 0 && dr >= 0 && dtok >= 0) { rps = dr / dt; tps = dtok / dt; }
    }
    state.prev = { now, requests_total: s.requests_total, completion_tokens_total: s.completion_tokens_total };
    if (!p) { rps = s.requests_per_second; tps = s.completion_tokens_per_second; }
    const pos = (v) => (v > 0 ? v : NaN); // 0 ms means "no request in the window": a gap, not a dip
    state.history.push({
      t: now, rps, tps,
      ttft50: pos(s.ttft_p50_ms), ttft95: pos(s.ttft_p95_ms),
      lat50: pos(s.latency_p50_ms), lat95: pos(s.latency_p95_ms),
    });
    while (state.history.length > HISTORY) state.history.shift();
  }

  function tile(id, label, value, sub, kind) {
    return el("div", { class: "card tile" + (kind ? " " + kind : ""), "data-tile": id },
      el("div", { class: "tile-label" }, label),
      el("div", { class: "tile-value" }, value),
      sub ? el("div", { class: "tile-sub" }, sub) : null);
  }

  function renderTiles(s, nodes, departed) {
    const ready = nodes.filter((n) => n.state !== "draining").length;
    const draining = nodes.length - ready;
    const last = state.history[state.history.length - 1] || {};
    const nodeSub = [draining ? draining + " draining" : "", departed.length ? departed.length + " down" : ""].filter(Boolean).join(" · ") || "all healthy";
    $("tiles").replaceChildren(
      tile("nodes", "Nodes ready", count(ready), nodeSub, departed.length ? "warn" : ""),
      tile("rps", "Requests / s", num(last.rps), "30 s avg " + num(s.requests_per_second)),
      tile("tps", "Tokens / s", num(last.tps), "30 s avg " + num(s.completion_tokens_per_second)),
      tile("ttft", "TTFT p50", ms(s.ttft_p50_ms), "p95 " + ms(s.ttft_p95_ms)),
      tile("latency", "Latency p50", ms(s.latency_p50_ms), "p95 " + ms(s.latency_p95_ms)),
      tile("in-flight", "In flight", count(s.in_flight), "across the cluster"),
      tile("requests", "Requests", count(s.requests_total), count(s.errors_total) + (s.errors_total === 1 ? " error" : " errors"), s.errors_total > 0 ? "warn" : ""),
      tile("tokens", "Tokens generated", count(s.completion_tokens_total), "up " + duration(s.uptime_seconds)),
    );
  }

  // ---- charts (hand-written SVG) ----------------------------------------------

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }

  // drawChart draws series of history fields as lines on a time axis that
  // ends now.
  function drawChart(node, series, unit) {
    // Drawn in CSS pixels of the element's current size, so that text and
    // strokes are never stretched; redrawn on resize.
    const W = Math.max(240, Math.round(node.clientWidth || 600));
    const H = Math.max(120, Math.round(node.clientHeight || 170));
    const L = 52, R = 10, T = 10, B = 22;
    node.setAttribute("viewBox", "0 0 " + W + " " + H);
    const h = state.history;
    const end = h.length ? h[h.length - 1].t : Date.now();
    // The axis grows with the history, from one minute up to five, so a
    // page that was just opened is not a sliver at the right edge.
    const first = h.length ? h[0].t : end;
    const span = Math.min(HISTORY * POLL_MS, Math.max(60000, end - first));
    let max = 0;
    for (const p of h) for (const s of series) { const v = p[s.key]; if (v > max && isFinite(v)) max = v; }
    max = niceMax(max);
    const x = (t) => L + (W - L - R) * (1 - (end - t) / span);
    const y = (v) => T + (H - T - B) * (1 - v / max);
    const parts = [];
    for (let i = 0; i <= 4; i++) {
      const v = (max * i) / 4;
      parts.push(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "gridline" }));
      const lab = svg("text", { x: L - 6, y: y(v) + 4, class: "axis", "text-anchor": "end" });
      lab.textContent = num(v) + (i === 4 && unit ? " " + unit : "");
      parts.push(lab);
    }
    const back = (ms) => "−" + (ms >= 60000 ? num(ms / 60000, 1) + " min" : Math.round(ms / 1000) + " s");
    for (const [frac, text] of [[0, back(span)], [0.5, back(span / 2)], [1, "now"]]) {
      const lab = svg("text", { x: L + (W - L - R) * frac, y: H - 5, class: "axis", "text-anchor": frac === 0 ? "start" : frac === 1 ? "end" : "middle" });
      lab.textContent = text;
      parts.push(lab);
    }
    for (const s of series) {
      let d = "";
      let pen = false;
      let lastX = 0, lastY = 0, points = 0;
      for (const p of h) {
        const v = p[s.key];
        if (typeof v !== "number" || !isFinite(v)) { pen = false; continue; }
        lastX = x(p.t); lastY = y(Math.max(0, v));
        d += (pen ? "L" : "M") + lastX.toFixed(1) + " " + lastY.toFixed(1);
        pen = true;
        points++;
      }
      if (d) parts.push(svg("path", { d, class: "line " + s.cls }));
      if (points) parts.push(svg("circle", { cx: lastX.toFixed(1), cy: lastY.toFixed(1), r: 3, class: "dot " + s.cls }));
    }
    node.replaceChildren(...parts);
  }

  function renderCharts() {
    drawChart($("chart-rps"), [{ key: "rps", label: "requests/s", cls: "s1" }], "");
    drawChart($("chart-tps"), [{ key: "tps", label: "tokens/s", cls: "s2" }], "");
    drawChart($("chart-lat"), [
      { key: "ttft50", label: "TTFT p50", cls: "s1" },
      { key: "ttft95", label: "TTFT p95", cls: "s3" },
      { key: "lat50", label: "latency p50", cls: "s2" },
      { key: "lat95", label: "latency p95", cls: "s4" },
    ], "ms");
  }

  // ---- nodes ----------------------------------------------------------------

  function kv(label, value) {
    if (value === "" || value === undefined || value === null) return null;
    return el("div", { class: "kv" }, el("dt", null, label), el("dd", null, value));
  }

  function accelText(a) {
    if (typeof a === "string") return a;
    if (!a || typeof a !== "object") return str(a);
    const name = a.product || a.name || a.kind || "accelerator";
    const extra = [a.kind && a.kind !== name ? a.kind.toUpperCase() : "", a.driver || "", a.accessible === false ? "not accessible" : ""].filter(Boolean);
    return extra.length ? name + " (" + extra.join(", ") + ")" : name;
  }

  function nodeCard(n, now) {
    const st = n.state === "draining" ? "draining" : "ready";
    const seen = secondsBetween(n.last_seen, now);
    const stale = seen > 3;
    const accels = Array.isArray(n.accelerators) ? n.accelerators : [];
    const models = Array.isArray(n.models) ? n.models : [];
    const hw = [n.os && n.arch ? n.os + "/" + n.arch : n.arch || n.os || "", n.cpu_cores ? n.cpu_cores + " cores" : "", bytes(n.memory_total_bytes)].filter(Boolean).join(" · ");
    const temp = n.telemetry && n.telemetry.max_temperature_celsius > 0 ? num(n.telemetry.max_temperature_celsius, 0) + " °C" + (n.telemetry.throttling ? " (throttling)" : "") : "";
    return el("article", { class: "card node " + st + (stale ? " stale" : ""), "data-node": n.name, "data-state": st },
      el("header", null,
        el("h3", { title: n.address || "" }, n.name || "(unnamed)"),
        el("span", { class: "badge " + st }, st === "draining" ? "DRAINING" : stale ? "STALE" : "READY")),
      el("div", { class: "hw" }, hw),
      n.cpu_model ? el("div", { class: "cpu", title: n.cpu_model }, n.cpu_model) : null,
      accels.length ? el("ul", { class: "accels", "aria-label": "Accelerators" }, ...accels.map((a) => el("li", null, accelText(a)))) : null,
      el("div", { class: "load" },
        el("div", { class: "bar" }, el("span")),
        el("span", { class: "load-text" }, count(n.in_flight) + " in flight" + (n.queue_depth ? " · " + count(n.queue_depth) + " queued" : ""))),
      el("dl", null,
        kv("Served", count(n.served) + (n.failed ? " · " + count(n.failed) + " failed" : "")),
        n.node_served_total !== undefined && n.node_served_total !== n.served ? kv("Node total", count(n.node_served_total)) : null,
        kv("Last seen", ago(seen)),
        kv("Temperature", temp),
        kv("Version", n.version || "")),
      el("div", { class: "chips", "aria-label": "Models" }, ...(models.length ? models.map((m) => el("span", { class: "chip" }, m)) : [el("span", { class: "muted" }, "no model")])),
    );
  }

  // setBar sizes a card's load bar against its core count. It goes through
  // the CSSOM: the page's CSP forbids style attributes in markup.
  function setBar(card, n) {
    const load = (n.in_flight || 0) + (n.queue_depth || 0);
    const cap = Math.max(4, n.cpu_cores || 0);
    const span = card.querySelector(".bar > span");
    if (span) span.style.width = Math.min(100, (100 * load) / cap).toFixed(0) + "%";
  }

  function departedCard(d, now) {
    const left = secondsBetween(d.left, now);
    return el("article", { class: "card node down", "data-node": d.name, "data-state": "down" },
      el("header", null,
        el("h3", null, d.name || "(unnamed)"),
        el("span", { class: "badge down" }, "DOWN")),
      el("div", { class: "hw" }, d.arch || ""),
      el("p", { class: "reason" }, d.reason || "left the cluster"),
      el("dl", null, kv("Left", ago(left))),
    );
  }

  function renderNodes(nodes, departed, now) {
    const box = $("nodes");
    const cards = [];
    const sorted = nodes.slice().sort((a, b) => String(a.name).localeCompare(String(b.name), undefined, { numeric: true }));
    for (const n of sorted) {
      const c = nodeCard(n, now);
      setBar(c, n);
      cards.push(c);
    }
    for (const d of departed) cards.push(departedCard(d, now));
    if (!cards.length) cards.push(el("p", { class: "empty" }, "No node has registered yet. Start one with: npumesh node --coordinator ADDR …"));
    box.replaceChildren(...cards);
    $("nodes-count").textContent = nodes.length + " live" + (departed.length ? " · " + departed.length + " down" : "");
    document.title = "npumesh · " + nodes.length + " node" + (nodes.length === 1 ? "" : "s") + (departed.length ? " · " + departed.length + " down" : "");
  }

  // ---- models and placement -----------------------------------------------------

  function renderModels(nodes, stats) {
    const where = new Map();
    for (const id of Array.isArray(stats.models) ? stats.models : []) where.set(id, []);
    for (const n of nodes) {
      for (const m of Array.isArray(n.models) ? n.models : []) {
        if (!where.has(m)) where.set(m, []);
        where.get(m).push(n);
      }
    }
    const rows = [];
    for (const [id, ns] of [...where.entries()].sort((a, b) => a[0].localeCompare(b[0]))) {
      const ready = ns.filter((n) => n.state !== "draining").length;
      rows.push(el("tr", { "data-model": id },
        el("td", null, el("span", { class: "chip" }, id)),
        el("td", null, ns.map((n) => n.name).sort().join(", ") || "–"),
        el("td", null, ready + " of " + ns.length)));
    }
    if (!rows.length) rows.push(el("tr", null, el("td", { colspan: 3, class: "muted" }, "No model is loaded yet.")));
    $("models").tBodies[0].replaceChildren(...rows);
  }

  // renderExtra shows any other list the cluster view carries (placement
  // plans, transfers, …) as a plain table, so new API fields appear here
  // before the page learns to draw them nicely.
  function renderExtra(cluster) {
    const out = [];
    for (const [key, val] of Object.entries(cluster)) {
      if (key === "nodes" || key === "departed" || !Array.isArray(val) || !val.length) continue;
      const cols = [];
      for (const row of val) {
        if (row && typeof row === "object" && !Array.isArray(row)) {
          for (const k of Object.keys(row)) if (!cols.includes(k)) cols.push(k);
        }
      }
      const title = key.replace(/_/g, " ");
      const head = cols.length ? el("tr", null, ...cols.map((c) => el("th", null, c.replace(/_/g, " ")))) : el("tr", null, el("th", null, title));
      const body = val.map((row) => cols.length && row && typeof row === "object"
        ? el("tr", null, ...cols.map((c) => el("td", null, str(row[c]))))
        : el("tr", null, el("td", null, str(row))));
      out.push(el("h3", { class: "sub" }, title.charAt(0).toUpperCase() + title.slice(1)),
        el("div", { class: "card table-wrap" }, el("table", null, el("thead", null, head), el("tbody", null, ...body))));
    }
    $("extra").replaceChildren(...out);
  }

  // ---- start -----------------------------------------------------------------

  function start() {
    $("key-form").addEventListener("submit", onKeySubmit);
    $("forget-key").addEventListener("click", forgetKey);
    $("key-dialog").addEventListener("cancel", (ev) => ev.preventDefault()); // nothing to show without a key
    $("forget-key").hidden = !state.key;
    let resizing = 0;
    window.addEventListener("resize", () => {
      cancelAnimationFrame(resizing);
      resizing = requestAnimationFrame(renderCharts);
    });
    renderCharts();
    poll();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
