// The session behaviour of PushClient against a scripted socket and mocked timers.
import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, mock, test } from "node:test";

import { MemoryStorage, OffsetStore } from "../pushsvc.js";
import { PushClient } from "../pushsvc.js";
import { ScriptedSocket, settle } from "./scripted-socket.js";

let seq = 0;
function msg(id, extra = {}) {
  seq += 1;
  return {
    type: "msg", id, stream: "user:p1", offset: `1700000000000-${seq}`, event: "queue.called",
    data: { room: "205" }, ts: 1700000000000, ack: true, replay: false, ...extra,
  };
}

function jwt(claims) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  return `${part({ alg: "HS256", typ: "JWT" })}.${part(claims)}.c2lnbmF0dXJl`;
}


function makeClient(options = {}) {
  const client = new PushClient({
    token: "t0",
    url: "ws://test/ws",
    storage: new MemoryStorage(),
    WebSocket: ScriptedSocket,
    random: () => 0.5,
    ...options,
  });
  const states = [];
  const messages = [];
  client.on("state", (s) => states.push(s));
  client.on("message", (m) => messages.push(m));
  return { client, states, messages };
}

async function openClient(options = {}) {
  const made = makeClient(options);
  made.client.connect();
  await settle();
  const socket = ScriptedSocket.last();
  socket.accept();
  socket.welcome();
  return { ...made, socket };
}

beforeEach(() => {
  ScriptedSocket.all = [];
  mock.timers.enable({ apis: ["setTimeout"] });
});

afterEach(() => {
  mock.timers.reset();
});

describe("hello", () => {
  test("carries the token and the browser's device id, no resume at first", async () => {
    const storage = new MemoryStorage();
    const { client } = makeClient({ storage });
    client.connect();
    await settle();
    const socket = ScriptedSocket.last();
    assert.equal(socket.url, "ws://test/ws");
    socket.accept();
    const [hello] = socket.sent;
    assert.equal(hello.type, "hello");
    assert.equal(hello.token, "t0");
    assert.match(hello.device, /^web-/);
    assert.equal(hello.resume, undefined);
    // A second tab in the same browser uses the same device id.
    const other = makeClient({ storage }).client;
    assert.equal(other.device, hello.device);
  });

  test("asks a token function for a fresh token on every connection", async () => {
    let calls = 0;
    const { states } = await openClient({ token: async () => `t${++calls}` });
    assert.equal(ScriptedSocket.last().sent[0].token, "t1");
    ScriptedSocket.last().drop(1006);
    mock.timers.tick(states.at(-1).delay);
    await settle();
    ScriptedSocket.last().accept();
    assert.equal(ScriptedSocket.last().sent[0].token, "t2");
  });
});

describe("states", () => {
  test("connecting, open, reconnecting with the close code, open again", async () => {
    const { client, states, socket } = await openClient();
    assert.deepEqual(states.map((s) => s.state), ["connecting", "open"]);
    assert.equal(states[1].session, "s1");
    assert.equal(client.node, "n1");
    socket.drop(1001, "draining");
    const reconnecting = states.at(-1);
    assert.equal(reconnecting.state, "reconnecting");
    assert.equal(reconnecting.code, 1001);
    assert.equal(reconnecting.delay, 250); // half (random 0.5) of the first ceiling, 500 ms
    mock.timers.tick(249);
    await settle();
    assert.equal(ScriptedSocket.all.length, 1, "redialed before the backoff delay");
    mock.timers.tick(1);
    await settle();
    assert.equal(ScriptedSocket.all.length, 2);
    ScriptedSocket.last().accept();
    ScriptedSocket.last().welcome({ session: "s2" });
    assert.deepEqual(states.map((s) => s.state), ["connecting", "open", "reconnecting", "open"]);
  });

  test("failed attempts back off exponentially, a stable connection starts over", async () => {
    const { states, socket } = await openClient();
    socket.drop(1006);
    const delays = [states.at(-1).delay];
    for (let i = 0; i < 4; i += 1) {
      mock.timers.tick(states.at(-1).delay);
      await settle();
      ScriptedSocket.last().drop(1006);
      delays.push(states.at(-1).delay);
    }
    assert.deepEqual(delays, [250, 500, 1000, 2000, 4000]);
    mock.timers.tick(states.at(-1).delay);
    await settle();
    ScriptedSocket.last().accept();
    ScriptedSocket.last().welcome();
    mock.timers.tick(5000); // open long enough to count as stable
    ScriptedSocket.last().drop(1006);
    assert.equal(states.at(-1).delay, 250);
  });

  for (const code of [4001, 4002, 4010]) {
    test(`close code ${code} ends the session for good`, async () => {
      const { states, socket } = await openClient();
      socket.frame({ type: "error", code: "closed", message: "bye" });
      socket.drop(code, "bye");
      assert.equal(states.at(-1).state, "closed");
      assert.equal(states.at(-1).code, code);
      assert.equal(states.at(-1).error.code, "closed");
      mock.timers.tick(120000);
      await settle();
      assert.equal(ScriptedSocket.all.length, 1);
    });
  }

  for (const code of [1001, 1006, 1011, 4003, 4008, 4009, 4011]) {
    test(`close code ${code} is followed by a reconnect`, async () => {
      const { states, socket } = await openClient();
      socket.drop(code);
      assert.equal(states.at(-1).state, "reconnecting");
      mock.timers.tick(states.at(-1).delay);
      await settle();
      assert.equal(ScriptedSocket.all.length, 2);
    });
  }

  test("close() stops, sends the acks it holds, and never reconnects", async () => {
    const { client, states, socket } = await openClient();
    socket.frame(msg("m1"));
    client.close();
    assert.deepEqual(socket.acks(), ["m1"]);
    assert.equal(socket.closedWith.code, 1000);
    assert.equal(states.at(-1).state, "closed");
    mock.timers.tick(120000);
    await settle();
    assert.equal(ScriptedSocket.all.length, 1);
  });

  test("a socket that never says welcome is given up and retried", async () => {
    const made = makeClient();
    made.client.connect();
    await settle();
    ScriptedSocket.last().accept();
    mock.timers.tick(10000);
    assert.equal(made.states.at(-1).state, "reconnecting");
    assert.notEqual(ScriptedSocket.all[0].closedWith, null);
  });
});

