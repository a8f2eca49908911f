"""The `portaria customers` commands."""

import typer

app = typer.Typer(help="customers", no_args_is_help=True)
