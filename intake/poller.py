"""The poller: fetch new messages in batches, receive them, commit, then move them.

Order matters for "nothing lost, nothing done twice": a batch's rows are
committed before any of its messages leaves the inbox, and a move still owed
from an earlier run (the process stopped between commit and move) is made at
the start of the next poll. A message whose key is already recorded is never
received again; tests/test_crash.py kills the poller at random points to
hold it to that.

The loop (:func:`poll_forever`) owns what happens when the mailbox or the
database fails: it logs what went wrong, waits a doubling, jittered delay
(:func:`reconnect_delay`) and opens everything again.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings
from intake.health import record_poll_health
from intake.models import InboundMessage, MailboxState
from intake.receiving import ATTENTION, PROCESSED, inbound_row, receive
from intake.sources import (
    Fetched,
    MailboxError,
    MailboxSource,
    MailboxUnavailable,
    open_source,
)
from portaria.db import transaction, utcnow

log = logging.getLogger(__name__)

# Database errors that mean the database, not the message, failed (locked,
# gone, connection lost): they abort the batch instead of marking a message.
DATABASE_FAILURES = (OperationalError, InterfaceError)

# Reconnecting after a failed poll: the first wait is about RECONNECT_BASE
# seconds, each failure in a row doubles it up to RECONNECT_CAP, and up to
# RECONNECT_JITTER of it is taken off at random.
RECONNECT_BASE = 2.0
RECONNECT_CAP = 300.0
RECONNECT_JITTER = 0.5


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
        _remember(sessions, settings, source.identity, error=str(exc))
        raise
    _remember(sessions, settings, source.identity, result=report.summary())
    return report


def _poll(
    sessions: sessionmaker[Session],
    settings: Settings,
    source: MailboxSource,
    after_commit: Callable[[Sequence[InboundMessage]], None] | None,
) -> PollReport:
    report = PollReport(mailbox=source.identity)
    _note_uidvalidity(sessions, source)
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
                _receive_one(session, settings, source.identity, fetched)
                for fetched in source.fetch(batch, max_bytes=settings.intake.max_message_bytes)
            ]
        report.fetched += len(rows)
        report.outcomes.update(row.outcome for row in rows)
        # The line a person (or the crash test) reads to know that this batch
        # is safe: from here on a crash only leaves moves owed.
        log.info("%s: %d message(s) recorded, to be moved", source.identity, len(rows))
        if after_commit is not None:
            after_commit(rows)
        report.moved += _move(sessions, settings, source, rows)

    log.info("%s: poll done: %s", source.identity, report.summary())
    return report


def _receive_one(
    session: Session, settings: Settings, mailbox: str, fetched: Fetched
) -> InboundMessage:
    """Receive in a savepoint, so one message's failure is recorded, not fatal."""
    key = fetched.key
    try:
        with session.begin_nested():
            return receive(
                session,
                settings,
                mailbox=mailbox,
                key=key,
                raw=fetched.raw,
                size=fetched.size,
            )
    except DATABASE_FAILURES:
        # Not this message's fault: recording it as unreadable would file a
        # good request away. The batch rolls back and is read again later.
        raise
    except Exception as exc:  # the batch must go on; the message is kept with the reason
        log.exception("%s: message %s could not be received", mailbox, key)
        row = inbound_row(mailbox, key, fetched.raw, fetched.size)
        row.reason = (
            f"erro interno ao ler (internal error while reading): {type(exc).__name__}: {exc}"
        )[:2000]
        row.destination = ATTENTION
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


def _note_uidvalidity(sessions: sessionmaker[Session], source: MailboxSource) -> None:
    """Keep the IMAP folder's UIDVALIDITY, and say so clearly when it changed."""
    current = getattr(source, "uidvalidity", None)
    if current is None:
        return  # a Maildir: its keys never change
    with transaction(sessions) as session:
        state = session.get(MailboxState, source.identity) or MailboxState(mailbox=source.identity)
        session.add(state)
        if state.uidvalidity is not None and state.uidvalidity != current:
            log.warning(
                "%s: UIDVALIDITY changed from %s to %s (the folder was recreated or restored): "
                "every message in it is read again, and those already handled are recognised "
                "by Message-ID and content and only filed",
                source.identity,
                state.uidvalidity,
                current,
            )
        state.uidvalidity = current


