"""The ``pushsvc`` Typer app. Exit codes: 0 ok, 1 unhealthy or not found, 2 usage error."""

from __future__ import annotations

import typer

from cli.check_config import check_config
from cli.drain import drain
from cli.kick import kick
from cli.listen import listen
from cli.monitor import monitor
from cli.nodes import nodes
from cli.publish import publish
from cli.serve import serve
from cli.sessions import sessions
from cli.stats import stats
from cli.targets import prometheus_targets
from cli.token import token
from cli.top import top
from cli.trace import trace
from cli.vapid import vapid_keys
from cli.webhooks import webhooks

app = typer.Typer(
    name="pushsvc",
    help="Clustered WebSocket push gateway for outpatient notifications.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command()(serve)
app.command()(token)
app.command()(listen)
app.command("prometheus-targets")(prometheus_targets)
app.command()(nodes)
app.command()(sessions)
app.command()(kick)
app.command()(publish)
app.command()(trace)
app.command()(stats)
app.command()(top)
app.command()(drain)
app.command("check-config")(check_config)
app.command()(monitor)
app.command("vapid-keys")(vapid_keys)
app.command()(webhooks)
