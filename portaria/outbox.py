"""The outbox: every email Portaria sends is queued here, then delivered with retries.

This module owns the life of an outgoing email: :func:`enqueue` writes the
letter, its recipients and its headers into an ``outbox`` row inside the
caller's transaction, and :func:`enqueue_letter` queues a letter written
elsewhere (a rule's email) with the same headers; :func:`send_due` later
delivers the due rows through a transport (SMTP, or a local Maildir when no
server is configured) and records the outcome; :func:`retry`,
:func:`unbounce` and :func:`list_outbox` serve the people who look after it.

Delivery is exactly once from the reader's point of view. The Message-ID
is fixed when the row is created and never changes, so every retry is the
same email. A crash between the server accepting a message and the commit
that marks it sent makes the next run send it again, with the same
Message-ID: mail clients and servers treat it as a duplicate of one email,
not as two.

Several instances may run ``send_due`` against one database: each run first
claims its rows by moving their ``next_attempt_at`` a lease ahead in a
committed update that only one claimant can win, then delivers.

Headers, and why (RFC 3834 for automatic mail, RFC 5322 for threading):

- ``Auto-Submitted: auto-replied`` on letters that answer a message and
  ``auto-generated`` on the rest, so well-behaved responders never answer us.
- ``In-Reply-To`` and ``References`` (the original's References followed by
  its Message-ID) so a reply lands in the requester's thread.
- ``X-Portaria-Loop: <from address>`` so intake recognises our own mail if
  it ever comes back.
- ``X-Auto-Response-Suppress: OOF, AutoReply`` because Exchange, common in
  our users' companies, ignores Auto-Submitted when deciding to send
  out-of-office notes.
- No ``Precedence``: RFC 3834 standardises Auto-Submitted and mentions
  Precedence only as an old, unstandardised hint a responder may read on
  mail it receives, never as something an automatic sender should add; and
  ``bulk`` or ``junk`` on a one-to-one welcome with a password link makes
  spam filters demote exactly the mail that must arrive. An old vacation
  program that reads only Precedence may still answer us; intake screens
  such answers as auto-replies, so no loop forms.
"""

from __future__ import annotations

import hashlib
import logging
import mailbox
import re
import smtplib
import ssl
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from email import policy
from email.errors import MessageError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from config.settings import OutboundSettings, Settings
from portaria.db import transaction, utcnow
from portaria.errors import PortariaError
from portaria.letters import compose, resolve_language
from portaria.oauth2 import AccessTokenUnavailable, read_access_token, xoauth2_response
from portaria.outbox_models import OUTBOX_STATUSES, BouncedAddress, OutboxMessage

log = logging.getLogger(__name__)

# Retry delays double from outbound.backoff_seconds up to this ceiling.
BACKOFF_CAP = timedelta(hours=6)
# Up to this share of the delay is added, so messages deferred together
# (a server outage) do not all come back in the same second.
BACKOFF_JITTER = 0.1
# How long a claimed row stays out of other runs' reach while it is delivered.
CLAIM_LEASE = timedelta(minutes=15)
# Long References chains come from strangers; keep the first and the latest.
MAX_REFERENCES = 20

# An addr-spec as RFC 5322 dot-atom, with RFC 6531 UTF-8 letters allowed.
# Quoted local parts and address literals are legal but never seen in
# requests; refusing them keeps odd addresses out of headers and envelopes.
_ATEXT = r"[\w!#$%&'*+/=?^`{|}~-]"
_LABEL = r"[^\W_](?:[\w-]*[^\W_])?"
_ADDR_SPEC = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*@{_LABEL}(?:\.{_LABEL})*")
# A msg-id: printable ASCII other than "<" and ">", between angle brackets.
_MSG_ID = re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]{1,250}>")


class OutboxError(PortariaError):
    """The outbox cannot do what was asked."""


class InvalidRecipient(OutboxError):
    """A recipient is not exactly one valid email address."""


class DeliveryError(OutboxError):
    """A transport could not deliver a message; ``permanent`` says whether to try again."""

    permanent = False


