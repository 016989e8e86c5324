/* inlet console (SPEC §7.1).  Plain JavaScript, no framework, no dependency.
 *
 * Everything comes from inlet's REST API (same origin, the session cookie set by /ui/login); a
 * change sends the session's CSRF token as X-CSRF-Token.  Everything a message carries is hostile:
 * this file never writes HTML from data (no innerHTML anywhere), only elements and textContent;
 * a message's HTML body is shown in a sandboxed frame served under its own CSP (/ui/html/...). */
"use strict";

const S = { csrf: "", domains: [], timers: [], gen: 0 };

/* ---- DOM helpers ------------------------------------------------------------------------- */

function h(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "on") for (const [ev, fn] of Object.entries(v)) e.addEventListener(ev, fn);
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const k of kids.flat()) {
    if (k === null || k === undefined || k === false) continue;
    e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return e;
}
const $ = (id) => document.getElementById(id);
let uid = 0;
function field(label, input, hint) {
  const id = input.id || "f" + (++uid);
  input.id = id;
  return h("div", {}, h("label", { for: id }, label), input, hint ? h("div", { class: "muted" }, hint) : null);
}
function table(head, rows) {
  return h("div", { class: "scroll" }, h("table", {},
    h("thead", {}, h("tr", {}, head.map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, rows)));
}
function toast(msg) {
  const t = $("toast");
  t.textContent = msg;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.textContent = ""; }, 4000);
}
function when(ts) {
  if (ts === null || ts === undefined || ts === "") return "";
  const d = typeof ts === "number" ? new Date(ts * 1000) : new Date(ts);
  return isNaN(d) ? String(ts) : d.toLocaleString();
}
function badge(ev) { return h("span", { class: "badge " + ev }, ev); }
function every(ms, fn) { S.timers.push(setInterval(fn, ms)); }
function domainOf(addr) { const i = String(addr || "").lastIndexOf("@"); return i < 0 ? "" : addr.slice(i + 1).toLowerCase(); }
function exactDomains() { return S.domains.filter((d) => !d.includes("*")); }
function path(url) { try { const u = new URL(url, location.href); return u.pathname + u.search; } catch (e) { return url; } }
function msgLink(iid, domain, label) {
  return h("a", { href: "#/message/" + encodeURIComponent(iid) + "?d=" + encodeURIComponent(domain) }, label);
}

