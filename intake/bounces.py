"""Bounces: delivery reports about our own mail, and the addresses that bounced.

This module owns reading a delivery report and recording, in
:class:`BouncedAddress`, each address one of our emails could not reach.
The outbox then stops writing to those addresses, and intake stops answering
them.

Reports come in two shapes. The standard one (RFC 3464) is a
``multipart/report`` whose ``message/delivery-status`` part has one block
per recipient, with ``Final-Recipient``/``Original-Recipient``, ``Action``
and ``Status``. Older servers (qmail, Exim, some Exchange and Yahoo setups)
write plain text instead; their addresses are read from the text before the
returned copy of the message, and from ``X-Failed-Recipients``.

Anyone can send a message that looks like a bounce. So a report is acted on
only when it names the Message-ID of an email in our outbox, and only the
addresses that email was sent to are recorded: a forged report cannot mark
an address we never wrote to, and it would need our random Message-ID to
mark one we did. Reports that only say delivery is delayed record nothing.
"""

from __future__ import annotations

import email
import logging
import re
import unicodedata
from dataclasses import dataclass, field
from email import policy
from email.message import Message

from sqlalchemy import select
from sqlalchemy.orm import Session

from intake.reading import ReadMessage, decode_text, html_to_text
from portaria.db import utcnow
from portaria.outbox_models import BouncedAddress, OutboxMessage

log = logging.getLogger(__name__)

__all__ = [
    "DeliveryReport",
    "FailedRecipient",
    "bounced",
    "looks_like_delivery_report",
    "read_report",
    "record_bounces",
]

# Local parts of the senders of delivery reports.
REPORT_SENDERS = frozenset(
    {"mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon", "mail.daemon"}
)
# Subject prefixes (folded: lower case, no accents) of delivery failures.
REPORT_SUBJECTS = (
    "undeliverable",
    "undelivered mail",
    "undeliverable mail",
    "returned mail",
    "failure notice",
    "delivery status notification",
    "delivery failure",
    "mail delivery failed",
    "mail delivery failure",
    "mail delivery system",
    "message not delivered",
    "delivery notification",
    "nondeliverable",
    "nao e possivel entregar",
    "nao entregue",
    "falha na entrega",
    "mensagem nao entregue",
)
# Phrases of reports that only warn of a delay; the server is still trying.
DELAY_PHRASES = (
    "delivery delayed",
    "delivery has been delayed",
    "has not yet been delivered",
    "not been delivered yet",
    "will continue trying",
    "will keep trying",
    "still trying",
    "warning: message",
    "this is a warning",
    "delivery is delayed",
    "entrega atrasada",
    "ainda nao foi entregue",
)
# Lines after which a text report quotes the message it returns; addresses
# below them are the original's headers, not the failed recipients.
RETURNED_COPY_MARKERS = (
    "--- below this line is a copy of the message",
    "------ this is a copy of the message",
    "--- original message follows",
    "original message follows",
    "----- original message -----",
    "-----original message-----",
    "--- the header of the original message",
    "----- transcript of session follows",
    "return-path:",
    "received: from",
)
# The most of a report's text that is searched; reports are short.
MAX_REPORT_TEXT = 64 * 1024
# How much of a server's answer is kept for a person to read.
MAX_DIAGNOSTIC = 300

_ADDRESS = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
# An enhanced status code (RFC 3463), or a bare SMTP reply code from older servers.
_STATUS = re.compile(r"\b([245])(?:\.\d{1,3}\.\d{1,3}|\d\d)\b")


@dataclass(frozen=True)
class FailedRecipient:
    """One address a report says could not be reached, with the server's words."""

    email: str
    status: str = ""
    diagnostic: str = ""


@dataclass
class DeliveryReport:
    """What a delivery report says: who failed, who is only delayed, about which email.

    ``form`` is ``delivery-status`` (RFC 3464), ``x-failed-recipients`` or
    ``text``; ``message_ids`` are our Message-IDs it names, with brackets.
    """

    form: str
    failed: list[FailedRecipient] = field(default_factory=list)
    delayed: list[str] = field(default_factory=list)
    message_ids: list[str] = field(default_factory=list)


