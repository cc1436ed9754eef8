"""Named, scoped API keys against a real node: every route by every scope, the audit lines, and
no secret in any log line; key entries parsed as a table (no I/O)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from typer.testing import CliRunner

from cli.check_config import CheckedSettings, secrets_checks
from cli.main import app
from pushsvc.apikeys import (
    ALL_SCOPES,
    KeyRing,
    Scope,
    caller_name,
    digest_name,
    parse_entry,
    secret_for,
)
from pushsvc.broker.memory import MemoryBroker
from pushsvc.errors import ConfigError
from pushsvc.http.access import RULES, rule_for
from pushsvc.http.internal import create_app
from pushsvc.node.gateway import Node
from pushsvc.settings import Settings
from tests.support import ROOT, TOKEN_SECRET, UNIT, NodeHandle, pushsvc_command, start_node

SECRETS = {
    scope: f"{scope}-secret-" + "x" * 24 for scope in ["publish", "tokens", "read", "admin", "all"]
}
ENTRIES = [
    f"{name}-system:{secret}:{'*' if name == 'all' else name}" for name, secret in SECRETS.items()
]
BARE = "bare-secret-" + "b" * 24
FILED = "filed-secret-" + "f" * 24
GOOD = {"to": {"users": ["p1"]}, "event": "queue.called", "data": {}}

# Every /v1 route with a request that passes validation far enough to reach the key check.
CALLS: list[tuple[str, str, dict[str, Any] | None, str]] = [
    ("POST", "/v1/messages", GOOD, "publish"),
    ("POST", "/v1/messages/batch", {"messages": [GOOD]}, "publish"),
    ("GET", "/v1/messages/m-1", None, "read"),
    ("GET", "/v1/messages/m-1/trace", None, "read"),
    ("GET", "/v1/nodes", None, "read"),
    ("GET", "/v1/sessions", None, "read"),
    ("GET", "/v1/local/sessions", None, "read"),
    ("GET", "/v1/webhooks", None, "read"),
    ("POST", "/v1/tokens", {"user": "p9", "ttl": 60}, "tokens"),
    ("DELETE", "/v1/sessions/s-1", None, "admin"),
    ("DELETE", "/v1/sessions?user=p9", None, "admin"),
    ("POST", "/v1/nodes/n-1/drain", None, "admin"),
    ("POST", "/v1/users/p9/revoke", None, "admin"),
    ("GET", "/v1/admin/faults", None, "admin"),
    ("POST", "/v1/admin/faults", {"drop_deliveries": 0.0}, "admin"),
    ("DELETE", "/v1/admin/faults", None, "admin"),
]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeHandle]:
    keys_file = tmp_path_factory.mktemp("keys") / "keys"
    keys_file.write_text(f"# the file's keys\n\nfiled:{FILED}:read\n")
    with start_node(api_keys=",".join([*ENTRIES, BARE]), api_keys_file=keys_file) as handle:
        yield handle


def call(node: NodeHandle, method: str, path: str, body: Any, secret: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    return httpx.request(
        method, node.internal_url + path, json=body, headers=headers, timeout=10 * UNIT
    )


@pytest.mark.parametrize(("method", "path", "body", "scope"), CALLS)
@pytest.mark.parametrize("holder", [*SECRETS, "bare"])
def test_every_route_by_every_scope(
    node: NodeHandle, method: str, path: str, body: Any, scope: str, holder: str
) -> None:
    secret = BARE if holder == "bare" else SECRETS[holder]
    r = call(node, method, path, body, secret)
    allowed = holder in ("all", "bare", scope)
    error = r.json().get("error", {}) if r.headers["content-type"] == "application/json" else {}
    if allowed:
        assert r.status_code != 401 and error.get("code") != "forbidden", (r.status_code, r.text)
    else:
        assert r.status_code == 403, r.text
        assert error["code"] == "forbidden" and f"lacks the {scope} scope" in error["message"]
    assert r.status_code < 500


@pytest.mark.parametrize(("method", "path", "body", "scope"), CALLS)
@pytest.mark.parametrize(
    "header",
    [
        None,
        "Bearer wrong",
        "Bearer " + SECRETS["admin"][:-1],
        SECRETS["admin"],
        "Basic eDp5",
        "Bearer",
        "Bearer x",
    ],
)
def test_a_missing_or_wrong_key_is_401(
    node: NodeHandle, method: str, path: str, body: Any, scope: str, header: str | None
) -> None:
    headers = {"Authorization": header} if header is not None else {}
    r = httpx.request(method, node.internal_url + path, json=body, headers=headers)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_scheme_is_case_insensitive(node: NodeHandle, scheme: str) -> None:
    r = httpx.get(
        node.internal_url + "/v1/nodes", headers={"Authorization": f"{scheme} {SECRETS['read']}"}
    )
    assert r.status_code == 200


def test_keys_from_the_file(node: NodeHandle) -> None:
    assert call(node, "GET", "/v1/nodes", None, FILED).status_code == 200
    assert call(node, "POST", "/v1/messages", GOOD, FILED).status_code == 403


def test_audit_lines_and_no_secret_in_any_log_line(node: NodeHandle) -> None:
    token = call(node, "POST", "/v1/tokens", {"user": "p-audit", "ttl": 60}, SECRETS["tokens"])
    assert token.status_code == 200
    assert call(node, "POST", "/v1/nodes/n-audit/drain", None, SECRETS["admin"]).status_code == 404
    assert call(node, "DELETE", "/v1/sessions?user=p-kick", None, BARE).status_code == 404
    assert call(node, "POST", "/v1/messages", GOOD, SECRETS["publish"]).status_code == 202
    assert call(node, "POST", "/v1/tokens", {"user": "p-no"}, SECRETS["read"]).status_code == 403

    def audits() -> list[dict[str, Any]]:
        lines = [orjson.loads(line) for line in node.log().splitlines() if line.startswith("{")]
        return [line for line in lines if line.get("msg") == "audit"]

    found = {(a["key"], a["action"], a["target"]) for a in audits()}
    assert ("tokens-system", "mint_token", "p-audit") in found
    assert ("admin-system", "drain_node", "n-audit") in found
    assert (digest_name(BARE), "kick_user", "p-kick") in found
    assert not any(a["action"] == "publish" for a in audits())  # publish is not audited
    assert not any(a["target"] == "p-no" for a in audits())  # refused: no audit
    refused = [orjson.loads(line) for line in node.log().splitlines() if "access refused" in line]
    last = refused[-1]  # the log is in order: the refused mint above
    assert (last["key"], last["scope"], last["action"]) == ("read-system", "tokens", "mint_token")
    log = node.log()
    assert "a bare secret" in log  # the bare key is warned about at start
    for secret in [*SECRETS.values(), BARE, FILED, node.token_secret]:
        assert secret not in log
        assert secret[:24] not in log


def test_every_v1_route_has_a_rule() -> None:
    settings = Settings(node_id="rules", token_secret=TOKEN_SECRET, api_keys=[BARE])
    app = create_app(Node(settings, MemoryBroker()))
    routes = {
        (method.upper(), path)
        for path, methods in app.openapi()["paths"].items()
        if path.startswith("/v1")
        for method in methods
    }
    assert routes <= set(RULES), routes - set(RULES)
    assert rule_for("GET", "/v1/some/new/route").scope is Scope.ADMIN  # unlisted: admin only
    called = {(m, p.split("?")[0]) for m, p, _, _ in CALLS}
    assert len(called) == len(routes)


# -- entries, as a table ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "name", "scopes", "rate"),
    [
        ("pharmacy:" + "p" * 24 + ":publish", "pharmacy", {Scope.PUBLISH}, None),
        ("ops:" + "o" * 24 + ":read+admin", "ops", {Scope.READ, Scope.ADMIN}, None),
        ("all:" + "a" * 24 + ":*", "all", ALL_SCOPES, None),
        ("lab:" + "l" * 24 + ":publish+tokens:rate=50/s", "lab", {Scope.PUBLISH, Scope.TOKENS}, 50),
        ("q:" + "q" * 24 + ":publish:rate=0.5/s", "q", {Scope.PUBLISH}, 0.5),
        (" " + "z" * 30 + " ", digest_name("z" * 30), ALL_SCOPES, None),
    ],
)
def test_entries(entry: str, name: str, scopes: set[Scope], rate: float | None) -> None:
    key = parse_entry(entry).key
    assert (key.name, key.scopes, key.rate) == (name, scopes, rate)
    assert key.bare == (":" not in entry)


@pytest.mark.parametrize(
    ("entry", "said"),
    [
        ("", "empty"),
        ("a:b", "expected name:secret:scopes"),
        ("a:b:c:d:e", "expected name:secret:scopes"),
        ("bad name:" + "x" * 24 + ":read", "use 1-64 of"),
        ("n::read", "empty secret"),
        ("n:" + "x" * 24 + ":reed", "unknown scope 'reed'"),
        ("n:" + "x" * 24 + ":read:rate=fast", "rate=50/s"),
        ("n:" + "x" * 24 + ":read:rate=0/s", "rate=50/s"),
    ],
)
def test_bad_entries(entry: str, said: str) -> None:
    with pytest.raises(ConfigError, match=said) as info:
        parse_entry(entry)
    assert "x" * 24 not in info.value.message


def test_the_ring_compares_digests_and_names_callers() -> None:
    ring = KeyRing.parse(ENTRIES)
    assert ring.caller_name("Bearer " + SECRETS["read"]) == "read-system"
    assert ring.caller_name("bearer   " + SECRETS["read"] + " ") == "read-system"
    assert ring.caller_name("Bearer " + SECRETS["read"] + "x") is None
    assert ring.caller_name(None) is None
    assert caller_name("Bearer " + BARE, [*ENTRIES, BARE]) == digest_name(BARE)
    assert caller_name("Bearer " + SECRETS["tokens"], ENTRIES) == "tokens-system"
    assert all(SECRETS["read"].encode() not in k.digest for k in ring.keys)
    with pytest.raises(ConfigError, match="given twice"):
        KeyRing.parse([ENTRIES[0], ENTRIES[0]])
    with pytest.raises(ConfigError, match="'a' and 'b' share a secret"):
        KeyRing.parse(["a:" + "s" * 30 + ":read", "b:" + "s" * 30 + ":admin"])
    assert secret_for(ENTRIES, Scope.READ) == SECRETS["read"]
    assert secret_for(ENTRIES, Scope.PUBLISH, Scope.TOKENS) == SECRETS["all"]
    assert secret_for(["r:" + "r" * 24 + ":read"], Scope.ADMIN) is None


# -- refusing to start -----------------------------------------------------------------------


def serve(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    values = {
        "PUSHSVC_TOKEN_SECRET": TOKEN_SECRET,
        "PUSHSVC_PORT": "0",
        "PUSHSVC_INTERNAL_PORT": "0",
        **env,
    }
    base = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSVC_")}
    return subprocess.run(
        [*pushsvc_command(), "serve", *args],
        check=False,
        env={**base, **values},
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
        cwd=ROOT,
    )


@pytest.mark.parametrize(
    ("args", "env", "said"),
    [
        ((), {"PUSHSVC_API_KEYS": "k1"}, "shorter than 24 characters"),
        ((), {"PUSHSVC_API_KEYS": "pharmacy:short:publish"}, "API key 'pharmacy' is shorter"),
        ((), {"PUSHSVC_API_KEYS": "x:" + "y" * 30 + ":nope"}, "unknown scope 'nope'"),
        ((), {"PUSHSVC_API_KEYS_FILE": "/nonexistent/keys"}, "cannot read PUSHSVC_API_KEYS_FILE"),
        (("--dev", "--host", "0.0.0.0"), {}, "--dev only listens on a loopback address"),
        (
            (),
            {"PUSHSVC_API_KEYS": BARE, "PUSHSVC_TOKEN_SECRET": "a:" + "s" * 40 + ",b:short"},
            "(kid 'b') must be at least 32",
        ),
        (
            (),
            {"PUSHSVC_API_KEYS": BARE, "PUSHSVC_TOKEN_SECRET": f"a:{'s' * 40},a:{'t' * 40}"},
            "each kid:secret entry needs its own kid",
        ),
        (
            (),
            {"PUSHSVC_API_KEYS": BARE, "PUSHSVC_TOKEN_JWKS_URL": "http://idp.example/jwks"},
            "PUSHSVC_TOKEN_JWKS_URL must be https://",
        ),
    ],
)
def test_refused_at_start(args: tuple[str, ...], env: dict[str, str], said: str) -> None:
    done = serve(*args, **env)
    assert done.returncode == 2, done.stderr
    assert said in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "y" * 30 not in done.stderr


def test_dev_accepts_a_short_key_on_loopback(tmp_path: Path) -> None:
    with start_node(dev=True, api_keys="k1") as dev:
        assert (
            httpx.get(
                dev.internal_url + "/v1/nodes", headers={"Authorization": "Bearer k1"}
            ).status_code
            == 200
        )


def test_the_monitor_refuses_a_bad_key_entry_at_start() -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSVC_")}
    done = subprocess.run(
        [
            *pushsvc_command(),
            "monitor",
            "--redis-url",
            "redis://127.0.0.1:1/0",
        ],
        env={**base, "PUSHSVC_API_KEYS": "canary:" + "c" * 30 + ":publish+nope"},
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 2 and "unknown scope 'nope'" in done.stderr, done.stderr
    assert "c" * 30 not in done.stderr


@pytest.mark.parametrize(
    ("keys", "status", "said"),
    [
        ([BARE], "ok", "1 entries, 1 bare (every scope)"),
        (ENTRIES, "ok", "5 entries"),
        (["k1"], "fail", "shorter than 24 characters"),
        (["n:" + "x" * 30 + ":reed"], "fail", "unknown scope 'reed'"),
        ([], "fail", "not set"),
    ],
)
def test_check_config_judges_the_key_entries(keys: list[str], status: str, said: str) -> None:
    settings = CheckedSettings(api_keys=keys, token_secret=TOKEN_SECRET)
    (_, key) = secrets_checks(settings)
    assert key.status == status and said in key.detail, key
    assert "x" * 30 not in key.detail


@pytest.mark.parametrize(
    ("args", "scopes", "rate"),
    [
        (["--name", "pharmacy", "--scope", "publish", "--rate", "20"], {Scope.PUBLISH}, 20.0),
        (["--name", "ops", "--scope", "read", "--scope", "admin"], {Scope.READ, Scope.ADMIN}, None),
        (["--name", "lab", "--scope", "*", "--rate", "1000000"], ALL_SCOPES, 1e6),
        (["--name", "q", "--scope", "publish", "--rate", "0.25"], {Scope.PUBLISH}, 0.25),
    ],
)
def test_api_key_makes_entries_the_nodes_accept(
    args: list[str], scopes: set[Scope], rate: float | None
) -> None:
    made = CliRunner().invoke(app, ["api-key", *args])
    assert made.exit_code == 0, made.output
    entry = parse_entry(made.stdout.strip())
    assert (entry.key.name, entry.key.scopes, entry.key.rate) == (args[1], scopes, rate)
    assert len(entry.secret) >= 40 and not entry.key.weak
    again = parse_entry(CliRunner().invoke(app, ["api-key", *args]).stdout.strip())
    assert again.secret != entry.secret


def test_api_key_refuses_what_a_node_would() -> None:
    made = CliRunner().invoke(app, ["api-key", "--name", "bad name", "--scope", "publish"])
    assert made.exit_code == 2 and "use 1-64 of" in made.output
