"""The layers stay honest: the core is pure, and every forbidden import direction in
:data:`FORBIDDEN` stays unused."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IO_LIBRARIES = {"asyncio", "redis", "fastapi", "starlette", "prometheus_client", "opentelemetry",
                "uvicorn", "httpx", "websockets", "socket"}  # fmt: skip

#: (importing package, imported package, why it must not)
FORBIDDEN: list[tuple[str, str, str]] = [
    ("pushsvc.node", "pushsvc.http", "the HTTP layer sits on the node, not under it"),
    ("pushsvc.telemetry", "pushsvc.node", "metrics and tracing serve every package"),
    ("monitor", "pushsvc.node", "the monitor reads the broker, never a node's internals"),
    ("monitor", "pushsvc.http", "the monitor reaches nodes through their API, over HTTP"),
    ("cli", "pushsvc.node", "operator commands reach nodes through their API or the broker"),
    ("pushsvc.broker", "pushsvc.node", "the broker is below the node"),
    ("pushsvc.broker", "pushsvc.settings", "a broker takes explicit parameters (pushsvc.brokers)"),
    ("pushsvc", "monitor", "the monitor is built at the edge (cli/embedded.py)"),
    ("pushsvc", "cli", "the CLI is the edge: nothing below imports it"),
]


def imports(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports (``from a import b`` gives ``a`` and
    ``a.b``, so importing a subpackage by name counts too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def dotted(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations(path: Path, target: str) -> set[str]:
    return {name for name in imports(path) if within(name, target)}


CASES = [
    pytest.param(source, target, why, path, id=f"{source}-/->{target}:{dotted(path)}")
    for source, target, why in FORBIDDEN
    for path in modules(source.replace(".", "/"))
]


@pytest.mark.parametrize(("source", "target", "why", "path"), CASES)
def test_forbidden_import_direction(source: str, target: str, why: str, path: Path) -> None:
    module = dotted(path)
    found = violations(path, target)
    assert not found, f"{module} imports {sorted(found)}: {source} must not import {target} ({why})"


@pytest.mark.parametrize("path", modules("pushsvc/core"), ids=lambda p: p.name)
def test_core_is_pure(path: Path) -> None:
    for name in imports(path):
        top = name.split(".")[0]
        assert top not in IO_LIBRARIES, f"{path.name} imports {name}"
        if top == "pushsvc" and not name.startswith("pushsvc.core"):
            assert within(name, "pushsvc.types") or within(name, "pushsvc.errors"), (
                f"{path.name} imports {name}"
            )


def test_every_redis_key_is_named_in_keys_module() -> None:
    """Key and channel names are built in pushsvc/broker/keys.py only."""
    for path in modules("pushsvc"):
        if path.name == "keys.py":
            continue
        text = path.read_text()
        assert '"pushsvc:' not in text and "'pushsvc:" not in text, path
