// The supervisor dashboard: sign in with a token, watch the escalation queue live, look at the
// station tree's load, open a case and act on it. Plain ES module, no build step, no dependencies.

import { language, setLanguage, t, term, translatePage } from "./i18n.js";

const TOKEN_KEY = "caselink.token";
const QUEUE_DEBOUNCE_MS = 300;
const TREE_DEBOUNCE_MS = 1000;
const BACKOFF_START_MS = 1000;
const BACKOFF_MAX_MS = 30000;

const state = {
  token: null,
  me: null,
  queue: [],
  queueFetchedAt: 0,
  caseId: null,
  caseData: null,
  caseWorkload: null,
  workloads: new Map(), // station id → its last workload answer
  expanded: new Set(), // station ids open in the tree
  stationNames: new Map(),
  live: "off",
  lastEventId: null,
  session: 0, // bumped on sign-in/out so stale loops and answers stop
  streamAbort: null,
  result: null, // {outcome, text} of the last action
};

const $ = (id) => document.getElementById(id);

/** Build an element: el("td", {class: "x", dataset: {caseId}}, child, "text", …). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function debounce(fn, ms) {
  let timer = null;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(fn, ms);
  };
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------- API

class ApiError extends Error {
  constructor(status, message, fields = []) {
    super(message);
    this.status = status;
    this.fields = fields;
  }
}

/** Call the API with the signed-in token; resolve to the JSON answer or throw ApiError. */
async function api(path, { method = "GET", body, token = state.token } = {}) {
  const headers = { Authorization: `Bearer ${token}`, Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw new ApiError(0, t("error.network"));
  }
  const answer = await response.json().catch(() => null);
  if (!response.ok) {
    const error = answer?.error ?? {};
    throw new ApiError(response.status, error.message || t("error.generic", { status: response.status }), error.fields ?? []);
  }
  return answer;
}

function describeError(error) {
  const fields = (error.fields ?? []).map((f) => f.field).filter(Boolean);
  return fields.length ? `${error.message} (${t("field")}: ${fields.join(", ")})` : error.message;
}

function showError(id, error) {
  const node = $(id);
  node.textContent = error ? describeError(error) : "";
  node.hidden = !error;
}

// ---------------------------------------------------------------- formatting

function shortId(caseId) {
  return String(caseId).slice(0, 8);
}

function formatTime(value) {
  if (!value) return "—";
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  return new Intl.DateTimeFormat(language(), {
    year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit",
    hour12: false,
  }).format(date);
}

function formatWaiting(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return t("wait.seconds", { n: s });
  if (s < 3600) return t("wait.minutes", { n: Math.floor(s / 60) });
  if (s < 86400) return t("wait.hours", { h: Math.floor(s / 3600), m: Math.floor((s % 3600) / 60) });
  return t("wait.days", { d: Math.floor(s / 86400), h: Math.floor((s % 86400) / 3600) });
}

function joinList(items) {
  return items.join(language() === "zh-CN" ? "、" : ", ");
}

function stationLabel(stationId) {
  if (!stationId) return "—";
  const name = state.stationNames.get(stationId);
  return name ? `${name} (${stationId})` : stationId;
}

function rememberStations(workload) {
  state.stationNames.set(workload.station.id, workload.station.name);
  for (const child of workload.children ?? []) state.stationNames.set(child.id, child.name);
}

function riskBadge(risk) {
  return el("span", { class: `risk risk-${risk}` }, term("risk", risk));
}

// ---------------------------------------------------------------- sign-in

