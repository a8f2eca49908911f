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
from sqlalchemy import select
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


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\xff\xfe garbage", "o arquivo não está em UTF-8 (the file is not UTF-8): byte 0"),
        (b"[mailbox\n", "TOML inválido (not valid TOML): Expected ']'"),
        (None, "não dá para ler a configuração (cannot read the configuration): é uma pasta"),
    ],
)
def test_an_unreadable_config_file_is_named_without_a_traceback(
    workdir: Path, content: bytes | None, expected: str
) -> None:
    config = workdir / "portaria.toml"
    if content is None:
        config.mkdir()
    else:
        config.write_bytes(content)

    code, output = run("status", "--config", str(config))

    assert code == 2
    assert expected in output
    assert "Traceback" not in output


def test_a_cross_key_error_names_the_key_and_its_variable(workdir: Path) -> None:
    (workdir / "portaria.toml").write_text('[intake]\nrequire_authentication = ["dmarc"]\n')

    code, output = run("status")

    assert code == 2
    assert "intake.authserv_id: authserv_id is required" in output
    assert output.rstrip().endswith("PORTARIA_INTAKE__AUTHSERV_ID")


@pytest.mark.parametrize("by", ["auto:trusted-requester", "cli:someone", "suporte", "a b@c.test"])
def test_by_must_be_an_address_not_a_system_name(workdir: Path, by: str) -> None:
    run("init")
    inbox = mailbox.Maildir(workdir / "var" / "mail" / "inbox")
    inbox.add(request_message(person_block("Ana Lima", "ana@cliente.test", "RH", "Admin")))
    run("poll", "--once", "--no-send")

    code, output = run("requests", "approve", "1", "--by", by)

    assert code == 1
    assert f"--by {by!r}: informe o e-mail de quem age" in output
    code, output = run("requests", "show", "1")
    assert "situação (status): pending" in output


def test_users_add_keeps_names_on_one_line_and_within_limits(workdir: Path) -> None:
    run("init")

    code, output = run(
        "users",
        "add",
        "Evil\r\nBcc: x@evil.test",
        "evil@cliente.test",
        "--area",
        "a\r\nb",
        "--role",
        "comum",
    )
    assert code == 0, output
    code, output = run("users", "list")
    assert "Evil Bcc: x@evil.test" in output and "a b" in output

    code, output = run("users", "add", "N" * 201, "longo@cliente.test", "--role", "comum")
    assert code == 1
    assert "nome (name) longo demais (too long): 201 caracteres, máximo (at most) 200" in output


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


def test_show_says_what_was_wrong_with_an_incomplete_request(workdir: Path) -> None:
    run("init")
    inbox = mailbox.Maildir(workdir / "var" / "mail" / "inbox")
    inbox.add(request_message(person_block("Ana Lima", "email ruim@cliente.test", "RH", "Comum")))
    run("poll", "--once", "--no-send")

    code, output = run("requests", "show", "1")

    assert code == 0, output
    lines = output.splitlines()
    assert "        situação (status): incomplete" in lines
    assert "         faltam (missing): email" in lines
    assert (
        "     problemas (problems): E-mail inválido: email ruim@cliente.test "
        "(escreva só o endereço, sem outras palavras)"
    ) in lines
    assert "         entrada (intake): incomplete: faltam (missing): e-mail" in lines


def test_list_never_cuts_an_address(workdir: Path) -> None:
    run("init")
    person = "maria.aparecida.conceicao.albuquerque@unidade-sul.cliente-exemplo.com.br"
    requester = "coordenacao.regional.atendimento@diretoria-sul.cliente-exemplo.com.br"
    inbox = mailbox.Maildir(workdir / "var" / "mail" / "inbox")
    inbox.add(
        request_message(
            person_block("Maria Aparecida Conceição", person, "Diretoria de Operações", "Comum")
            + "\nObservação: urgente, começa segunda",
            sender=f"Coordenação <{requester}>",
        )
    )
    run("poll", "--once", "--no-send")

    code, output = run("requests", "list")

    assert code == 0, output
    assert "situação" in output and "(status)" in output
    row = next(line for line in output.splitlines() if person in line)
    assert requester in row


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
    block = person_block("Ana Lima", "ana@cliente.test", "RH", "Comum")
    deliver_each(
        workdir,
        request_message(block),
        request_message(block, sender="Rui Paiva <rui@cliente.test>"),
        request_message(person_block("Caio Reis", "caio@cliente.test", "TI", "Comum")),
    )
    run("requests", "approve", "1")

    code, output = run("requests", "approve", "--all-pending")

    assert code == 0, output
    assert output.splitlines() == [
        "aprovado (approved) #3: caio@cliente.test como comum",
        "não aprovado (left out) #2 ana@cliente.test: já tem conta (already has an account) — "
        + reject_advice(2),
        "e-mails na fila; envie com (send with) `portaria outbox send`",
    ]
    code, output = run("requests", "approve", "2")
    assert code == 1 and "nada foi aprovado" in output


