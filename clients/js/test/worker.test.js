// The service worker's rules, run in a VM context with a scripted worker scope: what a push
// shows, and which window a click brings back. (Chromium runs the real thing in
// tests/browser/test_push.py.)
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { describe, test } from "node:test";
import vm from "node:vm";

const SOURCE = await readFile(new URL("../pushsvc-sw.js", import.meta.url), "utf8");
const ORIGIN = "https://clinic.example";

/** Objects made inside the VM have its prototypes: compare their JSON. */
const plain = (value) => JSON.parse(JSON.stringify(value));

/** A worker scope: registration, clients and windows the test sets up; records what happens. */
function workerScope({ page = "/demo/?user=p1", windows = [], openable = true } = {}) {
  const listeners = {};
  const shown = [];
  const opened = [];
  const scope = {
    location: new URL(`${ORIGIN}/client/pushsvc-sw.js?page=${encodeURIComponent(page)}`),
    addEventListener(type, listener) {
      listeners[type] = listener;
    },
    skipWaiting() {},
    registration: {
      async showNotification(title, options) {
        shown.push({ title, options });
      },
    },
    clients: {
      async matchAll(query) {
        assert.deepEqual(plain(query), { type: "window", includeUncontrolled: true });
        return windows;
      },
      async openWindow(url) {
        opened.push(url);
        return openable ? scriptedWindow(url) : null;
      },
      async claim() {},
    },
  };
  scope.self = scope;
  const context = vm.createContext({ ...scope, URL, console });
  context.self = context;
  vm.runInContext(SOURCE, context);
  return { context, listeners, shown, opened };
}

function scriptedWindow(url, { focused = false, visibilityState = "visible", focusable = true } = {}) {
  const win = {
    url,
    focused,
    visibilityState,
    posted: [],
    focusCalls: 0,
    postMessage(message) {
      win.posted.push(message);
    },
    async focus() {
      win.focusCalls += 1;
      if (!focusable) throw new Error("InvalidAccessError: Not allowed to focus a window.");
      return win;
    },
  };
  return win;
}

/** Runs a listener with an event whose waitUntil promise the test awaits. */
async function dispatch(listener, fields) {
  const pending = [];
  listener({ ...fields, waitUntil: (promise) => pending.push(promise) });
  await Promise.all(pending);
}

function pushEvent(payload) {
  if (payload === undefined) return { data: null };
  const text = typeof payload === "string" ? payload : JSON.stringify(payload);
  return { data: { json: () => JSON.parse(text), text: () => text } };
}

const MESSAGE = {
  id: "m1", event: "queue.called", data: { room: "205" }, title: "It is your turn",
  body: "Please go to room 205.", stream: "user:p1", offset: "1700000000000-3",
};

describe("a push", () => {
  test("shows the notification its payload describes", async () => {
    const cases = [
      // [payload, title, body, tag, icon]
      [MESSAGE, "It is your turn", "Please go to room 205.", "m1", undefined],
      [{ ...MESSAGE, data: { icon: "/icons/room.png" } }, "It is your turn", "Please go to room 205.", "m1", "/icons/room.png"],
      [{ ...MESSAGE, icon: "/icons/top.png", data: { icon: "/icons/data.png" } }, "It is your turn", "Please go to room 205.", "m1", "/icons/top.png"],
      [{ ...MESSAGE, title: "", body: null }, "New notification", "", "m1", undefined],
      [{ ...MESSAGE, id: 42 }, "It is your turn", "Please go to room 205.", undefined, undefined],
      [{ ...MESSAGE, data: { icon: 7 } }, "It is your turn", "Please go to room 205.", "m1", undefined],
      ["not json", "New notification", "Open the page to see it.", undefined, undefined],
      [[1, 2], "New notification", "Open the page to see it.", undefined, undefined],
      ["null", "New notification", "Open the page to see it.", undefined, undefined],
      [undefined, "New notification", "Open the page to see it.", undefined, undefined],
    ];
    for (const [payload, title, body, tag, icon] of cases) {
      const worker = workerScope();
      await dispatch(worker.listeners.push, pushEvent(payload));
      assert.equal(worker.shown.length, 1, JSON.stringify(payload));
      const [{ title: shownTitle, options }] = worker.shown;
      const label = JSON.stringify(payload);
      assert.equal(shownTitle, title, label);
      assert.equal(options.body, body, label);
      assert.equal(options.tag, tag, label);
      assert.equal(options.icon, icon, label);
      assert.equal(options.data.page, `${ORIGIN}/demo/?user=p1`, label);
    }
  });

  test("keeps the message in the notification's data", async () => {
    const worker = workerScope();
    await dispatch(worker.listeners.push, pushEvent(MESSAGE));
    assert.deepEqual(plain(worker.shown[0].options.data.message), MESSAGE);
  });

  test("the page to open stays on the worker's origin", () => {
    const cases = [
      ["/demo/?user=p1", `${ORIGIN}/demo/?user=p1`],
      ["", `${ORIGIN}/`],
      ["https://elsewhere.example/phish", `${ORIGIN}/`],
      ["javascript:alert(1)", `${ORIGIN}/`],
    ];
    for (const [given, expected] of cases) {
      assert.equal(workerScope({ page: given }).context.pageUrl(), expected, given);
    }
  });
});

