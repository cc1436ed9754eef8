"""Test doubles that are real servers: a Web Push service and a webhook receiver (stdlib HTTP,
each in a thread, on a free port), and a browser's side of a push subscription.

The push service does what a real one checks: the VAPID JWT (ES256, signed by the key in the
``k=`` parameter, which must be the node's; ``aud`` its own origin; ``exp`` within 24 h; a
``sub``), the headers of RFC 8030, and it decrypts the body with the subscription's private key
(RFC 8291, written here independently of the code under test, with cryptography's HKDF).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _hkdf(salt: bytes, ikm: bytes, info: bytes, length: int) -> bytes:
    return HKDF(hashes.SHA256(), length, salt, info).derive(ikm)


@dataclass
class Browser:
    """One browser's push subscription: its key pair and auth secret."""

    endpoint: str
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(
        ec.SECP256R1()))  # fmt: skip
    auth: bytes = field(default_factory=lambda: os.urandom(16))

    @property
    def public(self) -> bytes:
        return self.key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)

    def subscription(self) -> dict[str, Any]:
        """What ``PushSubscription.toJSON()`` gives."""
        return {"endpoint": self.endpoint, "expirationTime": None,
                "keys": {"p256dh": b64(self.public), "auth": b64(self.auth)}}  # fmt: skip

    def decrypt(self, body: bytes) -> bytes:
        salt, rs, idlen = body[:16], struct.unpack("!I", body[16:20])[0], body[20]
        sender = body[21 : 21 + idlen]
        sealed = body[21 + idlen :]
        assert rs >= 18 and len(sealed) <= rs, (rs, len(sealed))
        peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), sender)
        shared = self.key.exchange(ec.ECDH(), peer)
        ikm = _hkdf(self.auth, shared, b"WebPush: info\x00" + self.public + sender, 32)
        cek = _hkdf(salt, ikm, b"Content-Encoding: aes128gcm\x00", 16)
        nonce = _hkdf(salt, ikm, b"Content-Encoding: nonce\x00", 12)
        padded = AESGCM(cek).decrypt(nonce, sealed, None)
        content = padded.rstrip(b"\x00")
        assert content.endswith(b"\x02"), "not the last record's delimiter"
        return content[:-1]


@dataclass
class Push:
    """A push the service received (and checked)."""

    name: str
    payload: dict[str, Any]
    headers: dict[str, str]
    at: float
    status: int
    peer_port: int


#: What the service answers for a subscription: (status, extra headers), called per request
#: with the number of earlier requests to that subscription.
Answer = Callable[[int], tuple[int, dict[str, str]]]


def accept(_: int) -> tuple[int, dict[str, str]]:
    return 201, {}


class PushService:
    """A Web Push service on 127.0.0.1; subscriptions are ``/push/<name>``."""

    def __init__(self) -> None:
        self.browsers: dict[str, Browser] = {}
        self.answers: dict[str, Answer] = {}
        self.pushes: list[Push] = []
        self.errors: list[str] = []
        self.vapid_key = ""  # the node's public key, base64url
        self.hold: dict[str, threading.Event] = {}  # name -> released when set
        self.holding = threading.Event()  # set while a request is held
        self.held_peer = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.origin = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> PushService:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for event in self.hold.values():
            event.set()
        self._server.shutdown()
        self._server.server_close()

    def browser(self, name: str, answer: Answer = accept) -> Browser:
        b = self.browsers[name] = Browser(f"{self.origin}/push/{name}")
        self.answers[name] = answer
        return b

    def accepted(self, name: str) -> list[Push]:
        with self._lock:
            return [p for p in self.pushes if p.name == name and p.status == 201]

    def tried(self, name: str) -> list[Push]:
        with self._lock:
            return [p for p in self.pushes if p.name == name]

    def _check(self, headers: dict[str, str]) -> None:
        scheme, _, params = headers.get("authorization", "").partition(" ")
        assert scheme == "vapid", headers
        parts = dict(p.strip().split("=", 1) for p in params.split(","))
        assert parts["k"] == self.vapid_key, "not signed with the node's key"
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64(parts["k"]))
        claims = jwt.decode(parts["t"], public, algorithms=["ES256"], audience=self.origin)
        assert claims["exp"] <= time.time() + 24 * 3600, claims
        assert claims["sub"].startswith(("mailto:", "https://")), claims
        assert headers["content-encoding"] == "aes128gcm", headers
        assert int(headers["ttl"]) >= 0, headers
        assert headers["urgency"] in ("very-low", "low", "normal", "high"), headers

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                name = self.path.removeprefix("/push/")
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    service._check(headers)
                    payload = json.loads(service.browsers[name].decrypt(body))
                except Exception as exc:
                    service.errors.append(f"{name}: {type(exc).__name__}: {exc}")
                    self._answer(400, {})
                    return
                held = service.hold.get(name)
                if held is not None and not held.is_set():
                    service.held_peer = self.client_address[1]
                    service.holding.set()
                    held.wait(60)
                    status, extra = 500, {}  # the push never went anywhere
                else:
                    with service._lock:
                        n = len([p for p in service.pushes if p.name == name])
                    status, extra = service.answers[name](n)
                with service._lock:
                    service.pushes.append(Push(name, payload, headers, time.time(), status,
                                               self.client_address[1]))  # fmt: skip
                self._answer(status, extra)

            def _answer(self, status: int, extra: dict[str, str]) -> None:
                self.send_response(status)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

        return Handler


@dataclass
class Delivery:
    event: dict[str, Any]
    raw: bytes
    at: float
    status: int


class WebhookReceiver:
    """A hospital's webhook endpoint: checks every signature, answers ``answer(n)`` to the
    ``n``-th request (0-based)."""

    def __init__(self, secret: str, answer: Callable[[int], int] = lambda n: 200) -> None:
        self.secret = secret
        self.answer = answer
        self.deliveries: list[Delivery] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks/pushsvc"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def events(self, kind: str | None = None, status: int | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [d.event for d in self.deliveries
                    if kind in (None, d.event["type"]) and status in (None, d.status)]  # fmt: skip

    def verify(self, header: str, raw: bytes) -> None:
        parts = dict(p.split("=", 1) for p in header.split(","))
        t = parts["t"]
        expected = hmac.new(self.secret.encode(), t.encode() + b"." + raw, hashlib.sha256)
        assert hmac.compare_digest(expected.hexdigest(), parts["v1"]), "bad signature"
        assert abs(time.time() - int(t)) < 300, "stale timestamp"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", 0)))
                try:
                    receiver.verify(self.headers.get("Pushsvc-Signature", ""), raw)
                    event = json.loads(raw)
                except Exception as exc:
                    receiver.errors.append(f"{type(exc).__name__}: {exc}")
                    status = 400
                    event = {}
                else:
                    with receiver._lock:
                        status = receiver.answer(len(receiver.deliveries))
                if event:
                    with receiver._lock:
                        receiver.deliveries.append(Delivery(event, raw, time.time(), status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        return Handler


def pid_of_peer(port: int, pids: list[int]) -> int | None:
    """Which of ``pids`` holds the local TCP port ``port`` (Linux /proc, no psutil)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(cols[9])
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd).removeprefix("socket:[").rstrip("]") in inodes:
                    return pid
            except OSError:
                continue
    return None
