"""The `portaria tasks` commands."""

import typer

app = typer.Typer(help="tasks", no_args_is_help=True)
