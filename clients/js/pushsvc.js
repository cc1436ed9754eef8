// pushsvc browser client: one WebSocket session per tab, dependency-free ES module.
//
//   import { connect } from "/client/pushsvc.js";
//   const client = connect({ token: async () => fetchToken() });
//   client.on("state", (s) => render(s.state, s.code));
//   client.on("message", (m) => show(m.event, m.data));
//
// What the client does for you (wire protocol: docs/protocol.md):
// - sends the hello frame with a per-browser device id kept in localStorage;
// - acknowledges messages that ask for it, in batches;
// - emits each message id once (duplicates that ask for an ack are acked again, not emitted);
// - answers server pings, and declares the connection dead when the server has been silent for
//   2.5 heartbeats;
// - reconnects with exponential backoff and full jitter, except after close codes 4001, 4002 and
//   4010 ("don't reconnect with the same token");
// - with a token function, refreshes the session's token before it expires (`refresh`, see
//   refreshDelay) and, after 4001 token_expired on a session that was open, reconnects at once
//   with a new token from it;
// - resumes each stream after the last offset it has acknowledged;
// - with enablePush(), keeps a Web Push subscription registered with the server, so the patient
//   is notified when the page is closed (see PUSH below), and acknowledges a pushed message
//   whose notification brought the patient back.
//
// The pure pieces (backoff, dedupe window, offset arithmetic, storage) are named exports so they
// can be tested without a browser.

/** Close codes after which the client stays closed (docs/protocol.md). */
export const NO_RECONNECT_CODES = Object.freeze([4001, 4002, 4010]);

/** Local close codes reported in state events for failures the client detects itself. */
export const LOCAL_CODES = Object.freeze({ heartbeatTimeout: 4009, connectTimeout: 1006 });

export const DEFAULTS = Object.freeze({
  backoffBase: 500, // ms, the first retry waits up to this long
  backoffCap: 30000, // ms, no retry waits longer than this
  stableAfter: 5000, // ms open before the backoff starts again from its first step
  ackDelay: 25, // ms to gather acks into one frame
  ackBatch: 100, // ids per ack frame at most
  dedupeSize: 2048, // message ids remembered
  heartbeatFactor: 2.5, // silence of this many heartbeats means the connection is dead
  connectTimeout: 10000, // ms from dialing to the welcome frame
});

const STORAGE_PREFIX = "pushsvc:";

/** The most streams a hello's resume may name (the server refuses more). */
export const RESUME_LIMIT = 66; // every stream one token can read: 64 topics, the user stream and "all"

/** True when a close with this code should be followed by a reconnect. */
export function shouldReconnect(code) {
  return !NO_RECONNECT_CODES.includes(code);
}

/**
 * Full-jitter exponential backoff: a uniform delay in [0, min(cap, base * 2^attempt)).
 * `random` returns a number in [0, 1), as Math.random does.
 */
export function backoffDelay(attempt, base = DEFAULTS.backoffBase, cap = DEFAULTS.backoffCap,
  random = Math.random) {
  const step = Math.max(0, Math.min(Math.floor(attempt), 52));
  const ceiling = Math.min(cap, base * 2 ** step);
  return Math.floor(random() * ceiling);
}

/** Counts failed attempts and hands out the delay before the next one. */
export class Backoff {
  constructor({ base = DEFAULTS.backoffBase, cap = DEFAULTS.backoffCap, random = Math.random } = {}) {
    this.base = base;
    this.cap = cap;
    this.random = random;
    this.attempt = 0;
  }

  /** The delay before the next attempt; each call moves one step up. */
  next() {
    const delay = backoffDelay(this.attempt, this.base, this.cap, this.random);
    this.attempt += 1;
    return delay;
  }

  reset() {
    this.attempt = 0;
  }
}

/**
 * Remembers the last `size` message ids, oldest forgotten first.
 * `check(id)` answers true for an id seen before and records the id otherwise.
 */
export class DedupeWindow {
  constructor(size = DEFAULTS.dedupeSize) {
    if (!(size >= 1)) throw new RangeError("dedupe window size must be at least 1");
    this.size = Math.floor(size);
    this.ids = new Set();
    this.order = [];
    this.head = 0; // index of the oldest id in `order` once the window is full
  }

  has(id) {
    return this.ids.has(id);
  }

  check(id) {
    if (this.ids.has(id)) return true;
    if (this.order.length < this.size) {
      this.order.push(id);
    } else {
      this.ids.delete(this.order[this.head]);
      this.order[this.head] = id;
      this.head = (this.head + 1) % this.size;
    }
    this.ids.add(id);
    return false;
  }

  get length() {
    return this.ids.size;
  }
}

const OFFSET_RE = /^(\d+)-(\d+)$/;

