"""Tables of the engine: customers, custom fields, playbooks, tasks, rules and their runs.

Rules keep their conditions and actions as plain data (JSON lists), so they can be
exported, imported, shown and explained; the code that applies them lives in
``engine.conditions``, ``engine.actions`` and ``engine.runs``.
"""

from __future__ import annotations

from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    Date,
    ForeignKey,
    Index,
    Numeric,
    String,
    Text,
    Time,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portaria.db import Base, utcnow

CUSTOM_FIELD_KINDS = ("text", "number", "date", "boolean", "choice")
PLAYBOOK_STATUSES = ("active", "inactive", "archived")
TASK_KINDS = ("call", "email", "other")
TASK_STATUSES = ("open", "done", "cancelled")
RULE_STATUSES = ("active", "inactive")
CADENCE_UNITS = ("minutes", "hours", "days", "weeks", "months")


class Customer(Base):
    """A customer card."""

    __tablename__ = "customers"
    __table_args__ = (
        Index("ix_customers_owner_id", "owner_id"),
        Index("ix_customers_segment", "segment"),
        Index("ix_customers_stage", "stage"),
        Index("ix_customers_renewal_date", "renewal_date"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    code: Mapped[str] = mapped_column(String(60), unique=True)
    segment: Mapped[str | None] = mapped_column(String(120))
    area: Mapped[str | None] = mapped_column(String(200))
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    contact_name: Mapped[str | None] = mapped_column(String(200))
    contact_email: Mapped[str | None] = mapped_column(String(320))
    stage: Mapped[str | None] = mapped_column(String(60))
    health_score: Mapped[int | None]
    nps: Mapped[int | None]
    mrr: Mapped[Decimal | None] = mapped_column(Numeric(14, 2))
    renewal_date: Mapped[date | None] = mapped_column(Date)
    # Values of admin-defined custom fields, by CustomField.key. Dates as ISO strings.
    custom: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class CustomField(Base):
    """A field an admin adds to every customer card."""

    __tablename__ = "custom_fields"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(60), unique=True)  # identifier used in rules
    label: Mapped[str] = mapped_column(String(120))
    kind: Mapped[str] = mapped_column(String(10))  # one of CUSTOM_FIELD_KINDS
    choices: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Playbook(Base):
    """A named, ordered list of tasks that can be loaded onto customer cards."""

    __tablename__ = "playbooks"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    status: Mapped[str] = mapped_column(String(10), default="active")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    steps: Mapped[list[PlaybookStep]] = relationship(
        order_by="PlaybookStep.position", cascade="all, delete-orphan"
    )


class PlaybookStep(Base):
    """One task of a playbook, as a template: loading the playbook copies it to a card."""

    __tablename__ = "playbook_steps"
    __table_args__ = (UniqueConstraint("playbook_id", "position"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    playbook_id: Mapped[int] = mapped_column(ForeignKey("playbooks.id", ondelete="CASCADE"))
    position: Mapped[int]
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(10))  # one of TASK_KINDS
    business_days: Mapped[int | None]


class PlaybookLoad(Base):
    """A playbook loaded onto one customer card; open while any of its tasks is open."""

    __tablename__ = "playbook_loads"
    __table_args__ = (
        Index("ix_playbook_loads_customer_playbook", "customer_id", "playbook_id", "status"),
        Index("ix_playbook_loads_rule_customer", "rule_id", "customer_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    playbook_id: Mapped[int] = mapped_column(ForeignKey("playbooks.id"))
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    rule_id: Mapped[int | None] = mapped_column(ForeignKey("rules.id", ondelete="SET NULL"))
    loaded_by: Mapped[str] = mapped_column(String(320))  # "rule:3", "cli:ana", user email
    loaded_on: Mapped[date] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(10), default="open")  # open | closed
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    closed_at: Mapped[datetime | None]


class Task(Base):
    """Work on a customer card, usually from a playbook load."""

    __tablename__ = "tasks"
    __table_args__ = (
        Index("ix_tasks_customer_status", "customer_id", "status"),
        Index("ix_tasks_assignee_status_due", "assignee_id", "status", "due_date"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    load_id: Mapped[int | None] = mapped_column(
        ForeignKey("playbook_loads.id", ondelete="SET NULL")
    )
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(10))
    due_date: Mapped[date | None] = mapped_column(Date)
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(String(10), default="open")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    done_at: Mapped[datetime | None]
    done_by: Mapped[str | None] = mapped_column(String(320))


class Rule(Base):
    """Select customers by conditions on a cadence, and act on each of them.

    ``conditions``: ``[{"category", "field", "operation", "value"}]`` combined by
    ``match`` ("all" or "any"). ``actions``: ``[{"kind": "playbook" | "update" |
    "email", ...}]``. ``next_run_at`` is the single source of truth for when the
    rule is due: the scheduler reads it, so a restart neither skips nor repeats.
    """

    __tablename__ = "rules"
    __table_args__ = (Index("ix_rules_status_next_run_at", "status", "next_run_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    status: Mapped[str] = mapped_column(String(10), default="active")
    starts_at: Mapped[datetime]
    every: Mapped[int]
    unit: Mapped[str] = mapped_column(String(10))  # one of CADENCE_UNITS
    time_of_day: Mapped[time | None] = mapped_column(Time)
    timezone: Mapped[str] = mapped_column(String(60), default="America/Sao_Paulo")
    match: Mapped[str] = mapped_column(String(3), default="all")
    conditions: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    actions: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    next_run_at: Mapped[datetime | None]
    last_run_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class RuleRun(Base):
    """One run of a rule: when, how many matched, what was done, what failed.

    ``heartbeat_at`` is the lease of the process doing the run: written when
    the run is claimed, renewed (compare-and-set) after every batch. A run
    whose heartbeat is older than ``engine.run_lease_minutes`` belongs to a
    process that died, and may be claimed and finished by another.
    """

    __tablename__ = "rule_runs"
    __table_args__ = (
        Index("ix_rule_runs_rule_started", "rule_id", "started_at"),
        Index("ix_rule_runs_status_heartbeat", "status", "heartbeat_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    rule_id: Mapped[int] = mapped_column(ForeignKey("rules.id", ondelete="CASCADE"))
    trigger: Mapped[str] = mapped_column(String(10))  # schedule | manual
    scheduled_for: Mapped[datetime | None]
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    # Kept apart from started_at, which stays the run's start and fixes its "today".
    heartbeat_at: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(String(10), default="running")  # running|ok|partial|failed
    matched: Mapped[int] = mapped_column(default=0)
    actions_done: Mapped[int] = mapped_column(default=0)
    # [{"customer_id": 3, "action": 0, "error": "..."}]
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)


class RuleEmail(Base):
    """An email a rule queued for one recipient: the ledger behind the per-day cap."""

    __tablename__ = "rule_emails"
    __table_args__ = (
        UniqueConstraint("run_id", "recipient", name="uq_rule_emails_run_recipient"),
        Index("ix_rule_emails_recipient_day", "recipient", "sent_on"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    rule_id: Mapped[int] = mapped_column(ForeignKey("rules.id", ondelete="CASCADE"))
    run_id: Mapped[int] = mapped_column(ForeignKey("rule_runs.id", ondelete="CASCADE"))
    customer_id: Mapped[int | None] = mapped_column(
        ForeignKey("customers.id", ondelete="SET NULL")
    )
    recipient: Mapped[str] = mapped_column(String(320))
    sent_on: Mapped[date] = mapped_column(Date)  # in the rule's time zone
    outbox_id: Mapped[int | None] = mapped_column(ForeignKey("outbox.id", ondelete="SET NULL"))


class EmailTemplate(Base):
    """An admin-written email template, rendered in Jinja's sandbox."""

    __tablename__ = "email_templates"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    subject: Mapped[str] = mapped_column(Text)
    body_text: Mapped[str] = mapped_column(Text)
    body_html: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Unsubscribe(Base):
    """An address that asked not to receive rule emails again."""

    __tablename__ = "unsubscribes"

    email: Mapped[str] = mapped_column(String(320), primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    source: Mapped[str] = mapped_column(String(60), default="link")


class SchedulerJob(Base):
    """When each recurring job of the scheduler (outbox, intake) last ran and is next due."""

    __tablename__ = "scheduler_jobs"

    name: Mapped[str] = mapped_column(String(60), primary_key=True)
    next_run_at: Mapped[datetime | None]
    last_run_at: Mapped[datetime | None]
    last_result: Mapped[str | None] = mapped_column(Text)
