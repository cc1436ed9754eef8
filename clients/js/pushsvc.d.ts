// Type declarations for the pushsvc browser client (pushsvc.js). Wire protocol: docs/protocol.md.

/**
 * A token, or a function asked for a fresh one before every connection attempt and, before the
 * session's token expires, for the token sent in a `refresh` frame.
 */
export type TokenSource = string | (() => string | Promise<string>);

export type ConnectionState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

/** The server's `{"type":"error"}` frame, sent before it closes a connection. */
export interface ServerError {
  code: string;
  message: string;
}

export interface StateChange {
  state: ConnectionState;
  /** WebSocket close code that caused "reconnecting" or "closed". */
  code?: number;
  reason?: string;
  /** The server's error frame that came before the close, if any. */
  error?: ServerError | null;
  /** Failed attempts so far ("reconnecting"). */
  attempt?: number;
  /** Milliseconds until the next attempt ("reconnecting"). */
  delay?: number;
  /** Present on "open". */
  session?: string | null;
  node?: string | null;
}

export interface WelcomeFrame {
  type: "welcome";
  session: string;
  node: string;
  user: string;
  heartbeat: number;
  replayed: number;
}

export interface PushMessage<T = unknown> {
  type: "msg";
  id: string;
  stream: string;
  offset: string;
  event: string;
  data: T;
  /** Unix milliseconds when it was published (when it was opened, for a `pushed` message). */
  ts: number;
  ack: boolean;
  replay: boolean;
  /**
   * True when the service worker handed it over after a notification click, before the socket
   * delivered it. Its stream and offset may then be null (a push without them).
   */
  pushed?: true;
}

/** Emitted when the server confirmed a subscription ("on") and after disablePush() ("off"). */
export interface PushChange {
  state: "on" | "off";
}

export interface ClientEvents {
  state: StateChange;
  message: PushMessage;
  welcome: WelcomeFrame;
  error: ServerError;
  push: PushChange;
}

// ---- Web Push --------------------------------------------------------------------------------

/** Why enablePush() failed. */
export type PushErrorCode =
  /** No service worker, PushManager or Notification here: an old browser, an insecure page,
   *  some private windows, or iOS Safari outside a Home Screen web app. */
  | "unsupported"
  /** Notifications are blocked for this site (only the browser's site settings undo that). */
  | "denied"
  /** The permission prompt was closed without an answer. */
  | "dismissed"
  /** GET /client/push-key failed: push is not configured on the server, or it is unreachable. */
  | "key_unavailable"
  /** The browser's push service refused to subscribe (offline, no push service). */
  | "subscribe_failed"
  /** The server did not answer push_subscribed in time. */
  | "timeout"
  /** disablePush() was called before the server confirmed. */
  | "cancelled"
  /** The server closed the session over the push_subscribe frame (close code 4003). */
  | "refused";

export declare class PushError extends Error {
  constructor(code: PushErrorCode, message: string, cause?: unknown);
  readonly name: "PushError";
  readonly code: PushErrorCode;
}

export declare const PUSH_ERROR_CODES: readonly PushErrorCode[];
export declare const PUSH_DEFAULTS: Readonly<{ serviceWorker: string; pushKeyPath: string; pushTimeout: number }>;
/** The `type` of what the service worker posts to a page a notification click brought back. */
export declare const PUSH_OPENED: "pushsvc:opened";

/** The wire form of a push subscription, sent in the push_subscribe frame. */
export interface PushSubscriptionFrame {
  endpoint: string;
  keys: { p256dh: string; auth: string };
}

/** What a push carries (JSON), and what the service worker hands the page on click. */
export interface PushedMessage<T = unknown> {
  id: string;
  event: string | null;
  data: T;
  stream: string | null;
  offset: string | null;
  title: string | null;
  body: string | null;
}

export interface EnablePushOptions {
  /** The page a notification click focuses or opens; default this page (without its hash). */
  page?: string;
  /** The service worker script; default "/client/pushsvc-sw.js". */
  serviceWorker?: string;
  /** Registration scope; default the script's folder (it need not control the page). */
  scope?: string;
  /** Path of the server's key on the socket's host; default "/client/push-key". */
  pushKeyPath?: string;
  /** Milliseconds to wait for push_subscribed (default 10000). */
  timeout?: number;
}

export type PushState = "unsupported" | "blocked" | "off" | "on";
export type PushPermission = "unsupported" | "blocked" | "default" | "granted";

/** The browser objects push uses; tests and embedders may pass their own. */
export interface PushEnvironment {
  navigator?: { serviceWorker?: unknown };
  Notification?: { permission: string; requestPermission(): Promise<string> };
  PushManager?: unknown;
  isSecureContext?: boolean;
  fetch?: (url: string, init?: unknown) => Promise<{ ok: boolean; status: number; json(): Promise<unknown> }>;
}

export declare function pushPermission(env?: PushEnvironment): PushPermission;
export declare function httpUrlOf(wsUrl: string, path: string): string;
export declare function base64UrlBytes(text: string): Uint8Array;
export declare function subscriptionFrame(subscription: unknown): PushSubscriptionFrame | null;
/** Hands a service worker's post to the page's clients; the module already listens on
 *  navigator.serviceWorker, so call this only for posts received some other way. */
export declare function handleWorkerMessage(event: { data: unknown }): void;

/** The subset of the Storage interface the client uses. */
export interface KeyValueStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem?(key: string): void;
}

