"""The dry run behind `portaria parse`: what receiving would decide, with nothing kept.

The message goes through the very stages the poller uses (`intake.receiving`):
limits, loops, screening, the sender policy, extraction and the queue, so the
dry run and a real poll cannot disagree. They run against a throwaway
in-memory database that is dropped afterwards: nothing is stored and no
email leaves. What it cannot know is the real queue's state (who already has
an account or a pending request), so those flags never show here.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

import intake.models
import portaria.outbox_models  # noqa: F401
from config.settings import Settings
from intake.extraction import FIELD_NAMES
from intake.receiving import receive
from intake.report import OUTCOME_LABELS, problem_lines
from portaria.db import Base
from provisioning.models import AccessRequest

# What the poller records, as the report names it: untagged mail is ignored.
REPORTED_OUTCOMES = {"left": "ignored"}

__all__ = ["OUTCOME_LABELS", "dry_run"]


def dry_run(raw: bytes, settings: Settings) -> dict[str, Any]:
    """The report `intake.report.parse_report` describes, decided by the real stages."""
    engine = create_engine("sqlite://", poolclass=StaticPool)
    Base.metadata.create_all(engine)
    try:
        with Session(engine) as session:
            row = receive(session, settings, mailbox="dry-run", key="1", raw=raw)
            requests = list(session.scalars(select(AccessRequest).order_by(AccessRequest.id)))
            report = _report(row, requests)
            session.rollback()
    finally:
        engine.dispose()
    return report


def _report(row: intake.models.InboundMessage, requests: list[AccessRequest]) -> dict[str, Any]:
    missing: list[str] = []
    for request in requests:
        missing += [field for field in request.missing if field not in missing]
    problems = problem_lines(
        (field, request.problems[field])
        for request in requests
        for field in FIELD_NAMES
        if field in request.problems
    )
    return {
        "outcome": REPORTED_OUTCOMES.get(row.outcome, row.outcome),
        "requests": [
            {field: getattr(request, field) for field in FIELD_NAMES}
            for request in requests
            if request.status == "pending"
        ],
        "missing": [field for field in FIELD_NAMES if field in missing],
        "problems": problems,
        "reason": row.reason,
        "message": {"message_id": row.message_id, "from": row.sender, "subject": row.subject},
    }
