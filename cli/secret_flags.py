"""Secrets given as command-line flags: refused by the long-running commands, warned about by the
others.

A process's command line is readable by every local user for as long as the process runs
(``ps``, ``/proc/<pid>/cmdline``) and is kept in shell histories, unit files and container specs.
Secrets belong in the environment (``PUSHSVC_*``, e.g. the systemd unit's ``EnvironmentFile``) or
in a file (``PUSHSVC_API_KEYS_FILE``). The same value read from the environment stays silent.

- ``serve`` and ``monitor`` run for weeks: a secret flag ends them with exit 2 before they start,
  except ``serve --dev`` (a loopback-only node on a developer's machine) and ``monitor --once``
  (one reconciliation, from a runbook), which warn.
- The operator commands (``nodes``, ``publish``, ``token``, ``listen``, ...) run for seconds and
  ``--api-key`` is how scripts have always called them: they warn on stderr and go on.

No message ever shows the value. :func:`verdict` judges a parsed command line;
:func:`cli.settings.check_secret_flags` acts on it (``build_as`` calls it for every command that
builds settings).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

# Typer ships its own copy of Click and has no public way to reach the current context.
from typer._click.core import Context, ParameterSource

#: Commands that keep running: a secret on their command line is visible for their whole life.
DAEMONS = frozenset({"serve", "monitor"})


@dataclass(frozen=True)
class SecretFlag:
    """An option that carries a secret, and where its value should come from instead."""

    param: str  # the Click parameter name
    flag: str
    instead: str


SECRET_FLAGS = (
    SecretFlag("token_secret", "--token-secret", "PUSHSVC_TOKEN_SECRET"),
    SecretFlag("api_keys", "--api-keys", "PUSHSVC_API_KEYS or PUSHSVC_API_KEYS_FILE"),
    SecretFlag("api_key", "--api-key", "PUSHSVC_API_KEY"),
    SecretFlag("redis_url", "--redis-url", "PUSHSVC_REDIS_URL"),
    SecretFlag("token", "--token", "--user with PUSHSVC_TOKEN_SECRET"),
)


def carries_secret(param: str, value: object) -> bool:
    """Whether ``value`` of option ``param`` (one of :data:`SECRET_FLAGS`) holds a secret: a
    Redis URL only when it has credentials (``user:password@``, ``:password@``, ``password@``
    or ``sentinel_password=``)."""
    if not value:
        return False
    if param != "redis_url":
        return True
    parts = urlsplit(str(value))
    return "@" in parts.netloc or "sentinel_password" in parse_qs(parts.query)


def given_secret_flags(ctx: Context) -> list[SecretFlag]:
    """The secret options whose value came from this command line (not the environment)."""
    return [
        s
        for s in SECRET_FLAGS
        if ctx.get_parameter_source(s.param) == ParameterSource.COMMANDLINE
        and carries_secret(s.param, ctx.params.get(s.param))
    ]


@dataclass(frozen=True)
class Verdict:
    """What to do about the secrets on a command line: refuse (exit 2) or warn, saying this."""

    refuse: bool
    message: str


def verdict(ctx: Context, dev: bool = False) -> Verdict | None:
    """Refuse or warn about the secrets on ``ctx``'s command line (see the module docstring for
    which); ``None`` when there are none. ``dev``: the command runs in dev mode."""
    given = given_secret_flags(ctx)
    if not given:
        return None
    flags = ", ".join(s.flag for s in given)
    instead = "; ".join(s.instead for s in given)
    why = "every local user can read a command line (ps, /proc/<pid>/cmdline)"
    if ctx.info_name in DAEMONS and not dev and not ctx.params.get("once"):
        return Verdict(
            refuse=True,
            message=f"{flags} on the command line refused: {why}. "
            f"Set {instead} in the environment or the unit's EnvironmentFile instead",
        )
    return Verdict(
        refuse=False,
        message=f"{flags} on the command line: {why}. Prefer {instead} in the environment",
    )
