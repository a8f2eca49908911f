"""The outbox against a real SQLite database, a real SMTP server and a real Maildir."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from email import policy
from email.parser import BytesParser
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings
from portaria.db import make_engine, make_sessionmaker, migrate_schema, transaction, utcnow
from portaria.letters import UnknownLetterKind, compose
from portaria.outbox import (
    InvalidRecipient,
    OutboxError,
    SendReport,
    backoff_delay,
    build_message,
    enqueue,
    list_outbox,
    retry,
    send_due,
    unbounce,
)
from portaria.outbox_models import BouncedAddress, OutboxMessage
from tests.servers.smtp import SmtpTestServer

FROM = "portaria@acesso.example.com"
REQUESTER = "carla.mendes@example.com"
RECEIVED = {
    "requester_name": "Carla Mendes",
    "original_subject": "#ACESSO novos usuários",
    "people": [
        {
            "name": "Maria Souza",
            "email": "maria.souza@example.com",
            "area": "CS Sul",
            "access_type": "agente",
        },
    ],
}
SUBJECT = "Re: #ACESSO novos usuários — pedido recebido"
MESSAGE_ID = re.compile(r"<portaria\.[0-9a-f]{32}@acesso\.example\.com>")

COMPARED_HEADERS = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "Auto-Submitted",
    "In-Reply-To",
    "References",
    "X-Portaria-Loop",
    "Content-Language",
)

SettingsFactory = Callable[..., Settings]


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(f"sqlite:///{tmp_path}/t.db")
    migrate_schema(engine)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def maildir_settings(tmp_path: Path) -> Settings:
    return Settings(
        database={"url": f"sqlite:///{tmp_path}/t.db"},
        outbound={
            "kind": "maildir",
            "maildir": tmp_path / "mail" / "outbox",
            "from_address": FROM,
        },
        config_dir=tmp_path,
    )


def queue(sessions: sessionmaker[Session], settings: Settings, **overrides: Any) -> OutboxMessage:
    """Enqueue one letter (a "received" to the requester unless overridden) and commit."""
    arguments: dict[str, Any] = {"kind": "received", "to": [REQUESTER], "context": RECEIVED}
    arguments.update(overrides)
    with transaction(sessions) as session:
        return enqueue(session, settings, **arguments)


def row(sessions: sessionmaker[Session], outbox_id: int) -> OutboxMessage:
    with sessions() as session:
        return session.get_one(OutboxMessage, outbox_id)


def count(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(OutboxMessage)) or 0


class TestEnqueue:
    def test_row_holds_the_letter_as_composed(
        self, sessions: sessionmaker[Session], maildir_settings: Settings
    ) -> None:
        queued = queue(sessions, maildir_settings, cause="message:3")

        stored = row(sessions, queued.id)
        letter = compose("received", "pt-BR", RECEIVED)
        assert MESSAGE_ID.fullmatch(stored.message_id)
        assert stored.kind == "received"
        assert stored.language == "pt-BR"
        assert stored.sender == FROM
        assert stored.recipients == [REQUESTER]
        assert stored.subject == SUBJECT
        assert stored.body_text == letter.text
        assert stored.body_html == letter.html
        assert stored.headers == {
            "Auto-Submitted": "auto-generated",
            "X-Portaria-Loop": FROM,
            "X-Auto-Response-Suppress": "OOF, AutoReply",
            "Content-Language": "pt-BR",
        }
        assert stored.status == "pending"
        assert stored.attempts == 0
        assert stored.next_attempt_at == stored.created_at
        assert stored.cause == "message:3"

    def test_reply_threads_under_the_original(
        self, sessions: sessionmaker[Session], maildir_settings: Settings
    ) -> None:
        queued = queue(
            sessions,
            maildir_settings,
            in_reply_to="<orig.1@mail.example.com>",
            references=[
                "<root@mail.example.com>\r\n <orig.0@mail.example.com>",
                "not a message id",
                "<orig.1@mail.example.com>",
            ],
        )

        headers = row(sessions, queued.id).headers
        assert headers["Auto-Submitted"] == "auto-replied"
        assert headers["In-Reply-To"] == "<orig.1@mail.example.com>"
        assert headers["References"] == (
            "<root@mail.example.com> <orig.0@mail.example.com> <orig.1@mail.example.com>"
        )

    def test_message_id_without_brackets_is_bracketed(
        self, sessions: sessionmaker[Session], maildir_settings: Settings
    ) -> None:
        queued = queue(sessions, maildir_settings, in_reply_to="orig@mail.example.com")

        headers = row(sessions, queued.id).headers
        assert headers["In-Reply-To"] == "<orig@mail.example.com>"
        assert headers["References"] == "<orig@mail.example.com>"

    def test_malformed_message_id_is_not_copied(
        self, sessions: sessionmaker[Session], maildir_settings: Settings
    ) -> None:
        queued = queue(sessions, maildir_settings, in_reply_to="<a b>\r\nBcc: x@evil.example")

        headers = row(sessions, queued.id).headers
        assert headers["Auto-Submitted"] == "auto-replied"
        assert "In-Reply-To" not in headers
        assert "References" not in headers

    def test_long_reference_chain_keeps_first_and_latest(
        self, sessions: sessionmaker[Session], maildir_settings: Settings
    ) -> None:
        chain = [f"<m{i}@mail.example.com>" for i in range(50)]

        queued = queue(
            sessions, maildir_settings, in_reply_to="<last@mail.example.com>", references=chain
        )

        references = row(sessions, queued.id).headers["References"].split()
        assert references == [chain[0], *chain[-18:], "<last@mail.example.com>"]

    def test_language_can_be_chosen(
        self, sessions: sessionmaker[Session], maildir_settings: Settings
    ) -> None:
        queued = queue(sessions, maildir_settings, language="en")

        stored = row(sessions, queued.id)
        assert stored.language == "en"
        assert stored.subject == "Re: #ACESSO novos usuários — request received"
        assert stored.headers["Content-Language"] == "en"

    def test_duplicate_recipients_are_sent_once(
        self, sessions: sessionmaker[Session], maildir_settings: Settings
    ) -> None:
        queued = queue(sessions, maildir_settings, to=[REQUESTER, " Carla.Mendes@example.com "])

        assert row(sessions, queued.id).recipients == [REQUESTER]

    @pytest.mark.parametrize(
        "recipient",
        [
            "not-an-address",
            "maria@",
            "@example.com",
            "maria souza@example.com",
            "Maria <maria@example.com>",
            "maria@example.com, joao@example.com",
            "maria@example.com\r\nBcc: x@evil.example",
            "maria@example.com\n",
            "maria@-example.com",
            "maria@[127.0.0.1]",
            '"maria"@example.com',
            "",
        ],
    )
    def test_invalid_recipient_queues_nothing(
        self, sessions: sessionmaker[Session], maildir_settings: Settings, recipient: str
    ) -> None:
        with pytest.raises(InvalidRecipient):
            queue(sessions, maildir_settings, to=[REQUESTER, recipient])

        assert count(sessions) == 0

    def test_a_bare_string_is_not_a_recipient_list(
        self, sessions: sessionmaker[Session], maildir_settings: Settings
    ) -> None:
        with pytest.raises(InvalidRecipient, match="list of addresses"):
            queue(sessions, maildir_settings, to=REQUESTER)

    def test_no_recipients(
        self, sessions: sessionmaker[Session], maildir_settings: Settings
    ) -> None:
        with pytest.raises(InvalidRecipient, match="at least one recipient"):
            queue(sessions, maildir_settings, to=[])

    def test_unknown_kind_queues_nothing(
        self, sessions: sessionmaker[Session], maildir_settings: Settings
    ) -> None:
        with pytest.raises(UnknownLetterKind):
            queue(sessions, maildir_settings, kind="invoice")

        assert count(sessions) == 0

    def test_does_not_commit(
        self, sessions: sessionmaker[Session], maildir_settings: Settings
    ) -> None:
        with sessions() as session:
            enqueue(session, maildir_settings, kind="received", to=[REQUESTER], context=RECEIVED)
            session.rollback()

        assert count(sessions) == 0


@pytest.mark.smtp
class TestSmtpDelivery:
    def test_server_receives_recipients_subject_and_body(
        self,
        sessions: sessionmaker[Session],
        smtp_server: SmtpTestServer,
        outbound_settings: SettingsFactory,
    ) -> None:
        settings = outbound_settings()
        queued = queue(sessions, settings, in_reply_to="<orig@mail.example.com>")
        now = utcnow()

        report = send_due(sessions, settings, now=now)

        assert report == SendReport(sent=1)
        [mail] = smtp_server.received
        assert mail.mail_from == FROM
        assert mail.rcpt_tos == [REQUESTER]
        message = mail.message
        assert message["From"] == f"Portaria <{FROM}>"
        assert message["To"] == REQUESTER
        assert message["Subject"] == SUBJECT
        assert message["Message-ID"] == queued.message_id
        assert message["Date"] == format_datetime(queued.created_at)
        assert message["Auto-Submitted"] == "auto-replied"
        assert message["In-Reply-To"] == "<orig@mail.example.com>"
        assert message["X-Portaria-Loop"] == FROM
        assert message["Content-Language"] == "pt-BR"
        assert message.get_content_type() == "multipart/alternative"
        assert message.get_body(("plain",)).get_content() == queued.body_text
        assert message.get_body(("html",)).get_content() == queued.body_html
        stored = row(sessions, queued.id)
        assert (stored.status, stored.sent_at, stored.attempts) == ("sent", now, 1)
        assert stored.last_error is None

    def test_one_connection_per_run(
        self,
        sessions: sessionmaker[Session],
        smtp_server: SmtpTestServer,
        outbound_settings: SettingsFactory,
    ) -> None:
        settings = outbound_settings()
        for _ in range(3):
            queue(sessions, settings)

        report = send_due(sessions, settings, now=utcnow())

        assert report == SendReport(sent=3)
        assert smtp_server.connections == 1
        assert len(smtp_server.received) == 3

    def test_nothing_due_opens_no_connection(
        self,
        sessions: sessionmaker[Session],
        smtp_server: SmtpTestServer,
        outbound_settings: SettingsFactory,
    ) -> None:
        settings = outbound_settings()
        queued = queue(sessions, settings)

        report = send_due(sessions, settings, now=queued.created_at - timedelta(seconds=1))

        assert report == SendReport()
        assert smtp_server.connections == 0

    def test_temporary_refusal_retries_with_the_same_message_id(
        self,
        sessions: sessionmaker[Session],
        smtp_server: SmtpTestServer,
        outbound_settings: SettingsFactory,
    ) -> None:
        settings = outbound_settings()
        queued = queue(sessions, settings)
        smtp_server.fail_next(451, "4.3.0 try later", command="RCPT")
        first = utcnow()

        assert send_due(sessions, settings, now=first) == SendReport(retried=1)

        deferred = row(sessions, queued.id)
        next_at = first + backoff_delay(1, 60, key=queued.message_id)
        assert deferred.status == "pending"
        assert deferred.attempts == 1
        assert deferred.next_attempt_at == next_at
        assert deferred.last_error == (
            f"recipients refused for now: {REQUESTER}: 451 4.3.0 try later"
        )
        assert smtp_server.received == []

        assert send_due(sessions, settings, now=next_at - timedelta(seconds=1)) == SendReport()
        assert send_due(sessions, settings, now=next_at) == SendReport(sent=1)

        [mail] = smtp_server.received
        assert mail.message["Message-ID"] == queued.message_id
        sent = row(sessions, queued.id)
        assert (sent.status, sent.attempts, sent.last_error) == ("sent", 2, None)

    def test_temporary_refusal_of_data(
        self,
        sessions: sessionmaker[Session],
        smtp_server: SmtpTestServer,
        outbound_settings: SettingsFactory,
    ) -> None:
        settings = outbound_settings()
        queued = queue(sessions, settings)
        smtp_server.fail_next(452, "4.3.1 mailbox full", command="DATA")

        assert send_due(sessions, settings, now=utcnow()) == SendReport(retried=1)
        assert row(sessions, queued.id).last_error == "452 4.3.1 mailbox full"

    def test_permanent_refusal_fails_and_is_not_retried(
        self,
        sessions: sessionmaker[Session],
        smtp_server: SmtpTestServer,
        outbound_settings: SettingsFactory,
    ) -> None:
        settings = outbound_settings()
        queued = queue(sessions, settings)
        smtp_server.fail_next(550, "5.7.1 relaying denied", command="DATA")
        now = utcnow()

        assert send_due(sessions, settings, now=now) == SendReport(failed=1)

        failed = row(sessions, queued.id)
        assert (failed.status, failed.attempts) == ("failed", 1)
        assert failed.last_error == "550 5.7.1 relaying denied"
        assert send_due(sessions, settings, now=now + timedelta(days=2)) == SendReport()
        assert smtp_server.received == []

    def test_refused_recipient_fails(
        self,
        sessions: sessionmaker[Session],
        smtp_server: SmtpTestServer,
        outbound_settings: SettingsFactory,
    ) -> None:
        settings = outbound_settings()
        queued = queue(sessions, settings)
        smtp_server.fail_next(550, "5.1.1 no such user", command="RCPT")

        assert send_due(sessions, settings, now=utcnow()) == SendReport(failed=1)

        assert row(sessions, queued.id).last_error == (
            f"recipients refused: {REQUESTER}: 550 5.1.1 no such user"
        )

    def test_one_refused_recipient_among_several_is_noted(
        self,
        sessions: sessionmaker[Session],
        smtp_server: SmtpTestServer,
        outbound_settings: SettingsFactory,
    ) -> None:
        settings = outbound_settings()
        queued = queue(sessions, settings, to=["gone@example.com", REQUESTER])
        smtp_server.fail_next(550, "5.1.1 no such user", command="RCPT")

        assert send_due(sessions, settings, now=utcnow()) == SendReport(sent=1)

        [mail] = smtp_server.received
        assert mail.rcpt_tos == [REQUESTER]
        sent = row(sessions, queued.id)
        assert sent.status == "sent"
        assert sent.last_error == "refused: gone@example.com: 550 5.1.1 no such user"

    def test_server_down_backs_off_then_sends_when_back(
        self,
        sessions: sessionmaker[Session],
        smtp_server: SmtpTestServer,
        outbound_settings: SettingsFactory,
    ) -> None:
        settings = outbound_settings()
        queued = queue(sessions, settings)
        refused = (
            f"cannot use SMTP server 127.0.0.1:{smtp_server.port}: "
            "ConnectionRefusedError: [Errno 111] Connection refused"
        )
        smtp_server.stop()
        first = utcnow()

        assert send_due(sessions, settings, now=first) == SendReport(retried=1)
        once = row(sessions, queued.id)
        second = first + backoff_delay(1, 60, key=queued.message_id)
        assert (once.attempts, once.next_attempt_at, once.last_error) == (1, second, refused)

        assert send_due(sessions, settings, now=second) == SendReport(retried=1)
        twice = row(sessions, queued.id)
        third = second + backoff_delay(2, 60, key=queued.message_id)
        assert (twice.attempts, twice.next_attempt_at) == (2, third)
        assert twice.next_attempt_at - second > once.next_attempt_at - first

        smtp_server.start()
        assert send_due(sessions, settings, now=third) == SendReport(sent=1)
        [mail] = smtp_server.received
        assert mail.message["Message-ID"] == queued.message_id
        assert row(sessions, queued.id).status == "sent"

    def test_server_down_defers_every_due_message_with_one_connection_attempt(
        self,
        sessions: sessionmaker[Session],
        smtp_server: SmtpTestServer,
        outbound_settings: SettingsFactory,
    ) -> None:
        settings = outbound_settings()
        ids = [queue(sessions, settings).id for _ in range(3)]
        smtp_server.stop()

        assert send_due(sessions, settings, now=utcnow()) == SendReport(retried=3)

        assert [row(sessions, i).attempts for i in ids] == [1, 1, 1]

    def test_gives_up_after_max_attempts(
        self,
        sessions: sessionmaker[Session],
        smtp_server: SmtpTestServer,
        outbound_settings: SettingsFactory,
    ) -> None:
        settings = outbound_settings(max_attempts=2)
        queued = queue(sessions, settings)
        smtp_server.fail_next(421, "4.7.0 too busy", command="MAIL", times=10)
        now = utcnow()

        assert send_due(sessions, settings, now=now) == SendReport(retried=1)
        assert send_due(sessions, settings, now=now + timedelta(hours=1)) == SendReport(failed=1)

        failed = row(sessions, queued.id)
        assert (failed.status, failed.attempts) == ("failed", 2)
        assert failed.last_error == (
            f"gave up after 2 attempts: connection to 127.0.0.1:{smtp_server.port} lost: "
            "421 4.7.0 too busy"
        )

    def test_dropped_connection_is_reopened_once(
        self,
        sessions: sessionmaker[Session],
        smtp_server: SmtpTestServer,
        outbound_settings: SettingsFactory,
    ) -> None:
        settings = outbound_settings()
        ids = [queue(sessions, settings).id for _ in range(2)]
        smtp_server.drop_next("MAIL", after=1)

        assert send_due(sessions, settings, now=utcnow()) == SendReport(sent=2)

        assert smtp_server.connections == 2
        assert [m.message["Message-ID"] for m in smtp_server.received] == [
            row(sessions, i).message_id for i in ids
        ]

    def test_connection_dropped_again_defers_the_rest(
        self,
        sessions: sessionmaker[Session],
        smtp_server: SmtpTestServer,
        outbound_settings: SettingsFactory,
    ) -> None:
        settings = outbound_settings()
        ids = [queue(sessions, settings).id for _ in range(3)]
        smtp_server.drop_next("MAIL", after=1, times=2)

        assert send_due(sessions, settings, now=utcnow()) == SendReport(sent=1, retried=2)

        assert smtp_server.connections == 2
        assert [row(sessions, i).status for i in ids] == ["sent", "pending", "pending"]
        assert row(sessions, ids[1]).last_error == (
            f"connection to 127.0.0.1:{smtp_server.port} lost: SMTPServerDisconnected: "
            "Connection unexpectedly closed"
        )
        assert row(sessions, ids[2]).last_error == row(sessions, ids[1]).last_error

    def test_header_injection_through_names_and_subjects(
        self,
        sessions: sessionmaker[Session],
        smtp_server: SmtpTestServer,
        outbound_settings: SettingsFactory,
    ) -> None:
        settings = outbound_settings()
        context = {
            **RECEIVED,
            "requester_name": "Ana\r\nBcc: x@evil.example",
            "original_subject": "#ACESSO\r\nBcc: x@evil.example",
        }
        queue(sessions, settings, context=context)

        assert send_due(sessions, settings, now=utcnow()) == SendReport(sent=1)

        [mail] = smtp_server.received
        assert mail.rcpt_tos == [REQUESTER]
        assert mail.message["Bcc"] is None
        assert b"\r\nBcc:" not in mail.raw
        assert mail.message["Subject"] == "Re: #ACESSO Bcc: x@evil.example — pedido recebido"

    def test_utf8_address_and_sender_name(
        self,
        sessions: sessionmaker[Session],
        smtp_server: SmtpTestServer,
        outbound_settings: SettingsFactory,
    ) -> None:
        settings = outbound_settings(from_name="Suporte de Acessos — Portaria")
        queue(sessions, settings, to=["joão.silva@example.com"])

        assert send_due(sessions, settings, now=utcnow()) == SendReport(sent=1)

        [mail] = smtp_server.received
        assert mail.rcpt_tos == ["joão.silva@example.com"]
        assert "SMTPUTF8" in mail.mail_options
        assert mail.message["To"] == "joão.silva@example.com"
        assert mail.message["From"].addresses[0].display_name == "Suporte de Acessos — Portaria"
        assert mail.message["Subject"] == SUBJECT

    def test_ascii_mail_encodes_utf8_headers(
        self,
        sessions: sessionmaker[Session],
        smtp_server: SmtpTestServer,
        outbound_settings: SettingsFactory,
    ) -> None:
        settings = outbound_settings(from_name="Suporte de Acessos — Portaria")
        queue(sessions, settings)

        send_due(sessions, settings, now=utcnow())

        [mail] = smtp_server.received
        assert "SMTPUTF8" not in mail.mail_options
        assert mail.raw.isascii()
        assert mail.message["Subject"] == SUBJECT
        assert mail.message["From"].addresses[0].display_name == "Suporte de Acessos — Portaria"


@pytest.mark.smtp
class TestSmtpSecurity:
    @pytest.mark.parametrize(
        ("security", "username"),
        [
            ("plain", None),
            ("plain", "portaria"),
            ("starttls", None),
            ("starttls", "portaria"),
            ("ssl", None),
            ("ssl", "portaria"),
        ],
    )
    def test_each_security_mode_delivers(
        self,
        sessions: sessionmaker[Session],
        make_smtp_server: Callable[..., SmtpTestServer],
        outbound_settings: SettingsFactory,
        security: str,
        username: str | None,
    ) -> None:
        server = make_smtp_server(security, username=username, password="s3cr3t-senha")
        settings = outbound_settings(server)
        queued = queue(sessions, settings)

        assert send_due(sessions, settings, now=utcnow()) == SendReport(sent=1)

        [mail] = server.received
        assert mail.message["Message-ID"] == queued.message_id

    def test_wrong_password_defers_and_never_logs_the_password(
        self,
        sessions: sessionmaker[Session],
        make_smtp_server: Callable[..., SmtpTestServer],
        outbound_settings: SettingsFactory,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        server = make_smtp_server("starttls", username="portaria", password="s3cr3t-senha")
        settings = outbound_settings(server, password="errada-123")
        queued = queue(sessions, settings)
        caplog.set_level(logging.DEBUG)

        assert send_due(sessions, settings, now=utcnow()) == SendReport(retried=1)

        assert row(sessions, queued.id).last_error == (
            f"cannot use SMTP server 127.0.0.1:{server.port}: "
            "535 5.7.8 Authentication credentials invalid"
        )
        assert "errada-123" not in caplog.text
        assert server.received == []

    def test_untrusted_certificate_defers(
        self,
        sessions: sessionmaker[Session],
        make_smtp_server: Callable[..., SmtpTestServer],
        outbound_settings: SettingsFactory,
    ) -> None:
        server = make_smtp_server("ssl")
        settings = outbound_settings(server, ca_file=None)
        queued = queue(sessions, settings)

        assert send_due(sessions, settings, now=utcnow()) == SendReport(retried=1)

        assert "SSLCertVerificationError" in (row(sessions, queued.id).last_error or "")
        assert server.received == []


class TestMaildir:
    def test_one_file_per_message_that_parses_back_to_the_same_headers(
        self, sessions: sessionmaker[Session], maildir_settings: Settings, tmp_path: Path
    ) -> None:
        first = queue(sessions, maildir_settings, in_reply_to="<orig@mail.example.com>")
        second = queue(
            sessions, maildir_settings, kind="welcome", to=["maria@example.com"], context=WELCOME
        )

        assert send_due(sessions, maildir_settings, now=utcnow()) == SendReport(sent=2)

        folder = tmp_path / "mail" / "outbox"
        files = sorted((folder / "new").iterdir())
        assert len(files) == 2
        assert list((folder / "tmp").iterdir()) == []
        parsed = {}
        for path in files:
            raw = path.read_bytes()
            assert b"\r\n" not in raw
            message = BytesParser(policy=policy.default).parsebytes(raw)
            parsed[message["Message-ID"]] = message
        for queued in (first, second):
            expected = build_message(row(sessions, queued.id), "Portaria")
            message = parsed[queued.message_id]
            for name in COMPARED_HEADERS:
                assert message[name] == expected[name], name
            assert message.get_body(("plain",)).get_content() == queued.body_text
        assert parsed[first.message_id]["In-Reply-To"] == "<orig@mail.example.com>"
        assert parsed[second.message_id]["Auto-Submitted"] == "auto-generated"
        assert [row(sessions, q.id).status for q in (first, second)] == ["sent", "sent"]

    def test_unwritable_maildir_defers(
        self, sessions: sessionmaker[Session], maildir_settings: Settings, tmp_path: Path
    ) -> None:
        # A file where the Maildir's parent folder should be.
        (tmp_path / "mail").write_text("not a folder")
        queued = queue(sessions, maildir_settings)

        assert send_due(sessions, maildir_settings, now=utcnow()) == SendReport(retried=1)

        assert (row(sessions, queued.id).last_error or "").startswith(
            f"cannot write to Maildir {tmp_path / 'mail' / 'outbox'}:"
        )


WELCOME = {
    "user": {
        "name": "Maria Souza",
        "email": "maria@example.com",
        "area": "CS Sul",
        "access_type": "agente",
    },
    "set_password_url": "https://portaria.example.com/set-password/abc",
    "expires_at": datetime.fromisoformat("2026-12-07T17:30:00+00:00"),
    "console_url": "https://portaria.example.com",
}


class TestLookingAfterTheOutbox:
    def fail(self, sessions: sessionmaker[Session], outbox_id: int) -> None:
        with transaction(sessions) as session:
            stored = session.get_one(OutboxMessage, outbox_id)
            stored.status, stored.attempts, stored.last_error = "failed", 8, "550 nope"

    def test_retry_puts_failed_messages_back(
        self, sessions: sessionmaker[Session], maildir_settings: Settings
    ) -> None:
        ids = [queue(sessions, maildir_settings).id for _ in range(3)]
        self.fail(sessions, ids[0])
        self.fail(sessions, ids[1])

        with transaction(sessions) as session:
            assert retry(session, [ids[0], ids[0]]) == 1
        assert [row(sessions, i).status for i in ids] == ["pending", "failed", "pending"]
        assert row(sessions, ids[0]).attempts == 0

        with transaction(sessions) as session:
            assert retry(session) == 1
        assert [row(sessions, i).status for i in ids] == ["pending", "pending", "pending"]

        assert send_due(sessions, maildir_settings) == SendReport(sent=3)

    def test_retry_of_ids_that_did_not_fail_changes_nothing(
        self, sessions: sessionmaker[Session], maildir_settings: Settings
    ) -> None:
        failed, pending, sent = (queue(sessions, maildir_settings).id for _ in range(3))
        self.fail(sessions, failed)
        with transaction(sessions) as session:
            session.get_one(OutboxMessage, sent).status = "sent"

        with transaction(sessions) as session, pytest.raises(OutboxError) as refused:
            retry(session, [failed, pending, sent, 9999])

        assert str(refused.value) == (
            "só e-mails com falha voltam à fila (only failed emails can be retried): "
            f"#{pending} ainda está na fila (pending), #{sent} já foi enviado (sent), "
            "#9999 não existe (no such email); veja (see) `portaria outbox list`; "
            "nada foi alterado (nothing was changed)"
        )
        assert [row(sessions, i).status for i in (failed, pending, sent)] == [
            "failed",
            "pending",
            "sent",
        ]
        assert row(sessions, failed).attempts == 8

    def test_unbounce_clears_only_bounced_addresses(self, sessions: sessionmaker[Session]) -> None:
        with transaction(sessions) as session:
            session.add(BouncedAddress(email="ana@example.com", last_reason="550"))
            session.add(BouncedAddress(email="rui@example.com", last_reason="550"))

        with transaction(sessions) as session, pytest.raises(OutboxError) as refused:
            unbounce(session, ["ana@example.com", "not-an-email", "bia@example.com"])

        assert str(refused.value) == (
            "'not-an-email' não é um endereço de e-mail (not an email address); "
            "bia@example.com não está entre os devolvidos (is not a bounced address); "
            "veja (see) `portaria outbox bounced`; nada foi alterado (nothing was changed)"
        )
        with transaction(sessions) as session:
            assert unbounce(session, [" Ana@Example.com", "ana@example.com"]) == [
                "ana@example.com"
            ]
        with sessions() as session:
            assert list(session.scalars(select(BouncedAddress.email))) == ["rui@example.com"]

    def test_list_outbox(
        self, sessions: sessionmaker[Session], maildir_settings: Settings
    ) -> None:
        ids = [queue(sessions, maildir_settings).id for _ in range(3)]
        self.fail(sessions, ids[1])

        with sessions() as session:
            assert [r.id for r in list_outbox(session)] == ids
            assert [r.id for r in list_outbox(session, status="failed")] == [ids[1]]
            assert [r.id for r in list_outbox(session, status="pending")] == [ids[0], ids[2]]
            with pytest.raises(
                OutboxError,
                match=r"^situação de e-mail desconhecida \(unknown outbox status\) 'lost'",
            ):
                list_outbox(session, status="lost")


class TestBackoff:
    @pytest.mark.parametrize(
        ("attempts", "base"),
        [(1, 60), (2, 120), (3, 240), (4, 480), (9, 15360), (30, 21600), (0, 60)],
    )
    def test_doubles_with_at_most_ten_percent_jitter_and_a_cap(
        self, attempts: int, base: int
    ) -> None:
        delay = backoff_delay(attempts, 60, key="<portaria.1@acesso.example.com>")

        assert timedelta(seconds=base) <= delay <= timedelta(seconds=base * 1.1)

    def test_same_message_same_delay(self) -> None:
        key = "<portaria.1@acesso.example.com>"

        assert backoff_delay(3, 60, key=key) == backoff_delay(3, 60, key=key)
        assert backoff_delay(3, 60, key=key) != backoff_delay(3, 60, key="<portaria.2@x>")