async function signIn(token) {
  showError("signin-error", null);
  if (!token) return showError("signin-error", new ApiError(0, t("signin.empty")));
  let me;
  try {
    me = await api("/v1/me", { token });
  } catch (error) {
    if (error.status === 401) {
      error.message = t("signin.failed");
      localStorage.removeItem(TOKEN_KEY);
    }
    return showError("signin-error", error);
  }
  localStorage.setItem(TOKEN_KEY, token);
  Object.assign(state, { token, me, session: state.session + 1, lastEventId: null });
  $("token").value = "";
  $("signin").hidden = true;
  $("dashboard").hidden = false;
  for (const id of ["whoami", "signout"]) $(id).hidden = false;
  $("live").hidden = false;
  renderWho();
  startStream(state.session);
  await Promise.all([loadQueue(), me.station_id ? loadStation(me.station_id, { expand: true }) : null]);
}

function signOut(message) {
  localStorage.removeItem(TOKEN_KEY);
  state.streamAbort?.abort();
  Object.assign(state, {
    token: null, me: null, queue: [], caseId: null, caseData: null, caseWorkload: null, lastEventId: null,
    session: state.session + 1, result: null,
  });
  state.workloads.clear();
  state.expanded.clear();
  for (const id of ["queue-rows", "tree-root", "case-facts", "case-routing", "timeline-rows"]) $(id).replaceChildren();
  $("dashboard").hidden = true;
  $("case-page").hidden = true;
  for (const id of ["whoami", "signout"]) $(id).hidden = true;
  $("live").hidden = true;
  $("signin").hidden = false;
  showError("signin-error", message ? new ApiError(401, message) : null);
  $("token").focus();
}

function renderWho() {
  const me = state.me;
  if (!me) return;
  const role = t(`role.${me.role}`);
  $("whoami").replaceChildren(
    el("span", { class: "muted" }, `${t("who.label")}: `),
    el("strong", {}, me.name),
    ` · ${role} · ${stationLabel(me.station_id)}`,
  );
}

// ---------------------------------------------------------------- escalation queue

async function loadQueue() {
  if (!state.me) return;
  const session = state.session;
  const station = encodeURIComponent(state.me.station_id ?? "");
  try {
    const page = await api(`/v1/escalations?station_id=${station}&status=open&limit=100`);
    if (session !== state.session) return;
    state.queue = page.items;
    state.queueTotal = page.total;
    state.queueFetchedAt = Date.now();
    showError("queue-error", null);
  } catch (error) {
    if (session !== state.session) return;
    showError("queue-error", error);
  }
  renderQueue();
}

const scheduleQueue = debounce(loadQueue, QUEUE_DEBOUNCE_MS);

function renderQueue() {
  const elapsed = (Date.now() - state.queueFetchedAt) / 1000;
  const rows = state.queue.map((item) => {
    const open = () => openCase(item.case_id);
    return el(
      "tr",
      {
        dataset: { testid: "queue-row", caseId: item.case_id, risk: item.risk_level },
        class: item.case_id === state.caseId ? "selected" : null,
        "aria-current": item.case_id === state.caseId ? "true" : null,
        onclick: open,
      },
      el("td", {}, el("button", { type: "button", class: "link", title: item.case_id, onclick: (e) => {
        e.stopPropagation();
        open();
      } }, el("code", {}, shortId(item.case_id)))),
      el("td", {}, riskBadge(item.risk_level)),
      el("td", {}, term("category", item.category)),
      el("td", { title: term("tier", item.tier) }, stationLabel(item.station_id)),
      el("td", {}, term("reason", item.reason)),
      el("td", { class: "num" }, formatWaiting(item.waiting_seconds + (item.closed_at ? 0 : elapsed))),
    );
  });
  $("queue-rows").replaceChildren(...rows);
  $("queue-empty").hidden = rows.length > 0;
  $("queue-count").textContent = t("queue.count", { n: state.queueTotal ?? rows.length });
}

// ---------------------------------------------------------------- live stream (SSE over fetch)

function setLive(live) {
  state.live = live;
  renderLive();
}

function renderLive() {
  const node = $("live");
  node.dataset.state = state.live;
  node.querySelector(".live-text").textContent = t(
    { on: "live.on", connecting: "live.connecting", off: "live.off" }[state.live],
  );
}

