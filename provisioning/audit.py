"""The audit trail: every decision and change, recorded as an event no one edits."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from provisioning.models import AuditEvent


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    subject_type: str,
    subject_id: int | None,
    **detail: Any,
) -> AuditEvent:
    event = AuditEvent(
        actor=actor, action=action, subject_type=subject_type, subject_id=subject_id, detail=detail
    )
    session.add(event)
    return event


def events_for(session: Session, subject_type: str, subject_id: int) -> list[AuditEvent]:
    return list(
        session.scalars(
            select(AuditEvent)
            .where(AuditEvent.subject_type == subject_type, AuditEvent.subject_id == subject_id)
            .order_by(AuditEvent.id)
        )
    )