def looks_like_delivery_report(message: ReadMessage) -> bool:
    """Whether the headers say delivery report; read receipts and complaints are not."""
    content_type = (message.header("Content-Type") or "").lower()
    if content_type.startswith("multipart/report"):
        # RFC 6522: report-type says which report; without it, assume delivery.
        kind = re.search(r"report-type\s*=\s*\"?([\w-]+)", content_type)
        return kind is None or kind.group(1) == "delivery-status"
    if message.header("X-Failed-Recipients"):
        return True
    if message.from_address.partition("@")[0] in REPORT_SENDERS:
        return True
    subject = _fold(message.subject).lstrip(" [")
    return subject.startswith(REPORT_SUBJECTS)


def read_report(raw: bytes, own_domain: str) -> DeliveryReport:
    """Read who failed from a report, and which of our Message-IDs it names."""
    # compat32 is the lenient parser: policy.default fails on the address
    # groups some servers write in delivery-status blocks.
    parsed = email.message_from_bytes(raw, policy=policy.compat32)
    status_parts = [
        part for part in parsed.walk() if part.get_content_type() == "message/delivery-status"
    ]
    report = DeliveryReport("delivery-status" if status_parts else "text")
    if status_parts:
        for part in status_parts:
            _read_status_blocks(part, report)
    if not report.failed and not report.delayed:
        # A status part the parser could not split, or none: read the text.
        _read_text(parsed, report)

    for value in parsed.get_all("X-Failed-Recipients") or []:
        if report.form == "text":
            report.form = "x-failed-recipients"
        for address in _ADDRESS.findall(str(value)):
            _add_failed(report, FailedRecipient(address.lower()))

    report.message_ids = _our_message_ids(raw, parsed, own_domain)
    return report


def record_bounces(session: Session, message: ReadMessage, own_domain: str) -> str | None:
    """Record what a report about our mail says; return the reason, or None if not ours.

    None means the message is not a delivery report about an email in our
    outbox; it is then screened like any other message.
    """
    if not looks_like_delivery_report(message):
        return None
    try:
        report = read_report(message.raw, own_domain)
    except Exception:  # a report we cannot read is screened like any other message
        log.warning("%s: delivery report could not be read", message.message_id, exc_info=True)
        return None
    if not report.message_ids:
        return None
    rows = list(
        session.scalars(
            select(OutboxMessage).where(OutboxMessage.message_id.in_(report.message_ids))
        )
    )
    if not rows:
        return None

    about = ", ".join(row.message_id for row in rows)
    report_about = (
        f"relatório de entrega da nossa mensagem (delivery report about our message) {about}"
    )
    sent_to = {address.lower() for row in rows for address in row.recipients}
    ours = [failed for failed in report.failed if failed.email in sent_to]
    strangers = sorted({failed.email for failed in report.failed} - sent_to)
    if strangers:
        log.info(
            "%s: report names %s, not recipients of %s; not recorded",
            message.message_id,
            ", ".join(strangers),
            about,
        )
    if not ours:
        if report.delayed or not report.failed:
            return f"{report_about}; sem falha, nada registrado (no failure, nothing recorded)"
        return f"{report_about}; nenhum destinatário dela falhou (no recipient of it failed)"

    now = utcnow()
    for failed in ours:
        detail = " ".join(part for part in (failed.status, failed.diagnostic) if part)
        reason = f"{detail or 'devolvida (bounced)'}; nossa mensagem (our message) {about}"
        reason = reason[:MAX_DIAGNOSTIC]
        known = session.get(BouncedAddress, failed.email)
        if known is None:
            session.add(
                BouncedAddress(
                    email=failed.email, first_at=now, last_at=now, bounces=1, last_reason=reason
                )
            )
        else:
            known.bounces += 1
            known.last_at = now
            known.last_reason = reason
        log.info("%s: %s bounced: %s", message.message_id, failed.email, reason)
    session.flush()
    listed = ", ".join(
        f"{failed.email} ({failed.status})" if failed.status else failed.email for failed in ours
    )
    return f"{report_about}; devolvida (bounced): {listed}"


def bounced(session: Session, address: str) -> BouncedAddress | None:
    """The bounce record of ``address``, if our mail ever bounced from it."""
    return session.get(BouncedAddress, address.strip().lower())


# Reading the two shapes of report