/** Keep one stream open for this session: reconnect with Last-Event-ID after errors, backing off. */
async function startStream(session) {
  let backoff = BACKOFF_START_MS;
  while (session === state.session) {
    const abort = new AbortController();
    state.streamAbort = abort;
    setLive("connecting");
    try {
      const headers = { Authorization: `Bearer ${state.token}`, Accept: "text/event-stream" };
      if (state.lastEventId) headers["Last-Event-ID"] = state.lastEventId;
      const response = await fetch("/v1/stream", { headers, signal: abort.signal, cache: "no-store" });
      if (response.status === 401) return signOut(t("signin.failed"));
      if (!response.ok || !response.body) throw new Error(`stream answered ${response.status}`);
      setLive("on");
      backoff = BACKOFF_START_MS;
      // Events between the last queue load and this (re)connection were not streamed to us.
      scheduleQueue();
      await readEvents(response.body, onStreamMessage, (retry) => { backoff = retry; });
    } catch {
      // A dropped connection or an abort: fall through to the backoff (or stop, if signed out).
    }
    if (session !== state.session) return;
    setLive("off");
    await sleep(backoff * (0.8 + Math.random() * 0.4));
    backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
  }
}

/** Parse Server-Sent Events from a byte stream: fields up to a blank line make one message. */
async function readEvents(body, onMessage, onRetry) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let message = { event: "", data: [], id: null };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    // A chunk may end between "\r" and "\n": keep a trailing "\r" until the next chunk decides.
    const cut = buffer.endsWith("\r") ? buffer.length - 1 : buffer.length;
    const lines = buffer.slice(0, cut).split(/\r\n|\r|\n/);
    buffer = lines.pop() + buffer.slice(cut);
    for (const line of lines) {
      if (line === "") {
        if (message.id !== null) state.lastEventId = message.id;
        if (message.data.length) onMessage({ event: message.event || "message", data: message.data.join("\n") });
        message = { event: "", data: [], id: null };
        continue;
      }
      if (line.startsWith(":")) continue; // a comment, e.g. ": keep-alive"
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let text = colon < 0 ? "" : line.slice(colon + 1);
      if (text.startsWith(" ")) text = text.slice(1);
      if (field === "event") message.event = text;
      else if (field === "data") message.data.push(text);
      else if (field === "id" && !text.includes("\0")) message.id = text;
      else if (field === "retry" && /^\d+$/.test(text)) onRetry(Number(text));
    }
  }
}

function onStreamMessage({ event, data }) {
  if (event !== "case" && event !== "message") return;
  let cloudEvent;
  try {
    cloudEvent = JSON.parse(data);
  } catch {
    return;
  }
  const caseId = cloudEvent.subject ?? cloudEvent.data?.case_id;
  scheduleQueue();
  scheduleTree();
  if (caseId && caseId === state.caseId) scheduleCase();
}

// ---------------------------------------------------------------- station tree

async function loadStation(stationId, { expand = false } = {}) {
  const session = state.session;
  try {
    const workload = await api(`/v1/stations/${encodeURIComponent(stationId)}/workload`);
    if (session !== state.session) return null;
    state.workloads.set(stationId, workload);
    rememberStations(workload);
    if (expand) state.expanded.add(stationId);
    showError("tree-error", null);
  } catch (error) {
    if (session !== state.session) return null;
    showError("tree-error", error);
  }
  renderTree();
  renderWho();
  if (state.caseData) renderCase();
  if (state.queue.length) renderQueue();
  return state.workloads.get(stationId) ?? null;
}

const scheduleTree = debounce(() => {
  for (const stationId of state.expanded) loadStation(stationId);
}, TREE_DEBOUNCE_MS);

async function toggleStation(stationId) {
  if (state.expanded.has(stationId)) {
    state.expanded.delete(stationId);
    renderTree();
  } else {
    state.expanded.add(stationId);
    renderTree();
    await loadStation(stationId);
  }
  document.querySelector(`[data-toggle-station="${CSS.escape(stationId)}"]`)?.focus();
}

