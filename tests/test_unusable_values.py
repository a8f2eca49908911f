"""Values written but unusable: the person is incomplete and the problem says why.

An address with loose words beside it, an invalid address, an unknown or
doubled access type and a name or area too long are never turned into a
different value: the field is missing, and its problem is recorded.
"""

from __future__ import annotations

import pytest

from intake.extraction import Person, extract
from intake.reading import ReadMessage, read_message
from intake.report import format_report, parse_report
from intake.values import (
    MAX_AREA_CHARS,
    MAX_NAME_CHARS,
    Problem,
    read_access_type,
    read_email,
    read_name,
)
from provisioning.models import AccessRequest

HEAD = (
    "From: Helena Costa <helena.costa@cliente.test>\r\nTo: acesso@portaria.test\r\n"
    "Subject: #ACESSO\r\nMessage-ID: <unusable@cliente.test>\r\nMIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
)


def raw(body: str) -> bytes:
    return HEAD.encode("ascii") + body.replace("\n", "\r\n").encode("utf-8")


def message(body: str) -> ReadMessage:
    return read_message(raw(body))


def block(email: str = "ana.lima@cliente.test", access: str = "Comum") -> str:
    return f"Nome: Ana Lima\nE-mail: {email}\nÁrea: RH\nTipo de acesso: {access}\n"


def fields(person: Person) -> tuple[str | None, ...]:
    return (person.name, person.email, person.area, person.access_type)


def records(person: Person) -> dict[str, dict[str, object]]:
    return {name: problem.record() for name, problem in person.problems.items()}


class TestEmailValuesThatAreOneAddress:
    @pytest.mark.parametrize(
        "value",
        [
            "ana@cliente.test",
            "ANA@Cliente.TEST",
            "<ana@cliente.test>",
            "Ana Lima <ana@cliente.test>",
            '"Lima, Ana" <ana@cliente.test>',
            "mailto:ana@cliente.test",
            "<mailto:ana@cliente.test>",
            "ana@cliente.test (corporativo)",
            "ana@cliente.test.",
            "ana@cliente.test. Obrigada",
            "ana@cliente.test - corporativo",
            "ana@cliente.test<mailto:ana@cliente.test>",
            "[ana@cliente.test](mailto:ana@cliente.test)",
            "Ana Lima, ana@cliente.test",
        ],
    )
    def test_address_set_apart_is_read(self, value: str) -> None:
        assert read_email(value) == ("ana@cliente.test", None)

    @pytest.mark.parametrize("value", ["ana@ação.com.br", "ana@пример.рф"])
    def test_a_domain_in_one_script_is_read(self, value: str) -> None:
        assert read_email(value) == (value, None)

    def test_empty_value_states_nothing(self) -> None:
        assert read_email("  ") == (None, None)


class TestEmailValuesThatAreNot:
    @pytest.mark.parametrize(
        ("value", "problem"),
        [
            (
                "email ruim@cliente.test",
                Problem("unclear", "email ruim@cliente.test", ("ruim@cliente.test",)),
            ),
            (
                "ana@cliente.test corporativo",
                Problem("unclear", "ana@cliente.test corporativo", ("ana@cliente.test",)),
            ),
            (
                "Ana Lima ana@cliente.test",
                Problem("unclear", "Ana Lima ana@cliente.test", ("ana@cliente.test",)),
            ),
            ("email.ruim@@cliente", Problem("invalid", "email.ruim@@cliente")),
            ("ana.lima@", Problem("invalid", "ana.lima@")),
            ("ana @ cliente.test", Problem("invalid", "ana @ cliente.test")),
            ("a confirmar", Problem("invalid", "a confirmar")),
            # A Cyrillic і among Latin letters: a look-alike of cliente.test.
            ("ana@cl\u0456ente.test", Problem("invalid", "ana@cl\u0456ente.test")),
            ("ana@xn--clente-qvf.test", Problem("invalid", "ana@xn--clente-qvf.test")),
            (
                "ana@cliente.test<mailto:bia@cliente.test>",
                Problem(
                    "several",
                    "ana@cliente.test<mailto:bia@cliente.test>",
                    ("ana@cliente.test", "bia@cliente.test"),
                ),
            ),
            (
                "ana@cliente.test ou ana@gmail.test",
                Problem(
                    "several",
                    "ana@cliente.test ou ana@gmail.test",
                    ("ana@cliente.test", "ana@gmail.test"),
                ),
            ),
        ],
    )
    def test_value_is_refused_with_its_problem(self, value: str, problem: Problem) -> None:
        assert read_email(value) == (None, problem)

    def test_overlong_local_part_is_invalid_and_quoted_bounded(self) -> None:
        value = "a" * 300 + "@cliente.test"

        address, problem = read_email(value)

        assert address is None
        assert problem == Problem("invalid", "a" * 133 + "…" + "a" * 53 + "@cliente.test")
        assert len(problem.value) == 200


