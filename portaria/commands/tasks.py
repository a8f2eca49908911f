"""The `portaria tasks` commands: list tasks, mark them done, cancel them."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from engine.calendar import today_for
from engine.playbooks import KIND_LABELS
from engine.tasks import cancel_task, complete_task, list_tasks
from portaria.console import ConfigOption, actor, friendly, out, reference_day, service_for

app = typer.Typer(help="Tarefas dos clientes (customer tasks).", no_args_is_help=True)

STATUS_LABELS = {"open": "aberta", "done": "feita", "cancelled": "cancelada"}


@app.command("list")
@friendly
def tasks_list(
    customer: Annotated[str | None, typer.Option("--customer", help="Código do cliente.")] = None,
    owner: Annotated[str | None, typer.Option("--owner", help="E-mail do responsável.")] = None,
    overdue: Annotated[bool, typer.Option("--overdue", help="Só as atrasadas.")] = False,
    status: Annotated[
        str, typer.Option(help="open, done, cancelled ou all (aberta, feita...).")
    ] = "open",
    today: Annotated[
        str | None, typer.Option("--today", help="Data de referência para --overdue.")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Listar tarefas por prazo (as sem prazo por último)."""
    day = reference_day(today)
    wanted = {"all": None, "todas": None, "aberta": "open", "feita": "done"}
    wanted |= {"cancelada": "cancelled"}
    chosen = wanted.get(status, status)
    service = service_for(config)
    with service.sessions() as session:
        lines = list_tasks(
            session,
            customer_code=customer,
            owner_email=owner,
            overdue_on=(day or today_for(service.settings)) if overdue else None,
            status=chosen,
        )
    if not lines:
        out.print("nenhuma tarefa (no tasks)", soft_wrap=True)
        return
    table = Table(
        "id", "prazo", "cliente", "tipo", "tarefa", "responsável", "playbook", "situação"
    )
    for line in lines:
        task = line.task
        table.add_row(
            str(task.id),
            task.due_date.strftime("%d/%m/%Y") if task.due_date else "",
            line.customer_code,
            KIND_LABELS.get(task.kind, task.kind),
            task.name,
            line.assignee_email or "",
            line.playbook_name or "",
            STATUS_LABELS.get(task.status, task.status),
        )
    out.print(table)


@app.command("done")
@friendly
def tasks_done(
    task_id: Annotated[int, typer.Argument(help="Id da tarefa.")],
    by: Annotated[str | None, typer.Option(help="Quem concluiu (default: cli:<login>).")] = None,
    config: ConfigOption = None,
) -> None:
    """Marcar uma tarefa como feita; a última do playbook encerra o playbook no cliente."""
    service = service_for(config)
    with service.transaction() as session:
        task = complete_task(session, task_id, by=actor(by))
        shown = task.name
    out.print(f"Tarefa #{task_id} feita (done): {shown}", markup=False, soft_wrap=True)


@app.command("cancel")
@friendly
def tasks_cancel(
    task_id: Annotated[int, typer.Argument(help="Id da tarefa.")],
    by: Annotated[str | None, typer.Option(help="Quem cancelou (default: cli:<login>).")] = None,
    config: ConfigOption = None,
) -> None:
    """Cancelar uma tarefa aberta."""
    service = service_for(config)
    with service.transaction() as session:
        task = cancel_task(session, task_id, by=actor(by))
        shown = task.name
    out.print(f"Tarefa #{task_id} cancelada (cancelled): {shown}", markup=False, soft_wrap=True)
