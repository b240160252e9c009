// reverb dashboard: plain DOM, no build step. Live data comes from /events (Server-Sent Events);
// the tables are refreshed from /api/v1/* when the counters say something changed. Every value
// from the wire is written with textContent, never as HTML. Counters are the server's: the claims
// rate is reverb's sliding-window rate, the reports tile reverb's published count (the page only
// keeps the last MAX_BARS reports for its chart and table).

const MAX_BARS = 60;
const MAX_AGENTS = 500;
// EventSource gives up for good on an HTTP error (a 429 or 503 when reverb's event-stream caps
// are reached): the page reconnects itself, backing off up to a minute.
const RECONNECT_MIN_MS = 2_000;
const RECONNECT_MAX_MS = 60_000;
const SVG = "http://www.w3.org/2000/svg";
const STATE_ORDER = {
  failed: 0,
  blocked: 1,
  helping: 2,
  reviewing: 3,
  executing: 4,
  planning: 5,
  idle: 6,
  completed: 7,
};

const ISSUE_LABELS = {
  agent_failed: "failed",
  agent_blocked: "blocked",
  agent_silent: "silent",
  late_review: "late",
  claims_rejected: "rejected",
  key_rotation: "keys",
  tempo_drift: "drift",
};

const state = {
  status: null,
  beat: null,
  beatAt: 0,
  bars: [],
  agents: [],
  agentsTotal: 0,
  lastAccepted: -1,
  agentsDirty: true,
  agentsLoading: false,
  connected: false,
  // Until the first status arrives the page shows a loading state, not dashes that look like
  // real zeros.
  loaded: false,
  barsLoaded: false,
  agentsLoaded: false,
  reconnectMs: RECONNECT_MIN_MS,
  reconnectAt: 0,
};

const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = String(text);
  return e;
}

function fmtInt(n) {
  return typeof n === "number" ? n.toLocaleString("en-US") : "–";
}

function fmtRate(n) {
  if (typeof n !== "number") return "–";
  return n.toLocaleString("en-US", { minimumFractionDigits: 1, maximumFractionDigits: 1 });
}

function setValue(id, text, raw) {
  const e = $(id);
  e.textContent = text;
  if (raw !== undefined) e.dataset.value = String(raw);
}

function placeholder(body, columns, text) {
  const tr = el("tr", "placeholder");
  const td = el("td", "", text);
  td.colSpan = columns;
  tr.append(td);
  body.replaceChildren(tr);
}

function markLoaded() {
  if (state.loaded) return;
  state.loaded = true;
  document.body.classList.remove("loading");
  document.body.removeAttribute("aria-busy");
}

function fmtAgo(ms) {
  if (!(ms >= 0)) return "–";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms < 3_600_000) return `${Math.floor(ms / 60_000)} m ${Math.floor((ms % 60_000) / 1000)} s`;
  return `${(ms / 3_600_000).toFixed(1)} h`;
}

function fmtDrift(ms) {
  if (typeof ms !== "number") return "–";
  return `${ms > 0 ? "+" : ""}${ms.toFixed(1)}`;
}

async function getJson(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return await r.json();
}

// --- header and beat ---

function renderCells(bpb, position, phase) {
  const box = $("phase-cells");
  if (box.childElementCount !== bpb) {
    box.replaceChildren();
    for (let i = 0; i < bpb; i++) box.append(el("span", i === 0 ? "cell down" : "cell"));
  }
  [...box.children].forEach((c, i) => {
    c.className = `cell${i === 0 ? " down" : ""}${i === position ? ` on ${phase}` : ""}`;
  });
}

