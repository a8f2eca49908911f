"""What the `import` and `export` commands of playbooks and rules share: the file
argument and option, the lines that report an import, and running an export."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.orm import Session

from engine.definition_files import DefinitionImportReport
from portaria.console import out, service_for

FILE_HELP = "Arquivo .toml, .yaml ou .yml."

ImportFileArgument = Annotated[Path, typer.Argument(help=FILE_HELP)]
ExportFileOption = Annotated[Path, typer.Option("--to", help=FILE_HELP)]


def print_import_report(report: DefinitionImportReport, *, created: str, updated: str) -> None:
    """One line per name, the created ones first: ``created: NAME``, ``updated: NAME``."""
    for name in report.created:
        out.print(f"{created}: {name}", markup=False, soft_wrap=True)
    for name in report.updated:
        out.print(f"{updated}: {name}", markup=False, soft_wrap=True)


def export_definitions(
    config: Path | None,
    export: Callable[[Session, Sequence[str], Path], list[str]],
    names: Sequence[str] | None,
    to: Path,
) -> list[str]:
    """Write the named definitions (all when none is named) to ``to``; the names written."""
    service = service_for(config)
    with service.sessions() as session:
        return export(session, names or [], to)
