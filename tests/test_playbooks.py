"""Playbooks: editing, archiving, files, loading onto cards and closing loads by tasks."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.calendar import BusinessCalendar
from engine.customers import create_customer
from engine.errors import (
    InvalidPlaybook,
    PlaybookAlreadyLoaded,
    PlaybookExists,
    PlaybookNotFound,
    PlaybookNotLoadable,
    TaskNotOpen,
)
from engine.models import Playbook, PlaybookLoad, Task
from engine.playbooks import (
    PlaybookSpec,
    StepSpec,
    add_step,
    close_finished_loads,
    create_playbook,
    export_playbooks,
    get_playbook,
    has_open_load,
    import_playbooks,
    list_playbooks,
    load_onto_customer,
    load_playbook,
    load_playbook_many,
    make_step,
    move_step,
    open_load_customer_ids,
    parse_kind,
    read_playbook_file,
    remove_playbook,
    remove_step,
    rename_playbook,
    set_playbook_active,
)
from engine.tasks import cancel_task, complete_task, list_tasks
from portaria.wiring import Service
from provisioning.directory import create_user

BRAZIL = BusinessCalendar()
CARNIVAL_FRIDAY = date(2026, 2, 13)

ONBOARDING = [
    make_step("Ligação de boas-vindas", "ligação", 0),
    make_step("Enviar material", "e-mail", 1),
    make_step("Reunião de kickoff", "outro", 3),
    make_step("Revisar contrato", "other"),
]


def steps_of(playbook: Playbook) -> list[tuple[int, str, str, int | None]]:
    return [(s.position, s.name, s.kind, s.business_days) for s in playbook.steps]


@pytest.fixture
def cards(service: Service) -> dict[str, int]:
    """An Agente owning two cards, and a card without owner."""
    with service.transaction() as session:
        ana = create_user(
            session, name="Ana", email="ana@cs.test", area="CS", role="agente", created_via="t"
        )
        ids = {"ana": ana.id}
        for code, owner in (("ACME", "ana@cs.test"), ("BETA", "ana@cs.test"), ("SOLO", None)):
            ids[code] = create_customer(session, {"code": code, "name": code, "owner": owner}).id
    return ids


def load_tasks(session: Session, load_id: int) -> list[tuple[str, str, date | None, int | None]]:
    tasks = session.scalars(select(Task).where(Task.load_id == load_id).order_by(Task.id))
    return [(t.name, t.kind, t.due_date, t.assignee_id) for t in tasks]


class TestKinds:
    @pytest.mark.parametrize(
        ("text", "kind"),
        [
            ("ligação", "call"),
            ("Ligacao", "call"),
            ("call", "call"),
            ("E-mail", "email"),
            ("email", "email"),
            ("outro", "other"),
            ("Other", "other"),
        ],
    )
    def test_portuguese_and_english(self, text: str, kind: str) -> None:
        assert parse_kind(text) == kind

    def test_unknown_kind(self) -> None:
        with pytest.raises(InvalidPlaybook) as raised:
            parse_kind("visita")

        assert str(raised.value) == (
            "tipo de tarefa inválido (bad task kind) 'visita': use ligação, email ou outro"
        )

    def test_negative_days(self) -> None:
        with pytest.raises(InvalidPlaybook, match="business days out of range"):
            make_step("Ligar", "call", -1)


class TestEditing:
    def test_create_rename_and_status(self, service: Service) -> None:
        with service.transaction() as session:
            playbook = create_playbook(session, "Onboarding", ONBOARDING)
            rename_playbook(session, "onboarding", "Onboarding PME")
            set_playbook_active(session, playbook.id, False)
            create_playbook(session, "Renovação")
            listed = [(p.name, p.status) for p in list_playbooks(session)]
            steps = steps_of(playbook)

        assert listed == [("Onboarding PME", "inactive"), ("Renovação", "active")]
        assert steps == [
            (1, "Ligação de boas-vindas", "call", 0),
            (2, "Enviar material", "email", 1),
            (3, "Reunião de kickoff", "other", 3),
            (4, "Revisar contrato", "other", None),
        ]

    def test_names_are_unique_ignoring_case(self, service: Service) -> None:
        with service.transaction() as session:
            create_playbook(session, "Onboarding")
            with pytest.raises(PlaybookExists) as raised:
                create_playbook(session, "ONBOARDING")
            with pytest.raises(PlaybookNotFound) as missing:
                get_playbook(session, "Churn")

        assert str(raised.value) == (
            "já existe um playbook com esse nome (name taken): Onboarding"
        )
        assert str(missing.value) == "Playbook não encontrado (playbook not found): Churn"

    def test_add_remove_and_move_tasks(self, service: Service) -> None:
        with service.transaction() as session:
            playbook = create_playbook(session, "Onboarding", ONBOARDING)
            add_step(session, playbook, make_step("Primeiro", "call", 2), position=1)
            after_add = [s.name for s in playbook.steps]
            remove_step(session, playbook, 3)
            after_remove = [s.name for s in playbook.steps]
            move_step(session, playbook, 4, 1)
            after_move = steps_of(playbook)
            with pytest.raises(InvalidPlaybook) as raised:
                remove_step(session, playbook, 9)
        with service.sessions() as session:
            stored = steps_of(get_playbook(session, "Onboarding"))

        assert after_add == [
            "Primeiro",
            "Ligação de boas-vindas",
            "Enviar material",
            "Reunião de kickoff",
            "Revisar contrato",
        ]
        assert after_remove == [
            "Primeiro",
            "Ligação de boas-vindas",
            "Reunião de kickoff",
            "Revisar contrato",
        ]
        assert (
            after_move
            == stored
            == [
                (1, "Revisar contrato", "other", None),
                (2, "Primeiro", "call", 2),
                (3, "Ligação de boas-vindas", "call", 0),
                (4, "Reunião de kickoff", "other", 3),
            ]
        )
        assert str(raised.value) == (
            "playbook 'Onboarding' não tem a tarefa 9 (no such task; it has 4)"
        )

    def test_remove_never_loaded_deletes(self, service: Service) -> None:
        with service.transaction() as session:
            create_playbook(session, "Onboarding", ONBOARDING)
            outcome = remove_playbook(session, "Onboarding")
            left = session.scalars(select(Playbook)).all()

        assert (outcome, left) == ("deleted", [])

    def test_remove_loaded_archives_and_keeps_history(
        self, service: Service, cards: dict[str, int]
    ) -> None:
        with service.transaction() as session:
            playbook = create_playbook(session, "Onboarding", ONBOARDING)
            load = load_playbook(
                session,
                "Onboarding",
                cards["ACME"],
                loaded_by="cli:ana",
                today=CARNIVAL_FRIDAY,
                calendar=BRAZIL,
            )
            outcome = remove_playbook(session, "Onboarding")
            archived = (playbook.name, playbook.status)
            listed = [p.name for p in list_playbooks(session)]
            everything = [p.name for p in list_playbooks(session, include_archived=True)]
            create_playbook(session, "Onboarding")
            with pytest.raises(PlaybookNotLoadable) as raised:
                load_playbook(
                    session,
                    playbook.id,
                    cards["BETA"],
                    loaded_by="cli:ana",
                    today=CARNIVAL_FRIDAY,
                    calendar=BRAZIL,
                )
            with pytest.raises(InvalidPlaybook, match="archived playbook"):
                rename_playbook(session, playbook.id, "Outro")
            kept = session.get(PlaybookLoad, load.id)

        assert outcome == "archived"
        assert archived == ("Onboarding (arquivado #1)", "archived")
        assert (listed, everything) == ([], ["Onboarding (arquivado #1)"])
        assert kept is not None and kept.playbook_id == playbook.id
        assert str(raised.value) == (
            "playbook arquivado não pode ser carregado (playbook is archived): "
            "Onboarding (arquivado #1)"
        )


class TestLoading:
    def test_tasks_get_business_day_due_dates_and_the_owner(
        self, service: Service, cards: dict[str, int]
    ) -> None:
        with service.transaction() as session:
            create_playbook(session, "Onboarding", ONBOARDING)
            load = load_playbook(
                session,
                "Onboarding",
                cards["ACME"],
                loaded_by="rule:7",
                today=CARNIVAL_FRIDAY,
                calendar=BRAZIL,
            )
            tasks = load_tasks(session, load.id)
            row = (load.customer_id, load.loaded_by, load.loaded_on, load.status, load.rule_id)

        assert row == (cards["ACME"], "rule:7", CARNIVAL_FRIDAY, "open", None)
        assert tasks == [
            ("Ligação de boas-vindas", "call", date(2026, 2, 13), cards["ana"]),
            ("Enviar material", "email", date(2026, 2, 18), cards["ana"]),
            ("Reunião de kickoff", "other", date(2026, 2, 20), cards["ana"]),
            ("Revisar contrato", "other", None, cards["ana"]),
        ]

    def test_configured_calendar_moves_due_dates(
        self, service: Service, cards: dict[str, int]
    ) -> None:
        sao_paulo = BusinessCalendar(subdivision="SP", closed_dates=[date(2026, 7, 10)])
        with service.transaction() as session:
            create_playbook(session, "Follow-up", [make_step("Ligar", "call", 1)])
            load = load_playbook(
                session,
                "Follow-up",
                cards["SOLO"],
                loaded_by="cli:ana",
                today=date(2026, 7, 8),
                calendar=sao_paulo,
            )
            tasks = load_tasks(session, load.id)

        assert tasks == [("Ligar", "call", date(2026, 7, 13), None)]

    def test_inactive_and_empty_playbooks_cannot_be_loaded(
        self, service: Service, cards: dict[str, int]
    ) -> None:
        with service.transaction() as session:
            create_playbook(session, "Pausado", ONBOARDING, active=False)
            create_playbook(session, "Vazio")
            problems = []
            for name in ("Pausado", "Vazio"):
                with pytest.raises(PlaybookNotLoadable) as raised:
                    load_playbook(
                        session,
                        name,
                        cards["ACME"],
                        loaded_by="cli:ana",
                        today=CARNIVAL_FRIDAY,
                        calendar=BRAZIL,
                    )
                problems.append(str(raised.value))
            loads = session.scalars(select(PlaybookLoad)).all()

        assert problems == [
            "playbook inativo não pode ser carregado (playbook is inactive): Pausado",
            "playbook sem tarefas não pode ser carregado (playbook has no tasks): Vazio",
        ]
        assert loads == []

    def test_many_cards_at_once_and_open_loads(
        self, service: Service, cards: dict[str, int]
    ) -> None:
        with service.transaction() as session:
            playbook = create_playbook(session, "Onboarding", ONBOARDING)
            loads = load_playbook_many(
                session,
                playbook,
                [cards["ACME"], cards["BETA"]],
                loaded_by="rule:3",
                today=CARNIVAL_FRIDAY,
                calendar=BRAZIL,
                rule_id=None,
            )
            counts = [len(load_tasks(session, load.id)) for load in loads]
            open_ids = open_load_customer_ids(session, playbook.id)
            flags = (
                has_open_load(session, playbook.id, cards["ACME"]),
                has_open_load(session, playbook.id, cards["SOLO"]),
            )

        assert counts == [4, 4]
        assert open_ids == {cards["ACME"], cards["BETA"]}
        assert flags == (True, False)

    def test_a_person_cannot_load_twice_while_open(
        self, service: Service, cards: dict[str, int]
    ) -> None:
        with service.transaction() as session:
            create_playbook(session, "Onboarding", ONBOARDING)
            load_onto_customer(
                session, "Onboarding", "ACME", loaded_by="cli:ana", today=CARNIVAL_FRIDAY,
                calendar=BRAZIL,
            )  # fmt: skip
            with pytest.raises(PlaybookAlreadyLoaded) as raised:
                load_onto_customer(
                    session, "Onboarding", "ACME", loaded_by="cli:ana", today=CARNIVAL_FRIDAY,
                    calendar=BRAZIL,
                )  # fmt: skip

        assert str(raised.value) == (
            "playbook já carregado e em aberto neste cliente (already loaded and open): "
            "Onboarding em ACME"
        )


class TestTasksCloseLoads:
    def test_last_done_task_closes_the_load(self, service: Service, cards: dict[str, int]) -> None:
        with service.transaction() as session:
            playbook = create_playbook(session, "Onboarding", ONBOARDING[:2])
            load = load_playbook(
                session,
                playbook.id,
                cards["ACME"],
                loaded_by="cli:ana",
                today=CARNIVAL_FRIDAY,
                calendar=BRAZIL,
            )
            first, second = [line.task.id for line in list_tasks(session, load_id=load.id)]
            complete_task(session, first, by="ana@cs.test")
            still_open = load.status
            cancel_task(session, second, by="ana@cs.test")
            with pytest.raises(TaskNotOpen) as raised:
                complete_task(session, first, by="ana@cs.test")
            done = session.get(Task, first)

        assert (still_open, load.status) == ("open", "closed")
        assert load.closed_at is not None
        assert (done.status, done.done_by) == ("done", "ana@cs.test")
        assert str(raised.value) == f"tarefa {first} não está aberta (task is not open): está done"
        with service.sessions() as session:
            assert not has_open_load(session, playbook.id, cards["ACME"])

    def test_close_finished_loads_in_bulk(self, service: Service, cards: dict[str, int]) -> None:
        with service.transaction() as session:
            playbook = create_playbook(session, "Onboarding", ONBOARDING[:1])
            loads = load_playbook_many(
                session,
                playbook,
                [cards["ACME"], cards["BETA"]],
                loaded_by="cli:ana",
                today=CARNIVAL_FRIDAY,
                calendar=BRAZIL,
            )
            # Tasks changed behind the engine's back, e.g. by a bulk update.
            for task in session.scalars(select(Task).where(Task.customer_id == cards["ACME"])):
                task.status = "done"
            session.flush()
            closed = close_finished_loads(session)
            statuses = [session.get(PlaybookLoad, load.id).status for load in loads]

        assert (closed, statuses) == (1, ["closed", "open"])

    def test_task_lists_filter(self, service: Service, cards: dict[str, int]) -> None:
        with service.transaction() as session:
            create_playbook(session, "Onboarding", ONBOARDING)
            for code in ("ACME", "SOLO"):
                load_onto_customer(
                    session, "Onboarding", code, loaded_by="cli:ana", today=CARNIVAL_FRIDAY,
                    calendar=BRAZIL,
                )  # fmt: skip
            overdue = list_tasks(session, overdue_on=date(2026, 2, 19))
            mine = list_tasks(session, owner_email="ANA@cs.test")
            solo = list_tasks(session, customer_code="SOLO")

        assert [(t.customer_code, t.task.name) for t in overdue] == [
            ("ACME", "Ligação de boas-vindas"),
            ("SOLO", "Ligação de boas-vindas"),
            ("ACME", "Enviar material"),
            ("SOLO", "Enviar material"),
        ]
        assert {t.customer_code for t in mine} == {"ACME"}
        assert len(mine) == 4
        assert [(t.task.due_date, t.assignee_email, t.playbook_name) for t in solo] == [
            (date(2026, 2, 13), None, "Onboarding"),
            (date(2026, 2, 18), None, "Onboarding"),
            (date(2026, 2, 20), None, "Onboarding"),
            (None, None, "Onboarding"),
        ]


TOML_FILE = """\
# Dois playbooks, com chaves em português
[[playbooks]]
nome = "Onboarding"

