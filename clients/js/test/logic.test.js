// Pure pieces of the browser client: backoff, dedupe window, offsets, storage.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  Backoff,
  DedupeWindow,
  MemoryStorage,
  NO_RECONNECT_CODES,
  OffsetStore,
  backoffDelay,
  compareOffsets,
  defaultUrl,
  deviceId,
  laterOffset,
  mergeOffsets,
  parseOffset,
  resumeFor,
  shouldReconnect,
  tokenSubject,
} from "../pushsvc.js";

const almostOne = () => 0.999999;

describe("backoffDelay", () => {
  test("the ceiling doubles from the base up to the cap", () => {
    const cases = [
      // [attempt, base, cap, expected delay with random just under 1]
      [0, 500, 30000, 499],
      [1, 500, 30000, 999],
      [2, 500, 30000, 1999],
      [5, 500, 30000, 15999],
      [6, 500, 30000, 29999],
      [7, 500, 30000, 29999],
      [1000, 500, 30000, 29999],
      [3, 100, 250, 249],
    ];
    for (const [attempt, base, cap, expected] of cases) {
      assert.equal(backoffDelay(attempt, base, cap, almostOne), expected, `attempt ${attempt}`);
    }
  });

  test("full jitter: any delay from zero up to the ceiling", () => {
    assert.equal(backoffDelay(4, 500, 30000, () => 0), 0);
    assert.equal(backoffDelay(4, 500, 30000, () => 0.5), 4000);
    for (let i = 0; i < 1000; i += 1) {
      const delay = backoffDelay(3, 500, 30000);
      assert.ok(delay >= 0 && delay < 4000, `delay ${delay}`);
      assert.ok(Number.isInteger(delay));
    }
  });

  test("nonsense attempts count as the first", () => {
    assert.equal(backoffDelay(-3, 500, 30000, almostOne), 499);
  });

  test("the delays of many clients spread out", () => {
    const delays = new Set();
    for (let i = 0; i < 200; i += 1) delays.add(backoffDelay(6, 500, 30000));
    assert.ok(delays.size > 150, `only ${delays.size} distinct delays`);
  });
});

describe("Backoff", () => {
  test("steps up on each next() and starts over on reset()", () => {
    const backoff = new Backoff({ base: 100, cap: 1000, random: almostOne });
    assert.deepEqual([1, 2, 3, 4, 5].map(() => backoff.next()), [99, 199, 399, 799, 999]);
    assert.equal(backoff.attempt, 5);
    backoff.reset();
    assert.equal(backoff.attempt, 0);
    assert.equal(backoff.next(), 99);
  });
});

describe("DedupeWindow", () => {
  test("answers false the first time and true after", () => {
    const window = new DedupeWindow(10);
    assert.equal(window.check("a"), false);
    assert.equal(window.check("b"), false);
    assert.equal(window.check("a"), true);
    assert.equal(window.check("b"), true);
    assert.equal(window.length, 2);
  });

  test("is bounded and forgets the oldest id first", () => {
    const window = new DedupeWindow(3);
    for (const id of ["a", "b", "c", "d"]) assert.equal(window.check(id), false);
    assert.equal(window.length, 3);
    assert.equal(window.has("a"), false);
    assert.equal(window.check("b"), true); // a hit does not refresh or reorder
    assert.equal(window.check("e"), false); // evicts b
    assert.equal(window.has("b"), false);
    assert.deepEqual(["c", "d", "e"].map((id) => window.has(id)), [true, true, true]);
  });

  test("holds exactly its size over many ids", () => {
    const window = new DedupeWindow(100);
    for (let i = 0; i < 10000; i += 1) window.check(`m${i}`);
    assert.equal(window.length, 100);
    assert.equal(window.has("m9899"), false);
    assert.equal(window.has("m9900"), true);
  });

  test("rejects a size below one", () => {
    assert.throws(() => new DedupeWindow(0), RangeError);
  });
});

describe("offsets", () => {
  test("compare as two integers, not as text", () => {
    const cases = [
      ["1700000000000-0", "1700000000000-0", 0],
      ["1700000000000-1", "1700000000000-0", 1],
      ["1700000000000-9", "1700000000000-10", -1],
      ["999-5", "1000-0", -1],
      ["2-0", "10-0", -1],
      ["0010-2", "10-02", 0],
      ["123456789012345678901-0", "123456789012345678900-0", 1], // beyond 2^53
      ["9007199254740993-0", "9007199254740992-0", 1],
    ];
    for (const [a, b, expected] of cases) {
      assert.equal(compareOffsets(a, b), expected, `${a} vs ${b}`);
      assert.equal(compareOffsets(b, a), -expected || 0, `${b} vs ${a}`);
    }
  });

  test("any other shape is opaque", () => {
    for (const [a, b] of [["abc", "1-0"], ["1-0", "1-0-0"], ["1-", "1-0"], ["", "1-0"], [null, "1-0"]]) {
      assert.ok(Number.isNaN(compareOffsets(a, b)), `${a} vs ${b}`);
    }
    assert.equal(parseOffset("x"), null);
    assert.deepEqual(parseOffset("0-0"), ["0", "0"]);
  });

  test("laterOffset keeps the later one, or the newest received when opaque", () => {
    assert.equal(laterOffset(undefined, "5-1"), "5-1");
    assert.equal(laterOffset("5-2", "5-1"), "5-2");
    assert.equal(laterOffset("5-2", "5-10"), "5-10");
    assert.equal(laterOffset("opaque-a", "opaque-b"), "opaque-b");
  });

  test("mergeOffsets takes the later offset per stream", () => {
    const merged = mergeOffsets(
      { "user:p1": "10-5", "topic:clinic-205": "10-1" },
      { "user:p1": "10-4", all: "3-0", "topic:clinic-205": "11-0", bad: 7 },
    );
    assert.deepEqual(merged, { "user:p1": "10-5", "topic:clinic-205": "11-0", all: "3-0" });
  });
});