function renderBeat() {
  const b = state.beat;
  if (!b) return;
  $("beat-index").textContent = fmtInt(b.beat_index);
  $("tempo").textContent = b.next_tempo_bpm
    ? `${b.tempo_bpm} → ${b.next_tempo_bpm}`
    : String(b.tempo_bpm);
  const ph = $("phase");
  ph.textContent = b.phase;
  ph.className = `phase ${b.phase}`;
  renderCells(b.beats_per_bar, b.position, b.phase);
  $("drift").textContent = fmtDrift(b.drift_ms);
  const link = $("link");
  link.classList.add("flash");
  setTimeout(() => link.classList.remove("flash"), 120);
}

function renderStatus() {
  const s = state.status;
  if (!s) return;
  markLoaded();
  $("cluster").textContent = s.cluster_id;
  const role = $("role");
  role.textContent = s.active ? "ACTIVE" : "STANDBY";
  role.className = `pill ${s.active ? "active" : "standby"}`;
  role.title = s.active ? `${s.reverb_id} publishes reports` : `active: ${s.active_id ?? "none"}`;
  if (!state.beat && s.beat) {
    state.beat = s.beat;
    renderBeat();
  }
  if (!s.beat) $("tempo").textContent = s.tempo_bpm ?? "–";
  const c = s.claims;
  $("agents-tracked").textContent = fmtInt(c.agents_tracked);
  // The server's rate over its sliding window (up to 30 s): a rate over one summary interval
  // reads 0 between the beats of a slow tempo.
  setValue("claims-rate", fmtRate(c.accepted_rate_per_second), c.accepted_rate_per_second);
  const win = c.rate_window_seconds;
  $("claims-window").textContent = typeof win === "number" && win > 0
    ? `· last ${Math.round(win)} s`
    : "";
  setValue("reports-published", fmtInt(s.reports_published), s.reports_published);
  $("reports-published").title = `published by ${s.reverb_id}; ${
    fmtInt(s.history_size)
  } in its history, the last ${MAX_BARS} shown here`;
  $("accepted").textContent = fmtInt(c.accepted);
  // Late claims were accepted (after their window closed): listed below, not counted as refused.
  const rejected = Object.entries(c.rejected)
    .filter(([reason]) => reason !== "late")
    .reduce((a, [, n]) => a + n, 0);
  $("rejected").textContent = fmtInt(rejected);
  $("queue").textContent = `${fmtInt(c.in_flight)} / ${fmtInt(c.queued)}`;
  $("reverb-id").textContent = `${s.reverb_id} · grace ${s.grace_ms} ms · signatures ${
    s.require_signatures ? "required" : "optional"
  } · ${s.keyring_keys} keys${s.stream ? ` · stream ${s.stream.name}` : ""}`;
  renderRejects(c.rejected);
  renderWarnings();
  if (c.accepted !== state.lastAccepted || c.agents_tracked !== state.agentsTotal) {
    state.lastAccepted = c.accepted;
    state.agentsDirty = true;
  }
}

function renderWarnings() {
  const list = [...(state.status?.warnings ?? [])];
  if (!state.connected && state.loaded) {
    const wait = state.reconnectAt - Date.now();
    list.unshift(
      wait > 0
        ? `event stream disconnected (refused or closed): values below are not live; retrying in ${
          Math.ceil(wait / 1000)
        } s`
        : "event stream disconnected: values below are not live",
    );
  }
  const box = $("warnings");
  box.replaceChildren(
    ...list.map((w) =>
      el(
        "div",
        /leaderless|disconnected|no active|unavailable/.test(w) ? "warning severe" : "warning",
        w,
      )
    ),
  );
}

function renderRejects(rejected) {
  const body = $("rejects").tBodies[0];
  const max = Math.max(1, ...Object.values(rejected));
  body.replaceChildren(
    ...Object.entries(rejected).map(([reason, n]) => {
      const tr = el("tr", n === 0 ? "zero" : "");
      tr.dataset.reason = reason;
      tr.append(el("td", "mono", reason));
      const cnt = el("td", "r num", fmtInt(n));
      cnt.dataset.count = String(n);
      tr.append(cnt);
      const barTd = el("td");
      barTd.style.width = "45%";
      const bar = el("div", "rbar");
      bar.style.width = `${(100 * n) / max}%`;
      barTd.append(bar);
      tr.append(barTd);
      return tr;
    }),
  );
}

