// The operator console: polls the replica's /v1/console endpoints, follows the service's ownership
// events (server-sent events) and draws two small SVG charts. No library, no CDN.
"use strict";

const API = "v1/console";
const COLORS = ["#2f6fdf", "#e07b24", "#2a9d5b", "#b548c6", "#c23b3b", "#178a94", "#8a6d1f", "#5f6ad6"];
const SAMPLES = 60; // seconds of calls per second kept for the chart
const $ = (id) => document.getElementById(id);
const svgNS = "http://www.w3.org/2000/svg";

let service = null;
let feed = null;
let lastCalls = null;
const rates = new Map(); // "service/instance" -> [calls per second, ...]

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(svgNS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

async function getJSON(path) {
  const resp = await fetch(path, { headers: { accept: "application/json" } });
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const err = new Error((body.error && body.error.message) || resp.statusText);
    err.status = resp.status;
    throw err;
  }
  return body;
}

function setStatus(text) { $("status").textContent = text; }

async function loadServices() {
  try {
    const data = await getJSON(`${API}/services`);
    $("namespace").textContent = `namespace ${data.namespace}`;
    const select = $("service");
    const known = [...select.options].map((o) => o.value);
    if (known.join("\n") !== data.services.join("\n")) {
      select.replaceChildren(...data.services.map((name) => new Option(name, name)));
      const wanted = new URLSearchParams(location.search).get("service");
      const pick = [wanted, service].find((s) => s && data.services.includes(s)) || data.services[0] || null;
      if (pick) select.value = pick;
      if (pick !== service) chooseService(pick);
    }
    if (!data.services.length) setStatus("no service registered yet");
  } catch (err) {
    setStatus(`cannot list services: ${err.message}`);
  }
}

function chooseService(name) {
  service = name;
  $("events").replaceChildren();
  $("found").hidden = true;
  $("not-found").hidden = true;
  if (feed) feed.close();
  feed = null;
  if (!name) return;
  const url = new URL(location.href);
  url.searchParams.set("service", name);
  history.replaceState(null, "", url);
  follow(name);
  loadService();
}

async function loadService() {
  if (!service) return;
  const name = service;
  try {
    const data = await getJSON(`${API}/services/${encodeURIComponent(name)}`);
    if (name !== service) return;
    renderInstances(data.instances);
    renderSpread(data);
    setStatus(`updated ${new Date().toLocaleTimeString()}`);
  } catch (err) {
    setStatus(`cannot read ${name}: ${err.message}`);
  }
}

function renderInstances(instances) {
  $("instance-count").textContent = `(${instances.length})`;
  $("no-instances").hidden = instances.length > 0;
  const rows = instances.map((inst) => {
    const tr = el("tr");
    tr.dataset.instance = inst.instance_id;
    tr.append(el("td", inst.instance_id));
    const lease = el("td");
    const share = inst.ttl > 0 ? Math.min(1, inst.lease_left / inst.ttl) : 0;
    const box = el("div", undefined, share < 0.34 ? "lease low" : "lease");
    const bar = el("span", undefined, "bar");
    const fill = el("i");
    fill.style.width = `${Math.round(share * 100)}%`;
    bar.append(fill);
    box.append(bar, el("span", `${inst.lease_left.toFixed(1)} s of ${inst.ttl} s`));
    lease.append(box);
    tr.append(lease);
    const vol = el("td");
    if (inst.volunteer) vol.append(el("span", `${inst.volunteer.placement} (limit ${inst.volunteer.limit})`, "tag"));
    else vol.textContent = "-";
    tr.append(vol, el("td", String(inst.owned), "num"));
    return tr;
  });
  $("instances").tBodies[0].replaceChildren(...rows);
}

function renderSpread(data) {
  const parts = data.spread;
  const total = parts.reduce((sum, p) => sum + p.resources, 0);
  $("spread-summary").textContent =
    `(${total} resources, ${data.partitions} partition${data.partitions === 1 ? "" : "s"}` +
    `${data.cluster ? ", Redis Cluster" : ""})`;
  const chart = $("spread-chart");
  const max = Math.max(1, ...parts.map((p) => p.resources));
  const width = 400 / Math.max(1, parts.length);
  const nodes = [];
  parts.forEach((p, i) => {
    const h = Math.round((p.resources / max) * 70);
    const bar = svg("rect", { x: i * width + 1, y: 88 - h, width: Math.max(1, width - 2), height: h, fill: COLORS[0] });
    bar.append(svg("title", {}, `partition ${p.partition} (${p.master}): ${p.resources}`));
    nodes.push(bar);
    if (parts.length <= 32) {
      const mid = i * width + width / 2;
      nodes.push(svg("text", { x: mid, y: 98, "text-anchor": "middle" }, `p${p.partition}`));
      nodes.push(svg("text", { x: mid, y: 84 - h, "text-anchor": "middle" }, String(p.resources)));
    }
  });
  chart.replaceChildren(...nodes);
  const rows = data.masters.map((m) => {
    const tr = el("tr");
    tr.append(el("td", m.master), el("td", String(m.partitions), "num"), el("td", String(m.resources), "num"));
    return tr;
  });
  $("masters").tBodies[0].replaceChildren(...rows);
}

