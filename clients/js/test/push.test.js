// Web Push in the browser client: enablePush(), disablePush(), pushState() and the message a
// notification click hands the page, against a scripted socket and a scripted browser (service
// worker container, permission, push manager, fetch).
import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, mock, test } from "node:test";

import {
  MemoryStorage,
  PUSH_ERROR_CODES,
  PUSH_OPENED,
  PushClient,
  PushError,
  base64UrlBytes,
  handleWorkerMessage,
  httpUrlOf,
  pushPermission,
  subscriptionFrame,
} from "../pushsvc.js";
import { ScriptedSocket, settle } from "./scripted-socket.js";

// An uncompressed P-256 point: 0x04 then 64 bytes.
const KEY_BYTES = Uint8Array.from({ length: 65 }, (_, i) => (i === 0 ? 4 : i));
const KEY = Buffer.from(KEY_BYTES).toString("base64url");
const OTHER_KEY_BYTES = Uint8Array.from({ length: 65 }, (_, i) => (i === 0 ? 4 : 200 - i));

class ScriptedSubscription {
  constructor(manager, key, endpoint) {
    this.manager = manager;
    this.endpoint = endpoint;
    this.options = { userVisibleOnly: true, applicationServerKey: key.buffer.slice(0) };
  }

  toJSON() {
    return { endpoint: this.endpoint, expirationTime: null, keys: { p256dh: "BPpdh", auth: "YXV0aA" } };
  }

  async unsubscribe() {
    if (this.manager.current === this) this.manager.current = null;
    this.manager.unsubscribed.push(this.endpoint);
    return true;
  }
}

class ScriptedPushManager {
  constructor() {
    this.current = null;
    this.unsubscribed = [];
    this.subscribeCalls = [];
    this.refuse = null; // an Error subscribe() throws
  }

  async getSubscription() {
    return this.current;
  }

  async subscribe(options) {
    this.subscribeCalls.push(options);
    if (this.refuse) throw this.refuse;
    this.current = new ScriptedSubscription(this, options.applicationServerKey,
      `https://push.example/send/${this.subscribeCalls.length}`);
    return this.current;
  }
}

/** The parts of a browser enablePush() touches; each can be changed by a test. */
function scriptedBrowser({ permission = "default", answer = "granted", key = KEY, keyStatus = 200 } = {}) {
  const pushManager = new ScriptedPushManager();
  const registration = { active: { state: "activated" }, pushManager };
  const browser = {
    registered: [],
    fetched: [],
    prompts: 0,
    registration,
    pushManager,
    env: {
      isSecureContext: true,
      PushManager: ScriptedPushManager,
      Notification: {
        permission,
        async requestPermission() {
          browser.prompts += 1;
          browser.env.Notification.permission = answer;
          return answer;
        },
      },
      navigator: {
        serviceWorker: {
          async register(script, options) {
            browser.registered.push({ script, options });
            return registration;
          },
          async getRegistration() {
            return browser.registered.length > 0 ? registration : undefined;
          },
        },
      },
      async fetch(url) {
        browser.fetched.push(url);
        return {
          ok: keyStatus === 200,
          status: keyStatus,
          json: async () => ({ publicKey: key }),
        };
      },
    },
  };
  return browser;
}

const made = [];

function makeClient(browser, options = {}) {
  const client = new PushClient({
    token: "t0",
    url: "wss://clinic.example/ws",
    storage: new MemoryStorage(),
    WebSocket: ScriptedSocket,
    random: () => 0.5,
    pushEnv: browser.env,
    ...options,
  });
  made.push(client);
  const messages = [];
  const push = [];
  client.on("message", (m) => messages.push(m));
  client.on("push", (p) => push.push(p.state));
  return { client, messages, push };
}

async function openClient(browser, options = {}) {
  const made = makeClient(browser, options);
  made.client.connect();
  await settle();
  const socket = ScriptedSocket.last();
  socket.accept();
  socket.welcome();
  return { ...made, socket };
}

const framesOf = (socket, type) => socket.sent.filter((f) => f.type === type);

/** Runs enablePush() until it waits for the server, so the test can answer. */
async function enabling(client, options) {
  const result = client.enablePush({ page: "https://clinic.example/demo/?user=p1", ...options });
  result.catch(() => {}); // observed by the test; no unhandled rejection meanwhile
  for (let i = 0; i < 10; i += 1) await settle();
  return { result }; // wrapped: an async function returning the promise would wait for it
}

async function rejection(promise) {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  assert.fail("expected a rejection");
}

beforeEach(() => {
  ScriptedSocket.all = [];
  mock.timers.enable({ apis: ["setTimeout"] });
});

afterEach(() => {
  for (const client of made.splice(0)) client.close();
  mock.timers.reset();
});