class TestTheTestersMessages:
    def test_words_glued_before_the_address_leave_the_email_missing(self) -> None:
        extraction = extract(message(block(email="email ruim@cliente.test")))

        [person] = extraction.people
        assert fields(person) == ("Ana Lima", None, "RH", "comum")
        assert person.missing == ["email"]
        assert records(person) == {
            "email": {
                "kind": "unclear",
                "value": "email ruim@cliente.test",
                "found": ["ruim@cliente.test"],
            }
        }

    def test_invalid_address_is_a_problem_not_only_missing(self) -> None:
        [person] = extract(message(block(email="email.ruim@@cliente"))).people

        assert fields(person) == ("Ana Lima", None, "RH", "comum")
        assert records(person) == {"email": {"kind": "invalid", "value": "email.ruim@@cliente"}}

    def test_unknown_access_type_is_unrecognised(self) -> None:
        [person] = extract(message(block(access="Superusuário"))).people

        assert fields(person) == ("Ana Lima", "ana.lima@cliente.test", "RH", None)
        assert records(person) == {
            "access_type": {"kind": "unrecognised", "value": "Superusuário"}
        }

    def test_two_access_types_in_one_value(self) -> None:
        [person] = extract(message(block(access="Comum, Admin"))).people

        assert fields(person) == ("Ana Lima", "ana.lima@cliente.test", "RH", None)
        assert records(person) == {
            "access_type": {
                "kind": "several",
                "value": "Comum, Admin",
                "found": ["comum", "admin"],
            }
        }

    def test_name_and_area_too_long_are_not_cut(self) -> None:
        body = (
            f"Nome: {'A' * 5000}\nE-mail: ana.lima@cliente.test\nÁrea: {'R' * 20000}\n"
            "Tipo de acesso: Comum\n"
        )

        [person] = extract(message(body)).people

        assert fields(person) == (None, "ana.lima@cliente.test", None, "comum")
        assert person.missing == ["name", "area"]
        assert records(person) == {
            "name": {"kind": "too_long", "length": 5000, "limit": 200},
            "area": {"kind": "too_long", "length": 20000, "limit": 300},
        }

    def test_a_person_named_only_by_an_unusable_address_is_kept(self) -> None:
        body = block() + "\nE-mail: email ruim@cliente.test\nÁrea: TI\nTipo de acesso: Agente\n"

        extraction = extract(message(body))

        assert [fields(person) for person in extraction.people] == [
            ("Ana Lima", "ana.lima@cliente.test", "RH", "comum"),
            (None, None, "TI", "agente"),
        ]
        assert records(extraction.people[1])["email"]["kind"] == "unclear"