describe("a click", () => {
  const data = { page: `${ORIGIN}/demo/?user=p1`, message: MESSAGE };

  async function click(worker, notificationData = data) {
    let closed = false;
    await dispatch(worker.listeners.notificationclick, {
      notification: { data: notificationData, close: () => { closed = true; } },
    });
    assert.ok(closed, "the notification stays after the click");
  }

  test("brings back the tab with the page's address and hands it the message", async () => {
    const mine = scriptedWindow(`${ORIGIN}/demo/?user=p1#feed`);
    const theirs = scriptedWindow(`${ORIGIN}/demo/?user=p2`, { focused: true });
    const worker = workerScope({ windows: [theirs, mine] });
    await click(worker);
    assert.equal(mine.focusCalls, 1);
    assert.deepEqual(plain(mine.posted), [{ type: "pushsvc:opened", message: MESSAGE }]);
    assert.deepEqual(theirs.posted, []);
    assert.deepEqual(worker.opened, []);
  });

  test("else a tab with the same path, the focused or visible one first", async () => {
    const hidden = scriptedWindow(`${ORIGIN}/demo/?token=abc`, { visibilityState: "hidden" });
    const visible = scriptedWindow(`${ORIGIN}/demo/?token=def`);
    const elsewhere = scriptedWindow(`${ORIGIN}/other/`, { focused: true });
    const worker = workerScope({ windows: [hidden, elsewhere, visible] });
    await click(worker);
    assert.deepEqual(visible.posted.map((m) => m.message.id), ["m1"]);
    assert.deepEqual(hidden.posted, []);
    assert.deepEqual(elsewhere.posted, []);
  });

  test("hands the message over even when focus is refused", async () => {
    const mine = scriptedWindow(`${ORIGIN}/demo/?user=p1`, { focusable: false });
    const worker = workerScope({ windows: [mine] });
    await click(worker);
    assert.deepEqual(mine.posted.map((m) => m.message.id), ["m1"]);
  });

  test("opens the page when no tab shows it", async () => {
    const worker = workerScope({ windows: [scriptedWindow(`${ORIGIN}/other/`)] });
    await click(worker);
    assert.deepEqual(worker.opened, [`${ORIGIN}/demo/?user=p1`]);
  });

  test("a notification without a message only opens the page", async () => {
    const mine = scriptedWindow(`${ORIGIN}/demo/?user=p1`);
    const worker = workerScope({ windows: [mine] });
    await click(worker, { page: `${ORIGIN}/demo/?user=p1` });
    assert.equal(mine.focusCalls, 1);
    assert.deepEqual(mine.posted, []);
    const fresh = workerScope({ windows: [], openable: false }); // openWindow gave nothing back
    await click(fresh, data);
    assert.deepEqual(fresh.opened, [`${ORIGIN}/demo/?user=p1`]);
  });
});