describe("pure pieces", () => {
  test("the push key URL is on the socket's host, over http(s)", () => {
    const cases = [
      ["wss://clinic.example/ws", "https://clinic.example/client/push-key"],
      ["ws://127.0.0.1:8080/ws?x=1", "http://127.0.0.1:8080/client/push-key"],
    ];
    for (const [ws, http] of cases) assert.equal(httpUrlOf(ws, "/client/push-key"), http);
  });

  test("base64url decodes with or without padding and refuses anything else", () => {
    assert.deepEqual([...base64UrlBytes("AQID")], [1, 2, 3]);
    assert.deepEqual([...base64UrlBytes("_-8")], [255, 239]);
    assert.deepEqual([...base64UrlBytes("_-8=")], [255, 239]);
    for (const bad of ["", "a+b/", "abc d", null, 42]) {
      assert.throws(() => base64UrlBytes(bad), TypeError, String(bad));
    }
  });

  test("a subscription's wire form keeps endpoint and keys only, or is null", () => {
    const json = { endpoint: "https://p/1", expirationTime: null, keys: { p256dh: "a", auth: "b" } };
    assert.deepEqual(subscriptionFrame({ toJSON: () => json }), {
      endpoint: "https://p/1", keys: { p256dh: "a", auth: "b" },
    });
    assert.equal(subscriptionFrame({ endpoint: "https://p/1", keys: { p256dh: "a" } }), null);
    assert.equal(subscriptionFrame(null), null);
  });

  test("the permission a page can expect, from the browser's state", () => {
    const cases = [
      [{}, "unsupported"],
      [{ isSecureContext: false }, "unsupported"],
      [{ permission: "denied" }, "blocked"],
      [{ permission: "default" }, "default"],
      [{ permission: "granted" }, "granted"],
    ];
    for (const [given, expected] of cases) {
      const { env } = scriptedBrowser({ permission: given.permission ?? "default" });
      if (Object.keys(given).length === 0) delete env.PushManager;
      if (given.isSecureContext === false) env.isSecureContext = false;
      assert.equal(pushPermission(env), expected, JSON.stringify(given));
    }
  });

  test("every error code is listed", () => {
    assert.deepEqual([...PUSH_ERROR_CODES].sort(), [
      "cancelled", "denied", "dismissed", "key_unavailable", "refused", "subscribe_failed",
      "timeout", "unsupported",
    ]);
  });
});

