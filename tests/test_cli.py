"""The `portaria` command as a person uses it: one line per error, no tracebacks."""

from __future__ import annotations

import json
import mailbox
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from config.settings import load_settings
from portaria.cli import app
from portaria.wiring import open_service
from tests.mail import person_block, request_message

runner = CliRunner()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("PORTARIA_"):
            monkeypatch.delenv(name)
    return tmp_path


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_init_writes_config_and_database(workdir: Path) -> None:
    code, output = run("init")

    assert code == 0, output
    assert (workdir / "portaria.toml").read_text().startswith("# Portaria configuration.")
    assert (workdir / "var" / "portaria.db").exists()
    assert (workdir / "var" / "mail" / "inbox" / "new").is_dir()
    code, output = run("init")
    assert code == 0 and "(mantida, kept)" in output


def test_bad_setting_names_the_key_and_the_fix(workdir: Path) -> None:
    (workdir / "portaria.toml").write_text('[mailbox]\nkind = "imap"\nsecurity = "tls"\n')

    code, output = run("requests", "list")

    assert code == 2
    assert "mailbox.security" in output
    assert "PORTARIA_MAILBOX__SECURITY" in output
    assert "Traceback" not in output


def test_unknown_setting_is_refused(workdir: Path) -> None:
    (workdir / "portaria.toml").write_text('[mailbox]\nhots = "imap.example.com"\n')

    code, output = run("init")

    assert code == 2
    assert "mailbox.hots" in output


def test_commands_before_init_say_what_to_do(workdir: Path) -> None:
    code, output = run("requests", "list")

    assert code == 1
    assert "portaria init" in output


def test_full_flow_through_the_cli(workdir: Path) -> None:
    run("init")
    inbox = mailbox.Maildir(workdir / "var" / "mail" / "inbox")
    inbox.add(request_message(person_block("Ana Lima", "ana@cliente.test", "RH", "Comum")))

    code, output = run("poll", "--once")
    assert code == 0, output
    assert "1 request" in output

    code, output = run("requests", "list", "--status", "pending")
    assert code == 0 and "ana@cliente.test" in output

    code, output = run("requests", "approve")
    assert code == 1 and "--all-pending" in output

    code, output = run("requests", "approve", "--all-pending", "--by", "ana@cliente.test")
    assert code == 1 and "só um Admin ativo pode decidir" in output
    run("users", "add", "Suporte", "suporte@portaria.test", "--role", "admin")
    code, output = run("requests", "approve", "--all-pending", "--by", "suporte@portaria.test")
    assert code == 0, output
    assert "aprovado (approved) #1: ana@cliente.test como comum" in output

    code, output = run("requests", "approve", "1")
    assert code == 1
    assert "#1 está aprovado (approved)" in output
    assert "Traceback" not in output

    code, output = run("requests", "show", "1")
    assert "request.approved por (by) suporte@portaria.test" in output

    code, output = run("users", "list")
    assert "ana@cliente.test" in output and "comum" in output

    code, output = run("outbox", "send")
    assert code == 0 and "3 enviado(s) (sent)" in output  # approved, welcome x2

    code, output = run("requests", "show", "99")
    assert code == 1 and "pedido #99 não existe" in output


def test_parse_json_one_file(workdir: Path) -> None:
    message = workdir / "pedido.eml"
    message.write_bytes(
        request_message(person_block("Ana Lima", "ana@cliente.test", "RH", "Agente"))
    )

    code, output = run("parse", "--json", str(message))

    assert code == 0
    report = json.loads(output)
    assert report["outcome"] == "request"
    assert report["requests"] == [
        {"name": "Ana Lima", "email": "ana@cliente.test", "area": "RH", "access_type": "agente"}
    ]
    assert report["message"]["from"] == "helena.costa@cliente.test"


def test_parse_several_files_goes_on_past_a_bad_one(workdir: Path) -> None:
    good = workdir / "good.eml"
    good.write_bytes(request_message(person_block("Ana Lima", "ana@x.test", "RH", "Comum")))
    missing = workdir / "missing.eml"

    code, output = run("parse", "--json", str(missing), str(good))

    assert code == 1  # every file is reported, and the exit says one could not be read
    first, second = (json.loads(line) for line in output.splitlines())
    assert first["file"] == str(missing) and first["outcome"] == "unreadable"
    assert second["file"] == str(good) and second["outcome"] == "request"