describe("messages", () => {
  test("are emitted and acked in one batched frame", async () => {
    const { messages, socket } = await openClient();
    socket.frame(msg("m1"));
    socket.frame(msg("m2"));
    socket.frame(msg("m3", { ack: false, stream: "topic:clinic-205" }));
    assert.deepEqual(messages.map((m) => m.id), ["m1", "m2", "m3"]);
    assert.deepEqual(socket.acks(), [], "acked before the batch delay");
    mock.timers.tick(25);
    const ackFrames = socket.sent.filter((f) => f.type === "ack");
    assert.deepEqual(ackFrames, [{ type: "ack", ids: ["m1", "m2"] }]);
  });

  test("a full batch goes out at once", async () => {
    const { socket } = await openClient({ ackBatch: 3 });
    for (const id of ["a", "b", "c", "d"]) socket.frame(msg(id));
    assert.deepEqual(socket.acks(), ["a", "b", "c"]);
    mock.timers.tick(25);
    assert.deepEqual(socket.acks(), ["a", "b", "c", "d"]);
  });

  test("a duplicate is acked again but not emitted", async () => {
    const { messages, socket } = await openClient();
    socket.frame(msg("m1"));
    mock.timers.tick(25);
    socket.frame(msg("m1", { replay: true }));
    socket.frame(msg("m1", { ack: false }));
    mock.timers.tick(25);
    assert.deepEqual(messages.map((m) => m.id), ["m1"]);
    assert.deepEqual(socket.acks(), ["m1", "m1"]);
  });

  test("dedupe spans reconnects", async () => {
    const { messages, states, socket } = await openClient();
    socket.frame(msg("m1"));
    socket.drop(1006); // before the ack went out: the server will send m1 again
    mock.timers.tick(states.at(-1).delay);
    await settle();
    const again = ScriptedSocket.last();
    again.accept();
    again.welcome();
    again.frame(msg("m1", { replay: true }));
    mock.timers.tick(25);
    assert.deepEqual(messages.map((m) => m.id), ["m1"]);
    assert.deepEqual(again.acks(), ["m1"]);
  });

  test("a listener that throws does not stop the others or the acks", async () => {
    const { client, messages, socket } = await openClient();
    const errors = [];
    globalThis.reportError = (err) => errors.push(err);
    try {
      client.on("message", () => {
        throw new Error("listener bug");
      });
      socket.frame(msg("m1"));
    } finally {
      delete globalThis.reportError;
    }
    mock.timers.tick(25);
    assert.deepEqual(messages.map((m) => m.id), ["m1"]);
    assert.deepEqual(socket.acks(), ["m1"]);
    assert.equal(errors.length, 1);
  });

  test("server pings are answered with pongs", async () => {
    const { socket } = await openClient();
    socket.frame({ type: "ping" });
    assert.deepEqual(socket.sent.at(-1), { type: "pong" });
  });

  test("unknown and malformed frames are ignored", async () => {
    const { states, messages, socket } = await openClient();
    socket.onmessage({ data: "not json" });
    socket.frame({ type: "future-thing" });
    socket.frame(null);
    socket.frame({ type: "msg" }); // no id
    assert.equal(states.at(-1).state, "open");
    assert.deepEqual(messages, []);
  });
});

