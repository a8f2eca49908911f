"""Screening: which messages are requests, and why the others are ignored."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from intake.reading import ReadMessage, read_message
from intake.screening import DEFAULT_POLICY, Screening, has_tag, screen

MESSAGES = Path(__file__).parent / "messages"


def message(
    subject: str = "#ACESSO",
    *,
    sender: str = "Helena Costa <helena.costa@example.com.br>",
    headers: str = "",
    message_id: str = "<a1@mail.example.com.br>",
) -> ReadMessage:
    raw = (
        f"From: {sender}\r\nTo: suporte@example.com.br\r\nSubject: {subject}\r\n"
        f"Message-ID: {message_id}\r\n{headers}MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\nNome: Ana\r\n"
    )
    return read_message(raw.encode("utf-8"))


def fixture(name: str) -> ReadMessage:
    return read_message((MESSAGES / name).read_bytes())


class TestTag:
    @pytest.mark.parametrize(
        "subject",
        [
            "#ACESSO",
            "#acesso",
            "RE: #ACESSO",
            "ENC: #Acesso - novo colaborador",
            "Fwd: Re: [#ACESSO] pedido",
            "(#ACESSO) pedido",
            "Pedido de acesso #ACESSO",
            "#ACESSO: Ana",
            "=?utf-8?q?=23ACESSO_-_cria=C3=A7=C3=A3o_de_login?=",
            "=?utf-8?B?UkU6ICNBQ0VTU08=?=",
            "RE:\r\n =?utf-8?q?=23ACESSO?=",
            "＃ACESSO",
        ],
    )
    def test_tagged_subjects_are_requests(self, subject: str) -> None:
        assert screen(message(subject)) == Screening(
            "request", "tag #ACESSO no assunto (#ACESSO tag in subject)", "tag"
        )

    @pytest.mark.parametrize(
        "subject",
        ["Reunião de alinhamento", "#ACESSOS", "#ACESSO_2", "ACESSO", "pedido de acesso", ""],
    )
    def test_untagged_subjects_are_ignored(self, subject: str) -> None:
        assert screen(message(subject)) == Screening(
            "ignored", "sem a tag #ACESSO no assunto (no #ACESSO tag in subject)", "untagged"
        )

    def test_has_tag(self) -> None:
        assert has_tag("RE: [#Acesso] pedido")
        assert has_tag("＃ACESSO")
        assert not has_tag("#ACESSOS")
        assert has_tag("#USUARIO x", "#usuario")

    def test_custom_tag(self) -> None:
        assert screen(message("#USUARIO novo"), tag="#USUARIO").outcome == "request"
        assert (
            screen(message("#ACESSO"), tag="#USUARIO").reason
            == "sem a tag #USUARIO no assunto (no #USUARIO tag in subject)"
        )


class TestAutomaticMail:
    @pytest.mark.parametrize(
        ("headers", "reason"),
        [
            (
                "Auto-Submitted: auto-replied\r\n",
                "resposta automática (auto-reply): Auto-Submitted: auto-replied",
            ),
            (
                "Auto-Submitted: auto-generated\r\n",
                "resposta automática (auto-reply): Auto-Submitted: auto-generated",
            ),
            ("X-Autoreply: yes\r\n", "resposta automática (auto-reply): X-Autoreply: yes"),
            (
                "X-Autorespond: vacation\r\n",
                "resposta automática (auto-reply): X-Autorespond: vacation",
            ),
            (
                "X-MS-Exchange-Inbox-Rules-Loop: ana@example.com.br\r\n",
                "resposta automática (auto-reply): X-MS-Exchange-Inbox-Rules-Loop: "
                "ana@example.com.br",
            ),
            ("Precedence: bulk\r\n", "e-mail em massa (bulk mail): Precedence: bulk"),
            ("Precedence: list\r\n", "e-mail em massa (bulk mail): Precedence: list"),
            ("Precedence: junk\r\n", "e-mail em massa (bulk mail): Precedence: junk"),
            (
                "List-Id: <cs.lists.example.com.br>\r\n",
                "lista de discussão (mailing list): List-Id: <cs.lists.example.com.br>",
            ),
            (
                "List-Unsubscribe: <mailto:unsubscribe@example.com>\r\n",
                "lista de discussão (mailing list): List-Unsubscribe: "
                "<mailto:unsubscribe@example.com>",
            ),
            ("Return-Path: <>\r\n", "relatório de entrega (delivery report): Return-Path: <>"),
            (
                "X-Failed-Recipients: a@example.com\r\n",
                "relatório de entrega (delivery report): X-Failed-Recipients: a@example.com",
            ),
        ],
    )
    def test_automatic_headers(self, headers: str, reason: str) -> None:
        assert screen(message(headers=headers)).reason == reason
        assert screen(message(headers=headers)).outcome == "ignored"

    @pytest.mark.parametrize(
        "headers",
        [
            "Auto-Submitted: no\r\n",
            # Outlook sets this on mail that people write: it is no auto-reply mark.
            "X-Auto-Response-Suppress: All\r\n",
            "X-Auto-Response-Suppress: DR, RN, NRN, OOF, AutoReply\r\n",
            "Precedence: first-class\r\n",
            "Return-Path: <helena.costa@example.com.br>\r\n",
        ],
    )
    def test_headers_of_mail_written_by_people(self, headers: str) -> None:
        assert screen(message(headers=headers)).outcome == "request"

    @pytest.mark.parametrize(
        "subject",
        [
            "Ausente: #ACESSO",
            "Resposta automática: RE: #ACESSO",
            "Out of Office: #ACESSO",
            "Automatic reply: #ACESSO",
            "[Auto-Reply] #ACESSO",
            "Undeliverable: #ACESSO",
            "Não é possível entregar: #ACESSO",
            "Lida: #ACESSO",
        ],
    )
    def test_automatic_subject_prefixes(self, subject: str) -> None:
        decision = screen(message(subject))
        assert decision.outcome == "ignored"
        assert decision.rule in ("auto-reply", "delivery report")

    def test_out_of_office_subject_reason(self) -> None:
        assert screen(message("Ausente: #ACESSO")) == Screening(
            "ignored",
            "resposta automática (auto-reply): "
            "assunto começa com (subject starts with) 'ausente:'",
            "auto-reply",
        )

    @pytest.mark.parametrize(
        "sender",
        [
            "MAILER-DAEMON@mx.example.com.br",
            "Mail Delivery System <mailer-daemon@example.com>",
            "postmaster@example.com.br",
        ],
    )
    def test_machine_senders(self, sender: str) -> None:
        decision = screen(message("Falha: #ACESSO", sender=sender))
        assert decision.outcome == "ignored"
        assert decision.rule == "delivery report"

    def test_outlook_auto_reply_fixture(self) -> None:
        assert screen(fixture("outlook_auto_reply.eml")) == Screening(
            "ignored",
            "resposta automática (auto-reply): Auto-Submitted: auto-generated",
            "auto-reply",
        )

    def test_delivery_report_fixture(self) -> None:
        assert screen(fixture("bounce_report.eml")) == Screening(
            "ignored",
            "relatório de entrega (delivery report): Content-Type: multipart/report",
            "delivery report",
        )


class TestOwnMessages:
    def test_from_one_of_our_addresses(self) -> None:
        decision = screen(
            message("RE: #ACESSO recebido", sender="Portaria <Portaria@Example.com.br>"),
            own_addresses=frozenset({"portaria@example.com.br"}),
        )
        assert decision == Screening(
            "ignored", "mensagem nossa (own message): From: portaria@example.com.br", "own message"
        )

    def test_loop_header(self) -> None:
        decision = screen(message(headers="X-Portaria-Loop: 1\r\n"))
        assert decision == Screening(
            "ignored", "mensagem nossa (own message): X-Portaria-Loop: 1", "own message"
        )

    def test_message_id_made_by_our_outbox(self) -> None:
        decision = screen(
            message(message_id=f"<portaria.{'ab12' * 8}@Portaria.Example.com.br>"),
            own_message_id_domain="portaria.example.com.br",
        )
        assert decision == Screening(
            "ignored",
            "mensagem nossa (own message): "
            "Message-ID do domínio (on domain) portaria.example.com.br",
            "own message",
        )

    def test_a_colleague_on_our_domain_is_still_a_requester(self) -> None:
        decision = screen(
            message(message_id="<ack-42@Portaria.Example.com.br>"),
            own_message_id_domain="portaria.example.com.br",
        )
        assert decision.outcome == "request"

    def test_reply_to_our_message_is_still_a_request(self) -> None:
        decision = screen(
            message("RE: #ACESSO", headers="In-Reply-To: <ack-42@portaria.example.com.br>\r\n"),
            own_addresses=frozenset({"portaria@example.com.br"}),
            own_message_id_domain="portaria.example.com.br",
        )
        assert decision.outcome == "request"


class TestPolicyIsData:
    def test_list_rules_can_be_dropped_for_a_group_mailbox(self) -> None:
        group_mailbox = replace(
            DEFAULT_POLICY,
            header_rules=tuple(
                rule for rule in DEFAULT_POLICY.header_rules if rule.kind != "mailing list"
            ),
        )
        tagged = message(headers="List-Id: <suporte.example.com.br>\r\n")
        assert screen(tagged).outcome == "ignored"
        assert screen(tagged, policy=group_mailbox).outcome == "request"

    def test_every_rule_names_its_kind_and_header(self) -> None:
        for rule in DEFAULT_POLICY.header_rules:
            assert rule.kind
            assert rule.header
            assert rule.match in ("present", "equals", "not-equals", "starts-with")

    def test_screening_reads_no_body(self) -> None:
        tagged = message()
        screen(tagged)
        assert "_body" not in vars(tagged)


@pytest.mark.parametrize(
    ("sender", "subject", "reason"),
    [
        (
            "no-reply@operadora.test",
            "#ACESSO",
            "remetente automático (automated sender): "
            "enviada por (sent by) no-reply@operadora.test",
        ),
        (
            "NaoResponda@banco.test",
            "RE: #ACESSO",
            "remetente automático (automated sender): "
            "enviada por (sent by) naoresponda@banco.test",
        ),
        (
            "helena@cliente.test",
            "Ausência temporária: RE: #ACESSO",
            "resposta automática (auto-reply): "
            "assunto começa com (subject starts with) 'ausencia temporaria:'",
        ),
        (
            "relay@cliente.test",
            "RE: #ACESSO pedido (delivery failed)",
            "relatório de entrega (delivery report): "
            "assunto contém (subject has) '(delivery failed)'",
        ),
        (
            "relay@cliente.test",
            "#ACESSO: Mensagem não entregue a ana@x.test",
            "relatório de entrega (delivery report): "
            "assunto contém (subject has) 'mensagem nao entregue'",
        ),
    ],
)
def test_machine_senders_and_delivery_phrases_are_ignored(
    sender: str, subject: str, reason: str
) -> None:
    screening = screen(message(subject=subject, sender=sender))

    assert (screening.outcome, screening.reason) == ("ignored", reason)


def test_display_name_with_encoded_line_breaks_reads_as_one_line() -> None:
    name = "=?utf-8?q?Ana=0D=0ABcc=3A_evil=40x=2Etest?="
    read = message(sender=f"{name} <ana@cliente.test>")

    assert read.from_name == "Ana Bcc: evil@x.test"
