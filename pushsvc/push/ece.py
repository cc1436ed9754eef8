"""Web Push payload encryption, ``Content-Encoding: aes128gcm`` (RFC 8291 over RFC 8188).

Pure functions over bytes: one record (a push message is at most 4,096 bytes), a fresh
ephemeral key pair and salt per message. The receiving browser derives the same key from its
private key and the ``auth`` secret it gave us with the subscription.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

RECORD_SIZE = 4096
#: Header (salt 16, record size 4, key id length 1, key id 65), tag 16, the delimiter byte.
OVERHEAD = 16 + 4 + 1 + 65 + 16 + 1
MAX_PAYLOAD = RECORD_SIZE - OVERHEAD


def b64decode(text: str) -> bytes:
    """Base64url with or without padding (browsers send it without); ValueError (binascii.Error)
    for any other character."""
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


def b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _hkdf(salt: bytes, ikm: bytes, info: bytes, length: int) -> bytes:
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()[:length]


def public_bytes(key: ec.EllipticCurvePublicKey) -> bytes:
    """The uncompressed point (65 bytes) of a P-256 public key."""
    return key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def encrypt(
    payload: bytes,
    p256dh: bytes,
    auth: bytes,
    *,
    salt: bytes | None = None,
    private: ec.EllipticCurvePrivateKey | None = None,
) -> bytes:
    """The body of a push message carrying ``payload`` to the browser whose subscription has
    the public key ``p256dh`` (65 bytes) and the secret ``auth`` (16 bytes). ``salt`` and
    ``private`` are fresh unless given (tests). Raises ValueError for a payload over
    :data:`MAX_PAYLOAD` bytes or a key that is not a P-256 point."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"push payload is {len(payload)} bytes, the limit is {MAX_PAYLOAD}")
    receiver = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), p256dh)
    private = private or ec.generate_private_key(ec.SECP256R1())
    sender = public_bytes(private.public_key())
    salt = salt or os.urandom(16)
    shared = private.exchange(ec.ECDH(), receiver)
    ikm = _hkdf(auth, shared, b"WebPush: info\x00" + p256dh + sender, 32)
    key = _hkdf(salt, ikm, b"Content-Encoding: aes128gcm\x00", 16)
    nonce = _hkdf(salt, ikm, b"Content-Encoding: nonce\x00", 12)
    sealed = AESGCM(key).encrypt(nonce, payload + b"\x02", None)
    return salt + struct.pack("!IB", RECORD_SIZE, len(sender)) + sender + sealed