class DeliveryDeferred(DeliveryError):
    """Delivery failed for now (server down, 4xx answer): try again later."""


class DeliveryRefused(DeliveryError):
    """The server refused the message for good (5xx answer): do not try again."""

    permanent = True


@dataclass(frozen=True)
class SendReport:
    """What one :func:`send_due` run did."""

    sent: int = 0
    retried: int = 0
    failed: int = 0


class Transport(Protocol):
    """Something that delivers a built email; one is opened per :func:`send_due` run."""

    def deliver(
        self, message: EmailMessage, sender: str, recipients: Sequence[str]
    ) -> dict[str, str]:
        """Deliver; return refused recipients with the server's answer.

        Raise DeliveryDeferred or DeliveryRefused when nobody got it.
        """
        ...

    def close(self) -> None: ...


# Queueing


def check_recipient(address: str) -> str:
    """The address if it is exactly one addr-spec, without surrounding spaces."""
    if not isinstance(address, str):
        raise InvalidRecipient(f"recipient must be a string, got {address!r}")
    if "\r" in address or "\n" in address:
        raise InvalidRecipient(
            f"o endereço {address!r} tem quebra de linha (recipient contains a line break)"
        )
    candidate = address.strip()
    local, _, domain = candidate.rpartition("@")
    if (
        not _ADDR_SPEC.fullmatch(candidate)
        or len(candidate) > 254
        or len(local) > 64
        or not domain
    ):
        raise InvalidRecipient(
            f"{address!r} não é um endereço de e-mail como nome@empresa.com.br "
            "(not a single email address)"
        )
    return candidate


class RenderedLetter(Protocol):
    """A letter ready to queue: a composed ``Letter`` or a rule's rendered template."""

    @property
    def subject(self) -> str: ...

    @property
    def text(self) -> str: ...

    @property
    def html(self) -> str | None: ...


def enqueue(
    session: Session,
    settings: Settings,
    *,
    kind: str,
    to: Sequence[str],
    context: Mapping[str, Any],
    language: str | None = None,
    in_reply_to: str | None = None,
    references: Sequence[str] = (),
    cause: str | None = None,
) -> OutboxMessage:
    """Write the letter now and queue it for delivery; the caller's transaction commits it.

    Every recipient must be one valid address (InvalidRecipient otherwise,
    and nothing is queued). ``in_reply_to`` is the Message-ID of the email
    being answered and ``references`` that email's References.
    """
    # Recipients are checked before the letter is written, so a bad address
    # is reported as such even when the letter could not be written either.
    recipients = _checked_recipients(to)
    language = resolve_language(language or settings.service.language)
    row = enqueue_letter(
        session,
        settings,
        letter=compose(kind, language, context),
        to=recipients,
        kind=kind,
        language=language,
        cause=cause,
        headers={"Content-Language": language},
        in_reply_to=in_reply_to,
        references=references,
    )
    log.info(
        "outbox %s %s: queued %s letter (%s) for %d recipient(s), cause %s",
        row.id,
        row.message_id,
        kind,
        language,
        len(recipients),
        cause or "-",
    )
    return row


def enqueue_letter(
    session: Session,
    settings: Settings,
    *,
    letter: RenderedLetter,
    to: Sequence[str],
    kind: str,
    language: str,
    cause: str | None,
    headers: Mapping[str, str] | None = None,
    in_reply_to: str | None = None,
    references: Sequence[str] = (),
    now: datetime | None = None,
) -> OutboxMessage:
    """Queue an already written letter; the caller's transaction commits it.

    The row gets a new Message-ID and the headers every letter carries
    (Auto-Submitted, threading, the loop marker, the Exchange suppression),
    then ``headers`` in the order given. ``now`` is when it was created and
    is first due (default: the current time).
    """
    recipients = _checked_recipients(to)
    sender = str(settings.outbound.from_address)
    written = threading_headers(in_reply_to, references)
    written["X-Portaria-Loop"] = sender
    written["X-Auto-Response-Suppress"] = "OOF, AutoReply"
    written.update(headers or {})
    created = now or utcnow()

    row = OutboxMessage(
        message_id=new_message_id(sender),
        kind=kind,
        language=language,
        sender=sender,
        recipients=recipients,
        subject=letter.subject,
        body_text=letter.text,
        body_html=letter.html,
        headers=written,
        status="pending",
        attempts=0,
        next_attempt_at=created,
        created_at=created,
        cause=cause,
    )
    session.add(row)
    session.flush()
    return row


