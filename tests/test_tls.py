"""The internal API over HTTPS and mutual TLS, with certificates made by openssl in the test: the
node, the CLI (``https://`` and ``PUSHSVC_CA_FILE``) and the embedded monitor's canary."""

from __future__ import annotations

import contextlib
import os
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import (
    API_KEY,
    ROOT,
    TOKEN_SECRET,
    UNIT,
    free_port,
    pushsvc_command,
    wait_until,
)


@dataclass
class Pki:
    dir: Path

    def path(self, name: str) -> Path:
        return self.dir / name


def openssl(*args: str | Path) -> None:
    binary = shutil.which("openssl")
    assert binary, "openssl is not installed (scripts/system-deps.sh installs it)"
    subprocess.run([binary, *map(str, args)], check=True, capture_output=True)


def make_ca(pki: Pki, name: str) -> None:
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        f"/CN={name}",
        "-keyout",
        pki.path(f"{name}.key"),
        "-out",
        pki.path(f"{name}.pem"),
    )


def make_cert(pki: Pki, ca: str, name: str, extension: str) -> None:
    ext = pki.path(f"{name}.ext")
    ext.write_text(extension + "\n")
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        f"/CN={name}",
        "-keyout",
        pki.path(f"{name}.key"),
        "-out",
        pki.path(f"{name}.csr"),
    )
    openssl(
        "x509",
        "-req",
        "-in",
        pki.path(f"{name}.csr"),
        "-CA",
        pki.path(f"{ca}.pem"),
        "-CAkey",
        pki.path(f"{ca}.key"),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        ext,
        "-out",
        pki.path(f"{name}.pem"),
    )


@pytest.fixture(scope="module")
def pki() -> Iterator[Pki]:
    with tempfile.TemporaryDirectory(prefix="pushsvc-pki-") as tmp:
        pki = Pki(Path(tmp))
        make_ca(pki, "hospital-ca")
        make_ca(pki, "rogue-ca")
        make_cert(pki, "hospital-ca", "node", "subjectAltName=IP:127.0.0.1,DNS:localhost")
        make_cert(pki, "hospital-ca", "operator", "extendedKeyUsage=clientAuth")
        make_cert(pki, "rogue-ca", "intruder", "extendedKeyUsage=clientAuth")
        yield pki


@dataclass
class TlsNode:
    proc: subprocess.Popen[bytes]
    internal_url: str
    env: dict[str, str]
    log: Path

    def context(self, pki: Pki, client: str | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(pki.path("hospital-ca.pem")))
        if client is not None:
            context.load_cert_chain(pki.path(f"{client}.pem"), pki.path(f"{client}.key"))
        return context

    def get(self, path: str, verify: Any, key: str = API_KEY) -> httpx.Response:
        return httpx.get(
            self.internal_url + path,
            verify=verify,
            timeout=5 * UNIT,
            headers={"Authorization": f"Bearer {key}"},
        )


@contextlib.contextmanager
def tls_node(pki: Pki, **settings: Any) -> Iterator[TlsNode]:
    """``pushsvc serve`` with its internal API on HTTPS; ``settings`` as ``PUSHSVC_*``."""
    internal = free_port()
    values = {
        "api_keys": API_KEY,
        "token_secret": TOKEN_SECRET,
        "port": free_port(),
        "internal_port": internal,
        "node_id": "tls-node",
        "internal_tls_cert": pki.path("node.pem"),
        "internal_tls_key": pki.path("node.key"),
        **settings,
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSVC_")}
    env.update({f"PUSHSVC_{k.upper()}": str(v) for k, v in values.items()})
    log = pki.path(f"node-{internal}.log")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*pushsvc_command(), "serve"], env=env, cwd=ROOT, stdout=out, stderr=out
        )
    node = TlsNode(proc, f"https://127.0.0.1:{internal}", env, log)
    client = "operator" if "internal_tls_client_ca" in settings else None
    context = node.context(pki, client)

    def ready() -> bool:
        try:
            return node.get("/readyz", context).status_code == 200
        except httpx.HTTPError:
            return proc.poll() is not None

    try:
        wait_until(ready, 15 * UNIT, 0.1)
        assert proc.poll() is None, log.read_text()
        yield node
    finally:
        proc.terminate()
        proc.wait(15 * UNIT)


