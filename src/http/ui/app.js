// raftkv web view: reads /ui/events (Server-Sent Events, read with fetch so
// a token can go in the Authorization header) and draws the cluster.
"use strict";

const TOKEN_KEY = "raftkv-token";
const state = {
  members: [],          // the latest message's members
  events: [],           // merged timeline, oldest first
  leaderSamples: [],    // [at_ms, leader's last index], to time a follower's lag
  rateSamples: [],      // [at_ms, reads, writes] summed over members
  self: null,
};

// A token given as #token=... goes to sessionStorage and out of the address bar.
(function takeTokenFromFragment() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
})();

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }
function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (token()) h["Authorization"] = "Bearer " + token();
  return h;
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : String(c));
  return e;
}

function ago(ms) {
  const s = Math.max(0, ms) / 1000;
  if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + Math.floor(s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}

function clock(ms) {
  const d = new Date(ms);
  const p = (n, w) => String(n).padStart(w, "0");
  return p(d.getHours(), 2) + ":" + p(d.getMinutes(), 2) + ":" + p(d.getSeconds(), 2) + "." + p(d.getMilliseconds(), 3);
}

// --- the stream ---------------------------------------------------------------

function setConnection(kind, text) {
  const c = document.getElementById("connection");
  c.dataset.state = kind;
  c.textContent = text;
}

async function follow() {
  for (;;) {
    try {
      const resp = await fetch("/ui/events", { headers: headers(), cache: "no-store" });
      if (!resp.ok) {
        const body = await resp.json().catch(() => ({}));
        setConnection("error", resp.status + " " + (body.error || resp.statusText) +
          (resp.status === 401 || resp.status === 403 ? " — give a token below" : ""));
        await sleep(resp.status === 401 || resp.status === 403 ? 3000 : 1000);
        continue;
      }
      setConnection("live", "live");
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const raw = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          const data = raw.split("\n").filter(l => l.startsWith("data:")).map(l => l.slice(5).trim()).join("\n");
          if (data) update(JSON.parse(data));
        }
      }
      setConnection("error", "the node closed the stream; reconnecting…");
    } catch (e) {
      setConnection("error", "cannot reach this node (" + e.message + "); retrying…");
    }
    await sleep(1000);
  }
}

function sleep(ms) { return new Promise(r => setTimeout(r, ms)); }

// --- what a message says ---------------------------------------------------------

function update(msg) {
  state.members = msg.members;
  state.self = msg.node;
  state.now = msg.at_ms;
  for (const e of msg.events) state.events.push(e);
  state.events.sort((a, b) => a.at_ms - b.at_ms || a.node - b.node);
  if (state.events.length > 300) state.events.splice(0, state.events.length - 300);

  const leader = currentLeader(msg.members);
  if (leader) {
    state.leaderSamples.push([msg.at_ms, leader.status.last_log_index]);
    const cutoff = msg.at_ms - 120000;
    while (state.leaderSamples.length && state.leaderSamples[0][0] < cutoff) state.leaderSamples.shift();
  }
  let reads = 0, writes = 0;
  for (const m of msg.members) {
    if (m.up && m.status && m.status.requests) { reads += m.status.requests.reads; writes += m.status.requests.writes; }
  }
  state.rateSamples.push([msg.at_ms, reads, writes]);
  while (state.rateSamples.length > 2 && state.rateSamples[0][0] < msg.at_ms - 2000) state.rateSamples.shift();
  render(leader);
}

// The leader: an up member that says it leads, the highest term winning
// (a deposed leader cut off from the rest may still think it leads).
function currentLeader(members) {
  let best = null;
  for (const m of members) {
    if (!m.up || !m.status || m.status.role !== "leader") continue;
    if (!best || m.status.term > best.status.term) best = m;
  }
  return best;
}

// Milliseconds since the leader first had an entry past `match`.
function lagMs(match, now) {
  for (const [at, last] of state.leaderSamples) {
    if (last > match) return now - at;
  }
  return 0;
}

function rate(i) {
  const s = state.rateSamples;
  if (s.length < 2) return "…";
  const a = s[0], b = s[s.length - 1];
  const dt = (b[0] - a[0]) / 1000;
  return dt > 0 ? Math.max(0, Math.round((b[i] - a[i]) / dt)).toLocaleString() : "…";
}

// --- drawing -------------------------------------------------------------------

function render(leader) {
  const L = document.getElementById("leader");
  L.dataset.leader = leader ? String(leader.id) : "";
  L.textContent = leader ? "node " + leader.id : "none";
  const terms = state.members.filter(m => m.status).map(m => m.status.term);
  document.getElementById("term").textContent = terms.length ? Math.max(...terms) : "…";
  document.getElementById("write-rate").textContent = rate(2);
  document.getElementById("read-rate").textContent = rate(1);
  document.getElementById("via").textContent = state.self;
  for (const s of document.querySelectorAll(".self-id")) s.textContent = state.self;
  const me = state.members.find(m => m.self);
  if (me && me.status) document.getElementById("cluster-id").textContent = me.status.cluster_id;
  renderMembers();
  renderReplication(leader);
  renderTimeline();
  renderTransferTargets();
}