class TestAccessTypesNamedTwice:
    @pytest.mark.parametrize(
        ("value", "found"),
        [
            ("Comum; Admin", ("comum", "admin")),
            ("Agente ou Admin", ("agente", "admin")),
            ("[x] Comum [ ] Agente [x] Admin", ("comum", "admin")),
        ],
    )
    def test_one_value(self, value: str, found: tuple[str, ...]) -> None:
        assert read_access_type(value) == (None, Problem("several", value, found))

    @pytest.mark.parametrize(
        ("value", "access"),
        [
            ("Comum, não admin", "comum"),
            ("Admin ( com permissões administrativas)", "admin"),
            ("Agente, com acesso aos clientes", "agente"),
            ("[ ] Comum [x] Admin", "admin"),
        ],
    )
    def test_one_type_with_an_explanation_or_one_checked_box(
        self, value: str, access: str
    ) -> None:
        assert read_access_type(value) == (access, None)

    def test_checkbox_list_with_nothing_checked_states_nothing(self) -> None:
        assert read_access_type("[ ] Comum [ ] Agente") == (None, None)

    def test_two_checked_lines_of_a_checkbox_list(self) -> None:
        body = (
            "Nome: Ana Lima\nE-mail: ana.lima@cliente.test\nÁrea: RH\n☑ Comum\n☐ Agente\n☑ Admin\n"
        )

        [person] = extract(message(body)).people

        assert fields(person) == ("Ana Lima", "ana.lima@cliente.test", "RH", None)
        assert records(person) == {
            "access_type": {
                "kind": "several",
                "value": "☑ Comum ☐ Agente ☑ Admin",
                "found": ["comum", "admin"],
            }
        }

    def test_a_second_access_line_after_the_block(self) -> None:
        [person] = extract(message(block() + "Perfil: Admin\n")).people

        assert fields(person) == ("Ana Lima", "ana.lima@cliente.test", "RH", None)
        assert records(person) == {"access_type": {"kind": "several", "found": ["comum", "admin"]}}

    def test_the_same_access_line_twice_is_no_contradiction(self) -> None:
        [person] = extract(message(block() + "Perfil: Comum\n")).people

        assert fields(person) == ("Ana Lima", "ana.lima@cliente.test", "RH", "comum")
        assert person.problems == {}

    def test_the_same_person_twice_with_different_types(self) -> None:
        [person] = extract(message(block() + "\n" + block(access="Admin"))).people

        assert fields(person) == ("Ana Lima", "ana.lima@cliente.test", "RH", None)
        assert records(person) == {"access_type": {"kind": "several", "found": ["comum", "admin"]}}

    def test_unlabelled_row_naming_two_types(self) -> None:
        [person] = extract(message("Ana Lima; ana.lima@cliente.test; RH; Comum, Admin\n")).people

        assert fields(person) == ("Ana Lima", "ana.lima@cliente.test", "RH", None)
        assert records(person)["access_type"]["found"] == ["comum", "admin"]

    def test_next_persons_access_before_their_name_is_theirs(self) -> None:
        body = block() + "\nPerfil: Admin\nNome: Bia Reis\nE-mail: bia@cliente.test\nÁrea: TI\n"

        extraction = extract(message(body))

        assert [fields(person) for person in extraction.people] == [
            ("Ana Lima", "ana.lima@cliente.test", "RH", "comum"),
            ("Bia Reis", "bia@cliente.test", "TI", "admin"),
        ]


class TestDefaultsAndLimits:
    def test_a_default_does_not_replace_what_was_written_for_the_person(self) -> None:
        body = (
            "Perfil para todos: Comum\n\n"
            + block(access="Superusuário")
            + "\nNome: Bia Reis\nE-mail: bia@cliente.test\nÁrea: TI\n"
        )

        extraction = extract(message(body))

        assert [fields(person) for person in extraction.people] == [
            ("Ana Lima", "ana.lima@cliente.test", "RH", None),
            ("Bia Reis", "bia@cliente.test", "TI", "comum"),
        ]
        assert records(extraction.people[0])["access_type"]["kind"] == "unrecognised"

    def test_area_parts_joined_past_the_limit(self) -> None:
        body = (
            f"Nome: Ana Lima\nE-mail: ana.lima@cliente.test\nUnidade: {'U' * 200}\n"
            f"Segmento: {'S' * 200}\nTipo de acesso: Comum\n"
        )

        [person] = extract(message(body)).people

        assert person.area is None
        assert records(person) == {"area": {"kind": "too_long", "length": 403, "limit": 300}}

    def test_name_and_area_at_the_limit_are_kept_whole(self) -> None:
        body = (
            f"Nome: {'A' * 200}\nE-mail: ana.lima@cliente.test\nÁrea: {'R' * 300}\n"
            "Tipo de acesso: Comum\n"
        )

        [person] = extract(message(body)).people

        assert fields(person) == ("A" * 200, "ana.lima@cliente.test", "R" * 300, "comum")

    def test_name_without_letters_is_invalid(self) -> None:
        assert read_name("12345") == (None, Problem("invalid", "12345"))

    def test_limits_are_the_request_columns(self) -> None:
        assert AccessRequest.name.type.length == MAX_NAME_CHARS
        assert AccessRequest.area.type.length == MAX_AREA_CHARS


class TestReport:
    def test_report_says_what_was_wrong(self) -> None:
        report = parse_report(raw(block(email="email.ruim@@cliente", access="Comum, Admin")))

        assert (report["outcome"], report["requests"], report["missing"]) == (
            "incomplete",
            [],
            ["email", "access_type"],
        )
        assert report["problems"] == [
            "E-mail inválido: email.ruim@@cliente",
            "Mais de um tipo de acesso: Comum, Admin",
        ]
        assert format_report(report).splitlines()[4:7] == [
            "Faltando (missing): e-mail, tipo de acesso (access type)",
            "Problemas (problems):",
            "  E-mail inválido: email.ruim@@cliente",
        ]

    def test_complete_request_has_no_problems(self) -> None:
        report = parse_report(raw(block()))

        assert (report["outcome"], report["problems"]) == ("request", [])
