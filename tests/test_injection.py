"""Injection: names, areas and subjects from strangers' email never reach a header, a
template, a table or a page as anything but text.

Each path is proved on what leaves the system: the raw bytes the Maildir
transport writes, what a real SMTP server receives (headers and envelope),
the CLI's output and the set-password page.
"""

from __future__ import annotations

import mailbox
from collections.abc import Callable
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from config.settings import Settings, load_settings
from intake.models import InboundMessage
from intake.receiving import receive
from portaria.cli import app
from portaria.outbox import InvalidRecipient, enqueue, send_due
from portaria.outbox_models import OutboxMessage
from portaria.web import create_app
from portaria.wiring import Service, open_service
from provisioning.approvals import approve
from provisioning.directory import create_user, issue_set_password_token
from provisioning.models import AccessRequest
from provisioning.queue import RequestedPerson, Requester, queue_requests
from tests.mail import person_block, request_message
from tests.servers.smtp import SmtpTestServer

CRLF_NAME = "Ana\r\nBcc: evil@x.test"
CRLF_AREA = "RH\r\nX-Evil: 1"
SCRIPT_NAME = "Ana <script>alert(1)</script> Lima"
TEMPLATE_NAME = "Ana {{ 7*7 }} Lima"
TEMPLATE_AREA = "{% for x in range(3) %}x{% endfor %}"
# Every header our letters carry; anything else would be injected.
LETTER_HEADERS = {
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "auto-submitted",
    "in-reply-to",
    "references",
    "x-portaria-loop",
    "x-auto-response-suppress",
    "content-language",
}


def header_lines(raw: bytes) -> list[str]:
    """The header block as physical lines, exactly as written."""
    block = raw.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0].decode("ascii")
    return block.split("\n")


