"""Loop and storm protection: our own mail coming back, machines answering us,
the hourly cap on automatic answers, and bounces.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from config.settings import Settings
from intake.bounces import looks_like_delivery_report, read_report
from intake.models import AutoReply, InboundMessage
from intake.reading import read_message
from intake.receiving import receive
from portaria.db import utcnow
from portaria.outbox import enqueue, send_due
from portaria.outbox_models import BouncedAddress, OutboxMessage
from portaria.wiring import Service, open_service
from provisioning.models import AccessRequest
from tests.mail import person_block, request_message
from tests.servers.smtp import SmtpTestServer

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
HELENA = "helena.costa@cliente.test"
ANA = person_block("Ana Lima", "ana.lima@cliente.test", "Financeiro", "Comum")


def received(service: Service, raw: bytes, key: str) -> InboundMessage:
    with service.transaction() as session:
        row = receive(session, service.settings, mailbox="test", key=key, raw=raw)
        session.flush()
        session.expunge(row)
    return row


def letters(service: Service, kind: str | None = None) -> list[OutboxMessage]:
    query = select(OutboxMessage).order_by(OutboxMessage.id)
    if kind is not None:
        query = query.where(OutboxMessage.kind == kind)
    with service.sessions() as session:
        return list(session.scalars(query))


def count(service: Service, model: type) -> int:
    with service.sessions() as session:
        return session.scalar(select(func.count()).select_from(model))


def answered_request(service: Service) -> OutboxMessage:
    """A request from Helena, and the "received" letter that answered it."""
    row = received(service, request_message(ANA, message_id="<req-1@cliente.test>"), "req-1")
    assert row.outcome == "request"
    [letter] = letters(service, "received")
    return letter


def delivery_report(
    original_id: str,
    recipient: str = HELENA,
    *,
    action: str = "failed",
    status: str = "5.1.1",
    diagnostic: str = "smtp; 550 5.1.1 <helena.costa@cliente.test>: user unknown",
) -> bytes:
    """An RFC 3464 report, as Postfix writes one, about our email ``original_id``."""
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.cliente.test>\r\n"
        "To: acesso@portaria.test\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"Message-ID: <dsn-{action}-{recipient}@mx.cliente.test>\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n'
        "\r\n--b\r\nContent-Type: text/plain\r\n\r\n"
        "This is the mail system at host mx.cliente.test.\r\n"
        "\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.cliente.test\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\n"
        f"Original-Recipient: rfc822;{recipient}\r\n"
        f"Action: {action}\r\nStatus: {status}\r\nDiagnostic-Code: {diagnostic}\r\n"
        "\r\n--b\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: acesso@portaria.test\r\nTo: {recipient}\r\nMessage-ID: {original_id}\r\n"
        "Subject: Re: #ACESSO - pedido recebido\r\n"
        "\r\n--b--\r\n"
    ).encode()


class TestOwnMailComingBack:
    def test_loop_header_on_untagged_mail_is_ignored_and_filed(self, service: Service) -> None:
        raw = request_message(
            "Olá", subject="Pedido recebido", headers={"X-Portaria-Loop": "acesso@portaria.test"}
        )

        row = received(service, raw, "1")

        assert (row.outcome, row.destination) == ("ignored", "processed")
        assert row.reason == (
            "nossa mensagem voltou (our own mail came back): X-Portaria-Loop: acesso@portaria.test"
        )
        assert letters(service) == []

    def test_our_own_message_id_is_ignored(self, service: Service) -> None:
        own = "<portaria.0123456789abcdef0123456789abcdef@portaria.test>"
        raw = request_message(ANA, message_id=own)

        row = received(service, raw, "1")

        assert row.outcome == "ignored"
        assert row.reason == (
            "nossa mensagem voltou (our own mail came back): "
            "Message-ID <portaria.0123456789abcdef0123456789abcdef@portaria.test>"
        )

    def test_a_colleague_on_our_domain_is_not_taken_for_us(self, service: Service) -> None:
        # Thunderbird and Apple Mail build Message-IDs on the sender's domain.
        raw = request_message(
            ANA,
            sender="Rita Alves <rita.alves@portaria.test>",
            message_id="<5F1C2D3E-AAAA-BBBB@portaria.test>",
        )

        assert received(service, raw, "1").outcome == "request"


class TestMachinesAnsweringUs:
    def test_out_of_office_answer_to_our_letter_is_ignored(self, service: Service) -> None:
        letter = answered_request(service)
        raw = request_message(
            "Estou de férias até 10/01.",
            subject="Resposta automática: Re: #ACESSO — pedido recebido",
            headers={"In-Reply-To": letter.message_id, "Auto-Submitted": "auto-replied"},
        )

        row = received(service, raw, "2")

        assert row.outcome == "ignored"
        assert row.reason == (
            f"responde à nossa mensagem (answers our message) {letter.message_id}; "
            "resposta automática (auto-reply): Auto-Submitted: auto-replied"
        )
        assert len(letters(service, "received")) == 1

    def test_untagged_automatic_answer_to_us_is_filed_not_left(self, service: Service) -> None:
        letter = answered_request(service)
        raw = request_message(
            "Chamado 4711 aberto.",
            subject="[Chamado 4711] recebido",
            headers={"References": f"<x@y.test> {letter.message_id}", "X-Loop": "helpdesk"},
        )

        row = received(service, raw, "2")

        assert (row.outcome, row.destination) == ("ignored", "processed")
        assert row.reason == (
            f"responde à nossa mensagem (answers our message) {letter.message_id}; "
            "resposta automática (auto-reply): X-Loop: helpdesk"
        )

    def test_x_loop_alone_on_fresh_mail_is_not_believed(self, service: Service) -> None:
        raw = request_message(ANA, headers={"X-Loop": "lista-rh"})

        assert received(service, raw, "1").outcome == "request"

    def test_a_person_answering_our_letter_completes_the_request(self, service: Service) -> None:
        first = received(
            service,
            request_message("Nome: Fábio Queiroga\nE-mail: fabio@cliente.test\n"),
            "1",
        )
        assert first.outcome == "incomplete"
        [asked] = letters(service, "incomplete")

        reply = request_message(
            "Segue completo:\n\n"
            + person_block("Fábio Queiroga", "fabio@cliente.test", "Unidade Natal", "Comum"),
            subject="RE: #ACESSO — faltam informações",
            headers={"In-Reply-To": asked.message_id, "References": asked.message_id},
        )
        row = received(service, reply, "2")

        assert (row.outcome, row.reason) == ("request", "")
        with service.sessions() as session:
            statuses = list(
                session.scalars(select(AccessRequest.status).order_by(AccessRequest.id))
            )
        assert statuses[-1] == "pending"
        assert len(letters(service, "received")) == 1


class TestHourlyCap:
    def test_answers_stop_at_the_cap_but_requests_are_queued(
        self, service: Service, settings: Settings, caplog: pytest.LogCaptureFixture
    ) -> None:
        settings.intake.auto_replies_per_hour = 2
        caplog.set_level(logging.WARNING, logger="intake.receiving")
        rows = [
            received(
                service,
                request_message(
                    person_block(f"Pessoa {n}", f"p{n}@cliente.test", "RH", "Comum"),
                    message_id=f"<n{n}@cliente.test>",
                ),
                f"k{n}",
            )
            for n in range(1, 4)
        ]

        assert [row.outcome for row in rows] == ["request", "request", "request"]
        assert [row.reason for row in rows[:2]] == ["", ""]
        assert rows[2].reason == (
            "resposta de recebimento suprimida (received answer suppressed): "
            "limite de respostas automáticas atingido (automatic answer limit reached): "
            "helena.costa@cliente.test, 2 na última hora (in the last hour); "
            "intake.auto_replies_per_hour = 2"
        )
        assert count(service, AccessRequest) == 3
        assert len(letters(service, "received")) == 2
        assert len(letters(service, "support_notice")) == 3
        with service.sessions() as session:
            ledger = list(session.scalars(select(AutoReply).order_by(AutoReply.id)))
        assert [entry.recipient for entry in ledger] == [HELENA, HELENA]
        assert [entry.outbox_id for entry in ledger] == [
            letter.id for letter in letters(service, "received")
        ]
        assert [record.getMessage() for record in caplog.records] == [
            f"message {rows[2].id}: received answer suppressed: "
            "limite de respostas automáticas atingido (automatic answer limit reached): "
            "helena.costa@cliente.test, 2 na última hora (in the last hour); "
            "intake.auto_replies_per_hour = 2"
        ]

    def test_answers_older_than_an_hour_do_not_count(
        self, service: Service, settings: Settings
    ) -> None:
        settings.intake.auto_replies_per_hour = 1
        with service.transaction() as session:
            session.add(AutoReply(recipient=HELENA, at=utcnow() - timedelta(minutes=61)))

        row = received(service, request_message(ANA), "1")

        assert (row.outcome, row.reason) == ("request", "")
        assert len(letters(service, "received")) == 1

    def test_cap_counts_per_address(self, service: Service, settings: Settings) -> None:
        settings.intake.auto_replies_per_hour = 1
        received(service, request_message(ANA), "1")

        other = request_message(ANA, sender="Otto Lima <otto.lima@cliente.test>")
        row = received(service, other, "2")

        assert (row.outcome, row.reason) == ("request", "")
        assert [letter.recipients for letter in letters(service, "received")] == [
            [HELENA],
            ["otto.lima@cliente.test"],
        ]

    def test_zero_turns_answers_off(self, service: Service, settings: Settings) -> None:
        settings.intake.auto_replies_per_hour = 0

        row = received(service, request_message("Nome: Fábio Queiroga\n"), "1")

        assert row.outcome == "incomplete"
        assert row.reason == (
            "faltam (missing): e-mail, área, tipo de acesso; "
            "resposta de pedido incompleto suprimida (incomplete answer suppressed): "
            "respostas automáticas desligadas (automatic answers are off): "
            "intake.auto_replies_per_hour = 0"
        )
        assert letters(service, "incomplete") == []


class TestBounces:
    def test_standard_report_records_the_address_and_stops_answers(self, service: Service) -> None:
        letter = answered_request(service)

        report = received(service, delivery_report(letter.message_id), "dsn")

        assert (report.outcome, report.destination) == ("ignored", "processed")
        assert report.reason == (
            "relatório de entrega da nossa mensagem (delivery report about our message) "
            f"{letter.message_id}; devolvida (bounced): helena.costa@cliente.test (5.1.1)"
        )
        with service.sessions() as session:
            [bounce] = session.scalars(select(BouncedAddress)).all()
        assert (bounce.email, bounce.bounces) == (HELENA, 1)
        assert bounce.last_reason == (
            "5.1.1 550 5.1.1 <helena.costa@cliente.test>: user unknown; "
            f"nossa mensagem (our message) {letter.message_id}"
        )

        again = received(service, request_message(ANA, message_id="<req-2@cliente.test>"), "req-2")

        assert again.outcome == "request"
        assert again.reason == (
            "resposta de recebimento não enviada (received answer not sent): "
            f"endereço devolvido (bounced address) {HELENA}: {bounce.last_reason}"
        )
        assert len(letters(service, "received")) == 1
        assert len(letters(service, "support_notice")) == 2

    def test_second_bounce_counts(self, service: Service) -> None:
        letter = answered_request(service)
        received(service, delivery_report(letter.message_id), "dsn-1")
        second = delivery_report(letter.message_id, diagnostic="smtp; 550 mailbox disabled")

        received(service, second.replace(b"<dsn-", b"<dsn2-"), "dsn-2")

        with service.sessions() as session:
            bounce = session.get(BouncedAddress, HELENA)
        assert bounce.bounces == 2
        assert bounce.last_reason == (
            f"5.1.1 550 mailbox disabled; nossa mensagem (our message) {letter.message_id}"
        )

    def test_delay_warning_records_nothing(self, service: Service) -> None:
        letter = answered_request(service)
        raw = delivery_report(
            letter.message_id, action="delayed", status="4.4.7", diagnostic="smtp; 451 later"
        )

        row = received(service, raw, "dsn")

        assert row.outcome == "ignored"
        assert row.reason == (
            "relatório de entrega da nossa mensagem (delivery report about our message) "
            f"{letter.message_id}; sem falha, nada registrado (no failure, nothing recorded)"
        )
        assert count(service, BouncedAddress) == 0

    def test_forged_report_cannot_mark_an_address_we_never_wrote_to(
        self, service: Service
    ) -> None:
        letter = answered_request(service)
        raw = delivery_report(letter.message_id, recipient="diretoria@cliente.test")

        row = received(service, raw, "dsn")

        assert row.outcome == "ignored"
        assert row.reason == (
            "relatório de entrega da nossa mensagem (delivery report about our message) "
            f"{letter.message_id}; nenhum destinatário dela falhou (no recipient of it failed)"
        )
        assert count(service, BouncedAddress) == 0

    def test_report_about_someone_elses_mail_is_not_ours(self, service: Service) -> None:
        answered_request(service)
        raw = delivery_report("<abc@outro.test>")

        row = received(service, raw, "dsn")

        assert (row.outcome, row.destination) == ("left", None)
        assert count(service, BouncedAddress) == 0

    def test_exim_text_bounce_with_x_failed_recipients(self, service: Service) -> None:
        letter = answered_request(service)
        raw = (
            "From: Mail Delivery System <Mailer-Daemon@mx.cliente.test>\r\n"
            "To: acesso@portaria.test\r\n"
            "Subject: Mail delivery failed: returning message to sender\r\n"
            "Message-ID: <exim-1@mx.cliente.test>\r\n"
            f"X-Failed-Recipients: {HELENA}\r\n"
            "Auto-Submitted: auto-replied\r\n\r\n"
            "This message was created automatically by mail delivery software.\r\n\r\n"
            "A message that you sent could not be delivered to one or more of its\r\n"
            "recipients. This is a permanent error. The following address(es) failed:\r\n\r\n"
            f"  {HELENA}\r\n    retry timeout exceeded\r\n\r\n"
            "------ This is a copy of the message, including all the headers. ------\r\n\r\n"
            f"Message-ID: {letter.message_id}\r\nTo: {HELENA}\r\n"
        ).encode()

        row = received(service, raw, "exim")

        assert row.reason == (
            "relatório de entrega da nossa mensagem (delivery report about our message) "
            f"{letter.message_id}; devolvida (bounced): helena.costa@cliente.test"
        )
        assert count(service, BouncedAddress) == 1

    def test_qmail_text_bounce(self, service: Service) -> None:
        letter = answered_request(service)
        raw = (
            "From: MAILER-DAEMON@mx.cliente.test\r\n"
            "To: acesso@portaria.test\r\n"
            "Subject: failure notice\r\n\r\n"
            "Hi. This is the qmail-send program at mx.cliente.test.\r\n"
            "I'm afraid I wasn't able to deliver your message to the following addresses.\r\n"
            "This is a permanent error; I've given up. Sorry it didn't work out.\r\n\r\n"
            f"<{HELENA}>:\r\nSorry, no mailbox here by that name. (#5.1.1)\r\n\r\n"
            "--- Below this line is a copy of the message.\r\n\r\n"
            f"Message-ID: {letter.message_id}\r\nFrom: acesso@portaria.test\r\n"
        ).encode()

        row = received(service, raw, "qmail")

        assert row.reason == (
            "relatório de entrega da nossa mensagem (delivery report about our message) "
            f"{letter.message_id}; devolvida (bounced): helena.costa@cliente.test (5.1.1)"
        )

    def test_outbox_fails_a_letter_whose_every_recipient_bounced(
        self, service: Service, settings: Settings
    ) -> None:
        with service.transaction() as session:
            session.add(BouncedAddress(email=HELENA, last_reason="5.1.1 user unknown"))
            context = {"requester_name": "", "original_subject": "#ACESSO", "people": []}
            context["people"] = [
                {"name": "Ana", "email": "ana@x.test", "area": "RH", "access_type": "comum"}
            ]
            to_helena = enqueue(session, settings, kind="received", to=[HELENA], context=context)
            to_both = enqueue(
                session,
                settings,
                kind="received",
                to=[HELENA, "otto@cliente.test"],
                context=context,
            )
            ids = (to_helena.id, to_both.id)

        report = send_due(service.sessions, settings)

        assert (report.sent, report.failed, report.retried) == (1, 0, 0)
        with service.sessions() as session:
            skipped, sent = (session.get(OutboxMessage, i) for i in ids)
        assert (skipped.status, skipped.attempts) == ("failed", 0)
        assert skipped.last_error == (
            "not sent: every recipient bounced earlier (helena.costa@cliente.test)"
        )
        assert sent.status == "sent"
        outgoing = settings.path(settings.outbound.maildir) / "new"
        assert len(list(outgoing.iterdir())) == 1

    def test_bounced_address_is_never_sent_to_a_real_smtp_server(
        self, smtp_server: SmtpTestServer, outbound_settings
    ) -> None:  # type: ignore[no-untyped-def]
        settings = outbound_settings()
        service = open_service(settings, migrate=True)
        with service.transaction() as session:
            session.add(BouncedAddress(email=HELENA, last_reason="5.1.1"))
            context = {"requester_name": "", "original_subject": "#ACESSO", "people": []}
            enqueue(session, settings, kind="received", to=[HELENA], context=context)
            enqueue(session, settings, kind="received", to=["otto@cliente.test"], context=context)

        report = send_due(service.sessions, settings)

        assert (report.sent, report.failed) == (1, 0)
        assert [mail.rcpt_tos for mail in smtp_server.received] == [["otto@cliente.test"]]


class TestReadingReports:
    def test_standard_report(self) -> None:
        raw = delivery_report("<portaria.00000000000000000000000000000001@portaria.test>")

        report = read_report(raw, "portaria.test")

        assert report.form == "delivery-status"
        assert [(f.email, f.status) for f in report.failed] == [(HELENA, "5.1.1")]
        assert report.message_ids == ["<portaria.00000000000000000000000000000001@portaria.test>"]

    def test_read_receipts_are_not_delivery_reports(self) -> None:
        raw = (
            b"From: ana@cliente.test\r\nSubject: Lida: #ACESSO\r\n"
            b"Content-Type: multipart/report; report-type=disposition-notification;"
            b' boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nlida\r\n--b--\r\n'
        )

        assert not looks_like_delivery_report(read_message(raw))

    def test_corpus_bounces_are_read_without_error(self) -> None:
        folders = [CORPUS / "flufl-bounce", CORPUS / "sisimai-set-of-emails" / "bsd"]
        if not all(folder.is_dir() for folder in folders):
            pytest.skip(f"the shared corpus is not at {CORPUS}")
        silent = []
        reports = 0
        for path in sorted(p for folder in folders for p in folder.iterdir() if p.is_file()):
            raw = path.read_bytes()
            report = read_report(raw, "portaria.test")
            if looks_like_delivery_report(read_message(raw)):
                reports += 1
                if not report.failed and not report.delayed:
                    silent.append(path.name)

        assert reports == 168
        # v5sendmail writes its failed address only in the returned copy's headers.
        assert silent == ["lhost-v5sendmail-01.eml"]


class TestBounceShapesScreening:
    """Tagged copies of real bounces that are not about our mail: ignored by the tables."""

    @pytest.mark.parametrize(
        ("sender", "subject", "headers", "reason"),
        [
            (
                "E500_SMTP_Mail_Service@lerctr.test",
                "Returned Mail - Error During Delivery #ACESSO",
                {},
                "relatório de entrega (delivery report): "
                "assunto começa com (subject starts with) 'returned mail'",
            ),
            (
                "Symantec_AntiVirus@csri.test",
                "Delivery failure notification #ACESSO",
                {},
                "relatório de entrega (delivery report): "
                "assunto começa com (subject starts with) 'delivery failure'",
            ),
            (
                "post_master@vtext.example.test",
                "Re:Test message #ACESSO",
                {},
                "relatório de entrega (delivery report): "
                "enviada por (sent by) post_master@vtext.example.test",
            ),
            (
                "neko-admin@example.test",
                "You are not member (neko ML) #ACESSO",
                {"X-MLServer": "fml [fml 4.0.3 release]"},
                "lista de discussão (mailing list): X-MLServer: fml [fml 4.0.3 release]",
            ),
        ],
    )
    def test_ignored_and_unanswered(
        self,
        service: Service,
        sender: str,
        subject: str,
        headers: dict[str, str],
        reason: str,
    ) -> None:
        raw = request_message(ANA, sender=sender, subject=subject, headers=headers)

        row = received(service, raw, "1")

        assert (row.outcome, row.reason) == ("ignored", reason)
        assert letters(service) == []
