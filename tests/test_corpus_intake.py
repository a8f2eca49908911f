"""The shared corpus of real-world mail through the poller, over IMAP and Maildir.

Every complete message of ../shared/corpus (see its MANIFEST.md) is
delivered twice into one inbox: as it is, and as a tagged copy with
"#ACESSO" added at the end of its Subject (a Subject line added when it
has none). Most of the corpus is untagged, so as it is it only proves that
intake leaves such mail alone; the tagged copies go through screening and
extraction, and so prove that bounces, auto-replies and bulk mail that
happen to carry the tag (a vacation reply to one of our answers, a bounce
that quotes a request's subject) are never answered.

After one poll, for each transport:

- every delivered message has exactly one recorded row with a known outcome,
  and no exception escaped the poller or a receiving stage;
- each message sits in the folder its row names (Processed, NeedsAttention,
  or the inbox for mail left alone), and the folders together hold exactly
  the messages delivered;
- no letter is queued for an automatic message or to an address that only
  ever sent automatic mail;
- a second poll finds nothing to do.

The corpus sits next to the repository and is never copied into it; the
test skips only when that folder is absent.
"""

from __future__ import annotations

import hashlib
import mailbox
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from config.settings import Settings
from intake.models import InboundMessage
from intake.poller import poll_once
from portaria.outbox_models import OutboxMessage
from portaria.wiring import open_service
from tests.test_corpus_reading import complete_messages

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"

TAG = b"#ACESSO"
INBOX = "INBOX"

# The folder each outcome's message must end in (DESIGN.md, "Commit, then move").
# A duplicate follows the message it copies.
FOLDER_OF_OUTCOME = {
    "request": "Processed",
    "ignored": "Processed",
    "incomplete": "NeedsAttention",
    "held": "NeedsAttention",
    "unreadable": "NeedsAttention",
    "left": INBOX,
}
OUTCOMES = frozenset({*FOLDER_OF_OUTCOME, "duplicate"})

# Automatic mail by where it comes from: bounce and report collections, and
# the auto-replies the MANIFEST names. Every message intake itself ignored
# (it only ignores tagged mail that it judged automatic, looping or ours) is
# counted as automatic too.
AUTOMATIC_FOLDERS = (
    "flufl-bounce/",
    "sisimai-set-of-emails/bsd/",
    "sisimai-set-of-emails/dos/",
    "sisimai-set-of-emails/mac/",
    "flanker/bounce/",
    "flanker/complaints/",
    "enmime/dsn/",
    "mikel-mail/multipart_report_emails/",
    "imap_tools/multipart_report_emails/",
)
AUTOMATIC_FILES = frozenset(
    {
        "discourse/auto_reply.eml",
        "glpi/27-autoreply.eml",
        "zammad/mail089.box",  # ticket notifications sent with Precedence: bulk
        "zammad/mail090.box",
        "mimekit/messages/bounce.txt",
        "mimekit/messages/delivery-status.txt",
        "mimekit/messages/delivery-status2.txt",
        "mimekit/messages/delivery-status.anonymized.eml",
        "mimekit/messages/delivery-status-multiple-blank-lines.txt",
        "mimekit/messages/delivery-status-no-blank-line.txt",
        "mimekit/messages/disposition-notification.txt",
        "mimekit/messages/disposition-notification.anonymized.eml",
        "mimekit/messages/feedback-report.txt",
    }
)

# Tagged copies of real bounces that intake does not yet recognise as
# automatic, so they are answered as incomplete requests. This list may only
# shrink; the test fails on any other automatic message answered.
# - simple_20: a French/English "could not be delivered" notice sent from
#   an ordinary-looking address, with "(delivery failed)" at the end of its
#   subject, a plain text/plain body and no Auto-Submitted or null Return-Path.
# - lhost-kddi-01: a Japanese carrier's "mail error" notice (Subject
#   メールエラー通知) from no-reply@..., the original attached as message/rfc822.
ANSWERED_BOUNCES_KNOWN: frozenset[str] = frozenset()

_LINE = re.compile(rb"[^\r\n]*(?:\r\n|\n|\r|$)")

pytestmark = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"shared corpus not found at {CORPUS}")