def test_admin_adds_and_deactivates_a_user(workdir: Path) -> None:
    run("init")

    run("users", "add", "Chefe", "chefe@portaria.test", "--role", "admin")
    code, output = run(
        "users",
        "add",
        "Júlia Prado",
        "Julia@Cliente.test",
        "--role",
        "agente",
        "--area",
        "Unidade Recife",
        "--by",
        "chefe@portaria.test",
    )

    assert code == 0, output
    assert "julia@cliente.test como agente" in output
    code, output = run("users", "add", "Outra", "julia@cliente.test", "--role", "comum")
    assert code == 1 and "já tem conta" in output
    code, output = run("users", "add", "Sem Papel", "x@cliente.test", "--role", "chefe")
    assert code == 1 and "perfil desconhecido" in output
    code, output = run("users", "add", "Quebra", "a@b.test\r\nBcc: c@d.test", "--role", "comum")
    assert code == 1 and "line break" in output
    code, output = run("outbox", "list")
    assert "welcome" in output and "julia@cliente.test" in output

    code, output = run("users", "deactivate", "julia@cliente.test")
    assert code == 0
    code, output = run("users", "list")
    assert "Júlia Prado" in output and "no " in output


def test_each_command_works_in_a_fresh_process(workdir: Path) -> None:
    """Each command runs in its own interpreter; none may rely on another's imports."""
    command = shutil.which("portaria", path=str(Path(sys.executable).parent))
    assert command

    def portaria(*args: str) -> str:
        done = subprocess.run([command, *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    portaria("init")
    inbox = mailbox.Maildir(workdir / "var" / "mail" / "inbox")
    inbox.add(request_message(person_block("Ana Lima", "ana@cliente.test", "RH", "Comum")))
    inbox.add(request_message(person_block("Rui Paiva", "rui@cliente.test", "RH", "Comum")))
    portaria("poll", "--once")

    assert "ana@cliente.test" in portaria("requests", "approve", "1")
    assert "rui@cliente.test" in portaria("requests", "reject", "2", "--reason", "Duplicado")
    assert "ana@cliente.test" in portaria("users", "list")


def test_database_problems_name_the_setting(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PORTARIA_DATABASE__URL", "mysql://portaria@db.invalid/portaria")

    code, output = run("init")

    assert code == 1
    assert "database.url" in output and "PORTARIA_DATABASE__URL" in output
    assert "Traceback" not in output
    assert not (workdir / "var").exists()


def test_bounced_addresses_can_be_listed_and_cleared(workdir: Path) -> None:
    from portaria.outbox_models import BouncedAddress

    run("init")
    service = open_service(load_settings(None))
    with service.transaction() as session:
        session.add(BouncedAddress(email="ana@cliente.test", last_reason="550 no such user"))

    code, output = run("outbox", "bounced")
    assert code == 0 and "ana@cliente.test" in output and "550 no such user" in output

    code, output = run("outbox", "unbounce", "Ana@Cliente.test")
    assert code == 0 and "1 endereço(s) liberado(s)" in output
    assert "nenhum endereço devolvido" in run("outbox", "bounced")[1]


def test_parse_decides_as_the_poller_does(workdir: Path) -> None:
    run("init")
    crowd = "\n\n".join(
        person_block(f"Pessoa {n}", f"p{n}@cliente.test", "RH", "Comum") for n in range(60)
    )
    crowded = workdir / "crowded.eml"
    crowded.write_bytes(request_message(crowd))
    ours = workdir / "ours.eml"
    ours.write_bytes(
        request_message(
            person_block("Ana Lima", "ana@x.test", "RH", "Comum"),
            sender="Portaria <portaria@localhost>",
        )
    )

    code, output = run("parse", "--json", str(crowded), str(ours))

    assert code == 0
    first, second = (json.loads(line) for line in output.splitlines())
    assert first["outcome"] == "held" and "50" in first["reason"]
    assert second["outcome"] == "ignored"
    assert not (workdir / "var" / "mail" / "outbox" / "new").exists() or not any(
        (workdir / "var" / "mail" / "outbox" / "new").iterdir()
    )


def test_approving_all_pending_skips_people_who_already_have_an_account(workdir: Path) -> None:
    run("init")
    inbox = mailbox.Maildir(workdir / "var" / "mail" / "inbox")
    block = person_block("Ana Lima", "ana@cliente.test", "RH", "Comum")
    inbox.add(request_message(block))
    inbox.add(request_message(block, sender="Rui Paiva <rui@cliente.test>"))
    inbox.add(request_message(person_block("Caio Reis", "caio@cliente.test", "TI", "Comum")))
    run("poll", "--once")
    run("requests", "approve", "1")

    code, output = run("requests", "approve", "--all-pending")

    assert code == 0, output
    assert "não aprovados (skipped) #2: já têm conta" in output
    assert "aprovado (approved) #3: caio@cliente.test" in output
    code, output = run("requests", "approve", "2")
    assert code == 1 and "nada foi aprovado" in output
