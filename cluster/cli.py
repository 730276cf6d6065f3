"""The ``baton`` command line. Command groups of the other parts (serve, train) register
themselves through the ``baton.cli`` entry points, so this module imports none of them.
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import entry_points

import typer

from cluster.errors import BatonError

app = typer.Typer(
    name="baton",
    help="baton: one front door to many specialist models on Ray. Start with `baton up`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Ray enables token auth on a head once ~/.ray/auth_token exists, but its clients only send
    # the token in token mode: say token mode everywhere so the head and the CLI agree.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    for entry in sorted(entry_points(group="baton.cli"), key=lambda e: e.name):
        entry.load()(app)
    try:
        app()
    except BatonError as error:
        typer.secho(f"error: {error.message}", fg="red", err=True)
        sys.exit(2)