function renderTree() {
  const rootId = state.me?.station_id;
  const root = rootId && state.workloads.get(rootId);
  $("tree-root").replaceChildren(...(root ? [stationNode(root.station, root.open_cases)] : []));
}

function stationNode(station, openCases) {
  const expanded = state.expanded.has(station.id);
  const workload = state.workloads.get(station.id);
  const bodyId = `station-body-${station.id}`;
  const head = el(
    "div",
    { class: "node-head" },
    el("button", {
      type: "button", class: "toggle", "aria-expanded": String(expanded), "aria-controls": bodyId,
      dataset: { toggleStation: station.id, testid: "station-toggle" },
      "aria-label": `${expanded ? t("tree.collapse") : t("tree.expand")} ${station.name ?? station.id}`,
      onclick: () => toggleStation(station.id),
    }, expanded ? "▾" : "▸"),
    el("span", { class: "station-name" }, station.name ?? station.id),
    el("span", { class: "tier" }, term("tier", station.tier)),
    el("span", { class: "pill" }, t("tree.open_short", { n: workload?.open_cases ?? openCases ?? 0 })),
    workload?.escalations_open ? el("span", { class: "pill warn" }, t("tree.escalations", { n: workload.escalations_open }))
      : null,
  );
  const node = el("li", { class: "node", dataset: { stationId: station.id, testid: "station-node" } }, head);
  if (expanded && workload) {
    const workers = workload.workers.length
      ? el("ul", { class: "workers", "aria-label": t("tree.workers") }, workload.workers.map(workerRow))
      : el("p", { class: "muted" }, t("tree.no_workers"));
    const children = workload.children.length
      ? el("ul", { class: "tree", "aria-label": t("tree.children") },
        workload.children.map((child) => stationNode(child, child.open_cases)))
      : null;
    node.append(el("div", { class: "node-body", id: bodyId }, workers, children));
  }
  return node;
}

function workerRow(worker) {
  const ratio = worker.capacity > 0 ? worker.load / worker.capacity : 1;
  const level = ratio >= 1 ? "full" : ratio >= 0.7 ? "busy" : "ok";
  const duty = worker.on_duty ? t("tree.on_duty") : t("tree.off_duty");
  const loadText = t("tree.load", { load: worker.load, capacity: worker.capacity });
  return el(
    "li",
    { class: `worker${worker.on_duty ? "" : " off-duty"}`, dataset: { workerId: worker.id, testid: "worker-load" } },
    el("div", { class: "worker-line" },
      el("span", { class: "worker-name" }, `${worker.name} `, el("code", {}, worker.id)),
      el("span", { class: `duty ${worker.on_duty ? "on" : "off"}` }, duty),
    ),
    el("div", {
      class: `bar ${level}`, role: "meter", "aria-valuemin": "0", "aria-valuemax": String(worker.capacity),
      "aria-valuenow": String(worker.load), "aria-label": `${worker.name}: ${loadText}`,
    }, el("span", { class: "fill", style: `width: ${Math.min(100, ratio * 100).toFixed(1)}%` })),
    el("div", { class: "worker-meta muted" },
      `${loadText} · ${term("certification", worker.certification)} · `,
      joinList(worker.specialties.map((s) => term("category", s)))),
  );
}

// ---------------------------------------------------------------- case page

async function openCase(caseId) {
  const id = caseId.trim();
  if (!id) return;
  if (id !== state.caseId) {
    Object.assign(state, { caseId: id, caseData: null, caseWorkload: null, result: null });
    $("case-facts").replaceChildren(el("dt", { class: "muted" }, t("case.loading")));
    $("case-routing").replaceChildren();
    $("timeline-rows").replaceChildren();
    for (const field of ["assign-worker-id", "escalate-reason", "refer-back-station", "refer-back-reason"]) {
      $(field).value = "";
    }
    renderResult();
  }
  $("case-page").hidden = false;
  renderQueue();
  await loadCase();
  $("case-heading").scrollIntoView({ block: "nearest" });
}