describe("resume", () => {
  test("reconnects resume after the last acked offset of each stream", async () => {
    const { states, socket } = await openClient();
    socket.frame(msg("m1", { offset: "1700000000000-9" }));
    socket.frame(msg("m2", { offset: "1700000000000-10" }));
    socket.frame(msg("t1", { stream: "topic:clinic-205", offset: "5-0", ack: false }));
    mock.timers.tick(25);
    socket.frame(msg("m3", { offset: "1700000000001-0" })); // not acked yet when the socket drops
    socket.drop(1006);
    mock.timers.tick(states.at(-1).delay);
    await settle();
    ScriptedSocket.last().accept();
    assert.deepEqual(ScriptedSocket.last().sent[0].resume, {
      "user:p1": "1700000000000-10",
      "topic:clinic-205": "5-0",
    });
  });

  test("offsets are kept per device and patient for the next page load", async () => {
    const storage = new MemoryStorage();
    const { client, socket } = await openClient({ storage });
    socket.frame(msg("m1", { offset: "42-7" }));
    mock.timers.tick(25);
    client.close();
    // The next page load knows its patient from the JWT's subject (or the `user` option).
    const next = makeClient({ storage, token: jwt({ sub: "p1", exp: 2000000000 }) });
    next.client.connect();
    await settle();
    ScriptedSocket.last().accept();
    assert.equal(ScriptedSocket.last().sent[0].device, client.device);
    assert.deepEqual(ScriptedSocket.last().sent[0].resume, { "user:p1": "42-7" });
    // Another patient in the same browser does not resume from p1's progress.
    const other = makeClient({ storage, user: "p2" });
    other.client.connect();
    await settle();
    ScriptedSocket.last().accept();
    assert.equal(ScriptedSocket.last().sent[0].resume, undefined);
  });

  test("an opaque token resumes nothing at first, then from its own session", async () => {
    const storage = new MemoryStorage();
    new OffsetStore(storage, "d1", "p1").save({ "user:p1": "40-0" });
    const { states, socket } = await openClient({ storage, device: "d1" });
    assert.equal(socket.sent[0].resume, undefined);
    socket.frame(msg("m1", { offset: "41-0" }));
    mock.timers.tick(25);
    socket.drop(1006);
    mock.timers.tick(states.at(-1).delay);
    await settle();
    ScriptedSocket.last().accept();
    assert.deepEqual(ScriptedSocket.last().sent[0].resume, { "user:p1": "41-0" });
  });

  test("each tab resumes from what it saw itself, not from its sibling's progress", async () => {
    const storage = new MemoryStorage();
    const a = await openClient({ storage });
    const b = await openClient({ storage });
    a.socket.frame(msg("m1", { offset: "10-1" }));
    b.socket.frame(msg("m1", { offset: "10-1" }));
    mock.timers.tick(25);
    a.socket.drop(1006); // tab A is away while m2 arrives at tab B
    b.socket.frame(msg("m2", { offset: "10-2" }));
    mock.timers.tick(25);
    mock.timers.tick(a.states.at(-1).delay);
    await settle();
    const socketA = ScriptedSocket.last();
    socketA.accept();
    assert.deepEqual(socketA.sent[0].resume, { "user:p1": "10-1" });
    assert.deepEqual(new OffsetStore(storage, a.client.device, "p1").load(), { "user:p1": "10-2" });
  });
});

describe("heartbeat", () => {
  test("silence for 2.5 heartbeats means a dead connection", async () => {
    const { states, socket } = await openClient(); // heartbeat 20 s: dead after 50 s of silence
    mock.timers.tick(40000);
    socket.frame({ type: "ping" }); // any frame proves the connection alive
    mock.timers.tick(49999);
    assert.equal(states.at(-1).state, "open");
    mock.timers.tick(1);
    assert.equal(states.at(-1).state, "reconnecting");
    assert.equal(states.at(-1).code, 4009);
    assert.notEqual(socket.closedWith, null);
    // The abandoned socket's late close event changes nothing.
    socket.drop(1006);
    assert.equal(states.filter((s) => s.state === "reconnecting").length, 1);
  });
});

