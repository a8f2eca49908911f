"""Limits of the intake: message size, people per message, attachment size and types.

Over a limit, a message is recorded with the limit and the value, moved to
the attention folder, and never crashes the poller; an oversize message is
never parsed beyond its headers.
"""

from __future__ import annotations

import mailbox
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import func, select

import intake.reading
import intake.receiving
from config.settings import ConfigError, IntakeSettings, Settings, load_settings
from intake.models import InboundMessage
from intake.poller import poll_once
from intake.reading import _BodyParser
from intake.receiving import receive
from portaria.outbox_models import OutboxMessage
from portaria.wiring import Service
from provisioning.models import AccessRequest
from tests.mail import person_block, request_message

CSV = (
    "Nome;E-mail;Área;Tipo de acesso\n"
    "Ana Lima;ana.lima@cliente.test;Financeiro;Comum\n"
    "Bruno Dias;bruno.dias@cliente.test;Financeiro;Comum\n"
)


def received(service: Service, raw: bytes, key: str = "1") -> InboundMessage:
    """Receive one message in its own transaction and return its row, detached."""
    with service.transaction() as session:
        row = receive(session, service.settings, mailbox="test", key=key, raw=raw)
        session.flush()
        session.expunge(row)
    return row


def count(service: Service, model: type) -> int:
    with service.sessions() as session:
        return session.scalar(select(func.count()).select_from(model))


def with_attachment(
    body: str, payload: bytes, *, maintype: str, subtype: str, filename: str
) -> bytes:
    message = EmailMessage()
    message["From"] = "Helena Costa <helena.costa@cliente.test>"
    message["To"] = "acesso@portaria.test"
    message["Subject"] = "#ACESSO novas contratações"
    message["Message-ID"] = f"<{filename}-{len(payload)}@cliente.test>"
    message.set_content(body)
    message.add_attachment(payload, maintype=maintype, subtype=subtype, filename=filename)
    return message.as_bytes()


class TestSettings:
    def test_defaults(self) -> None:
        intake = IntakeSettings()

        assert intake.max_message_bytes == 26_214_400
        assert intake.max_people_per_message == 50
        assert intake.max_attachment_bytes == 5_242_880
        assert intake.attachment_types == ["text/csv", "text/plain", "message/rfc822"]
        assert intake.auto_replies_per_hour == 5
        assert intake.allowed_requesters == []
        assert intake.require_authentication == []
        assert intake.authserv_id is None
        assert intake.trusted_requesters == []

    def test_example_file_matches_the_defaults(self) -> None:
        example = Path(__file__).parents[1] / "config" / "portaria.example.toml"

        settings = load_settings(example)

        assert settings.intake == IntakeSettings()

    def test_bad_attachment_type_names_the_key(self, tmp_path: Path) -> None:
        config = tmp_path / "portaria.toml"
        config.write_text('[intake]\nattachment_types = ["csv"]\n')

        with pytest.raises(ConfigError) as caught:
            load_settings(config)

        assert "intake.attachment_types: 'csv' is not a MIME type such as 'text/csv'" in str(
            caught.value
        )
        assert "PORTARIA_INTAKE__ATTACHMENT_TYPES" in str(caught.value)

    def test_too_small_message_limit_is_refused(self, tmp_path: Path) -> None:
        config = tmp_path / "portaria.toml"
        config.write_text("[intake]\nmax_message_bytes = 10\n")

        with pytest.raises(ConfigError, match=r"intake\.max_message_bytes"):
            load_settings(config)