function renderMembers() {
  const body = document.querySelector("#members tbody");
  const rows = state.members.map(m => {
    const s = m.status || {};
    const role = m.up ? (s.role || "?") : (s.role ? "was " + s.role : "unknown");
    const st = m.up ? "up" : "down for " + ago(state.now - (m.down_since_ms || state.now));
    const num = v => el("td", { class: "num" }, v === undefined || v === null ? "–" : v);
    return el("tr", { "data-member": m.id, "data-up": String(m.up), "data-role": m.up ? s.role : "down" },
      el("td", {}, m.id + (m.self ? " (this node)" : "")),
      el("td", {}, m.address),
      el("td", {}, el("span", { class: "role", "data-role": m.up ? s.role : "down" }, role)),
      el("td", { class: "state", "data-up": String(m.up), title: m.error || "" }, st),
      num(s.term), num(s.voted_for), num(s.commit_index), num(s.applied_index), num(s.last_log_index),
      num(s.log ? s.log.snapshot_index : undefined));
  });
  body.replaceChildren(...rows);
}

function renderReplication(leader) {
  const box = document.getElementById("replication");
  const from = document.getElementById("replication-from");
  if (!leader) {
    from.textContent = "(no leader known)";
    box.replaceChildren();
    return;
  }
  const last = leader.status.last_log_index;
  from.textContent = "from leader " + leader.id + ", last index " + last;
  const rows = (leader.status.peers || []).map(p => {
    const match = p.match_index || 0;
    const behind = Math.max(0, last - match);
    const lag = behind ? lagMs(match, state.now) : 0;
    const down = state.members.find(m => m.id === p.id && !m.up);
    const text = "match " + match + " · " + (behind ? behind + " behind, ~" + ago(lag) : "caught up") +
      " · " + (p.state || "?") + (p.reachable === false ? " · unreachable" : "") + (p.role === "learner" ? " · learner" : "");
    return el("div", { class: "peer", "data-peer": p.id, "data-reachable": String(p.reachable !== false && !down) },
      el("span", {}, "node " + p.id),
      el("progress", { max: String(Math.max(last, 1)), value: String(match) }),
      el("span", { class: "muted" }, text));
  });
  box.replaceChildren(...rows);
}

function renderTimeline() {
  const list = document.getElementById("timeline");
  const items = state.events.slice(-80).reverse().map(e =>
    el("li", { "data-kind": e.kind },
      el("span", { class: "muted", title: new Date(e.at_ms).toISOString() }, clock(e.at_ms)),
      el("span", { class: "kind", "data-kind": e.kind }, e.kind),
      el("span", {}, e.text)));
  list.replaceChildren(...items);
}

function renderTransferTargets() {
  const sel = document.getElementById("transfer-to");
  const want = state.members.filter(m => !(m.status && m.status.role === "leader")).map(m => String(m.id));
  const have = [...sel.options].slice(1).map(o => o.value);
  if (want.join() === have.join()) return;
  const chosen = sel.value;
  sel.replaceChildren(el("option", { value: "" }, "the most up-to-date voter"),
    ...want.map(id => el("option", { value: id }, "node " + id)));
  if (want.includes(chosen)) sel.value = chosen;
}

// --- actions -------------------------------------------------------------------

async function act(method, path, body) {
  const out = document.getElementById("action-result");
  out.dataset.ok = "";
  out.textContent = method + " " + path + " …";
  try {
    const opts = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
    if (body !== undefined) opts.body = JSON.stringify(body);
    const resp = await fetch(path, opts);
    const text = await resp.text();
    let shown = text;
    try { shown = JSON.stringify(JSON.parse(text), null, 2); } catch (_) { /* not JSON */ }
    out.dataset.ok = String(resp.ok);
    out.textContent = method + " " + path + " → " + resp.status + "\n" + shown;
    return resp.ok ? JSON.parse(text) : null;
  } catch (e) {
    out.dataset.ok = "false";
    out.textContent = method + " " + path + " failed: " + e.message;
    return null;
  }
}

function on(id, f) {
  document.getElementById(id).addEventListener("submit", ev => { ev.preventDefault(); f(); });
}

on("token-form", () => {
  const t = document.getElementById("token").value.trim();
  if (t) sessionStorage.setItem(TOKEN_KEY, t); else sessionStorage.removeItem(TOKEN_KEY);
  document.getElementById("token").value = "";
  document.getElementById("action-result").textContent = t ? "token set for this tab" : "token cleared";
});
on("transfer-form", () => {
  const to = document.getElementById("transfer-to").value;
  act("POST", "/admin/transfer-leader", to ? { to: Number(to) } : {});
});
on("snapshot-form", () => act("POST", "/admin/snapshot"));
on("log-form", async () => {
  const filter = document.getElementById("log-filter").value.trim();
  if (filter) act("PUT", "/admin/log", { filter });
});

(async function loadLogFilter() {
  const resp = await fetch("/admin/log", { headers: headers() }).catch(() => null);
  if (resp && resp.ok) {
    const v = await resp.json();
    const input = document.getElementById("log-filter");
    if (!input.value) input.value = v.filter;
  }
})();

follow();