def assert_clean_headers(raw: bytes, recipients: list[str]) -> EmailMessage:
    lines = header_lines(raw)
    names = [line.split(":", 1)[0].lower() for line in lines if not line[:1].isspace()]
    assert set(names) <= LETTER_HEADERS, set(names) - LETTER_HEADERS
    assert len(names) == len(set(names))
    assert not any(line.lower().lstrip().startswith(("bcc:", "x-evil:")) for line in lines)
    # The words may appear, but only inside the one-line Subject.
    for line in lines:
        assert "evil@x.test" not in line or line.startswith("Subject: ")
    parsed = message_from_bytes(raw, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    assert [a.addr_spec for a in parsed["To"].addresses] == recipients
    assert parsed["Bcc"] is None and parsed["Cc"] is None
    return parsed


def bodies(parsed: EmailMessage) -> tuple[str, str]:
    text = parsed.get_body(("plain",))
    html = parsed.get_body(("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content()


def maildir_files(settings: Settings) -> list[bytes]:
    outgoing = mailbox.Maildir(settings.path(settings.outbound.maildir), create=False)
    return [outgoing.get_bytes(key) for key in sorted(outgoing.iterkeys())]


def hostile_requests(service: Service) -> list[AccessRequest]:
    """Requests whose fields were never cleaned: as if a future path skipped the intake."""
    with service.transaction() as session:
        people = [
            RequestedPerson(CRLF_NAME, "ana@cliente.test", CRLF_AREA, "comum"),
            RequestedPerson(SCRIPT_NAME, "bia@cliente.test", "<b>RH</b>", "comum"),
            RequestedPerson(TEMPLATE_NAME, "caio@cliente.test", TEMPLATE_AREA, "comum"),
        ]
        requester = Requester(
            email="helena@cliente.test",
            name="Helena\r\nBcc: evil@x.test",
            message_ref="<req@cliente.test>",
            subject="#ACESSO\r\nBcc: evil@x.test",
        )
        requests = queue_requests(session, requester, people)
        session.expunge_all()
    return requests


def person(request: AccessRequest) -> dict[str, str]:
    return {
        "name": request.name or "",
        "email": request.email or "",
        "area": request.area or "",
        "access_type": request.access_type or "",
    }


def queue_every_letter(service: Service, requests: list[AccessRequest]) -> None:
    """The received, support and (through approval) welcome and approved letters."""
    settings = service.settings
    people = [person(r) for r in requests]
    with service.transaction() as session:
        enqueue(
            session,
            settings,
            kind="received",
            to=["helena@cliente.test"],
            context={
                "requester_name": "Helena\r\nBcc: evil@x.test",
                "original_subject": "#ACESSO\r\nBcc: evil@x.test",
                "people": people,
            },
            in_reply_to="<req@cliente.test>",
        )
        enqueue(
            session,
            settings,
            kind="support_notice",
            to=["suporte@portaria.test"],
            context={
                "requests": [
                    {**p, "id": r.id, "flags": ["sender_outside_policy"], "requester_email": "x"}
                    for p, r in zip(people, requests, strict=True)
                ],
                "console_url": settings.service.base_url,
            },
        )
        approve(session, settings, [r.id for r in requests], actor="cli:lucia")


class TestLettersOnDisk:
    def test_crlf_in_names_never_makes_a_header(self, service: Service) -> None:
        queue_every_letter(service, hostile_requests(service))

        report = send_due(service.sessions, service.settings)

        assert (report.sent, report.failed) == (6, 0)
        with service.sessions() as session:
            rows = list(session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))
        kinds = [row.kind for row in rows]
        assert kinds == ["received", "support_notice", "welcome", "welcome", "welcome", "approved"]
        files = {
            message_from_bytes(raw)["Message-ID"]: raw for raw in maildir_files(service.settings)
        }
        for row in rows:
            parsed = assert_clean_headers(files[row.message_id], row.recipients)
            text, _ = bodies(parsed)
            if row.kind == "welcome":
                continue
            assert "Ana Bcc: evil@x.test" in text
            assert "RH X-Evil: 1" in text
        received = message_from_bytes(files[rows[0].message_id], policy=policy.default)
        assert received["Subject"] == "Re: #ACESSO Bcc: evil@x.test — pedido recebido"
        welcome_text = bodies(message_from_bytes(files[rows[2].message_id], policy=policy.default))
        assert "Ana Bcc: evil@x.test" in welcome_text[0]

    def test_html_is_escaped_and_template_syntax_is_printed(self, service: Service) -> None:
        queue_every_letter(service, hostile_requests(service))

        send_due(service.sessions, service.settings)

        with service.sessions() as session:
            rows = {row.message_id: row for row in session.scalars(select(OutboxMessage))}
        seen = set()
        for raw in maildir_files(service.settings):
            parsed = message_from_bytes(raw, policy=policy.default)
            row = rows[parsed["Message-ID"]]
            text, html = bodies(parsed)
            seen.add((row.kind, row.recipients[0]))
            assert "<script>" not in html and "<b>RH</b>" not in html
            assert "Ana 49 Lima" not in text + html and "xxx" not in text + html
            if row.kind == "welcome" and row.recipients != ["bia@cliente.test"]:
                expected = {
                    "ana@cliente.test": "Ana Bcc: evil@x.test",
                    "caio@cliente.test": TEMPLATE_NAME,
                }
                assert expected[row.recipients[0]] in text
                assert expected[row.recipients[0]] in html
                continue
            assert SCRIPT_NAME in text
            assert "Ana &lt;script&gt;alert(1)&lt;/script&gt; Lima" in html
            if row.kind == "welcome":
                continue
            assert TEMPLATE_NAME in text and TEMPLATE_NAME in html
            assert TEMPLATE_AREA in text and TEMPLATE_AREA in html
            assert "&lt;b&gt;RH&lt;/b&gt;" in html

        assert seen == {
            ("received", "helena@cliente.test"),
            ("support_notice", "suporte@portaria.test"),
            ("approved", "helena@cliente.test"),
            ("welcome", "ana@cliente.test"),
            ("welcome", "bia@cliente.test"),
            ("welcome", "caio@cliente.test"),
        }

    def test_a_recipient_with_a_line_break_is_refused(self, service: Service) -> None:
        with service.transaction() as session, pytest.raises(InvalidRecipient):
            enqueue(
                session,
                service.settings,
                kind="received",
                to=["ana@cliente.test\r\nBcc: evil@x.test"],
                context={"requester_name": "", "original_subject": "", "people": []},
            )
        with service.sessions() as session:
            assert session.scalars(select(OutboxMessage)).all() == []


def test_real_smtp_server_gets_no_extra_header_or_recipient(
    smtp_server: SmtpTestServer, outbound_settings: Callable[..., Settings]
) -> None:
    settings = outbound_settings()
    service = open_service(settings, migrate=True)
    queue_every_letter(service, hostile_requests(service))

    report = send_due(service.sessions, settings)

    assert (report.sent, report.failed) == (6, 0)
    with service.sessions() as session:
        rows = list(session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))
    assert [mail.rcpt_tos for mail in smtp_server.received] == [row.recipients for row in rows]
    assert all(mail.mail_from == "portaria@acesso.example.com" for mail in smtp_server.received)
    for mail, row in zip(smtp_server.received, rows, strict=True):
        assert_clean_headers(mail.raw, row.recipients)


class TestThroughTheIntake:
    def test_hostile_fields_arrive_as_one_line_of_text(self, service: Service) -> None:
        body = person_block(TEMPLATE_NAME, "caio@cliente.test", "RH\u2028X-Evil: 1\u202e", "Comum")
        # Encoded words that decode to CR/LF: the way a header can smuggle them in.
        # (A name smuggling an address is held instead: see test_policy.TestPlainSender.)
        raw = (
            "From: =?utf-8?q?Helena=0D=0AX-Evil=3A_1?= <helena@cliente.test>\r\n"
            "To: acesso@portaria.test\r\n"
            "Subject: =?utf-8?q?#ACESSO=0D=0ABcc:_evil@x.test?=\r\n"
            "Message-ID: <hostile@cliente.test>\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n" + body
        ).encode("utf-8")
        with service.transaction() as session:
            row = receive(session, service.settings, mailbox="t", key="1", raw=raw)
            assert row.outcome == "request"

        [request] = _requests(service)
        assert (request.name, request.area) == (TEMPLATE_NAME, "RH X-Evil: 1")
        assert request.requester_name == "Helena X-Evil: 1"
        send_due(service.sessions, service.settings)
        received = next(
            raw
            for raw in maildir_files(service.settings)
            if message_from_bytes(raw)["To"] == "helena@cliente.test"
        )
        parsed = assert_clean_headers(received, ["helena@cliente.test"])
        assert parsed["Subject"] == "Re: #ACESSO Bcc: evil@x.test — pedido recebido"
        text, html = bodies(parsed)
        assert "Olá, Helena X-Evil: 1!" in text
        assert TEMPLATE_NAME in text and TEMPLATE_NAME in html


def _requests(service: Service) -> list[AccessRequest]:
    with service.sessions() as session:
        requests = list(session.scalars(select(AccessRequest).order_by(AccessRequest.id)))
        session.expunge_all()
    return requests


class TestCommandLine:
    @pytest.fixture
    def config(self, tmp_path: Path) -> Path:
        config = tmp_path / "portaria.toml"
        config.write_text(
            '[database]\nurl = "sqlite:///portaria.db"\n'
            '[outbound]\nfrom_address = "acesso@portaria.test"\n'
        )
        return config

    def take(self, config: Path, *people: str) -> None:
        service = open_service(load_settings(config), migrate=True)
        with service.transaction() as session:
            for n, block in enumerate(people):
                raw = request_message(block, message_id=f"<cli-{n}@cliente.test>")
                row = receive(session, service.settings, mailbox="t", key=str(n), raw=raw)
                assert isinstance(row, InboundMessage) and row.outcome == "request"

    def test_table_prints_html_and_template_syntax_as_text(self, config: Path) -> None:
        self.take(
            config,
            person_block(TEMPLATE_NAME, "caio@cliente.test", "<b>RH</b>", "Comum"),
            person_block("Ana Lima", "ana@cliente.test", "RH\u2028Bcc: evil@x.test", "Comum"),
        )

        result = CliRunner().invoke(app, ["requests", "list", "--config", str(config)])

        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        caio = next(line for line in lines if "caio@cliente.test" in line)
        ana = next(line for line in lines if "ana@cliente.test" in line)
        assert TEMPLATE_NAME in caio and "<b>RH</b>" in caio
        assert "RH Bcc: evil@x.test" in ana
        assert "\x1b" not in result.output

    def test_show_prints_template_syntax_as_text(self, config: Path) -> None:
        self.take(config, person_block(TEMPLATE_NAME, "caio@cliente.test", "<b>RH</b>", "Comum"))

        result = CliRunner().invoke(app, ["requests", "show", "1", "--config", str(config)])

        assert result.exit_code == 0, result.output
        assert f"              nome (name): {TEMPLATE_NAME}" in result.output.splitlines()
        assert "              área (area): <b>RH</b>" in result.output.splitlines()

    def test_rich_markup_in_an_area_is_printed_as_text(self, config: Path) -> None:
        self.take(config, person_block("Ana Lima", "ana@cliente.test", "Financeiro [/]", "Comum"))

        result = CliRunner().invoke(app, ["requests", "list", "--config", str(config)])

        assert result.exit_code == 0, result.output
        assert "Financeiro [/]" in result.output


class TestSetPasswordPage:
    @pytest.mark.parametrize(
        ("token", "in_form"),
        [
            ('"><script>alert(1)', "%22%3E%3Cscript%3Ealert%281%29"),
            ("{{ 7*7 }}", "%7B%7B%207%2A7%20%7D%7D"),
        ],
    )
    def test_token_in_the_address_is_escaped(
        self, service: Service, token: str, in_form: str
    ) -> None:
        client = TestClient(create_app(service))

        dead = client.get(f"/set-password/{token}")
        mismatch = client.post(
            f"/set-password/{token}", data={"password": "a" * 12, "confirmation": "b" * 12}
        )

        assert dead.status_code == 410
        assert mismatch.status_code == 400
        assert f'action="/set-password/{in_form}"' in mismatch.text
        for page in (dead, mismatch):
            assert "<script>alert" not in page.text and "49" not in page.text

    def test_email_shown_after_setting_the_password_is_escaped(self, service: Service) -> None:
        with service.transaction() as session:
            user = create_user(
                session,
                name=SCRIPT_NAME,
                email="<script>x</script>{{7*7}}@cliente.test",
                area="RH",
                role="comum",
                created_via="test",
            )
            token = issue_set_password_token(session, user, ttl_hours=1).token
        client = TestClient(create_app(service))

        page = client.post(
            f"/set-password/{token}",
            data={"password": "correct horse battery", "confirmation": "correct horse battery"},
        )

        assert page.status_code == 200
        assert "&lt;script&gt;x&lt;/script&gt;{{7*7}}@cliente.test" in page.text
        assert "<script>x" not in page.text and "49@" not in page.text
