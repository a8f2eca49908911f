"""OAuth2 (SASL XOAUTH2) logins: settings, token sources, and the real servers.

IMAP runs against the OAuth2 variant of the private Dovecot, whose oauth2
passdb checks every token with the fixture's token issuer; SMTP runs against
aiosmtpd offering only AUTH XOAUTH2, as Microsoft 365 and Gmail do once
password login is switched off. Tokens are read from a file or a command
written into the test's folder.
"""

from __future__ import annotations

import logging
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from config.settings import ConfigError, MailboxSettings, OAuth2Settings, Settings, load_settings
from intake.models import MailboxState
from intake.poller import poll_once
from intake.sources import MailboxLoginRefused, open_source
from portaria.db import make_engine, make_sessionmaker, migrate_schema, transaction, utcnow
from portaria.oauth2 import AccessTokenUnavailable, read_access_token, xoauth2_response
from portaria.outbox import SendReport, enqueue, send_due
from portaria.outbox_models import OutboxMessage
from tests.mail import person_block, request_message
from tests.servers.dovecot import DovecotServer, ImapAccount, OAuth2Dovecot
from tests.servers.smtp import SmtpTestServer, XOAuth2Handler

FROM = "portaria@acesso.example.com"
SMTP_USER = "portaria@acesso.example.com"
RECEIVED = {
    "requester_name": "Carla Mendes",
    "original_subject": "#ACESSO",
    "people": [
        {"name": "Maria Souza", "email": "maria@example.com", "area": "CS", "access_type": "comum"}
    ],
}


def same(path: Path) -> Path:
    return path


def problem(error: ConfigError) -> str:
    """The one problem line of a configuration error, without its heading."""
    [line] = str(error).splitlines()[1:]
    return line.strip()


def write_script(folder: Path, name: str, body: str) -> Path:
    """An executable Python script: token commands are whatever program the admin chose."""
    script = folder / name
    script.write_text(f"#!{sys.executable}\nimport sys\n{body}\n", encoding="utf-8")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(f"sqlite:///{tmp_path}/t.db")
    migrate_schema(engine)
    yield make_sessionmaker(engine)
    engine.dispose()