def _checked_recipients(to: Sequence[str]) -> list[str]:
    """Each address checked, repeats dropped; at least one."""
    if isinstance(to, str):
        # A bare string would be read letter by letter as recipients.
        raise InvalidRecipient(f"recipients must be a list of addresses, got {to!r}")
    recipients = _unique([check_recipient(address) for address in to])
    if not recipients:
        raise InvalidRecipient("a letter needs at least one recipient")
    return recipients


def new_message_id(sender: str) -> str:
    """A Message-ID that is unique and names our domain: ``<portaria.HEX@domain>``."""
    domain = sender.rpartition("@")[2] or "localhost"
    return f"<portaria.{uuid.uuid4().hex}@{domain}>"


def threading_headers(in_reply_to: str | None, references: Sequence[str]) -> dict[str, str]:
    """Auto-Submitted plus, for a reply, In-Reply-To and References (RFC 5322 3.6.4).

    Message-IDs come from strangers' headers: malformed ones are dropped,
    not copied, and a long References chain keeps its first and latest ids.
    """
    if in_reply_to is None:
        return {"Auto-Submitted": "auto-generated"}
    headers = {"Auto-Submitted": "auto-replied"}
    parent = _message_id_or_none(in_reply_to)
    if parent is None:
        log.warning("outbox: answering a message with a malformed Message-ID %r", in_reply_to)
        return headers

    chain: list[str] = []
    for item in references:
        chain.extend(_MSG_ID.findall(item or ""))
    chain = [msg_id for msg_id in _unique(chain) if msg_id != parent]
    if len(chain) >= MAX_REFERENCES:
        chain = [chain[0], *chain[-(MAX_REFERENCES - 2) :]]
    headers["In-Reply-To"] = parent
    headers["References"] = " ".join([*chain, parent])
    return headers


def _message_id_or_none(value: str) -> str | None:
    candidate = value.strip()
    if candidate and not candidate.startswith("<"):
        candidate = f"<{candidate}>"
    return candidate if _MSG_ID.fullmatch(candidate) else None