/** Splits "<ms>-<seq>" into its two digit strings without leading zeros, or null. */
export function parseOffset(offset) {
  if (typeof offset !== "string") return null;
  const m = OFFSET_RE.exec(offset);
  if (!m) return null;
  return [m[1].replace(/^0+(?=\d)/, ""), m[2].replace(/^0+(?=\d)/, "")];
}

function compareDigits(a, b) {
  if (a.length !== b.length) return a.length < b.length ? -1 : 1;
  if (a === b) return 0;
  return a < b ? -1 : 1;
}

/**
 * Orders two "<ms>-<seq>" offsets as pairs of integers (exactly, at any size): -1, 0 or 1.
 * Returns NaN when either offset has another shape: such offsets are opaque.
 */
export function compareOffsets(a, b) {
  const pa = parseOffset(a);
  const pb = parseOffset(b);
  if (pa === null || pb === null) return Number.NaN;
  return compareDigits(pa[0], pb[0]) || compareDigits(pa[1], pb[1]);
}

/**
 * The offset to resume from after seeing `incoming` when `current` was the last one:
 * the later of the two when both can be ordered, else `incoming` (the server sends a stream in
 * order, so the newest offset received is the one to keep).
 */
export function laterOffset(current, incoming) {
  if (current === undefined || current === null) return incoming;
  const order = compareOffsets(current, incoming);
  return order > 0 ? current : incoming;
}

/** Merges two {stream: offset} maps, keeping the later offset of each stream. */
export function mergeOffsets(base, update) {
  const out = { ...base };
  for (const [stream, offset] of Object.entries(update)) {
    if (typeof offset === "string") out[stream] = laterOffset(out[stream], offset);
  }
  return out;
}

/** A Storage-like object kept in memory, for when localStorage is missing or refused. */
export class MemoryStorage {
  constructor() {
    this.items = new Map();
  }
  getItem(key) {
    return this.items.has(key) ? this.items.get(key) : null;
  }
  setItem(key, value) {
    this.items.set(key, String(value));
  }
  removeItem(key) {
    this.items.delete(key);
  }
}

/** The page's localStorage when it can be used, else a MemoryStorage. */
export function defaultStorage() {
  try {
    const storage = globalThis.localStorage;
    if (storage) {
      const probe = `${STORAGE_PREFIX}probe`;
      storage.setItem(probe, "1");
      storage.removeItem(probe);
      return storage;
    }
  } catch {
    // Storage refused (private mode, blocked cookies): fall through to memory.
  }
  return new MemoryStorage();
}

function randomId() {
  const bytes = new Uint8Array(16);
  globalThis.crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The browser's device id: read from storage, or made and stored on first use. */
export function deviceId(storage) {
  const key = `${STORAGE_PREFIX}device`;
  let id = null;
  try {
    id = storage.getItem(key);
  } catch {
    id = null;
  }
  if (typeof id === "string" && id.length > 0) return id;
  id = `web-${randomId()}`;
  try {
    storage.setItem(key, id);
  } catch {
    // Not persisted: this tab still works, the next one gets another id.
  }
  return id;
}

/**
 * Last acknowledged offsets per stream of one device and patient, shared by the browser's tabs.
 * Keyed by patient too, so that two patients' pages in one browser never resume from each
 * other's progress on a topic they share.
 */
export class OffsetStore {
  constructor(storage, device, user) {
    this.storage = storage;
    this.key = `${STORAGE_PREFIX}offsets:${device}:${user}`;
  }

  load() {
    try {
      const raw = this.storage.getItem(this.key);
      const parsed = raw ? JSON.parse(raw) : {};
      if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) return {};
      const out = {};
      for (const [stream, offset] of Object.entries(parsed)) {
        if (typeof offset === "string") out[stream] = offset;
      }
      return out;
    } catch {
      return {};
    }
  }

  /** Records offsets, keeping per stream the later of stored and given (other tabs write too). */
  save(offsets) {
    try {
      this.storage.setItem(this.key, JSON.stringify(mergeOffsets(this.load(), offsets)));
    } catch {
      // Quota or refusal: resume falls back to this tab's memory.
    }
  }
}

/**
 * The resume map for a hello: at most `limit` streams; when there are more, the user stream and
 * `all` are kept first (they hold what is addressed to the patient), then the most recent.
 */
export function resumeFor(offsets, limit = RESUME_LIMIT) {
  const entries = Object.entries(offsets).filter(([, offset]) => typeof offset === "string");
  if (entries.length <= limit) return Object.fromEntries(entries);
  const rank = ([stream]) => (stream.startsWith("user:") || stream === "all" ? 0 : 1);
  entries.sort((a, b) => rank(a) - rank(b) || -(compareOffsets(a[1], b[1]) || 0));
  return Object.fromEntries(entries.slice(0, limit));
}

