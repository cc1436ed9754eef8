// pushsvc service worker: shows a Web Push as a notification, and on click brings the page back.
//
// Registered by PushClient.enablePush() as /client/pushsvc-sw.js?page=<the page to open>. The
// scope is /client/ (the script's own folder): a worker does not need to control a page to show
// notifications or to focus, open and message the pages of its origin.
//
// A push carries the JSON {"id","event","data","title","body","stream","offset"}. Its notification
// is tagged with the message id, so the same message pushed twice replaces itself instead of
// stacking. On click, the worker focuses an open tab of the page (or opens one) and posts it
// {"type":"pushsvc:opened","message":{...}}; the page's PushClient acknowledges that message
// on its WebSocket once connected. When the browser replaces the subscription, the worker takes
// a new one with the same key, which the page sends at its next connection.

"use strict";

const FALLBACK_TITLE = "New notification";
const OPENED = "pushsvc:opened";

/** The page the patient uses, from the `page` parameter of this script's URL; "/" without one. */
function pageUrl() {
  const given = new URL(self.location.href).searchParams.get("page");
  const url = new URL(given || "/", self.location.origin);
  return url.origin === self.location.origin ? url.href : new URL("/", self.location.origin).href;
}

function text(value) {
  return typeof value === "string" && value.length > 0 ? value : null;
}

/** The push's payload as an object; null when there is none or it is not a JSON object. */
function readPayload(event) {
  if (!event.data) return null;
  try {
    const payload = event.data.json();
    return payload !== null && typeof payload === "object" && !Array.isArray(payload) ? payload : null;
  } catch {
    return null;
  }
}

/** Title and options of the notification for a payload (null: a push that said nothing usable). */
function notificationFor(payload) {
  if (payload === null) {
    // The browser insists that every push shows something; say as little as is true.
    return { title: FALLBACK_TITLE, options: { body: "Open the page to see it.", data: { page: pageUrl() } } };
  }
  const data = payload.data !== null && typeof payload.data === "object" ? payload.data : {};
  const message = {
    id: text(payload.id),
    event: text(payload.event),
    data: payload.data ?? null,
    stream: text(payload.stream),
    offset: text(payload.offset),
    title: text(payload.title),
    body: text(payload.body),
  };
  const options = { body: message.body ?? "", data: { page: pageUrl(), message } };
  if (message.id !== null) options.tag = message.id; // the same message twice replaces itself
  const icon = text(payload.icon) ?? text(data.icon);
  if (icon !== null) options.icon = icon;
  return { title: message.title ?? FALLBACK_TITLE, options };
}

function onPush(event) {
  const { title, options } = notificationFor(readPayload(event));
  event.waitUntil(self.registration.showNotification(title, options));
}

/** A window of this origin showing the page: the same address first, else the same path; or null. */
async function openPageWindow(page) {
  const wanted = new URL(page);
  const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  const address = (w) => {
    const url = new URL(w.url);
    url.hash = "";
    return url;
  };
  const same = windows.filter((w) => address(w).href === wanted.href);
  const samePath = same.length > 0 ? same : windows.filter((w) => address(w).pathname === wanted.pathname);
  return samePath.find((w) => w.focused) ?? samePath.find((w) => w.visibilityState === "visible") ??
    samePath[0] ?? null;
}

/** Focuses the page (or opens it) and hands it the message; the page acks it when connected. */
async function openPage(data) {
  const page = typeof data?.page === "string" ? data.page : pageUrl();
  const message = data?.message?.id ? data.message : null;
  let target = await openPageWindow(page);
  if (target === null) {
    target = await self.clients.openWindow(page);
  } else {
    try {
      target = (await target.focus()) ?? target;
    } catch {
      // Focus is refused without a user's click; the message still goes to the page.
    }
  }
  if (target !== null && message !== null) target.postMessage({ type: OPENED, message });
}

function onNotificationClick(event) {
  event.notification.close();
  event.waitUntil(openPage(event.notification.data));
}

/**
 * The browser replaced or expired the subscription (Firefox does, on its own schedule): take a
 * new one with the same server key, so the page finds push still "on" and sends the new
 * subscription on its next connection. The server drops the old one at its first 404/410.
 */
async function renewSubscription(event) {
  const key = event.oldSubscription?.options?.applicationServerKey;
  if (!key || (await self.registration.pushManager.getSubscription())) return;
  await self.registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: key });
}

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));
self.addEventListener("push", onPush);
self.addEventListener("notificationclick", onNotificationClick);
self.addEventListener("pushsubscriptionchange", (event) => {
  event.waitUntil(renewSubscription(event).catch(() => {})); // nothing to renew with: push is off
});
