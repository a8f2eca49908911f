"""Conditions: every operation on every field type against real SQLite rows, all/any,
and the refusal of conditions that cannot be used, naming the field."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from engine.conditions import (
    OPERATIONS,
    condition_from_text,
    matching_customer_ids,
    normalise_conditions,
    resolve_date,
    validate_conditions,
    vocabulary,
)
from engine.models import Customer, CustomField, Playbook, PlaybookLoad, Task
from portaria.wiring import Service
from provisioning.directory import create_user

TODAY = date(2025, 6, 10)  # a Tuesday
ANA = "ana@cs.example.com.br"
BRUNO = "bruno@cs.example.com.br"

# The cards every test reads: (code, standard fields, custom values).
CARDS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "A",
        {
            "segment": "Varejo",
            "contact_email": "a@acme.com.br",
            "mrr": Decimal("1500"),
            "renewal_date": date(2025, 6, 20),
            "owner": ANA,
        },
        {"plano": "ouro", "licencas": 50, "kickoff": "2025-06-01", "estrategico": True},
    ),
    (
        "B",
        {
            "segment": "Varejo Online",
            "contact_email": "b@beta.com",
            "mrr": Decimal("500"),
            "renewal_date": date(2025, 5, 1),
            "owner": BRUNO,
        },
        {"plano": "prata", "licencas": 5, "kickoff": "2025-07-15", "estrategico": False},
    ),
    ("C", {"segment": "Indústria", "mrr": Decimal("1000")}, {}),
    (
        "D",
        {"contact_email": "d@acme.com.br", "renewal_date": TODAY, "owner": ANA},
        {"plano": "bronze", "licencas": 100, "kickoff": "2025-06-10", "estrategico": True},
    ),
    (
        "E",
        {
            "segment": "",
            "contact_email": "e@x.org",
            "mrr": Decimal("0"),
            "renewal_date": date(2026, 1, 1),
            "owner": BRUNO,
        },
        {"plano": "ouro", "estrategico": False},
    ),
]
REGIONS = {"A": "Sul", "B": "", "D": "Sudeste"}
EVERYONE = {"A", "B", "C", "D", "E"}


@pytest.fixture
def cards(service: Service) -> Service:
    """Five cards with known values, custom fields, playbook loads and tasks."""
    with service.transaction() as session:
        owners = {
            ANA: create_user(
                session, name="Ana", email=ANA, area="CS", role="agente", created_via="test"
            ).id,
            BRUNO: create_user(
                session, name="Bruno", email=BRUNO, area="CS", role="agente", created_via="test"
            ).id,
        }
        session.add_all(
            [
                CustomField(
                    key="plano", label="Plano", kind="choice", choices=["ouro", "prata", "bronze"]
                ),
                CustomField(key="licencas", label="Licenças", kind="number"),
                CustomField(key="kickoff", label="Kickoff", kind="date"),
                CustomField(key="estrategico", label="Estratégico", kind="boolean"),
                CustomField(key="regiao", label="Região", kind="text"),
            ]
        )
        ids = {}
        for code, fields, custom in CARDS:
            values = dict(fields)
            owner = values.pop("owner", None)
            if code in REGIONS:
                custom = {**custom, "regiao": REGIONS[code]}
            card = Customer(
                code=code,
                name=f"Cliente {code}",
                owner_id=owners[owner] if owner else None,
                custom=custom,
                **values,
            )
            session.add(card)
            session.flush()
            ids[code] = card.id

        onboarding = Playbook(name="Onboarding", status="active")
        renewal = Playbook(name="Renovação", status="active")
        session.add_all([onboarding, renewal])
        session.flush()
        loads = {
            "A": PlaybookLoad(playbook_id=onboarding.id, customer_id=ids["A"], loaded_by="test",
                              loaded_on=date(2025, 5, 28), status="open"),
            "B": PlaybookLoad(playbook_id=onboarding.id, customer_id=ids["B"], loaded_by="test",
                              loaded_on=date(2025, 4, 1), status="closed"),
            "D": PlaybookLoad(playbook_id=renewal.id, customer_id=ids["D"], loaded_by="test",
                              loaded_on=date(2025, 6, 9), status="open"),
        }  # fmt: skip
        session.add_all(loads.values())
        session.flush()
        tasks = [
            ("A", loads["A"].id, date(2025, 6, 1), "open"),
            ("A", loads["A"].id, date(2025, 6, 15), "open"),
            ("B", loads["B"].id, date(2025, 4, 3), "done"),
            ("D", loads["D"].id, date(2025, 6, 12), "open"),
            ("E", None, date(2025, 6, 5), "open"),
            ("E", None, date(2025, 6, 2), "done"),
            ("E", None, None, "cancelled"),
        ]
        session.add_all(
            Task(customer_id=ids[c], load_id=load, name="t", kind="call", due_date=due, status=s)
            for c, load, due, s in tasks
        )
    return service


def codes(service: Service, conditions: list[dict[str, Any]], match: str = "all") -> set[str]:
    """The codes the conditions select, after the same checks a saved rule gets."""
    with service.sessions() as session:
        stored, problems = normalise_conditions(session, conditions)
        assert problems == []
        ids = matching_customer_ids(session, stored, match=match, today=TODAY)
        found = session.scalars(select(Customer.code).where(Customer.id.in_(ids)))
        return set(found)


def condition(field: str, operation: str, value: Any = None) -> dict[str, Any]:
    found = {"field": field, "operation": operation}
    if value is not None:
        found["value"] = value
    return found


CASES: list[tuple[str, str, Any, set[str]]] = [
    # text (standard column)
    ("segment", "equals", "varejo", {"A"}),
    ("segment", "not_equals", "Varejo", {"B", "C", "D", "E"}),
    ("segment", "contains", "varejo", {"A", "B"}),
    ("segment", "starts_with", "Ind", {"C"}),
    ("segment", "one_of", ["Varejo", "indústria"], {"A", "C"}),
    ("segment", "is_empty", None, {"D", "E"}),
    ("segment", "is_not_empty", None, {"A", "B", "C"}),
    # email
    ("contact_email", "equals", "A@ACME.com.br", {"A"}),
    ("contact_email", "not_equals", "a@acme.com.br", {"B", "C", "D", "E"}),
    ("contact_email", "contains", "@acme", {"A", "D"}),
    ("contact_email", "starts_with", "b@", {"B"}),
    ("contact_email", "one_of", ["e@x.org", "b@beta.com"], {"B", "E"}),
    ("contact_email", "is_empty", None, {"C"}),
    ("contact_email", "is_not_empty", None, {"A", "B", "D", "E"}),
    # number (standard column)
    ("mrr", "equals", 500, {"B"}),
    ("mrr", "not_equals", 500, {"A", "C", "D", "E"}),
    ("mrr", "one_of", [0, 1500], {"A", "E"}),
    ("mrr", "gt", 500, {"A", "C"}),
    ("mrr", "gte", 500, {"A", "B", "C"}),
    ("mrr", "lt", 1000, {"B", "E"}),
    ("mrr", "lte", 1000, {"B", "C", "E"}),
    ("mrr", "between", [500, 1000], {"B", "C"}),
    ("mrr", "is_empty", None, {"D"}),
    ("mrr", "is_not_empty", None, {"A", "B", "C", "E"}),
    # date (standard column), today = 2025-06-10
    ("renewal_date", "equals", "2025-06-10", {"D"}),
    ("renewal_date", "equals", "today", {"D"}),
    ("renewal_date", "not_equals", "hoje", {"A", "B", "C", "E"}),
    ("renewal_date", "before", "today", {"B"}),
    ("renewal_date", "after", "today", {"A", "E"}),
    ("renewal_date", "after", "+6m", {"E"}),
    ("renewal_date", "between", ["2025-06-01", "+10d"], {"A", "D"}),
    ("renewal_date", "within_next_days", 10, {"A", "D"}),
    ("renewal_date", "within_next_days", 9, {"D"}),
    ("renewal_date", "within_last_days", 40, {"B", "D"}),
    ("renewal_date", "within_last_days", 39, {"D"}),
    ("renewal_date", "is_empty", None, {"C"}),
    ("renewal_date", "is_not_empty", None, {"A", "B", "D", "E"}),
    # user (the owner, by email)
    ("owner", "equals", ANA, {"A", "D"}),
    ("owner", "not_equals", ANA.upper(), {"B", "C", "E"}),
    ("owner", "one_of", [ANA, BRUNO], {"A", "B", "D", "E"}),
    ("owner", "is_empty", None, {"C"}),
    ("owner", "is_not_empty", None, {"A", "B", "D", "E"}),
    # custom choice
    ("plano", "equals", "ouro", {"A", "E"}),
    ("plano", "not_equals", "ouro", {"B", "C", "D"}),
    ("plano", "one_of", ["prata", "bronze"], {"B", "D"}),
    ("plano", "is_empty", None, {"C"}),
    ("plano", "is_not_empty", None, {"A", "B", "D", "E"}),
    # custom number
    ("licencas", "equals", 100, {"D"}),
    ("licencas", "not_equals", 100, {"A", "B", "C", "E"}),
    ("licencas", "one_of", [5, 100], {"B", "D"}),
    ("licencas", "gt", 10, {"A", "D"}),
    ("licencas", "gte", 50, {"A", "D"}),
    ("licencas", "lt", 50, {"B"}),
    ("licencas", "lte", 50, {"A", "B"}),
    ("licencas", "between", [5, 50], {"A", "B"}),
    ("licencas", "is_empty", None, {"C", "E"}),
    ("licencas", "is_not_empty", None, {"A", "B", "D"}),
    # custom date (ISO text in JSON)
    ("kickoff", "equals", "today", {"D"}),
    ("kickoff", "not_equals", "today", {"A", "B", "C", "E"}),
    ("kickoff", "before", "today", {"A"}),
    ("kickoff", "after", "today", {"B"}),
    ("kickoff", "between", ["2025-06-01", "2025-06-10"], {"A", "D"}),
    ("kickoff", "within_next_days", 40, {"B", "D"}),
    ("kickoff", "within_last_days", 9, {"A", "D"}),
    ("kickoff", "is_empty", None, {"C", "E"}),
    ("kickoff", "is_not_empty", None, {"A", "B", "D"}),
    # custom boolean
    ("estrategico", "equals", True, {"A", "D"}),
    ("estrategico", "equals", False, {"B", "E"}),
    ("estrategico", "not_equals", True, {"B", "C", "E"}),
    ("estrategico", "is_empty", None, {"C"}),
    ("estrategico", "is_not_empty", None, {"A", "B", "D", "E"}),
    # custom text ("" counts as empty)
    ("regiao", "equals", "sul", {"A"}),
    ("regiao", "not_equals", "Sul", {"B", "C", "D", "E"}),
    ("regiao", "contains", "SU", {"A", "D"}),
    ("regiao", "starts_with", "sud", {"D"}),
    ("regiao", "one_of", ["Sul", "Sudeste"], {"A", "D"}),
    ("regiao", "is_empty", None, {"B", "C", "E"}),
    ("regiao", "is_not_empty", None, {"A", "D"}),
    # history: playbook loads
    ("open_playbook", "equals", "Onboarding", {"A"}),
    ("open_playbook", "not_equals", "Onboarding", {"B", "C", "D", "E"}),
    ("open_playbook", "one_of", ["Onboarding", "Renovação"], {"A", "D"}),
    ("open_playbook", "is_empty", None, {"B", "C", "E"}),
    ("open_playbook", "is_not_empty", None, {"A", "D"}),
    ("loaded_playbook", "equals", "Onboarding", {"A", "B"}),
    ("loaded_playbook", "not_equals", "Onboarding", {"C", "D", "E"}),
    ("loaded_playbook", "one_of", ["Renovação"], {"D"}),
    ("loaded_playbook", "is_empty", None, {"C", "E"}),
    ("loaded_playbook", "is_not_empty", None, {"A", "B", "D"}),
    # history: task counts
    ("open_tasks", "equals", 0, {"B", "C"}),
    ("open_tasks", "not_equals", 1, {"A", "B", "C"}),
    ("open_tasks", "gt", 0, {"A", "D", "E"}),
    ("open_tasks", "gte", 2, {"A"}),
    ("open_tasks", "lt", 2, {"B", "C", "D", "E"}),
    ("open_tasks", "lte", 1, {"B", "C", "D", "E"}),
    ("open_tasks", "between", [1, 1], {"D", "E"}),
    ("overdue_tasks", "gt", 0, {"A", "E"}),
    ("overdue_tasks", "equals", 0, {"B", "C", "D"}),
    # history: the next open task's due date
    ("next_task_due", "before", "today", {"A", "E"}),
    ("next_task_due", "within_next_days", 5, {"D"}),
    ("next_task_due", "is_empty", None, {"B", "C"}),
    ("next_task_due", "is_not_empty", None, {"A", "D", "E"}),
]


@pytest.mark.parametrize(("field", "operation", "value", "expected"), CASES)
def test_operation_selects_exactly(
    cards: Service, field: str, operation: str, value: Any, expected: set[str]
) -> None:
    assert codes(cards, [condition(field, operation, value)]) == expected


def test_every_operation_of_every_type_is_exercised() -> None:
    types = {
        "segment": "text",
        "contact_email": "email",
        "mrr": "number",
        "renewal_date": "date",
        "owner": "user",
        "plano": "choice",
        "licencas": "number",
        "kickoff": "date",
        "estrategico": "boolean",
        "regiao": "text",
        "open_playbook": "playbook",
        "loaded_playbook": "playbook",
        "open_tasks": "count",
        "overdue_tasks": "count",
        "next_task_due": "date",
    }
    covered = {(types[field], operation) for field, operation, _, _ in CASES}
    wanted = {(kind, op) for kind, ops in OPERATIONS.items() for op in ops}
    assert wanted - covered == set()


class TestCombining:
    def test_all_needs_every_condition(self, cards: Service) -> None:
        conditions = [condition("segment", "contains", "varejo"), condition("mrr", "gt", 600)]
        assert codes(cards, conditions, "all") == {"A"}

    def test_any_needs_one_condition(self, cards: Service) -> None:
        conditions = [condition("segment", "contains", "varejo"), condition("mrr", "gt", 600)]
        assert codes(cards, conditions, "any") == {"A", "B", "C"}

    def test_three_categories_together(self, cards: Service) -> None:
        conditions = [
            condition("owner", "equals", ANA),
            condition("estrategico", "equals", True),
            condition("overdue_tasks", "gt", 0),
        ]
        assert codes(cards, conditions) == {"A"}

    @pytest.mark.parametrize("match", ["all", "any"])
    def test_no_conditions_select_everyone(self, cards: Service, match: str) -> None:
        assert codes(cards, [], match) == EVERYONE


class TestRefusal:
    def problems(self, service: Service, conditions: list[dict[str, Any]]) -> list[str]:
        with service.sessions() as session:
            return [str(p) for p in validate_conditions(session, conditions)]

    def test_unknown_field_is_named(self, cards: Service) -> None:
        [problem] = self.problems(cards, [condition("receita", "gt", 1)])
        assert "'receita'" in problem
        assert "campo desconhecido (unknown field)" in problem
        assert "condição 1" in problem

    def test_operation_not_valid_for_type(self, cards: Service) -> None:
        [problem] = self.problems(cards, [condition("mrr", "contains", "1")])
        assert "'mrr'" in problem
        assert "contains" in problem and "number" in problem

    @pytest.mark.parametrize(
        ("field", "operation", "value", "words"),
        [
            ("mrr", "gt", "mil", "wrong type"),
            ("mrr", "gt", True, "wrong type"),
            ("licencas", "between", [50, 5], "low above high"),
            ("renewal_date", "before", "amanhã", "invalid date"),
            ("renewal_date", "within_next_days", -1, "days"),
            ("renewal_date", "within_next_days", "30", "days"),
            ("estrategico", "equals", "sim", "wrong type"),
            ("plano", "equals", "diamante", "unknown choice"),
            ("plano", "one_of", "ouro", "a list"),
            ("open_tasks", "gt", 1.5, "count"),
            ("owner", "equals", "ninguem@cs.example.com.br", "unknown user"),
            ("open_playbook", "equals", "Churn", "unknown playbook"),
            ("segment", "is_empty", "x", "takes no value"),
            ("segment", "equals", ["Varejo"], "wrong type"),
        ],
    )
    def test_wrong_value_is_refused_naming_the_field(
        self, cards: Service, field: str, operation: str, value: Any, words: str
    ) -> None:
        [problem] = self.problems(cards, [condition(field, operation, value)])
        assert f"'{field}'" in problem
        assert words in problem

    def test_every_problem_is_reported_at_once(self, cards: Service) -> None:
        problems = self.problems(
            cards,
            [
                condition("mrr", "gt", 1),
                condition("receita", "gt", 1),
                {"category": "custom", "field": "mrr", "operation": "gt", "value": 1},
            ],
        )
        assert [p.split(",")[0] for p in problems] == [
            "condição 2 (condition)",
            "condição 3 (condition)",
        ]

    def test_unknown_category(self, cards: Service) -> None:
        [problem] = self.problems(
            cards, [{"category": "contrato", "field": "mrr", "operation": "gt", "value": 1}]
        )
        assert "unknown category" in problem


def test_stored_form_fills_category_and_writes_dates_as_text(cards: Service) -> None:
    with cards.sessions() as session:
        stored, problems = normalise_conditions(
            session,
            [
                condition("renewal_date", "before", date(2025, 7, 1)),
                condition("plano", "is_empty"),
                condition("overdue_tasks", "gte", 2),
            ],
        )
    assert problems == []
    assert stored == [
        {
            "category": "customer",
            "field": "renewal_date",
            "operation": "before",
            "value": "2025-07-01",
        },
        {"category": "custom", "field": "plano", "operation": "is_empty"},
        {"category": "history", "field": "overdue_tasks", "operation": "gte", "value": 2},
    ]


def test_vocabulary_is_published_as_data(cards: Service) -> None:
    with cards.sessions() as session:
        data = vocabulary(session).as_data()
    fields = {(f["category"], f["field"]): f for f in data["fields"]}
    assert fields["custom", "plano"]["choices"] == ["ouro", "prata", "bronze"]
    assert fields["history", "overdue_tasks"]["operations"] == list(OPERATIONS["count"])
    assert fields["customer", "owner"]["type"] == "user"
    assert data["operations"]["within_next_days"]["value"] == "days"
    assert [c["name"] for c in data["categories"]] == ["customer", "custom", "history"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mrr gt 1.500,50", {"field": "mrr", "operation": "gt", "value": 1500.5}),
        ("custom.plano one_of ouro, prata", {"field": "plano", "operation": "one_of",
                                              "value": ["ouro", "prata"]}),
        ("history.open_tasks between 1..3", {"field": "open_tasks", "operation": "between",
                                             "value": [1, 3]}),
        ("estrategico equals sim", {"field": "estrategico", "operation": "equals",
                                    "value": True}),
        ("segment is_empty", {"field": "segment", "operation": "is_empty"}),
        ("renewal_date within_next_days 30", {"field": "renewal_date",
                                              "operation": "within_next_days", "value": 30}),
    ],
)  # fmt: skip
def test_condition_from_a_command_line(cards: Service, text: str, expected: dict) -> None:
    with cards.sessions() as session:
        parsed = condition_from_text(vocabulary(session), text)
    assert {k: v for k, v in parsed.items() if k != "category"} == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("today", TODAY),
        ("+7d", date(2025, 6, 17)),
        ("-2w", date(2025, 5, 27)),
        ("+1m", date(2025, 7, 10)),
        ("2025-01-31", date(2025, 1, 31)),
    ],
)
def test_relative_dates(value: str, expected: date) -> None:
    assert resolve_date(value, TODAY) == expected


def test_month_steps_keep_the_last_day() -> None:
    assert resolve_date("+1m", date(2025, 1, 31)) == date(2025, 2, 28)


# The cards are only read, so one set of them serves every example.
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    operation=st.sampled_from(["equals", "not_equals", "gt", "gte", "lt", "lte"]),
    threshold=st.sampled_from([0, 5, 49, 50, 51, 100, 101]),
)
def test_custom_numbers_agree_with_python(cards: Service, operation: str, threshold: int) -> None:
    """The SQL a custom number compiles to selects what the same test in Python does."""
    compare = {
        "equals": lambda v: v is not None and v == threshold,
        "not_equals": lambda v: v is None or v != threshold,
        "gt": lambda v: v is not None and v > threshold,
        "gte": lambda v: v is not None and v >= threshold,
        "lt": lambda v: v is not None and v < threshold,
        "lte": lambda v: v is not None and v <= threshold,
    }[operation]
    expected = {code for code, _, custom in CARDS if compare(custom.get("licencas"))}
    assert codes(cards, [condition("licencas", operation, threshold)]) == expected
