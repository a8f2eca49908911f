"""Connection faults against the real servers: Dovecot and SMTP stopped, restarted, refusing.

IMAP, through the poller (``poll_forever`` and ``poll_once``): a connection
dropped between two batches, a server down at start and restarted while
the poller waits for mail, a refused login, a missing folder and a folder
recreated under a new UIDVALIDITY; and a database lost in the middle of a
batch, which must not file a good message away as unreadable. Each must end
with the work done once: one row per message, one request per person, one
pair of letters per message, every message in its folder; and each must
leave log lines that say what happened.
The reconnect delay is handed to an injected ``sleep``, so no test waits.

SMTP, the way a person meets it: `portaria outbox send`, `list` and `retry`
through the command line while the server is down, answers 4xx, answers
5xx, and comes back.
"""

from __future__ import annotations

import logging
import random
import re
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from email.utils import make_msgid
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from typer.testing import CliRunner

from config.settings import Settings, load_settings
from intake.models import InboundMessage, MailboxState
from intake.poller import (
    RECONNECT_BASE,
    RECONNECT_JITTER,
    PollReport,
    Stop,
    poll_forever,
    poll_once,
    reconnect_delay,
)
from intake.reading import read_message
from intake.receiving import receive
from intake.sources import imap_identity
from portaria.cli import app
from portaria.db import utcnow
from portaria.outbox import send_due
from portaria.outbox_models import OutboxMessage
from portaria.wiring import Service, open_service
from provisioning.models import AccessRequest
from tests.mail import person_block, request_message
from tests.servers.dovecot import DovecotServer, ImapAccount
from tests.servers.smtp import SmtpTestServer

NAMES = (
    "Ana Lima", "Bruno Costa", "Carla Dias", "Diego Faria", "Elisa Gomes", "Fábio Hora",
    "Gabriela Ito", "Heitor Jardim", "Isabel Klein", "João Leme", "Karina Maia",
    "Lucas Neves", "Marina Otero", "Nuno Prado", "Olívia Quintas", "Paulo Rocha",
)  # fmt: skip


def requests(first: int, count: int) -> list[bytes]:
    """#ACESSO requests for people first .. first + count - 1, each from their own manager."""
    return [
        request_message(
            person_block(NAMES[n % len(NAMES)], f"pessoa{n}@cliente.test", "Financeiro", "Comum"),
            sender=f"Gestor <gestor{n}@cliente.test>",
            message_id=make_msgid(domain="cliente.test"),
        )
        for n in range(first, first + count)
    ]


def untagged(count: int) -> list[bytes]:
    return [
        request_message("Bom dia!", subject=f"Reunião {n}", sender=f"colega{n}@cliente.test")
        for n in range(count)
    ]


@dataclass
class Pauses:
    """The poller's ``sleep``: records each reconnect delay and runs the next planned action."""

    actions: list[Callable[[], None]] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)

    def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if self.actions:
            self.actions.pop(0)()


def stop_when(stop: Stop, done: Callable[[PollReport], bool]) -> Callable[[PollReport], None]:
    def after_poll(report: PollReport) -> None:
        if done(report):
            stop.event.set()

    return after_poll


def imap(settings: Settings, account: ImapAccount, **overrides: object) -> Settings:
    mailbox = account.mailbox_settings(batch_size=5, poll_interval=1, **overrides)
    return settings.model_copy(update={"mailbox": mailbox})


@pytest.fixture
def dovecot(dovecot_server: DovecotServer) -> Iterator[DovecotServer]:
    """The session's Dovecot, running again after the test whatever the test did to it."""
    yield dovecot_server
    dovecot_server.start()


