"""A real SMTP server for tests: aiosmtpd on 127.0.0.1, recording what it receives.

Fixtures:

- ``smtp_server``: a plain server without AUTH, fresh for each test.
- ``make_smtp_server(security=..., username=..., password=...)``: a server
  with implicit TLS (``ssl``), STARTTLS (``starttls``) or none (``plain``),
  optionally demanding AUTH; stopped at the end of the test. With
  ``oauth2_token=...`` (and a username) it offers only AUTH XOAUTH2 and
  accepts that bearer token (see :class:`XOAuth2Handler`).
- ``smtp_certificate``: a self-signed certificate for 127.0.0.1 made with
  ``openssl`` once per session; clients verify the server against it.
- ``outbound_settings(server=None, **overrides)``: Settings with
  ``outbound.kind = "smtp"`` pointed at a server (``smtp_server`` unless
  another is given), a SQLite database in the test's folder and no retry
  delay surprises (``backoff_seconds = 60``).

Each server stores every accepted envelope in ``received`` and can be told to
answer the next commands with an error (``fail_next``), to hang up on the
next command (``drop_next``), or be stopped and started again on the same
port to play a server that is down.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import threading
from base64 import b64decode
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser, Parser
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session

from config.settings import Settings

HOST = "127.0.0.1"


@dataclass
class ReceivedMail:
    """One accepted envelope, as the server saw it."""

    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    message: EmailMessage
    mail_options: list[str] = field(default_factory=list)


@dataclass
class _Failure:
    command: str
    code: int
    text: str
    times: int


class RecordingHandler:
    """aiosmtpd handler: accepts everything unless told to fail, and keeps what it got."""

    def __init__(self) -> None:
        self.received: list[ReceivedMail] = []
        self._failures: list[_Failure] = []
        # command -> [commands still to let through, commands to hang up on]
        self._drops: dict[str, list[int]] = {}
        self._lock = threading.Lock()

    def fail_next(self, command: str, code: int, text: str, times: int) -> None:
        with self._lock:
            self._failures.append(_Failure(command.upper(), code, text, times))

    def drop_next(self, command: str, after: int, times: int) -> None:
        with self._lock:
            self._drops[command.upper()] = [after, times]

    def _planned_answer(self, server: SMTP, command: str) -> str | None:
        with self._lock:
            plan = self._drops.get(command)
            if plan is not None and plan[0] > 0:
                plan[0] -= 1
            elif plan is not None and plan[1] > 0:
                plan[1] -= 1
                # abort() discards anything still buffered: the client sees
                # the connection vanish without an answer.
                if server.transport is not None:
                    server.transport.abort()
                return "421 4.3.0 connection dropped by the test"
            for failure in self._failures:
                if failure.command == command and failure.times > 0:
                    failure.times -= 1
                    return f"{failure.code} {failure.text}"
        return None

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        answer = self._planned_answer(server, "MAIL")
        if answer is not None:
            return answer
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        answer = self._planned_answer(server, "RCPT")
        if answer is not None:
            return answer
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        answer = self._planned_answer(server, "DATA")
        if answer is not None:
            return answer
        raw = envelope.original_content or b""
        mail_options = [option.upper() for option in envelope.mail_options]
        message = parse_delivered(raw, utf8="SMTPUTF8" in mail_options)
        with self._lock:
            self.received.append(
                ReceivedMail(
                    mail_from=envelope.mail_from or "",
                    rcpt_tos=list(envelope.rcpt_tos),
                    raw=raw,
                    message=message,
                    mail_options=mail_options,
                )
            )
        return "250 2.0.0 accepted"


class XOAuth2Handler(RecordingHandler):
    """A RecordingHandler that also speaks AUTH XOAUTH2, the way Gmail and Microsoft 365 do.

    It accepts ``username`` with the bearer token in ``token`` (a test may
    change it, playing the provider issuing a new token) and records every
    token presented, in order, in ``presented``. A refused token gets the
    providers' answer: a 334 challenge carrying a base64 JSON error, then,
    after the client's empty line, 535.
    """

    def __init__(self, username: str, token: str) -> None:
        super().__init__()
        self.username = username
        self.token = token
        self.presented: list[str] = []

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        if len(args) == 1:
            reply = await server.challenge_auth("")
            if reply is MISSING:
                return AuthResult(success=False)
        else:
            try:
                reply = b64decode(args[1].encode(), validate=True)
            except ValueError:
                await server.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        assert isinstance(reply, bytes)
        # "user=U\x01auth=Bearer T\x01\x01"
        fields = dict(part.split(b"=", 1) for part in reply.split(b"\x01") if b"=" in part)
        user = fields.get(b"user", b"").decode("utf-8", errors="replace")
        auth = fields.get(b"auth", b"").decode("utf-8", errors="replace")
        token = auth.removeprefix("Bearer ")
        with self._lock:
            self.presented.append(token)
        if reply.endswith(b"\x01\x01") and user == self.username and token == self.token:
            return AuthResult(success=True, auth_data=user)
        error = json.dumps({"status": "401", "schemes": "Bearer", "scope": "smtp"})
        if await server.challenge_auth(error) is MISSING:
            return AuthResult(success=False, handled=True)  # aborted; answered already
        return AuthResult(
            success=False, handled=False, message="535 5.7.8 Username and token not accepted"
        )


def parse_delivered(raw: bytes, *, utf8: bool) -> EmailMessage:
    """The message as a local delivery agent stores it: LF line ends, UTF-8 headers decoded.

    The bytes parser reads 8-bit headers as escaped ASCII, so an SMTPUTF8
    message (RFC 6532 headers) is decoded to text first.
    """
    local = raw.replace(b"\r\n", b"\n")
    if utf8:
        message = Parser(policy=policy.default).parsestr(local.decode("utf-8"))
    else:
        message = BytesParser(policy=policy.default).parsebytes(local)
    if not isinstance(message, EmailMessage):
        raise TypeError("the parser did not return an EmailMessage")
    return message


class _CountingController(Controller):
    """A Controller that counts the SMTP sessions clients open."""

    def __init__(self, owner: SmtpTestServer, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._owner = owner

    def factory(self) -> SMTP:
        self._owner.connections += 1
        return super().factory()


class SmtpTestServer:
    """A running aiosmtpd server on 127.0.0.1 and what it has received."""

    def __init__(
        self,
        *,
        security: str = "plain",
        username: str | None = None,
        password: str | None = None,
        certificate: tuple[Path, Path] | None = None,
        oauth2_token: str | None = None,
    ) -> None:
        if security not in ("plain", "starttls", "ssl"):
            raise ValueError(f"unknown security {security!r}")
        if security != "plain" and certificate is None:
            raise ValueError(f"security {security!r} needs a certificate")
        if oauth2_token is not None and username is None:
            raise ValueError("an XOAUTH2 server needs the username it accepts")
        self.host = HOST
        self.port = _free_port()
        self.security = security
        self.username = username
        self.password = password
        self.ca_file = certificate[0] if certificate else None
        # With a token, AUTH offers only XOAUTH2: password login is switched off.
        self.oauth2_token = oauth2_token
        self.handler: RecordingHandler = (
            XOAuth2Handler(username, oauth2_token)
            if username is not None and oauth2_token is not None
            else RecordingHandler()
        )
        self.connections = 0
        self._certificate = certificate
        self._controller: Controller | None = None

    @property
    def received(self) -> list[ReceivedMail]:
        return self.handler.received

    @property
    def running(self) -> bool:
        return self._controller is not None

    def fail_next(
        self, code: int = 451, text: str = "try later", *, times: int = 1, command: str = "RCPT"
    ) -> None:
        """Answer the next ``times`` ``command`` (MAIL, RCPT or DATA) with ``code text``."""
        self.handler.fail_next(command, code, text, times)

    def drop_next(self, command: str = "MAIL", *, after: int = 0, times: int = 1) -> None:
        """Let ``after`` ``command``s through, then hang up without answering on ``times``."""
        self.handler.drop_next(command, after, times)

    def start(self) -> None:
        if self._controller is not None:
            return
        kwargs: dict[str, Any] = {
            "hostname": self.host,
            "port": self.port,
            "server_hostname": "smtp.portaria.test",
            "enable_SMTPUTF8": True,
            "ready_timeout": 10.0,
        }
        if self._certificate is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*self._certificate)
            if self.security == "ssl":
                kwargs["ssl_context"] = context
            else:
                kwargs["tls_context"] = context
                kwargs["require_starttls"] = True
        if self.username is not None:
            kwargs["authenticator"] = self._authenticate
            # AUTH in clear is acceptable on loopback, and lets plain mode be tested.
            kwargs["auth_require_tls"] = False
        if self.oauth2_token is not None:
            kwargs["auth_exclude_mechanism"] = ["PLAIN", "LOGIN"]
        controller = _CountingController(self, self.handler, **kwargs)
        controller.start()
        # start() opens one connection of its own to check the server is up.
        self.connections = 0
        self._controller = controller

    def stop(self) -> None:
        """Stop listening and close open connections, like a server going down."""
        if self._controller is None:
            return
        self._controller.stop()
        self._controller = None

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == self.username
            and auth_data.password.decode() == self.password
        )
        return AuthResult(success=ok, handled=False)


def _free_port() -> int:
    # The Controller needs a concrete port (its start-up probe connects to it),
    # and keeping one port lets stop() and start() play a server restart.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def smtp_certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate and key for 127.0.0.1 and localhost."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is needed to make the test certificate (apt-get install openssl)")
    folder = tmp_path_factory.mktemp("smtp-tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "2", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def make_smtp_server(
    smtp_certificate: tuple[Path, Path],
) -> Iterator[Callable[..., SmtpTestServer]]:
    servers: list[SmtpTestServer] = []

    def make(
        security: str = "plain",
        username: str | None = None,
        password: str | None = None,
        oauth2_token: str | None = None,
    ) -> SmtpTestServer:
        certificate = smtp_certificate if security != "plain" else None
        server = SmtpTestServer(
            security=security,
            username=username,
            password=password,
            certificate=certificate,
            oauth2_token=oauth2_token,
        )
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def smtp_server() -> Iterator[SmtpTestServer]:
    server = SmtpTestServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def outbound_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., Settings]:
    def build(server: SmtpTestServer | None = None, **overrides: Any) -> Settings:
        if server is None:
            server = request.getfixturevalue("smtp_server")
        outbound: dict[str, Any] = {
            "kind": "smtp",
            "host": server.host,
            "port": server.port,
            "security": server.security,
            "timeout": 10.0,
            "from_address": "portaria@acesso.example.com",
            "from_name": "Portaria",
            "max_attempts": 3,
            "backoff_seconds": 60,
        }
        if server.username is not None:
            outbound["username"] = server.username
            outbound["password"] = server.password
        if server.ca_file is not None:
            outbound["ca_file"] = server.ca_file
        outbound.update(overrides)
        return Settings(
            database={"url": f"sqlite:///{tmp_path}/t.db"},
            outbound=outbound,
            service={"language": "pt-BR", "support_address": "suporte@example.com"},
            config_dir=tmp_path,
        )

    return build
