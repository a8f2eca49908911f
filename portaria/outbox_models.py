"""The outbox table: every email Portaria sends is a row here before it leaves."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from portaria.db import Base, utcnow

OUTBOX_STATUSES = ("pending", "sent", "failed")


class OutboxMessage(Base):
    """One email to send. ``message_id`` is fixed at creation, so a retry is the same email."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_status_next_attempt", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[str] = mapped_column(String(255), unique=True)
    kind: Mapped[str] = mapped_column(String(40))  # template name: received, welcome, ...
    language: Mapped[str] = mapped_column(String(10))
    sender: Mapped[str] = mapped_column(String(320))
    recipients: Mapped[list[str]] = mapped_column(JSON)
    subject: Mapped[str] = mapped_column(Text)
    body_text: Mapped[str] = mapped_column(Text)
    body_html: Mapped[str | None] = mapped_column(Text)
    # Extra headers (In-Reply-To, References, Auto-Submitted...), already validated.
    headers: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(10), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]
    # What caused it, for people reading the outbox: "request:12", "message:3".
    cause: Mapped[str | None] = mapped_column(String(80))


class BouncedAddress(Base):
    """An address our mail bounced from: the outbox does not write to it again."""

    __tablename__ = "bounced_addresses"

    email: Mapped[str] = mapped_column(String(320), primary_key=True)
    first_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_at: Mapped[datetime] = mapped_column(default=utcnow)
    bounces: Mapped[int] = mapped_column(default=1)
    last_reason: Mapped[str] = mapped_column(Text, default="")