def assert_done_once(service: Service, emails: list[str]) -> None:
    """One request per person, one pair of letters per message, nothing owed."""
    with service.sessions() as session:
        asked = [request.email for request in session.scalars(select(AccessRequest))]
        letters = list(session.scalars(select(OutboxMessage)))
        rows = list(session.scalars(select(InboundMessage)))
    assert sorted(asked) == sorted(emails)
    assert Counter((letter.cause, letter.kind) for letter in letters).most_common(1)[0][1] == 1
    assert Counter(letter.kind for letter in letters) == {
        "received": len(emails),
        "support_notice": len(emails),
    }
    assert [row for row in rows if row.destination and row.moved_at is None] == []
    assert Counter(row.mailbox_key for row in rows).most_common(1)[0][1] == 1


def poller_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "intake.poller"]


class TestReconnectDelay:
    def test_doubles_from_the_base_up_to_the_cap_with_jitter_taken_off(self) -> None:
        rng = random.Random(7)
        for failures in range(1, 15):
            ceiling = min(300.0, RECONNECT_BASE * 2 ** (failures - 1))
            delay = reconnect_delay(failures, rng)
            assert ceiling * (1 - RECONNECT_JITTER) <= delay <= ceiling

    def test_pollers_that_failed_together_do_not_retry_together(self) -> None:
        rng = random.Random(7)
        assert len({round(reconnect_delay(3, rng), 3) for _ in range(20)}) > 10