/* ---- the API ----------------------------------------------------------------------------- */

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, url, body) {
  const headers = { "X-Inlet-Console": "1", "Accept": "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = S.csrf;
  let data;
  if (body instanceof FormData) data = body;
  else if (body) {
    data = new URLSearchParams();
    for (const [k, v] of Object.entries(body)) for (const x of [].concat(v)) data.append(k, x);
  }
  const r = await fetch(url, { method, headers, body: data, credentials: "same-origin", cache: "no-store" });
  const text = await r.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (e) { json = null; }
  if (r.status === 401 && url !== "/ui/login") { showLogin(json && json.message); throw new ApiError(401, "Signed out"); }
  if (!r.ok) throw new ApiError(r.status, (json && json.message) || r.status + " " + r.statusText);
  return json !== null ? json : text;
}
const apiGet = (url) => api("GET", url);

/* ---- login ------------------------------------------------------------------------------- */

function showLogin(why) {
  stopTimers();
  $("nav").hidden = true;
  $("view").replaceChildren();
  $("login").hidden = false;
  $("login-error").textContent = why && why !== "Invalid credentials" ? why : "";
  $("login-key").focus();
}

async function login(ev) {
  ev.preventDefault();
  $("login-error").textContent = "";
  try {
    const s = await api("POST", "/ui/login", { key: $("login-key").value });
    $("login-key").value = "";
    started(s);
  } catch (e) {
    $("login-error").textContent = e.message;
  }
}

function started(s) {
  S.csrf = s.csrf;
  S.domains = s.domains || [];
  $("login").hidden = true;
  $("nav").hidden = false;
  route();
}

async function logout() {
  try { await api("POST", "/ui/logout"); } catch (e) { /* signed out either way */ }
  S.csrf = "";
  showLogin("Signed out.");
}

/* ---- router ------------------------------------------------------------------------------ */

function stopTimers() {
  S.timers.forEach(clearInterval);
  S.timers = [];
  S.gen++;
}

const pages = {};

function route() {
  if (!S.csrf) return;
  stopTimers();
  const hash = location.hash.replace(/^#\/?/, "") || "overview";
  const [p, query] = hash.split("?");
  const [name, ...rest] = p.split("/");
  const params = new URLSearchParams(query || "");
  const page = pages[name] || pages.overview;
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.getAttribute("href") === "#/" + name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const view = $("view");
  view.replaceChildren();
  const gen = S.gen;
  Promise.resolve(page(view, rest.map(decodeURIComponent), params, gen)).catch((e) => {
    if (e.status !== 401) view.append(h("p", { class: "error", role: "alert" }, e.message));
  });
  $("main").focus({ preventScroll: true });
}

/* ---- overview ---------------------------------------------------------------------------- */

const SERIES = ["accepted", "routed", "delivered", "failed", "stored"];
const HOURS = 3;
const OVERVIEW_PAGES = 20; /* pages of 300 events read per domain for the history */

function barChart(title, cls, values, t0) {
  const max = Math.max(1, ...values);
  const n = values.length, total = values.reduce((a, b) => a + b, 0);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${n} 100`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `${title}: ${total} in the last ${HOURS} hours, at most ${max} a minute`);
  values.forEach((v, i) => {
    if (!v) return;
    const r = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    const ht = (v / max) * 96;
    r.setAttribute("x", i); r.setAttribute("width", 0.9);
    r.setAttribute("y", 100 - ht); r.setAttribute("height", ht);
    r.setAttribute("fill", `var(--c-${cls})`);
    svg.append(r);
  });
  return h("div", { class: "chart card" },
    h("h3", {}, h("span", {}, title), h("span", { class: "muted" }, `${total} · max ${max}/min`)),
    svg,
    h("div", { class: "axis" }, h("span", {}, new Date(t0 * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })),
      h("span", {}, "now")));
}

function parseMetrics(text) {
  const m = {};
  for (const line of String(text).split("\n")) {
    const x = line.match(/^([a-z_]+)(\{[^}]*\})?\s+([-0-9.eE+]+|NaN)$/);
    if (x && !x[2]) m[x[1]] = Number(x[3]);
  }
  return m;
}

pages.overview = async (view, _a, _p, gen) => {
  view.append(h("h1", {}, "Overview"));
  const queue = h("div", { class: "stats" });
  const charts = h("div", { class: "charts" });
  const note = h("p", { class: "muted", "aria-live": "polite" }, "Reading the last " + HOURS + " hours of events…");
  view.append(h("section", { "aria-labelledby": "q-h" }, h("h2", { id: "q-h" }, "Delivery queue"), queue),
    h("section", { "aria-labelledby": "c-h" }, h("h2", { id: "c-h" }, "Messages per minute"), note, charts));

  const depth = [];
  async function metrics() {
    let m;
    try { m = parseMetrics(await apiGet("/metrics")); } catch (e) { queue.replaceChildren(h("p", { class: "error" }, e.message)); return; }
    if (gen !== S.gen) return;
    depth.push(m.inlet_deliveries_pending || 0);
    if (depth.length > 120) depth.shift();
    const age = m.inlet_deliveries_oldest_due_age_seconds || 0;
    const stat = (label, v, id) => h("div", { class: "card" }, h("div", { class: "muted" }, label), h("div", { class: "stat", id }, v));
    queue.replaceChildren(
      stat("Pending deliveries", m.inlet_deliveries_pending ?? "–", "q-pending"),
      stat("Due now", m.inlet_deliveries_due ?? "–", "q-due"),
      stat("Oldest due", age > 0 ? Math.round(age) + " s ago" : "none", "q-oldest"),
      stat("Failed (dead letters)", m.inlet_deliveries_failed ?? "–", "q-failed"),
      h("div", { class: "chart", style: null }, h("h3", {}, "Queue depth since this page opened"),
        barChartSvg(depth)));
  }
  function barChartSvg(vals) { return barChart("pending", "queue", vals.length ? vals : [0], Date.now() / 1000).querySelector("svg"); }

  const t0 = Math.floor(Date.now() / 60000) * 60 - HOURS * 3600 + 60;
  const bins = Object.fromEntries(SERIES.map((s) => [s, new Array(HOURS * 60).fill(0)]));
  const seen = new Set();
  function count(it) {
    if (seen.has(it.id)) return;
    seen.add(it.id);
    const i = Math.floor((it.timestamp - t0) / 60);
    if (i < 0 || i >= HOURS * 60) return;
    if (bins[it.event]) bins[it.event][i]++;
    if (it.event === "accepted" && it.outcome === "routed") bins.routed[i]++;
  }
  function draw() {
    charts.replaceChildren(...SERIES.map((s) => barChart(s[0].toUpperCase() + s.slice(1), s, bins[s], t0)));
  }
  const domains = exactDomains();
  const nexts = [];
  let partial = false;
  for (const d of domains) {
    let url = `/v3/${encodeURIComponent(d)}/events?ascending=yes&limit=300&begin=${t0}`;
    for (let i = 0; i < OVERVIEW_PAGES; i++) {
      const r = await apiGet(url);
      if (gen !== S.gen) return;
      r.items.forEach(count);
      url = path(r.paging.next);
      if (r.items.length < 300) break;
      if (i === OVERVIEW_PAGES - 1) partial = true;
    }
    nexts.push(url);
  }
  note.textContent = (domains.length ? "Domains: " + domains.join(", ") + "." : "No hosted domain to read events from.") +
    (partial ? " Busy: only the first " + OVERVIEW_PAGES * 300 + " events per domain are counted." : "") + " Updates live.";
  draw();
  metrics();
  every(5000, metrics);
  every(3000, async () => {
    for (let i = 0; i < nexts.length; i++) {
      const r = await apiGet(nexts[i]);
      if (gen !== S.gen) return;
      r.items.forEach(count);
      nexts[i] = path(r.paging.next);
    }
    draw();
  });
};

/* ---- routes ------------------------------------------------------------------------------ */

pages.routes = async (view, _a, _p, gen) => {
  view.append(h("h1", {}, "Routes"));
  const list = h("div", {}, "Loading…");
  const formBox = h("section", { class: "card", "aria-labelledby": "rf-h" });
  const testBox = h("section", { class: "card", "aria-labelledby": "rt-h" });
  view.append(h("h2", {}, "In evaluation order"), list, formBox, testBox);

  async function load() {
    const r = await apiGet("/v3/routes?limit=1000");
    if (gen !== S.gen) return;
    list.replaceChildren(r.items.length === 0 ? h("p", { class: "muted" }, "No route yet.") :
      table(["#", "Priority", "Description", "Expression", "Actions", ""], r.items.map((rt, i) =>
        h("tr", { "data-id": rt.id }, h("td", {}, i + 1), h("td", {}, rt.priority), h("td", { class: "wrap" }, rt.description),
          h("td", { class: "wrap mono" }, rt.expression),
          h("td", { class: "wrap mono" }, rt.actions.map((a) => h("div", {}, a))),
          h("td", {}, h("button", { type: "button", class: "secondary", "aria-label": "Edit route " + (rt.description || rt.id), on: { click: () => edit(rt) } }, "Edit"),
            h("button", { type: "button", class: "danger", "aria-label": "Delete route " + (rt.description || rt.id), on: { click: () => del(rt) } }, "Delete"))))));
  }

  async function del(rt) {
    if (!confirm("Delete the route " + (rt.description || rt.id) + "?")) return;
    try { await api("DELETE", "/v3/routes/" + encodeURIComponent(rt.id)); toast("Route deleted"); load(); } catch (e) { toast(e.message); }
  }

  const prio = h("input", { id: "rf-priority", type: "number", value: "0", step: "1" });
  const desc = h("input", { id: "rf-description", maxlength: "2000" });
  const expr = h("textarea", { id: "rf-expression", rows: "2", required: true, spellcheck: "false", "aria-describedby": "rf-check" });
  const acts = h("textarea", { id: "rf-actions", rows: "3", required: true, spellcheck: "false" });
  const check = h("p", { id: "rf-check", class: "muted", "aria-live": "polite" }, "Type an expression, e.g. match_recipient(\".*@example.com\")");
  const submit = h("button", { type: "submit", id: "rf-submit" }, "Create route");
  const cancel = h("button", { type: "button", class: "secondary", hidden: true, on: { click: () => edit(null) } }, "Cancel");
  const result = h("p", { role: "alert" });
  let editing = null;
  function lines(t) { return t.split("\n").map((s) => s.trim()).filter(Boolean); }
  let seq = 0, timer = 0;
  function checkSoon() {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      const mine = ++seq;
      if (!expr.value.trim()) { check.textContent = ""; return; }
      const body = { expression: expr.value };
      if (lines(acts.value).length) body.action = lines(acts.value);
      try {
        await api("POST", "/v3/routes/check", body);
        if (mine === seq) { check.className = "ok"; check.textContent = "✓ Valid"; }
      } catch (e) {
        if (mine === seq) { check.className = "error"; check.textContent = e.message; }
      }
    }, 250);
  }
  expr.addEventListener("input", checkSoon);
  acts.addEventListener("input", checkSoon);
  function edit(rt) {
    editing = rt;
    prio.value = rt ? rt.priority : 0;
    desc.value = rt ? rt.description : "";
    expr.value = rt ? rt.expression : "";
    acts.value = rt ? rt.actions.join("\n") : "";
    submit.textContent = rt ? "Save route" : "Create route";
    formBox.querySelector("h2").textContent = rt ? "Edit route " + rt.id : "New route";
    cancel.hidden = !rt;
    result.textContent = "";
    check.className = "muted";
    check.textContent = "";
    if (rt) { checkSoon(); expr.focus(); }
  }
  const form = h("form", { on: { submit: async (ev) => {
    ev.preventDefault();
    const body = { priority: prio.value || "0", description: desc.value, expression: expr.value, action: lines(acts.value) };
    try {
      const r = editing ? await api("PUT", "/v3/routes/" + encodeURIComponent(editing.id), body) : await api("POST", "/v3/routes", body);
      toast(r.message);
      edit(null);
      load();
    } catch (e) { result.className = "error"; result.textContent = e.message; }
  } } },
  h("div", { class: "grid" }, field("Priority", prio, "lower runs first"), field("Description", desc)),
  field("Expression", expr), check,
  field("Actions, one per line", acts, "forward(\"https://…\"), forward(\"user@host\"), store(notify=\"…\"), stop()"),
  submit, cancel, result);
  formBox.append(h("h2", { id: "rf-h" }, "New route"), form);

  /* The dry run: POST /v3/routes/test. */
  const file = h("input", { id: "rt-file", type: "file", accept: ".eml,message/rfc822,text/plain" });
  const raw = h("textarea", { id: "rt-raw", rows: "5", spellcheck: "false", placeholder: "From: a@example.org\nSubject: hi\n\nbody" });
  const sender = h("input", { id: "rt-sender", type: "email", placeholder: "sender@example.org" });
  const rcpts = h("input", { id: "rt-rcpt", required: true, placeholder: "user@example.com, other@example.com" });
  const out = h("div", { "aria-live": "polite" });
  testBox.append(h("h2", { id: "rt-h" }, "Test a message against the routes"),
    h("form", { on: { submit: async (ev) => {
      ev.preventDefault();
      const fd = new FormData();
      const blob = file.files[0] || new Blob([raw.value.replace(/\r?\n/g, "\r\n")], { type: "message/rfc822" });
      fd.append("message", blob, "message.eml");
      if (sender.value) fd.append("sender", sender.value);
      fd.append("recipient", rcpts.value);
      try { showTest(await api("POST", "/v3/routes/test", fd)); } catch (e) { out.replaceChildren(h("p", { class: "error" }, e.message)); }
    } } },
    field("Message file", file), field("…or paste the message", raw),
    h("div", { class: "grid" }, field("Sender", sender), field("Recipients", rcpts)),
    h("button", { type: "submit" }, "Run test")), out);
  function showTest(r) {
    out.replaceChildren(...r.recipients.map((x) => h("div", { class: "card" },
      h("h3", {}, x.recipient),
      x.routes.length === 0 ? h("p", { class: "muted" }, "No route matches.") :
        table(["Route", "Captures", "Resolved actions"], x.routes.map((m) => h("tr", {},
          h("td", { class: "mono" }, m.id),
          h("td", { class: "wrap mono" }, Object.entries(m.captures || {}).map(([k, v]) => h("div", {}, k + " = " + v))),
          h("td", { class: "wrap mono" }, (m.actions || []).map((a) => h("div", {}, typeof a === "string" ? a : JSON.stringify(a))))))),
      h("p", { class: "muted" }, `${(x.deliveries || []).length} deliveries, ${x.stored || 0} stored copies`))));
  }
  await load();
};

/* ---- events ------------------------------------------------------------------------------ */

function eventRow(it) {
  const m = it.message || {}, hd = m.headers || {}, ds = it["delivery-status"] || {};
  let detail = "";
  if (it.event === "accepted") detail = it.outcome || "";
  if (it.event === "delivered" || it.event === "failed")
    detail = [ds.code, ds.message || ds.description, it.severity].filter((x) => x !== undefined && x !== "").join(" · ");
  if (it.event === "stored" && it.storage) detail = "key " + it.storage.key;
  const iid = m["inlet-id"];
  return h("tr", { "data-event-id": it.id },
    h("td", {}, when(it.timestamp)), h("td", {}, badge(it.event)),
    h("td", { class: "wrap" }, it.recipient), h("td", { class: "wrap" }, hd.from || ""),
    h("td", { class: "wrap" }, iid ? msgLink(iid, it["recipient-domain"], hd.subject || "(no subject)") : hd.subject || ""),
    h("td", { class: "wrap" }, detail));
}

pages.events = async (view, _a, params, gen) => {
  view.append(h("h1", {}, "Events"));
  const doms = exactDomains();
  const dl = h("datalist", { id: "ev-domains" }, doms.map((d) => h("option", { value: d })));
  const dom = h("input", { id: "ev-domain", list: "ev-domains", value: params.get("domain") || doms[0] || "", required: true });
  const ev = h("select", { id: "ev-event" }, ["", "accepted", "stored", "delivered", "failed"].map((e) => h("option", { value: e }, e || "any")));
  const rcpt = h("input", { id: "ev-recipient", type: "text", placeholder: "user@example.com" });
  const mid = h("input", { id: "ev-message-id", type: "text", placeholder: "Message-Id" });
  const begin = h("input", { id: "ev-begin", type: "datetime-local" });
  const end = h("input", { id: "ev-end", type: "datetime-local" });
  const live = h("input", { id: "ev-live", type: "checkbox", checked: true });
  const body = h("tbody", { id: "ev-rows" });
  const status = h("p", { class: "muted", "aria-live": "polite" });
  let newest = 0;
  const seen = new Set();
  function query(extra) {
    const q = new URLSearchParams(extra);
    if (ev.value) q.set("event", ev.value);
    if (rcpt.value.trim()) q.set("recipient", rcpt.value.trim());
    if (mid.value.trim()) q.set("message-id", mid.value.trim().replace(/^<|>$/g, ""));
    return `/v3/${encodeURIComponent(dom.value.trim().toLowerCase())}/events?` + q.toString();
  }
  async function load() {
    const q = { limit: "100" };
    if (begin.value) q.begin = String(new Date(begin.value).getTime() / 1000);
    if (end.value) q.end = String(new Date(end.value).getTime() / 1000);
    const r = await apiGet(query(q));
    if (gen !== S.gen) return;
    seen.clear();
    body.replaceChildren(...r.items.map((it) => { seen.add(it.id); return eventRow(it); }));
    newest = r.items.length ? r.items[0].timestamp : Date.now() / 1000 - 5;
    status.textContent = `${r.items.length} events` + (live.checked && !end.value ? ", live" : "");
  }
  async function poll() {
    if (!live.checked || end.value || !dom.value) return;
    const r = await apiGet(query({ ascending: "yes", limit: "300", begin: String(newest) }));
    if (gen !== S.gen) return;
    for (const it of r.items) {
      if (seen.has(it.id)) continue;
      seen.add(it.id);
      body.prepend(eventRow(it));
      newest = Math.max(newest, it.timestamp);
    }
  }
  view.append(h("form", { class: "card", on: { submit: (e) => { e.preventDefault(); load().catch((x) => { status.textContent = x.message; }); } } },
    h("div", { class: "grid" }, field("Domain", dom), dl, field("Event", ev), field("Recipient", rcpt),
      field("Message-Id", mid), field("From", begin), field("Until", end)),
    h("label", { class: "check", for: "ev-live" }, live, "Live (new events appear at the top)"),
    h("button", { type: "submit" }, "Apply filters")),
  status, table(["Time", "Event", "Recipient", "From", "Subject", "Detail"], []));
  view.querySelector("tbody").replaceWith(body);
  if (dom.value) await load();
  every(2000, () => poll().catch(() => {}));
};

/* ---- one message ------------------------------------------------------------------------- */

pages.message = async (view, [iid], params, gen) => {
  const domain = params.get("d") || exactDomains()[0] || "";
  view.append(h("h1", {}, "Message ", h("span", { class: "mono" }, iid)));
  const r = await apiGet(`/v3/${encodeURIComponent(domain)}/events?ascending=yes&limit=300&inlet-id=${encodeURIComponent(iid)}`);
  if (gen !== S.gen) return;
  const items = r.items;
  if (!items.length) { view.append(h("p", {}, "No event of this message in " + domain + ".")); return; }
  const m = items[0].message || {}, hd = m.headers || {};
  const stored = items.find((it) => it.event === "stored" && it.storage);
  view.append(h("section", { class: "card" }, h("h2", {}, "Envelope"), h("dl", { class: "kv" },
    h("dt", {}, "Subject"), h("dd", { id: "m-subject" }, hd.subject || ""),
    h("dt", {}, "From"), h("dd", { id: "m-from" }, hd.from || ""),
    h("dt", {}, "To"), h("dd", {}, hd.to || ""),
    h("dt", {}, "Message-Id"), h("dd", { class: "mono" }, hd["message-id"] || ""),
    h("dt", {}, "Recipients"), h("dd", {}, (m.recipients || []).join(", ")),
    h("dt", {}, "Size"), h("dd", {}, m.size ? m.size + " bytes" : ""),
    h("dt", {}, "Received"), h("dd", {}, when(items[0].timestamp)))));

  /* Deliveries: the last event of each decides whether it can be replayed. */
  const last = new Map();
  for (const it of items) if (it["delivery-id"]) last.set(it["delivery-id"], it);
  const attempts = items.filter((it) => it.event === "delivered" || it.event === "failed");
  view.append(h("section", { class: "card", "aria-labelledby": "m-att" }, h("h2", { id: "m-att" }, "Events and delivery attempts"),
    table(["Time", "Event", "Recipient", "Target", "Attempt", "Status", ""], items.map((it) => {
      const ds = it["delivery-status"] || {}, did = it["delivery-id"];
      const replayable = did && last.get(did) === it && it.event === "failed" && it.severity === "permanent";
      return h("tr", {}, h("td", {}, when(it.timestamp)), h("td", {}, badge(it.event)), h("td", { class: "wrap" }, it.recipient),
        h("td", { class: "wrap mono" }, ((it.envelope || {}).targets) || (it.storage ? "stored copy" : "")),
        h("td", {}, ds["attempt-no"] || ""), h("td", { class: "wrap" }, [ds.code, ds.message].filter(Boolean).join(" ")),
        h("td", {}, replayable ? h("button", { type: "button", class: "replay", on: { click: (e) => replay(did, e.target) } }, "Replay") : ""));
    })),
    h("p", { class: "muted" }, attempts.length + " attempts")));

  if (!stored) {
    view.append(h("p", { class: "muted" }, "No stored copy of this message (only a route with store() keeps its body): headers, bodies and attachments are not available."));
    return;
  }
  const key = stored.storage.key, sdom = stored["recipient-domain"];
  const base = `/v3/domains/${encodeURIComponent(sdom)}/messages/${encodeURIComponent(key)}`;
  let sm;
  try { sm = await apiGet(base); } catch (e) { view.append(h("p", { class: "error" }, "Stored copy: " + e.message)); return; }
  if (gen !== S.gen) return;
  view.append(h("section", { class: "card" }, h("h2", {}, "Stored envelope"), h("dl", { class: "kv" },
    h("dt", {}, "Sender"), h("dd", {}, sm.sender || ""), h("dt", {}, "Recipient"), h("dd", {}, sm.recipients || ""))));
  view.append(h("section", { class: "card", "aria-labelledby": "m-hd" }, h("h2", { id: "m-hd" }, "Headers"),
    table(["Name", "Value"], (sm["message-headers"] || []).map(([k, v]) => h("tr", {}, h("td", { class: "mono" }, k), h("td", { class: "wrap" }, v))))));
  view.append(h("section", { class: "card" }, h("h2", {}, "Text"), h("pre", { id: "m-text" }, sm["body-plain"] || "(no text part)")));
  if (sm["body-html"]) {
    const src = `/ui/html/${encodeURIComponent(sdom)}/${encodeURIComponent(key)}`;
    /* sandbox="": no script, no same-origin, no forms, no popups, no top navigation. */
    const frame = h("iframe", { class: "frame", id: "m-html", title: "HTML body of the message (scripts off)", sandbox: "", referrerpolicy: "no-referrer", src });
    const imgs = h("button", { type: "button", class: "secondary", id: "m-images", on: { click: () => { frame.src = src + "?images=1"; imgs.disabled = true; } } }, "Load remote images");
    view.append(h("section", { class: "card" }, h("h2", {}, "HTML body"),
      h("p", { class: "muted" }, "Shown without scripts; remote images are blocked until you load them (the sender then learns that the message was opened)."), imgs, frame));
  }
  view.append(h("section", { class: "card", "aria-labelledby": "m-atts" }, h("h2", { id: "m-atts" }, "Attachments"),
    (sm.attachments || []).length === 0 ? h("p", { class: "muted" }, "None.") :
      h("ul", {}, sm.attachments.map((a, i) => h("li", {}, h("a", { href: `${base}/attachments/${i}`, download: a.name || `attachment-${i}`, class: "attachment" }, a.name || `attachment-${i}`),
        ` (${a["content-type"]}, ${a.size} bytes)`)))));
  const rawPre = h("pre", { id: "m-raw", hidden: true });
  view.append(h("section", { class: "card" }, h("h2", {}, "Raw source"),
    h("button", { type: "button", class: "secondary", on: { click: async (e) => {
      rawPre.textContent = await apiGet(base + "/raw"); rawPre.hidden = false; e.target.disabled = true;
    } } }, "Show raw source"), " ", h("a", { href: base + "/raw", download: iid + ".eml" }, "Download .eml"), rawPre));
  const to = h("input", { id: "m-resend-to", type: "text", placeholder: "someone@example.org", required: true });
  const res = h("p", { role: "alert" });
  view.append(h("section", { class: "card" }, h("h2", {}, "Resend"),
    h("form", { on: { submit: async (e) => {
      e.preventDefault();
      try { const r2 = await api("POST", base, { to: to.value }); res.className = "ok"; res.textContent = r2.message; } catch (x) { res.className = "error"; res.textContent = x.message; }
    } } }, field("Send the stored copy again through the relay to", to), h("button", { type: "submit" }, "Resend"), res)));
};

async function replay(id, button) {
  try {
    const r = await api("POST", "/v3/deliveries/" + encodeURIComponent(id) + "/retry");
    toast(r.message);
    if (button) { button.disabled = true; button.textContent = "Queued"; }
    return true;
  } catch (e) { toast(e.message); return false; }
}

/* ---- dead letters ------------------------------------------------------------------------ */

pages.dead = async (view, _a, _p, gen) => {
  view.append(h("h1", {}, "Dead letters"), h("p", { class: "muted" }, "Deliveries that failed for good, last failed first. A replay makes one more attempt."));
  const box = h("div", {});
  let items = [];
  const all = h("button", { type: "button", id: "replay-all", on: { click: async () => {
    if (!items.length || !confirm(`Replay ${items.length} deliveries?`)) return;
    all.disabled = true;
    let ok = 0;
    for (const d of items) if (await replay(d.id, null)) ok++;
    toast(`${ok} of ${items.length} queued`);
    load(url0);
  } } }, "Replay all on this page");
  const url0 = "/v3/deliveries?state=failed&limit=100";
  async function load(url) {
    const r = await apiGet(url);
    if (gen !== S.gen) return;
    items = r.items;
    all.disabled = !items.length;
    box.replaceChildren(items.length === 0 ? h("p", {}, "No dead letter.") :
      table(["Failed", "Recipient", "Target", "Attempts", "Reason", "Message", ""], items.map((d) => h("tr", { "data-id": d.id },
        h("td", {}, when(d.updated_at)), h("td", { class: "wrap" }, d.recipient), h("td", { class: "wrap mono" }, d.target),
        h("td", {}, d.attempts), h("td", { class: "wrap" }, [d.last_status || "", d.last_error].filter(Boolean).join(" ")),
        h("td", {}, msgLink(d.message_id, domainOf(d.recipient), "open")),
        h("td", {}, h("button", { type: "button", class: "replay", on: { click: (e) => replay(d.id, e.target) } }, "Replay"))))),
      r.paging && r.paging.next ? h("button", { type: "button", class: "secondary", on: { click: () => load(path(r.paging.next)) } }, "Older") : null);
  }
  view.append(all, box);
  await load(url0);
};

/* ---- stored copies ----------------------------------------------------------------------- */

pages.stored = async (view, _a, _p, gen) => {
  view.append(h("h1", {}, "Stored copies"), h("p", { class: "muted" }, "Copies kept by store() routes, newest first (until --store-ttl)."));
  for (const d of exactDomains()) {
    const r = await apiGet(`/v3/${encodeURIComponent(d)}/events?event=stored&limit=100`);
    if (gen !== S.gen) return;
    view.append(h("h2", {}, d), r.items.length === 0 ? h("p", { class: "muted" }, "None.") :
      table(["Stored", "Recipient", "From", "Subject", "Key"], r.items.map((it) => {
        const hd = (it.message || {}).headers || {};
        return h("tr", {}, h("td", {}, when(it.timestamp)), h("td", { class: "wrap" }, it.recipient), h("td", { class: "wrap" }, hd.from || ""),
          h("td", { class: "wrap" }, msgLink((it.message || {})["inlet-id"] || "", it["recipient-domain"], hd.subject || "(no subject)")),
          h("td", { class: "mono wrap" }, it.storage ? it.storage.key : ""));
      })));
  }
};

/* ---- start ------------------------------------------------------------------------------- */

document.addEventListener("DOMContentLoaded", async () => {
  $("tz").textContent = "Times in " + Intl.DateTimeFormat().resolvedOptions().timeZone;
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  window.addEventListener("hashchange", route);
  try { started(await apiGet("/ui/session")); } catch (e) { if (e.status !== 401) showLogin(e.message); }
});
