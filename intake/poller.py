"""The poller: fetch new messages in batches, receive them, commit, then move them.

Order matters for "nothing lost, nothing done twice": a batch's rows are
committed before any of its messages leaves the inbox, and a move still owed
from an earlier run (the process stopped between commit and move) is made at
the start of the next poll. A message whose key is already recorded is never
received again.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings
from intake.models import InboundMessage, MailboxState
from intake.receiving import ATTENTION, PROCESSED, receive
from intake.sources import MailboxError, MailboxSource, open_source
from portaria.db import transaction, utcnow

log = logging.getLogger(__name__)


@dataclass
class PollReport:
    """What one poll did, by outcome."""

    mailbox: str
    fetched: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    moved: int = 0

    def summary(self) -> str:
        counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(self.outcomes.items()))
        return (
            f"{self.fetched} new message(s){': ' + counts if counts else ''}; {self.moved} moved"
        )


def folder_for(settings: Settings, destination: str) -> str:
    return {
        PROCESSED: settings.mailbox.processed_folder,
        ATTENTION: settings.mailbox.attention_folder,
    }[destination]


def poll_once(
    sessions: sessionmaker[Session],
    settings: Settings,
    source: MailboxSource | None = None,
    *,
    after_commit: Callable[[Sequence[InboundMessage]], None] | None = None,
) -> PollReport:
    """One pass over the inbox. ``after_commit`` runs between commit and move (tests)."""
    source = source or open_source(settings.mailbox, settings.path)
    try:
        with source:
            report = _poll(sessions, settings, source, after_commit)
    except MailboxError as exc:
        _remember(sessions, source.identity, error=str(exc))
        raise
    _remember(sessions, source.identity, result=report.summary())
    return report


def _poll(
    sessions: sessionmaker[Session],
    settings: Settings,
    source: MailboxSource,
    after_commit: Callable[[Sequence[InboundMessage]], None] | None,
) -> PollReport:
    report = PollReport(mailbox=source.identity)
    report.moved += _make_owed_moves(sessions, settings, source)

    with sessions() as session:
        known = set(
            session.scalars(
                select(InboundMessage.mailbox_key).where(InboundMessage.mailbox == source.identity)
            )
        )
    present = source.keys()
    new_keys = [key for key in present if key not in known]
    if new_keys:
        log.info("%s: %d new message(s) to read", source.identity, len(new_keys))

    for batch in _batches(new_keys, settings.mailbox.batch_size):
        with transaction(sessions) as session:
            rows = [
                _receive_one(session, settings, source.identity, f.key, f.raw)
                for f in source.fetch(batch)
            ]
        report.fetched += len(rows)
        report.outcomes.update(row.outcome for row in rows)
        if after_commit is not None:
            after_commit(rows)
        report.moved += _move(sessions, settings, source, rows)

    log.info("%s: poll done: %s", source.identity, report.summary())
    return report


def _receive_one(
    session: Session, settings: Settings, mailbox: str, key: str, raw: bytes
) -> InboundMessage:
    """Receive in a savepoint, so one message's failure is recorded, not fatal."""
    try:
        with session.begin_nested():
            return receive(session, settings, mailbox=mailbox, key=key, raw=raw)
    except Exception as exc:  # the batch must go on; the message is kept with the reason
        log.exception("%s: message %s could not be received", mailbox, key)
        row = InboundMessage(
            mailbox=mailbox,
            mailbox_key=key,
            sha256="",
            size=len(raw),
            outcome="unreadable",
            reason=f"internal error while reading: {type(exc).__name__}: {exc}"[:2000],
            destination=ATTENTION,
        )
        session.add(row)
        session.flush()
        return row


def _move(
    sessions: sessionmaker[Session],
    settings: Settings,
    source: MailboxSource,
    rows: Iterable[InboundMessage],
) -> int:
    """Move committed messages to their folders, then record that they moved."""
    by_folder: dict[str, list[InboundMessage]] = defaultdict(list)
    for row in rows:
        if row.destination is not None and row.moved_at is None:
            by_folder[folder_for(settings, row.destination)].append(row)

    moved = 0
    for folder, folder_rows in by_folder.items():
        source.move([row.mailbox_key for row in folder_rows], folder)
        with transaction(sessions) as session:
            now = utcnow()
            for row in folder_rows:
                session.get(InboundMessage, row.id).moved_at = now  # type: ignore[union-attr]
        moved += len(folder_rows)
        log.info("%s: %d message(s) moved to %s", source.identity, len(folder_rows), folder)
    return moved


def _make_owed_moves(
    sessions: sessionmaker[Session], settings: Settings, source: MailboxSource
) -> int:
    with sessions() as session:
        owed = list(
            session.scalars(
                select(InboundMessage).where(
                    InboundMessage.mailbox == source.identity,
                    InboundMessage.destination.is_not(None),
                    InboundMessage.moved_at.is_(None),
                )
            )
        )
    if owed:
        log.info("%s: finishing %d move(s) owed by an earlier run", source.identity, len(owed))
    return _move(sessions, settings, source, owed)


def _batches(keys: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(keys), size):
        yield keys[start : start + size]


def _remember(
    sessions: sessionmaker[Session],
    mailbox: str,
    *,
    result: str | None = None,
    error: str | None = None,
) -> None:
    with transaction(sessions) as session:
        state = session.get(MailboxState, mailbox) or MailboxState(mailbox=mailbox)
        session.add(state)
        now = utcnow()
        state.last_poll_at = now
        state.last_error = error
        if error is None:
            state.last_result = result
            state.last_success_at = now


class Stop:
    """Set by SIGTERM/SIGINT: the loop finishes the current step and returns."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.event.set())


def poll_forever(sessions: sessionmaker[Session], settings: Settings, stop: Stop) -> None:
    """Poll until stopped: IMAP IDLE when offered, else every poll_interval seconds.

    A mailbox that cannot be reached is retried with exponential backoff and
    jitter, so a restarted server is not met by every poller at the same second.
    """
    failures = 0
    while not stop.event.is_set():
        source = open_source(settings.mailbox, settings.path)
        try:
            with source:
                while not stop.event.is_set():
                    report = _poll(sessions, settings, source, None)
                    _remember(sessions, source.identity, result=report.summary())
                    failures = 0
                    source.wait(settings.mailbox.poll_interval)
        except MailboxError as exc:
            failures += 1
            _remember(sessions, source.identity, error=str(exc))
            delay = min(300.0, 2.0 ** min(failures, 8)) * random.uniform(0.5, 1.0)
            log.error("%s: %s; trying again in %.0f s", source.identity, exc, delay)
            stop.event.wait(delay)
    log.info("poller stopped")
