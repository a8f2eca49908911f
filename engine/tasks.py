"""Tasks on customer cards: listing them, completing and cancelling them.

Completing or cancelling the last open task of a playbook load closes the load,
so "is this playbook still running on the card?" stays a plain column check.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from engine.customers import check_user_exists, get_customer
from engine.errors import InvalidTaskStatus, TaskNotFound, TaskNotOpen
from engine.models import TASK_STATUSES, Customer, Playbook, PlaybookLoad, Task
from engine.playbooks import close_load_if_finished
from portaria.db import utcnow
from provisioning.models import User

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskLine:
    """A task with what a list shows next to it."""

    task: Task
    customer_code: str
    customer_name: str
    assignee_email: str | None
    playbook_name: str | None


def list_tasks(
    session: Session,
    *,
    customer_code: str | None = None,
    owner_email: str | None = None,
    overdue_on: date | None = None,
    load_id: int | None = None,
    status: str | None = "open",
    limit: int | None = None,
) -> list[TaskLine]:
    """Tasks by due date (undated last), filtered.

    ``owner_email``: the task's assignee. ``overdue_on``: open tasks due before
    that day. ``load_id``: the tasks of one playbook load. ``status``: open, done or
    cancelled; ``None`` for every status. An unknown customer code or email is an
    error (CustomerNotFound, UserNotFound), not an empty list.
    """
    if status is not None and status not in TASK_STATUSES:
        raise InvalidTaskStatus(
            f"situação inválida (bad status) {status!r}: use {', '.join(TASK_STATUSES)}"
        )
    assignee = aliased(User)
    query = (
        select(Task, Customer.code, Customer.name, assignee.email, Playbook.name)
        .join(Customer, Customer.id == Task.customer_id)
        .outerjoin(assignee, assignee.id == Task.assignee_id)
        .outerjoin(PlaybookLoad, PlaybookLoad.id == Task.load_id)
        .outerjoin(Playbook, Playbook.id == PlaybookLoad.playbook_id)
        .order_by(Task.due_date.is_(None), Task.due_date, Task.id)
    )
    if status is not None:
        query = query.where(Task.status == status)
    if customer_code:
        get_customer(session, customer_code)
        query = query.where(Customer.code == customer_code.strip())
    if owner_email:
        check_user_exists(session, owner_email)
        query = query.where(func.lower(assignee.email) == owner_email.strip().lower())
    if load_id is not None:
        query = query.where(Task.load_id == load_id)
    if overdue_on is not None:
        query = query.where(Task.status == "open", Task.due_date < overdue_on)
    if limit:
        query = query.limit(limit)
    return [TaskLine(*row) for row in session.execute(query)]


def get_task(session: Session, task_id: int) -> Task:
    task = session.get(Task, task_id)
    if task is None:
        raise TaskNotFound(f"Tarefa não encontrada (task not found): {task_id}")
    return task


def _finish(session: Session, task_id: int, status: str, by: str) -> Task:
    task = get_task(session, task_id)
    if task.status != "open":
        raise TaskNotOpen(
            f"tarefa {task_id} não está aberta (task is not open): está {task.status}"
        )
    task.status = status
    task.done_at = utcnow()
    task.done_by = by
    session.flush()
    log.info("task %s %s by %s", task.id, status, by)
    if task.load_id is not None:
        close_load_if_finished(session, task.load_id)
    return task


def complete_task(session: Session, task_id: int, *, by: str) -> Task:
    """Mark an open task done; the last open task of a load closes the load."""
    return _finish(session, task_id, "done", by)


def cancel_task(session: Session, task_id: int, *, by: str) -> Task:
    """Cancel an open task; the last open task of a load closes the load."""
    return _finish(session, task_id, "cancelled", by)
