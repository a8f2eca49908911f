"""One-click unsubscribe: signed links, the secret key, the web page and the rule runs after."""

from __future__ import annotations

import base64
import email
import hashlib
import hmac
import mailbox
import os
import stat
from datetime import UTC, datetime
from email import policy
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select
from typer.testing import CliRunner

from config.settings import Settings, load_settings
from engine.models import Customer, EmailTemplate, RuleRun, Unsubscribe
from engine.rules import create_rule
from engine.runs import run_rule
from engine.unsubscribe import (
    InvalidUnsubscribeToken,
    SecretKeyUnavailable,
    UnsubscribeLinks,
    create_secret_key,
    read_secret_key,
    secret_key_path,
    unsubscribe_links,
)
from portaria.cli import app
from portaria.outbox import send_due
from portaria.web import create_app
from portaria.wiring import Service, open_service

KEY = b"chave-de-teste-com-32-caracteres!"
ACME = "compras@acme.com.br"
# The documented format, for a fixed key: base64url(address) "." base64url(HMAC-SHA256).
ACME_TOKEN = "Y29tcHJhc0BhY21lLmNvbS5icg.jGmh098kNYEe8lz1_c3Z6fSjNsIysGp5nfGHDBxB4Dg"
NOW = datetime(2025, 6, 18, 12, 0, tzinfo=UTC)
EMAIL_ACTION = {"kind": "email", "template": "Oi", "to": ["contact"]}


def with_service(settings: Settings, **changes: object) -> Settings:
    return settings.model_copy(update={"service": settings.service.model_copy(update=changes)})


class TestTokens:
    links = UnsubscribeLinks(KEY, "https://portaria.test/")

    def test_token_is_the_address_and_its_hmac(self) -> None:
        assert self.links.token("Compras@Acme.com.br ") == ACME_TOKEN
        assert self.links.url(ACME) == f"https://portaria.test/unsubscribe/{ACME_TOKEN}"
        signature = hmac.new(KEY, b"portaria/unsubscribe/v1\x00" + ACME.encode(), hashlib.sha256)
        expected = base64.urlsafe_b64encode(signature.digest()).decode().rstrip("=")
        assert ACME_TOKEN.split(".")[1] == expected
        assert base64.urlsafe_b64decode(ACME_TOKEN.split(".")[0] + "==") == ACME.encode()

    def test_the_address_comes_back(self) -> None:
        assert self.links.address(ACME_TOKEN) == ACME
        odd = "josé+renovação@empresa.com.br"
        assert self.links.address(self.links.token(odd)) == odd

    @pytest.mark.parametrize(
        "token",
        [
            "",
            "Y29tcHJhc0BhY21lLmNvbS5icg",  # address without signature
            ACME_TOKEN[:-1],  # cut short
            ACME_TOKEN + "A",
            ACME_TOKEN.replace("jGmh", "jGmi"),  # signature edited
            # Someone else's address with Acme's signature.
            base64.urlsafe_b64encode(b"ti@beta.com.br").decode().rstrip("=")
            + "."
            + ACME_TOKEN.split(".")[1],
            UnsubscribeLinks(b"outra-chave-qualquer-com-32-chars", "").token(ACME),
            "a.b.c",
            "!!!.???",
            "x" * 700,
        ],
    )
    def test_anything_not_signed_with_the_key_is_refused(self, token: str) -> None:
        with pytest.raises(InvalidUnsubscribeToken) as caught:
            self.links.address(token)
        assert str(caught.value) == (
            "link de descadastro inválido ou incompleto (invalid unsubscribe link): "
            "copie o link inteiro do e-mail (copy the whole link from the email)"
        )