def _read_status_blocks(part: Message, report: DeliveryReport) -> None:
    """Per-recipient blocks of a message/delivery-status part (RFC 3464 2.3)."""
    blocks = part.get_payload()
    if not isinstance(blocks, list):
        # Some servers leave out the blank line between blocks, or the parser
        # saw text: read the fields from the text, one block per Final-Recipient.
        blocks = [_fields_block(chunk) for chunk in _split_blocks(str(blocks))]
    for block in blocks:
        if not isinstance(block, Message):
            continue
        candidates = [
            _address_in(block.get(name))
            for name in ("Original-Recipient", "Final-Recipient", "X-Actual-Recipient")
        ]
        addresses = list(dict.fromkeys(a for a in candidates if a))
        if not addresses:
            continue
        action = str(block.get("Action") or "").strip().lower()
        status_match = _STATUS.search(str(block.get("Status") or ""))
        status = status_match.group(0) if status_match else ""
        diagnostic = " ".join(str(block.get("Diagnostic-Code") or "").split())
        diagnostic = diagnostic.partition(";")[2].strip() or diagnostic
        # "failure" is not RFC 3464, but some servers write it.
        if action.startswith("fail") or (not action and status.startswith("5")):
            for address in addresses:
                _add_failed(report, FailedRecipient(address, status, diagnostic[:200]))
        elif action == "delayed" or status.startswith("4"):
            report.delayed.extend(addresses)


def _split_blocks(text: str) -> list[str]:
    return [chunk for chunk in re.split(r"(?im)^(?=final-recipient\s*:)", text) if chunk.strip()]


def _fields_block(text: str) -> Message:
    return email.message_from_string(text.strip() + "\n\n", policy=policy.compat32)


def _read_text(parsed: Message, report: DeliveryReport) -> None:
    """Addresses from a text report: before the returned copy, unless it only warns."""
    text = _report_text(parsed)
    folded = _fold(text)
    cut = min(
        (index for marker in RETURNED_COPY_MARKERS if (index := folded.find(marker)) > 0),
        default=len(text),
    )
    addresses = [address.lower() for address in _ADDRESS.findall(text[:cut])]
    if any(phrase in folded[:cut] for phrase in DELAY_PHRASES):
        report.delayed.extend(dict.fromkeys(addresses))
        return
    status = _STATUS.search(text[:cut])
    code = status.group(0) if status and status.group(1) == "5" else ""
    for address in dict.fromkeys(addresses):
        _add_failed(report, FailedRecipient(address, code))


def _report_text(parsed: Message) -> str:
    """The first text part (HTML as text), the returned message's parts excepted."""
    for wanted in ("text/plain", "text/html"):
        for part in _report_parts(parsed):
            if part.get_content_type() != wanted:
                continue
            payload = part.get_payload(decode=True)
            if not isinstance(payload, bytes):
                continue
            text = decode_text(payload[:MAX_REPORT_TEXT], part.get_content_charset())
            return html_to_text(text) if wanted == "text/html" else text
    return ""


def _report_parts(parsed: Message) -> list[Message]:
    """Leaf parts of the report itself, not of a message it returns."""
    if not parsed.is_multipart():
        return [parsed]
    parts: list[Message] = []
    for part in parsed.get_payload():
        if not isinstance(part, Message) or part.get_content_type() == "message/rfc822":
            continue
        parts.extend(_report_parts(part) if part.is_multipart() else [part])
    return parts


def _our_message_ids(raw: bytes, parsed: Message, own_domain: str) -> list[str]:
    """Our Message-IDs anywhere in the report: headers, returned copy, encoded parts."""
    pattern = re.compile(
        rb"<?(portaria\.[0-9a-f]{32}@" + re.escape(own_domain.encode("ascii", "ignore")) + rb")>?",
        re.IGNORECASE,
    )
    found = [match.group(1) for match in pattern.finditer(raw)]
    for part in parsed.walk():
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            found.extend(match.group(1) for match in pattern.finditer(payload))
    ids = [b"<" + value.lower() + b">" for value in found]
    return [value.decode("ascii") for value in dict.fromkeys(ids)]


def _address_in(value: object) -> str | None:
    """The address of an address-type field: "rfc822; ana@x" or "<ana@x>"."""
    if value is None:
        return None
    match = _ADDRESS.search(str(value).rpartition(";")[2] or str(value))
    return match.group(0).lower() if match else None


def _add_failed(report: DeliveryReport, failed: FailedRecipient) -> None:
    if all(known.email != failed.email for known in report.failed):
        report.failed.append(failed)


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(char for char in decomposed if not unicodedata.combining(char))