def reject_advice(request_id: int) -> str:
    return (
        "recuse com motivo (reject with a reason): "
        f'`portaria requests reject {request_id} --reason "..."`'
    )


def look_advice(request_id: int) -> str:
    return (
        f"confira (check) `portaria requests show {request_id}` e aprove pelo número "
        f"(then approve by id) `portaria requests approve {request_id}`, ou recuse com motivo "
        f'(or reject with a reason): `portaria requests reject {request_id} --reason "..."`'
    )


def deliver_each(workdir: Path, *messages: bytes) -> None:
    """Deliver and poll one message at a time, so request ids follow the arguments.

    Maildir names made in the same second do not always sort in the order
    they were made, so one poll over several files may number them otherwise.
    """
    inbox = mailbox.Maildir(workdir / "var" / "mail" / "inbox")
    for message in messages:
        inbox.add(message)
        code, output = run("poll", "--once")
        assert code == 0, output


def statuses(workdir: Path) -> dict[int, str]:
    from provisioning.queue import list_requests

    with open_service(load_settings(None)).sessions() as session:
        return {r.id: r.status for r in list_requests(session)}


ADMIN_WHO = person_block("Quer Admin", "quer.admin@cliente.test", "TI", "Admin")
ADMIN_AGAIN = "Admin, sempre conferido (Admin access, always checked)"