async function findResource(event) {
  event.preventDefault();
  const id = $("resource-id").value.trim();
  if (!service || !id) return;
  const found = $("found");
  const missing = $("not-found");
  try {
    const r = await getJSON(`${API}/services/${encodeURIComponent(service)}/resources/${encodeURIComponent(id)}`);
    const rows = [
      ["resource", r.resource_id],
      ["owner", r.owner_instance_id],
      ["fencing token", String(r.fencing_token)],
      ["registered", new Date(r.registered_at).toLocaleString()],
      ["partition", `${r.partition} on ${r.master}`],
      ["metadata", JSON.stringify(r.metadata)],
    ];
    found.replaceChildren(...rows.flatMap(([k, v]) => {
      const dd = el("dd", v);
      dd.dataset.field = k;
      return [el("dt", k), dd];
    }));
    found.hidden = false;
    missing.hidden = true;
  } catch (err) {
    found.hidden = true;
    missing.textContent = err.status === 404 ? `Nobody owns ${id} in ${service}.` : err.message;
    missing.hidden = false;
  }
}

function follow(name) {
  const source = new EventSource(`${API}/services/${encodeURIComponent(name)}/events`);
  feed = source;
  source.addEventListener("open", () => { $("feed-state").textContent = "(live)"; });
  source.addEventListener("error", () => { $("feed-state").textContent = "(reconnecting)"; });
  source.addEventListener("feed-error", (msg) => {
    $("feed-state").textContent = `(error: ${JSON.parse(msg.data).message || "unknown"})`;
  });
  source.addEventListener("ownership", (msg) => {
    if (source !== feed) return;
    const e = JSON.parse(msg.data);
    const li = el("li");
    li.dataset.type = e.type;
    li.append(el("time", new Date(e.ts_ms || Date.now()).toLocaleTimeString()), el("span", e.type, "kind"));
    const ids = e.resource_ids.length ? ` ${e.resource_ids.slice(0, 5).join(", ")}${e.resource_ids.length > 5 ? ` +${e.resource_ids.length - 5}` : ""}` : "";
    li.append(el("span", `${e.instance_id}${ids}${e.reason ? ` (${e.reason})` : ""}`));
    const list = $("events");
    list.prepend(li);
    while (list.children.length > 100) list.lastElementChild.remove();
  });
}

async function loadCalls() {
  try {
    const data = await getJSON(`${API}/calls`);
    const totals = new Map(data.calls.map((c) => [`${c.service_name}/${c.instance_id}`, c.total]));
    if (lastCalls) {
      const dt = Math.max(0.001, data.time - lastCalls.time);
      for (const key of new Set([...totals.keys(), ...rates.keys()])) {
        const series = rates.get(key) || [];
        series.push(Math.max(0, ((totals.get(key) || 0) - (lastCalls.totals.get(key) || 0)) / dt));
        while (series.length > SAMPLES) series.shift();
        rates.set(key, series);
      }
    }
    lastCalls = { time: data.time, totals };
    renderCalls();
  } catch (err) {
    setStatus(`cannot read calls: ${err.message}`);
  }
}

function renderCalls() {
  const chart = $("calls-chart");
  const keys = [...rates.keys()].filter((k) => !service || k.startsWith(`${service}/`)).sort();
  const max = Math.max(1, ...keys.flatMap((k) => rates.get(k)));
  const nodes = [svg("line", { x1: 30, y1: 125, x2: 400, y2: 125, stroke: "#e3e6ea" })];
  nodes.push(svg("text", { x: 0, y: 12 }, max.toFixed(max < 10 ? 1 : 0)), svg("text", { x: 0, y: 125 }, "0"));
  const legend = [];
  keys.forEach((key, i) => {
    const color = COLORS[i % COLORS.length];
    const series = rates.get(key);
    const step = 370 / (SAMPLES - 1);
    const offset = 30 + (SAMPLES - series.length) * step;
    const points = series.map((v, j) => `${(offset + j * step).toFixed(1)},${(125 - (v / max) * 115).toFixed(1)}`);
    nodes.push(svg("polyline", { points: points.join(" "), fill: "none", stroke: color, "stroke-width": 1.5 }));
    const item = el("li");
    const swatch = el("i");
    swatch.style.background = color;
    const last = series.length ? series[series.length - 1] : 0;
    item.append(swatch, `${key.slice(key.indexOf("/") + 1)} ${last.toFixed(1)}/s`);
    legend.push(item);
  });
  chart.replaceChildren(...nodes);
  $("calls-legend").replaceChildren(...legend);
}

$("service").addEventListener("change", (e) => chooseService(e.target.value));
$("search").addEventListener("submit", findResource);
loadServices();
loadCalls();
setInterval(loadServices, 5000);
setInterval(loadService, 1000);
setInterval(loadCalls, 1000);