class TestMessageSize:
    @pytest.fixture(autouse=True)
    def small_limit(self, settings: Settings) -> None:
        settings.intake.max_message_bytes = 2048

    def test_oversize_request_is_unreadable_and_its_body_never_parsed(
        self, service: Service, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        raw = request_message(
            person_block("Ana Lima", "ana@cliente.test", "RH", "Comum") + "x" * 3000,
            message_id="<big@cliente.test>",
        )
        given: list[int] = []
        parsed: list[bytes] = []
        real_read = intake.receiving.read_message
        real_parse = _BodyParser.from_bytes

        def read_spy(data: bytes):  # type: ignore[no-untyped-def]
            given.append(len(data))
            return real_read(data)

        def parse_spy(data: bytes):  # type: ignore[no-untyped-def]
            parsed.append(data)
            return real_parse(data)

        monkeypatch.setattr(intake.receiving, "read_message", read_spy)
        monkeypatch.setattr(_BodyParser, "from_bytes", staticmethod(parse_spy))

        row = received(service, raw)

        assert row.outcome == "unreadable"
        assert row.reason == (
            f"mensagem grande demais (message too large): {len(raw)} bytes "
            f"({len(raw) / 1024:.1f} KiB), acima de (over) intake.max_message_bytes = "
            "2048 bytes (2.0 KiB); não lida (not read)"
        )
        assert row.destination == "attention"
        assert (row.message_id, row.sender, row.subject) == (
            "big@cliente.test",
            "helena.costa@cliente.test",
            "#ACESSO",
        )
        assert row.size == len(raw)
        assert len(given) == 1 and given[0] < raw.index(b"\n\n") + 5
        assert parsed == []
        assert count(service, AccessRequest) == 0
        assert count(service, OutboxMessage) == 0

    def test_oversize_untagged_mail_is_left_alone(self, service: Service) -> None:
        raw = request_message("x" * 5000, subject="Relatório mensal")

        row = received(service, raw)

        assert (row.outcome, row.destination) == ("left", None)

    def test_oversize_auto_reply_is_ignored(self, service: Service) -> None:
        raw = request_message(
            "x" * 5000, subject="Ausente: #ACESSO", headers={"Auto-Submitted": "auto-replied"}
        )

        row = received(service, raw)

        assert (row.outcome, row.reason) == (
            "ignored",
            "resposta automática (auto-reply): Auto-Submitted: auto-replied",
        )

    def test_message_at_the_limit_is_read(self, service: Service) -> None:
        raw = request_message(person_block("Ana Lima", "ana@cliente.test", "RH", "Comum"))
        service.settings.intake.max_message_bytes = len(raw)

        assert received(service, raw).outcome == "request"


# A multipart/alternative part whose boundary never comes: mail-parser gives up on it.
CUT_SHORT = (
    "From: Helena Costa <helena.costa@cliente.test>\n"
    "To: acesso@portaria.test\n"
    "Subject: #ACESSO\n"
    "Message-ID: <cut@cliente.test>\n"
    "MIME-Version: 1.0\n"
    'Content-Type: multipart/mixed; boundary="outer"\n\n'
    "--outer\n"
    'Content-Type: multipart/alternative; boundary="inner"\n\n'
    + person_block("Ana Lima", "ana@cliente.test", "RH", "Comum")
    + "\n"
).encode()


class TestBodyCutShort:
    def test_a_multipart_cut_short_is_read_part_by_part(self, service: Service) -> None:
        row = received(service, CUT_SHORT)

        assert (row.outcome, row.reason) == ("request", "")
        with service.sessions() as session:
            [request] = session.scalars(select(AccessRequest))
            assert (request.name, request.email) == ("Ana Lima", "ana@cliente.test")

    def test_a_body_no_parser_can_read_is_unreadable_and_not_answered(
        self, service: Service, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def refuse(_data: bytes):  # type: ignore[no-untyped-def]
            raise ValueError("cannot read this")

        monkeypatch.setattr(_BodyParser, "from_bytes", staticmethod(refuse))
        monkeypatch.setattr(intake.reading, "_body_part_by_part", refuse)

        row = received(service, CUT_SHORT)

        assert (row.outcome, row.destination) == ("unreadable", "attention")
        assert row.reason == (
            "não foi possível ler o corpo (body could not be parsed): ValueError: cannot read this"
        )
        assert count(service, AccessRequest) == 0
        assert count(service, OutboxMessage) == 0


class TestPeoplePerMessage:
    def test_more_people_than_allowed_holds_the_message(
        self, service: Service, settings: Settings
    ) -> None:
        settings.intake.max_people_per_message = 2
        body = "".join(
            person_block(name, f"{name.split()[0].lower()}@cliente.test", "RH", "Comum") + "\n"
            for name in ("Ana Lima", "Bruno Dias", "Carla Reis")
        )

        row = received(service, request_message(body))

        assert row.outcome == "held"
        assert row.reason == (
            "pessoas demais (too many people): 3, acima de (over) "
            "intake.max_people_per_message = 2; nada entrou na fila (nothing queued)"
        )
        assert row.destination == "attention"
        assert count(service, AccessRequest) == 0
        assert count(service, OutboxMessage) == 0

    def test_exactly_the_limit_is_queued(self, service: Service, settings: Settings) -> None:
        settings.intake.max_people_per_message = 2
        body = person_block("Ana Lima", "ana@cliente.test", "RH", "Comum") + "\n"
        body += person_block("Bruno Dias", "bruno@cliente.test", "RH", "Comum")

        row = received(service, request_message(body))

        assert row.outcome == "request"
        assert count(service, AccessRequest) == 2


class TestAttachments:
    def test_csv_over_the_size_limit_holds_the_message(
        self, service: Service, settings: Settings
    ) -> None:
        settings.intake.max_attachment_bytes = 100
        payload = CSV.encode("utf-8")
        assert len(payload) == 133
        raw = with_attachment(
            "Segue a planilha.", payload, maintype="text", subtype="csv", filename="pessoas.csv"
        )

        row = received(service, raw)

        assert row.outcome == "held"
        assert row.reason == (
            "anexo grande demais (attachment too large): 'pessoas.csv', text/csv, "
            "133 bytes (0.1 KiB), acima de (over) intake.max_attachment_bytes = "
            "100 bytes (0.1 KiB)"
        )
        assert row.destination == "attention"
        assert count(service, AccessRequest) == 0
        assert count(service, OutboxMessage) == 0

    def test_csv_under_the_limit_is_read(self, service: Service) -> None:
        raw = with_attachment(
            "Segue a planilha.",
            CSV.encode("utf-8"),
            maintype="text",
            subtype="csv",
            filename="pessoas.csv",
        )

        row = received(service, raw)

        assert row.outcome == "request"
        with service.sessions() as session:
            emails = list(session.scalars(select(AccessRequest.email).order_by(AccessRequest.id)))
        assert emails == ["ana.lima@cliente.test", "bruno.dias@cliente.test"]

    def test_csv_is_not_read_when_its_type_is_not_allowed(
        self, service: Service, settings: Settings
    ) -> None:
        settings.intake.attachment_types = ["text/plain"]
        raw = with_attachment(
            "Segue a planilha.",
            CSV.encode("utf-8"),
            maintype="text",
            subtype="csv",
            filename="pessoas.csv",
        )

        row = received(service, raw)

        assert row.outcome == "incomplete"
        assert row.reason == "faltam (missing): nome, e-mail, área, tipo de acesso"

    def test_csv_named_file_with_a_generic_type_counts_as_csv(
        self, service: Service, settings: Settings
    ) -> None:
        settings.intake.max_attachment_bytes = 100
        raw = with_attachment(
            "Segue.",
            CSV.encode("utf-8"),
            maintype="application",
            subtype="vnd.ms-excel",
            filename="pessoas.csv",
        )

        row = received(service, raw)

        assert row.outcome == "held"
        assert row.reason.startswith(
            "anexo grande demais (attachment too large): 'pessoas.csv', text/csv, "
        )

    def test_large_attachment_of_another_type_is_skipped_not_held(
        self, service: Service, settings: Settings
    ) -> None:
        settings.intake.max_attachment_bytes = 100
        raw = with_attachment(
            person_block("Ana Lima", "ana@cliente.test", "RH", "Comum"),
            b"\x89PNG\r\n" + b"\x00" * 5000,
            maintype="image",
            subtype="png",
            filename="assinatura.png",
        )

        row = received(service, raw)

        assert (row.outcome, row.reason) == ("request", "")
        assert count(service, AccessRequest) == 1


@pytest.mark.parametrize("transport", ["maildir", "imap"])
def test_poller_moves_every_over_limit_message_to_attention(
    service: Service, settings: Settings, request: pytest.FixtureRequest, transport: str
) -> None:
    settings.intake.max_message_bytes = 2048
    settings.intake.max_people_per_message = 1
    two = person_block("Ana Lima", "ana@cliente.test", "RH", "Comum") + "\n"
    two += person_block("Bruno Dias", "bruno@cliente.test", "RH", "Comum")
    messages = [
        request_message("y" * 4000, message_id="<big@cliente.test>"),
        request_message(two, message_id="<two@cliente.test>"),
        request_message(
            person_block("Carla Reis", "carla@cliente.test", "RH", "Comum"),
            message_id="<one@cliente.test>",
        ),
    ]
    if transport == "imap":
        account = request.getfixturevalue("imap_account")
        settings.mailbox = account.mailbox_settings()
        account.append(messages)

        def folder_sizes() -> tuple[int, int, int]:
            return tuple(  # type: ignore[return-value]
                len(account.messages(name)) for name in ("NeedsAttention", "Processed", "INBOX")
            )
    else:
        settings.path(settings.mailbox.maildir).parent.mkdir(parents=True, exist_ok=True)
        inbox = mailbox.Maildir(settings.path(settings.mailbox.maildir), create=True)
        for raw in messages:
            inbox.add(raw)

        def folder_sizes() -> tuple[int, int, int]:
            return (
                len(inbox.get_folder("NeedsAttention")),
                len(inbox.get_folder("Processed")),
                len(inbox),
            )

    report = poll_once(service.sessions, settings)

    assert dict(report.outcomes) == {"unreadable": 1, "held": 1, "request": 1}
    assert folder_sizes() == (2, 1, 0)
    with service.sessions() as session:
        rows = {
            row.message_id: (row.outcome, row.moved_at is not None)
            for row in session.scalars(select(InboundMessage))
        }
    assert rows == {
        "big@cliente.test": ("unreadable", True),
        "two@cliente.test": ("held", True),
        "one@cliente.test": ("request", True),
    }
