"""`portaria customers|playbooks|tasks` as a person uses them, on a real SQLite database."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from config.settings import load_settings
from portaria.cli import app
from portaria.wiring import open_service
from provisioning.directory import create_user

runner = CliRunner()

CONFIG = """\
[database]
url = "sqlite:///var/portaria.db"

[mailbox]
maildir = "var/mail/inbox"

[outbound]
maildir = "var/mail/outbox"
from_address = "portaria@portaria.test"

[engine]
holiday_subdivision = "SP"
closed_dates = [2026-07-10]
"""

CUSTOMERS_CSV = (
    "nome;codigo;segmento;responsavel;renovacao;mrr\n"
    "Padaria São João;PSJ;Varejo;ana@cs.test;15/03/2027;1.500,00\n"
    "Clínica Boa Saúde;CBS;Saúde;bruno@cs.test;;\n"
)

PLAYBOOK_TOML = """\
[[playbooks]]
nome = "Onboarding"

[[playbooks.tarefas]]
nome = "Ligar"
tipo = "ligação"
dias = 1

[[playbooks.tarefas]]
nome = "Enviar guia"
tipo = "e-mail"
dias = 3
"""

ERR = "erro (error): "


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with a configuration, `portaria init` run, and two Agentes."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("PORTARIA_"):
            monkeypatch.delenv(name)
    (tmp_path / "portaria.toml").write_text(CONFIG, encoding="utf-8")
    code, output = run("init")
    assert code == 0, output
    service = open_service(load_settings(tmp_path / "portaria.toml"))
    with service.transaction() as session:
        for name, email in (("Ana", "ana@cs.test"), ("Bruno", "bruno@cs.test")):
            create_user(session, name=name, email=email, area="CS", role="agente", created_via="t")
    service.engine.dispose()
    return tmp_path


def run(*args: str) -> tuple[int, str]:
    # Wide enough that tables are not cut, as in a maximised terminal.
    result = runner.invoke(app, list(args), env={"COLUMNS": "200"})
    return result.exit_code, result.output


def imported(workdir: Path) -> None:
    (workdir / "clientes.csv").write_text(CUSTOMERS_CSV, encoding="utf-8")
    code, output = run("customers", "import", "clientes.csv")
    assert code == 0, output


class TestCustomers:
    def test_import_list_show_and_export(self, workdir: Path) -> None:
        (workdir / "clientes.csv").write_text(CUSTOMERS_CSV, encoding="utf-8")

        code, output = run("customers", "import", "clientes.csv")
        assert (code, output) == (
            0,
            "2 linha(s) lida(s) (rows read): 2 cliente(s) criado(s) (created), "
            "0 atualizado(s) (updated) [utf-8, separador ';']\n",
        )

        code, output = run("customers", "list", "--owner", "ana@cs.test")
        assert code == 0
        assert "PSJ" in output and "15/03/2027" in output
        assert "CBS" not in output

        code, output = run("customers", "show", "PSJ")
        assert code == 0
        assert output.splitlines()[:3] == [
            "             Nome: Padaria São João",
            "           Código: PSJ",
            "         Segmento: Varejo",
        ]
        assert "      Responsável: ana@cs.test\n" in output
        assert "              MRR: 1500,00\n" in output
        assert "        Renovação: 15/03/2027\n" in output
        assert "Tarefas abertas (open tasks):\n  nenhuma (none)" in output

        code, output = run("customers", "export", "saida.csv")
        assert (code, output) == (
            0,
            "2 cliente(s) exportado(s) (customers exported) para saida.csv\n",
        )
        assert (workdir / "saida.csv").read_text(encoding="utf-8-sig").splitlines()[1] == (
            "Clínica Boa Saúde;CBS;Saúde;;bruno@cs.test;;;;;;;"
        )

    def test_bad_rows_exit_1_and_import_nothing(self, workdir: Path) -> None:
        (workdir / "ruim.csv").write_text(
            "nome;codigo;responsavel;renovacao\n"
            "Bom;B1;ana@cs.test;01/01/2027\n"
            "Ruim;B2;zeca@cs.test;32/01/2027\n",
            encoding="latin-1",
        )

        code, output = run("customers", "import", "ruim.csv")

        assert code == 1
        assert output.splitlines() == [
            "linha 3, coluna responsavel: responsável não encontrado (owner not found): "
            "zeca@cs.test",
            "linha 3, coluna renovacao: data inválida (bad date) '32/01/2027': use dd/mm/aaaa "
            "ou aaaa-mm-dd",
            ERR + "ruim.csv: 2 problema(s) em 1 linha(s); nada foi importado (nothing imported)",
        ]
        assert run("customers", "list") == (0, "nenhum cliente (no customers)\n")

    def test_unknown_customer(self, workdir: Path) -> None:
        code, output = run("customers", "show", "NOPE")

        assert (code, output) == (
            1,
            ERR + "Cliente não encontrado (customer not found): NOPE\n",
        )

    def test_list_by_an_unknown_owner_is_an_error(self, workdir: Path) -> None:
        assert run("customers", "list", "--owner", "zeca@cs.test") == (
            1,
            ERR + "Usuário não encontrado (user not found): zeca@cs.test\n",
        )
        assert run("customers", "list", "--owner", "Ana@CS.test") == (
            0,
            "nenhum cliente (no customers)\n",
        )

    def test_custom_fields(self, workdir: Path) -> None:
        code, output = run(
            "customers", "fields", "add", "plano", "--label", "Plano contratado",
            "--kind", "escolha", "--choice", "Básico", "--choice", "Pro",
        )  # fmt: skip
        assert (code, output) == (
            0,
            "Campo criado (field added): plano (choice): Plano contratado\n",
        )

        code, output = run("customers", "fields", "add", "plano", "--label", "Plano")
        assert (code, output) == (1, ERR + "campo já existe (field exists): plano\n")

        code, output = run("customers", "fields", "list")
        assert code == 0 and "Plano contratado" in output and "Básico, Pro" in output


class TestPlaybooksAndTasks:
    def test_from_creation_to_closed_load(self, workdir: Path) -> None:
        imported(workdir)

        assert run("playbooks", "create", "Boas-vindas") == (
            0,
            "Playbook criado (created): Boas-vindas\n",
        )
        code, output = run(
            "playbooks", "edit", "Boas-vindas", "--add-task", "Ligar", "--kind", "ligação",
            "--days", "1",
        )  # fmt: skip
        assert code == 0, output
        run("playbooks", "edit", "Boas-vindas", "--add-task", "Anotar", "--kind", "outro")
        code, output = run(
            "playbooks", "edit", "Boas-vindas", "--add-task", "Enviar guia", "--kind", "email",
            "--days", "0", "--move-task", "3", "--to", "1",
        )  # fmt: skip
        assert (code, output) == (
            0,
            "Boas-vindas (ativo, #1)\n"
            "  1. Enviar guia [E-mail, 0 dia(s) úteis]\n"
            "  2. Ligar [Ligação, 1 dia(s) úteis]\n"
            "  3. Anotar [Outro, sem prazo]\n",
        )

        # 8 July 2026: 9 July is a holiday in SP (configured subdivision), 10 July is a
        # configured closed date, then the weekend.
        code, output = run(
            "playbooks", "load", "Boas-vindas", "--customer", "PSJ", "--today", "08/07/2026",
            "--by", "ana@cs.test",
        )  # fmt: skip
        assert (code, output) == (
            0,
            "Playbook carregado (loaded): Boas-vindas em PSJ, 3 tarefa(s):\n"
            "  #1 08/07/2026 E-mail: Enviar guia (ana@cs.test)\n"
            "  #2 13/07/2026 Ligação: Ligar (ana@cs.test)\n"
            "  #3 sem prazo Outro: Anotar (ana@cs.test)\n",
        )

        code, output = run("playbooks", "load", "Boas-vindas", "--customer", "PSJ")
        assert (code, output) == (
            1,
            ERR + "playbook já carregado e em aberto neste cliente (already loaded and open): "
            "Boas-vindas em PSJ\n",
        )

        code, output = run("tasks", "list", "--overdue", "--today", "2026-07-14")
        assert code == 0
        assert "Enviar guia" in output and "Ligar" in output and "Anotar" not in output

        code, output = run("tasks", "list", "--owner", "bruno@cs.test")
        assert (code, output) == (0, "nenhuma tarefa (no tasks)\n")

        assert run("tasks", "done", "1", "--by", "ana@cs.test") == (
            0,
            "Tarefa #1 feita (done): Enviar guia\n",
        )
        assert run("tasks", "done", "1") == (
            1,
            ERR + "tarefa 1 não está aberta (task is not open): está done\n",
        )
        run("tasks", "done", "2", "--by", "ana@cs.test")
        assert run("tasks", "cancel", "3", "--by", "ana@cs.test") == (
            0,
            "Tarefa #3 cancelada (cancelled): Anotar\n",
        )

        code, output = run("customers", "show", "PSJ")
        assert code == 0
        assert output.endswith(
            "Tarefas abertas (open tasks):\n"
            "  nenhuma (none)\n"
            "\n"
            "Playbooks (history):\n"
            "  08/07/2026 Boas-vindas: concluído (closed), 2/3 tarefa(s) feita(s), "
            "1 cancelada(s), por ana@cs.test\n"
        )

        assert run("playbooks", "remove", "Boas-vindas") == (
            0,
            "Playbook arquivado (archived; it was loaded on customers): Boas-vindas\n",
        )
        assert run("playbooks", "list") == (0, "nenhum playbook (no playbooks)\n")

    def test_tasks_of_an_unknown_customer_or_owner_are_an_error(self, workdir: Path) -> None:
        (workdir / "clientes.csv").write_text(CUSTOMERS_CSV, encoding="utf-8")
        assert run("customers", "import", "clientes.csv")[0] == 0

        assert run("tasks", "list", "--customer", "NOPE") == (
            1,
            ERR + "Cliente não encontrado (customer not found): NOPE\n",
        )
        assert run("tasks", "list", "--owner", "zeca@cs.test") == (
            1,
            ERR + "Usuário não encontrado (user not found): zeca@cs.test\n",
        )
        # Known ones without tasks are still an empty list, exit 0.
        assert run("tasks", "list", "--customer", "PSJ") == (0, "nenhuma tarefa (no tasks)\n")
        assert run("tasks", "list", "--owner", "ana@cs.test") == (0, "nenhuma tarefa (no tasks)\n")

    def test_import_export_and_inactive(self, workdir: Path) -> None:
        imported(workdir)
        (workdir / "playbooks.toml").write_text(PLAYBOOK_TOML, encoding="utf-8")

        assert run("playbooks", "import", "playbooks.toml") == (
            0,
            "criado (created): Onboarding\n",
        )
        assert run("playbooks", "export", "Onboarding", "--to", "copia.yaml") == (
            0,
            "1 playbook(s) exportado(s) (exported) para copia.yaml\n",
        )
        assert (workdir / "copia.yaml").read_text(encoding="utf-8") == (
            "playbooks:\n"
            "- name: Onboarding\n"
            "  active: true\n"
            "  tasks:\n"
            "  - name: Ligar\n"
            "    kind: call\n"
            "    days: 1\n"
            "  - name: Enviar guia\n"
            "    kind: email\n"
            "    days: 3\n"
        )

        code, output = run("playbooks", "edit", "Onboarding", "--inactivate")
        assert code == 0 and output.startswith("Onboarding (inativo, #1)\n")
        code, output = run("playbooks", "load", "Onboarding", "--customer", "CBS")
        assert (code, output) == (
            1,
            ERR + "playbook inativo não pode ser carregado (playbook is inactive): Onboarding\n",
        )

        assert run("playbooks", "remove", "Onboarding") == (
            0,
            "Playbook removido (deleted): Onboarding\n",
        )

    def test_bad_file_and_bad_usage(self, workdir: Path) -> None:
        (workdir / "ruim.toml").write_text(
            '[[playbooks]]\nname = "X"\n[[playbooks.tasks]]\nname = "Visitar"\nkind = "visita"\n',
            encoding="utf-8",
        )

        assert run("playbooks", "import", "ruim.toml") == (
            1,
            ERR + "ruim.toml: playbook 'X', tarefa 1: tipo de tarefa inválido (bad task kind) "
            "'visita': use ligação, email ou outro\n",
        )
        run("playbooks", "create", "X")
        assert run("playbooks", "edit", "X") == (
            1,
            ERR + "nada a alterar (nothing to change): use --rename, --activate, --inactivate, "
            "--add-task, --remove-task ou --move-task\n",
        )
        assert run("playbooks", "edit", "X", "--kind", "call") == (
            1,
            ERR + "--kind e --days só valem com --add-task (need --add-task)\n",
        )
        assert run("playbooks", "load", "X", "--customer", "PSJ", "--today", "amanhã") == (
            1,
            ERR + "--today: data inválida (bad date) 'amanhã': use dd/mm/aaaa ou aaaa-mm-dd\n",
        )
        assert run("tasks", "done", "99") == (
            1,
            ERR + "Tarefa não encontrada (task not found): 99\n",
        )