def with_tag(raw: bytes) -> bytes:
    """The message with the tag at the end of its first Subject field.

    Folded subjects get it after their last continuation line; a message
    without a Subject gets one, after an mbox "From " line if it has one.
    Line ends (CRLF, LF or CR alone) are the message's own.
    """
    subject_end: int | None = None
    in_subject = False
    first_line_end = 0
    for number, match in enumerate(_LINE.finditer(raw)):
        content = match.group().rstrip(b"\r\n")
        if number == 0:
            first_line_end = match.end()
        if not content:
            break  # the blank line that ends the header block
        if content[:1] in (b" ", b"\t"):
            if in_subject:
                subject_end = match.start() + len(content)
            continue
        if in_subject:
            break
        name, colon, _ = content.partition(b":")
        if colon and name.strip().lower() == b"subject":
            in_subject = True
            subject_end = match.start() + len(content)
    if subject_end is not None:
        return raw[:subject_end] + b" " + TAG + raw[subject_end:]
    line_end = re.search(rb"\r\n|\n|\r", raw)
    newline = line_end.group() if line_end else b"\n"
    at = first_line_end if raw.startswith(b"From ") else 0
    return raw[:at] + b"Subject: " + TAG + newline + raw[at:]


@dataclass(frozen=True)
class Delivered:
    """One message put into the inbox: which corpus file, and whether tagged."""

    relative: str
    tagged: bool

    @property
    def automatic(self) -> bool:
        return self.relative.startswith(AUTOMATIC_FOLDERS) or self.relative in AUTOMATIC_FILES

    def __str__(self) -> str:
        return f"{self.relative}{' (tagged)' if self.tagged else ''}"


@dataclass
class Inbox:
    """A transport under test: how to deliver, how the poller reads, what each folder holds."""

    settings: Settings
    deliver: Callable[[list[bytes]], None]
    folders: Callable[[], dict[str, list[bytes]]]


def corpus_messages() -> tuple[list[Delivered], list[bytes]]:
    delivered: list[Delivered] = []
    raws: list[bytes] = []
    for tagged in (False, True):
        for path in complete_messages():
            raw = path.read_bytes()
            delivered.append(Delivered(path.relative_to(CORPUS).as_posix(), tagged))
            raws.append(with_tag(raw) if tagged else raw)
    return delivered, raws


@pytest.fixture(params=[pytest.param("imap", marks=pytest.mark.imap), "maildir"])
def inbox(request: pytest.FixtureRequest, settings: Settings) -> Inbox:
    if request.param == "imap":
        account = request.getfixturevalue("imap_account")
        imap_settings = settings.model_copy(
            update={"mailbox": account.mailbox_settings(batch_size=500)}
        )

        def imap_folders() -> dict[str, list[bytes]]:
            return {name: account.messages(name) for name in account.folders()}

        # MULTIAPPEND in batches: UIDs follow the order of delivery.
        return Inbox(imap_settings, account.append, imap_folders)

    root = settings.path(settings.mailbox.maildir)

    def write_files(raws: list[bytes]) -> None:
        for subdir in ("new", "cur", "tmp"):
            (root / subdir).mkdir(parents=True, exist_ok=True)
        # Exact bytes, named so that keys sort in the order of delivery.
        for number, raw in enumerate(raws):
            (root / "new" / f"{number:05d}.corpus").write_bytes(raw)

    def maildir_folders() -> dict[str, list[bytes]]:
        box = mailbox.Maildir(root, create=False)
        found = {INBOX: [box.get_bytes(key) for key in box.iterkeys()]}
        for name in box.list_folders():
            folder = box.get_folder(name)
            found[name] = [folder.get_bytes(key) for key in folder.iterkeys()]
        return found

    return Inbox(settings, write_files, maildir_folders)


def test_every_corpus_message_is_recorded_filed_and_never_answered_if_automatic(
    inbox: Inbox,
) -> None:
    delivered, raws = corpus_messages()
    assert len(delivered) > 2000
    inbox.deliver(raws)
    service = open_service(inbox.settings, migrate=True)

    report = poll_once(service.sessions, inbox.settings)
    again = poll_once(service.sessions, inbox.settings)

    with service.sessions() as session:
        rows = list(session.scalars(select(InboundMessage)))
        letters = list(session.scalars(select(OutboxMessage)))

    # One row per delivered message, keys in the order of delivery.
    assert len(rows) == len(delivered) == report.fetched
    assert (again.fetched, again.moved) == (0, 0)
    ordered = sorted(rows, key=lambda row: _delivery_order(row.mailbox_key))
    source = {row.id: item for row, item in zip(ordered, delivered, strict=True)}

    by_outcome = Counter(row.outcome for row in rows)
    print(f"corpus via {inbox.settings.mailbox.kind}: {len(rows)} messages")
    for tagged in (False, True):
        counts = Counter(row.outcome for row in rows if source[row.id].tagged is tagged)
        label = "tagged copies" if tagged else "as delivered"
        print(f"  {label}: " + ", ".join(f"{n} {o}" for o, n in sorted(counts.items())))

    problems = [
        f"{source[row.id]}: outcome {row.outcome!r}" for row in rows if row.outcome not in OUTCOMES
    ] + [
        # The poller's own record of an exception a receiving stage raised.
        f"{source[row.id]}: a receiving stage raised: {row.reason}"
        for row in rows
        if row.reason.startswith("erro interno ao ler (internal error while reading)")
    ]
    assert not problems, "\n".join(problems)
    assert sum(by_outcome.values()) == len(delivered)

    _assert_each_message_in_its_folder(rows, source, inbox.folders())
    _assert_automatic_mail_unanswered(rows, source, letters)


