"""The main job against real servers, driven through the `portaria` command.

#ACESSO messages appended to a real Dovecot mailbox → `poll --once` → pending
requests → `requests approve` → the user exists → the real SMTP server
received the requester's and the new user's emails → the messages sit in the
processed folder → a second poll changes nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from config.settings import load_settings
from portaria.cli import app
from portaria.wiring import open_service
from provisioning.models import AccessRequest, User
from tests.mail import person_block, request_message

pytestmark = [pytest.mark.imap, pytest.mark.smtp]


@pytest.fixture
def config_file(tmp_path: Path, imap_account, smtp_server, monkeypatch) -> Path:
    monkeypatch.setenv("PORTARIA_MAILBOX__PASSWORD", imap_account.password)
    file = tmp_path / "portaria.toml"
    file.write_text(
        f"""
[database]
url = "sqlite:///portaria.db"

[mailbox]
kind = "imap"
host = "{imap_account.host}"
port = {imap_account.port}
security = "starttls"
ca_file = "{imap_account.cert_file}"
username = "{imap_account.username}"

[outbound]
kind = "smtp"
host = "{smtp_server.host}"
port = {smtp_server.port}
security = "plain"
from_address = "acesso@portaria.test"

[service]
support_address = "suporte@portaria.test"
base_url = "https://portaria.test"
""",
        encoding="utf-8",
    )
    return file


def portaria(config: Path, *args: str) -> str:
    result = CliRunner().invoke(app, [*args[:2], "--config", str(config), *args[2:]])
    assert result.exit_code == 0, result.output
    return result.output


def test_emailed_request_becomes_an_account(config_file: Path, imap_account, smtp_server) -> None:
    imap_account.append(
        [
            request_message(
                person_block(
                    "Conceição Brandão", "conceicao@cliente.test", "Unidade Maceió", "Agente"
                ),
                subject="RE: #ACESSO",
                message_id="<pedido-1@cliente.test>",
            ),
            request_message("Reunião amanhã?", subject="Reunião"),
        ]
    )

    portaria(config_file, "init")
    output = portaria(config_file, "poll", "--once")

    assert "1 request" in output and "1 left" in output
    service = open_service(load_settings(config_file))
    with service.sessions() as session:
        [request] = session.scalars(select(AccessRequest)).all()
    assert (request.status, request.name, request.email, request.access_type) == (
        "pending",
        "Conceição Brandão",
        "conceicao@cliente.test",
        "agente",
    )
    assert len(imap_account.messages("Processed")) == 1
    assert len(imap_account.messages("INBOX")) == 1
    acknowledged = {tuple(m.rcpt_tos): m.message for m in smtp_server.received}
    assert set(acknowledged) == {("helena.costa@cliente.test",), ("suporte@portaria.test",)}
    received = acknowledged[("helena.costa@cliente.test",)]
    assert received["Subject"] == "RE: #ACESSO — pedido recebido"
    assert received["In-Reply-To"] == "<pedido-1@cliente.test>"
    notice = acknowledged[("suporte@portaria.test",)]
    assert notice["Subject"] == "1 pedido de acesso aguardando aprovação"
    assert f"portaria requests approve {request.id}" in notice.get_body(("plain",)).get_content()

    output = portaria(config_file, "requests", "approve", str(request.id))
    assert f"aprovado (approved) #{request.id}" in output
    portaria(config_file, "outbox", "send")

    with service.sessions() as session:
        user = session.scalar(select(User))
    assert (user.email, user.role, user.area) == (
        "conceicao@cliente.test",
        "agente",
        "Unidade Maceió",
    )
    by_recipient = {tuple(m.rcpt_tos): m.message for m in smtp_server.received[2:]}
    assert set(by_recipient) == {("helena.costa@cliente.test",), ("conceicao@cliente.test",)}
    welcome = by_recipient[("conceicao@cliente.test",)]
    assert welcome["Subject"] == "Boas-vindas! Seu acesso à plataforma está pronto"
    text = welcome.get_body(("plain",)).get_content()
    assert re.search(r"https://portaria\.test/set-password/[\w-]{30,}", text)
    assert "Conceição" in text
    approved = by_recipient[("helena.costa@cliente.test",)]
    assert approved["Subject"] == "RE: #ACESSO — acesso liberado"
    assert "conceicao@cliente.test" in approved.get_body(("plain",)).get_content()
    assert approved["Auto-Submitted"] == "auto-replied"

    received_before = len(smtp_server.received)
    output = portaria(config_file, "poll", "--once")
    assert "0 new message" in output
    assert len(smtp_server.received) == received_before
    with service.sessions() as session:
        assert len(session.scalars(select(AccessRequest)).all()) == 1
    assert len(imap_account.messages("Processed")) == 1
