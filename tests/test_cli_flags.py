"""Every option of every command that sets a field of the settings is made from that field: its
``--help`` shows the field's description and default, it is None when not given (so the
environment, then the field's default, decides) and it reads ``PUSHSVC_<FIELD>``. A table of which
settings each command takes keeps the documented flags from going away. A flag written by hand
beside its field drifts from it; these tests fail when one does."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest
import typer
from pydantic.fields import FieldInfo
from rich.text import Text
from typer._click.core import Command  # Typer's own copy of Click
from typer.core import TyperGroup, TyperOption

from cli.check_config import CheckedSettings
from cli.cluster import CLUSTER_FLAGS
from cli.embedded import EMBEDDED_FLAGS
from cli.main import ENV_PREFIX, app, show_envvars
from cli.monitor import MONITOR_FLAGS
from cli.serve import SERVE_FLAGS
from tests.support import ROOT, UNIT, pushsvc_command

#: Every field of every process's settings (the operator's, a node's, the monitor's).
FIELDS: dict[str, FieldInfo] = CheckedSettings.model_fields

CLUSTER = frozenset(CLUSTER_FLAGS)
#: The settings each command takes as flags (docs/cli.md); a command not listed takes none.
SETTINGS_FLAGS: dict[str, frozenset[str]] = {
    "serve": frozenset(SERVE_FLAGS) | frozenset(EMBEDDED_FLAGS),
    "monitor": frozenset(MONITOR_FLAGS),
    "token": frozenset({"token_secret"}),
    "prometheus-targets": frozenset({"redis_url"}),
    "nodes": CLUSTER | {"registry_interval"},
    "top": CLUSTER | {"registry_interval"},
    "sessions": CLUSTER,
    "kick": CLUSTER,
    "revoke": CLUSTER,
    "publish": CLUSTER,
    "trace": CLUSTER,
    "stats": CLUSTER,
    "drain": CLUSTER,
    "webhooks": CLUSTER,
    "migrate-keyspace": CLUSTER | {"registry_interval"},
    "check-config": CLUSTER | {"alertmanager_url"},
    "export alerts": frozenset({"runbook_base_url"}),
}


def commands(command: Command, path: str = "") -> Iterator[tuple[str, Command]]:
    """``command``'s leaf commands, by their path (``export alerts``)."""
    if isinstance(command, TyperGroup):
        for name, sub in command.commands.items():
            yield from commands(sub, f"{path} {name}".strip())
    else:
        yield path, command


def registered() -> list[tuple[str, Command]]:
    group = typer.main.get_command(app)
    show_envvars(group)  # as the installed command line does
    return list(commands(group))


COMMANDS = registered()


def shown(help_text: str | None) -> str:
    """An option's help as ``--help`` shows it (after Rich markup)."""
    return Text.from_markup(help_text or "").plain


def test_the_table_names_registered_commands_and_real_fields() -> None:
    assert set(SETTINGS_FLAGS) <= {path for path, _ in COMMANDS}
    for names in SETTINGS_FLAGS.values():
        assert names <= FIELDS.keys()


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[p for p, _ in COMMANDS])
def test_each_command_takes_its_settings_as_flags(path: str, command: Command) -> None:
    settings = {p.name for p in command.params if p.name in FIELDS}
    assert settings == SETTINGS_FLAGS.get(path, frozenset())


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[p for p, _ in COMMANDS])
def test_every_settings_flag_shows_its_fields_description_and_default(
    path: str, command: Command
) -> None:
    for option in command.params:
        if option.name not in FIELDS:
            continue
        field = FIELDS[option.name]
        where = f"{path} --{option.name}"
        assert isinstance(option, TyperOption), where
        assert option.opts == ["--" + option.name.replace("_", "-")], where
        assert option.default is None, f"{where}: the environment or the field decides"
        assert option.envvar == ENV_PREFIX + option.name.upper(), where
        assert field.description, f"{where}: its field has no description"
        help_text = shown(option.help)
        assert field.description.casefold() in help_text.casefold(), (where, help_text)
        if field.annotation is bool:
            assert field.default is False, f"{where}: an on-only flag cannot turn it off"
        elif field.default_factory is not None:
            if field.get_default(call_default_factory=True):
                assert "default" in field.description, f"{where}: say what the default is"
        elif field.default not in (None, ""):
            assert f"[{field.default}]" in help_text, (where, help_text)


def test_a_default_that_looks_like_markup_is_shown() -> None:
    (serve,) = (c for p, c in COMMANDS if p == "serve")
    (prefix,) = (p for p in serve.params if p.name == "redis_prefix")
    assert f"[{FIELDS['redis_prefix'].default}]" in shown(prefix.help)


def test_the_embedded_monitors_settings_are_serve_flags() -> None:
    assert {"alertmanager_url", "monitor_interval", "canary_interval"} <= set(EMBEDDED_FLAGS)
    assert not {"monitor_host", "monitor_port"} & set(EMBEDDED_FLAGS)  # it has no listener


def test_a_bad_embedded_monitor_flag_stops_serve_before_it_starts() -> None:
    ports = ["--port", "0", "--internal-port", "0"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSVC_")}
    done = subprocess.run(
        [*pushsvc_command(), "serve", "--dev", *ports, "--monitor-interval", "0.1"],
        env={**env, "COLUMNS": "300"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "invalid settings: monitor_interval" in done.stderr
