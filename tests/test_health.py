"""Mailbox health: one alert to the admin after a long failure, one note when it recovers.

The clock is simulated: every call passes ``now``. The last class drives real
poll failures (Dovecot stopped, a wrong password) and records them exactly
as the poller does after each attempt.
"""

from __future__ import annotations

import contextlib
import logging
import mailbox as maildir
from datetime import UTC, datetime, timedelta
from email import policy
from email.parser import BytesParser

import pytest
from sqlalchemy import func, select

from config.settings import Settings
from intake.health import HealthChange, failure_advice, failure_kind, record_poll_health
from intake.models import MailboxState
from intake.poller import poll_once
from intake.sources import MailboxError, open_source
from portaria.db import transaction
from portaria.outbox import SendReport, send_due
from portaria.outbox_models import OutboxMessage
from portaria.wiring import Service, open_service
from tests.servers.dovecot import DovecotServer, ImapAccount

MAILBOX = "imap://acesso%40empresa.com.br@imap.empresa.com.br:993/INBOX"
T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)  # 09:00 in Brasília
REFUSED = (
    "IMAP server imap.empresa.com.br:993 refused the login of 'acesso@empresa.com.br' "
    "([AUTHENTICATIONFAILED] Authentication failed.); check mailbox.username and the password"
)


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def state(service: Service, mailbox: str = MAILBOX) -> MailboxState | None:
    with service.sessions() as session:
        return session.get(MailboxState, mailbox)


def letters(service: Service) -> list[OutboxMessage]:
    with service.sessions() as session:
        return list(session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))


def fail(service: Service, minutes: int, error: str = REFUSED) -> HealthChange:
    # What the poller's own bookkeeping stores after a failed attempt.
    with transaction(service.sessions) as session:
        row = session.get(MailboxState, MAILBOX) or MailboxState(mailbox=MAILBOX)
        session.add(row)
        row.last_poll_at, row.last_error = at(minutes), error
    return record_poll_health(
        service.sessions, service.settings, MAILBOX, ok=False, error=error, now=at(minutes)
    )


def succeed(service: Service, minutes: int) -> HealthChange:
    return record_poll_health(
        service.sessions, service.settings, MAILBOX, ok=True, now=at(minutes)
    )


def with_service(settings: Settings, **changes: object) -> Service:
    service = type(settings.service).model_validate(settings.service.model_dump() | changes)
    changed = settings.model_copy(update={"service": service})
    return open_service(changed, migrate=True)