def _batches(keys: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(keys), size):
        yield keys[start : start + size]


def _remember(
    sessions: sessionmaker[Session],
    settings: Settings,
    mailbox: str,
    *,
    result: str | None = None,
    error: str | None = None,
) -> None:
    """Record the poll's result, after health has seen it (it quotes the last error)."""
    record_poll_health(sessions, settings, mailbox, ok=error is None, error=error)
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


def _log_failure(identity: str, exc: Exception, failures: int, delay: float) -> None:
    if isinstance(exc, MailboxError):
        what = str(exc)
    else:
        # The driver's words only: the full error also quotes the SQL and
        # its parameters, which hold message content.
        what = f"database unavailable: {getattr(exc, 'orig', None) or type(exc).__name__}"
    # A server that is down usually comes back; a refused login, a missing
    # folder or a lost database waits for a person, so they are errors.
    level = logging.WARNING if isinstance(exc, MailboxUnavailable) else logging.ERROR
    log.log(
        level,
        "%s: poll failed (%d in a row): %s; trying again in %.1f s",
        identity,
        failures,
        what,
        delay,
    )


def reconnect_delay(failures: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after ``failures`` failed polls in a row: doubling, capped, jittered.

    The jitter takes up to half the delay off at random, so pollers that lost
    the same server at the same moment do not all come back at the same second.
    """
    exponent = min(max(failures, 1), 32) - 1
    delay = min(RECONNECT_CAP, RECONNECT_BASE * 2.0**exponent)
    return delay * (rng or random).uniform(1.0 - RECONNECT_JITTER, 1.0)


def poll_forever(
    sessions: sessionmaker[Session],
    settings: Settings,
    stop: Stop,
    *,
    sleep: Callable[[float], object] | None = None,
    rng: random.Random | None = None,
    after_commit: Callable[[Sequence[InboundMessage]], None] | None = None,
    after_poll: Callable[[PollReport], None] | None = None,
    guard: Callable[[], AbstractContextManager[object]] = nullcontext,
) -> None:
    """Poll until stopped: IMAP IDLE when offered, else every poll_interval seconds.

    Any mailbox failure (server down or restarted, connection dropped, login
    refused, folder missing), and a database that cannot be reached, closes
    the connection and opens a new one after :func:`reconnect_delay`; work
    committed before the failure is never done again, and a batch the failure
    interrupted is read again. ``sleep`` waits out that delay (default: the stop
    event, so SIGTERM cuts it short) and ``rng`` draws its jitter; with
    ``after_commit`` and ``after_poll`` tests can act between the steps.
    ``guard()`` is held around each poll and not while waiting for mail: the
    CLI passes the mail-handling lock, so commands run by hand get their turn.
    """
    pause = sleep or stop.event.wait
    failures = 0
    identity = settings.mailbox.kind
    while not stop.event.is_set():
        source = open_source(settings.mailbox, settings.path)
        identity = source.identity
        try:
            with source:
                if failures:
                    log.info(
                        "%s: connected again after %d failed attempt(s)",
                        source.identity,
                        failures,
                    )
                while True:
                    with guard():
                        report = _poll(sessions, settings, source, after_commit)
                        _remember(sessions, settings, source.identity, result=report.summary())
                    failures = 0
                    if after_poll is not None:
                        after_poll(report)
                    if stop.event.is_set():
                        break
                    source.wait(settings.mailbox.poll_interval)
        except (MailboxError, *DATABASE_FAILURES) as exc:
            failures += 1
            delay = reconnect_delay(failures, rng)
            _log_failure(identity, exc, failures, delay)
            if isinstance(exc, MailboxError):
                try:
                    _remember(sessions, settings, identity, error=str(exc))
                except DATABASE_FAILURES as lost:
                    # The database is gone too: the log line above must do.
                    log.error("%s: cannot record the failure: %s", identity, lost.orig)
            pause(delay)
    log.info("%s: poller stopped", identity)
