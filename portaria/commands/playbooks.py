"""The `portaria playbooks` commands."""

import typer

app = typer.Typer(help="playbooks", no_args_is_help=True)