def _unique(items: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    kept = []
    for item in items:
        if item.lower() not in seen:
            seen.add(item.lower())
            kept.append(item)
    return kept


# Looking after the outbox


# Why a message named to :func:`retry` cannot go back: only failed ones can.
_NOT_RETRYABLE_PT = {"pending": "ainda está na fila", "sent": "já foi enviado"}


def retry(session: Session, ids: Sequence[int] | None = None) -> int:
    """Put failed messages (all, or those in ``ids``) back in the queue, due now.

    Attempts start again from zero; the last error stays until the next
    attempt replaces it. Returns how many were requeued. Every id named must
    be a failed message, else nothing changes and the error names each one
    that is not: a mistyped id must not pass for a retry. Does not commit.
    """
    statement = (
        update(OutboxMessage)
        .where(OutboxMessage.status == "failed")
        .values(status="pending", attempts=0, next_attempt_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if ids is not None:
        wanted = list(dict.fromkeys(ids))
        found = {
            row.id: row.status
            for row in session.execute(
                select(OutboxMessage.id, OutboxMessage.status).where(OutboxMessage.id.in_(wanted))
            )
        }
        refused = [
            f"#{i} {_NOT_RETRYABLE_PT.get(found[i], found[i])} ({found[i]})"
            if i in found
            else f"#{i} não existe (no such email)"
            for i in wanted
            if found.get(i) != "failed"
        ]
        if refused:
            raise OutboxError(
                "só e-mails com falha voltam à fila (only failed emails can be retried): "
                f"{', '.join(refused)}; veja (see) `portaria outbox list`; "
                "nada foi alterado (nothing was changed)"
            )
        statement = statement.where(OutboxMessage.id.in_(wanted))
    count = session.execute(statement).rowcount
    log.info("outbox: %d failed message(s) requeued", count)
    return count


def unbounce(session: Session, emails: Sequence[str]) -> list[str]:
    """Write to these bounced addresses again; returns them as they were recorded.

    Every address must be on the bounced list, else nothing changes and the
    error names each one that is not (or is no address at all): a typo must
    not pass for success while the real address stays blocked. Does not commit.
    """
    wanted = list(dict.fromkeys(email.strip().lower() for email in emails))
    known = set(
        session.scalars(select(BouncedAddress.email).where(BouncedAddress.email.in_(wanted)))
    )
    refused = []
    for email in wanted:
        if email in known:
            continue
        try:
            check_recipient(email)
        except InvalidRecipient:
            refused.append(f"{email!r} não é um endereço de e-mail (not an email address)")
        else:
            refused.append(f"{email} não está entre os devolvidos (is not a bounced address)")
    if refused:
        raise OutboxError(
            f"{'; '.join(refused)}; veja (see) `portaria outbox bounced`; "
            "nada foi alterado (nothing was changed)"
        )
    session.execute(delete(BouncedAddress).where(BouncedAddress.email.in_(wanted)))
    log.info("outbox: %s cleared from the bounced addresses", ", ".join(wanted))
    return wanted


def list_outbox(session: Session, status: str | None = None) -> list[OutboxMessage]:
    """Outbox rows, oldest first, optionally only those with ``status``."""
    statement = select(OutboxMessage).order_by(OutboxMessage.id)
    if status is not None:
        if status not in OUTBOX_STATUSES:
            raise OutboxError(
                f"situação de e-mail desconhecida (unknown outbox status) {status!r}; "
                f"use uma de (use one of): {', '.join(OUTBOX_STATUSES)}"
            )
        statement = statement.where(OutboxMessage.status == status)
    return list(session.scalars(statement))


# Sending


def backoff_delay(attempts: int, base_seconds: int, *, key: str) -> timedelta:
    """How long to wait after ``attempts`` failed tries: base × 2^(attempts-1), capped.

    The jitter (up to 10%) is derived from ``key`` and ``attempts`` rather
    than drawn at random, so a given message always waits the same time.
    """
    exponent = max(attempts - 1, 0)
    delay = min(base_seconds * 2.0 ** min(exponent, 32), BACKOFF_CAP.total_seconds())
    digest = hashlib.sha256(f"{key}:{attempts}".encode()).digest()
    share = int.from_bytes(digest[:4], "big") / 2**32 * BACKOFF_JITTER
    return timedelta(seconds=round(delay * (1 + share)))


def build_message(row: OutboxMessage, from_name: str) -> EmailMessage:
    """The email for a row: headers, then text and HTML as multipart/alternative."""
    # Non-ASCII addresses can only travel as UTF-8 headers (RFC 6532).
    international = not all(a.isascii() for a in (row.sender, *row.recipients))
    # 998 is RFC 5322's line limit: at 78 a long List-Unsubscribe URL, which has
    # nowhere to fold, would be rewritten as encoded words mail clients cannot follow.
    chosen = policy.SMTPUTF8 if international else policy.SMTP
    message = EmailMessage(policy=chosen.clone(max_line_length=998))
    message["From"] = _address(row.sender, from_name)
    message["To"] = [_address(address) for address in row.recipients]
    message["Subject"] = row.subject
    # The Date is when the letter was written, so every retry is byte-identical.
    message["Date"] = format_datetime(row.created_at)
    message["Message-ID"] = row.message_id
    # Quoted-printable keeps the body 7-bit, so any server can relay it.
    message.set_content(row.body_text, charset="utf-8", cte="quoted-printable")
    if row.body_html:
        message.add_alternative(
            row.body_html, subtype="html", charset="utf-8", cte="quoted-printable"
        )
    # After the body: set_content() clears Content-* headers (Content-Language).
    for name, value in (row.headers or {}).items():
        message[name] = value
    return message


def _address(addr_spec: str, display_name: str = "") -> Address:
    # Address(addr_spec=...) rejects UTF-8 local parts even under an SMTPUTF8
    # policy; built from its parts, the address is accepted and kept as is.
    local, _, domain = addr_spec.rpartition("@")
    return Address(display_name=display_name, username=local, domain=domain)


def message_bytes(message: EmailMessage, *, linesep: str = "\r\n") -> bytes:
    """The message as bytes, with its own policy and the given line ending."""
    return message.as_bytes(policy=message.policy.clone(linesep=linesep))


def needs_smtputf8(message: EmailMessage) -> bool:
    """True when the message was built with UTF-8 headers for a non-ASCII address."""
    return bool(getattr(message.policy, "utf8", False))


@dataclass(frozen=True)
class _Outgoing:
    """What a run needs of a claimed row once its session is closed."""

    id: int
    message_id: str
    attempts: int
    sender: str
    recipients: list[str]
    message: EmailMessage


def send_due(
    sessions: sessionmaker[Session],
    settings: Settings,
    *,
    now: datetime | None = None,
    limit: int = 100,
    transport: Transport | None = None,
) -> SendReport:
    """Deliver pending messages that are due, oldest first, and record each outcome.

    Each outcome is committed on its own, right after its delivery. A
    temporary failure (no connection, timeout, 4xx) schedules another try
    after :func:`backoff_delay`; a permanent one (5xx, every recipient
    refused, or ``outbound.max_attempts`` used up) marks the row failed with
    the server's answer. A crash after delivery and before that commit
    means the message is sent again later, with the same Message-ID.

    ``now`` fixes the clock for the run (tests); ``transport`` replaces the
    one from the settings and is then left open for its owner.
    """

    def clock() -> datetime:
        return now if now is not None else utcnow()

    outgoing = _claim(sessions, settings, clock(), limit)
    if not outgoing:
        return SendReport()

    own_transport = transport is None
    active = transport or open_transport(settings)
    sent = retried = failed = 0
    try:
        for item in outgoing:
            try:
                refused = active.deliver(item.message, item.sender, item.recipients)
            except DeliveryError as exc:
                if _record_failure(sessions, settings, item, exc, clock()):
                    failed += 1
                else:
                    retried += 1
            else:
                _record_sent(sessions, item, refused, clock())
                sent += 1
    finally:
        if own_transport:
            active.close()
    return SendReport(sent=sent, retried=retried, failed=failed)


def _claim(
    sessions: sessionmaker[Session], settings: Settings, now: datetime, limit: int
) -> list[_Outgoing]:
    """Take the due rows for this run, so that another run does not send them too."""
    claimed = []
    with transaction(sessions) as session:
        rows = session.scalars(
            select(OutboxMessage)
            .where(OutboxMessage.status == "pending", OutboxMessage.next_attempt_at <= now)
            .order_by(OutboxMessage.next_attempt_at, OutboxMessage.id)
            .limit(limit)
        ).all()
        for row in rows:
            # Only one claimant can move a due row past `now`; a concurrent
            # run finds it no longer due and skips it.
            won = session.execute(
                update(OutboxMessage)
                .where(
                    OutboxMessage.id == row.id,
                    OutboxMessage.status == "pending",
                    OutboxMessage.next_attempt_at <= now,
                )
                .values(next_attempt_at=now + CLAIM_LEASE)
                .execution_options(synchronize_session=False)
            ).rowcount
            if won != 1:
                continue
            if fail_if_all_bounced(session, row):
                continue
            try:
                message = build_message(row, settings.outbound.from_name)
            except (ValueError, TypeError, MessageError) as exc:
                # A row that can never become an email must not block the queue.
                row.status = "failed"
                row.last_error = f"cannot build the email: {exc}"
                log.error("outbox %s %s: %s", row.id, row.message_id, row.last_error)
                continue
            claimed.append(
                _Outgoing(
                    id=row.id,
                    message_id=row.message_id,
                    attempts=row.attempts,
                    sender=row.sender,
                    recipients=list(row.recipients),
                    message=message,
                )
            )
    return claimed


def fail_if_all_bounced(session: Session, row: OutboxMessage) -> bool:
    """Fail ``row`` unsent when every recipient is a recorded bounced address.

    Intake records the addresses our mail bounced from; writing to them
    again only earns another bounce and hurts the sender's reputation.
    """
    recipients = {address.lower() for address in row.recipients}
    if not recipients:
        return False
    bounced = set(
        session.scalars(
            select(BouncedAddress.email).where(BouncedAddress.email.in_(sorted(recipients)))
        )
    )
    if bounced != recipients:
        return False
    row.status = "failed"
    row.last_error = f"not sent: every recipient bounced earlier ({', '.join(sorted(bounced))})"
    log.warning("outbox %s %s: %s", row.id, row.message_id, row.last_error)
    return True


def _record_sent(
    sessions: sessionmaker[Session], item: _Outgoing, refused: dict[str, str], now: datetime
) -> None:
    # Recipients the server refused while others got the message: sending
    # again would duplicate it for the others, so it stays sent, with a note.
    note = "; ".join(f"{address}: {answer}" for address, answer in refused.items())
    with transaction(sessions) as session:
        row = session.get_one(OutboxMessage, item.id)
        row.status = "sent"
        row.sent_at = now
        row.attempts = item.attempts + 1
        row.last_error = f"refused: {note}" if note else None
    if note:
        log.warning("outbox %s %s: sent, but refused for %s", item.id, item.message_id, note)
    else:
        log.info(
            "outbox %s %s: sent to %d recipient(s)",
            item.id,
            item.message_id,
            len(item.recipients),
        )


def _record_failure(
    sessions: sessionmaker[Session],
    settings: Settings,
    item: _Outgoing,
    error: DeliveryError,
    now: datetime,
) -> bool:
    """Store a failed attempt; True when the row is now failed for good."""
    attempts = item.attempts + 1
    limit = settings.outbound.max_attempts
    given_up = error.permanent or attempts >= limit
    reason = str(error)
    if given_up and not error.permanent:
        reason = f"gave up after {attempts} attempts: {reason}"
    next_at = now + backoff_delay(attempts, settings.outbound.backoff_seconds, key=item.message_id)

    with transaction(sessions) as session:
        row = session.get_one(OutboxMessage, item.id)
        row.attempts = attempts
        row.last_error = reason
        if given_up:
            row.status = "failed"
        else:
            row.next_attempt_at = next_at

    if given_up:
        log.error("outbox %s %s: failed: %s", item.id, item.message_id, reason)
    else:
        log.warning(
            "outbox %s %s: deferred (attempt %d of %d) until %s: %s",
            item.id,
            item.message_id,
            attempts,
            limit,
            next_at.isoformat(timespec="seconds"),
            reason,
        )
    return given_up


# Transports


def open_transport(settings: Settings) -> Transport:
    """The transport the settings ask for; it connects lazily, on the first delivery."""
    outbound = settings.outbound
    if outbound.kind == "smtp":
        return SmtpTransport(
            outbound,
            ca_file=settings.path(outbound.ca_file) if outbound.ca_file else None,
            resolve=settings.path,
        )
    return MaildirTransport(settings.path(outbound.maildir))


class MaildirTransport:
    """Writes each message into a Maildir's ``new/`` folder, where any mail client can read it.

    The embedded default: with no SMTP server configured, outgoing mail stays
    on disk for a person (or a test) to read.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._maildir: mailbox.Maildir | None = None

    def deliver(
        self, message: EmailMessage, sender: str, recipients: Sequence[str]
    ) -> dict[str, str]:
        try:
            if self._maildir is None:
                # Maildir creates only its own folder, not missing parents.
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._maildir = mailbox.Maildir(self.path, factory=None, create=True)
            # Files on disk use the local line ending, as mail clients expect.
            key = self._maildir.add(message_bytes(message, linesep="\n"))
        except OSError as exc:
            raise DeliveryDeferred(f"cannot write to Maildir {self.path}: {exc}") from exc
        log.debug("outbox %s: written to %s as %s", message["Message-ID"], self.path, key)
        return {}

    def close(self) -> None:
        self._maildir = None


class _ConnectionLost(Exception):
    """The SMTP connection went away in the middle of a delivery."""


class SmtpTransport:
    """Delivers over one SMTP connection, opened on first use and reused for the run.

    Security is ``ssl`` (TLS from the start), ``starttls`` (upgrade, and
    refuse to go on in clear) or ``plain``; the server's certificate is
    verified against ``ca_file`` when given, else the system's trust store.
    AUTH is used when a username is set; the password is never logged. With
    ``outbound.auth = "oauth2"`` it is AUTH XOAUTH2 with an access token read
    afresh for each connection (see :mod:`portaria.oauth2`), never logged either.

    Failures to connect, to secure the connection or to log in are
    temporary for the messages: they say nothing about the messages, and
    once a person fixes the server or the settings, the queue drains. They
    are logged at error level, once per run. If the connection drops (or the
    server answers 421, closing it), it is opened again once per run and the
    message tried again; after that the run's remaining messages are deferred.
    """

    def __init__(
        self,
        outbound: OutboundSettings,
        *,
        ca_file: Path | None = None,
        resolve: Callable[[Path], Path] = Path,
    ) -> None:
        if not outbound.host:
            raise OutboxError("outbound.host is required to send over SMTP")
        self.host = outbound.host
        self.port = outbound.effective_port
        self.security = outbound.security
        self.timeout = outbound.timeout
        self.username = outbound.username
        self._password = outbound.password
        # With auth = "oauth2" a token is read at each connection, never kept.
        self._oauth2 = outbound.oauth2 if outbound.auth == "oauth2" else None
        self._resolve = resolve
        self.ca_file = ca_file
        self._client: smtplib.SMTP | None = None
        self._reconnects_left = 1
        self._broken: str | None = None
        if self.security == "plain" and self.username:
            log.warning(
                "outbound: AUTH to %s:%s without TLS sends the password in clear",
                self.host,
                self.port,
            )

    def deliver(
        self, message: EmailMessage, sender: str, recipients: Sequence[str]
    ) -> dict[str, str]:
        international = needs_smtputf8(message)
        data = message_bytes(message)
        while True:
            client = self._connection()
            try:
                return self._send(client, sender, recipients, data, international)
            except _ConnectionLost as lost:
                self._drop()
                if self._reconnects_left > 0:
                    self._reconnects_left -= 1
                    log.info(
                        "outbound: connection to %s:%s lost (%s), reconnecting",
                        self.host,
                        self.port,
                        lost,
                    )
                    continue
                self._broken = f"connection to {self.host}:{self.port} lost: {lost}"
                raise DeliveryDeferred(self._broken) from lost

    def close(self) -> None:
        if self._client is None:
            return
        try:
            self._client.quit()
        except (smtplib.SMTPException, OSError):
            self._client.close()
        self._client = None

    def _send(
        self,
        client: smtplib.SMTP,
        sender: str,
        recipients: Sequence[str],
        data: bytes,
        international: bool,
    ) -> dict[str, str]:
        """One SMTP transaction; server answers become Delivery* errors."""
        options: list[str] = []
        if international:
            if not client.has_extn("smtputf8"):
                raise DeliveryRefused(
                    f"{self.host} does not offer SMTPUTF8, needed for a non-ASCII address"
                )
            options = ["SMTPUTF8", "BODY=8BITMIME"]
        # smtplib.SMTPException derives from OSError: the specific answers
        # must be caught before the socket errors.
        try:
            refused = client.sendmail(sender, list(recipients), data, mail_options=options)
        except smtplib.SMTPRecipientsRefused as exc:
            self._forget_if_closed(client)
            answers = [
                (addr, code, _answer(code, text)) for addr, (code, text) in exc.recipients.items()
            ]
            detail = "; ".join(f"{addr}: {answer}" for addr, _, answer in answers)
            if all(500 <= code < 600 for _, code, _ in answers):
                raise DeliveryRefused(f"recipients refused: {detail}") from exc
            raise DeliveryDeferred(f"recipients refused for now: {detail}") from exc
        except smtplib.SMTPResponseException as exc:
            answer = _answer(exc.smtp_code, exc.smtp_error)
            if exc.smtp_code == 421:
                # "Service closing": the server hung up, the message is intact.
                raise _ConnectionLost(answer) from exc
            self._forget_if_closed(client)
            if 500 <= exc.smtp_code < 600:
                raise DeliveryRefused(answer) from exc
            raise DeliveryDeferred(answer) from exc
        except smtplib.SMTPNotSupportedError as exc:
            raise DeliveryRefused(f"{self.host}: {exc}") from exc
        except smtplib.SMTPServerDisconnected as exc:
            raise _ConnectionLost(_describe(exc)) from exc
        except smtplib.SMTPException as exc:
            self._forget_if_closed(client)
            raise DeliveryDeferred(f"{self.host}: {_describe(exc)}") from exc
        except OSError as exc:
            raise _ConnectionLost(_describe(exc)) from exc
        return {addr: _answer(code, text) for addr, (code, text) in refused.items()}

    def _connection(self) -> smtplib.SMTP:
        if self._client is not None:
            return self._client
        if self._broken is not None:
            # This run could not use the server already; do not hammer it.
            raise DeliveryDeferred(self._broken)
        try:
            self._client = self._connect()
        except (smtplib.SMTPException, OSError, AccessTokenUnavailable) as exc:
            self._broken = f"cannot use SMTP server {self.host}:{self.port}: {_describe(exc)}"
            log.error("outbound: %s", self._broken)
            raise DeliveryDeferred(self._broken) from exc
        return self._client

    def _connect(self) -> smtplib.SMTP:
        context = None
        if self.security != "plain":
            cafile = str(self.ca_file) if self.ca_file else None
            context = ssl.create_default_context(cafile=cafile)
        client: smtplib.SMTP
        if self.security == "ssl":
            client = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
        else:
            client = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        try:
            client.ehlo()
            if self.security == "starttls":
                # starttls() raises SMTPNotSupportedError when the server does not
                # offer it: we never fall back to sending in clear.
                client.starttls(context=context)
                client.ehlo()
            if self.username and self._oauth2 is not None:
                self._login_oauth2(client, self.username)
            elif self.username:
                password = self._password.get_secret_value() if self._password else ""
                client.login(self.username, password)
        except BaseException:
            client.close()
            raise
        log.debug("outbound: connected to %s:%s (%s)", self.host, self.port, self.security)
        return client

    def _login_oauth2(self, client: smtplib.SMTP, username: str) -> None:
        """AUTH XOAUTH2 with the initial response on the AUTH line (RFC 4954).

        On a refused token the server sends a 334 challenge holding a JSON
        error and waits for an empty line before its final 535; answering
        any challenge with an empty line is what lets that 535 arrive.
        """
        offered = client.esmtp_features.get("auth", "").upper().split()
        if "XOAUTH2" not in offered:
            raise smtplib.SMTPNotSupportedError(
                f"{self.host} does not offer AUTH XOAUTH2 (it offers: "
                f"{', '.join(offered) or 'no AUTH'}); check outbound.host and outbound.auth"
            )
        token = read_access_token(self._oauth2, self._resolve, key="outbound.oauth2")
        response = xoauth2_response(username, token)

        def answer(challenge: bytes | None = None) -> str:
            return response if challenge is None else ""

        client.auth("XOAUTH2", answer, initial_response_ok=True)

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None

    def _forget_if_closed(self, client: smtplib.SMTP) -> None:
        # smtplib closes the socket itself after some answers (421).
        if getattr(client, "sock", None) is None:
            self._client = None


def _answer(code: int, text: bytes | str) -> str:
    """A server's answer as one line: code and text."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return f"{code} {' '.join(text.split())}".strip()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPResponseException):
        return _answer(exc.smtp_code, exc.smtp_error)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
