"""The server's VAPID identity (RFC 8292): a P-256 key pair, and the JWT that proves it.

Push services accept a message only with ``Authorization: vapid t=<jwt>, k=<public key>``; the
browser bound the subscription to our public key (``applicationServerKey``), so nobody else
can push to it. A JWT names the push service's origin (``aud``), expires (``exp``, at most
24 h ahead) and gives a contact (``sub``). One JWT per origin is reused until half its life
has passed.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pushsvc.errors import ConfigError
from pushsvc.push.ece import b64encode, public_bytes

JWT_LIFETIME = 12 * 3600  # seconds; RFC 8292 allows up to 24 h


def generate() -> tuple[str, str]:
    """A new key pair: (the private key as PEM, the public key as base64url)."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return pem, b64encode(public_bytes(key.public_key()))


def origin(endpoint: str) -> str:
    """The origin (``scheme://host[:port]``) of a push endpoint: the JWT's audience."""
    parts = urlsplit(endpoint)
    return f"{parts.scheme}://{parts.netloc}"


class Vapid:
    """The key of this deployment. ``subject``: ``mailto:`` or ``https:`` contact."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, subject: str) -> None:
        self._key = key
        self.subject = subject
        self.public_key = b64encode(public_bytes(key.public_key()))
        self._tokens: dict[str, tuple[str, float]] = {}  # origin -> (jwt, exp)

    @classmethod
    def load(cls, path: Path, subject: str) -> Vapid:
        """Read a PEM private key file; :class:`ConfigError` when it is missing or not a P-256
        key, or when ``subject`` is not a ``mailto:`` or ``https:`` URL."""
        if not subject.startswith(("mailto:", "https://")):
            raise ConfigError("PUSHSVC_VAPID_SUBJECT must be a mailto: or https: URL")
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"cannot read the VAPID private key {str(path)!r}: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ConfigError(f"the VAPID key {str(path)!r} is not a P-256 (prime256v1) key")
        return cls(key, subject)

    def authorization(self, endpoint: str, now: float) -> str:
        """The ``Authorization`` header value for a push to ``endpoint`` at ``now``."""
        audience = origin(endpoint)
        held = self._tokens.get(audience)
        if held is None or held[1] - now < JWT_LIFETIME / 2:
            exp = int(now) + JWT_LIFETIME
            claims = {"aud": audience, "exp": exp, "sub": self.subject}
            held = (jwt.encode(claims, self._key, algorithm="ES256"), exp)
            self._tokens[audience] = held
        return f"vapid t={held[0]}, k={self.public_key}"
