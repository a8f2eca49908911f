"""Intake policy: limits, loop checks and the sender policy, as named stages.

This module owns the decisions that protect the intake from abuse: how big
a message, an attachment and a request may be; which messages are our own
mail or machines answering it; how many automatic answers one address may
get in an hour; and which senders may ask for access at all.

Each stage takes a read message (or a number) and the ``[intake]``
settings, and returns None when the message passes or a :class:`Verdict`
naming the rule and the reason a person will read. Receiving applies them
in order and records the verdict on the message; nothing here raises for
bad input.

Authentication-Results (RFC 8601) is believed only from our own receiving
server: any server on the way, or the sender, can add that header, and a
receiving server writes its own above everything that arrived with the
message. So only the topmost header counts, and only when it carries the
configured authserv-id. A DKIM or SPF pass counts only for a domain aligned
with the From address; otherwise a stranger could sign with a domain of
their own and write anyone's address in From.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from config.settings import MIB, IntakeSettings
from intake.models import AutoReply
from intake.reading import Attachment, ReadMessage
from intake.screening import LOOP_HEADER, automatic, is_own_message_id
from portaria.db import utcnow

log = logging.getLogger(__name__)

__all__ = [
    "AuthenticationResult",
    "AuthenticationResults",
    "ExtractionView",
    "Verdict",
    "address_matches",
    "attachment_limit",
    "authentication",
    "header_block",
    "is_own_message_id",
    "loop_check",
    "message_size",
    "parse_authentication_results",
    "people_limit",
    "record_auto_reply",
    "reply_cap",
    "sender_policy",
    "trusted_requester",
]

# How much of an oversize message is read for its headers; the rest never is.
HEADER_BLOCK_BYTES = 256 * 1024
REPLY_WINDOW = timedelta(hours=1)


@dataclass(frozen=True)
class Verdict:
    """A stage's finding against a message: which rule, and why, for a person to read."""

    rule: str
    reason: str


# Reasons shared by more than one check.
CAME_BACK = "nossa mensagem voltou (our own mail came back)"
NOT_AUTHENTICATED = "remetente não autenticado (sender not authenticated)"


def _sender(message: ReadMessage) -> str:
    return message.from_address or "sem endereço (no address)"


def _size(count: int) -> str:
    if count >= MIB:
        return f"{count} bytes ({count / MIB:.1f} MiB)"
    return f"{count} bytes ({count / 1024:.1f} KiB)"


# --------------------------------------------------------------------------
# Limits


def message_size(size: int, intake: IntakeSettings) -> Verdict | None:
    """Refuse to parse a message larger than intake.max_message_bytes."""
    limit = intake.max_message_bytes
    if size <= limit:
        return None
    return Verdict(
        "max_message_bytes",
        f"mensagem grande demais (message too large): {_size(size)}, acima de (over) "
        f"intake.max_message_bytes = {_size(limit)}; não lida (not read)",
    )


def header_end(raw: bytes) -> int | None:
    """Where the blank line after the headers starts (CRLF or LF mail); None without one."""
    ends = [end for end in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if end >= 0]
    return min(ends) if ends else None


def header_block(raw: bytes) -> bytes:
    """The start of an oversize message, enough for its headers; the body is left unread."""
    window = raw[:HEADER_BLOCK_BYTES]
    end = header_end(window)
    return window[:end] + b"\r\n\r\n" if end is not None else window


class ExtractionView(ReadMessage):
    """A read message whose attachments are only those the extraction may read."""

    def __init__(self, message: ReadMessage, attachments: list[Attachment]) -> None:
        # Share what the message already decoded (headers, parsed body).
        self.__dict__.update(vars(message))
        self._readable = attachments

    @property
    def attachments(self) -> list[Attachment]:
        return self._readable


def attachment_type(attachment: Attachment) -> str:
    """The type an attachment is allowed by: CSV by its name too, else its MIME type."""
    return "text/csv" if attachment.is_csv else attachment.content_type


