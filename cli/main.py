"""The ``pushsvc`` Typer app. Exit codes: 0 ok, 1 unhealthy or not found, 2 usage error."""

from __future__ import annotations

import typer

from cli.listen import listen
from cli.serve import serve
from cli.targets import prometheus_targets
from cli.token import token

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