describe("enablePush", () => {
  test("asks, registers the worker, subscribes with the server's key and waits for push_subscribed", async () => {
    const browser = scriptedBrowser();
    const { client, socket, push } = await openClient(browser);
    const { result } = await enabling(client);
    assert.equal(browser.prompts, 1);
    assert.deepEqual(browser.fetched, ["https://clinic.example/client/push-key"]);
    const [{ script, options }] = browser.registered;
    assert.equal(options, undefined); // the script's own folder is its scope
    const url = new URL(script, "https://clinic.example/");
    assert.equal(url.pathname, "/client/pushsvc-sw.js");
    assert.equal(url.searchParams.get("page"), "https://clinic.example/demo/?user=p1");
    const [call] = browser.pushManager.subscribeCalls;
    assert.equal(call.userVisibleOnly, true);
    assert.deepEqual([...call.applicationServerKey], [...KEY_BYTES]);

    const [frame] = framesOf(socket, "push_subscribe");
    assert.deepEqual(frame.subscription, {
      endpoint: "https://push.example/send/1", keys: { p256dh: "BPpdh", auth: "YXV0aA" },
    });
    socket.frame({ type: "push_subscribed" });
    assert.deepEqual(await result, frame.subscription);
    assert.deepEqual(push, ["on"]);
  });

  test("sends the subscription again after every reconnect, and no prompt once granted", async () => {
    const browser = scriptedBrowser();
    const { client, socket } = await openClient(browser);
    const { result } = await enabling(client);
    socket.frame({ type: "push_subscribed" });
    await result;

    socket.drop(1006);
    mock.timers.tick(30000);
    await settle();
    const again = ScriptedSocket.last();
    assert.notEqual(again, socket);
    again.accept();
    assert.deepEqual(framesOf(again, "push_subscribe"), [], "sent before the welcome");
    again.welcome({ session: "s2" });
    assert.deepEqual(framesOf(again, "push_subscribe")[0].subscription, framesOf(socket, "push_subscribe")[0].subscription);

    // A later enablePush() (a reload that found push "on") reuses the browser's subscription.
    const { result: second } = await enabling(client);
    again.frame({ type: "push_subscribed" });
    await second;
    assert.equal(browser.prompts, 1);
    assert.equal(browser.pushManager.subscribeCalls.length, 1);
  });

  test("before the welcome, the subscription waits for it", async () => {
    const browser = scriptedBrowser({ permission: "granted" });
    const { client } = makeClient(browser);
    client.connect();
    await settle();
    const socket = ScriptedSocket.last();
    const { result } = await enabling(client);
    socket.accept();
    assert.equal(framesOf(socket, "push_subscribe").length, 0);
    socket.welcome();
    assert.equal(framesOf(socket, "push_subscribe").length, 1);
    socket.frame({ type: "push_subscribed" });
    await result;
  });

  test("a subscription made with another key is replaced", async () => {
    const browser = scriptedBrowser({ permission: "granted" });
    const { client, socket } = await openClient(browser);
    const old = new ScriptedSubscription(browser.pushManager, OTHER_KEY_BYTES, "https://push.example/old");
    browser.pushManager.current = old;
    const { result } = await enabling(client);
    socket.frame({ type: "push_subscribed" });
    const frame = await result;
    assert.deepEqual(browser.pushManager.unsubscribed, ["https://push.example/old"]);
    assert.equal(frame.endpoint, "https://push.example/send/1");
  });

  test("typed errors: no support, blocked, dismissed, no key, refused by the push service", async () => {
    const cases = [
      ["unsupported", (b) => delete b.env.navigator.serviceWorker],
      ["unsupported", (b) => { b.env.isSecureContext = false; }],
      ["unsupported", (b) => { b.env.navigator.serviceWorker.register = async () => { throw new Error("SecurityError"); }; }],
      ["denied", (b) => { b.env.Notification.permission = "denied"; }],
      ["denied", (b) => { b.env.Notification.requestPermission = async () => "denied"; }],
      ["dismissed", (b) => { b.env.Notification.requestPermission = async () => "default"; }],
      ["key_unavailable", (b) => { b.env.fetch = async () => ({ ok: false, status: 404, json: async () => ({}) }); }],
      ["key_unavailable", (b) => { b.env.fetch = async () => { throw new TypeError("Failed to fetch"); }; }],
      ["key_unavailable", (b) => { b.env.fetch = async () => ({ ok: true, status: 200, json: async () => ({ publicKey: "AQID" }) }); }],
      ["subscribe_failed", (b) => { b.pushManager.refuse = Object.assign(new Error("push service error"), { name: "AbortError" }); }],
      ["denied", (b) => { b.pushManager.refuse = Object.assign(new Error("no"), { name: "NotAllowedError" }); }],
    ];
    for (const [code, change] of cases) {
      const browser = scriptedBrowser();
      change(browser);
      const { client, socket } = await openClient(browser);
      const err = await rejection((await enabling(client)).result);
      assert.ok(err instanceof PushError, `${code}: ${err}`);
      assert.equal(err.code, code, `${code}: ${err.message}`);
      assert.deepEqual(framesOf(socket, "push_subscribe"), [], code);
      client.close();
    }
  });

  test("times out when the server never confirms", async () => {
    const browser = scriptedBrowser({ permission: "granted" });
    const { client } = await openClient(browser);
    const { result } = await enabling(client, { timeout: 5000 });
    mock.timers.tick(5000);
    const err = await rejection(result);
    assert.equal(err.code, "timeout");
  });

  test("a server that closes the session over the frame: refused, and not sent again", async () => {
    const browser = scriptedBrowser({ permission: "granted" });
    const { client, socket } = await openClient(browser);
    const { result } = await enabling(client);
    socket.frame({ type: "error", code: "unknown_frame_type", message: "unknown frame type 'push_subscribe'" });
    socket.drop(4003, "protocol error");
    const err = await rejection(result);
    assert.equal(err.code, "refused");
    mock.timers.tick(30000);
    await settle();
    const again = ScriptedSocket.last();
    again.accept();
    again.welcome({ session: "s2" });
    assert.deepEqual(framesOf(again, "push_subscribe"), []);
  });
});

describe("disablePush", () => {
  test("tells the server, unsubscribes the browser, and stops re-sending", async () => {
    const browser = scriptedBrowser({ permission: "granted" });
    const { client, socket, push } = await openClient(browser);
    const { result } = await enabling(client);
    socket.frame({ type: "push_subscribed" });
    await result;
    assert.equal(await client.pushState(), "on");

    await client.disablePush();
    assert.equal(framesOf(socket, "push_unsubscribe").length, 1);
    assert.deepEqual(browser.pushManager.unsubscribed, ["https://push.example/send/1"]);
    assert.equal(await client.pushState(), "off");
    assert.deepEqual(push, ["on", "off"]);

    socket.drop(1006);
    mock.timers.tick(30000);
    await settle();
    ScriptedSocket.last().accept();
    ScriptedSocket.last().welcome({ session: "s2" });
    assert.deepEqual(framesOf(ScriptedSocket.last(), "push_subscribe"), []);
    assert.deepEqual(framesOf(ScriptedSocket.last(), "push_unsubscribe"), []);
  });

  test("while disconnected, push_unsubscribe goes out after the next welcome, once", async () => {
    const browser = scriptedBrowser({ permission: "granted" });
    const { client, socket } = await openClient(browser);
    socket.drop(1006);
    await client.disablePush();
    mock.timers.tick(30000);
    await settle();
    const again = ScriptedSocket.last();
    again.accept();
    again.welcome({ session: "s2" });
    assert.equal(framesOf(again, "push_unsubscribe").length, 1);
    again.drop(1006);
    mock.timers.tick(30000);
    await settle();
    ScriptedSocket.last().accept();
    ScriptedSocket.last().welcome({ session: "s3" });
    assert.deepEqual(framesOf(ScriptedSocket.last(), "push_unsubscribe"), []);
  });

  test("cancels an enablePush() still waiting for the server", async () => {
    const browser = scriptedBrowser({ permission: "granted" });
    const { client, socket } = await openClient(browser);
    const { result } = await enabling(client);
    await client.disablePush();
    assert.equal((await rejection(result)).code, "cancelled");
    socket.frame({ type: "push_subscribed" }); // the late answer changes nothing
  });
});

