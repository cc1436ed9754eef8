"""What a browser may subscribe with: checked once, when its ``push_subscribe`` frame arrives.

A push endpoint is an ``https`` URL of the browser's push service (``http`` only to a loopback
host: development and tests); ``p256dh`` is a P-256 public key (65 bytes, uncompressed) and
``auth`` a 16-byte secret, both base64url. Anything else is a :class:`FrameError` (4003).
"""

from __future__ import annotations

import binascii
import ipaddress
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec

from pushsvc.broker.base import Subscription
from pushsvc.core.frames import PushSubscription
from pushsvc.errors import FrameError
from pushsvc.push.ece import b64decode

SLUG = "invalid_subscription"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def checked(given: PushSubscription, now: float) -> Subscription:
    """The subscription to keep, or :class:`FrameError` saying what is wrong with it."""
    try:
        url = urlsplit(given.endpoint)
        host = url.hostname or ""
    except ValueError:
        raise FrameError("endpoint is not a URL", slug=SLUG) from None
    if not host or url.scheme not in ("https", "http"):
        raise FrameError("endpoint must be an https URL", slug=SLUG)
    if url.scheme == "http" and not _loopback(host):
        raise FrameError("endpoint must be an https URL", slug=SLUG)
    try:
        p256dh = b64decode(given.keys.p256dh)
        auth = b64decode(given.keys.auth)
    except (binascii.Error, ValueError):
        raise FrameError("keys must be base64url", slug=SLUG) from None
    if len(p256dh) != 65 or p256dh[0] != 4:
        raise FrameError("keys.p256dh must be an uncompressed P-256 point (65 bytes)", slug=SLUG)
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), p256dh)
    except ValueError:
        raise FrameError("keys.p256dh is not a point on P-256", slug=SLUG) from None
    if len(auth) != 16:
        raise FrameError("keys.auth must be 16 bytes", slug=SLUG)
    return Subscription(
        endpoint=given.endpoint, p256dh=given.keys.p256dh, auth=given.keys.auth, seen=now
    )
