// The outpatient demo page: what a patient sees on their phone, plus an operator panel that
// exists only when the server runs in development mode.
//
//   /demo/?user=p1[&topics=clinic-205]  token from the development endpoint (pushsvc serve --dev)
//   /demo/?token=<jwt>                    a token handed out by the hospital's systems

import { connect } from "/client/pushsvc.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

const CLOSE_REASONS = {
  4001: "Your link is no longer valid. Please ask the reception desk for a new one.",
  4002: "The connection could not be set up in time. Please reload the page.",
  4010: "This page was disconnected by the hospital. Please reload the page if you still need it.",
};

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });

// ---- connection indicator -------------------------------------------------------------------

function showConnection(change) {
  const box = $("connection");
  box.dataset.state = change.state;
  if (change.code !== undefined) box.dataset.code = String(change.code);
  const text = {
    idle: "Starting…",
    connecting: "Connecting…",
    open: "Live updates on",
    reconnecting: "Reconnecting…",
    closed: "Disconnected",
  }[change.state] ?? change.state;
  $("connection-text").textContent = text;

  const notice = $("notice");
  if (change.state === "reconnecting") {
    notice.hidden = false;
    notice.dataset.kind = "warning";
    notice.textContent =
      "Connection lost. Trying again… Messages sent meanwhile will appear once we are back.";
  } else if (change.state === "closed") {
    notice.hidden = false;
    notice.dataset.kind = "error";
    const why = CLOSE_REASONS[change.code] ?? "This page is no longer receiving updates. Please reload it.";
    const reload = document.createElement("button");
    reload.type = "button";
    reload.className = "button notice-button";
    reload.textContent = "Reload page";
    reload.addEventListener("click", () => location.reload());
    notice.replaceChildren(Object.assign(document.createElement("p"), { textContent: why }), reload);
    announce(why, true);
  } else if (change.state === "open") {
    if (!notice.hidden && notice.dataset.kind === "warning") announce("Connection restored.");
    notice.hidden = true;
  }
}

// ---- announcements (screen readers) ---------------------------------------------------------

function announce(text, urgent = false) {
  const region = $(urgent ? "announce-urgent" : "announce");
  region.textContent = "";
  // A fresh text node after clearing makes screen readers speak a repeated message again.
  setTimeout(() => {
    region.textContent = text;
  }, 50);
}

// ---- rendering messages ---------------------------------------------------------------------

function setStatus(kind, label, title, detail) {
  const status = $("status");
  status.dataset.kind = kind;
  $("status-label").textContent = label;
  $("status-title").textContent = title;
  $("status-detail").textContent = detail;
}

function text(value, fallback = "") {
  return value === undefined || value === null || value === "" ? fallback : String(value);
}

/** What a notification says, in words: {summary, urgent}. Applies its effect on the page. */
function render(msg) {
  const data = msg.data !== null && typeof msg.data === "object" ? msg.data : {};
  switch (msg.event) {
    case "queue.position": {
      const position = Number(data.position);
      const clinic = text(data.clinic, "your clinic");
      const title = position === 1 ? "You are next" : `Number ${text(data.position, "?")} in line`;
      setStatus("waiting", `Clinic ${clinic}`, title, "Please stay close to the waiting area.");
      return { summary: `${title} at clinic ${clinic}.`, urgent: false };
    }
    case "queue.called": {
      const room = text(data.room, "the consultation room");
      const clinic = text(data.clinic, "");
      setStatus(
        "called",
        clinic ? `Clinic ${clinic} — it is your turn` : "It is your turn",
        `Please go to room ${room}`,
        "The doctor is ready to see you now.",
      );
      document.title = `Room ${room} — your turn`;
      if (!msg.restored) navigator.vibrate?.([200, 100, 200]);
      return { summary: `It is your turn. Please go to room ${room}.`, urgent: true };
    }
    case "rx.ready": {
      const where = data.window ? `Collect it at pharmacy window ${data.window}.` : "Collect it at the pharmacy.";
      $("rx-detail").textContent = where;
      $("rx-card").hidden = false;
      return { summary: `Your prescription is ready. ${where}`, urgent: false };
    }
    case "lab.ready": {
      const test = text(data.test, "test");
      $("lab-detail").textContent = `${test}. Your doctor will go through it with you.`;
      $("lab-card").hidden = false;
      return { summary: `Your lab result is ready: ${test}.`, urgent: false };
    }
    default:
      return { summary: text(msg.event, "Notification"), urgent: false, generic: true };
  }
}

const shown = new Set(); // message ids on the page: each appears once

// ---- the page's memory: a reload keeps what the patient was told ---------------------------

const KEEP = 50; // notifications kept per patient in this browser
const KEEP_FOR = 12 * 3600 * 1000; // ms; older ones are not shown again after a reload
const FIELDS = ["id", "stream", "offset", "event", "data", "ts"];

function keptKey(user) {
  return `pushsvc-demo:feed:${user}`;
}

function loadKept(user) {
  try {
    const kept = JSON.parse(localStorage.getItem(keptKey(user)) ?? "[]");
    const since = Date.now() - KEEP_FOR;
    return Array.isArray(kept) ? kept.filter((m) => m && typeof m.id === "string" && m.ts > since) : [];
  } catch {
    return [];
  }
}

function keep(user, msg) {
  try {
    const kept = loadKept(user).filter((m) => m.id !== msg.id);
    kept.push(Object.fromEntries(FIELDS.map((f) => [f, msg[f]])));
    kept.sort((a, b) => a.ts - b.ts);
    localStorage.setItem(keptKey(user), JSON.stringify(kept.slice(-KEEP)));
  } catch {
    // Storage full or refused: the page still works, a reload starts empty.
  }
}