class TestAlertOnce:
    def test_a_first_failure_only_starts_the_clock(self, service: Service) -> None:
        change = fail(service, 0)

        assert change == HealthChange(MAILBOX, T0)
        current = state(service)
        assert current is not None
        assert (current.failing_since, current.alert_sent_at) == (T0, None)
        assert letters(service) == []

    def test_the_admin_is_emailed_once_after_the_threshold(self, service: Service) -> None:
        for minutes in (0, 10, 29):
            assert fail(service, minutes).letter is None

        alert = fail(service, 30)
        later = [fail(service, minutes) for minutes in (31, 60, 600)]

        [row] = letters(service)
        assert alert == HealthChange(MAILBOX, T0, "mailbox_failing", row.id)
        assert [change.letter for change in later] == [None, None, None]
        assert row.kind == "mailbox_failing"
        assert row.recipients == ["suporte@portaria.test"]
        assert row.subject == "Alerta: a caixa de pedidos de acesso não está sendo lida"
        assert row.headers["Auto-Submitted"] == "auto-generated"
        assert row.cause == f"mailbox:{MAILBOX}"[:80]
        assert (
            "O Portaria não consegue ler a caixa de pedidos de acesso desde\n"
            "07/12/2026 09:00 (horário de Brasília)."
        ) in row.body_text
        assert f"  Caixa: {MAILBOX}\n  Último erro: {REFUSED}\n" in row.body_text
        assert "  Última leitura com sucesso: nenhuma\n" in row.body_text
        assert f"O que fazer: {failure_advice(REFUSED, 'pt-BR')}\n" in row.body_text
        current = state(service)
        assert current is not None
        assert (current.failing_since, current.alert_sent_at) == (T0, at(30))

    def test_recovery_after_an_alert_is_announced_once(self, service: Service) -> None:
        fail(service, 0)
        fail(service, 30)

        recovered = succeed(service, 52)
        again = succeed(service, 53)

        _alert, note = letters(service)
        assert recovered == HealthChange(MAILBOX, None, "mailbox_recovered", note.id)
        assert again == HealthChange(MAILBOX, None)
        assert note.kind == "mailbox_recovered"
        assert note.recipients == ["suporte@portaria.test"]
        assert note.subject == "Resolvido: a caixa de pedidos de acesso voltou a ser lida"
        assert (
            "O Portaria voltou a ler a caixa de pedidos de acesso em\n"
            "07/12/2026 09:52 (horário de Brasília). A leitura falhava desde\n"
            "07/12/2026 09:00 (horário de Brasília);"
        ) in note.body_text
        assert f"  Último erro antes da volta: {REFUSED}\n" in note.body_text
        current = state(service)
        assert current is not None
        assert (current.failing_since, current.alert_sent_at) == (None, None)

    def test_a_short_outage_tells_nobody(self, service: Service) -> None:
        fail(service, 0)
        fail(service, 20)

        assert succeed(service, 29) == HealthChange(MAILBOX, None)

        assert letters(service) == []
        current = state(service)
        assert current is not None
        assert (current.failing_since, current.alert_sent_at) == (None, None)

    def test_a_new_outage_after_recovery_alerts_again(self, service: Service) -> None:
        fail(service, 0)
        fail(service, 30)
        succeed(service, 40)

        fail(service, 100)
        second = fail(service, 130)

        assert second.letter == "mailbox_failing"
        assert second.failing_since == at(100)
        assert [row.kind for row in letters(service)] == [
            "mailbox_failing",
            "mailbox_recovered",
            "mailbox_failing",
        ]

    def test_the_alert_survives_a_restart(self, service: Service, settings: Settings) -> None:
        fail(service, 0)
        fail(service, 30)
        restarted = open_service(settings)

        change = record_poll_health(
            restarted.sessions, settings, MAILBOX, ok=False, error=REFUSED, now=at(45)
        )

        assert change == HealthChange(MAILBOX, T0)
        assert len(letters(service)) == 1

    def test_a_success_with_no_history_writes_nothing(self, service: Service) -> None:
        assert succeed(service, 0) == HealthChange(MAILBOX, None)

        with service.sessions() as session:
            assert session.scalar(select(func.count()).select_from(MailboxState)) == 0

    def test_the_threshold_is_configurable(self, settings: Settings) -> None:
        service = with_service(settings, alert_after_minutes=5)
        fail(service, 0)

        assert fail(service, 4).letter is None
        assert fail(service, 5).letter == "mailbox_failing"


class TestWhoIsTold:
    def test_admin_address_wins_over_support_address(self, settings: Settings) -> None:
        service = with_service(settings, admin_address="TI@Portaria.test")
        fail(service, 0)
        fail(service, 30)

        [row] = letters(service)
        assert row.recipients == ["ti@portaria.test"]

    def test_english_when_the_service_writes_english(self, settings: Settings) -> None:
        service = with_service(settings, language="en")
        fail(service, 0)
        fail(service, 30)

        [row] = letters(service)
        assert row.subject == "Alert: the access request mailbox is not being read"
        assert f"What to do: {failure_advice(REFUSED, 'en')}\n" in row.body_text

    def test_nobody_configured_is_logged_once(
        self, settings: Settings, caplog: pytest.LogCaptureFixture
    ) -> None:
        service = with_service(settings, support_address=None)
        caplog.set_level(logging.ERROR, logger="intake.health")
        fail(service, 0)

        fail(service, 30)
        fail(service, 40)

        assert letters(service) == []
        assert [record.getMessage() for record in caplog.records] == [
            f"{MAILBOX}: polling has failed for 30 min and nobody is told: "
            "set service.admin_address or service.support_address"
        ]
        current = state(service)
        assert current is not None
        assert current.alert_sent_at == at(30)


