"""The `portaria templates` commands."""

import typer

app = typer.Typer(help="templates", no_args_is_help=True)
