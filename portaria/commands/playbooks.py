"""The `portaria playbooks` commands: create, edit, remove, import, export and load."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from sqlalchemy.orm import Session

from engine.calendar import calendar_from_settings, today_for
from engine.models import Playbook
from engine.playbooks import (
    KIND_LABELS,
    StepSpec,
    add_step,
    create_playbook,
    export_playbooks,
    get_playbook,
    import_playbooks,
    list_playbooks,
    load_onto_customer,
    make_step,
    move_step,
    remove_playbook,
    remove_step,
    rename_playbook,
    set_playbook_active,
)
from engine.tasks import TaskLine, list_tasks
from portaria.commands.definition_files import (
    ExportFileOption,
    ImportFileArgument,
    export_definitions,
    print_import_report,
)
from portaria.console import (
    CommandError,
    ConfigOption,
    actor,
    friendly,
    out,
    reference_day,
    service_for,
)

app = typer.Typer(
    help="Playbooks: listas de tarefas carregadas nos clientes (task lists for customers).",
    no_args_is_help=True,
)

STATUS_LABELS = {"active": "ativo", "inactive": "inativo", "archived": "arquivado"}


def _print_playbook(playbook: Playbook) -> None:
    state = STATUS_LABELS.get(playbook.status, playbook.status)
    out.print(f"{playbook.name} ({state}, #{playbook.id})", markup=False, soft_wrap=True)
    if not playbook.steps:
        out.print("  sem tarefas (no tasks)", soft_wrap=True)
    for step in playbook.steps:
        days = "sem prazo" if step.business_days is None else f"{step.business_days} dia(s) úteis"
        kind = KIND_LABELS.get(step.kind, step.kind)
        out.print(f"  {step.position}. {step.name} [{kind}, {days}]", markup=False, soft_wrap=True)


@app.command("list")
@friendly
def playbooks_list(
    config: ConfigOption = None,
    all_: Annotated[bool, typer.Option("--all", help="Incluir arquivados.")] = False,
) -> None:
    """Listar playbooks."""
    service = service_for(config)
    with service.sessions() as session:
        playbooks = list_playbooks(session, include_archived=all_)
        rows = [
            (str(p.id), p.name, STATUS_LABELS.get(p.status, p.status), str(len(p.steps)))
            for p in playbooks
        ]
    if not rows:
        out.print("nenhum playbook (no playbooks)", soft_wrap=True)
        return
    table = Table("id", "nome", "situação", "tarefas")
    for row in rows:
        table.add_row(*row)
    out.print(table)


@app.command("show")
@friendly
def playbooks_show(
    name: Annotated[str, typer.Argument(help="Nome ou id do playbook.")],
    config: ConfigOption = None,
) -> None:
    """Ver as tarefas de um playbook."""
    service = service_for(config)
    with service.sessions() as session:
        _print_playbook(get_playbook(session, name))


@app.command("create")
@friendly
def playbooks_create(
    name: Annotated[str, typer.Argument(help="Nome do novo playbook.")],
    inactive: Annotated[bool, typer.Option("--inactive", help="Criar inativo.")] = False,
    config: ConfigOption = None,
) -> None:
    """Criar um playbook vazio; acrescente tarefas com `playbooks edit --add-task`."""
    service = service_for(config)
    with service.transaction() as session:
        playbook = create_playbook(session, name, active=not inactive)
        shown = playbook.name
    out.print(f"Playbook criado (created): {shown}", markup=False, soft_wrap=True)


@app.command("edit")
@friendly
def playbooks_edit(
    name: Annotated[str, typer.Argument(help="Nome ou id do playbook.")],
    rename: Annotated[str | None, typer.Option("--rename", help="Novo nome.")] = None,
    active: Annotated[
        bool | None, typer.Option("--activate/--inactivate", help="Ativar ou inativar.")
    ] = None,
    add_task: Annotated[str | None, typer.Option("--add-task", help="Nome da tarefa.")] = None,
    kind: Annotated[
        str | None, typer.Option("--kind", help="Tipo: ligação, email ou outro.")
    ] = None,
    days: Annotated[
        int | None, typer.Option("--days", min=0, help="Dias úteis até o prazo.")
    ] = None,
    remove_task: Annotated[
        int | None, typer.Option("--remove-task", min=1, help="Número da tarefa a remover.")
    ] = None,
    move_task: Annotated[
        int | None, typer.Option("--move-task", min=1, help="Número da tarefa a mover.")
    ] = None,
    to: Annotated[int | None, typer.Option("--to", min=1, help="Nova posição.")] = None,
    config: ConfigOption = None,
) -> None:
    """Alterar um playbook: nome, situação e tarefas."""
    if add_task is None and (kind is not None or days is not None):
        raise CommandError("--kind e --days só valem com --add-task (need --add-task)")
    if (move_task is None) != (to is None):
        raise CommandError("use --move-task N junto com --to M (both or neither)")
    changes = (rename, active, add_task, remove_task, move_task)
    if all(change is None for change in changes):
        raise CommandError(
            "nada a alterar (nothing to change): use --rename, --activate, --inactivate, "
            "--add-task, --remove-task ou --move-task"
        )
    step = make_step(add_task, kind or "outro", days) if add_task is not None else None
    service = service_for(config)
    with service.transaction() as session:
        playbook = _edit(session, name, rename, active, step, remove_task, move_task, to)
        _print_playbook(playbook)


def _edit(
    session: Session,
    name: str,
    rename: str | None,
    active: bool | None,
    step: StepSpec | None,
    remove_task: int | None,
    move_task: int | None,
    to: int | None,
) -> Playbook:
    playbook = get_playbook(session, name)
    if rename is not None:
        rename_playbook(session, playbook, rename)
    if step is not None:
        add_step(session, playbook, step)
    if remove_task is not None:
        remove_step(session, playbook, remove_task)
    if move_task is not None and to is not None:
        move_step(session, playbook, move_task, to)
    if active is not None:
        set_playbook_active(session, playbook, active)
    return playbook


@app.command("remove")
@friendly
def playbooks_remove(
    name: Annotated[str, typer.Argument(help="Nome ou id do playbook.")],
    config: ConfigOption = None,
) -> None:
    """Remover um playbook; se já foi carregado em clientes, é arquivado (histórico mantido)."""
    service = service_for(config)
    with service.transaction() as session:
        shown = get_playbook(session, name).name
        outcome = remove_playbook(session, name)
    if outcome == "archived":
        out.print(
            f"Playbook arquivado (archived; it was loaded on customers): {shown}",
            markup=False,
            soft_wrap=True,
        )
    else:
        out.print(f"Playbook removido (deleted): {shown}", markup=False, soft_wrap=True)


@app.command("import")
@friendly
def playbooks_import(file: ImportFileArgument, config: ConfigOption = None) -> None:
    """Importar playbooks de um arquivo; os que já existem têm as tarefas substituídas."""
    service = service_for(config)
    with service.transaction() as session:
        report = import_playbooks(session, file)
    print_import_report(report, created="criado (created)", updated="atualizado (updated)")


@app.command("export")
@friendly
def playbooks_export(
    names: Annotated[
        list[str] | None, typer.Argument(help="Playbooks (padrão: todos os não arquivados).")
    ] = None,
    to: ExportFileOption = Path("playbooks.toml"),
    config: ConfigOption = None,
) -> None:
    """Exportar playbooks para um arquivo TOML ou YAML."""
    written = export_definitions(config, export_playbooks, names, to)
    out.print(
        f"{len(written)} playbook(s) exportado(s) (exported) para {to}",
        markup=False,
        soft_wrap=True,
    )


@app.command("load")
@friendly
def playbooks_load(
    name: Annotated[str, typer.Argument(help="Nome ou id do playbook.")],
    customer: Annotated[str, typer.Option("--customer", help="Código do cliente.")],
    by: Annotated[str | None, typer.Option(help="Quem carrega (default: cli:<login>).")] = None,
    today: Annotated[
        str | None, typer.Option("--today", help="Data de referência (padrão: hoje).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Carregar um playbook num cliente: cria as tarefas com prazos em dias úteis."""
    day = reference_day(today)
    service = service_for(config)
    settings = service.settings
    with service.transaction() as session:
        load = load_onto_customer(
            session,
            name,
            customer,
            loaded_by=actor(by),
            today=day or today_for(settings),
            calendar=calendar_from_settings(settings),
        )
        shown = get_playbook(session, load.playbook_id).name
        lines = [_task_line(line) for line in list_tasks(session, load_id=load.id)]
    out.print(
        f"Playbook carregado (loaded): {shown} em {customer}, {len(lines)} tarefa(s):",
        markup=False,
        soft_wrap=True,
    )
    for line in lines:
        out.print(line, markup=False, soft_wrap=True)


def _task_line(line: TaskLine) -> str:
    task = line.task
    due = task.due_date.strftime("%d/%m/%Y") if task.due_date else "sem prazo"
    kind = KIND_LABELS.get(task.kind, task.kind)
    return f"  #{task.id} {due} {kind}: {task.name} ({line.assignee_email or 'sem responsável'})"
