"""What the CLI commands share: the --config and --today options, error printing, the actor."""

from __future__ import annotations

import getpass
import logging
import sys
from collections.abc import Callable
from datetime import date
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from config.settings import ConfigError, load_settings
from engine.customers import parse_date
from engine.errors import InvalidCustomerValue
from portaria.errors import PortariaError
from portaria.wiring import Service, open_service

log = logging.getLogger(__name__)

# Piped or captured output is read by scripts and people's pagers: tables there
# must not be cut at 80 columns, so only a real terminal sets the width.
_WIDTH = None if sys.stdout.isatty() else 200
# Text from strangers' emails lands in tables; markup on output would let an
# area like "Financeiro [/]" crash a listing or smuggle a link into the terminal.
out = Console(highlight=False, width=_WIDTH, markup=False)
err = Console(stderr=True, highlight=False, width=_WIDTH)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Arquivo de configuração (default: $PORTARIA_CONFIG ou ./portaria.toml).",
    ),
]

F = TypeVar("F", bound=Callable[..., Any])


class CommandError(PortariaError):
    """A command used the wrong way; the message says how to use it."""


def friendly(command: F) -> F:
    """Turn domain, configuration and database errors into one line on stderr and a
    non-zero exit; ``--debug`` logs the whole database error."""

    @wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ConfigError as exc:
            err.print(
                f"[bold red]erro de configuração (configuration error):[/] {escape(str(exc))}",
                soft_wrap=True,
            )
            raise typer.Exit(2) from None
        except PortariaError as exc:
            err.print(f"[bold red]erro (error):[/] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(1) from None
        except SQLAlchemyError as exc:
            log.debug("database failure", exc_info=True)
            # The driver's first line only: the full error quotes the SQL and its
            # parameters, which hold message content.
            orig = str(exc.orig) if isinstance(exc, DBAPIError) and exc.orig is not None else ""
            reason = orig.splitlines()[0] if orig else type(exc).__name__
            err.print(
                "[bold red]erro (error):[/] falha no banco de dados (database failure): "
                f"{escape(reason)}; o que já foi gravado fica, rode o comando de novo "
                "(what was saved stays; run the command again)",
                soft_wrap=True,
            )
            raise typer.Exit(1) from None
        except OverflowError:
            # Only an id past the database's 64-bit integers gets here.
            err.print(
                "[bold red]erro (error):[/] número grande demais (number out of range); "
                "confira o número informado",
                soft_wrap=True,
            )
            raise typer.Exit(1) from None

    return run  # type: ignore[return-value]


def service_for(config: Path | None) -> Service:
    """Settings and database for a command; insists the schema is current."""
    return open_service(load_settings(config))


def actor(by: str | None) -> str:
    """Who a decision is recorded as: --by (a person's address), else the system login.

    ``cli:`` and ``auto:`` name the system itself in the audit trail; a --by
    that could pass for one of them would let anyone sign as the policy.
    """
    if by is None:
        return f"cli:{getpass.getuser()}"
    by = by.strip()
    if "@" not in by or by.startswith(("cli:", "auto:")) or any(c.isspace() for c in by):
        raise CommandError(
            f"--by {by!r}: informe o e-mail de quem age (give the email address of who acts), "
            "ex. --by suporte@empresa.com.br"
        )
    return by.lower()


def reference_day(text: str | None) -> date | None:
    """A --today option: dd/mm/aaaa or aaaa-mm-dd."""
    if text is None:
        return None
    try:
        return parse_date(text)
    except InvalidCustomerValue as exc:
        raise CommandError(f"--today: {exc}") from None
