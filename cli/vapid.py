"""``pushsvc vapid-keys``: a new VAPID key pair for Web Push."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from cli.settings import fail
from pushsvc.push import vapid


def vapid_keys(
    out: Annotated[
        Path | None,
        typer.Option(help="Write the private key (PEM, mode 0600) to this new file."),
    ] = None,
) -> None:
    """Print a new VAPID key pair: the private key as PEM (the file PUSHSVC_VAPID_PRIVATE_KEY
    names) and the base64url public key (what GET /client/push-key serves)."""
    pem, public = vapid.generate()
    if out is None:
        print(pem, end="")
    else:
        try:
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            fail(f"cannot create {out}: {exc.strerror}")
        with os.fdopen(fd, "w") as f:
            f.write(pem)
        print(f"private key written to {out}")
    print(f"public key: {public}")