describe("pushState", () => {
  test("says unsupported, blocked, off or on", async () => {
    assert.equal(await makeClient(scriptedBrowser({ permission: "denied" })).client.pushState(), "blocked");
    assert.equal(await makeClient(scriptedBrowser({ permission: "default" })).client.pushState(), "off");
    const none = scriptedBrowser();
    delete none.env.PushManager;
    assert.equal(await makeClient(none).client.pushState(), "unsupported");
    const granted = scriptedBrowser({ permission: "granted" });
    assert.equal(await makeClient(granted).client.pushState(), "off"); // no worker registered
  });
});

describe("a message handed over by a notification click", () => {
  const pushed = {
    id: "m-pushed", event: "queue.called", data: { room: "205" }, stream: "user:p1",
    offset: "1700000000000-7", title: "Your turn", body: "Please go to room 205",
  };

  test("is shown at once and acked on the socket after the welcome", async () => {
    const browser = scriptedBrowser();
    const { client, messages } = makeClient(browser);
    client.connect();
    await settle();
    handleWorkerMessage({ data: { type: PUSH_OPENED, message: pushed } });
    assert.equal(messages.length, 1);
    assert.equal(messages[0].id, "m-pushed");
    assert.equal(messages[0].pushed, true);
    assert.deepEqual(messages[0].data, { room: "205" });

    const socket = ScriptedSocket.last();
    socket.accept();
    assert.deepEqual(socket.acks(), [], "acked before the welcome");
    socket.welcome();
    assert.deepEqual(socket.acks(), ["m-pushed"]);

    // The same message replayed from the inbox: acked again, not shown again.
    socket.frame({ type: "msg", ...pushed, ts: 1700000000000, ack: true, replay: true });
    mock.timers.tick(100);
    assert.deepEqual(socket.acks(), ["m-pushed", "m-pushed"]);
    assert.equal(messages.length, 1);
    // Its offset is no resume point: earlier messages of the stream may be unseen.
    assert.equal(client.offsets["user:p1"], "1700000000000-7"); // from the replay, not the push
    client.close();
  });

  test("on an open page, is acked right away; other posts are ignored", async () => {
    const browser = scriptedBrowser();
    const { client, socket, messages } = await openClient(browser);
    handleWorkerMessage({ data: { type: "something-else", message: pushed } });
    handleWorkerMessage({ data: { type: PUSH_OPENED, message: { title: "no id" } } });
    assert.equal(messages.length, 0);
    handleWorkerMessage({ data: { type: PUSH_OPENED, message: pushed } });
    assert.deepEqual(socket.acks(), ["m-pushed"]);
    assert.equal(client.offsets["user:p1"], undefined);
    client.close();
  });

  test("posted before the page made its client, reaches the first client made", async () => {
    handleWorkerMessage({ data: { type: PUSH_OPENED, message: { ...pushed, id: "m-early" } } });
    const { client, messages } = makeClient(scriptedBrowser());
    client.connect();
    await settle();
    assert.deepEqual(messages.map((m) => m.id), ["m-early"]);
    ScriptedSocket.last().accept();
    ScriptedSocket.last().welcome();
    assert.deepEqual(ScriptedSocket.last().acks(), ["m-early"]);
    client.close();
  });
});

describe("the type declarations", () => {
  test("declare every export of the module", async () => {
    const { readFile } = await import("node:fs/promises");
    const module = await import("../pushsvc.js");
    const dts = await readFile(new URL("../pushsvc.d.ts", import.meta.url), "utf8");
    const declared = new Set([...dts.matchAll(/export declare (?:function|class|const) (\w+)/g)].map((m) => m[1]));
    const missing = Object.keys(module).filter((name) => !declared.has(name));
    assert.deepEqual(missing, []);
  });
});
