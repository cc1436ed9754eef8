"""TLS for the clients of the internal API (the CLI, the monitor's canary) and of a JWKS URL.

``PUSHSVC_CA_FILE`` is the PEM bundle to trust instead of the system's CAs (a hospital's own CA);
``PUSHSVC_CLIENT_CERT`` and ``PUSHSVC_CLIENT_KEY`` are the certificate these clients show when
the internal API asks for one (``--internal-tls-client-ca``, mutual TLS).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from pushsvc.errors import ConfigError


def client_context(
    ca_file: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """A client-side context that verifies servers against ``ca_file`` (else the system's CAs)
    and shows ``cert``/``key`` when given. Raises :class:`ConfigError` for unreadable files."""
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        if cert is not None:
            context.load_cert_chain(str(cert), str(key) if key else None)
    except (OSError, ssl.SSLError) as exc:
        which = "PUSHSVC_CLIENT_CERT/KEY" if ca_file is None or cert is not None else "CA file"
        raise ConfigError(f"cannot use the TLS files ({which}): {exc}") from None
    return context
