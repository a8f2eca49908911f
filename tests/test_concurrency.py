"""Two processes handling mail at once: one at a time, each message and each email once.

The defect this reproduces: two `portaria poll --once` started together on
30 messages both crashed with tracebacks (a UNIQUE failure on the inbound
key, "database is locked" while sending), left outgoing email claimed and
unsent, and a later `outbox send` delivered an email a second time. Every
command here is a real `portaria` process on a real SQLite file or
PostgreSQL database, with Maildir folders in and out; the test process
takes the same mail-handling lock to make the other side's turn certain.
"""

from __future__ import annotations

import mailbox
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import parseaddr
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from config.settings import load_settings
from intake.models import InboundMessage
from intake.poller import poll_once
from portaria.locking import BUSY_MESSAGE, MailHandlingBusy, mail_handling
from portaria.outbox import send_due
from portaria.outbox_models import OutboxMessage
from portaria.wiring import Service, open_service
from tests.mail import person_block, request_message

MESSAGES = 30
REFUSED = f"erro (error): {BUSY_MESSAGE}\n"
# A short wait for the refusals, so each costs well under a second.
SHORT_WAIT = "0.3"
DEADLINE = 60.0  # seconds; a command that takes longer is stuck


@dataclass
class Installation:
    config: Path
    service: Service
    inbox: Path
    outbox: Path
    requesters: list[str] = field(default_factory=list)

    def deliver(self, count: int = MESSAGES) -> None:
        """``count`` requests, each from a requester of its own, so the hourly
        cap on answers per address never holds an acknowledgement back."""
        inbox = mailbox.Maildir(self.inbox, create=True)
        for number in range(len(self.requesters), len(self.requesters) + count):
            requester = f"gestor{number:02d}@cliente.test"
            body = person_block(f"Pessoa {number}", f"pessoa{number}@cliente.test", "RH", "Comum")
            inbox.add(request_message(body, sender=f"Gestor <{requester}>"))
            self.requesters.append(requester)

    def recorded(self) -> int:
        with self.service.sessions() as session:
            return session.scalar(select(func.count()).select_from(InboundMessage)) or 0

    def letters(self) -> list[OutboxMessage]:
        with self.service.sessions() as session:
            return list(session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))

    def delivered(self) -> list[mailbox.MaildirMessage]:
        """The emails written to the outgoing Maildir."""
        if not self.outbox.exists():
            return []
        return list(mailbox.Maildir(self.outbox, create=False))

    def left_in_inbox(self) -> int:
        return len(mailbox.Maildir(self.inbox, create=False))


def _config_text(database_url: str) -> str:
    return f"""
[database]
url = "{database_url}"

[mailbox]
kind = "maildir"
maildir = "inbox"
poll_interval = 1

[outbound]
kind = "maildir"
maildir = "outbox"
from_address = "acesso@portaria.test"

[service]
support_address = "suporte@portaria.test"
base_url = "https://portaria.test"
"""


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def installation(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Installation]:
    """One installation on SQLite beside its configuration, or on a fresh PostgreSQL
    database; mail in and out through Maildir folders."""
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
    else:
        url = "sqlite:///portaria.db"
    config = tmp_path / "portaria.toml"
    config.write_text(_config_text(url), encoding="utf-8")
    service = open_service(load_settings(config), migrate=True)
    yield Installation(config, service, tmp_path / "inbox", tmp_path / "outbox")
    service.engine.dispose()


def _command(*args: str) -> list[str]:
    command = shutil.which("portaria", path=str(Path(sys.executable).parent))
    assert command, "the portaria command is not installed next to this Python"
    return [command, *args]


def _environment() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("PORTARIA")}


def portaria(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _command(*args, "--config", str(config)),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        env=_environment(),
    )


