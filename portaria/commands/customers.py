"""The `portaria customers` commands: import, export, list and show cards; custom fields."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from engine.customers import (
    customer_card,
    define_custom_field,
    export_customers,
    import_customers,
    list_custom_fields,
    list_customers,
    owner_emails,
)
from engine.errors import CustomerImportRejected
from engine.playbooks import KIND_LABELS
from portaria.console import ConfigOption, err, friendly, out, service_for

app = typer.Typer(
    help="Clientes (customers): importar, exportar, listar, ver; campos personalizados.",
    no_args_is_help=True,
)
fields_app = typer.Typer(
    help="Campos personalizados dos clientes (custom fields).", no_args_is_help=True
)
app.add_typer(fields_app, name="fields")

# Enough problems to fix a file's pattern of mistakes without flooding the terminal.
SHOWN_PROBLEMS = 50


@app.command("import")
@friendly
def customers_import(
    file: Annotated[Path, typer.Argument(help="Arquivo CSV (UTF-8 ou Latin-1, ; ou ,).")],
    config: ConfigOption = None,
) -> None:
    """Importar clientes de um CSV: cria ou atualiza por código; tudo ou nada."""
    service = service_for(config)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err,
        transient=True,
        # A bar only makes sense on a terminal; piped or captured output stays clean.
        disable=not err.is_terminal,
    )
    bars: dict[str, int] = {}

    def advance(phase: str, done: int, total: int) -> None:
        if phase not in bars:
            bars[phase] = progress.add_task(phase, total=total)
        progress.update(bars[phase], completed=done)

    try:
        with progress, service.transaction() as session:
            report = import_customers(session, file, progress=advance)
    except CustomerImportRejected as exc:
        for problem in exc.problems[:SHOWN_PROBLEMS]:
            err.print(str(problem), markup=False, soft_wrap=True)
        hidden = len(exc.problems) - SHOWN_PROBLEMS
        if hidden > 0:
            err.print(f"... e mais {hidden} problema(s) (and {hidden} more)", soft_wrap=True)
        err.print(f"[bold red]erro (error):[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(1) from None
    out.print(
        f"{report.rows} linha(s) lida(s) (rows read): {report.created} cliente(s) criado(s) "
        f"(created), {report.updated} atualizado(s) (updated) "
        f"[{report.encoding}, separador {report.delimiter!r}]",
        markup=False,
        soft_wrap=True,
    )


@app.command("export")
@friendly
def customers_export(
    file: Annotated[Path, typer.Argument(help="Arquivo CSV a escrever (; e UTF-8).")],
    config: ConfigOption = None,
) -> None:
    """Exportar todos os clientes para CSV, no formato que o import lê."""
    service = service_for(config)
    with service.sessions() as session:
        count = export_customers(session, file)
    out.print(f"{count} cliente(s) exportado(s) (customers exported) para {file}", soft_wrap=True)


@app.command("list")
@friendly
def customers_list(
    config: ConfigOption = None,
    owner: Annotated[str | None, typer.Option(help="E-mail do responsável.")] = None,
    segment: Annotated[str | None, typer.Option(help="Segmento.")] = None,
    stage: Annotated[str | None, typer.Option(help="Estágio.")] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="No máximo N clientes (padrão: todos).")
    ] = None,
) -> None:
    """Listar clientes por código."""
    service = service_for(config)
    with service.sessions() as session:
        customers = list_customers(
            session, owner_email=owner, segment=segment, stage=stage, limit=limit
        )
        emails = owner_emails(session, [c.owner_id for c in customers])
    if not customers:
        out.print("nenhum cliente (no customers)", soft_wrap=True)
        return
    table = Table("código", "nome", "segmento", "responsável", "estágio", "saúde", "renovação")
    for c in customers:
        table.add_row(
            c.code,
            c.name,
            c.segment or "",
            emails.get(c.owner_id or 0, ""),
            c.stage or "",
            "" if c.health_score is None else str(c.health_score),
            c.renewal_date.strftime("%d/%m/%Y") if c.renewal_date else "",
        )
    out.print(table)


@app.command("show")
@friendly
def customers_show(
    code: Annotated[str, typer.Argument(help="Código do cliente.")],
    config: ConfigOption = None,
) -> None:
    """Ver o cartão do cliente, suas tarefas abertas e o histórico de playbooks."""
    service = service_for(config)
    with service.sessions() as session:
        card = customer_card(session, code)
    width = max(len(spec.label) for spec, _ in card.fields)
    for spec, value in card.fields:
        out.print(f"{spec.label:>{width}}: {value}", markup=False, soft_wrap=True)

    out.print("\nTarefas abertas (open tasks):", soft_wrap=True)
    if not card.open_tasks:
        out.print("  nenhuma (none)", soft_wrap=True)
    for task in card.open_tasks:
        due = task.due_date.strftime("%d/%m/%Y") if task.due_date else "sem prazo"
        who = card.assignee_emails.get(task.assignee_id or 0, "sem responsável")
        out.print(
            f"  #{task.id} {due} {KIND_LABELS.get(task.kind, task.kind)}: {task.name} ({who})",
            markup=False,
            soft_wrap=True,
        )

    out.print("\nPlaybooks (history):", soft_wrap=True)
    if not card.history:
        out.print("  nenhum (none)", soft_wrap=True)
    for entry in card.history:
        load = entry.load
        state = "aberto (open)" if load.status == "open" else "concluído (closed)"
        total = entry.open_tasks + entry.done_tasks + entry.cancelled_tasks
        cancelled = f", {entry.cancelled_tasks} cancelada(s)" if entry.cancelled_tasks else ""
        out.print(
            f"  {load.loaded_on.strftime('%d/%m/%Y')} {entry.playbook_name}: {state}, "
            f"{entry.done_tasks}/{total} tarefa(s) feita(s){cancelled}, por {load.loaded_by}",
            markup=False,
            soft_wrap=True,
        )


@fields_app.command("add")
@friendly
def fields_add(
    key: Annotated[
        str, typer.Argument(help="Chave (ex. plano_contratado), usada em CSV e regras.")
    ],
    label: Annotated[str, typer.Option(help="Rótulo mostrado às pessoas.")],
    kind: Annotated[
        str, typer.Option(help="texto, número, data, sim_não ou escolha (text, number...).")
    ] = "texto",
    choice: Annotated[
        list[str] | None, typer.Option("--choice", help="Uma opção (repita para várias).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Adicionar um campo personalizado a todos os clientes."""
    service = service_for(config)
    with service.transaction() as session:
        row = define_custom_field(session, key, label, kind, choice or [])
        shown = f"{row.key} ({row.kind}): {row.label}"
    out.print(f"Campo criado (field added): {shown}", markup=False, soft_wrap=True)


@fields_app.command("list")
@friendly
def fields_list(config: ConfigOption = None) -> None:
    """Listar os campos personalizados."""
    service = service_for(config)
    with service.sessions() as session:
        rows = list_custom_fields(session)
    if not rows:
        out.print("nenhum campo personalizado (no custom fields)", soft_wrap=True)
        return
    table = Table("chave", "rótulo", "tipo", "opções")
    for row in rows:
        table.add_row(row.key, row.label, row.kind, ", ".join(row.choices or []))
    out.print(table)