def attachment_limit(
    message: ReadMessage, intake: IntakeSettings
) -> tuple[ReadMessage, Verdict | None]:
    """The message with only readable attachments, or a verdict on one that is too big.

    Attachments of other types are not read at all, so their size does not
    matter; an allowed one over the limit holds the message, because reading
    the rest would answer the requester as if it were not there.
    """
    readable: list[Attachment] = []
    for attachment in message.attachments:
        kind = attachment_type(attachment)
        if kind not in intake.attachment_types:
            log.debug(
                "%s: attachment %r (%s) not read", message.message_id, attachment.filename, kind
            )
            continue
        size = len(attachment.payload)
        if size > intake.max_attachment_bytes:
            name = repr(attachment.filename) if attachment.filename else "sem nome (no name)"
            return message, Verdict(
                "max_attachment_bytes",
                f"anexo grande demais (attachment too large): {name}, {kind}, {_size(size)}, "
                f"acima de (over) intake.max_attachment_bytes = "
                f"{_size(intake.max_attachment_bytes)}",
            )
        readable.append(attachment)
    if len(readable) == len(message.attachments):
        return message, None
    return ExtractionView(message, readable), None


def people_limit(count: int, intake: IntakeSettings) -> Verdict | None:
    """Hold a message that asks for more people than intake.max_people_per_message."""
    limit = intake.max_people_per_message
    if count <= limit:
        return None
    return Verdict(
        "max_people_per_message",
        f"pessoas demais (too many people): {count}, acima de (over) "
        f"intake.max_people_per_message = {limit}; nada entrou na fila (nothing queued)",
    )


# --------------------------------------------------------------------------
# Loops


def loop_check(message: ReadMessage, own_domain: str) -> Verdict | None:
    """Our own mail come back, or a machine answering one of our emails.

    Applies with or without the subject tag: such mail is ours to file, and
    answering it starts a loop. A person answering one of our emails (to
    complete a request) passes, and is screened like any other message.
    """
    marker = message.header(LOOP_HEADER)
    if marker is not None:
        return Verdict("own message", f"{CAME_BACK}: {LOOP_HEADER}: {marker[:60]}")
    if message.message_id and is_own_message_id(message.message_id, own_domain):
        return Verdict("own message", f"{CAME_BACK}: Message-ID <{message.message_id}>")

    answered = [
        ref
        for ref in [message.in_reply_to, *message.references]
        if ref and is_own_message_id(ref, own_domain)
    ]
    if not answered:
        return None
    found = automatic(message, answers_us=True)
    if found is None:
        return None
    return Verdict(
        "automatic reply to us",
        f"responde à nossa mensagem (answers our message) <{answered[0]}>; {found.reason}",
    )


def reply_cap(
    session: Session, intake: IntakeSettings, address: str, *, now: datetime | None = None
) -> Verdict | None:
    """Whether ``address`` may get another automatic answer this hour (the ledger says)."""
    limit = intake.auto_replies_per_hour
    if limit == 0:
        return Verdict(
            "auto_replies_per_hour",
            "respostas automáticas desligadas (automatic answers are off): "
            "intake.auto_replies_per_hour = 0",
        )
    since = (now or utcnow()) - REPLY_WINDOW
    sent = session.scalar(
        select(func.count(AutoReply.id)).where(
            AutoReply.recipient == address.lower(), AutoReply.at > since
        )
    )
    if (sent or 0) < limit:
        return None
    return Verdict(
        "auto_replies_per_hour",
        f"limite de respostas automáticas atingido (automatic answer limit reached): "
        f"{address}, {sent} na última hora (in the last hour); "
        f"intake.auto_replies_per_hour = {limit}",
    )


def record_auto_reply(session: Session, address: str, outbox_id: int | None) -> AutoReply:
    """Write one automatic answer to ``address`` in the ledger behind the hourly cap."""
    entry = AutoReply(recipient=address.lower(), at=utcnow(), outbox_id=outbox_id)
    session.add(entry)
    session.flush()
    return entry


