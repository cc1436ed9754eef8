// A WebSocket stand-in that tests drive from the server's side, shared by the client tests.
import assert from "node:assert/strict";

export const CONNECTING = 0;
export const OPEN = 1;
export const CLOSED = 3;

/** A WebSocket stand-in that the test drives from the server's side. */
export class ScriptedSocket {
  static all = [];

  constructor(url) {
    this.url = url;
    this.readyState = CONNECTING;
    this.sent = [];
    this.closedWith = null;
    ScriptedSocket.all.push(this);
  }

  send(data) {
    assert.equal(this.readyState, OPEN, "sent on a socket that is not open");
    this.sent.push(JSON.parse(data));
  }

  close(code, reason) {
    this.closedWith = { code, reason };
    this.readyState = CLOSED;
  }

  // The server's side.
  accept() {
    this.readyState = OPEN;
    this.onopen?.({});
  }

  frame(value) {
    this.onmessage?.({ data: JSON.stringify(value) });
  }

  welcome(extra = {}) {
    this.frame({ type: "welcome", session: "s1", node: "n1", user: "p1", heartbeat: 20, replayed: 0, ...extra });
  }

  drop(code, reason = "") {
    this.readyState = CLOSED;
    this.onclose?.({ code, reason });
  }

  acks() {
    return this.sent.filter((f) => f.type === "ack").flatMap((f) => f.ids);
  }

  static last() {
    return ScriptedSocket.all.at(-1);
  }
}


/** Lets the client's awaits (token) run. */
export const settle = () => new Promise((resolve) => setImmediate(resolve));