def start(config: Path, *args: str, verbose: bool = True) -> subprocess.Popen[str]:
    """A `portaria` command in the background; with -v its log goes to standard error."""
    return subprocess.Popen(
        _command(*(["-v"] if verbose else []), *args, "--config", str(config)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_environment(),
    )


class LogFollower:
    """Reads a background command's log as it comes, so a test can wait for a line."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._seen = threading.Condition()
        self._reader = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._reader.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            with self._seen:
                self.lines.append(line)
                self._seen.notify_all()

    def wait_for(self, fragment: str) -> None:
        with self._seen:
            found = self._seen.wait_for(
                lambda: any(fragment in line for line in self.lines), timeout=DEADLINE
            )
        assert found, f"never logged {fragment!r}:\n" + "".join(self.lines[-20:])

    def text(self) -> str:
        self._reader.join(DEADLINE)
        return "".join(self.lines)


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def assert_each_message_recorded_and_answered_once(place: Installation) -> None:
    with place.service.sessions() as session:
        rows = list(session.scalars(select(InboundMessage)))
    assert len(rows) == len(place.requesters)
    assert len({row.mailbox_key for row in rows}) == len(rows)
    assert len({row.message_id for row in rows}) == len(rows)
    assert {row.outcome for row in rows} == {"request"}
    assert place.left_in_inbox() == 0

    letters = place.letters()
    assert {letter.status for letter in letters} == {"sent"}
    acknowledgements = [letter for letter in letters if letter.kind == "received"]
    assert Counter(a for letter in acknowledgements for a in letter.recipients) == Counter(
        place.requesters
    )

    delivered = place.delivered()
    by_id = Counter(email["Message-ID"] for email in delivered)
    assert [message_id for message_id, n in by_id.items() if n > 1] == [], "sent twice"
    assert set(by_id) == {letter.message_id for letter in letters}
    acknowledged = Counter(
        parseaddr(email["To"])[1]
        for email in delivered
        if email["Message-ID"] in _ids(acknowledgements)
    )
    assert acknowledged == Counter(place.requesters)


def _ids(letters: list[OutboxMessage]) -> set[str]:
    return {letter.message_id for letter in letters}


class TestTwoPollersStartedTogether:
    def test_each_message_is_recorded_and_answered_once(self, installation: Installation) -> None:
        installation.deliver()

        pollers = [start(installation.config, "poll", "--once", verbose=False) for _ in "ab"]
        results = []
        for process in pollers:
            stdout, stderr = process.communicate(timeout=DEADLINE)
            results.append((process.returncode, stdout, stderr))

        for code, stdout, stderr in results:
            assert "Traceback" not in stdout + stderr, stdout + stderr
            # The loser waits for the winner's cycle; should that take longer
            # than its wait, it says so in one line and changes nothing.
            assert (code, stderr) in ((0, ""), (1, REFUSED)), stdout + stderr
        assert 0 in [code for code, _, _ in results]
        assert_each_message_recorded_and_answered_once(installation)

        # The tester's later `outbox send` delivered one email again: nothing now.
        assert send_due(installation.service.sessions, installation.service.settings).sent == 0
        assert_each_message_recorded_and_answered_once(installation)


class TestLockHeldByAnotherProcess:
    def test_commands_refuse_in_one_line_then_wait_for_a_cycle_that_ends(
        self, installation: Installation
    ) -> None:
        service = installation.service
        installation.deliver()
        # Recorded here, not sent: the queue `outbox send` is refused on.
        poll_once(service.sessions, service.settings)
        installation.deliver(1)
        queued = {letter.id: letter.next_attempt_at for letter in installation.letters()}
        assert len(queued) >= MESSAGES

        with mail_handling(service, wait=0):
            refusals = [
                start(installation.config, *command, "--wait", SHORT_WAIT, verbose=False)
                for command in (("poll", "--once"), ("outbox", "send"))
            ]
            for refused in refusals:
                stdout, stderr = refused.communicate(timeout=DEADLINE)
                assert (refused.returncode, stdout, stderr) == (1, "", REFUSED)
            assert installation.recorded() == MESSAGES
            assert installation.left_in_inbox() == 1
            assert installation.delivered() == []
            # Refused before claiming: no row is leased away for a quarter of an hour.
            still = {letter.id: letter.next_attempt_at for letter in installation.letters()}
            assert still == queued

            # With the default wait, a command outlasts a short cycle of another's.
            waiting = start(installation.config, "poll", "--once")
            log = LogFollower(waiting)
            log.wait_for("another Portaria process is handling mail; waiting")

        assert waiting.wait(DEADLINE) == 0, log.text()
        assert "Traceback" not in log.text()
        assert_each_message_recorded_and_answered_once(installation)


class TestLongRunningTakesTurns:
    def test_run_waits_for_the_lock_and_interleaves_with_commands(
        self, installation: Installation
    ) -> None:
        mailbox.Maildir(installation.inbox, create=True)
        with mail_handling(installation.service, wait=0):
            running = start(installation.config, "run", "--tick", "1")
            log = LogFollower(running)
            try:
                log.wait_for("another Portaria process is handling mail; waiting")
                installation.deliver()
                time.sleep(0.5)
                assert installation.recorded() == 0
            except BaseException:
                running.kill()
                raise

        try:
            # Once the lock is free, `run` polls; commands run by hand get
            # their turn between its cycles instead of failing.
            _until(lambda: installation.recorded() == MESSAGES, "run to read the inbox")
            manual = portaria(installation.config, "poll", "--once")
            assert manual.returncode == 0, manual.stderr
            _until(
                lambda: {letter.status for letter in installation.letters()} == {"sent"},
                "the outbox to be sent",
            )
        finally:
            running.send_signal(signal.SIGTERM)
            code = running.wait(DEADLINE)
        output = log.text()
        assert code == 0, output
        assert "Traceback" not in output, output
        assert_each_message_recorded_and_answered_once(installation)


class TestLockInOneProcess:
    def test_a_second_holder_waits_even_in_the_same_process(
        self, installation: Installation
    ) -> None:
        with mail_handling(installation.service, wait=0):
            with pytest.raises(MailHandlingBusy), mail_handling(installation.service, wait=0.2):
                pytest.fail("two holders at once")
            stop = threading.Event()
            stop.set()
            started = time.monotonic()
            with (
                pytest.raises(MailHandlingBusy),
                mail_handling(installation.service, wait=None, stop=stop),
            ):
                pytest.fail("two holders at once")
            assert time.monotonic() - started < 1.0
        with mail_handling(installation.service, wait=0):
            pass


@pytest.mark.postgres
def test_a_database_failure_mid_poll_is_one_line(postgres_url: str, tmp_path: Path) -> None:
    """The database connection is cut while `poll --once` waits on a table lock."""
    config = tmp_path / "portaria.toml"
    config.write_text(_config_text(postgres_url), encoding="utf-8")
    service = open_service(load_settings(config), migrate=True)
    place = Installation(config, service, tmp_path / "inbox", tmp_path / "outbox")
    place.deliver()

    with service.engine.connect() as blocker:
        blocker.execute(text("LOCK TABLE inbound_messages IN ACCESS EXCLUSIVE MODE"))
        polling = start(config, "poll", "--once")
        log = LogFollower(polling)

        def blocked_pid() -> int | None:
            with service.engine.connect() as probe:
                return probe.scalar(
                    text(
                        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                        "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
                    )
                )

        _until(lambda: blocked_pid() is not None, "the poll to wait on the table")
        with service.engine.connect() as admin:
            admin.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": blocked_pid()})
        blocker.rollback()

    assert polling.wait(DEADLINE) == 1
    output = log.text()
    assert "Traceback" not in output
    last = output.splitlines()[-1]
    assert last.startswith("erro (error): falha no banco de dados (database failure): "), output
    assert last.endswith("rode o comando de novo (what was saved stays; run the command again)")
    # The lock went with the process, and nothing was half-recorded.
    with mail_handling(service, wait=0):
        assert place.recorded() == 0
        poll_once(service.sessions, service.settings)
        send_due(service.sessions, service.settings)
    assert_each_message_recorded_and_answered_once(place)
    service.engine.dispose()