class TestSecretKey:
    def test_created_once_with_32_random_bytes_and_mode_0600(self, settings: Settings) -> None:
        path = create_secret_key(settings)

        assert path == settings.config_dir / "var" / "secret.key"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        text = path.read_text()
        assert text.endswith("\n") and len(text) == 45
        assert len(base64.urlsafe_b64decode(text.strip())) == 32
        assert read_secret_key(settings) == text.strip().encode()

        assert create_secret_key(settings) is None
        assert path.read_text() == text

    def test_not_created_when_a_key_is_given_or_a_file_named(self, settings: Settings) -> None:
        inline = with_service(settings, secret_key=SecretStr("k" * 40))
        assert create_secret_key(inline) is None
        assert read_secret_key(inline) == b"k" * 40

        named = Settings(
            service={"secret_key_file": "segredos/chave"}, config_dir=settings.config_dir
        )
        assert create_secret_key(named) is None
        assert not (settings.config_dir / "var" / "secret.key").exists()
        assert not (settings.config_dir / "segredos").exists()

    def test_missing_key_says_to_run_init(self, settings: Settings) -> None:
        with pytest.raises(SecretKeyUnavailable) as caught:
            unsubscribe_links(settings)
        assert str(caught.value) == (
            f"chave secreta não encontrada (no secret key): {secret_key_path(settings)}; "
            "rode (run) `portaria init` para criá-la, ou defina PORTARIA_SERVICE__SECRET_KEY"
        )

    def test_a_short_key_is_refused(self, settings: Settings) -> None:
        short = with_service(settings, secret_key=SecretStr("curta"))
        with pytest.raises(SecretKeyUnavailable) as caught:
            read_secret_key(short)
        assert str(caught.value) == (
            "service.secret_key: chave secreta curta demais (secret key too short), são "
            "precisos 32+ caracteres; apague o arquivo e rode (run) `portaria init`"
        )

    def test_the_key_is_never_shown_by_config(self, settings: Settings) -> None:
        given = with_service(settings, secret_key=SecretStr("s" * 40))
        assert "s" * 40 not in repr(given)
        assert given.model_dump(mode="json")["service"]["secret_key"] == "**********"


runner = CliRunner()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("PORTARIA_"):
            monkeypatch.delenv(name)
    return tmp_path


def portaria(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env={"COLUMNS": "200"})
    return result.exit_code, result.output


class TestInit:
    def test_init_writes_the_key_once(self, workdir: Path) -> None:
        code, output = portaria("init")
        key = workdir / "var" / "secret.key"
        assert code == 0, output
        assert f"chave secreta (secret key): {key} (criada, written)\n" in output
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        first = key.read_text()

        code, output = portaria("init")
        assert code == 0
        assert "chave secreta" not in output
        assert key.read_text() == first

    def test_a_command_that_needs_the_key_says_to_run_init(self, workdir: Path) -> None:
        assert portaria("init")[0] == 0
        (workdir / "var" / "secret.key").unlink()
        # Saving a template needs no key: its trial render uses a sample link.
        assert portaria("templates", "create", "Oi", "--subject", "Oi", "--text", "Olá")[0] == 0
        service = open_service(load_settings(workdir / "portaria.toml"))
        with service.transaction() as session:
            session.add(Customer(code="ACME", name="Acme", contact_email=ACME, custom={}))
            create_rule(session, {"name": "Aviso", "actions": [EMAIL_ACTION]})
        service.engine.dispose()

        code, output = portaria("rules", "preview", "Aviso", "--emails")
        assert code == 1
        assert output == (
            "erro (error): chave secreta não encontrada (no secret key): "
            f"{workdir / 'var' / 'secret.key'}; rode (run) `portaria init` para criá-la, "
            "ou defina PORTARIA_SERVICE__SECRET_KEY\n"
        )

        code, output = portaria("rules", "run", "Aviso")
        assert code == 1
        assert "falhou (manual): 0 cliente(s), 0 ação(ões), 1 erro(s)" in output
        assert "regra: chave secreta não encontrada (no secret key)" in output
        assert "Traceback" not in output


@pytest.fixture
def keyed(service: Service) -> Service:
    create_secret_key(service.settings)
    return service


def client(service: Service) -> TestClient:
    return TestClient(create_app(service))


def unsubscribed(service: Service) -> list[tuple[str, str]]:
    with service.sessions() as session:
        return [(row.email, row.source) for row in session.scalars(select(Unsubscribe))]