@pytest.mark.imap
class TestImapFaults:
    @pytest.fixture(autouse=True)
    def _log(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.INFO, logger="intake.poller")

    def test_connection_dropped_between_batches_resumes_without_repeating_work(
        self,
        service: Service,
        settings: Settings,
        imap_account: ImapAccount,
        dovecot: DovecotServer,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        imap_account.append(requests(0, 12))
        settings = imap(settings, imap_account)
        stop = Stop()
        commits: list[int] = []

        def server_dies_after_first_commit(rows: object) -> None:
            commits.append(len(rows))  # type: ignore[arg-type]
            if len(commits) == 1:
                dovecot.stop()

        pauses = Pauses([dovecot.start])
        poll_forever(
            service.sessions,
            settings,
            stop,
            sleep=pauses,
            after_commit=server_dies_after_first_commit,
            after_poll=stop_when(stop, lambda report: report.fetched > 0),
        )

        assert commits == [5, 5, 2]  # the first batch once, the rest after reconnecting
        assert len(pauses.delays) == 1
        assert_done_once(service, [f"pessoa{n}@cliente.test" for n in range(12)])
        assert imap_account.messages() == []
        assert len(imap_account.messages("Processed")) == 12
        lines = poller_lines(caplog)
        assert any(
            level == logging.WARNING and re.search(r"poll failed \(1 in a row\): .*again in", text)
            for level, text in lines
        ), lines
        messages = [text for _, text in lines]
        assert any("connected again after 1 failed attempt(s)" in text for text in messages)
        assert any("finishing 5 move(s) owed by an earlier run" in text for text in messages)

    def test_server_down_at_start_and_restarted_while_waiting_for_mail(
        self,
        service: Service,
        settings: Settings,
        imap_account: ImapAccount,
        dovecot: DovecotServer,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        imap_account.append(requests(0, 3))
        settings = imap(settings, imap_account)
        dovecot.stop()
        stop = Stop()
        polls: list[int] = []

        def restart_and_deliver(report: PollReport) -> None:
            polls.append(report.fetched)
            if len(polls) == 1:
                # Down while the poller idles: the next mail must still be read.
                dovecot.stop()
                dovecot.start()
                imap_account.append(requests(3, 2))
            elif report.fetched:
                stop.event.set()

        pauses = Pauses([lambda: None, lambda: None, dovecot.start])
        poll_forever(
            service.sessions,
            settings,
            stop,
            sleep=pauses,
            rng=random.Random(1),
            after_poll=restart_and_deliver,
        )

        # Three failures while down, doubling; one more when IDLE found it restarted.
        assert len(pauses.delays) == 4
        for failures, delay in enumerate(pauses.delays[:3], start=1):
            ceiling = RECONNECT_BASE * 2 ** (failures - 1)
            assert ceiling * (1 - RECONNECT_JITTER) <= delay <= ceiling
        assert pauses.delays[3] <= RECONNECT_BASE
        assert polls[0] == 3 and polls[-1] == 2 and sum(polls) == 5
        assert_done_once(service, [f"pessoa{n}@cliente.test" for n in range(5)])
        messages = [text for _, text in poller_lines(caplog)]
        assert any("poll failed (3 in a row)" in text for text in messages)
        assert any("connected again after 3 failed attempt(s)" in text for text in messages)
        with service.sessions() as session:
            state = session.get(MailboxState, imap_identity(settings.mailbox))
        assert state is not None and state.last_error is None and state.last_success_at

    def test_refused_login_is_an_error_a_person_can_read_and_is_retried(
        self,
        service: Service,
        settings: Settings,
        imap_account: ImapAccount,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        imap_account.append(requests(0, 2))
        settings = imap(settings, imap_account, password="not-the-password")
        stop = Stop()

        def password_fixed() -> None:
            settings.mailbox.password = SecretStr(imap_account.password)

        pauses = Pauses([lambda: None, password_fixed])
        poll_forever(
            service.sessions,
            settings,
            stop,
            sleep=pauses,
            after_poll=stop_when(stop, lambda report: True),
        )

        assert len(pauses.delays) == 2
        refused = [
            text
            for level, text in poller_lines(caplog)
            if level == logging.ERROR and "poll failed" in text
        ]
        assert len(refused) == 2
        assert f"refused the login of '{imap_account.username}'" in refused[0]
        assert "check mailbox.username and the password" in refused[0]
        assert "not-the-password" not in caplog.text
        assert imap_account.password not in caplog.text
        assert_done_once(service, ["pessoa0@cliente.test", "pessoa1@cliente.test"])

    def test_missing_folder_is_named_and_read_once_it_exists(
        self,
        service: Service,
        settings: Settings,
        imap_account: ImapAccount,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        settings = imap(settings, imap_account, folder="Pedidos")
        stop = Stop()
        pauses = Pauses([lambda: imap_account.append(requests(0, 2), folder="Pedidos")])
        poll_forever(
            service.sessions,
            settings,
            stop,
            sleep=pauses,
            after_poll=stop_when(stop, lambda report: True),
        )

        [(level, text)] = [line for line in poller_lines(caplog) if "poll failed" in line[1]]
        assert level == logging.ERROR
        assert "folder 'Pedidos' does not exist" in text and "check mailbox.folder" in text
        assert_done_once(service, ["pessoa0@cliente.test", "pessoa1@cliente.test"])
        assert imap_account.messages("Pedidos") == []

    def test_folder_recreated_with_a_new_uidvalidity_is_not_processed_again(
        self,
        service: Service,
        settings: Settings,
        imap_account: ImapAccount,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        settings = imap(settings, imap_account, folder="Pedidos")
        first, chatter = requests(0, 4), untagged(2)
        imap_account.append([*first, *chatter], folder="Pedidos")
        old = imap_account.uidvalidity("Pedidos")

        # Committed, then the process died before moving anything.
        def crash(_rows: object) -> None:
            raise RuntimeError("killed between commit and move")

        with pytest.raises(RuntimeError):
            poll_once(service.sessions, settings, after_commit=crash)

        # Someone recreates the folder from a backup: the same six messages,
        # one more request that arrived meanwhile, under a new UIDVALIDITY.
        with imap_account.connect() as client:
            client.delete_folder("Pedidos")
        imap_account.append([*first, *chatter, *requests(4, 1)], folder="Pedidos")
        assert imap_account.uidvalidity("Pedidos") != old

        report = poll_once(service.sessions, settings)
        again = poll_once(service.sessions, settings)

        # Five were recorded before the crash; the sixth, chatter, is new to us.
        assert dict(report.outcomes) == {"duplicate": 5, "left": 1, "request": 1}
        assert again.fetched == 0
        assert_done_once(service, [f"pessoa{n}@cliente.test" for n in range(5)])
        left = [read_message(raw).message_id for raw in imap_account.messages("Pedidos")]
        assert sorted(left) == sorted(read_message(raw).message_id for raw in chatter)
        assert len(imap_account.messages("Processed")) == 5
        warnings = [text for level, text in poller_lines(caplog) if level == logging.WARNING]
        assert any(f"UIDVALIDITY changed from {old} to " in text for text in warnings)


class TestDatabaseFaults:
    def test_database_lost_mid_batch_files_no_message_away_and_is_retried(
        self,
        service: Service,
        settings: Settings,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        caplog.set_level(logging.INFO, logger="intake.poller")
        inbox = settings.path(settings.mailbox.maildir)
        for sub in ("new", "cur", "tmp"):
            (inbox / sub).mkdir(parents=True, exist_ok=True)
        for number, raw in enumerate(requests(0, 6)):
            (inbox / "new" / f"{number}.request").write_bytes(raw)
        settings.mailbox.batch_size = 3
        calls: list[int] = []

        def locked_once(*args: object, **kwargs: object) -> InboundMessage:
            calls.append(1)
            if len(calls) == 5:
                raise OperationalError(
                    "INSERT INTO inbound_messages ... 'secret body'",
                    {},
                    sqlite3.OperationalError("database is locked"),
                )
            return receive(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr("intake.poller.receive", locked_once)
        stop = Stop()
        pauses = Pauses()
        poll_forever(
            service.sessions,
            settings,
            stop,
            sleep=pauses,
            after_poll=stop_when(stop, lambda report: True),
        )

        assert len(pauses.delays) == 1
        with service.sessions() as session:
            outcomes = Counter(row.outcome for row in session.scalars(select(InboundMessage)))
        assert outcomes == {"request": 6}
        assert_done_once(service, [f"pessoa{n}@cliente.test" for n in range(6)])
        [(level, text)] = [line for line in poller_lines(caplog) if "poll failed" in line[1]]
        assert level == logging.ERROR and "database unavailable: database is locked" in text
        assert "secret body" not in caplog.text


# SMTP, through the command line


@pytest.fixture
def smtp_config(tmp_path: Path, smtp_server: SmtpTestServer) -> Path:
    file = tmp_path / "portaria.toml"
    file.write_text(
        f"""
[database]
url = "sqlite:///portaria.db"

[mailbox]
kind = "maildir"
maildir = "inbox"

[outbound]
kind = "smtp"
host = "{smtp_server.host}"
port = {smtp_server.port}
security = "plain"
timeout = 5
from_address = "acesso@portaria.test"
max_attempts = 3
backoff_seconds = 60

[service]
support_address = "suporte@portaria.test"
base_url = "https://portaria.test"
""",
        encoding="utf-8",
    )
    return file


def portaria(config: Path, *args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--config", str(config)])
    assert result.exit_code == 0, result.output
    return result.output


def queued_requests(config: Path, count: int) -> Service:
    """Requests delivered to the Maildir inbox and polled: their letters wait in the outbox."""
    service = open_service(load_settings(config), migrate=True)
    inbox = service.settings.path(service.settings.mailbox.maildir)
    for sub in ("new", "cur", "tmp"):
        (inbox / sub).mkdir(parents=True, exist_ok=True)
    for number, raw in enumerate(requests(0, count)):
        (inbox / "new" / f"{number}.request").write_bytes(raw)
    assert f"{count} new message(s)" in portaria(config, "poll", "--once", "--no-send")
    return service


def counts(output: str) -> tuple[int, int, int]:
    """(sent, to retry, failed) from what `outbox send` printed, in whichever language."""
    found = re.search(r"(\d+)\D*?sent\D*?(\d+)\D*?retry\D*?(\d+)\D*?failed", output)
    assert found, output
    sent, retried, failed = (int(number) for number in found.groups())
    return sent, retried, failed


def requeued(output: str) -> int:
    found = re.match(r"\s*(\d+) ", output)
    assert found, output
    return int(found.group(1))


def statuses(service: Service) -> Counter[str]:
    with service.sessions() as session:
        return Counter(row.status for row in session.scalars(select(OutboxMessage)))


def later(service: Service, hours: int = 7) -> None:
    """The scheduler's pass once every backoff has run out (6 h at most)."""
    send_due(service.sessions, service.settings, now=utcnow() + timedelta(hours=hours))


@pytest.mark.smtp
class TestSmtpFaults:
    def test_server_down_defers_with_backoff_and_everything_goes_once_it_is_back(
        self, smtp_config: Path, smtp_server: SmtpTestServer
    ) -> None:
        service = queued_requests(smtp_config, 2)
        smtp_server.stop()

        assert counts(portaria(smtp_config, "outbox", "send")) == (0, 4, 0)
        listing = portaria(smtp_config, "outbox", "list", "--status", "pending")
        assert listing.count("received") == 2 and "ConnectionRefusedError" in listing

        smtp_server.start()
        # Not due yet: the backoff holds them, so a restarted server is not flooded.
        assert counts(portaria(smtp_config, "outbox", "send")) == (0, 0, 0)
        later(service)

        assert statuses(service) == {"sent": 4}
        received = Counter(mail.message["Message-ID"] for mail in smtp_server.received)
        assert len(received) == 4 and set(received.values()) == {1}
        assert "outbox empty" in portaria(smtp_config, "outbox", "list", "--status", "pending")

    def test_temporary_answer_is_retried_and_permanent_answer_kept_for_a_person(
        self, smtp_config: Path, smtp_server: SmtpTestServer
    ) -> None:
        service = queued_requests(smtp_config, 1)
        smtp_server.fail_next(451, "4.7.1 greylisted", command="RCPT")
        smtp_server.fail_next(550, "5.1.1 no such user", command="RCPT")

        assert counts(portaria(smtp_config, "outbox", "send")) == (0, 1, 1)
        failed = portaria(smtp_config, "outbox", "list", "--status", "failed")
        assert "550" in failed and "5.1.1 no such user" in failed
        pending = portaria(smtp_config, "outbox", "list", "--status", "pending")
        assert "451" in pending and "4.7.1 greylisted" in pending

        later(service)
        assert statuses(service) == {"sent": 1, "failed": 1}

        # A person reads the failed letter's id in the list, has the address
        # fixed, and sends that letter again.
        with service.sessions() as session:
            failed_id = session.scalars(
                select(OutboxMessage.id).where(OutboxMessage.status == "failed")
            ).one()
        assert re.search(rf"\b{failed_id}\b.*failed", failed)
        assert requeued(portaria(smtp_config, "outbox", "retry", str(failed_id))) == 1
        assert counts(portaria(smtp_config, "outbox", "send")) == (1, 0, 0)
        assert statuses(service) == {"sent": 2}
        assert len(smtp_server.received) == 2

    def test_gives_up_after_the_last_attempt_and_a_person_retries_every_failure(
        self, smtp_config: Path, smtp_server: SmtpTestServer
    ) -> None:
        service = queued_requests(smtp_config, 1)
        smtp_server.stop()
        portaria(smtp_config, "outbox", "send")
        later(service, hours=7)
        later(service, hours=14)

        failed = portaria(smtp_config, "outbox", "list", "--status", "failed")
        assert failed.count("gave up after 3 attempts") == 2, failed

        smtp_server.start()
        assert requeued(portaria(smtp_config, "outbox", "retry")) == 2
        assert counts(portaria(smtp_config, "outbox", "send")) == (2, 0, 0)
        assert statuses(service) == {"sent": 2}
        assert len(smtp_server.received) == 2