[[playbooks.tarefas]]
nome = "Ligação de boas-vindas"
tipo = "Ligação"
dias = 0

[[playbooks.tarefas]]
nome = "Enviar material"
tipo = "e-mail"
dias = 1

[[playbooks]]
name = "Renovação"
active = false

[[playbooks.tasks]]
name = "Revisar contrato"
kind = "outro"
"""

YAML_FILE = """\
- nome: Risco
  tarefas:
    - {nome: Ligar para o sponsor, tipo: ligação, dias: 2}
    - nome: Plano de ação
      tipo: outro
"""


class TestFiles:
    def test_import_toml_with_portuguese_keys(self, service: Service, tmp_path: Path) -> None:
        (tmp_path / "playbooks.toml").write_text(TOML_FILE, encoding="utf-8")

        specs = read_playbook_file(tmp_path / "playbooks.toml")

        assert specs == [
            PlaybookSpec(
                "Onboarding",
                True,
                [
                    StepSpec("Ligação de boas-vindas", "call", 0),
                    StepSpec("Enviar material", "email", 1),
                ],
            ),
            PlaybookSpec("Renovação", False, [StepSpec("Revisar contrato", "other", None)]),
        ]

    def test_import_yaml_list(self, tmp_path: Path) -> None:
        (tmp_path / "risco.yaml").write_text(YAML_FILE, encoding="utf-8")

        assert read_playbook_file(tmp_path / "risco.yaml") == [
            PlaybookSpec(
                "Risco",
                True,
                [
                    StepSpec("Ligar para o sponsor", "call", 2),
                    StepSpec("Plano de ação", "other", None),
                ],
            )
        ]

    def test_single_playbook_at_the_top(self, tmp_path: Path) -> None:
        (tmp_path / "um.toml").write_text(
            'name = "Churn"\n[[tasks]]\nname = "Ligar"\nkind = "call"\ndays = 5\n'
        )

        assert read_playbook_file(tmp_path / "um.toml") == [
            PlaybookSpec("Churn", True, [StepSpec("Ligar", "call", 5)])
        ]

    def test_problems_name_the_playbook_and_the_task(self, tmp_path: Path) -> None:
        (tmp_path / "ruim.yaml").write_text(
            "playbooks:\n"
            "  - nome: Onboarding\n"
            "    tarefas:\n"
            "      - {nome: Ligar, tipo: ligação, dias: 1}\n"
            "      - {nome: Visitar, tipo: visita}\n"
            "      - {nome: Escrever, tipo: email, dias: -2}\n"
            "      - {nome: Sem tipo}\n"
            "      - {tipo: email}\n"
            "  - nome: Onboarding\n"
            "    cor: azul\n"
            "  - tarefas: []\n",
            encoding="utf-8",
        )

        with pytest.raises(InvalidPlaybook) as raised:
            read_playbook_file(tmp_path / "ruim.yaml")

        assert str(raised.value).split("; ") == [
            "ruim.yaml: playbook 'Onboarding', tarefa 2: tipo de tarefa inválido (bad task "
            "kind) 'visita': use ligação, email ou outro",
            "playbook 'Onboarding', tarefa 3: dias úteis fora de 0..999 (business days out of "
            "range): -2",
            "playbook 'Onboarding', tarefa 4: falta o tipo (kind missing): ligação, email ou "
            "outro",
            "playbook 'Onboarding', tarefa 5: nome da tarefa vazio (empty task name)",
            "playbook 'Onboarding': chave desconhecida (unknown key) 'cor'",
            "playbook 'Onboarding': repetido no arquivo (duplicate name)",
            "playbook 3: nome do playbook vazio (empty playbook name)",
        ]

    def test_unknown_extension_and_bad_toml(self, tmp_path: Path) -> None:
        (tmp_path / "p.json").write_text("{}")
        (tmp_path / "p.toml").write_text("name = ")

        with pytest.raises(InvalidPlaybook) as extension:
            read_playbook_file(tmp_path / "p.json")
        with pytest.raises(InvalidPlaybook, match=r"^p\.toml: TOML inválido \(bad TOML\)"):
            read_playbook_file(tmp_path / "p.toml")

        assert str(extension.value) == (
            "formato desconhecido (unknown format) p.json: use .toml, .yaml ou .yml"
        )

    def test_import_creates_then_replaces(self, service: Service, tmp_path: Path) -> None:
        (tmp_path / "playbooks.toml").write_text(TOML_FILE, encoding="utf-8")
        (tmp_path / "novo.toml").write_text(
            'name = "onboarding"\nactive = false\n[[tasks]]\nname = "Só isso"\nkind = "email"\n',
            encoding="utf-8",
        )
        with service.transaction() as session:
            first = import_playbooks(session, tmp_path / "playbooks.toml")
            second = import_playbooks(session, tmp_path / "novo.toml")
            onboarding = get_playbook(session, "Onboarding")
            result = (onboarding.name, onboarding.status, steps_of(onboarding))

        assert (first.created, first.updated) == (["Onboarding", "Renovação"], [])
        assert (second.created, second.updated) == ([], ["Onboarding"])
        assert result == ("Onboarding", "inactive", [(1, "Só isso", "email", None)])

    @pytest.mark.parametrize("suffix", ["toml", "yaml"])
    def test_export_round_trip(self, service: Service, tmp_path: Path, suffix: str) -> None:
        file = tmp_path / f"export.{suffix}"
        with service.transaction() as session:
            create_playbook(session, 'Onboarding "PME"', ONBOARDING)
            create_playbook(session, "Renovação", ONBOARDING[3:], active=False)
            create_playbook(session, "Outro")
            written = export_playbooks(session, ['Onboarding "PME"', "Renovação"], file)

        assert written == ['Onboarding "PME"', "Renovação"]
        assert read_playbook_file(file) == [
            PlaybookSpec('Onboarding "PME"', True, list(ONBOARDING)),
            PlaybookSpec("Renovação", False, [ONBOARDING[3]]),
        ]

    def test_export_toml_text(self, service: Service, tmp_path: Path) -> None:
        with service.transaction() as session:
            create_playbook(session, "Renovação", ONBOARDING[2:])
            export_playbooks(session, [], tmp_path / "todos.toml")

        assert (tmp_path / "todos.toml").read_text(encoding="utf-8") == (
            "# Playbooks do Portaria (Portaria playbooks)\n"
            "\n"
            "[[playbooks]]\n"
            'name = "Renovação"\n'
            "active = true\n"
            "\n"
            "[[playbooks.tasks]]\n"
            'name = "Reunião de kickoff"\n'
            'kind = "other"\n'
            "days = 3\n"
            "\n"
            "[[playbooks.tasks]]\n"
            'name = "Revisar contrato"\n'
            'kind = "other"\n'
        )
