"""Tables of provisioning: users directory, access requests, set-password tokens, audit."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portaria.db import Base, utcnow

ROLES = ("comum", "agente", "admin")
REQUEST_STATUSES = ("pending", "approved", "rejected", "incomplete", "superseded")
STATUS_PT = {
    "pending": "pendente",
    "approved": "aprovado",
    "rejected": "recusado",
    "incomplete": "incompleto",
    "superseded": "substituído",
}


class User(Base):
    """A person who can log in to the platform."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(320), unique=True)
    area: Mapped[str] = mapped_column(String(300), default="")
    role: Mapped[str] = mapped_column(String(10))
    active: Mapped[bool] = mapped_column(default=True)
    created_via: Mapped[str] = mapped_column(String(40))  # "request:12", "cli", "batch"
    password_hash: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class SetPasswordToken(Base):
    """A one-time, expiring link to set a password. Only the token's hash is kept."""

    __tablename__ = "set_password_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class AccessRequest(Base):
    """One person asked for in one message: the unit support approves or rejects."""

    __tablename__ = "access_requests"
    __table_args__ = (Index("ix_access_requests_status_email", "status", "email"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    # The intake's record of the message; referenced by table name only, so that
    # provisioning does not depend on the intake package.
    source_message_id: Mapped[int | None] = mapped_column(
        ForeignKey("inbound_messages.id", ondelete="SET NULL")
    )
    # The request email's Message-ID and subject, so answers thread under it.
    source_message_ref: Mapped[str | None] = mapped_column(String(998))
    source_subject: Mapped[str | None] = mapped_column(Text)
    requester_email: Mapped[str] = mapped_column(String(320))
    requester_name: Mapped[str] = mapped_column(String(200), default="")
    name: Mapped[str | None] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320))
    area: Mapped[str | None] = mapped_column(String(300))
    access_type: Mapped[str | None] = mapped_column(String(10))
    status: Mapped[str] = mapped_column(String(12), default="pending")
    missing: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Why a field in ``missing`` that was written cannot be used, by field: a
    # record such as {"kind": "invalid", "value": "ana@@x"} (`intake.values.Problem`).
    problems: Mapped[dict[str, dict[str, Any]]] = mapped_column(JSON, default=dict)
    # Why a person should look twice: existing_user, pending_duplicate, admin_access.
    flags: Mapped[list[str]] = mapped_column(JSON, default=list)
    reason: Mapped[str | None] = mapped_column(Text)  # rejection reason
    decided_by: Mapped[str | None] = mapped_column(String(320))
    decided_at: Mapped[datetime | None]
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    user: Mapped[User | None] = relationship()


class AuditEvent(Base):
    """Who did what to which thing, when and why. Never updated, never deleted."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_subject", "subject_type", "subject_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(320))
    action: Mapped[str] = mapped_column(String(60))
    subject_type: Mapped[str] = mapped_column(String(40))
    subject_id: Mapped[int | None]
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
