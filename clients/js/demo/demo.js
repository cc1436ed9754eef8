// The outpatient demo page: what a patient sees on their phone, plus an operator panel that
// exists only when the server runs in development mode.
//
//   /demo/?user=p1[&topics=clinic-205]  token from the development endpoint (pushsvc serve --dev)
//   /demo/?token=<jwt>                    a token handed out by the hospital's systems

import { connect, pushPermission } from "/client/pushsvc.js";

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
  if (msg.replay || msg.pushed) {
    const tag = document.createElement("span");
    tag.className = "tag";
    tag.textContent = msg.pushed ? "from a notification" : "while you were away";
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

// ---- notifications while the page is closed (Web Push) -------------------------------------

const PUSH_STATES = {
  off: {
    text: "Get a notification on this device when it is your turn, even with this page closed.",
    button: "Turn on",
  },
  asking: {
    text: "Please answer your browser's question: allow notifications from this page.",
    button: "Waiting for your answer…",
  },
  on: {
    text: "On. If you miss a message here, this device gets a notification, even with the page closed.",
    button: "Turn off",
  },
  blocked: {
    text: "Notifications are blocked for this page. To get them, allow notifications in your " +
      "browser's settings for this site, then reload the page. Until then, keep this page open.",
  },
  unsupported: {
    text: "This browser cannot notify you while the page is closed, so please keep this page open. " +
      "On an iPhone or iPad: tap Share, then Add to Home Screen, and open the page from there.",
  },
};

/** Why turning on failed, in the patient's words; codes not listed leave the switch off. */
const PUSH_FAILURES = {
  denied: "blocked",
  unsupported: "unsupported",
  dismissed: "You did not allow notifications. Tap the button to be asked again.",
  key_unavailable: "Notifications are not available from this hospital right now. Please keep this page open.",
  subscribe_failed:
    "Your browser could not set up notifications here (a private window, or no connection?). " +
    "Please keep this page open.",
  timeout: "We could not confirm notifications in time. Please try again.",
  refused: "Notifications are not available from this hospital right now. Please keep this page open.",
};

function showPush(state, note) {
  const box = $("push");
  const { text: words, button } = PUSH_STATES[state];
  box.dataset.state = state;
  $("push-text").textContent = note ?? words;
  const toggle = $("push-toggle");
  toggle.hidden = button === undefined;
  toggle.textContent = button ?? "";
  toggle.disabled = state === "asking";
  toggle.setAttribute("aria-pressed", String(state === "on"));
  box.hidden = false;
}

async function turnPushOn(client, { quiet = false } = {}) {
  if (!quiet) showPush("asking");
  try {
    await client.enablePush();
    showPush("on");
  } catch (err) {
    const failure = PUSH_FAILURES[err.code];
    if (failure === "blocked" || failure === "unsupported") showPush(failure);
    else showPush("off", failure ?? `Notifications could not be turned on: ${err.message}`);
  }
}

async function setUpPush(client) {
  const permission = pushPermission();
  if (permission === "unsupported" || permission === "blocked") {
    showPush(permission);
  } else if ((await client.pushState()) === "on") {
    // Turned on in an earlier visit: send the subscription on this session too (no prompt).
    showPush("on");
    turnPushOn(client, { quiet: true });
  } else {
    showPush("off");
  }
  $("push-toggle").addEventListener("click", async () => {
    if ($("push").dataset.state === "on") {
      await client.disablePush().catch(() => {});
      showPush("off");
    } else {
      await turnPushOn(client);
    }
  });
}

// ---- operator panel (development mode only) -------------------------------------------------

/** What the push notification says when the operator leaves title and text empty. */
function pushWords(name, data) {
  switch (name) {
    case "queue.called":
      return ["It is your turn", `Please go to room ${text(data?.room, "the consultation room")}.`];
    case "queue.position":
      return ["Your place in line", `Number ${text(data?.position, "?")} at clinic ${text(data?.clinic, "your clinic")}.`];
    case "rx.ready":
      return ["Your prescription is ready", `Collect it at pharmacy window ${text(data?.window, "?")}.`];
    case "lab.ready":
      return ["Your lab result is ready", text(data?.test, "")];
    default:
      return ["New message from the clinic", "Open the page to read it."];
  }
}

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
    for (const field of form.querySelectorAll("[data-push]")) {
      field.hidden ||= !$("op-push").checked;
    }
  };
  select.addEventListener("change", showFields);
  to.addEventListener("change", showFields);
  $("op-push").addEventListener("change", showFields);
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
    if (to.value === "users" && $("op-push").checked) {
      const [title, words] = pushWords(name, data);
      body.push = {
        after: Number(f.get("pushAfter")),
        title: String(f.get("pushTitle")).trim() || title,
        body: String(f.get("pushBody")).trim() || words,
        urgency: String(f.get("pushUrgency")),
      };
    }
    $("op-send").disabled = true;
    try {
      const response = await fetch("/demo/api/publish", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      const reply = await response.json().catch(() => ({}));
      const escalation = body.push ? ` A push follows in ${body.push.after} s unless it is seen.` : "";
      result.textContent = response.ok
        ? `Sent ${name} (message ${reply.id}) to ${reply.online_sessions} open session(s).${escalation}`
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
  setUpPush(client);
  window.pushsvcDemo = { client }; // for inspection from the browser console
}

main();
