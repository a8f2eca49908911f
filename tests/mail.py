"""Building #ACESSO request messages for tests."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

_serial = itertools.count(1)


def person_block(name: str, email: str, area: str, access: str) -> str:
    return f"Nome: {name}\nE-mail: {email}\nÁrea: {area}\nTipo de acesso: {access}\n"


def request_message(
    body: str,
    *,
    subject: str = "#ACESSO",
    sender: str = "Helena Costa <helena.costa@cliente.test>",
    message_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = "acesso@portaria.test"
    message["Subject"] = subject
    message["Date"] = format_datetime(datetime(2026, 12, 1, 12, next(_serial) % 60, tzinfo=UTC))
    message["Message-ID"] = message_id or make_msgid(domain="cliente.test")
    for name, value in (headers or {}).items():
        message[name] = value
    message.set_content(body)
    return message.as_bytes()