class TestApprovingAllPending:
    def test_same_new_admin_asked_twice_leaves_both_out_and_says_why(self, workdir: Path) -> None:
        run("init")
        deliver_each(
            workdir,
            request_message(ADMIN_WHO),
            request_message(ADMIN_WHO, sender="Rui Paiva <rui@cliente.test>"),
        )

        code, output = run("requests", "approve", "--all-pending")

        assert code == 0, output
        assert output.splitlines() == [
            "não aprovado (left out) #1 quer.admin@cliente.test: acesso "
            + ADMIN_AGAIN
            + "; mesma pessoa no(s) pedido(s) #2 (same person in request(s) #2) — "
            + look_advice(1),
            "não aprovado (left out) #2 quer.admin@cliente.test: pedido repetido (repeated "
            "request); acesso "
            + ADMIN_AGAIN
            + "; mesma pessoa no(s) pedido(s) #1 (same person in request(s) #1) — "
            + look_advice(2),
            "nenhum pedido aprovado (nothing approved)",
        ]
        assert statuses(workdir) == {1: "pending", 2: "pending"}

        code, output = run("requests", "approve", "1")
        assert code == 0, output
        assert (
            output.splitlines()[0] == "aprovado (approved) #1: quer.admin@cliente.test como admin"
        )
        code, output = run("requests", "approve", "2")
        assert code == 1 and "já tem conta (already has an account): #2" in output
        assert statuses(workdir) == {1: "approved", 2: "pending"}

    def test_only_requests_that_need_no_look_are_approved(
        self, workdir: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        run("init")
        run("users", "add", "Bia Souza", "bia@cliente.test", "--role", "comum")
        ana = person_block("Ana Lima", "ana@cliente.test", "RH", "Comum")
        deliver_each(
            workdir,
            request_message(ana),
            request_message(ana, sender="Rui Paiva <rui@cliente.test>"),
            request_message(person_block("Bia Souza", "bia@cliente.test", "RH", "Comum")),
            request_message(ADMIN_WHO),
        )
        monkeypatch.setenv("PORTARIA_INTAKE__ALLOWED_REQUESTERS", '["empresa.test"]')
        deliver_each(
            workdir,
            request_message(person_block("Dora Reis", "dora@cliente.test", "TI", "Comum")),
        )
        monkeypatch.delenv("PORTARIA_INTAKE__ALLOWED_REQUESTERS")
        deliver_each(
            workdir,
            request_message(person_block("Caio Reis", "caio@cliente.test", "TI", "Comum")),
        )

        code, output = run("requests", "approve", "--all-pending")

        assert code == 0, output
        assert output.splitlines() == [
            "aprovado (approved) #1: ana@cliente.test como comum",
            "aprovado (approved) #6: caio@cliente.test como comum",
            "não aprovado (left out) #2 ana@cliente.test: mesma pessoa do pedido #1, aprovado "
            "agora (same person as request #1, approved now) — " + reject_advice(2),
            "não aprovado (left out) #3 bia@cliente.test: já tem conta (already has an "
            "account) — " + reject_advice(3),
            "não aprovado (left out) #4 quer.admin@cliente.test: acesso "
            + ADMIN_AGAIN
            + " — "
            + look_advice(4),
            "não aprovado (left out) #5 dora@cliente.test: remetente fora da política (sender "
            "outside policy) — " + look_advice(5),
            "e-mails na fila; envie com (send with) `portaria outbox send`",
        ]
        assert statuses(workdir) == {
            1: "approved",
            2: "pending",
            3: "pending",
            4: "pending",
            5: "pending",
            6: "approved",
        }

        code, output = run("requests", "approve", "--all-pending")
        assert code == 0, output
        assert output.splitlines()[-1] == "nenhum pedido aprovado (nothing approved)"
        code, output = run("requests", "approve", "4", "5")
        assert code == 0, output
        assert output.splitlines()[:2] == [
            "aprovado (approved) #4: quer.admin@cliente.test como admin",
            "aprovado (approved) #5: dora@cliente.test como comum",
        ]

    def test_nothing_pending(self, workdir: Path) -> None:
        run("init")

        assert run("requests", "approve", "--all-pending") == (
            0,
            "nenhum pedido pendente (no pending requests)\n",
        )


def test_ids_naming_the_same_person_approve_the_first_and_leave_out_the_rest(
    workdir: Path,
) -> None:
    run("init")
    ana = person_block("Ana Lima", "ana@cliente.test", "RH", "Comum")
    deliver_each(
        workdir,
        request_message(ana),
        request_message(ana, sender="Rui Paiva <rui@cliente.test>"),
        request_message(person_block("Caio Reis", "caio@cliente.test", "TI", "Comum")),
    )

    code, output = run("requests", "approve", "2", "3", "1")

    assert code == 0, output
    assert output.splitlines() == [
        "aprovado (approved) #2: ana@cliente.test como comum",
        "aprovado (approved) #3: caio@cliente.test como comum",
        "não aprovado (left out) #1 ana@cliente.test: mesma pessoa do pedido #2, aprovado agora "
        "(same person as request #2, approved now) — " + reject_advice(1),
        "e-mails na fila; envie com (send with) `portaria outbox send`",
    ]
    assert statuses(workdir) == {1: "pending", 2: "approved", 3: "approved"}


class TestOutboxArgumentsThatNameNothing:
    def failed_and_sent(self) -> tuple[int, int]:
        """A welcome that failed and one that was sent; their outbox ids."""
        from portaria.outbox_models import OutboxMessage

        run("users", "add", "Ana Lima", "ana@cliente.test", "--role", "comum")
        run("users", "add", "Rui Paiva", "rui@cliente.test", "--role", "comum")
        service = open_service(load_settings(None))
        with service.transaction() as session:
            failed, sent = session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))
            failed.status, sent.status = "failed", "sent"
            return failed.id, sent.id

    def outbox_statuses(self) -> list[str]:
        from portaria.outbox_models import OutboxMessage

        with open_service(load_settings(None)).sessions() as session:
            return list(session.scalars(select(OutboxMessage.status).order_by(OutboxMessage.id)))

    def test_retry_of_a_message_that_does_not_exist(self, workdir: Path) -> None:
        run("init")

        code, output = run("outbox", "retry", "9999")

        assert (code, output) == (
            1,
            "erro (error): só e-mails com falha voltam à fila (only failed emails can be "
            "retried): #9999 não existe (no such email); veja (see) `portaria outbox list`; "
            "nada foi alterado (nothing was changed)\n",
        )

    def test_retry_of_messages_that_did_not_fail_changes_nothing(self, workdir: Path) -> None:
        run("init")
        failed, sent = self.failed_and_sent()

        code, output = run("outbox", "retry", str(failed), str(sent), "9999")

        assert (code, output) == (
            1,
            "erro (error): só e-mails com falha voltam à fila (only failed emails can be "
            f"retried): #{sent} já foi enviado (sent), #9999 não existe (no such email); veja "
            "(see) `portaria outbox list`; nada foi alterado (nothing was changed)\n",
        )
        assert self.outbox_statuses() == ["failed", "sent"]

        assert run("outbox", "retry", str(failed)) == (
            0,
            "1 e-mail(s) de volta à fila; envie com (send with) `portaria outbox send`\n",
        )
        assert self.outbox_statuses() == ["pending", "sent"]
        assert run("outbox", "retry") == (0, "nenhum e-mail com falha (no failed email)\n")

    def test_unbounce_of_what_is_not_a_bounced_address(self, workdir: Path) -> None:
        from portaria.outbox_models import BouncedAddress

        run("init")
        service = open_service(load_settings(None))
        with service.transaction() as session:
            session.add(BouncedAddress(email="ana@cliente.test", last_reason="550 no such user"))

        code, output = run("outbox", "unbounce", "not-an-email")
        assert (code, output) == (
            1,
            "erro (error): 'not-an-email' não é um endereço de e-mail (not an email address); "
            "veja (see) `portaria outbox bounced`; nada foi alterado (nothing was changed)\n",
        )

        code, output = run("outbox", "unbounce", "ana@cliente.test", "Rui@Cliente.test")
        assert (code, output) == (
            1,
            "erro (error): rui@cliente.test não está entre os devolvidos (is not a bounced "
            "address); veja (see) `portaria outbox bounced`; nada foi alterado (nothing was "
            "changed)\n",
        )
        assert "ana@cliente.test" in run("outbox", "bounced")[1]

        assert run("outbox", "unbounce", " ANA@cliente.test ") == (
            0,
            "1 endereço(s) liberado(s) (cleared): ana@cliente.test; reenvie com (retry with) "
            "`portaria outbox retry`\n",
        )