/** The claims of a JWT, read without verifying it (the server verifies); null for any other token. */
export function tokenClaims(token) {
  if (typeof token !== "string") return null;
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  try {
    const base64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const binary = atob(base64.padEnd(Math.ceil(base64.length / 4) * 4, "="));
    const claims = JSON.parse(new TextDecoder().decode(Uint8Array.from(binary, (c) => c.charCodeAt(0))));
    return claims !== null && typeof claims === "object" ? claims : null;
  } catch {
    return null;
  }
}

/** The `sub` claim of a JWT, read without verifying it; null for any other token. */
export function tokenSubject(token) {
  const claims = tokenClaims(token);
  return typeof claims?.sub === "string" && claims.sub.length > 0 ? claims.sub : null;
}

/**
 * Milliseconds from `nowMs` until a token should be refreshed: a minute before its `exp`, or at
 * 80% of a lifetime shorter than five minutes (from `iat`, or from now without one). Null when
 * the token is not a JWT with a numeric `exp`.
 */
export function refreshDelay(token, nowMs) {
  const claims = tokenClaims(token);
  if (typeof claims?.exp !== "number") return null;
  const now = nowMs / 1000;
  const lifetime = claims.exp - (typeof claims.iat === "number" ? claims.iat : now);
  return Math.max(0, Math.round((claims.exp - Math.min(60, 0.2 * lifetime) - now) * 1000));
}