// --- bars ---

function addBar(report) {
  if (state.bars.some((b) => b.window_id === report.window_id)) return;
  state.bars.push(report);
  state.bars.sort((a, b) => a.from_beat - b.from_beat);
  if (state.bars.length > MAX_BARS) state.bars.splice(0, state.bars.length - MAX_BARS);
}

function renderChart() {
  const box = $("chart");
  const w = Math.max(300, box.clientWidth || 600);
  const h = Math.max(120, box.clientHeight || 190);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  const bars = state.bars;
  const padL = 34, padB = 18, padT = 8, padR = 6;
  const ch = h - padB - padT;
  const cw = w - padL - padR;
  const max = Math.max(1, ...bars.map((b) => Math.max(b.agents_reporting, b.issues.length)));
  const step = niceStep(max);
  const top = Math.ceil(max / step) * step;
  for (let v = 0; v <= top; v += step) {
    const y = padT + ch - (v / top) * ch;
    const line = document.createElementNS(SVG, "line");
    line.setAttribute("x1", padL);
    line.setAttribute("x2", w - padR);
    line.setAttribute("y1", y);
    line.setAttribute("y2", y);
    line.setAttribute("class", "axis");
    svg.append(line);
    svg.append(svgText(padL - 4, y + 3, String(v), "end"));
  }
  if (bars.length === 0) {
    const text = state.barsLoaded ? "waiting for the first bar report…" : "loading…";
    svg.append(svgText(padL + cw / 2, padT + ch / 2, text, "middle", "empty"));
  }
  const slot = cw / MAX_BARS;
  const x0 = padL + cw - bars.length * slot;
  bars.forEach((b, i) => {
    const x = x0 + i * slot;
    const title = document.createElementNS(SVG, "title");
    title.textContent =
      `beats ${b.from_beat}–${b.to_beat}: ${b.agents_reporting} reporting, ${b.on_time_reviews} on time, ${b.issues.length} issues, drift ${b.tempo_drift_ms} ms`;
    const g = document.createElementNS(SVG, "g");
    g.append(title);
    // Reporting agents with the on-time reviews inside; issues as a thin bar beside them.
    g.append(rect(x + slot * 0.08, b.agents_reporting, slot * 0.64, "rep"));
    g.append(rect(x + slot * 0.2, b.on_time_reviews, slot * 0.4, "ont"));
    if (b.issues.length) g.append(rect(x + slot * 0.76, b.issues.length, slot * 0.16, "iss"));
    svg.append(g);
    if (i === bars.length - 1 || i % 10 === 0) {
      svg.append(svgText(x + slot / 2, h - 4, String(b.from_beat), "middle"));
    }
  });
  box.replaceChildren(svg);

  function rect(x, v, width, cls) {
    const r = document.createElementNS(SVG, "rect");
    const hh = (v / top) * ch;
    r.setAttribute("x", x.toFixed(1));
    r.setAttribute("y", (padT + ch - hh).toFixed(1));
    r.setAttribute("width", Math.max(1, width).toFixed(1));
    r.setAttribute("height", Math.max(0, hh).toFixed(1));
    r.setAttribute("class", cls);
    return r;
  }
}

function svgText(x, y, text, anchor, cls) {
  const t = document.createElementNS(SVG, "text");
  t.setAttribute("x", x);
  t.setAttribute("y", y);
  t.setAttribute("text-anchor", anchor);
  if (cls) t.setAttribute("class", cls);
  t.textContent = text;
  return t;
}

function niceStep(max) {
  const raw = max / 4;
  const mag = 10 ** Math.floor(Math.log10(raw || 1));
  for (const m of [1, 2, 5, 10]) if (m * mag >= raw) return Math.max(1, m * mag);
  return Math.max(1, 10 * mag);
}