class TestSettings:
    def write(self, tmp_path: Path, text: str) -> Path:
        file = tmp_path / "portaria.toml"
        file.write_text(text, encoding="utf-8")
        return file

    def test_mailbox_oauth2_from_the_file(self, tmp_path: Path) -> None:
        file = self.write(
            tmp_path,
            '[mailbox]\nkind = "imap"\nhost = "outlook.office365.com"\n'
            'username = "acesso@empresa.com.br"\nauth = "oauth2"\n'
            'oauth2 = { token_command = "portaria-token --scope imap" }\n',
        )

        mailbox = load_settings(file).mailbox

        assert mailbox.auth == "oauth2"
        assert mailbox.oauth2 == OAuth2Settings(token_command="portaria-token --scope imap")
        assert mailbox.oauth2.command_timeout == 30.0

    def test_token_file_from_the_environment(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        file = self.write(
            tmp_path,
            '[outbound]\nkind = "smtp"\nhost = "smtp.gmail.com"\nusername = "a@b.com.br"\n',
        )
        monkeypatch.setenv("PORTARIA_OUTBOUND__AUTH", "oauth2")
        monkeypatch.setenv("PORTARIA_OUTBOUND__OAUTH2__TOKEN_FILE", "tokens/smtp")

        outbound = load_settings(file).outbound

        assert outbound.auth == "oauth2"
        assert outbound.oauth2 == OAuth2Settings(token_file=Path("tokens/smtp"))

    def test_password_stays_the_default(self) -> None:
        assert Settings().mailbox.auth == "password"
        assert Settings().outbound.auth == "password"

    def test_oauth2_without_a_token_source_names_the_keys(self, tmp_path: Path) -> None:
        file = self.write(
            tmp_path,
            '[mailbox]\nkind = "imap"\nhost = "imap.gmail.com"\nusername = "a@b.com.br"\n'
            'auth = "oauth2"\n',
        )

        with pytest.raises(ConfigError) as raised:
            load_settings(file)

        assert problem(raised.value) == (
            "mailbox.auth: auth = 'oauth2' needs oauth2.token_command or "
            "oauth2.token_file (e.g. oauth2 = { token_file = '/run/portaria/token' }); "
            f"corrija em (set it in) {file} ou (or) PORTARIA_MAILBOX__AUTH"
        )

    def test_both_token_sources_are_refused(self, tmp_path: Path) -> None:
        file = self.write(
            tmp_path,
            '[outbound]\nkind = "smtp"\nhost = "smtp.gmail.com"\nusername = "a@b.com.br"\n'
            'auth = "oauth2"\noauth2 = { token_command = "t", token_file = "f" }\n',
        )

        with pytest.raises(ConfigError) as raised:
            load_settings(file)

        assert problem(raised.value) == (
            "outbound.oauth2: set token_command or token_file, "
            f"not both; corrija em (set it in) {file} ou (or) PORTARIA_OUTBOUND__OAUTH2"
        )

    def test_smtp_oauth2_needs_a_username(self, tmp_path: Path) -> None:
        file = self.write(
            tmp_path,
            '[outbound]\nkind = "smtp"\nhost = "smtp.gmail.com"\nauth = "oauth2"\n'
            'oauth2 = { token_file = "f" }\n',
        )

        with pytest.raises(ConfigError) as raised:
            load_settings(file)

        assert problem(raised.value) == (
            "outbound.username: username is required when auth = 'oauth2'; "
            f"corrija em (set it in) {file} ou (or) PORTARIA_OUTBOUND__USERNAME"
        )

    def test_unknown_auth_is_refused(self) -> None:
        with pytest.raises(ValueError, match="'password' or 'oauth2'"):
            MailboxSettings(kind="imap", host="h", username="u", auth="kerberos")


class TestTokenFromAFile:
    def test_surrounding_whitespace_is_dropped(self, tmp_path: Path) -> None:
        (tmp_path / "token").write_text("  eyJ0eXAi.abc-_.def  \n", encoding="utf-8")

        token = read_access_token(
            OAuth2Settings(token_file=tmp_path / "token"), same, key="mailbox.oauth2"
        )

        assert token == "eyJ0eXAi.abc-_.def"

    def test_a_relative_file_is_read_from_the_configuration_folder(self, tmp_path: Path) -> None:
        (tmp_path / "secrets").mkdir()
        (tmp_path / "secrets" / "imap-token").write_text("tok-1\n", encoding="utf-8")
        settings = Settings(config_dir=tmp_path)

        token = read_access_token(
            OAuth2Settings(token_file=Path("secrets/imap-token")),
            settings.path,
            key="mailbox.oauth2",
        )

        assert token == "tok-1"

    def test_a_missing_file_is_named(self, tmp_path: Path) -> None:
        with pytest.raises(AccessTokenUnavailable) as raised:
            read_access_token(
                OAuth2Settings(token_file=tmp_path / "nope"), same, key="outbound.oauth2"
            )

        assert str(raised.value) == (
            f"outbound.oauth2.token_file: cannot read {tmp_path / 'nope'}: "
            "No such file or directory"
        )

    def test_an_empty_file_says_the_refresher_may_be_down(self, tmp_path: Path) -> None:
        (tmp_path / "token").write_text("\n", encoding="utf-8")

        with pytest.raises(AccessTokenUnavailable) as raised:
            read_access_token(
                OAuth2Settings(token_file=tmp_path / "token"), same, key="mailbox.oauth2"
            )

        assert str(raised.value) == (
            f"mailbox.oauth2.token_file: {tmp_path / 'token'} is empty; "
            "is the tool that refreshes it running?"
        )

    def test_more_than_a_token_is_refused(self, tmp_path: Path) -> None:
        (tmp_path / "token").write_text('{"access_token": "abc"}\n', encoding="utf-8")

        with pytest.raises(AccessTokenUnavailable) as raised:
            read_access_token(
                OAuth2Settings(token_file=tmp_path / "token"), same, key="mailbox.oauth2"
            )

        assert str(raised.value) == (
            "mailbox.oauth2: the token source must give only the access token, on one line"
        )
        assert "abc" not in str(raised.value)

    def test_no_source_at_all(self) -> None:
        with pytest.raises(AccessTokenUnavailable) as raised:
            read_access_token(None, same, key="mailbox.oauth2")

        assert str(raised.value) == (
            "mailbox.oauth2: no token source; set mailbox.oauth2.token_command or "
            "mailbox.oauth2.token_file"
        )


class TestTokenFromACommand:
    def test_output_is_the_token_and_arguments_are_split_without_a_shell(
        self, tmp_path: Path
    ) -> None:
        script = write_script(tmp_path, "token", 'print("tok-" + "|".join(sys.argv[1:]))\nprint()')
        command = f"{script} --scope 'https://outlook.office.com/IMAP' $HOME;x"

        token = read_access_token(
            OAuth2Settings(token_command=command), same, key="mailbox.oauth2"
        )

        assert token == "tok---scope|https://outlook.office.com/IMAP|$HOME;x"

    def test_a_failing_command_gives_its_status_and_last_word_never_the_token(
        self, tmp_path: Path
    ) -> None:
        script = write_script(
            tmp_path,
            "token",
            'print("secret-token-123")\n'
            'print("refreshing...", file=sys.stderr)\n'
            'print("refresh token expired: secret-token-123", file=sys.stderr)\n'
            "sys.exit(3)",
        )

        with pytest.raises(AccessTokenUnavailable) as raised:
            read_access_token(
                OAuth2Settings(token_command=f"{script} --client-secret s3cr3t"),
                same,
                key="outbound.oauth2",
            )

        assert str(raised.value) == (
            f"outbound.oauth2.token_command: '{script}' exited with status 3 "
            "(refresh token expired: [token])"
        )
        assert "s3cr3t" not in str(raised.value)

    def test_a_command_that_prints_nothing(self, tmp_path: Path) -> None:
        script = write_script(tmp_path, "token", "pass")

        with pytest.raises(AccessTokenUnavailable) as raised:
            read_access_token(OAuth2Settings(token_command=str(script)), same, key="k")

        assert str(raised.value) == (
            f"k.token_command: '{script}' printed no token on its standard output"
        )

    def test_a_missing_program(self, tmp_path: Path) -> None:
        with pytest.raises(AccessTokenUnavailable) as raised:
            read_access_token(
                OAuth2Settings(token_command=f"{tmp_path}/no-such-tool --x"), same, key="k"
            )

        assert str(raised.value) == (
            f"k.token_command: cannot run '{tmp_path}/no-such-tool': No such file or directory"
        )

    def test_a_command_that_hangs_is_stopped(self, tmp_path: Path) -> None:
        script = write_script(tmp_path, "token", "import time\ntime.sleep(30)")

        with pytest.raises(AccessTokenUnavailable) as raised:
            read_access_token(
                OAuth2Settings(token_command=str(script), command_timeout=0.3), same, key="k"
            )

        assert str(raised.value) == f"k.token_command: '{script}' did not finish within 0.3 s"

    def test_unbalanced_quotes(self) -> None:
        with pytest.raises(AccessTokenUnavailable) as raised:
            read_access_token(OAuth2Settings(token_command="tool 'open"), same, key="k")

        assert str(raised.value) == "k.token_command: cannot be split: No closing quotation"


def test_xoauth2_initial_response_is_the_documented_shape() -> None:
    assert xoauth2_response("acesso@empresa.com.br", "ya29.tok") == (
        "user=acesso@empresa.com.br\x01auth=Bearer ya29.tok\x01\x01"
    )


# IMAP against the OAuth2 variant of the private Dovecot


@pytest.fixture
def oauth2_account(dovecot_oauth2_server: OAuth2Dovecot) -> ImapAccount:
    dovecot_oauth2_server.server.start()
    return dovecot_oauth2_server.new_account()


def oauth2_mailbox(account: ImapAccount, **oauth2: Any) -> MailboxSettings:
    return account.mailbox_settings(auth="oauth2", password=None, oauth2=oauth2)


@pytest.mark.imap
class TestImapXOAuth2:
    def test_logs_in_with_a_token_from_a_file_and_reads(
        self, dovecot_oauth2_server: OAuth2Dovecot, oauth2_account: ImapAccount, tmp_path: Path
    ) -> None:
        issuer = dovecot_oauth2_server.issuer
        token = issuer.issue(oauth2_account.username)
        (tmp_path / "token").write_text(token + "\n", encoding="utf-8")
        oauth2_account.append(request_message(person_block("Ana", "ana@x.com", "TI", "Comum")))
        settings = oauth2_mailbox(oauth2_account, token_file=tmp_path / "token")

        with open_source(settings, same) as source:
            keys = source.keys()

        assert len(keys) == 1
        assert issuer.introspected[-1:] == [token]

    @pytest.mark.parametrize("security", ["starttls", "ssl"])
    def test_over_tls(
        self,
        dovecot_oauth2_server: OAuth2Dovecot,
        oauth2_account: ImapAccount,
        tmp_path: Path,
        security: str,
    ) -> None:
        token = dovecot_oauth2_server.issuer.issue(oauth2_account.username)
        script = write_script(tmp_path, "token", f"print({token!r})")
        settings = oauth2_account.mailbox_settings(
            security=security, auth="oauth2", password=None, oauth2={"token_command": str(script)}
        )

        with open_source(settings, same) as source:
            assert source.keys() == []

    def test_each_login_reads_the_token_again(
        self, dovecot_oauth2_server: OAuth2Dovecot, oauth2_account: ImapAccount, tmp_path: Path
    ) -> None:
        issuer = dovecot_oauth2_server.issuer
        first = issuer.issue(oauth2_account.username)
        (tmp_path / "token").write_text(first, encoding="utf-8")
        settings = oauth2_mailbox(oauth2_account, token_file=tmp_path / "token")
        with open_source(settings, same):
            pass
        # An hour later: the provider has replaced the token, the refresher the file.
        issuer.revoke(first)
        second = issuer.issue(oauth2_account.username)
        (tmp_path / "token").write_text(second, encoding="utf-8")

        with open_source(settings, same) as source:
            assert source.keys() == []

        assert issuer.introspected[-2:] == [first, second]

    def test_an_expired_token_is_a_refused_login_without_the_token(
        self,
        dovecot_oauth2_server: OAuth2Dovecot,
        oauth2_account: ImapAccount,
        tmp_path: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        issuer = dovecot_oauth2_server.issuer
        token = issuer.issue(oauth2_account.username)
        issuer.revoke(token)
        (tmp_path / "token").write_text(token, encoding="utf-8")
        settings = oauth2_mailbox(oauth2_account, token_file=tmp_path / "token")
        caplog.set_level(logging.DEBUG)

        with pytest.raises(MailboxLoginRefused) as raised, open_source(settings, same):
            pass

        assert str(raised.value) == (
            f"IMAP server 127.0.0.1:{oauth2_account.port} refused the OAuth2 login of "
            f"'{oauth2_account.username}' ([AUTHENTICATIONFAILED] Authentication failed.); "
            "check mailbox.username and that the token from mailbox.oauth2 is current and "
            "allows IMAP for this mailbox"
        )
        assert token not in caplog.text

    def test_a_token_for_another_user_is_refused(
        self, dovecot_oauth2_server: OAuth2Dovecot, oauth2_account: ImapAccount, tmp_path: Path
    ) -> None:
        other = dovecot_oauth2_server.new_account()
        (tmp_path / "token").write_text(
            dovecot_oauth2_server.issuer.issue(other.username), encoding="utf-8"
        )
        settings = oauth2_mailbox(oauth2_account, token_file=tmp_path / "token")

        with (
            pytest.raises(MailboxLoginRefused, match="refused the OAuth2 login"),
            open_source(settings, same),
        ):
            pass

    def test_a_failing_token_command_is_a_refused_login(
        self, oauth2_account: ImapAccount, tmp_path: Path
    ) -> None:
        script = write_script(
            tmp_path, "token", 'print("consent required", file=sys.stderr)\nsys.exit(2)'
        )
        settings = oauth2_mailbox(oauth2_account, token_command=str(script))

        with pytest.raises(MailboxLoginRefused) as raised, open_source(settings, same):
            pass

        assert str(raised.value) == (
            f"IMAP server 127.0.0.1:{oauth2_account.port}: no access token: "
            f"mailbox.oauth2.token_command: '{script}' exited with status 2 (consent required)"
        )

    def test_a_server_without_xoauth2_is_named(
        self, dovecot_server: DovecotServer, imap_account: ImapAccount, tmp_path: Path
    ) -> None:
        (tmp_path / "token").write_text("tok", encoding="utf-8")
        settings = oauth2_mailbox(imap_account, token_file=tmp_path / "token")

        with pytest.raises(MailboxLoginRefused) as raised, open_source(settings, same):
            pass

        assert str(raised.value) == (
            f"IMAP server 127.0.0.1:{imap_account.port} does not offer AUTH=XOAUTH2; "
            "check mailbox.host, or use mailbox.auth = 'password'"
        )

    def test_the_poller_reads_requests_and_records_a_refused_token(
        self,
        dovecot_oauth2_server: OAuth2Dovecot,
        oauth2_account: ImapAccount,
        tmp_path: Path,
        sessions: sessionmaker[Session],
    ) -> None:
        issuer = dovecot_oauth2_server.issuer
        token = issuer.issue(oauth2_account.username)
        (tmp_path / "token").write_text(token, encoding="utf-8")
        oauth2_account.append(
            request_message(person_block("Ana Lima", "ana@cliente.test", "TI", "Comum"))
        )
        settings = Settings(
            database={"url": f"sqlite:///{tmp_path}/t.db"},
            mailbox=oauth2_mailbox(oauth2_account, token_file=Path("token")),
            outbound={"kind": "maildir", "maildir": tmp_path / "out", "from_address": FROM},
            config_dir=tmp_path,
        )

        report = poll_once(sessions, settings)
        issuer.revoke(token)
        with pytest.raises(MailboxLoginRefused):
            poll_once(sessions, settings)

        assert dict(report.outcomes) == {"request": 1}
        assert oauth2_account.messages("INBOX") == []
        with sessions() as session:
            state = session.scalars(select(MailboxState)).one()
        assert state.last_result == "1 new message(s): 1 request; 1 moved"
        assert state.last_error is not None
        assert "refused the OAuth2 login" in state.last_error
        assert token not in state.last_error


# SMTP against aiosmtpd offering only AUTH XOAUTH2


@pytest.fixture
def oauth2_smtp(
    make_smtp_server: Callable[..., SmtpTestServer],
) -> Callable[..., SmtpTestServer]:
    def make(security: str = "starttls", token: str = "tok-initial") -> SmtpTestServer:
        return make_smtp_server(security, username=SMTP_USER, oauth2_token=token)

    return make


def oauth2_settings(server: SmtpTestServer, tmp_path: Path, **oauth2: Any) -> Settings:
    outbound: dict[str, Any] = {
        "kind": "smtp",
        "host": server.host,
        "port": server.port,
        "security": server.security,
        "timeout": 10.0,
        "from_address": FROM,
        "username": SMTP_USER,
        "auth": "oauth2",
        "oauth2": oauth2,
        "max_attempts": 3,
    }
    if server.ca_file is not None:
        outbound["ca_file"] = server.ca_file
    return Settings(
        database={"url": f"sqlite:///{tmp_path}/t.db"}, outbound=outbound, config_dir=tmp_path
    )


def queue_one(sessions: sessionmaker[Session], settings: Settings) -> int:
    with transaction(sessions) as session:
        return enqueue(
            session, settings, kind="received", to=["carla@example.com"], context=RECEIVED
        ).id


def outbox_row(sessions: sessionmaker[Session], outbox_id: int) -> OutboxMessage:
    with sessions() as session:
        return session.get_one(OutboxMessage, outbox_id)


def presented(server: SmtpTestServer) -> list[str]:
    handler = server.handler
    assert isinstance(handler, XOAuth2Handler)
    return handler.presented


@pytest.mark.smtp
class TestSmtpXOAuth2:
    @pytest.mark.parametrize("security", ["plain", "starttls", "ssl"])
    def test_sends_with_a_token_from_a_file(
        self,
        oauth2_smtp: Callable[..., SmtpTestServer],
        sessions: sessionmaker[Session],
        tmp_path: Path,
        security: str,
    ) -> None:
        server = oauth2_smtp(security, token="tok-abc")
        (tmp_path / "smtp-token").write_text("tok-abc\n", encoding="utf-8")
        settings = oauth2_settings(server, tmp_path, token_file="smtp-token")
        queue_one(sessions, settings)

        report = send_due(sessions, settings)

        assert report == SendReport(sent=1)
        assert presented(server) == ["tok-abc"]
        [mail] = server.received
        assert mail.rcpt_tos == ["carla@example.com"]

    def test_each_connection_reads_the_token_again(
        self,
        oauth2_smtp: Callable[..., SmtpTestServer],
        sessions: sessionmaker[Session],
        tmp_path: Path,
    ) -> None:
        server = oauth2_smtp(token="tok-1")
        script = write_script(tmp_path, "token", "print(open(sys.argv[1]).read().strip())")
        (tmp_path / "current").write_text("tok-1", encoding="utf-8")
        settings = oauth2_settings(server, tmp_path, token_command=f"{script} {tmp_path}/current")
        queue_one(sessions, settings)
        send_due(sessions, settings)
        server.handler.token = "tok-2"  # type: ignore[attr-defined]
        (tmp_path / "current").write_text("tok-2", encoding="utf-8")
        queue_one(sessions, settings)

        report = send_due(sessions, settings)

        assert report == SendReport(sent=1)
        assert presented(server) == ["tok-1", "tok-2"]
        assert len(server.received) == 2

    def test_a_refused_token_defers_the_mail_with_the_server_answer(
        self,
        oauth2_smtp: Callable[..., SmtpTestServer],
        sessions: sessionmaker[Session],
        tmp_path: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        server = oauth2_smtp(token="tok-current")
        (tmp_path / "token").write_text("tok-expired", encoding="utf-8")
        settings = oauth2_settings(server, tmp_path, token_file="token")
        outbox_id = queue_one(sessions, settings)
        caplog.set_level(logging.DEBUG)

        report = send_due(sessions, settings, now=utcnow())

        assert report == SendReport(retried=1)
        row = outbox_row(sessions, outbox_id)
        assert (row.status, row.attempts) == ("pending", 1)
        assert row.last_error == (
            f"cannot use SMTP server 127.0.0.1:{server.port}: "
            "535 5.7.8 Username and token not accepted"
        )
        assert presented(server) == ["tok-expired"]
        assert server.received == []
        assert "tok-expired" not in caplog.text

    def test_a_failing_token_command_defers_the_mail(
        self,
        oauth2_smtp: Callable[..., SmtpTestServer],
        sessions: sessionmaker[Session],
        tmp_path: Path,
    ) -> None:
        server = oauth2_smtp()
        script = write_script(tmp_path, "token", "sys.exit(4)")
        settings = oauth2_settings(server, tmp_path, token_command=str(script))
        outbox_id = queue_one(sessions, settings)

        report = send_due(sessions, settings)

        assert report == SendReport(retried=1)
        assert outbox_row(sessions, outbox_id).last_error == (
            f"cannot use SMTP server 127.0.0.1:{server.port}: AccessTokenUnavailable: "
            f"outbound.oauth2.token_command: '{script}' exited with status 4"
        )
        assert presented(server) == []

    def test_a_server_without_xoauth2_is_named(
        self,
        make_smtp_server: Callable[..., SmtpTestServer],
        sessions: sessionmaker[Session],
        tmp_path: Path,
    ) -> None:
        server = make_smtp_server("plain", username=SMTP_USER, password="pw")
        (tmp_path / "token").write_text("tok", encoding="utf-8")
        settings = oauth2_settings(server, tmp_path, token_file="token")
        outbox_id = queue_one(sessions, settings)

        send_due(sessions, settings)

        assert outbox_row(sessions, outbox_id).last_error == (
            f"cannot use SMTP server 127.0.0.1:{server.port}: SMTPNotSupportedError: "
            "127.0.0.1 does not offer AUTH XOAUTH2 (it offers: LOGIN, PLAIN); "
            "check outbound.host and outbound.auth"
        )

    def test_the_password_login_is_switched_off_on_the_oauth2_server(
        self,
        oauth2_smtp: Callable[..., SmtpTestServer],
        sessions: sessionmaker[Session],
        tmp_path: Path,
    ) -> None:
        server = oauth2_smtp("plain")
        settings = oauth2_settings(server, tmp_path, token_file="unused")
        password_settings = settings.model_copy(
            update={
                "outbound": settings.outbound.model_copy(
                    update={"auth": "password", "password": None}
                )
            }
        )
        outbox_id = queue_one(sessions, password_settings)

        send_due(sessions, password_settings)

        assert outbox_row(sessions, outbox_id).last_error == (
            f"cannot use SMTP server 127.0.0.1:{server.port}: SMTPException: "
            "No suitable authentication method found."
        )