/** The WebSocket URL of the page's own host: ws(s)://host/ws. */
export function defaultUrl(location = globalThis.location, path = "/ws") {
  if (!location) throw new Error("pushsvc: no url given and no page location to derive it from");
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${path}`;
}

function resolveUrl(url) {
  if (!url) return defaultUrl();
  if (url.startsWith("/")) return defaultUrl(globalThis.location, url);
  return url;
}

// ---- Web Push ------------------------------------------------------------------------------
//
// enablePush() registers the service worker (/client/pushsvc-sw.js), asks the patient's
// permission, fetches the server's VAPID key (GET /client/push-key), subscribes the browser with
// it and sends {"type":"push_subscribe","subscription":{endpoint, keys}} on the socket: now,
// and again after every welcome, until disablePush(). The server answers {"type":"push_subscribed"}.

/** Why enablePush() failed: `code` is one of PUSH_ERROR_CODES. */
export class PushError extends Error {
  constructor(code, message, cause) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = "PushError";
    this.code = code;
  }
}

export const PUSH_ERROR_CODES = Object.freeze([
  "unsupported", // this browser (or this kind of window) cannot receive Web Push
  "denied", // the patient blocked notifications for this site
  "dismissed", // the patient closed the permission prompt without answering
  "key_unavailable", // GET /client/push-key failed: push is not configured on the server
  "subscribe_failed", // the browser's push service refused the subscription
  "timeout", // the server did not confirm with push_subscribed in time
  "cancelled", // disablePush() was called before the server confirmed
  "refused", // the server closed the session over the push_subscribe frame (4003)
]);

export const PUSH_DEFAULTS = Object.freeze({
  serviceWorker: "/client/pushsvc-sw.js",
  pushKeyPath: "/client/push-key",
  pushTimeout: 10000, // ms from enablePush() to the server's push_subscribed
});

/** The service worker posts this to the page a notification click brought back. */
export const PUSH_OPENED = "pushsvc:opened";

/**
 * What a page can expect of push: "unsupported", "blocked" (permission denied), "default"
 * (not asked yet) or "granted". `env` holds the browser's objects (navigator, Notification,
 * PushManager, isSecureContext), the page's own by default.
 */
export function pushPermission(env = browserEnv()) {
  if (!pushSupported(env)) return "unsupported";
  const permission = env.Notification.permission;
  return permission === "denied" ? "blocked" : permission === "granted" ? "granted" : "default";
}

function browserEnv() {
  return {
    navigator: globalThis.navigator,
    Notification: globalThis.Notification,
    PushManager: globalThis.PushManager,
    isSecureContext: globalThis.isSecureContext,
    fetch: globalThis.fetch?.bind(globalThis),
  };
}

function pushSupported(env) {
  return Boolean(env.isSecureContext !== false && env.navigator?.serviceWorker && env.PushManager &&
    env.Notification);
}

/** The http(s) URL of `path` on the host of a ws(s) URL. */
export function httpUrlOf(wsUrl, path) {
  const url = new URL(wsUrl);
  url.protocol = url.protocol === "wss:" ? "https:" : "http:";
  url.pathname = path;
  url.search = "";
  url.hash = "";
  return url.href;
}

/** Decodes base64url (padded or not) to bytes; throws on anything else. */
export function base64UrlBytes(text) {
  if (typeof text !== "string" || !/^[A-Za-z0-9_-]+={0,2}$/.test(text)) {
    throw new TypeError("not base64url");
  }
  const base64 = text.replace(/=+$/, "").replace(/-/g, "+").replace(/_/g, "/");
  const binary = atob(base64.padEnd(Math.ceil(base64.length / 4) * 4, "="));
  return Uint8Array.from(binary, (c) => c.charCodeAt(0));
}

function sameBytes(a, b) {
  if (!a || !b) return false;
  const x = new Uint8Array(a);
  const y = new Uint8Array(b);
  return x.length === y.length && x.every((v, i) => v === y[i]);
}

/** The wire form of a PushSubscription: {endpoint, keys: {p256dh, auth}}, or null if incomplete. */
export function subscriptionFrame(subscription) {
  const json = typeof subscription?.toJSON === "function" ? subscription.toJSON() : subscription;
  const endpoint = json?.endpoint;
  const keys = json?.keys;
  if (typeof endpoint !== "string" || typeof keys?.p256dh !== "string" || typeof keys?.auth !== "string") {
    return null;
  }
  return { endpoint, keys: { p256dh: keys.p256dh, auth: keys.auth } };
}

/** Resolves with the registration once it has an active worker (push needs one). */
function activeRegistration(registration) {
  if (registration.active) return Promise.resolve(registration);
  const worker = registration.installing ?? registration.waiting;
  if (!worker) return Promise.reject(new PushError("unsupported", "the service worker has no worker to activate"));
  return new Promise((resolve, reject) => {
    worker.addEventListener("statechange", () => {
      if (worker.state === "activated") resolve(registration);
      else if (worker.state === "redundant") reject(new PushError("unsupported", "the service worker failed to install"));
    });
  });
}

// Messages the service worker posted before any PushClient listened: a page opened by a
// notification click can get its message before the page's code has made its client.
const openedBeforeClients = [];
const liveClients = new Set();

const OPENED_KEPT = 20;

/**
 * Hands a message the service worker posted ({"type":"pushsvc:opened","message":{...}}) to the
 * page's clients, or keeps it for the first client made. The module listens on the page's
 * navigator.serviceWorker already; call this only for messages received some other way.
 */
export function handleWorkerMessage(event) {
  const data = event?.data;
  if (data?.type !== PUSH_OPENED || typeof data.message?.id !== "string") return;
  if (liveClients.size === 0) {
    openedBeforeClients.push(data.message);
    openedBeforeClients.splice(0, openedBeforeClients.length - OPENED_KEPT);
    return;
  }
  for (const client of liveClients) client.opened(data.message);
}

globalThis.navigator?.serviceWorker?.addEventListener?.("message", handleWorkerMessage);

const OPEN = 1;

/**
 * One push session per instance. States: "idle" → "connecting" → "open"; after a drop
 * "reconnecting" (until the next welcome); "closed" after close() or a no-reconnect code.
 *
 * Events (subscribe with on(type, fn), which returns an unsubscribe function):
 * - "state":   {state, code?, reason?, attempt?, delay?, session?, node?, error?}
 * - "message": the msg frame {id, stream, offset, event, data, ts, ack, replay}, once per id
 * - "welcome": the welcome frame
 * - "error":   an error frame from the server {code, message}; a close follows
 * - "push":    {state: "on"} when the server confirmed a push subscription, {state: "off"} after
 *              disablePush()
 *
 * A message whose notification brought the patient back is emitted as a "message" with
 * `pushed: true` before the socket delivers it (see opened()).
 */
export class PushClient {
  constructor(options = {}) {
    if (options.token === undefined || options.token === null) {
      throw new TypeError("pushsvc: a token (string or function returning one) is required");
    }
    this.options = { ...DEFAULTS, ...options };
    this.url = resolveUrl(options.url);
    this.storage = options.storage ?? defaultStorage();
    this.device = options.device ?? deviceId(this.storage);
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this.backoff = new Backoff({
      base: this.options.backoffBase,
      cap: this.options.backoffCap,
      random: options.random ?? Math.random,
    });
    this.dedupe = new DedupeWindow(this.options.dedupeSize);
    this.listeners = new Map();
    this.state = "idle";
    this.session = null;
    this.node = null;
    this.user = null;
    this.heartbeat = null;
    // This tab's resume point per stream, for the patient `offsetsUser`. Loaded from storage when
    // the tab first connects; after that only this tab's own progress moves it, so a reconnecting
    // tab gets what it missed even when a sibling tab of the same device has seen it.
    this.offsets = {};
    this.offsetsUser = null;
    this.ws = null;
    this.generation = 0; // bumps whenever a socket is abandoned, so its late events are ignored
    this.stopped = true;
    this.pendingAcks = [];
    this.pendingOffsets = {};
    this.lastError = null;
    this.timers = { ack: null, retry: null, connect: null, alive: null, stable: null, refresh: null };
    this.now = options.now ?? Date.now; // ms, for the token's refresh time
    this.token = null; // the token of the current connection
    this.refreshing = null; // the token of the last refresh sent
    // Web Push: the subscription sent after every welcome, a push_unsubscribe still owed to the
    // server, enablePush() calls waiting for push_subscribed, and ids of pushed messages whose
    // notification brought the patient here (acknowledged once the socket is open).
    this.pushEnv = options.pushEnv ?? null;
    this.pushRegistration = null;
    this.pushSubscription = null;
    this.pushUnsubscribeOwed = false;
    this.pushUnconfirmed = false; // push_subscribe sent on this socket, no push_subscribed yet
    this.pushWaiters = new Set();
    this.pushedAcks = [];
    // Back online, or a phone's tab shown again after its timers were frozen: don't sit out the
    // rest of a backoff wait.
    this.onWake = () => {
      if (globalThis.document?.visibilityState !== "hidden") this.retryNow();
    };
  }

  on(type, listener) {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type).add(listener);
    return () => this.off(type, listener);
  }

  off(type, listener) {
    this.listeners.get(type)?.delete(listener);
  }

  emit(type, payload) {
    for (const listener of [...(this.listeners.get(type) ?? [])]) {
      try {
        listener(payload);
      } catch (err) {
        // A listener's bug must not break the session; report it like any uncaught error.
        if (typeof globalThis.reportError === "function") {
          globalThis.reportError(err);
        } else {
          queueMicrotask(() => {
            throw err;
          });
        }
      }
    }
  }

  setState(state, detail = {}) {
    this.state = state;
    this.emit("state", { state, ...detail });
  }

  /** Starts the session; after close() it starts a new one. No-op while already running. */
  connect() {
    if (!this.stopped) return this;
    this.stopped = false;
    liveClients.add(this);
    // After the caller's on(...) calls: a page opened by a click gets its message shown.
    queueMicrotask(() => {
      for (const message of openedBeforeClients.splice(0)) this.opened(message);
    });
    this.backoff.reset();
    this.listenForWake(true);
    this.dial("connecting");
    return this;
  }

  /** Ends the session for good (until connect()); pending acks are sent first when possible. */
  close(code = 1000, reason = "client closed") {
    if (this.stopped) return;
    this.stopped = true;
    this.flushAcks();
    const ws = this.detach();
    this.clearTimers();
    this.listenForWake(false);
    liveClients.delete(this);
    try {
      ws?.close(code, reason);
    } catch {
      // Already closing.
    }
    this.setState("closed", { code, reason });
  }

  listenForWake(on) {
    const method = on ? "addEventListener" : "removeEventListener";
    globalThis[method]?.("online", this.onWake);
    globalThis.document?.[method]?.("visibilitychange", this.onWake);
  }

  /** Skips the rest of the backoff wait, e.g. when the browser comes back online. */
  retryNow() {
    if (this.stopped || this.timers.retry === null) return;
    clearTimeout(this.timers.retry);
    this.timers.retry = null;
    this.dial("reconnecting");
  }

  async dial(state) {
    const generation = ++this.generation;
    if (this.state !== state) this.setState(state, { attempt: this.backoff.attempt });
    // One deadline from here to the welcome frame, a hanging token request included.
    this.timers.connect = setTimeout(() => {
      this.abandon(LOCAL_CODES.connectTimeout, "no welcome in time");
    }, this.options.connectTimeout);
    let token;
    try {
      token = typeof this.options.token === "function" ? await this.options.token() : this.options.token;
    } catch (err) {
      if (generation === this.generation && !this.stopped) this.lost(1006, `token: ${err}`);
      return;
    }
    if (generation !== this.generation || this.stopped) return;
    this.token = token;
    this.useOffsetsOf(this.options.user ?? tokenSubject(token) ?? this.user);
    let ws;
    try {
      ws = new this.WebSocket(this.url);
    } catch (err) {
      this.lost(1006, String(err));
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      if (generation !== this.generation) return;
      const hello = { type: "hello", token, device: this.device };
      if (Object.keys(this.offsets).length > 0) hello.resume = resumeFor(this.offsets);
      ws.send(JSON.stringify(hello));
    };
    ws.onmessage = (event) => {
      if (generation !== this.generation) return;
      this.receive(event.data);
    };
    ws.onclose = (event) => {
      if (generation !== this.generation) return;
      this.detach();
      this.lost(event.code, event.reason);
    };
    ws.onerror = () => {
      // A close event always follows; the browser tells nothing more here.
    };
  }

  /** Switches the resume point to `user`'s stored offsets when the session is for another patient. */
  useOffsetsOf(user) {
    if (user === null || user === undefined || user === this.offsetsUser) return;
    this.offsetsUser = user;
    this.offsets = this.offsetStore(user)?.load() ?? {};
  }

  offsetStore(user = this.offsetsUser) {
    return user === null ? null : new OffsetStore(this.storage, this.device, user);
  }

  receive(raw) {
    this.armAlive();
    let frame;
    try {
      frame = JSON.parse(raw);
    } catch {
      return;
    }
    if (frame === null || typeof frame !== "object") return;
    switch (frame.type) {
      case "welcome":
        this.welcome(frame);
        break;
      case "msg":
        this.message(frame);
        break;
      case "ping":
        this.send({ type: "pong" });
        break;
      case "pong":
        break;
      case "push_subscribed":
        this.pushConfirmed();
        break;
      case "refreshed":
        this.refreshLater(this.refreshing);
        break;
      case "error":
        this.lastError = { code: frame.code, message: frame.message };
        this.emit("error", this.lastError);
        break;
      default:
        break; // Frames added to the protocol later are not this client's business.
    }
  }

  welcome(frame) {
    clearTimeout(this.timers.connect);
    this.timers.connect = null;
    this.session = frame.session ?? null;
    this.node = frame.node ?? null;
    this.user = frame.user ?? null;
    if (this.user !== null && this.user !== this.offsetsUser) {
      // The token was not a JWT, or named someone else: offsets start from this session.
      this.offsetsUser = this.user;
      this.offsets = {};
    }
    this.heartbeat = typeof frame.heartbeat === "number" && frame.heartbeat > 0 ? frame.heartbeat : null;
    this.lastError = null;
    this.armAlive();
    clearTimeout(this.timers.stable);
    this.timers.stable = setTimeout(() => this.backoff.reset(), this.options.stableAfter);
    this.refreshLater(this.token);
    this.emit("welcome", frame);
    this.setState("open", { session: this.session, node: this.node });
    this.sendPushState();
  }

  // ---- Web Push ----------------------------------------------------------------------------

  /**
   * Lets the server notify this browser while the page is closed: registers the service worker,
   * asks the patient's permission (call it from a click: browsers ignore prompts nobody asked
   * for), subscribes with the server's key and sends the subscription, now and after every
   * reconnect. Resolves with the subscription sent once the server confirmed it; rejects with
   * a PushError whose `code` says why not (PUSH_ERROR_CODES).
   */
  async enablePush(options = {}) {
    const env = this.pushEnv ?? browserEnv();
    if (!pushSupported(env)) {
      throw new PushError("unsupported", "this browser cannot receive push notifications in this window");
    }
    let permission = env.Notification.permission;
    if (permission === "default") permission = await env.Notification.requestPermission();
    if (permission === "denied") throw new PushError("denied", "notifications are blocked for this site");
    if (permission !== "granted") throw new PushError("dismissed", "notifications were not allowed");

    const registration = await this.registerWorker(env, options);
    const key = await this.pushKey(env, options.pushKeyPath ?? PUSH_DEFAULTS.pushKeyPath);
    const frame = subscriptionFrame(await this.subscribe(registration, key));
    if (frame === null) throw new PushError("subscribe_failed", "the browser returned an incomplete subscription");

    this.pushSubscription = frame;
    this.pushUnsubscribeOwed = false;
    const confirmed = this.pushConfirmation(options.timeout ?? PUSH_DEFAULTS.pushTimeout);
    if (this.welcomed()) {
      this.send({ type: "push_subscribe", subscription: frame });
      this.pushUnconfirmed = true;
    } // else the next welcome sends it
    await confirmed;
    return frame;
  }

  /** Stops notifications to this browser: tells the server (now or after the next welcome) and unsubscribes. */
  async disablePush(options = {}) {
    this.pushSubscription = null;
    for (const waiter of [...this.pushWaiters]) {
      waiter.fail(new PushError("cancelled", "push was disabled before the server confirmed it"));
    }
    if (this.welcomed()) {
      this.send({ type: "push_unsubscribe" });
    } else {
      this.pushUnsubscribeOwed = true;
    }
    const env = this.pushEnv ?? browserEnv();
    if (pushSupported(env)) {
      const registration = this.pushRegistration ??
        (await env.navigator.serviceWorker.getRegistration(options.serviceWorker ?? PUSH_DEFAULTS.serviceWorker));
      const subscription = await registration?.pushManager.getSubscription();
      await subscription?.unsubscribe();
    }
    this.emit("push", { state: "off" });
  }

  /**
   * "unsupported", "blocked", "on" (this browser holds a subscription and may be notified) or
   * "off". A page that finds "on" calls enablePush() again to send the subscription on its
   * socket; no prompt is shown then.
   */
  async pushState(options = {}) {
    const env = this.pushEnv ?? browserEnv();
    const permission = pushPermission(env);
    if (permission === "unsupported" || permission === "blocked") return permission;
    if (permission !== "granted") return "off";
    try {
      const registration = await env.navigator.serviceWorker.getRegistration(
        options.serviceWorker ?? PUSH_DEFAULTS.serviceWorker,
      );
      return (await registration?.pushManager.getSubscription()) ? "on" : "off";
    } catch {
      return "off";
    }
  }

  /**
   * A pushed message the service worker handed this page after a notification click: shown
   * like a received one (`pushed: true`, once per id) and acknowledged as soon as the socket is
   * open. Its offset is not a resume point: what came before it may still be unseen.
   */
  opened(message) {
    if (typeof message?.id !== "string") return;
    if (!this.pushedAcks.includes(message.id)) this.pushedAcks.push(message.id);
    if (!this.dedupe.check(message.id)) {
      this.emit("message", {
        type: "msg", id: message.id, stream: message.stream ?? null, offset: message.offset ?? null,
        event: message.event ?? null, data: message.data ?? null, ts: Date.now(), ack: true,
        replay: false, pushed: true,
      });
    }
    this.sendPushedAcks();
  }

  async registerWorker(env, options) {
    const page = new URL(options.page ?? globalThis.location?.href ?? "/", globalThis.location?.href);
    page.hash = "";
    const script = `${options.serviceWorker ?? PUSH_DEFAULTS.serviceWorker}?page=${encodeURIComponent(page.href)}`;
    let registration;
    try {
      registration = await env.navigator.serviceWorker.register(
        script, options.scope === undefined ? undefined : { scope: options.scope },
      );
    } catch (err) {
      // Private windows of some browsers refuse service workers altogether.
      throw new PushError("unsupported", `the service worker could not be registered: ${err}`, err);
    }
    this.pushRegistration = await activeRegistration(registration);
    return this.pushRegistration;
  }

  async pushKey(env, path) {
    let reply;
    try {
      const response = await env.fetch(httpUrlOf(this.url, path), { headers: { accept: "application/json" } });
      if (!response.ok) throw new Error(`${path} answered ${response.status}`);
      reply = await response.json();
      const key = base64UrlBytes(reply?.publicKey);
      if (key.length !== 65 || key[0] !== 4) throw new Error("the key is not an uncompressed P-256 point");
      return key;
    } catch (err) {
      throw new PushError("key_unavailable", `no push key from the server: ${err.message ?? err}`, err);
    }
  }

  async subscribe(registration, key) {
    const manager = registration.pushManager;
    try {
      const existing = await manager.getSubscription();
      if (existing && sameBytes(existing.options?.applicationServerKey, key)) return existing;
      await existing?.unsubscribe(); // made with another key: the server could not use it
      return await manager.subscribe({ userVisibleOnly: true, applicationServerKey: key });
    } catch (err) {
      if (err?.name === "NotAllowedError") throw new PushError("denied", "notifications are blocked for this site", err);
      throw new PushError("subscribe_failed", `the browser's push service refused: ${err.message ?? err}`, err);
    }
  }

  pushConfirmation(timeout) {
    let waiter;
    const promise = new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        waiter.fail(new PushError("timeout", "the server did not confirm the push subscription"));
      }, timeout);
      waiter = {
        done: () => {
          clearTimeout(timer);
          this.pushWaiters.delete(waiter);
          resolve();
        },
        fail: (err) => {
          clearTimeout(timer);
          this.pushWaiters.delete(waiter);
          reject(err);
        },
      };
    });
    this.pushWaiters.add(waiter);
    return promise;
  }

  pushConfirmed() {
    this.pushUnconfirmed = false;
    if (this.pushSubscription === null) return; // the answer to a subscribe since withdrawn
    for (const waiter of [...this.pushWaiters]) waiter.done();
    this.emit("push", { state: "on" });
  }

  /** After a welcome: what the server must hear about push on this new session. */
  sendPushState() {
    if (this.pushSubscription !== null) {
      this.send({ type: "push_subscribe", subscription: this.pushSubscription });
      this.pushUnconfirmed = true;
    } else if (this.pushUnsubscribeOwed) {
      this.send({ type: "push_unsubscribe" });
      this.pushUnsubscribeOwed = false;
    }
    this.sendPushedAcks();
  }

  sendPushedAcks() {
    if (!this.welcomed() || this.pushedAcks.length === 0) return;
    this.send({ type: "ack", ids: this.pushedAcks.splice(0) });
  }

  message(frame) {
    if (typeof frame.id !== "string") return;
    const duplicate = this.dedupe.check(frame.id);
    if (!duplicate) this.emit("message", frame);
    if (frame.ack === true) this.pendingAcks.push(frame.id);
    if (typeof frame.stream === "string" && typeof frame.offset === "string") {
      const current = this.pendingOffsets[frame.stream] ?? this.offsets[frame.stream];
      this.pendingOffsets[frame.stream] = laterOffset(current, frame.offset);
    }
    if (this.pendingAcks.length >= this.options.ackBatch) {
      this.flushAcks();
    } else if (this.timers.ack === null) {
      this.timers.ack = setTimeout(() => this.flushAcks(), this.options.ackDelay);
    }
  }

  /**
   * Sends the gathered acks and only then records the offsets as the resume point, so a message
   * whose ack was lost with the socket is replayed (and acked again, not shown again).
   */
  flushAcks() {
    clearTimeout(this.timers.ack);
    this.timers.ack = null;
    if (this.ws === null || this.ws.readyState !== OPEN) return;
    while (this.pendingAcks.length > 0) {
      const ids = this.pendingAcks.splice(0, this.options.ackBatch);
      this.send({ type: "ack", ids });
    }
    if (Object.keys(this.pendingOffsets).length > 0) {
      this.offsets = mergeOffsets(this.offsets, this.pendingOffsets);
      this.offsetStore()?.save(this.pendingOffsets);
      this.pendingOffsets = {};
    }
  }

  /** True once the server welcomed the current socket, while it is open. */
  welcomed() {
    return this.session !== null && this.ws !== null && this.ws.readyState === OPEN;
  }

  send(frame) {
    if (this.ws === null || this.ws.readyState !== OPEN) return;
    this.ws.send(JSON.stringify(frame));
  }

  armAlive() {
    clearTimeout(this.timers.alive);
    this.timers.alive = null;
    if (this.heartbeat === null || this.ws === null) return;
    const silence = this.heartbeat * 1000 * this.options.heartbeatFactor;
    this.timers.alive = setTimeout(() => {
      this.abandon(LOCAL_CODES.heartbeatTimeout, "no frame from server");
    }, silence);
  }

  /** Gives up on the current socket without waiting for its close handshake. */
  abandon(code, reason) {
    const ws = this.detach();
    try {
      ws?.close(code === LOCAL_CODES.connectTimeout ? 1000 : code, reason);
    } catch {
      // Nothing to close.
    }
    this.lost(code, reason);
  }

  detach() {
    const ws = this.ws;
    this.generation += 1;
    this.ws = null;
    if (ws) {
      ws.onopen = null;
      ws.onmessage = null;
      ws.onclose = null;
      ws.onerror = null;
    }
    return ws;
  }

  clearTimers() {
    for (const key of Object.keys(this.timers)) {
      clearTimeout(this.timers[key]);
      this.timers[key] = null;
    }
  }

  /**
   * With a token function, sends `refresh` with its next token before `token` expires
   * (refreshDelay). A failing token function leaves the session to expire; the reconnect after
   * 4001 token_expired asks it again.
   */
  refreshLater(token) {
    clearTimeout(this.timers.refresh);
    this.timers.refresh = null;
    const provider = this.options.token;
    const delay = typeof provider === "function" ? refreshDelay(token, this.now()) : null;
    if (delay === null) return;
    const generation = this.generation;
    this.timers.refresh = setTimeout(async () => {
      this.timers.refresh = null;
      let next;
      try {
        next = await provider();
      } catch {
        return;
      }
      if (generation !== this.generation || this.stopped) return;
      this.refreshing = next;
      this.send({ type: "refresh", token: next });
    }, delay);
  }

  /** The socket is gone: drop what belonged to it, then reconnect or stay closed. */
  lost(code, reason) {
    const wasOpen = this.session !== null;
    this.clearTimers();
    this.pendingAcks = [];
    this.pendingOffsets = {};
    this.heartbeat = null;
    this.session = null;
    if (this.pushUnconfirmed && code === 4003) {
      // The server does not take this subscription (or push frames at all): sending it again
      // after every reconnect would only close every session.
      this.pushSubscription = null;
      for (const waiter of [...this.pushWaiters]) {
        waiter.fail(new PushError("refused", `the server refused the push subscription: ${reason}`));
      }
    }
    this.pushUnconfirmed = false;
    if (this.stopped) return;
    const error = this.lastError;
    if (code === 4001 && error?.code === "token_expired" && wasOpen
        && typeof this.options.token === "function") {
      // The session lived and its token ran out: a new one from the token function, at once.
      // (An expiry refused at hello has no welcome before it: that one ends the client.)
      this.setState("reconnecting", { code, reason, error, attempt: 0, delay: 0 });
      this.dial("reconnecting");
      return;
    }
    if (!shouldReconnect(code)) {
      this.stopped = true;
      this.listenForWake(false);
      liveClients.delete(this);
      this.setState("closed", { code, reason, error });
      return;
    }
    const attempt = this.backoff.attempt;
    const delay = this.backoff.next();
    this.setState("reconnecting", { code, reason, error, attempt, delay });
    this.timers.retry = setTimeout(() => {
      this.timers.retry = null;
      this.dial("reconnecting");
    }, delay);
  }
}

/** Creates a client and starts it. */
export function connect(options) {
  return new PushClient(options).connect();
}