describe("token", () => {
  test("a token request that hangs counts against the connect timeout", async () => {
    let calls = 0;
    const made = makeClient({ token: () => (++calls === 1 ? new Promise(() => {}) : "t2") });
    made.client.connect();
    await settle();
    assert.equal(ScriptedSocket.all.length, 0);
    mock.timers.tick(10000);
    assert.equal(made.states.at(-1).state, "reconnecting");
    mock.timers.tick(made.states.at(-1).delay);
    await settle();
    ScriptedSocket.last().accept();
    assert.equal(ScriptedSocket.last().sent[0].token, "t2");
  });

  test("a failing token request is retried with backoff", async () => {
    let calls = 0;
    const made = makeClient({
      token: async () => {
        calls += 1;
        if (calls === 1) throw new Error("503");
        return "t2";
      },
    });
    made.client.connect();
    await settle();
    assert.equal(made.states.at(-1).state, "reconnecting");
    assert.match(made.states.at(-1).reason, /503/);
    mock.timers.tick(made.states.at(-1).delay);
    await settle();
    ScriptedSocket.last().accept();
    assert.equal(ScriptedSocket.last().sent[0].token, "t2");
  });
});

describe("token lifetime", () => {
  const nowS = () => Math.floor(Date.now() / 1000);

  test("refreshDelay: a minute before exp, or at 80% of a short lifetime", async () => {
    const { refreshDelay } = await import("../pushsvc.js");
    assert.equal(refreshDelay(jwt({ iat: 1000, exp: 4600 }), 1000_000), 3540_000);
    assert.equal(refreshDelay(jwt({ iat: 1000, exp: 1010 }), 1000_000), 8000);
    assert.equal(refreshDelay(jwt({ exp: 1010 }), 1000_000), 8000);
    assert.equal(refreshDelay(jwt({ iat: 900, exp: 999 }), 1000_000), 0);
    assert.equal(refreshDelay("not-a-jwt", 1000_000), null);
  });

  test("a token function is asked for the refresh token before exp, and refreshed renews it", async () => {
    const tokens = [jwt({ sub: "p1", iat: nowS(), exp: nowS() + 10 }),
      jwt({ sub: "p1", iat: nowS(), exp: nowS() + 20 }), jwt({ sub: "p1", iat: nowS(), exp: nowS() + 30 })];
    let calls = 0;
    const { socket, states } = await openClient({ token: async () => tokens[calls++] });
    assert.equal(socket.sent.filter((f) => f.type === "refresh").length, 0);
    mock.timers.tick(8100);
    await settle();
    assert.deepEqual(socket.sent.filter((f) => f.type === "refresh"), [{ type: "refresh", token: tokens[1] }]);
    socket.frame({ type: "refreshed", exp: nowS() + 20 });
    mock.timers.tick(16100);
    await settle();
    assert.equal(socket.sent.filter((f) => f.type === "refresh").at(-1).token, tokens[2]);
    assert.equal(states.at(-1).state, "open");
    assert.equal(ScriptedSocket.all.length, 1);
  });

  test("4001 token_expired on an open session reconnects at once with a new token", async () => {
    let calls = 0;
    const { socket, states } = await openClient({ token: async () => `t${++calls}` });
    socket.frame({ type: "error", code: "token_expired", message: "token expired" });
    socket.drop(4001, "token expired");
    assert.equal(states.at(-1).state, "reconnecting");
    await settle();
    ScriptedSocket.last().accept();
    assert.equal(ScriptedSocket.all.length, 2);
    assert.equal(ScriptedSocket.last().sent[0].token, "t2");
    // refused again at hello, before any welcome: the client ends, it does not loop
    ScriptedSocket.last().frame({ type: "error", code: "token_expired", message: "token expired" });
    ScriptedSocket.last().drop(4001, "token expired");
    assert.equal(states.at(-1).state, "closed");
    mock.timers.tick(120000);
    await settle();
    assert.equal(ScriptedSocket.all.length, 2);
  });

  test("4001 token_expired with a fixed token ends the client", async () => {
    const { socket, states } = await openClient();
    socket.frame({ type: "error", code: "token_expired", message: "token expired" });
    socket.drop(4001, "token expired");
    assert.equal(states.at(-1).state, "closed");
    assert.equal(states.at(-1).error.code, "token_expired");
  });

  test("4001 with another reason stops even with a token function", async () => {
    const { socket, states } = await openClient({ token: async () => "t" });
    socket.frame({ type: "error", code: "token_revoked", message: "revoked" });
    socket.drop(4001, "revoked");
    assert.equal(states.at(-1).state, "closed");
  });
});