function renderReports() {
  const body = $("reports").tBodies[0];
  if (state.bars.length === 0) {
    placeholder(body, 7, state.barsLoaded ? "no report yet" : "loading…");
    $("last-window").textContent = "–";
    return;
  }
  const rows = [...state.bars].reverse().slice(0, 30).map((b) => {
    const tr = el("tr");
    tr.dataset.window = b.window_id;
    tr.title = `window ${b.window_id}`;
    tr.append(el("td", "mono", `${b.from_beat}–${b.to_beat}`));
    tr.append(el("td", "r", b.agents_reporting));
    tr.append(el("td", "r", b.on_time_reviews));
    tr.append(el("td", "r", b.help_promises_fulfilled));
    tr.append(
      el("td", b.secret_rotations_ok ? "ok" : "bad", b.secret_rotations_ok ? "ok" : "rotate"),
    );
    tr.append(el("td", "r", fmtDrift(b.tempo_drift_ms)));
    const kinds = {};
    for (const i of b.issues) kinds[i.kind] = (kinds[i.kind] ?? 0) + (i.count ?? 1);
    const td = el("td", "issues");
    const entries = Object.entries(kinds);
    if (entries.length === 0) td.append(el("span", "muted", "—"));
    for (const [kind, n] of entries) {
      td.append(el("span", `chip ${kind}`, `${ISSUE_LABELS[kind] ?? kind} ${n}`));
    }
    td.title = b.issues
      .map((i) => `${i.kind}${i.agent_id ? ` ${i.agent_id}` : ""}: ${i.detail}`)
      .join("\n");
    tr.append(td);
    return tr;
  });
  body.replaceChildren(...rows);
  const last = state.bars[state.bars.length - 1];
  $("last-window").textContent = last
    ? `${last.window_id.slice(0, 12)}… beats ${last.from_beat}–${last.to_beat}`
    : "–";
  if (last) $("last-window").dataset.window = last.window_id;
}

// --- agents ---

async function refreshAgents() {
  if (state.agentsLoading || !state.agentsDirty) return;
  state.agentsLoading = true;
  state.agentsDirty = false;
  try {
    const r = await getJson(`/api/v1/agents?limit=${MAX_AGENTS}`);
    state.agents = r.agents;
    state.agentsTotal = r.total;
    state.agentsLoaded = true;
    renderAgents();
  } catch {
    state.agentsDirty = true;
  } finally {
    state.agentsLoading = false;
  }
}

function renderAgents() {
  const now = Date.now();
  const agents = [...state.agents].sort((a, b) => {
    const sa = a.silent_bars > 0 ? 1.5 : STATE_ORDER[a.state] ?? 9;
    const sb = b.silent_bars > 0 ? 1.5 : STATE_ORDER[b.state] ?? 9;
    return sa - sb || (a.agent_id < b.agent_id ? -1 : 1);
  });
  const body = $("agents").tBodies[0];
  $("agents-count").textContent = state.agentsTotal > agents.length
    ? `${agents.length} of ${fmtInt(state.agentsTotal)}`
    : `${agents.length}`;
  if (agents.length === 0) {
    placeholder(body, 8, state.agentsLoaded ? "no agent has sent a claim yet" : "loading…");
    return;
  }
  body.replaceChildren(
    ...agents.map((a) => {
      const tr = el("tr");
      tr.dataset.agent = a.agent_id;
      tr.dataset.state = a.state;
      const id = el("td", "id mono", a.agent_id);
      id.title = a.notes ? `${a.agent_id}: ${a.notes}` : a.agent_id;
      tr.append(id);
      const st = el("td");
      const silent = a.silent_bars > 0;
      const pill = el(
        "span",
        `state ${silent ? "silent" : a.state}`,
        silent ? `silent ${a.silent_bars}` : a.state,
      );
      pill.dataset.state = a.state;
      if (silent) pill.title = `last state ${a.state}, silent for ${a.silent_bars} bars`;
      st.append(pill);
      tr.append(st);
      tr.append(el("td", "task", a.task_id));
      const pc = el("td");
      const prog = el("div", "prog");
      const fill = el("i");
      fill.style.width = `${Math.round(a.progress * 100)}%`;
      prog.append(fill, el("span", "", `${Math.round(a.progress * 100)}%`));
      prog.dataset.progress = String(a.progress);
      pc.append(prog);
      tr.append(pc);
      tr.append(el("td", "r", a.beats_left));
      tr.append(el("td", "r", a.beat_index));
      const seen = el("td", "r seen", fmtAgo(now - Date.parse(a.last_seen)));
      seen.dataset.lastSeen = a.last_seen;
      tr.append(seen);
      tr.append(el("td", "mono muted", a.key_id ? a.key_id.slice(0, 10) : "unsigned"));
      return tr;
    }),
  );
}