async function loadCase() {
  const { session, caseId } = state;
  if (!caseId) return;
  try {
    const data = await api(`/v1/cases/${encodeURIComponent(caseId)}`);
    if (session !== state.session || caseId !== state.caseId) return;
    state.caseData = data;
    showError("case-error", null);
    if (state.caseWorkload?.station.id !== data.station_id) loadCaseWorkload(data.station_id);
  } catch (error) {
    if (session !== state.session || caseId !== state.caseId) return;
    state.caseData = null;
    showError("case-error", error);
  }
  renderCase();
}

const scheduleCase = debounce(loadCase, QUEUE_DEBOUNCE_MS);

async function loadCaseWorkload(stationId) {
  const { session, caseId } = state;
  try {
    const workload = await api(`/v1/stations/${encodeURIComponent(stationId)}/workload`);
    if (session !== state.session || caseId !== state.caseId) return;
    state.caseWorkload = workload;
    rememberStations(workload);
  } catch {
    state.caseWorkload = null; // not a supervisor here: the free-text worker id still works
  }
  renderCase();
}

function renderCase() {
  const data = state.caseData;
  $("case-id").textContent = state.caseId ?? "";
  if (!data) {
    $("case-facts").replaceChildren();
    return;
  }
  const fact = (key, value, testid) => [el("dt", {}, t(key)), el("dd", { dataset: testid ? { testid } : {} }, value)];
  $("case-facts").replaceChildren(
    ...fact("case.status", el("span", { class: `status status-${data.status}` }, term("status", data.status)), "case-status"),
    ...fact("case.risk", riskBadge(data.risk_level)),
    ...fact("case.category", term("category", data.category)),
    ...fact("case.tier", term("tier", data.tier)),
    ...fact("case.station", stationLabel(data.station_id)),
    ...fact("case.room", stationLabel(data.room_id)),
    ...fact("case.assignee", data.assignee_id ? workerLabel(data.assignee_id) : t("case.none"), "case-assignee"),
    ...fact("case.received_at", formatTime(data.received_at)),
    ...fact("case.accept_by", formatTime(data.deadlines?.accept_by)),
    ...fact("case.resolve_by", formatTime(data.deadlines?.resolve_by)),
  );
  renderRouting(data);
  renderTimeline(data.timeline ?? []);
  renderPicker();
}

function workerLabel(workerId) {
  for (const workload of [state.caseWorkload, ...state.workloads.values()]) {
    const worker = workload?.workers.find((w) => w.id === workerId);
    if (worker) return `${worker.name} (${workerId})`;
  }
  return workerId;
}

function renderRouting(data) {
  const timeline = data.timeline ?? [];
  const routed = timeline.findLast((e) => eventName(e) === "routed")?.data;
  // A manual assignment explains only itself: show it over the last search the router made.
  const latest = data.explanation;
  const source = timeline.findLast((e) => e.data?.explanation && !e.data.explanation.manual);
  const search = source?.data.explanation;
  const parts = [];
  const rule = search?.rule ?? routed?.rule;
  if (rule) parts.push(el("p", {}, el("strong", {}, `${t("case.rule")}: `), el("code", {}, rule)));
  if (routed?.reason) parts.push(el("p", { class: "muted small" }, routed.reason));
  if (search) {
    // The last search may be older than the case's state (a later decline queues it without one).
    parts.push(el("p", { class: "muted small" }, t("case.last_search", {
      event: term("event", eventName(source)), time: formatTime(source.time),
    })));
    parts.push(...searchSummary(search));
  }
  if (latest?.manual) {
    parts.push(el("p", {}, t("case.manual", { by: latest.assigned_by ?? "—" })));
    parts.push(...outcomeLine(latest.outcome));
  }
  if (!search && !latest?.manual) parts.push(el("p", { class: "muted" }, t("case.no_explanation")));
  $("case-routing").replaceChildren(...parts);
}

