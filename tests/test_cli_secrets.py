"""Secrets on the command line: ``serve`` and ``monitor`` refuse them (``serve --dev`` warns), the
operator commands warn; the same values from the environment are silent. The real CLI runs as a
subprocess (its options read ``PUSHSVC_*`` through Click, as installed), and every command's
parser is checked with a table. No message may show the secret."""

from __future__ import annotations

import os
import subprocess

import pytest
import typer
from typer._click.core import Context  # Typer's own copy of Click
from typer.core import TyperGroup

from cli.main import app, show_envvars
from cli.secret_flags import SECRET_FLAGS, carries_secret, verdict
from tests.support import API_KEY, ROOT, TOKEN_SECRET, UNIT, pushsvc_command, start_node

SECRET = "s3cret-" + "q" * 40
PASSWORD = "redispw-" + "z" * 20


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSVC_")}
    return subprocess.run(
        [*pushsvc_command(), *args],
        env={**base, "COLUMNS": "300", **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
        check=False,
    )


def parsed(argv: list[str]) -> Context:
    """The context of ``pushsvc <argv>`` after parsing, as the installed CLI parses it."""
    group = typer.main.get_command(app)
    show_envvars(group)
    assert isinstance(group, TyperGroup)
    command = group.commands[argv[0]]
    return command.make_context(argv[0], argv[1:], parent=Context(group))


@pytest.mark.parametrize(
    ("param", "value", "secret"),
    [
        ("redis_url", "redis://10.0.1.20:6379/0", False),
        ("redis_url", "redis://:pw@10.0.1.20:6379/0", True),
        ("redis_url", "redis://app:pw@10.0.1.20:6379/0", True),
        ("redis_url", "redis://pw@10.0.1.20:6379/0", True),  # a password alone, as redis-py reads
        ("redis_url", "redis+sentinel://10.0.1.21:26379/main?sentinel_password=pw", True),
        ("redis_url", "unix:///run/redis.sock?db=1", False),
        ("token_secret", "x" * 32, True),
        ("api_key", "k", True),
        ("api_keys", "", False),
        ("token", "eyJ...", True),
    ],
)
def test_which_values_carry_a_secret(param: str, value: str, secret: bool) -> None:
    assert carries_secret(param, value) is secret


@pytest.mark.parametrize(
    ("argv", "refuse"),
    [
        (["serve", "--token-secret", SECRET], True),
        (["serve", "--api-keys", SECRET], True),
        (["serve", "--redis-url", f"redis://:{SECRET}@127.0.0.1:1/0"], True),
        (["serve", "--dev", "--token-secret", SECRET], False),
        (["monitor", "--api-keys", SECRET], True),
        (["monitor", "--redis-url", f"redis://u:{SECRET}@127.0.0.1:1/0"], True),
        (["monitor", "--once", "--redis-url", f"redis://u:{SECRET}@127.0.0.1:1/0"], False),
        (["token", "--user", "p1", "--token-secret", SECRET], False),
        (["nodes", "--api-key", SECRET], False),
        (["publish", "--event", "e", "--user", "p", "--api-key", SECRET], False),
        (["prometheus-targets", "--redis-url", f"redis://:{SECRET}@127.0.0.1:1/0"], False),
        (["listen", "--token", SECRET], False),
    ],
)
def test_a_secret_flag_is_refused_by_daemons_and_warned_about_elsewhere(
    argv: list[str], refuse: bool
) -> None:
    ctx = parsed(argv)
    found = verdict(ctx, dev=bool(ctx.params.get("dev")))
    assert found is not None
    assert found.refuse is refuse
    assert SECRET not in found.message
    assert "/proc/<pid>/cmdline" in found.message


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["serve"], {"PUSHSVC_TOKEN_SECRET": SECRET, "PUSHSVC_API_KEYS": SECRET}),
        (["serve", "--redis-url", "redis://127.0.0.1:1/0"], {}),  # no credentials in it
        (["monitor"], {"PUSHSVC_REDIS_URL": f"redis://:{SECRET}@127.0.0.1:1/0"}),
        (["nodes"], {"PUSHSVC_API_KEY": SECRET}),
        (["token", "--user", "p1"], {"PUSHSVC_TOKEN_SECRET": SECRET}),
    ],
)
def test_secrets_from_the_environment_are_silent(
    argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("PUSHSVC_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert verdict(parsed(argv)) is None


def test_every_secret_flag_is_an_option_of_some_command() -> None:
    group = typer.main.get_command(app)
    assert isinstance(group, TyperGroup)
    options = {
        opt: param.name
        for command in group.commands.values()
        for param in command.params
        for opt in getattr(param, "opts", [])
    }
    for secret in SECRET_FLAGS:
        assert options.get(secret.flag) == secret.param, secret


# -- the installed command line ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "instead"),
    [
        (
            ["serve", "--token-secret", SECRET],
            {"PUSHSVC_API_KEYS": API_KEY},
            "PUSHSVC_TOKEN_SECRET",
        ),
        (
            ["serve", "--redis-url", f"redis://:{SECRET}@127.0.0.1:1/0"],
            {"PUSHSVC_API_KEYS": API_KEY, "PUSHSVC_TOKEN_SECRET": TOKEN_SECRET},
            "PUSHSVC_REDIS_URL",
        ),
        (["monitor", "--api-keys", f"canary:{SECRET}:publish+tokens"], {}, "PUSHSVC_API_KEYS"),
    ],
)
def test_daemons_refuse_a_secret_flag_without_showing_it(
    args: list[str], env: dict[str, str], instead: str
) -> None:
    done = run(*args, **env)
    assert done.returncode == 2, done.stderr
    assert "refused" in done.stderr
    assert instead in done.stderr
    assert SECRET not in done.stdout + done.stderr


def test_serve_dev_warns_and_goes_on() -> None:
    # --host 192.0.2.1 makes the next check (dev listens on loopback only) end the run.
    done = run("serve", "--dev", "--host", "192.0.2.1", "--token-secret", SECRET)
    assert "warning: --token-secret on the command line" in done.stderr
    assert "--dev only listens on a loopback address" in done.stderr
    assert done.returncode == 2
    assert SECRET not in done.stdout + done.stderr


def test_token_mints_from_a_flag_with_a_warning_and_from_the_environment_silently() -> None:
    flagged = run("token", "--user", "p1", "--token-secret", SECRET)
    assert flagged.returncode == 0, flagged.stderr
    assert "warning: --token-secret on the command line" in flagged.stderr
    assert "PUSHSVC_TOKEN_SECRET" in flagged.stderr
    assert SECRET not in flagged.stdout + flagged.stderr
    quiet = run("token", "--user", "p1", PUSHSVC_TOKEN_SECRET=SECRET)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    assert quiet.stdout.count(".") == 2  # a JWT


def test_an_operator_command_warns_about_api_key_and_still_runs() -> None:
    with start_node() as node:
        flagged = run("nodes", "--api-url", node.internal_url, "--api-key", API_KEY, "--json")
        assert flagged.returncode == 0, flagged.stderr
        assert "warning: --api-key on the command line" in flagged.stderr
        assert API_KEY not in flagged.stdout + flagged.stderr
        assert node.node_id in flagged.stdout
        quiet = run("nodes", "--api-url", node.internal_url, "--json", PUSHSVC_API_KEY=API_KEY)
        assert quiet.returncode == 0, quiet.stderr
        assert "warning" not in quiet.stderr
        assert node.node_id in quiet.stdout
