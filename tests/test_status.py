"""`portaria status`: the operations view, its problems and its exit status.

The database is real SQLite, filled the way the services fill it; the clock
is fixed by passing ``now``. The command itself runs through Typer, and one
class reads the view after real faults against Dovecot.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import typer
from typer.testing import CliRunner

from config.settings import Settings
from engine.models import Rule, RuleRun
from intake.health import failure_advice
from intake.models import InboundMessage, MailboxState
from intake.poller import poll_once
from intake.sources import MailboxError, open_source
from portaria.commands.status import (
    Finding,
    StatusReport,
    format_status,
    read_status,
    status_command,
)
from portaria.db import transaction, utcnow
from portaria.outbox_models import OutboxMessage
from portaria.wiring import Service, open_service
from provisioning.models import AccessRequest
from tests.servers.dovecot import DovecotServer, ImapAccount

NOW = datetime(2026, 12, 7, 15, 0, tzinfo=UTC)  # 12:00 in Brasília
ZONE = ZoneInfo("America/Sao_Paulo")
REFUSED = (
    "IMAP server imap.empresa.com.br:993 refused the login of 'acesso' "
    "([AUTHENTICATIONFAILED] Authentication failed.); check mailbox.username and the password"
)


def ago(**delta: float) -> datetime:
    return NOW - timedelta(**delta)


def identity(settings: Settings) -> str:
    return open_source(settings.mailbox, settings.path).identity


def add(service: Service, *rows: Any) -> None:
    with transaction(service.sessions) as session:
        session.add_all(rows)


def polled(service: Service, *, error: str | None = None, **times: datetime) -> None:
    """A MailboxState as the poller leaves it: last poll one minute ago unless given."""
    values: dict[str, Any] = {
        "last_poll_at": ago(minutes=1),
        "last_result": "0 new message(s); 0 moved",
        "last_success_at": ago(minutes=1),
    }
    values.update(times)
    add(service, MailboxState(mailbox=identity(service.settings), last_error=error, **values))


def message(outcome: str, received_at: datetime, reason: str = "", n: int = 0) -> InboundMessage:
    return InboundMessage(
        mailbox="maildir:x",
        mailbox_key=f"{outcome}-{received_at.isoformat()}-{n}",
        sha256="0" * 64,
        size=100,
        sender="helena@cliente.test",
        subject="#ACESSO",
        outcome=outcome,
        reason=reason,
        received_at=received_at,
    )


def outbox_row(
    status: str, attempts: int, created_at: datetime, error: str | None
) -> OutboxMessage:
    return OutboxMessage(
        message_id=f"<portaria.{status}.{attempts}.{created_at.timestamp()}@portaria.test>",
        kind="received",
        language="pt-BR",
        sender="acesso@portaria.test",
        recipients=["carla@cliente.test"],
        subject="Re: #ACESSO",
        body_text="x",
        body_html=None,
        headers={},
        status=status,
        attempts=attempts,
        next_attempt_at=created_at,
        created_at=created_at,
        last_error=error,
    )


def request(created_at: datetime, flags: list[str] | None = None) -> AccessRequest:
    return AccessRequest(
        requester_email="carla@cliente.test",
        name="Maria",
        email=f"maria.{created_at.timestamp()}@cliente.test",
        area="TI",
        access_type="comum",
        status="pending",
        flags=flags or [],
        created_at=created_at,
    )


def status(service: Service, **options: Any) -> StatusReport:
    with service.sessions() as session:
        return read_status(session, service.settings, now=NOW, **options)


def codes(report: StatusReport) -> list[tuple[str, str]]:
    return [(finding.code, finding.severity) for finding in report.findings]


class TestMailbox:
    def test_a_mailbox_never_polled_needs_a_person(self, service: Service) -> None:
        report = status(service)

        assert codes(report) == [("mailbox_never_polled", "problem")]
        assert report.exit_code == 1
        assert report.mailbox.identity == identity(service.settings)
        assert report.mailbox.last_poll_at is None

    def test_a_healthy_service_exits_zero(self, service: Service) -> None:
        polled(service)

        report = status(service)

        assert report.findings == []
        assert report.exit_code == 0
        text = format_status(report, ZONE)
        assert text.endswith(
            "Tudo certo: nada precisa de uma pessoa (all good: nothing needs a person)"
        )
        assert "  última leitura (last poll): 07/12/2026 11:59, ok\n" in text

    def test_a_short_failure_is_a_warning(self, service: Service) -> None:
        polled(
            service, error=REFUSED, last_success_at=ago(minutes=11), failing_since=ago(minutes=10)
        )

        report = status(service)

        assert report.findings == [
            Finding(
                "mailbox_failing",
                "warning",
                "a leitura da caixa falha há 10 min",
                "polling has failed for 10 min",
                failure_advice(REFUSED, "pt-BR"),
                failure_advice(REFUSED, "en"),
            )
        ]
        assert report.exit_code == 0

    def test_a_long_failure_is_a_problem_with_what_to_do(self, service: Service) -> None:
        polled(
            service,
            error=REFUSED,
            last_success_at=ago(hours=3),
            failing_since=ago(hours=2, minutes=5),
            alert_sent_at=ago(hours=1, minutes=35),
        )

        report = status(service)
        text = format_status(report, ZONE)

        assert codes(report) == [("mailbox_failing", "problem")]
        assert report.exit_code == 1
        assert (
            "  última leitura (last poll): 07/12/2026 11:59, falhou (failed)\n"
            "  última leitura ok (last success): 07/12/2026 09:00\n"
            "  resultado (last result): 0 new message(s); 0 moved\n"
            f"  erro (error): {REFUSED}\n"
            "  falhando desde (failing since): 07/12/2026 09:55\n"
            "  alerta enviado (alert sent): 07/12/2026 10:25\n"
        ) in text
        assert text.endswith(
            "Precisa de uma pessoa (needs a person): 1\n"
            "  PROBLEMA (problem): a leitura da caixa falha há 2 h 5 min "
            "(polling has failed for 2 h 5 min)\n"
            "    o que fazer: o servidor recusou o login: confira mailbox.username e a senha "
            "(mailbox.password_file ou PORTARIA_MAILBOX__PASSWORD); depois rode "
            "`portaria poll --once`\n"
            "    (what to do: the server refused the login: check mailbox.username and the "
            "password (mailbox.password_file or PORTARIA_MAILBOX__PASSWORD); then run "
            "`portaria poll --once`)"
        )

    def test_without_failing_since_the_last_success_dates_the_failure(
        self, service: Service
    ) -> None:
        polled(service, error=REFUSED, last_success_at=ago(minutes=45))

        [finding] = status(service).findings

        assert (finding.code, finding.severity, finding.en) == (
            "mailbox_failing",
            "problem",
            "polling has failed for 45 min",
        )

    def test_a_silent_poller_is_a_problem(self, service: Service) -> None:
        polled(service, last_poll_at=ago(hours=3), last_success_at=ago(hours=3))

        report = status(service)

        assert report.findings[0] == Finding(
            "mailbox_silent",
            "problem",
            "nenhuma leitura da caixa há 3 h; o leitor parou?",
            "no poll for 3 h; is the poller running?",
            "inicie `portaria run` (ou `portaria schedule --with-intake`) e veja o log dele",
            "start `portaria run` (or `portaria schedule --with-intake`) and read its log",
        )
        assert report.exit_code == 1

    def test_silence_allows_three_poll_intervals(self, settings: Settings) -> None:
        slow = settings.model_copy(
            update={"mailbox": settings.mailbox.model_copy(update={"poll_interval": 1200})}
        )
        service = open_service(slow, migrate=True)
        polled(service, last_poll_at=ago(minutes=50), last_success_at=ago(minutes=50))

        assert status(service).findings == []


class TestCounts:
    def test_outcomes_all_time_and_in_the_window(self, service: Service) -> None:
        polled(service)
        add(
            service,
            message("request", ago(hours=1)),
            message("request", ago(hours=30)),
            message("ignored", ago(days=3)),
            message("incomplete", ago(minutes=5)),
        )

        report = status(service)

        assert {k: n for k, n in report.outcomes_all.items() if n} == {
            "request": 2,
            "incomplete": 1,
            "ignored": 1,
        }
        assert {"held", "unreadable", "duplicate", "left"} <= set(report.outcomes_all)
        assert report.outcomes_recent["request"] == 1
        assert report.outcomes_recent["incomplete"] == 1
        assert report.outcomes_recent["ignored"] == 0
        assert report.findings == []
        assert "  pedido (request): 2 / 1\n" in format_status(report, ZONE)

    def test_queue_and_outbox_sizes(self, service: Service) -> None:
        polled(service)
        add(
            service,
            request(ago(hours=2)),
            request(ago(hours=1), flags=["admin_access"]),
            outbox_row("pending", 0, ago(minutes=1), None),
            outbox_row("sent", 1, ago(hours=1), None),
            outbox_row("sent", 1, ago(hours=2), None),
        )

        report = status(service)

        assert (report.pending_requests, report.flagged_requests) == (2, 1)
        assert report.oldest_pending_at == ago(hours=2)
        assert report.outbox == {
            "pending": 1,
            "retrying": 0,
            "failed": 0,
            "failed_recent": 0,
            "sent": 2,
        }
        assert report.findings == []
        text = format_status(report, ZONE)
        assert (
            "Pedidos pendentes (pending requests): 2, com alerta (flagged): 1, "
            "mais antigo (oldest): 07/12/2026 10:00\n"
            "Fila de e-mails (outbox): 1 a enviar (pending), 0 em nova tentativa (retrying), "
            "0 com falha (failed), 2 enviados (sent)"
        ) in text


class TestWhatNeedsAPerson:
    def test_unreadable_and_held_messages_in_the_window(self, service: Service) -> None:
        polled(service)
        add(
            service,
            message("unreadable", ago(hours=2), "no header block"),
            message("held", ago(hours=1), "sender outside policy"),
            message("unreadable", ago(days=2), "old one", n=1),
        )

        report = status(service)
        text = format_status(report, ZONE)

        assert codes(report) == [
            ("unreadable_messages", "problem"),
            ("held_messages", "problem"),
        ]
        assert [(m.outcome, m.reason) for m in report.recent_attention] == [
            ("unreadable", "old one"),
            ("held", "sender outside policy"),
            ("unreadable", "no header block"),
        ]
        assert report.findings[0].en == "1 unreadable message(s) in the last 24 h"
        assert report.findings[0].action_pt == (
            "abra a pasta NeedsAttention da caixa, leia o motivo abaixo e trate cada uma à "
            "mão (responda ao remetente ou reenvie uma cópia corrigida)"
        )
        assert (
            "  mensagem (message) 1, 07/12/2026 10:00, ilegível (unreadable), "
            "de (from) helena@cliente.test: no header block"
        ) in text

    def test_an_old_unreadable_message_no_longer_fails_the_check(self, service: Service) -> None:
        polled(service)
        add(service, message("unreadable", ago(hours=30), "no header block"))

        report = status(service)

        assert report.findings == []
        assert len(report.recent_attention) == 1
        assert codes(status(service, window_hours=48)) == [("unreadable_messages", "problem")]

    def test_failed_email_in_the_window(self, service: Service) -> None:
        polled(service)
        add(
            service,
            outbox_row("failed", 1, ago(hours=3), "550 5.1.1 user unknown"),
            outbox_row("failed", 8, ago(days=5), "gave up after 8 attempts: 421 busy"),
        )

        report = status(service)
        text = format_status(report, ZONE)

        assert codes(report) == [("outbox_failed", "problem")]
        assert report.outbox["failed"] == 2
        assert report.outbox["failed_recent"] == 1
        assert (
            "  e-mail 1 (received) para (to) carla@cliente.test, falhou (failed) após 1 "
            "tentativa(s) (attempts): 550 5.1.1 user unknown"
        ) in text
        assert "`portaria outbox retry`" in report.findings[0].action_pt

    def test_retrying_email_is_a_warning_until_it_stalls(self, service: Service) -> None:
        polled(service)
        add(service, outbox_row("pending", 2, ago(minutes=10), "421 4.3.0 try later"))
        assert codes(status(service)) == [("outbox_retrying", "warning")]

        add(service, outbox_row("pending", 5, ago(hours=2), "421 4.3.0 try later"))
        report = status(service)

        assert codes(report) == [("outbox_stalled", "problem")]
        assert report.findings[0].en == "2 email(s) being retried, 1 for over 30 min"

    def test_pending_requests_older_than_the_limit(self, service: Service) -> None:
        polled(service)
        add(service, request(ago(hours=30)), request(ago(hours=2)))

        assert codes(status(service)) == [("pending_requests_waiting", "problem")]
        assert status(service).findings[0].pt == "1 pedido(s) pendente(s) há mais de 24 h"
        assert codes(status(service, pending_hours=48)) == []

    def test_failed_rule_runs_in_the_window(self, service: Service) -> None:
        polled(service)
        rule = Rule(name="Boas-vindas", starts_at=ago(days=10), every=1, unit="days")
        add(service, rule)
        add(
            service,
            RuleRun(
                rule_id=rule.id,
                trigger="schedule",
                started_at=ago(hours=1),
                status="partial",
                errors=[{"customer_id": 3, "action": 0, "error": "template missing"}],
            ),
            RuleRun(rule_id=rule.id, trigger="schedule", started_at=ago(hours=2), status="ok"),
        )

        report = status(service)

        assert codes(report) == [("rule_runs_failed", "problem")]
        [run] = report.recent_rule_failures
        assert (run.rule, run.status, run.errors, run.first_error) == (
            "Boas-vindas",
            "partial",
            1,
            "template missing",
        )
        assert report.findings[0].action_en == (
            "see the errors with `portaria rules history NAME --errors` and fix the rule"
        )


class TestCommand:
    @pytest.fixture
    def config(self, service: Service, tmp_path: Path) -> Path:
        settings = service.settings
        file = tmp_path / "portaria.toml"
        file.write_text(
            f'[database]\nurl = "{settings.database.url}"\n'
            f'[mailbox]\nkind = "maildir"\nmaildir = "{settings.mailbox.maildir}"\n'
            '[outbound]\nfrom_address = "acesso@portaria.test"\n'
            '[service]\nsupport_address = "suporte@portaria.test"\n',
            encoding="utf-8",
        )
        return file

    @pytest.fixture
    def app(self) -> typer.Typer:
        app = typer.Typer()
        app.command("status")(status_command)

        @app.callback()
        def main() -> None:
            """Only so that "status" is a subcommand, as in the real CLI."""

        return app

    def test_exit_one_and_json_for_monitoring(
        self, app: typer.Typer, config: Path, service: Service
    ) -> None:
        result = CliRunner().invoke(app, ["status", "--config", str(config), "--json"])

        assert result.exit_code == 1
        data = json.loads(result.stdout)
        assert (data["ok"], data["exit_code"]) == (False, 1)
        assert [f["code"] for f in data["findings"]] == ["mailbox_never_polled"]
        assert data["mailbox"]["identity"] == identity(service.settings)
        assert data["outbox"]["failed"] == 0
        assert data["outcomes_all"]["request"] == 0

    def test_exit_zero_when_all_is_well(
        self, app: typer.Typer, config: Path, service: Service
    ) -> None:
        now = utcnow()
        add(
            service,
            MailboxState(
                mailbox=identity(service.settings),
                last_poll_at=now,
                last_success_at=now,
                last_result="0 new message(s); 0 moved",
            ),
        )

        result = CliRunner().invoke(app, ["status", "--config", str(config)])

        assert result.exit_code == 0, result.output
        assert result.stdout.startswith("Portaria — situação (status) em ")
        assert result.stdout.rstrip().endswith(
            "Tudo certo: nada precisa de uma pessoa (all good: nothing needs a person)"
        )

    def test_exit_two_on_a_broken_configuration(self, app: typer.Typer, tmp_path: Path) -> None:
        file = tmp_path / "bad.toml"
        file.write_text("[service]\nalert_after_minutes = 0\n", encoding="utf-8")

        result = CliRunner().invoke(app, ["status", "--config", str(file)])

        assert result.exit_code == 2


@pytest.mark.imap
class TestAfterRealFaults:
    def test_a_refused_login_reads_as_what_happened_and_what_to_do(
        self, settings: Settings, imap_account: ImapAccount
    ) -> None:
        changed = settings.model_copy(
            update={"mailbox": imap_account.mailbox_settings(password="wrong")}
        )
        service = open_service(changed, migrate=True)
        with pytest.raises(MailboxError) as raised:
            poll_once(service.sessions, changed)
        # The poller recorded the failure; age it past the alert threshold.
        with service.transaction() as session:
            state = session.get(MailboxState, identity(changed))
            state.failing_since = utcnow() - timedelta(minutes=40)

        with service.sessions() as session:
            report = read_status(session, changed, now=utcnow())

        [finding] = report.findings
        assert (finding.code, finding.severity) == ("mailbox_failing", "problem")
        assert finding.action_en == failure_advice(str(raised.value), "en")
        assert report.mailbox.last_error == (
            f"IMAP server 127.0.0.1:{imap_account.port} refused the login of "
            f"'{imap_account.username}' ([AUTHENTICATIONFAILED] Authentication failed.); "
            "check mailbox.username and the password"
        )

    def test_a_stopped_server_reads_as_unreachable(
        self, settings: Settings, dovecot_server: DovecotServer, imap_account: ImapAccount
    ) -> None:
        changed = settings.model_copy(update={"mailbox": imap_account.mailbox_settings()})
        service = open_service(changed, migrate=True)
        poll_once(service.sessions, changed)
        dovecot_server.stop()
        try:
            with pytest.raises(MailboxError):
                poll_once(service.sessions, changed)
        finally:
            dovecot_server.start()

        with service.sessions() as session:
            report = read_status(session, changed, now=utcnow() + timedelta(minutes=31))

        # Half an hour on, nothing has polled since the failure either.
        assert [(f.code, f.severity) for f in report.findings] == [
            ("mailbox_silent", "problem"),
            ("mailbox_failing", "problem"),
        ]
        assert report.mailbox.last_error == (
            f"IMAP server 127.0.0.1:{imap_account.port}: connecting: Connection refused"
        )
        assert report.findings[1].action_pt == failure_advice(report.mailbox.last_error, "pt-BR")
        assert report.findings[1].action_pt.startswith("o servidor não responde")


def test_a_mailbox_that_never_worked_needs_a_person_at_once(
    service: Service, settings: Settings
) -> None:
    now = utcnow()
    with transaction(service.sessions) as session:
        session.add(
            MailboxState(
                mailbox=identity(settings),
                last_poll_at=now,
                last_error="IMAP server 127.0.0.1:1: connecting: Connection refused",
                failing_since=now - timedelta(minutes=2),
            )
        )

    with service.sessions() as session:
        report = read_status(session, settings, now=now)

    [finding] = [f for f in report.findings if f.code == "mailbox_failing"]
    assert finding.severity == "problem"