describe("shouldReconnect", () => {
  test("everything but 4001, 4002 and 4010", () => {
    assert.deepEqual([...NO_RECONNECT_CODES], [4001, 4002, 4010]);
    for (const code of [4001, 4002, 4010]) assert.equal(shouldReconnect(code), false, `${code}`);
    for (const code of [1000, 1001, 1006, 1011, 4003, 4004, 4008, 4009, 4011]) {
      assert.equal(shouldReconnect(code), true, `${code}`);
    }
  });
});

describe("storage", () => {
  test("the device id is made once per browser", () => {
    const storage = new MemoryStorage();
    const first = deviceId(storage);
    assert.match(first, /^web-[0-9a-f]{32}$/);
    assert.equal(deviceId(storage), first);
    assert.notEqual(deviceId(new MemoryStorage()), first);
  });

  test("a storage that refuses still yields a device id", () => {
    const refusing = {
      getItem() {
        throw new Error("SecurityError");
      },
      setItem() {
        throw new Error("QuotaExceededError");
      },
    };
    assert.match(deviceId(refusing), /^web-/);
    const store = new OffsetStore(refusing, "d1", "p1");
    assert.deepEqual(store.load(), {});
    store.save({ "user:p1": "1-0" }); // does not throw
  });

  test("offsets are kept per device and merged across tabs", () => {
    const storage = new MemoryStorage();
    const tabA = new OffsetStore(storage, "d1", "p1");
    const tabB = new OffsetStore(storage, "d1", "p1");
    tabA.save({ "user:p1": "10-2" });
    tabB.save({ "user:p1": "10-1", all: "4-0" });
    assert.deepEqual(tabA.load(), { "user:p1": "10-2", all: "4-0" });
    assert.deepEqual(new OffsetStore(storage, "d2", "p1").load(), {});
    assert.deepEqual(new OffsetStore(storage, "d1", "p2").load(), {});
  });

  test("corrupt stored offsets are ignored", () => {
    const storage = new MemoryStorage();
    const store = new OffsetStore(storage, "d1", "p1");
    for (const raw of ["{", "[1,2]", "null", '"x"', '{"user:p1": 3, "all": "1-0"}']) {
      storage.setItem(store.key, raw);
      const loaded = store.load();
      assert.equal(typeof loaded, "object");
      assert.ok(!("user:p1" in loaded), raw);
    }
  });
});

describe("defaultUrl", () => {
  test("follows the page's scheme and host", () => {
    assert.equal(defaultUrl({ protocol: "http:", host: "127.0.0.1:8080" }), "ws://127.0.0.1:8080/ws");
    assert.equal(defaultUrl({ protocol: "https:", host: "push.example.org" }), "wss://push.example.org/ws");
  });
});

describe("resumeFor", () => {
  test("passes a small map through", () => {
    assert.deepEqual(resumeFor({ "user:p1": "1-0", all: "2-0" }), { "user:p1": "1-0", all: "2-0" });
  });

  test("keeps the user stream, all, then the most recent topics within the limit", () => {
    const offsets = { "topic:a": "5-0", "topic:b": "9-0", "user:p1": "1-0", "topic:c": "7-0", all: "2-0" };
    assert.deepEqual(Object.keys(resumeFor(offsets, 4)).sort(), ["all", "topic:b", "topic:c", "user:p1"]);
  });
});

describe("tokenSubject", () => {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  test("reads sub from a JWT without verifying it", () => {
    assert.equal(tokenSubject(`${part({ alg: "HS256" })}.${part({ sub: "p1", exp: 1 })}.sig`), "p1");
    assert.equal(tokenSubject(`${part({ alg: "HS256" })}.${part({ sub: "ü?>" })}.sig`), "ü?>");
  });

  test("is null for anything else", () => {
    for (const token of ["opaque", "a.b", "a.!!!.c", `x.${part({ sub: 3 })}.y`, `x.${part(null)}.y`, 7]) {
      assert.equal(tokenSubject(token), null, String(token));
    }
  });
});