class TestFailureKinds:
    @pytest.mark.parametrize(
        ("error", "kind"),
        [
            (REFUSED, "login"),
            (
                "IMAP server h:993: no password for 'a'; set mailbox.password_file or "
                "PORTARIA_MAILBOX__PASSWORD",
                "login",
            ),
            (
                "IMAP server h:993 refused the OAuth2 login of 'a' ([AUTHENTICATIONFAILED] "
                "Authentication failed.); check mailbox.username and that the token ...",
                "token",
            ),
            (
                "IMAP server h:993: no access token: mailbox.oauth2.token_command: 'tok' "
                "exited with status 1",
                "token",
            ),
            (
                "IMAP server h:993: connecting: the server's certificate is not trusted "
                "(self-signed certificate); set mailbox.ca_file to the CA that signed it",
                "tls",
            ),
            (
                "IMAP server h:993: folder 'Pedidos' does not exist for 'a'; check mailbox.folder",
                "folder",
            ),
            ("IMAP server h:993: connecting: Connection refused", "connection"),
            (
                "Maildir /srv/in: cannot create it: Permission denied; check mailbox.maildir",
                "maildir",
            ),
            (
                "Maildir /srv/in não existe (does not exist); corrija mailbox.maildir ou rode "
                "(run) `portaria init`",
                "maildir",
            ),
            (None, "connection"),
        ],
    )
    def test_kind(self, error: str | None, kind: str) -> None:
        assert failure_kind(error) == kind

    def test_advice_names_the_settings_and_the_next_step(self) -> None:
        assert failure_advice(REFUSED, "pt-BR") == (
            "o servidor recusou o login: confira mailbox.username e a senha "
            "(mailbox.password_file ou PORTARIA_MAILBOX__PASSWORD); "
            "depois rode `portaria poll --once`"
        )
        assert failure_advice("x", "de") == failure_advice("x", "pt-BR")


@pytest.mark.imap
class TestRealPollFailures:
    def imap_service(self, settings: Settings, account: ImapAccount, **mailbox: object) -> Service:
        changed = settings.model_copy(update={"mailbox": account.mailbox_settings(**mailbox)})
        return open_service(changed, migrate=True)

    def attempt(self, service: Service) -> None:
        """One poll; the poller records its health itself, on the real clock."""
        with contextlib.suppress(MailboxError):
            poll_once(service.sessions, service.settings)

    def let_time_pass(self, service: Service, minutes: int) -> None:
        """Age the recorded failure, as if the mailbox had been failing that long."""
        with transaction(service.sessions) as session:
            row = session.get(MailboxState, self.identity(service))
            assert row is not None and row.failing_since is not None
            row.failing_since -= timedelta(minutes=minutes)

    @staticmethod
    def identity(service: Service) -> str:
        return open_source(service.settings.mailbox, service.settings.path).identity

    @staticmethod
    def kinds(service: Service) -> list[str]:
        return [row.kind for row in letters(service)]

    def test_server_down_alerts_and_recovery_is_announced(
        self, settings: Settings, dovecot_server: DovecotServer, imap_account: ImapAccount
    ) -> None:
        service = self.imap_service(settings, imap_account)
        self.attempt(service)
        assert self.kinds(service) == []

        dovecot_server.stop()
        try:
            self.attempt(service)
            assert self.kinds(service) == []
            self.let_time_pass(service, 31)
            self.attempt(service)
            assert self.kinds(service) == ["mailbox_failing"]
            self.attempt(service)
            assert self.kinds(service) == ["mailbox_failing"]  # once, not every poll
        finally:
            dovecot_server.start()
        self.attempt(service)

        assert self.kinds(service) == ["mailbox_failing", "mailbox_recovered"]
        failing, note = letters(service)
        error = f"IMAP server 127.0.0.1:{imap_account.port}: connecting: Connection refused"
        assert f"  Último erro: {error}\n" in failing.body_text
        assert f"O que fazer: {failure_advice(error, 'pt-BR')}\n" in failing.body_text
        assert note.kind == "mailbox_recovered"

        report = send_due(service.sessions, service.settings)

        assert report == SendReport(sent=2)
        outbox = maildir.Maildir(settings.path(settings.outbound.maildir), create=False)
        subjects = sorted(
            BytesParser(policy=policy.default).parsebytes(outbox.get_bytes(key))["Subject"]
            for key in outbox.iterkeys()
        )
        assert subjects == [
            "Alerta: a caixa de pedidos de acesso não está sendo lida",
            "Resolvido: a caixa de pedidos de acesso voltou a ser lida",
        ]

    def test_a_refused_login_alerts_with_the_login_advice(
        self, settings: Settings, imap_account: ImapAccount
    ) -> None:
        service = self.imap_service(settings, imap_account, password="wrong")

        self.attempt(service)
        self.let_time_pass(service, 30)
        self.attempt(service)

        [row] = letters(service)
        assert row.kind == "mailbox_failing"
        assert f"O que fazer: {failure_advice(REFUSED, 'pt-BR')}\n" in row.body_text
        current = state(service, self.identity(service))
        assert current is not None
        assert current.last_error == (
            f"IMAP server 127.0.0.1:{imap_account.port} refused the login of "
            f"'{imap_account.username}' ([AUTHENTICATIONFAILED] Authentication failed.); "
            "check mailbox.username and the password"
        )
