"""Receiving one message: the single core step every entry point ends in.

read → de-duplicate → screen → extract → queue → acknowledge. Each stage
returns a decision; this module records it on an :class:`InboundMessage` row
and says which folder the message belongs in. It never commits: the poller
commits a batch, and only then moves the messages (commit, then move).
"""

from __future__ import annotations

import hashlib
import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from config.settings import Settings
from intake.errors import UnreadableMessage
from intake.extraction import extract
from intake.models import InboundMessage
from intake.reading import ReadMessage, read_message
from intake.screening import has_tag, screen
from portaria import outbox
from provisioning.models import AccessRequest
from provisioning.queue import RequestedPerson, Requester, queue_requests

log = logging.getLogger(__name__)

PROCESSED = "processed"
ATTENTION = "attention"

# Where each outcome sends its message; None leaves it in the inbox.
DESTINATIONS: dict[str, str | None] = {
    "request": PROCESSED,
    "ignored": PROCESSED,
    "incomplete": ATTENTION,
    "held": ATTENTION,
    "unreadable": ATTENTION,
    "left": None,
}


def own_addresses(settings: Settings) -> frozenset[str]:
    return frozenset({str(settings.outbound.from_address).lower()})


def own_domain(settings: Settings) -> str:
    return str(settings.outbound.from_address).rpartition("@")[2].lower()


def receive(
    session: Session, settings: Settings, *, mailbox: str, key: str, raw: bytes
) -> InboundMessage:
    """Record what becomes of one message and queue whatever it asks for."""
    row = InboundMessage(
        mailbox=mailbox,
        mailbox_key=key,
        sha256=hashlib.sha256(raw).hexdigest(),
        size=len(raw),
        outcome="unreadable",
    )
    session.add(row)

    try:
        message = read_message(raw)
    except UnreadableMessage as exc:
        return _decided(session, row, "unreadable", str(exc))
    row.message_id = message.message_id
    row.sender = message.from_address
    row.subject = message.subject
    session.flush()

    original = _earlier_copy(session, row)
    if original is not None:
        row.destination = original.destination
        row.outcome = "duplicate"
        row.reason = f"same Message-ID and content as message {original.id}"
        session.flush()
        log.info("message %s (%s) is a copy of message %s", row.id, key, original.id)
        return row

    screening = screen(
        message,
        tag=settings.service.tag,
        own_addresses=own_addresses(settings),
        own_message_id_domain=own_domain(settings),
    )
    if screening.outcome != "request":
        tagged = has_tag(message.subject or "", settings.service.tag)
        return _decided(session, row, "ignored" if tagged else "left", screening.reason)

    return _take_request(session, settings, row, message)


def _take_request(
    session: Session, settings: Settings, row: InboundMessage, message: ReadMessage
) -> InboundMessage:
    extraction = extract(message)
    people = [
        RequestedPerson(p.name, p.email, p.area, p.access_type, tuple(p.missing))
        for p in extraction.people
    ]
    outcome = "incomplete" if any(p.missing for p in people) else "request"
    reason = ""
    if outcome == "incomplete":
        reason = "missing: " + ", ".join(extraction.missing)
    _decided(session, row, outcome, reason)

    requester = Requester(
        email=message.from_address or "",
        name=message.from_name or "",
        message_ref=message.message_id,
        subject=message.subject,
    )
    requests = queue_requests(session, requester, people, source_message_id=row.id)
    _acknowledge(session, settings, message, requests)
    return row


def _acknowledge(
    session: Session,
    settings: Settings,
    message: ReadMessage,
    requests: list[AccessRequest],
) -> None:
    """Tell the requester what was queued and what is missing; tell support what waits."""
    if not message.from_address:
        return
    thread = {
        "in_reply_to": _bracketed(message.message_id),
        "references": [_bracketed(r) for r in message.references if r],
        "cause": f"message:{requests[0].source_message_id}" if requests else None,
    }
    base = {
        "requester_name": message.from_name or "",
        "original_subject": message.subject or "",
    }
    pending = [r for r in requests if r.status == "pending"]
    incomplete = [r for r in requests if r.status == "incomplete"]

    if pending:
        outbox.enqueue(
            session,
            settings,
            kind="received",
            to=[message.from_address],
            context={**base, "people": [_person(r) for r in pending]},
            **thread,
        )
    if incomplete:
        outbox.enqueue(
            session,
            settings,
            kind="incomplete",
            to=[message.from_address],
            context={
                **base,
                "people": [{**_person(r), "missing": list(r.missing)} for r in incomplete],
            },
            **thread,
        )
    if pending and settings.service.support_address:
        outbox.enqueue(
            session,
            settings,
            kind="support_notice",
            to=[str(settings.service.support_address)],
            context={
                "requests": [
                    {
                        **_person(r),
                        "id": r.id,
                        "flags": list(r.flags),
                        "requester_email": r.requester_email,
                    }
                    for r in pending
                ],
                "console_url": settings.service.base_url,
            },
            cause=thread["cause"],
        )


def _person(request: AccessRequest) -> dict[str, str]:
    return {
        "name": request.name or "",
        "email": request.email or "",
        "area": request.area or "",
        "access_type": request.access_type or "",
    }


def _bracketed(message_id: str | None) -> str | None:
    if not message_id:
        return None
    message_id = message_id.strip()
    return message_id if message_id.startswith("<") else f"<{message_id}>"


def _earlier_copy(session: Session, row: InboundMessage) -> InboundMessage | None:
    """The first recording of the same message: same Message-ID and the same bytes.

    A reused Message-ID on different content is a new message, never dropped.
    """
    query = select(InboundMessage).where(
        InboundMessage.sha256 == row.sha256,
        InboundMessage.outcome != "duplicate",
        InboundMessage.id != row.id,
    )
    if row.message_id is None:
        query = query.where(InboundMessage.message_id.is_(None))
    else:
        query = query.where(InboundMessage.message_id == row.message_id)
    return session.scalars(query.order_by(InboundMessage.id).limit(1)).first()


def _decided(session: Session, row: InboundMessage, outcome: str, reason: str) -> InboundMessage:
    row.outcome = outcome
    row.reason = reason
    row.destination = DESTINATIONS[outcome]
    session.flush()
    log.info(
        "message %s (%s, key %s) %s%s",
        row.id,
        row.message_id or "no Message-ID",
        row.mailbox_key,
        outcome,
        f": {reason}" if reason else "",
    )
    return row
