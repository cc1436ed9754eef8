"""The wheel is the product: built from this tree, installed in a fresh venv outside any checkout,
it runs the README's install tour with nothing but what it carries.

The wheel is built without build isolation (the test venv's setuptools) from a copy of the tree,
so the checkout gets no ``build/``. The fresh venv gets the wheel with ``--no-deps``; its
dependencies come from the test venv's site-packages through a ``.pth`` line (not a site dir: the
test venv's editable install of this checkout is not activated). Every command runs with the
fresh venv's own scripts, from a temporary directory, with no ``PYTHONPATH``; the test checks
that ``pushsvc``, its static files and its dashboards are imported and read from the venv.

The npm package in ``clients/js`` is checked here too: its version is the Python version, and
``npm pack --dry-run`` lists exactly the files it should publish.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.parser
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from pushsvc import __version__
from pushsvc.assets import asset_dir, asset_files
from tests.support import ROOT, UNIT, free_port, wait_until
from tests.wire import Wire

KEY = "wheel-test-key"
SECRET = "wheel-test-secret-" + "y" * 40
NOT_COPIED = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".mypy_cache", ".ruff_cache",
    "node_modules", "test-artifacts", ".run", "results", "_data",
)  # fmt: skip


@dataclass
class Installed:
    wheel: Path
    venv: Path
    cwd: Path
    env: dict[str, str]

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args, cwd=self.cwd, env=self.env, capture_output=True, text=True,
            timeout=60 * UNIT, check=False,
        )  # fmt: skip


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    source = base / "src"
    shutil.copytree(ROOT, source, ignore=NOT_COPIED)
    dist = base / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(dist), str(source)],
        check=True, timeout=120 * UNIT,
    )  # fmt: skip
    (wheel,) = dist.glob("pushsvc-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    target = Path(
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    )  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
         "--no-deps", str(wheel)],
        check=True, timeout=120 * UNIT,
    )  # fmt: skip
    (target / "zz_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    cwd = base / "elsewhere"
    cwd.mkdir()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PUSHSVC_", "PYTHON", "VIRTUAL"))
    }
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    return Installed(wheel, venv, cwd, env)


# -- what the wheel holds -------------------------------------------------------------------


def test_the_wheel_carries_the_license_the_version_and_every_shipped_file(
    installed: Installed,
) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
        info = f"pushsvc-{__version__}.dist-info"
        metadata = email.parser.Parser().parsestr(wheel.read(f"{info}/METADATA").decode())
    assert metadata["Version"] == __version__
    assert metadata["License-Expression"] == "Apache-2.0"
    assert f"{info}/licenses/LICENSE" in names
    for kind in ("client", "dashboards", "alerts"):
        files = asset_files(kind)
        assert files, kind
        for relative in files:
            assert f"pushsvc/_data/{kind}/{relative.as_posix()}" in names, (kind, relative)
    top = {name.split("/")[0] for name in names}
    assert top == {"pushsvc", "cli", "monitor", info}, top  # no tests, no stray folders


def test_the_installed_package_is_the_wheel_not_the_checkout(installed: Installed) -> None:
    probe = installed.run(
        installed.bin("python"), "-c",
        "import cli, pushsvc; from pushsvc.settings import Settings;"
        "print(pushsvc.__file__); print(cli.__file__); print(Settings().static_dir)",
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    for line in probe.stdout.split():
        assert Path(line).is_relative_to(installed.venv), probe.stdout


# -- the README's install tour ----------------------------------------------------------------


def test_version(installed: Installed) -> None:
    result = installed.run(installed.bin("pushsvc"), "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"pushsvc {__version__}"


@contextlib.contextmanager
def serving(installed: Installed) -> Iterator[tuple[int, httpx.Client, Path]]:
    """``pushsvc serve --dev`` of the venv, ready: its client port, an API client, its log."""
    port, internal = free_port(), free_port()
    log = installed.cwd / f"serve-{port}.log"
    env = {**installed.env, "PUSHSVC_API_KEYS": KEY, "PUSHSVC_TOKEN_SECRET": SECRET}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [installed.bin("pushsvc"), "serve", "--dev", "--port", str(port),
             "--internal-port", str(internal)],
            cwd=installed.cwd, env=env, stdout=out, stderr=out,
        )  # fmt: skip
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{internal}", headers={"Authorization": f"Bearer {KEY}"},
        timeout=10 * UNIT,
    )  # fmt: skip

    def ready() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return api.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(ready, 20 * UNIT)
        yield port, api, log
    finally:
        api.close()
        proc.terminate()
        proc.wait(15 * UNIT)


async def receive_one(port: int, token: str, publish: Callable[[], str]) -> dict[str, Any]:
    """Connect as a device, call ``publish`` (it returns the message id), read the message."""
    wire = await Wire.open(f"ws://127.0.0.1:{port}/ws", token)
    try:
        message_id = await asyncio.to_thread(publish)
        message = await wire.recv_msg()
        assert message["id"] == message_id
        await wire.ack(message_id)
        return message
    finally:
        await wire.close()


def test_serve_dev_serves_the_demo_and_the_client_and_delivers(installed: Installed) -> None:
    with serving(installed) as (port, api, log):
        public = f"http://127.0.0.1:{port}"
        demo = httpx.get(public + "/demo/", timeout=10 * UNIT)
        assert demo.status_code == 200, demo.text
        assert demo.headers["content-type"].startswith("text/html")
        assert demo.text == (asset_dir("client") / "demo" / "index.html").read_text()
        script = httpx.get(public + "/client/pushsvc.js", timeout=10 * UNIT)
        assert script.status_code == 200
        assert script.text == (asset_dir("client") / "pushsvc.js").read_text()

        def publish() -> str:
            body = {"to": {"users": ["p1"]}, "event": "queue.called", "data": {"room": "205"}}
            published = api.post("/v1/messages", json=body)
            assert published.status_code == 202, published.text
            return str(published.json()["id"])

        token = api.post("/v1/tokens", json={"user": "p1"}).json()["token"]
        message = asyncio.run(receive_one(port, token, publish))
        assert (message["event"], message["data"]) == ("queue.called", {"room": "205"})
    text = log.read_text()
    assert "Traceback" not in text, text
    assert "exceeds what one process can hold" not in text, text  # the default fits the limit


def test_export_dashboards_writes_the_shipped_dashboards(installed: Installed) -> None:
    out = installed.cwd / "dashboards-out"
    result = installed.run(installed.bin("pushsvc"), "export", "dashboards", str(out))
    assert result.returncode == 0, result.stderr
    written = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert written == asset_files("dashboards")
    for relative in written:
        assert (out / relative).read_bytes() == (ROOT / "dashboards" / relative).read_bytes()
    assert json.loads((out / "pushsvc-overview.json").read_text())["title"]


def test_export_alerts_writes_absolute_runbook_links_and_a_prometheus_rule(
    installed: Installed,
) -> None:
    out = installed.cwd / "alerts-out"
    base = "https://wiki.hospital.example/pushsvc/docs/"
    result = installed.run(
        installed.bin("pushsvc"), "export", "alerts", str(out), "--runbook-base-url", base,
        "--prometheus-rule",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rules = yaml.safe_load((out / "pushsvc.rules.yml").read_text())
    links = [
        r["annotations"]["runbook_url"] for g in rules["groups"] for r in g["rules"] if "alert" in r
    ]
    assert links
    assert all(link.startswith(base + "runbooks.md#") for link in links), links
    assert "pushsvc.invalid" not in (out / "tests" / "pushsvc_test.yml").read_text()
    resource = yaml.safe_load((out / "pushsvc-prometheusrule.yaml").read_text())
    assert resource["kind"] == "PrometheusRule"
    assert resource["spec"]["groups"] == rules["groups"]

    refused = installed.run(
        installed.bin("pushsvc"), "export", "alerts", str(out), "--runbook-base-url", "wiki/docs"
    )
    assert refused.returncode == 2
    assert "absolute http(s) URL" in " ".join(refused.stderr.split())
    a_file = installed.cwd / "a-file"
    a_file.write_text("")
    not_a_dir = installed.run(installed.bin("pushsvc"), "export", "dashboards", str(a_file))
    assert not_a_dir.returncode == 2
    assert "not a directory" in " ".join(not_a_dir.stderr.split())  # rich wraps lines


def test_completion_and_environment_variables_in_help(installed: Installed) -> None:
    shown = installed.run(installed.bin("pushsvc"), "--show-completion", "bash")
    assert shown.returncode == 0, shown.stderr
    assert "_PUSHSVC_COMPLETE" in shown.stdout
    helped = installed.run(installed.bin("pushsvc"), "serve", "--help")
    assert helped.returncode == 0, helped.stderr
    for variable in ("PUSHSVC_PORT", "PUSHSVC_REDIS_URL", "PUSHSVC_MAX_CONNECTIONS"):
        assert variable in helped.stdout, variable


# -- the npm package ----------------------------------------------------------------------------

JS = ROOT / "clients" / "js"


def test_the_npm_package_has_the_python_version() -> None:
    package = json.loads((JS / "package.json").read_text())
    assert package["version"] == __version__
    assert package["license"] == "Apache-2.0"
    assert "private" not in package


def test_npm_pack_publishes_the_client_its_types_and_the_demo() -> None:
    npm = shutil.which("npm")
    assert npm, "npm is not installed (apt-get install npm)"
    result = subprocess.run(
        [npm, "pack", "--dry-run", "--json", "--ignore-scripts"], cwd=JS, capture_output=True,
        text=True, timeout=60 * UNIT, check=False,
        env={**os.environ, "npm_config_cache": str(ROOT / "test-artifacts" / "npm-cache")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (packed,) = json.loads(result.stdout)
    package = json.loads((JS / "package.json").read_text())
    assert (packed["name"], packed["version"]) == (package["name"], __version__)
    files = {entry["path"] for entry in packed["files"]}
    assert files == {
        "package.json", "README.md", "pushsvc.js", "pushsvc.d.ts", "pushsvc-sw.js",
        "demo/index.html", "demo/demo.js", "demo/demo.css", "demo/manifest.webmanifest",
    }, files  # fmt: skip
    exports = package["exports"]["."]
    assert (exports["types"], exports["default"]) == ("./pushsvc.d.ts", "./pushsvc.js")
    assert package["types"] == "./pushsvc.d.ts"