function searchSummary(explanation) {
  const parts = [];
  const need = explanation.need;
  if (need) {
    parts.push(el("p", {}, el("strong", {}, `${t("case.need")}: `), t("case.need_value", {
      specialty: term("category", need.specialty), certification: term("certification", need.certification),
      weight: need.weight,
    })));
  }
  // Named candidates_considered in events written before it was renamed.
  const lookedAt = explanation.workers_looked_at ?? explanation.candidates_considered;
  if (lookedAt !== undefined) {
    parts.push(el("p", {}, t("case.candidates", { n: lookedAt })));
  }
  const searches = (explanation.stations ?? []).map((station) => {
    const filtered = Object.entries(station.filtered ?? {}).filter(([, n]) => n > 0)
      .map(([reason, n]) => `${term("filter", reason)} ${n}`);
    return el("li", {},
      t("case.station_search", {
        station: stationLabel(station.station_id), via: t(`case.via.${station.via}`),
        considered: station.considered, eligible: station.eligible,
      }),
      filtered.length ? el("span", { class: "muted" }, ` — ${t("case.filtered", { list: joinList(filtered) })}`) : null,
    );
  });
  if (searches.length) parts.push(el("ul", { class: "searches", dataset: { testid: "routing-searches" } }, searches));
  return [...parts, ...outcomeLine(explanation.outcome)];
}

function outcomeLine(outcome) {
  if (outcome?.assigned) {
    return [el("p", {}, t("case.outcome_assigned", {
      worker: workerLabel(outcome.assigned), station: stationLabel(outcome.station_id),
    }))];
  }
  if (outcome?.queued_at) return [el("p", {}, t("case.outcome_queued", { station: stationLabel(outcome.queued_at) }))];
  return [];
}

function eventName(event) {
  return String(event.type ?? "").replace(/^caselink\.case\./, "").replace(/\.v\d+$/, "");
}

function eventReason(name, data) {
  switch (name) {
    case "routed":
      return data.rule ? `${t("case.rule")}: ${data.rule}` : "";
    case "escalated": {
      const from = data.from_station_id ? `${stationLabel(data.from_station_id)} → ` : "";
      return `${term("reason", data.reason)} (${from}${stationLabel(data.station_id)})`;
    }
    case "referred_back":
      return `${data.reason ?? ""} (${stationLabel(data.from_station_id)} → ${stationLabel(data.station_id)})`;
    case "queued":
      return stationLabel(data.waiting_at);
    case "assigned":
      return `${t("case.accept_by")} ${formatTime(data.accept_by)}`;
    case "sla_warning":
    case "sla_breached":
      return `${term("deadline", data.kind)} ${formatTime(data.deadline)}`;
    case "notified":
    case "notification_failed":
      return [data.channel, data.recipient, data.purpose].filter(Boolean).join(" · ");
    case "resolved":
      return data.outcome ?? "";
    default:
      return data.reason ?? "";
  }
}

function renderTimeline(events) {
  const rows = [...events].sort((a, b) => (a.data?.sequence ?? 0) - (b.data?.sequence ?? 0)).map((event) => {
    const data = event.data ?? {};
    const name = eventName(event);
    return el("tr", { dataset: { testid: "timeline-row", event: name } },
      el("td", { class: "num" }, formatTime(event.time)),
      el("td", {}, term("event", name)),
      el("td", {}, term("status", data.status)),
      el("td", { title: term("tier", data.tier) }, stationLabel(data.station_id)),
      el("td", {}, data.worker_id ? workerLabel(data.worker_id) : ""),
      el("td", {}, eventReason(name, data)),
    );
  });
  $("timeline-rows").replaceChildren(...rows);
}