def cli(node: TlsNode, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSVC_")}
    return subprocess.run(
        [*pushsvc_command(), *args, "--api-url", node.internal_url, "--api-key", API_KEY],
        env={**base, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
        check=False,
    )


def test_https_for_the_api_the_cli_and_the_canary(pki: Pki) -> None:
    with tls_node(
        pki, ca_file=pki.path("hospital-ca.pem"), canary_interval=0.5, monitor_interval=1
    ) as node:
        trusted = node.context(pki)
        assert node.get("/v1/nodes", trusted).json()["nodes"][0]["id"] == "tls-node"
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            node.get("/readyz", True)  # the system's CAs do not know the hospital's
        with pytest.raises(httpx.HTTPError):  # plain HTTP is not answered
            httpx.get(node.internal_url.replace("https:", "http:") + "/readyz", timeout=5 * UNIT)

        done = cli(
            node,
            "publish",
            "--event",
            "e.tls",
            "--user",
            "p1",
            PUSHSVC_CA_FILE=str(pki.path("hospital-ca.pem")),
        )
        assert done.returncode == 0, done.stderr
        refused = cli(node, "publish", "--event", "e.tls", "--user", "p1")
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert "certificate verify failed" in refused.stderr.lower(), refused.stderr
        bad = cli(
            node,
            "publish",
            "--event",
            "e",
            "--user",
            "p1",
            PUSHSVC_CA_FILE=str(pki.path("missing.pem")),
        )
        assert bad.returncode == 2 and "cannot use the TLS files" in " ".join(bad.stderr.split())

        # the embedded monitor's canary reaches the node's API over HTTPS and gets through
        up = 'pushsvc_monitor_canary_up{node="tls-node"} 1.0'
        wait_until(lambda: up in node.get("/metrics", trusted).text, 20 * UNIT, 0.2)
        assert API_KEY not in node.log.read_text()


def test_mutual_tls(pki: Pki) -> None:
    with tls_node(pki, internal_tls_client_ca=pki.path("hospital-ca.pem")) as node:
        assert node.get("/v1/nodes", node.context(pki, "operator")).status_code == 200
        for client in (None, "intruder"):
            with pytest.raises(httpx.HTTPError):
                node.get("/readyz", node.context(pki, client))
        tls = {"PUSHSVC_CA_FILE": str(pki.path("hospital-ca.pem"))}
        done = cli(
            node,
            "publish",
            "--event",
            "e.mtls",
            "--user",
            "p1",
            **tls,
            PUSHSVC_CLIENT_CERT=str(pki.path("operator.pem")),
            PUSHSVC_CLIENT_KEY=str(pki.path("operator.key")),
        )
        assert done.returncode == 0, done.stderr
        without = cli(node, "publish", "--event", "e.mtls", "--user", "p1", **tls)
        assert without.returncode == 1 and "Traceback" not in without.stderr


@pytest.mark.parametrize(
    ("settings", "said"),
    [
        ({"internal_tls_cert": "x.pem"}, "go together"),
        ({"internal_tls_client_ca": "ca.pem"}, "needs internal_tls_cert"),
    ],
)
def test_incomplete_tls_settings_are_refused(settings: dict[str, str], said: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSVC_")}
    env.update({f"PUSHSVC_{k.upper()}": v for k, v in settings.items()})
    env.update(PUSHSVC_API_KEYS=API_KEY, PUSHSVC_TOKEN_SECRET=TOKEN_SECRET)
    done = subprocess.run(
        [*pushsvc_command(), "serve"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
        check=False,
    )
    assert done.returncode == 2 and said in " ".join(done.stderr.split()), done.stderr