let pageUser = null;

/** Shows what this browser was already told (oldest first), silently. */
function restore(user) {
  pageUser = user;
  for (const msg of loadKept(user)) {
    if (shown.has(msg.id)) continue;
    shown.add(msg.id);
    addToFeed(msg, render({ ...msg, restored: true }));
  }
}

function addToFeed(msg, said) {
  const item = document.createElement("li");
  item.className = "feed-item";
  item.dataset.id = msg.id;
  item.dataset.event = text(msg.event);
  if (said.urgent) item.classList.add("urgent");

  const head = document.createElement("div");
  head.className = "feed-head";
  const time = document.createElement("time");
  const at = new Date(typeof msg.ts === "number" ? msg.ts : Date.now());
  time.dateTime = at.toISOString();
  time.textContent = timeFormat.format(at);
  head.append(time);
  if (msg.replay) {
    const tag = document.createElement("span");
    tag.className = "tag";
    tag.textContent = "while you were away";
    head.append(tag);
  }

  const body = document.createElement("p");
  body.className = "feed-text";
  body.textContent = said.summary;
  item.append(head, body);

  if (said.generic) {
    const pre = document.createElement("pre");
    pre.className = "feed-data";
    pre.textContent = JSON.stringify(msg.data, null, 2);
    item.append(pre);
  }
  $("feed").prepend(item);
  $("feed-empty").hidden = true;
}

function onMessage(msg) {
  if (shown.has(msg.id)) return;
  shown.add(msg.id);
  if (pageUser !== null) keep(pageUser, msg);
  const said = render(msg);
  addToFeed(msg, said);
  // A call that arrives with a replay was missed while offline: it is still urgent.
  announce(said.summary, said.urgent);
}

// ---- operator panel (development mode only) -------------------------------------------------

function setUpOperator(user, topics) {
  const form = $("operator-form");
  const select = $("op-event");
  const to = $("op-to");
  $("op-user").value = user;
  if (topics.length > 0) $("op-topic").value = topics[0];
  const showFields = () => {
    for (const field of form.querySelectorAll("[data-for]")) {
      field.hidden = !field.dataset.for.split(" ").includes(select.value);
    }
    for (const field of form.querySelectorAll("[data-to]")) {
      field.hidden = field.dataset.to !== to.value;
    }
  };
  select.addEventListener("change", showFields);
  to.addEventListener("change", showFields);
  showFields();

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const result = $("operator-result");
    const f = new FormData(form);
    let name = select.value;
    let data;
    switch (name) {
      case "queue.position":
        data = { clinic: f.get("clinic"), position: Number(f.get("position")) };
        break;
      case "queue.called":
        data = { clinic: f.get("clinic"), room: f.get("room"), position: Number(f.get("position")) };
        break;
      case "rx.ready":
        data = { window: f.get("window") };
        break;
      case "lab.ready":
        data = { test: f.get("test") };
        break;
      default:
        name = String(f.get("customEvent")).trim();
        try {
          data = JSON.parse(String(f.get("customData")) || "null");
        } catch {
          result.textContent = "The data is not valid JSON.";
          return;
        }
    }
    const target = {
      users: { users: [String(f.get("user")).trim()] },
      topics: { topics: [String(f.get("topic")).trim()] },
      all: { all: true },
    }[to.value];
    const body = { to: target, event: name, data };
    $("op-send").disabled = true;
    try {
      const response = await fetch("/demo/api/publish", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      const reply = await response.json().catch(() => ({}));
      result.textContent = response.ok
        ? `Sent ${name} (message ${reply.id}) to ${reply.online_sessions} open session(s).`
        : `Not sent: ${reply.error?.message ?? response.status}`;
    } catch (err) {
      result.textContent = `Not sent: ${err}`;
    } finally {
      $("op-send").disabled = false;
    }
  });
  $("operator").hidden = false;
}

// ---- start ----------------------------------------------------------------------------------

async function demoToken(user, topics) {
  const response = await fetch("/demo/api/token", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ user, topics }),
  });
  if (!response.ok) throw new Error(`token endpoint answered ${response.status}`);
  return (await response.json()).token;
}

async function main() {
  const givenToken = params.get("token");
  const user = params.get("user");
  const topics = (params.get("topics") ?? "").split(",").map((t) => t.trim()).filter(Boolean);
  let token;

  if (givenToken) {
    token = givenToken;
  } else if (user) {
    let first;
    try {
      first = await demoToken(user, topics); // fails fast when the server is not in development mode
    } catch {
      showConnection({ state: "closed" });
      $("notice").textContent =
        "Demo sign-in is not available on this server. Open this page with the link you were given.";
      return;
    }
    // The first connection uses the token fetched above; every reconnect asks for a fresh one.
    token = () => {
      const ready = first;
      first = undefined;
      return ready ?? demoToken(user, topics);
    };
    setUpOperator(user, topics);
  } else {
    $("start").hidden = false;
    $("connection-text").textContent = "Not connected";
    return;
  }

  const client = connect({ token });
  client.on("state", showConnection);
  client.on("message", onMessage);
  client.on("welcome", (welcome) => {
    $("patient").textContent = `Patient ${welcome.user}`;
    if (pageUser !== welcome.user) restore(welcome.user);
  });
  window.pushsvcDemo = { client }; // for inspection from the browser console
}

main();