class TestWebPage:
    def test_get_asks_and_changes_nothing(self, keyed: Service) -> None:
        token = unsubscribe_links(keyed.settings).token(ACME)

        page = client(keyed).get(f"/unsubscribe/{token}")

        assert page.status_code == 200
        assert "Não receber mais estes e-mails?" in page.text
        assert f"<strong>{ACME}</strong>" in page.text
        assert f'<form method="post" action="/unsubscribe/{token}">' in page.text
        assert page.headers["cache-control"] == "no-store"
        assert unsubscribed(keyed) == []

    def test_post_unsubscribes_once(self, keyed: Service) -> None:
        token = unsubscribe_links(keyed.settings).token(ACME)
        web = client(keyed)

        done = web.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"})
        assert done.status_code == 200
        assert "Pronto, você não receberá mais os e-mails automáticos" in done.text
        assert unsubscribed(keyed) == [(ACME, "link")]
        with keyed.sessions() as session:
            first_at = session.get_one(Unsubscribe, ACME).at

        again = web.post(f"/unsubscribe/{token}")
        assert again.status_code == 200
        assert "Pronto, você não receberá mais" in again.text
        with keyed.sessions() as session:
            assert session.get_one(Unsubscribe, ACME).at == first_at
        assert unsubscribed(keyed) == [(ACME, "link")]

        shown = web.get(f"/unsubscribe/{token}")
        assert shown.status_code == 200
        assert "Descadastrado" in shown.text and "<form" not in shown.text

    @pytest.mark.parametrize("method", ["get", "post"])
    def test_a_forged_link_is_refused_and_changes_nothing(
        self, keyed: Service, method: str
    ) -> None:
        forged = UnsubscribeLinks(b"a-chave-de-quem-quer-descadastrar", "").token(ACME)

        page = getattr(client(keyed), method)(f"/unsubscribe/{forged}")

        assert page.status_code == 400
        assert "Link inválido" in page.text
        assert "invalid unsubscribe link" in page.text
        assert "<form" not in page.text
        assert unsubscribed(keyed) == []

    def test_the_page_escapes_the_address(self, keyed: Service) -> None:
        token = unsubscribe_links(keyed.settings).token('"<b>x</b>&y"@exemplo.com.br')

        page = client(keyed).get(f"/unsubscribe/{token}")

        assert "&#34;&lt;b&gt;x&lt;/b&gt;&amp;y&#34;@exemplo.com.br" in page.text
        assert "<b>x</b>" not in page.text

    def test_without_a_key_the_page_says_so(self, service: Service) -> None:
        page = client(service).post(f"/unsubscribe/{ACME_TOKEN}")
        assert page.status_code == 503
        assert "Indisponível no momento" in page.text
        assert unsubscribed(service) == []


def mailed_rule(service: Service) -> int:
    """One card with a contact and no owner, and a rule emailing it; a run delivered."""
    with service.transaction() as session:
        session.add(Customer(code="ACME", name="Acme", contact_email=ACME, custom={}))
        session.add(EmailTemplate(name="Oi", subject="Oi {{ customer.name }}", body_text="Olá\n"))
        rule_id = create_rule(session, {"name": "Aviso", "actions": [EMAIL_ACTION]}, now=NOW).id
    first = run_rule(service.sessions, service.settings, rule_id, now=NOW)
    assert (first.status, first.actions_done) == ("ok", 1)
    send_due(service.sessions, service.settings, now=NOW)
    return rule_id


def delivered(service: Service) -> bytes:
    folder = mailbox.Maildir(service.settings.path(service.settings.outbound.maildir))
    [key] = folder.keys()
    return folder.get_bytes(key)


def test_the_link_of_a_rule_email_stops_the_next_ones(keyed: Service) -> None:
    """From the header of a delivered rule email to the next run leaving the address out."""
    rule_id = mailed_rule(keyed)
    message = email.message_from_bytes(delivered(keyed), policy=policy.default)
    header = message["List-Unsubscribe"]
    token = unsubscribe_links(keyed.settings).token(ACME)
    assert header == f"<https://portaria.test/unsubscribe/{token}>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["Reply-To"] is None  # the card has no owner

    path = header.strip("<>").removeprefix("https://portaria.test")
    assert client(keyed).post(path, data={"List-Unsubscribe": "One-Click"}).status_code == 200

    later = run_rule(keyed.sessions, keyed.settings, rule_id, now=NOW.replace(day=19))
    assert (later.status, later.matched, later.actions_done) == ("ok", 1, 0)
    with keyed.sessions() as session:
        assert session.scalar(select(RuleRun.actions_done).where(RuleRun.id == later.id)) == 0


def test_the_link_travels_as_written_on_the_wire(keyed: Service) -> None:
    mailed_rule(keyed)
    token = unsubscribe_links(keyed.settings).token(ACME)
    wanted = f"List-Unsubscribe: <https://portaria.test/unsubscribe/{token}>"
    assert wanted in delivered(keyed).decode("ascii").splitlines()