function renderPicker() {
  const select = $("assign-worker");
  const chosen = select.value;
  const workers = state.caseWorkload?.workers ?? [];
  select.replaceChildren(
    el("option", { value: "" }, t("actions.worker_choose")),
    ...workers.map((w) => el("option", {
      value: w.id, disabled: !w.on_duty,
      dataset: {
        onDuty: String(w.on_duty), certification: w.certification, load: String(w.load), capacity: String(w.capacity),
      },
    }, `${w.name} (${w.id}) · ${term("certification", w.certification)} · ${w.load}/${w.capacity} · ${
      w.on_duty ? t("tree.on_duty") : t("tree.off_duty")}`)),
  );
  if (workers.some((w) => w.id === chosen)) select.value = chosen;
  const stations = state.caseWorkload?.children ?? [];
  $("refer-back-stations").replaceChildren(...stations.map((s) => el("option", { value: s.id }, s.name)));
}

function renderResult() {
  const node = $("action-result");
  const result = state.result;
  node.hidden = !result;
  node.dataset.outcome = result?.outcome ?? "";
  node.textContent = result ? result.text() : "";
}

async function act(action, body) {
  const { session, caseId } = state;
  const buttons = document.querySelectorAll("#case-page .actions button");
  buttons.forEach((b) => { b.disabled = true; });
  state.result = { outcome: "sending", text: () => t("actions.sending") };
  renderResult();
  try {
    const answer = await api(`/v1/cases/${encodeURIComponent(caseId)}/${action}`, { method: "POST", body });
    const status = answer.status;
    state.result = answer.outcome === "applied"
      ? { outcome: "applied", text: () => t("result.applied", { status: term("status", status) }) }
      : { outcome: "pending", text: () => t("result.pending") };
  } catch (error) {
    state.result = { outcome: "error", status: error.status, text: () => t("result.error", { message: describeError(error) }) };
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
  }
  if (session !== state.session || caseId !== state.caseId) return;
  renderResult();
  if (state.result.outcome !== "error") await Promise.all([loadCase(), loadQueue()]);
}

function optional(value) {
  const text = value.trim();
  return text ? text : undefined;
}

// ---------------------------------------------------------------- wiring

function renderAll() {
  translatePage();
  renderLive();
  if (!state.me) return;
  renderWho();
  renderQueue();
  renderTree();
  if (state.caseId) renderCase();
  renderResult();
}

function wire() {
  $("signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    signIn($("token").value.trim());
  });
  $("signout").addEventListener("click", () => signOut());
  $("lang-toggle").addEventListener("click", () => {
    setLanguage(language() === "zh-CN" ? "en" : "zh-CN");
    renderAll();
  });
  $("queue-refresh").addEventListener("click", () => loadQueue());
  $("lookup-form").addEventListener("submit", (e) => {
    e.preventDefault();
    openCase($("lookup-id").value);
  });
  $("case-close").addEventListener("click", () => {
    Object.assign(state, { caseId: null, caseData: null, caseWorkload: null, result: null });
    $("case-page").hidden = true;
    renderQueue();
  });
  $("assign-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const workerId = $("assign-worker-id").value.trim() || $("assign-worker").value;
    if (!workerId) {
      state.result = { outcome: "error", text: () => t("actions.worker_required") };
      return renderResult();
    }
    act("assign", { worker_id: workerId });
  });
  $("escalate-form").addEventListener("submit", (e) => {
    e.preventDefault();
    act("escalate", { reason: optional($("escalate-reason").value) });
  });
  $("refer-back-form").addEventListener("submit", (e) => {
    e.preventDefault();
    act("refer-back", { station_id: optional($("refer-back-station").value), reason: optional($("refer-back-reason").value) });
  });
  // Waiting times keep counting between refreshes.
  setInterval(() => { if (state.me && state.queue.length) renderQueue(); }, 15000);
}

wire();
renderAll();
const saved = localStorage.getItem(TOKEN_KEY);
if (saved) signIn(saved);
