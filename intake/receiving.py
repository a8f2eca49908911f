"""Receiving one message: the single core step every entry point ends in.

read → de-duplicate → bounces → loops → screen → limits → sender policy →
extract → queue → auto-approve → acknowledge. Each stage returns a decision;
this module records it on an :class:`InboundMessage` row and says which
folder the message belongs in. It never commits: the poller commits a batch,
and only then moves the messages (commit, then move).

What each outcome means here:

- ``ignored``: a delivery report about our mail (its bounced addresses are
  recorded), our own mail come back, a machine answering us, or mail the
  screening calls automatic. Never answered.
- ``unreadable``: not a message; larger than ``intake.max_message_bytes`` (then
  only its headers are read); or a request whose body could not be parsed.
- ``held``: outside the sender policy (its requests are queued, flagged
  ``sender_outside_policy``, and the sender is not answered, since the From
  address may be forged), or over the attachment or people limit (nothing
  is queued). A person decides.
- ``incomplete`` and ``request``: queued, and answered within the hourly
  cap on automatic answers, unless the address bounced before.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from config.settings import Settings
from intake import policy
from intake.bounces import bounced, record_bounces
from intake.errors import UnreadableMessage
from intake.extraction import extract
from intake.models import InboundMessage
from intake.reading import ReadMessage, read_message
from intake.report import missing_reason
from intake.screening import has_tag, screen
from portaria import outbox
from portaria.letters import single_line
from portaria.outbox_models import OutboxMessage
from provisioning.approvals import approve
from provisioning.errors import ProvisioningError
from provisioning.models import AccessRequest
from provisioning.queue import (
    FLAG_SENDER_OUTSIDE_POLICY,
    RequestedPerson,
    Requester,
    letter_person,
    queue_requests,
)

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

# Who auto-approvals are recorded as, in the audit trail and on the request.
AUTO_APPROVER = "auto:trusted-requester"

NOT_AUTO_APPROVED = "não aprovado automaticamente (not approved automatically)"
# The automatic answers a note can name, in pt-BR ("resposta", feminine, so
# "não enviada" and "suprimida" agree with every one).
ANSWER_LABELS = {
    "received": "resposta de recebimento",
    "incomplete": "resposta de pedido incompleto",
}


def _answer_label(kind: str, pt: str, en: str) -> str:
    """'resposta de recebimento não enviada (received answer not sent)', for one letter kind."""
    return f"{ANSWER_LABELS.get(kind, 'resposta ' + kind)} {pt} ({kind} answer {en})"


def own_addresses(settings: Settings) -> frozenset[str]:
    return frozenset({str(settings.outbound.from_address).lower()})


def own_domain(settings: Settings) -> str:
    return str(settings.outbound.from_address).rpartition("@")[2].lower()


def inbound_row(mailbox: str, key: str, raw: bytes, size: int | None = None) -> InboundMessage:
    """The record of `raw` as it arrived: unreadable until it has been read.

    The hash lets a later copy of the same bytes be known as one, however the
    first copy ended.
    """
    return InboundMessage(
        mailbox=mailbox,
        mailbox_key=key,
        sha256=hashlib.sha256(raw).hexdigest(),
        size=len(raw) if size is None else size,
        outcome="unreadable",
    )


def receive(
    session: Session,
    settings: Settings,
    *,
    mailbox: str,
    key: str,
    raw: bytes,
    size: int | None = None,
) -> InboundMessage:
    """Record what becomes of one message and queue whatever it asks for.

    ``size`` is the whole message's size when ``raw`` holds only its start,
    as a source gives an oversize message.
    """
    row = inbound_row(mailbox, key, raw, size)
    session.add(row)

    # Size first: an oversize message is read for its headers only.
    oversize = policy.message_size(row.size, settings.intake)
    try:
        message = read_message(policy.header_block(raw) if oversize else raw)
    except UnreadableMessage as exc:
        return _decided(session, row, "unreadable", str(exc))
    row.message_id = message.message_id
    row.sender = message.from_address
    row.subject = message.subject
    row.content_sha256 = content_digest(raw, message.from_address, message.subject)
    session.flush()

    original = _earlier_copy(session, row)
    if original is not None:
        row.destination = original.destination
        row.outcome = "duplicate"
        row.reason = (
            "mensagem repetida (duplicate): mesmo Message-ID e conteúdo da mensagem "
            f"(same Message-ID and content as message) {original.id}"
            if row.message_id
            else "mensagem repetida (duplicate): mesmos bytes da mensagem "
            f"(same bytes as message) {original.id}, sem Message-ID (no Message-ID)"
        )
        session.flush()
        log.info("message %s (%s) is a copy of message %s", row.id, key, original.id)
        return row

    domain = own_domain(settings)
    if oversize is None:
        bounce = record_bounces(session, message, domain)
        if bounce is not None:
            return _decided(session, row, "ignored", bounce)
    loop = policy.loop_check(message, domain)
    if loop is not None:
        return _decided(session, row, "ignored", loop.reason)

    # Our own Message-IDs are recognised by their exact form in loop_check;
    # a domain alone would also match requesters who share our domain.
    screening = screen(message, tag=settings.service.tag, own_addresses=own_addresses(settings))
    if screening.outcome != "request":
        tagged = has_tag(message.subject or "", settings.service.tag)
        return _decided(session, row, "ignored" if tagged else "left", screening.reason)
    if oversize is not None:
        return _decided(session, row, "unreadable", oversize.reason)
    if message.body_error is not None:
        # Telling the requester "everything is missing" would be wrong: we
        # could not look. A person reads it from the attention folder.
        return _decided(
            session,
            row,
            "unreadable",
            f"não foi possível ler o corpo (body could not be parsed): {message.body_error}",
        )

    return _take_request(session, settings, row, message)


def _take_request(
    session: Session, settings: Settings, row: InboundMessage, message: ReadMessage
) -> InboundMessage:
    intake = settings.intake
    outside = policy.sender_policy(message, intake)
    outside_reasons = [verdict.reason for verdict in outside]

    readable, too_big = policy.attachment_limit(message, intake)
    if too_big is not None:
        return _decided(session, row, "held", "; ".join([too_big.reason, *outside_reasons]))
    extraction = extract(readable)
    too_many = policy.people_limit(len(extraction.people), intake)
    if too_many is not None:
        return _decided(session, row, "held", "; ".join([too_many.reason, *outside_reasons]))

    # Names and areas are one line of text wherever they go next (headers,
    # tables, pages): control characters and line breaks become spaces.
    people = [
        RequestedPerson(
            _one_line(p.name),
            p.email,
            _one_line(p.area),
            p.access_type,
            tuple(p.missing),
            {field: problem.record() for field, problem in p.problems.items()},
        )
        for p in extraction.people
    ]
    incomplete = any(p.missing for p in people)
    reasons = list(outside_reasons)
    if incomplete:
        reasons.append(missing_reason(extraction.missing))
    outcome = "held" if outside else "incomplete" if incomplete else "request"
    _decided(session, row, outcome, "; ".join(reasons))

    requester = Requester(
        email=message.from_address or "",
        # A display name can carry CR/LF inside an encoded word.
        name=single_line(message.from_name),
        message_ref=message.message_id,
        subject=message.subject,
    )
    requests = queue_requests(
        session,
        requester,
        people,
        source_message_id=row.id,
        flags=[FLAG_SENDER_OUTSIDE_POLICY] if outside else [],
    )

    if outside:
        # Possibly forged: flagged for a person; tell support, never the sender.
        _tell_support(session, settings, [r for r in requests if r.status == "pending"], row)
        _note(
            session,
            row,
            "remetente não respondido, fora da política de remetentes "
            "(sender not answered, outside the sender policy)",
        )
        return row

    approved = _auto_approve(session, settings, row, message, requests)
    _acknowledge(session, settings, row, message, [r for r in requests if r not in approved])
    return row


def _auto_approve(
    session: Session,
    settings: Settings,
    row: InboundMessage,
    message: ReadMessage,
    requests: Sequence[AccessRequest],
) -> list[AccessRequest]:
    """Approve unflagged Comum requests of a trusted, authenticated requester."""
    if not policy.trusted_requester(message, settings.intake):
        return []
    chosen = [
        r for r in requests if r.status == "pending" and r.access_type == "comum" and not r.flags
    ]
    if not chosen:
        return []
    # The approval letter is an automatic answer too: over the cap, a person decides.
    capped = policy.reply_cap(session, settings.intake, message.from_address)
    if capped is not None:
        _note(session, row, f"{NOT_AUTO_APPROVED}: {capped.reason}")
        return []
    try:
        with session.begin_nested():
            approved = approve(session, settings, [r.id for r in chosen], actor=AUTO_APPROVER)
    except ProvisioningError as exc:
        _note(session, row, f"{NOT_AUTO_APPROVED}: {exc}")
        return []

    letter = session.scalar(
        select(OutboxMessage).where(
            OutboxMessage.kind == "approved", OutboxMessage.cause == f"request:{approved[0].id}"
        )
    )
    policy.record_auto_reply(session, message.from_address, letter.id if letter else None)
    ids = ", ".join(f"#{r.id}" for r in approved)
    _note(
        session,
        row,
        f"aprovado automaticamente (approved automatically): {ids}, por (by) {AUTO_APPROVER}",
    )
    return approved


def _acknowledge(
    session: Session,
    settings: Settings,
    row: InboundMessage,
    message: ReadMessage,
    requests: list[AccessRequest],
) -> None:
    """Tell the requester what was queued and what is missing; tell support what waits."""
    pending = [r for r in requests if r.status == "pending"]
    incomplete = [r for r in requests if r.status == "incomplete"]
    if message.from_address:
        _answer(session, settings, row, message, pending, incomplete)
    _tell_support(session, settings, pending, row)


def _answer(
    session: Session,
    settings: Settings,
    row: InboundMessage,
    message: ReadMessage,
    pending: list[AccessRequest],
    incomplete: list[AccessRequest],
) -> None:
    """The received and incomplete letters to the requester, each within the hourly cap."""
    thread = {
        "in_reply_to": _bracketed(message.message_id),
        "references": [_bracketed(r) for r in message.references if r],
        "cause": f"message:{row.id}",
    }
    base = {
        "requester_name": single_line(message.from_name),
        "original_subject": message.subject or "",
    }
    letters = [
        ("received", {**base, "people": [letter_person(r) for r in pending]}, pending),
        (
            "incomplete",
            {
                **base,
                "people": [
                    {**letter_person(r), "missing": list(r.missing), "problems": dict(r.problems)}
                    for r in incomplete
                ],
            },
            incomplete,
        ),
    ]
    for kind, context, concerned in letters:
        if not concerned or not _may_answer(session, settings, row, message.from_address, kind):
            continue
        try:
            letter = outbox.enqueue(
                session, settings, kind=kind, to=[message.from_address], context=context, **thread
            )
        except outbox.InvalidRecipient as exc:
            _note(session, row, f"{_answer_label(kind, 'não enviada', 'not sent')}: {exc}")
            continue
        policy.record_auto_reply(session, message.from_address, letter.id)


def _may_answer(
    session: Session, settings: Settings, row: InboundMessage, address: str, kind: str
) -> bool:
    """Whether ``address`` may get an automatic answer now; if not, say why on the message."""
    bounce = bounced(session, address)
    if bounce is not None:
        not_sent = _answer_label(kind, "não enviada", "not sent")
        _note(
            session,
            row,
            f"{not_sent}: endereço devolvido (bounced address) {address}: {bounce.last_reason}",
        )
        return False
    capped = policy.reply_cap(session, settings.intake, address)
    if capped is not None:
        _note(session, row, f"{_answer_label(kind, 'suprimida', 'suppressed')}: {capped.reason}")
        log.warning("message %s: %s answer suppressed: %s", row.id, kind, capped.reason)
        return False
    return True


def _tell_support(
    session: Session, settings: Settings, pending: list[AccessRequest], row: InboundMessage
) -> None:
    if not pending or not settings.service.support_address:
        return
    outbox.enqueue(
        session,
        settings,
        kind="support_notice",
        to=[str(settings.service.support_address)],
        context={
            "requests": [
                {
                    **letter_person(r),
                    "id": r.id,
                    "flags": list(r.flags),
                    "requester_email": r.requester_email,
                }
                for r in pending
            ],
            "console_url": settings.service.base_url,
        },
        cause=f"message:{row.id}",
    )


def _one_line(value: str | None) -> str | None:
    return (single_line(value) or None) if value is not None else None


def _bracketed(message_id: str | None) -> str | None:
    if not message_id:
        return None
    message_id = message_id.strip()
    return message_id if message_id.startswith("<") else f"<{message_id}>"


def content_digest(raw: bytes, sender: str, subject: str) -> str:
    """The digest of a message's sender, subject and body, whatever headers each hop added.

    Line ends are made alike: one copy may come from IMAP (CRLF) and another
    from a Maildir file (LF).
    """
    end = policy.header_end(raw)
    body = raw[end:].lstrip(b"\r\n") if end is not None else b""
    digest = hashlib.sha256(f"{sender}\n{subject}\n".encode("utf-8", "replace"))
    digest.update(body.replace(b"\r\n", b"\n"))
    return digest.hexdigest()


def _earlier_copy(session: Session, row: InboundMessage) -> InboundMessage | None:
    """The first recording of the same message.

    The same Message-ID, and either the same bytes or, for a copy delivered
    again by another route (new Received lines, a new Date), the same sender,
    subject and body. A reused Message-ID on different content is a new message,
    never dropped; without a Message-ID only the same bytes are a copy.
    """
    query = select(InboundMessage).where(
        InboundMessage.outcome != "duplicate",
        InboundMessage.id != row.id,
    )
    if row.message_id is None:
        query = query.where(
            InboundMessage.message_id.is_(None), InboundMessage.sha256 == row.sha256
        )
    else:
        query = query.where(
            InboundMessage.message_id == row.message_id,
            or_(
                InboundMessage.sha256 == row.sha256,
                InboundMessage.content_sha256 == row.content_sha256,
            ),
        )
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


def _note(session: Session, row: InboundMessage, note: str) -> None:
    """Add what happened after the decision (an answer suppressed...) to the message's reason."""
    row.reason = "; ".join(part for part in (row.reason, note) if part)
    session.flush()
    log.info("message %s: %s", row.id, note)
