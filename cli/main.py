"""The ``pushsvc`` Typer app. Exit codes: 0 ok, 1 unhealthy or not found, 2 usage error.

Every option that sets a field of the settings also reads ``PUSHSVC_<FIELD>`` from the environment
and says so in ``--help`` (:func:`show_envvars`); the flag wins over the environment.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from typer.core import TyperGroup, TyperOption

from cli.check_config import check_config
from cli.cluster import OperatorSettings
from cli.drain import drain
from cli.export import export
from cli.key import api_key
from cli.kick import kick
from cli.listen import listen
from cli.migrate import migrate_keyspace
from cli.monitor import monitor
from cli.nodes import nodes
from cli.publish import publish
from cli.revoke import revoke
from cli.serve import serve
from cli.sessions import sessions
from cli.stats import stats
from cli.targets import prometheus_targets
from cli.token import token
from cli.top import top
from cli.trace import trace
from cli.vapid import vapid_keys
from cli.webhooks import webhooks
from pushsvc import __version__
from pushsvc.settings import MonitorSettings, NodeSettings

ENV_PREFIX = "PUSHSVC_"
#: The settings fields of every command: the operator's, a node's and the monitor's.
FIELDS = frozenset(
    OperatorSettings.model_fields.keys()
    | NodeSettings.model_fields.keys()
    | MonitorSettings.model_fields.keys()
)


def show_envvars(command: Any) -> None:
    """Give every option of ``command`` (a Typer command or group, and its subcommands) named
    after a settings field that field's environment variable, shown in ``--help``."""
    if isinstance(command, TyperGroup):
        for sub in command.commands.values():
            show_envvars(sub)
    for param in command.params:
        if isinstance(param, TyperOption) and param.name in FIELDS:
            param.envvar = ENV_PREFIX + param.name.upper()
            param.show_envvar = True


class PushsvcApp(typer.Typer):
    """A Typer app whose command line shows the environment variables (see :func:`show_envvars`)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        command = typer.main.get_command(self)
        show_envvars(command)
        return command(*args, **kwargs)


app = PushsvcApp(
    name="pushsvc",
    help="Clustered WebSocket push gateway for outpatient notifications.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"pushsvc {__version__}")
        raise typer.Exit


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Clustered WebSocket push gateway for outpatient notifications."""


app.command()(serve)
app.command()(token)
app.command("api-key")(api_key)
app.command()(listen)
app.command("prometheus-targets")(prometheus_targets)
app.command()(nodes)
app.command()(sessions)
app.command()(kick)
app.command()(revoke)
app.command()(publish)
app.command()(trace)
app.command()(stats)
app.command()(top)
app.command()(drain)
app.command("check-config")(check_config)
app.command()(monitor)
app.add_typer(export, name="export")
app.command("vapid-keys")(vapid_keys)
app.command()(webhooks)
app.command("migrate-keyspace")(migrate_keyspace)