function tickSeen() {
  const now = Date.now();
  for (const td of document.querySelectorAll("td.seen")) {
    td.textContent = fmtAgo(now - Date.parse(td.dataset.lastSeen));
  }
}

// --- wiring ---

let everOpened = false;

function connect() {
  const es = new EventSource("/events");
  es.addEventListener("open", () => {
    state.connected = true;
    state.reconnectMs = RECONNECT_MIN_MS;
    state.reconnectAt = 0;
    $("link").className = "dot on";
    renderWarnings();
    // After a reconnect, fill the gap in the reports.
    if (everOpened) loadBars().catch(() => {});
    everOpened = true;
  });
  es.addEventListener("error", () => {
    state.connected = false;
    $("link").className = "dot off";
    if (es.readyState === EventSource.CLOSED) {
      // Refused (429/503) or otherwise given up: the browser will not retry this one.
      const wait = state.reconnectMs;
      state.reconnectMs = Math.min(RECONNECT_MAX_MS, state.reconnectMs * 2);
      state.reconnectAt = Date.now() + wait;
      setTimeout(connect, wait);
    }
    renderWarnings();
  });
  es.addEventListener("beat", (e) => {
    state.beat = JSON.parse(e.data);
    state.beatAt = Date.now();
    renderBeat();
  });
  es.addEventListener("status", (e) => {
    state.status = JSON.parse(e.data);
    renderStatus();
  });
  es.addEventListener("report", (e) => {
    addBar(JSON.parse(e.data));
    renderChart();
    renderReports();
    state.agentsDirty = true;
  });
}

// Fetches the recent reports and merges them with those streamed (duplicates are dropped), so a
// report published while the page was loading or reconnecting is not missed.
async function loadBars() {
  const bars = await getJson(`/api/v1/bars?limit=${MAX_BARS}`);
  for (const b of bars.reports) addBar(b);
  state.barsLoaded = true;
  renderChart();
  renderReports();
}

async function loadStatus() {
  state.status = await getJson("/api/v1/status");
  renderStatus();
}

async function init() {
  renderChart();
  // Listen first, then load: nothing published in between is lost.
  connect();
  try {
    await loadStatus();
    await loadBars();
  } catch (err) {
    $("loading").textContent = `cannot load: ${err.message}; retrying`;
    $("warnings").replaceChildren(el("div", "warning severe", `cannot load: ${err.message}`));
  }
  renderChart();
  renderReports();
  await refreshAgents();
  setInterval(() => {
    refreshAgents();
    tickSeen();
    if (!state.connected && state.reconnectAt > 0) renderWarnings();
    if (!state.loaded) loadStatus().catch(() => {});
    if (!state.barsLoaded) loadBars().catch(() => {});
  }, 1000);
  addEventListener("resize", renderChart);
}

init();