# --------------------------------------------------------------------------
# Sender policy


def address_matches(address: str, entries: list[str]) -> bool:
    """Whether ``address`` is one of ``entries``: an address, or a domain or its subdomain."""
    address = address.strip().lower()
    if "@" not in address:
        return False
    domain = address.rpartition("@")[2]
    for entry in entries:
        if "@" in entry:
            if address == entry:
                return True
        elif domain == entry or domain.endswith("." + entry):
            return True
    return False


def allowed_requester(message: ReadMessage, intake: IntakeSettings) -> Verdict | None:
    """Only the configured addresses and domains may ask (everyone when none are)."""
    if not intake.allowed_requesters:
        return None
    if address_matches(message.from_address, intake.allowed_requesters):
        return None
    return Verdict(
        "allowed_requesters",
        f"remetente não permitido (not an allowed requester): {_sender(message)}; "
        "veja (see) intake.allowed_requesters",
    )


@dataclass(frozen=True)
class AuthenticationResult:
    """One ``method=result`` of an Authentication-Results header, with its properties."""

    method: str
    result: str
    properties: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AuthenticationResults:
    authserv_id: str
    results: tuple[AuthenticationResult, ...]


_RESINFO_TOKEN = re.compile(r"([A-Za-z0-9_.-]+)(?:/\d+)?\s*=\s*(\"(?:[^\"\\]|\\.)*\"|[^\s\";]+)")


def _without_comments(value: str) -> str:
    """The header value without its (possibly nested) comments, quoted strings kept."""
    kept: list[str] = []
    depth = 0
    quoted = False
    escaped = False
    for char in value:
        if escaped:
            escaped = False
            if depth == 0:
                kept.append(char)
            continue
        if char == "\\":
            escaped = True
            if depth == 0:
                kept.append(char)
            continue
        if quoted:
            quoted = char != '"'
            kept.append(char)
        elif char == '"' and depth == 0:
            quoted = True
            kept.append(char)
        elif char == "(":
            depth += 1
        elif char == ")" and depth > 0:
            depth -= 1
        elif depth == 0:
            kept.append(char)
    return "".join(kept)


def _split_outside_quotes(value: str) -> list[str]:
    return re.split(r";(?=(?:[^\"]*\"[^\"]*\")*[^\"]*$)", value)


def parse_authentication_results(value: str) -> AuthenticationResults | None:
    """Read one Authentication-Results value (RFC 8601 2.2); None when it has no authserv-id."""
    parts = _split_outside_quotes(_without_comments(value))
    head = parts[0].split()
    if not head:
        return None
    results = []
    for part in parts[1:]:
        tokens = _RESINFO_TOKEN.findall(part)
        if not tokens:
            continue
        (method, result), *rest = tokens
        properties = {
            key.lower(): raw.strip('"').lower() for key, raw in rest if key.lower() != "reason"
        }
        results.append(AuthenticationResult(method.lower(), result.lower(), properties))
    return AuthenticationResults(head[0].lower(), tuple(results))


def _aligned(domain: str, from_domain: str) -> bool:
    # Relaxed alignment (RFC 7489 3.1): the same domain or one under the other.
    domain = domain.strip().lower().rstrip(".")
    if not domain or not from_domain:
        return False
    return (
        domain == from_domain
        or from_domain.endswith("." + domain)
        or domain.endswith("." + from_domain)
    )


def _domain_of(value: str) -> str:
    return value.rpartition("@")[2]


def _counts(result: AuthenticationResult, from_domain: str) -> bool:
    """A pass that vouches for the From domain."""
    if result.result != "pass":
        return False
    if result.method == "dmarc" and "header.from" not in result.properties:
        return True  # DMARC is evaluated for the From domain itself
    if result.method not in ("dmarc", "dkim", "spf"):
        return False
    # An explicit domain must agree with the From domain.
    return _aligned(_vouched_domain(result), from_domain)


