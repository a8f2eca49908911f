"""The mail-handling lock: one process at a time reads the mailbox or sends the outbox.

Two pollers on one inbox both see the same new messages and both try to
record them; two senders share one queue whose claims last a lease, so a
sender that dies mid-run leaves its rows to be sent again later. Everything
that handles mail (``poll``, ``outbox send``, ``run``, ``schedule``) does it
inside :func:`mail_handling`, which holds a lock owned by the installation,
that is by its database:

- PostgreSQL (production, possibly several hosts): a session-level advisory
  lock, taken with ``pg_try_advisory_lock`` on a connection of its own that
  stays open while the lock is held. Every host using the database sees it,
  and the server drops it when the process or its connection dies.
- SQLite (the embedded default): ``flock`` on a file beside the database
  file, or beside the configuration when the database is not a file. The
  kernel drops it when the process dies, so a crash never leaves it stuck.

Commands run by hand wait a few seconds, then give up with
:class:`MailHandlingBusy`; the long-running loops take the lock for one cycle
at a time and wait as long as it takes, so both kinds interleave.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from portaria.errors import PortariaError
from portaria.wiring import Service

log = logging.getLogger(__name__)

# How long a command run by hand waits for another process's cycle to end.
BUSY_WAIT_SECONDS = 5.0
# How often a waiting process tries again.
RETRY_SECONDS = 0.1
# Advisory locks are scoped to one database, so one fixed key names the lock.
ADVISORY_KEY = int.from_bytes(
    hashlib.sha256(b"portaria:mail-handling").digest()[:8], "big", signed=True
)
LOCK_FILE_SUFFIX = ".mail.lock"

BUSY_MESSAGE = (
    "outro processo do Portaria já está lendo a caixa ou enviando e-mails "
    "(another Portaria process is handling mail): tente de novo em instantes "
    "(try again shortly)"
)


class MailHandlingBusy(PortariaError):
    """Another process of this installation is handling mail, and the wait ran out or was
    stopped."""


class MailLockUnavailable(PortariaError):
    """The lock itself cannot be used (the lock file cannot be opened)."""


class _Lock(Protocol):
    def try_acquire(self) -> bool: ...

    def close(self) -> None: ...


@contextmanager
def mail_handling(
    service: Service,
    *,
    wait: float | None = BUSY_WAIT_SECONDS,
    stop: threading.Event | None = None,
) -> Iterator[None]:
    """Hold the installation's mail-handling lock for the block.

    ``wait`` is how many seconds to wait for another process to finish first;
    ``None`` waits as long as it takes. ``stop`` cuts the wait short (SIGTERM
    in a long-running loop). When the lock is not taken, the block does not
    run and :class:`MailHandlingBusy` is raised. Taking it again in a thread
    that holds it waits for itself: the lock is not reentrant.
    """
    lock = _lock_for(service)
    try:
        _acquire(lock, wait, stop)
        log.debug("mail-handling lock taken")
        yield
    finally:
        lock.close()


def lock_file(service: Service) -> Path:
    """Where the file lock lives: beside the SQLite file, else beside the configuration."""
    url = service.engine.url
    database = url.database or ""
    if url.get_backend_name() == "sqlite" and database and ":memory:" not in database:
        return Path(database + LOCK_FILE_SUFFIX)
    return service.settings.path(Path("portaria" + LOCK_FILE_SUFFIX))


def _lock_for(service: Service) -> _Lock:
    if service.engine.dialect.name == "postgresql":
        return _AdvisoryLock(service.engine)
    return _FileLock(lock_file(service))


def _acquire(lock: _Lock, wait: float | None, stop: threading.Event | None) -> None:
    started = time.monotonic()
    deadline = None if wait is None else started + wait
    announced = False
    while not lock.try_acquire():
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            log.info("mail-handling lock still taken after %.1f s; giving up", now - started)
            raise MailHandlingBusy(BUSY_MESSAGE)
        if not announced:
            log.info("another Portaria process is handling mail; waiting for it")
            announced = True
        pause = RETRY_SECONDS if deadline is None else min(RETRY_SECONDS, deadline - now)
        if stop is None:
            time.sleep(pause)
        elif stop.wait(pause):
            raise MailHandlingBusy(BUSY_MESSAGE)
    if announced:
        log.info("mail-handling lock taken after %.1f s", time.monotonic() - started)


class _FileLock:
    """``flock`` on a file. Each instance opens the file anew, so two threads of one process
    exclude each other too (the lock belongs to the open file, not to the process)."""

    def __init__(self, path: Path) -> None:
        try:
            # Group-writable, like a database file shared by the service and its operators.
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o660)
        except OSError as exc:
            raise MailLockUnavailable(
                f"não foi possível abrir o arquivo de trava (cannot open the lock file) "
                f"{path}: {exc.strerror}; confira as permissões da pasta (check the folder's "
                "permissions)"
            ) from exc
        self.path = path

    def try_acquire(self) -> bool:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError as exc:
            raise MailLockUnavailable(
                f"não foi possível travar (cannot lock) {self.path}: {exc.strerror}"
            ) from exc
        return True

    def close(self) -> None:
        # Closing drops the lock. The file stays: deleting it would let a
        # process that opened the old file and one that creates a new file
        # both hold "the" lock.
        os.close(self._fd)


class _AdvisoryLock:
    """A session-level PostgreSQL advisory lock on a connection kept for the purpose."""

    def __init__(self, engine: Engine) -> None:
        # Autocommit: the lock outlives transactions, and an idle open transaction
        # held for a whole cycle would hold back vacuum and could be ended by
        # idle_in_transaction_session_timeout, taking the lock with it.
        self._connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        self._held = False

    def try_acquire(self) -> bool:
        self._held = bool(
            self._connection.scalar(
                text("SELECT pg_try_advisory_lock(CAST(:key AS bigint))"), {"key": ADVISORY_KEY}
            )
        )
        return self._held

    def close(self) -> None:
        try:
            if self._held:
                released = self._connection.scalar(
                    text("SELECT pg_advisory_unlock(CAST(:key AS bigint))"), {"key": ADVISORY_KEY}
                )
                if not released:
                    log.warning("mail-handling lock was already gone when released")
        except SQLAlchemyError:
            # The connection must not go back to the pool holding the lock:
            # dropping it ends the session, and the server drops the lock with it.
            log.warning("mail-handling lock: connection lost while releasing; dropping it")
            self._connection.invalidate()
        finally:
            self._connection.close()