export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export interface ClientOptions {
  token: TokenSource;
  /** ws:// or wss:// URL, or a path on the page's host; default `/ws` on the page's host. */
  url?: string;
  /** Device id; default a per-browser id kept in localStorage. */
  device?: string;
  /** The patient, when the token is not a JWT naming it in `sub` (used to key stored offsets). */
  user?: string;
  /** Default localStorage, or memory when it is unavailable. */
  storage?: KeyValueStorage;
  WebSocket?: new (url: string) => WebSocketLike;
  /** Random source in [0, 1) for the backoff jitter. */
  random?: () => number;
  /** Clock in unix milliseconds, for the token's refresh time (default Date.now). */
  now?: () => number;
  /** Milliseconds; the first retry waits up to this long (default 500). */
  backoffBase?: number;
  /** Milliseconds; no retry waits longer (default 30000). */
  backoffCap?: number;
  /** Milliseconds open before the backoff starts over (default 5000). */
  stableAfter?: number;
  /** Milliseconds to gather acks into one frame (default 25). */
  ackDelay?: number;
  /** Most ids in one ack frame (default 100). */
  ackBatch?: number;
  /** Message ids remembered for dedupe (default 2048). */
  dedupeSize?: number;
  /** Server silence, in heartbeats, after which the connection is dead (default 2.5). */
  heartbeatFactor?: number;
  /** Milliseconds from dialing to the welcome frame (default 10000). */
  connectTimeout?: number;
  /** The browser objects used by enablePush(); default the page's own. */
  pushEnv?: PushEnvironment;
}

export declare const NO_RECONNECT_CODES: readonly number[];
export declare const LOCAL_CODES: Readonly<{ heartbeatTimeout: number; connectTimeout: number }>;
export declare const RESUME_LIMIT: number;
export declare const DEFAULTS: Readonly<Required<Pick<ClientOptions,
  "backoffBase" | "backoffCap" | "stableAfter" | "ackDelay" | "ackBatch" | "dedupeSize" |
  "heartbeatFactor" | "connectTimeout">>>;

export declare function shouldReconnect(code: number): boolean;
export declare function backoffDelay(attempt: number, base?: number, cap?: number,
  random?: () => number): number;

export declare class Backoff {
  constructor(options?: { base?: number; cap?: number; random?: () => number });
  readonly attempt: number;
  next(): number;
  reset(): void;
}

export declare class DedupeWindow {
  constructor(size?: number);
  readonly size: number;
  readonly length: number;
  has(id: string): boolean;
  /** True when `id` was seen before; records it otherwise. */
  check(id: string): boolean;
}

export declare function parseOffset(offset: unknown): [string, string] | null;
/** -1, 0 or 1; NaN when either offset is not "<ms>-<seq>". */
export declare function compareOffsets(a: unknown, b: unknown): number;
export declare function laterOffset(current: string | null | undefined, incoming: string): string;
export declare function mergeOffsets(base: Record<string, string>,
  update: Record<string, unknown>): Record<string, string>;
export declare function resumeFor(offsets: Record<string, string>, limit?: number): Record<string, string>;
export declare function tokenSubject(token: unknown): string | null;

/** The claims of a JWT, read without verifying it; null for any other token. */
export declare function tokenClaims(token: unknown): Record<string, unknown> | null;

/**
 * Milliseconds from `nowMs` until `token` should be refreshed: a minute before its `exp`, or at
 * 80% of a lifetime shorter than five minutes. Null without a numeric `exp`.
 */
export declare function refreshDelay(token: unknown, nowMs: number): number | null;

export declare class MemoryStorage implements KeyValueStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}
export declare function defaultStorage(): KeyValueStorage;
export declare function deviceId(storage: KeyValueStorage): string;

export declare class OffsetStore {
  constructor(storage: KeyValueStorage, device: string, user: string);
  readonly key: string;
  load(): Record<string, string>;
  save(offsets: Record<string, string>): void;
}

export declare function defaultUrl(location?: { protocol: string; host: string }, path?: string): string;

export declare class PushClient {
  constructor(options: ClientOptions);
  readonly url: string;
  readonly device: string;
  readonly state: ConnectionState;
  readonly session: string | null;
  readonly node: string | null;
  readonly user: string | null;
  /** Seconds between server pings, from the welcome frame. */
  readonly heartbeat: number | null;
  /** This tab's resume point per stream. */
  readonly offsets: Readonly<Record<string, string>>;
  on<K extends keyof ClientEvents>(type: K, listener: (event: ClientEvents[K]) => void): () => void;
  off<K extends keyof ClientEvents>(type: K, listener: (event: ClientEvents[K]) => void): void;
  /** Starts the session (again, after close()). */
  connect(): this;
  /** Ends the session; pending acks are sent first when the socket is open. */
  close(code?: number, reason?: string): void;
  /** Skips the rest of the backoff wait. */
  retryNow(): void;
  /**
   * Registers the service worker, asks permission (call it from a click), subscribes with the
   * server's key and sends push_subscribe (again after every reconnect). Resolves once the server
   * answered push_subscribed; rejects with a PushError.
   */
  enablePush(options?: EnablePushOptions): Promise<PushSubscriptionFrame>;
  /** Sends push_unsubscribe (now, or after the next welcome) and unsubscribes this browser. */
  disablePush(options?: Pick<EnablePushOptions, "serviceWorker">): Promise<void>;
  /** Whether this browser can be, or is, notified while the page is closed. */
  pushState(options?: Pick<EnablePushOptions, "serviceWorker">): Promise<PushState>;
  /** Shows and acks a message the service worker handed over after a notification click. */
  opened(message: PushedMessage): void;
}

/** Creates a client and starts it. */
export declare function connect(options: ClientOptions): PushClient;