def authentication(message: ReadMessage, intake: IntakeSettings) -> Verdict | None:
    """Our receiving server's topmost Authentication-Results must vouch for the sender."""
    required = intake.require_authentication
    if not required:
        return None
    trusted = intake.authserv_id or ""
    wanted = _wanted(required)
    values = message.headers("Authentication-Results")
    if not values:
        return Verdict(
            "authentication",
            f"{NOT_AUTHENTICATED}: Authentication-Results: nenhum de (none from) {trusted}; "
            f"{wanted}",
        )
    top = parse_authentication_results(values[0])
    if top is None or top.authserv_id != trusted:
        found = top.authserv_id if top else "vazio (empty)"
        return Verdict(
            "authentication",
            f"{NOT_AUTHENTICATED}: Authentication-Results: o do topo é de "
            f"(the topmost is from) {found}, não do nosso servidor (not from our server) "
            f"{trusted}; {wanted}",
        )
    from_domain = _domain_of(message.from_address)
    for result in top.results:
        if result.method in required and _counts(result, from_domain):
            return None
    seen = ", ".join(_result_shown(r) for r in top.results if r.method in ("dmarc", "dkim", "spf"))
    return Verdict(
        "authentication",
        f"{NOT_AUTHENTICATED}: {_sender(message)}; {trusted} diz (says) "
        f"{seen or 'nada (nothing)'}; {_wanted(required, for_sender=True)}",
    )


def _vouched_domain(result: AuthenticationResult) -> str:
    """The domain a result speaks for, as `_counts` aligns it with the From domain."""
    props = result.properties
    if result.method == "dmarc":
        return props.get("header.from", "")
    if result.method == "dkim":
        return props.get("header.d") or _domain_of(props.get("header.i", ""))
    return _domain_of(props.get("smtp.mailfrom", ""))


def _result_shown(result: AuthenticationResult) -> str:
    """'dkim=pass para (for) evil.test': a pass for another domain says so."""
    domain = _vouched_domain(result)
    shown = f"{result.method}={result.result}"
    return f"{shown} para (for) {domain}" if domain else shown


def _wanted(required: Sequence[str], *, for_sender: bool = False) -> str:
    """What would have passed: 'exigido (required): dmarc=pass', or one of several."""
    passes = ", ".join(f"{method}=pass" for method in required)
    several = len(required) > 1
    pt = "exigido um destes" if several else "exigido"
    en = "one of these required" if several else "required"
    if for_sender:
        # A pass counts only for the From address's domain (alignment).
        pt, en = f"{pt} para o domínio do remetente", f"{en} for the sender's domain"
    return f"{pt} ({en}): {passes}"


def plain_sender(message: ReadMessage, intake: IntakeSettings) -> Verdict | None:
    """The From field must name one sender plainly; whatever the other checks say."""
    doubts = message.sender_doubts
    if not doubts:
        return None
    return Verdict(
        "plain_sender",
        f"remetente incerto (sender unclear): {'; '.join(doubts)}; "
        "uma pessoa deve conferir quem enviou (a person must check who sent it)",
    )


# The sender policy, in order; every failing check is reported.
SENDER_CHECKS = (plain_sender, allowed_requester, authentication)


def sender_policy(message: ReadMessage, intake: IntakeSettings) -> list[Verdict]:
    """Every sender-policy check the message fails (none: it may ask for access)."""
    return [verdict for check in SENDER_CHECKS if (verdict := check(message, intake))]


def trusted_requester(message: ReadMessage, intake: IntakeSettings) -> bool:
    """Whether the sender's Comum requests may be approved without a person.

    Only with authentication required and passed: settings refuse a trusted
    list without it, and this checks again so a forged From never suffices.
    """
    if not intake.trusted_requesters or not intake.require_authentication:
        return False
    if authentication(message, intake) is not None:
        return False
    return address_matches(message.from_address, intake.trusted_requesters)