def _delivery_order(key: str) -> tuple[int, str]:
    # IMAP keys are "UIDVALIDITY:UID"; the Maildir keys here are "NNNNN.corpus".
    head, _, tail = key.partition(":")
    return (int(tail), "") if tail else (int(head.split(".")[0]), key)


def _assert_each_message_in_its_folder(
    rows: list[InboundMessage], source: dict[int, Delivered], folders: dict[str, list[bytes]]
) -> None:
    by_id = {row.id: row for row in rows}
    # A copy is known by its bytes or, delivered again another way, by its content.
    original = {(row.message_id, row.sha256): row for row in rows if row.outcome != "duplicate"}
    original.update(
        ((row.message_id, row.content_sha256), row)
        for row in reversed(rows)
        if row.outcome != "duplicate"
    )
    expected: Counter[tuple[str, str]] = Counter()
    wrong: list[str] = []
    for row in rows:
        decided = row
        if row.outcome == "duplicate":
            decided = original.get(
                (row.message_id, row.sha256),
                original.get((row.message_id, row.content_sha256), row),
            )
        folder = FOLDER_OF_OUTCOME.get(decided.outcome, "?")
        named = {"processed": "Processed", "attention": "NeedsAttention", None: INBOX}
        if named.get(row.destination, "?") != folder:
            wrong.append(f"{source[row.id]}: {row.outcome} but destination {row.destination}")
        if row.destination is not None and row.moved_at is None:
            wrong.append(f"{source[row.id]}: never moved to {row.destination}")
        expected[(row.sha256, folder)] += 1
    assert not wrong, "\n".join(wrong)

    found = Counter(
        (hashlib.sha256(raw).hexdigest(), name)
        for name, messages in folders.items()
        for raw in messages
    )
    assert sum(found.values()) == len(rows), f"{sum(found.values())} in folders, {len(rows)} rows"
    missing = expected - found
    extra = found - expected
    named_missing = [
        f"{source[row.id]} ({row.outcome}) not in {folder}"
        for (sha, folder), _ in missing.items()
        for row in by_id.values()
        if row.sha256 == sha
    ]
    assert not missing and not extra, "\n".join(named_missing) + f"\nunexpected: {extra}"


def _assert_automatic_mail_unanswered(
    rows: list[InboundMessage], source: dict[int, Delivered], letters: list[OutboxMessage]
) -> None:
    automatic = {row.id for row in rows if source[row.id].automatic or row.outcome == "ignored"}
    people = {row.sender for row in rows if row.id not in automatic and row.sender}
    machines = {row.sender for row in rows if row.id in automatic and row.sender} - people
    assert automatic, "no automatic mail recognised: the corpus or the screening changed"

    answered: dict[str, str] = {}
    for letter in letters:
        cause_kind, _, cause_id = (letter.cause or "").partition(":")
        if cause_kind == "message" and int(cause_id) in automatic:
            answered[source[int(cause_id)].relative] = f"{letter.kind} to {letter.recipients}"
        for address in set(letter.recipients) & machines:
            for row in rows:
                if row.sender == address and row.id in automatic:
                    answered[source[row.id].relative] = f"{letter.kind} to {address}"
    unexpected = {
        path: what for path, what in answered.items() if path not in ANSWERED_BOUNCES_KNOWN
    }
    print(f"  automatic: {len(automatic)} messages, answered: {sorted(answered)}")
    assert not unexpected, "automatic mail answered:\n" + "\n".join(
        f"{path}: {what}" for path, what in sorted(unexpected.items())
    )
