"""The condition vocabulary of rules: what can be asked of a customer card, and how.

This module owns three things, kept apart so each can be read alone:

* the vocabulary as data: categories, fields with their types, and the
  operations each type allows (:data:`OPERATIONS`, :data:`OPERATION_LABELS`,
  :func:`vocabulary`), published so the CLI and a web console can offer them;
* validation: :func:`validate_conditions` returns one problem per wrong
  condition, naming the field (unknown field, operation not valid for the
  field's type, value of the wrong type, unknown playbook or user);
* compilation to SQL: :func:`condition_clause` turns a list of conditions and
  ``all``/``any`` into one boolean expression over ``Customer``, so matching
  runs in the database, never as a Python loop over every customer.

A condition is a mapping ``{"category", "field", "operation", "value"}``.
Categories:

``customer``
    the card's own columns (``engine.customers.CUSTOMER_FIELDS``).
``custom``
    admin-defined fields (``CustomField``), read from ``Customer.custom``.
``history``
    the card's tasks and playbook loads: ``open_playbook`` (an open load of a
    playbook, by name), ``loaded_playbook`` (a load, open or closed),
    ``open_tasks`` and ``overdue_tasks`` (counts) and ``next_task_due`` (the
    earliest due date of the open tasks).

Date values are ISO dates (``2025-03-01``) or relative to today in the rule's
time zone: ``today``/``hoje``, ``+7d``, ``-2w``, ``+1m``. Text comparisons
ignore case (on SQLite, only for unaccented letters). ``not_equals`` also
matches an empty value, as a person reading "segment is not Varejo" expects.
"""

from __future__ import annotations

import calendar as month_calendar
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    exists,
    false,
    func,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.orm import Session

from engine.customers import customer_fields, parse_boolean, parse_number
from engine.errors import InvalidCustomerValue
from engine.models import Customer, Playbook, PlaybookLoad, Task
from provisioning.models import User

CATEGORIES: dict[str, str] = {
    "customer": "Campos do cliente (customer fields)",
    "custom": "Campos personalizados (custom fields)",
    "history": "Tarefas e playbooks (tasks and playbook history)",
}

# Operations each field type allows. "count" is a history number that is never
# empty; "playbook" takes a playbook name; "user" takes a user's email.
OPERATIONS: dict[str, tuple[str, ...]] = {
    "text": (
        "equals",
        "not_equals",
        "contains",
        "starts_with",
        "one_of",
        "is_empty",
        "is_not_empty",
    ),
    "email": (
        "equals",
        "not_equals",
        "contains",
        "starts_with",
        "one_of",
        "is_empty",
        "is_not_empty",
    ),
    "choice": ("equals", "not_equals", "one_of", "is_empty", "is_not_empty"),
    "number": (
        "equals",
        "not_equals",
        "one_of",
        "gt",
        "gte",
        "lt",
        "lte",
        "between",
        "is_empty",
        "is_not_empty",
    ),
    "count": ("equals", "not_equals", "gt", "gte", "lt", "lte", "between"),
    "date": (
        "equals",
        "not_equals",
        "before",
        "after",
        "between",
        "within_last_days",
        "within_next_days",
        "is_empty",
        "is_not_empty",
    ),
    "boolean": ("equals", "not_equals", "is_empty", "is_not_empty"),
    "user": ("equals", "not_equals", "one_of", "is_empty", "is_not_empty"),
    "playbook": ("equals", "not_equals", "one_of", "is_empty", "is_not_empty"),
}

# What each operation expects as value: nothing, one value, a list, a pair, or days.
VALUE_SHAPES: dict[str, str] = {
    "equals": "one",
    "not_equals": "one",
    "contains": "one",
    "starts_with": "one",
    "one_of": "list",
    "gt": "one",
    "gte": "one",
    "lt": "one",
    "lte": "one",
    "between": "pair",
    "is_empty": "none",
    "is_not_empty": "none",
    "before": "one",
    "after": "one",
    "within_last_days": "days",
    "within_next_days": "days",
}

OPERATION_LABELS: dict[str, tuple[str, str]] = {
    "equals": ("é igual a", "equals"),
    "not_equals": ("é diferente de", "does not equal"),
    "contains": ("contém", "contains"),
    "starts_with": ("começa com", "starts with"),
    "one_of": ("é um de", "is one of"),
    "gt": ("maior que", "greater than"),
    "gte": ("maior ou igual a", "greater than or equal to"),
    "lt": ("menor que", "less than"),
    "lte": ("menor ou igual a", "less than or equal to"),
    "between": ("entre", "between"),
    "is_empty": ("está vazio", "is empty"),
    "is_not_empty": ("está preenchido", "is not empty"),
    "before": ("antes de", "before"),
    "after": ("depois de", "after"),
    "within_last_days": ("nos últimos N dias", "within the last N days"),
    "within_next_days": ("nos próximos N dias", "within the next N days"),
}

# For a playbook field, what the operations mean in words.
_PLAYBOOK_MEANING = {
    "equals": "has a load of this playbook",
    "not_equals": "has no load of this playbook",
    "one_of": "has a load of any of these playbooks",
    "is_empty": "has no load of any playbook",
    "is_not_empty": "has a load of some playbook",
}

HISTORY_FIELDS: dict[str, tuple[str, str]] = {
    "open_playbook": ("playbook", "Tem playbook em aberto (has an open load of playbook)"),
    "loaded_playbook": ("playbook", "Já recebeu o playbook (playbook ever loaded)"),
    "open_tasks": ("count", "Tarefas abertas (open tasks)"),
    "overdue_tasks": ("count", "Tarefas atrasadas (overdue tasks)"),
    "next_task_due": ("date", "Próximo vencimento de tarefa (next open task due)"),
}

# The keys a condition may have; any other is refused, as at the rule and action level.
CONDITION_KEYS = frozenset({"category", "field", "operation", "value"})
# Bounds of numeric values: days up to a century (a date that far still exists), and
# numbers a database column holds (a 64-bit integer).
MAX_DAYS = 36_500
MAX_NUMBER = 2**63 - 1

_RELATIVE_DATE = re.compile(r"^\s*([+-])\s*(\d{1,4})\s*([dwm])\s*$", re.IGNORECASE)
_TODAY_WORDS = frozenset({"today", "hoje"})


@dataclass(frozen=True)
class ConditionField:
    """One field a condition can test: where it lives, its type and its label."""

    category: str
    name: str
    type: str
    label: str
    choices: tuple[str, ...] = ()
    # The Customer attribute holding a standard field's value (owner_id for the owner).
    column: str | None = None

    @property
    def operations(self) -> tuple[str, ...]:
        return OPERATIONS[self.type]


@dataclass(frozen=True)
class ConditionProblem:
    """Why one condition of a rule cannot be used; ``position`` counts from 1."""

    position: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"condição {self.position} (condition), campo {self.field!r}: {self.message}"


class InvalidDate(ValueError):
    """A date value that is neither ISO nor relative to today."""


def resolve_date(value: object, today: date) -> date:
    """A date from an ISO date, a ``date``, or a value relative to ``today`` (``+7d``)."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if not isinstance(value, str):
        raise InvalidDate(f"data inválida (invalid date): {value!r}")
    text = value.strip()
    if text.lower() in _TODAY_WORDS:
        return today
    relative = _RELATIVE_DATE.match(text)
    if relative:
        sign = 1 if relative.group(1) == "+" else -1
        amount = sign * int(relative.group(2))
        unit = relative.group(3).lower()
        if unit == "d":
            return today + timedelta(days=amount)
        if unit == "w":
            return today + timedelta(weeks=amount)
        return add_months(today, amount)
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidDate(
            f"data inválida (invalid date): {value!r}; use AAAA-MM-DD, 'today', '+7d', "
            "'-2w' ou '+1m'"
        ) from None


def add_months(day: date, months: int) -> date:
    """The same day ``months`` later, or the month's last day when it has fewer days."""
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    last = month_calendar.monthrange(year, month + 1)[1]
    return date(year, month + 1, min(day.day, last))


@dataclass
class Vocabulary:
    """Every field conditions can use right now (custom fields come from the database)."""

    fields: dict[tuple[str, str], ConditionField]
    playbooks: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()

    def find(self, category: str | None, name: str) -> ConditionField | None:
        if category:
            return self.fields.get((category, name))
        for category_name in CATEGORIES:
            found = self.fields.get((category_name, name))
            if found is not None:
                return found
        return None

    def names(self, category: str | None = None) -> list[str]:
        return [f.name for f in self.fields.values() if category in (None, f.category)]

    def as_data(self) -> dict[str, Any]:
        """The vocabulary as plain data, for a UI or `portaria rules fields`."""
        return {
            "categories": [{"name": n, "label": label} for n, label in CATEGORIES.items()],
            "fields": [
                {
                    "category": f.category,
                    "field": f.name,
                    "type": f.type,
                    "label": f.label,
                    "operations": list(f.operations),
                    **({"choices": list(f.choices)} if f.choices else {}),
                }
                for f in self.fields.values()
            ],
            "operations": {
                name: {"label": label, "label_en": label_en, "value": VALUE_SHAPES[name]}
                for name, (label, label_en) in OPERATION_LABELS.items()
            },
        }


def vocabulary(session: Session) -> Vocabulary:
    """The fields conditions can use, with the playbooks and users values may name."""
    fields: dict[tuple[str, str], ConditionField] = {}
    for spec in customer_fields(session):
        if spec.kind not in OPERATIONS:
            continue
        category = "custom" if spec.custom else "customer"
        label = spec.label if spec.label == spec.label_en else f"{spec.label} ({spec.label_en})"
        fields[category, spec.key] = ConditionField(
            category, spec.key, spec.kind, label, spec.choices, spec.column
        )
    for name, (kind, label) in HISTORY_FIELDS.items():
        fields["history", name] = ConditionField("history", name, kind, label)
    playbooks = frozenset(session.scalars(select(Playbook.name)))
    users = frozenset(e.lower() for e in session.scalars(select(User.email)))
    return Vocabulary(fields=fields, playbooks=playbooks, users=users)


def validate_conditions(
    session: Session, conditions: Sequence[Mapping[str, Any]]
) -> list[ConditionProblem]:
    """Every problem of ``conditions``, each naming its field; empty when all are usable."""
    return normalise_conditions(session, conditions)[1]


def normalise_conditions(
    session: Session,
    conditions: Sequence[Mapping[str, Any]],
    words: Vocabulary | None = None,
) -> tuple[list[dict[str, Any]], list[ConditionProblem]]:
    """Conditions in their stored form (category filled in, dates as text), and problems."""
    words = words or vocabulary(session)
    normalised: list[dict[str, Any]] = []
    problems: list[ConditionProblem] = []
    for position, condition in enumerate(conditions, start=1):
        try:
            normalised.append(_normalise_one(words, condition))
        except _Refused as refused:
            problems.append(ConditionProblem(position, refused.field, str(refused)))
    return normalised, problems


class _Refused(Exception):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.field = name


def _normalise_one(words: Vocabulary, condition: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(condition, Mapping):
        raise _Refused("?", f"condição deve ser uma tabela (must be a mapping): {condition!r}")
    name = str(condition.get("field") or "").strip()
    category = condition.get("category")
    extra = sorted(str(key) for key in condition if key not in CONDITION_KEYS)
    if extra:
        raise _Refused(name or "?", f"chave desconhecida (unknown key): {', '.join(extra)}")
    if not name:
        raise _Refused("?", "falta o campo (field missing)")
    if category is not None and category not in CATEGORIES:
        raise _Refused(
            name,
            f"categoria desconhecida (unknown category) {category!r}; "
            f"use: {', '.join(CATEGORIES)}",
        )
    spec = words.find(category, name)
    if spec is None:
        known = ", ".join(words.names(category)) or "-"
        raise _Refused(name, f"campo desconhecido (unknown field); campos: {known}")

    operation = str(condition.get("operation") or "").strip()
    if operation not in spec.operations:
        raise _Refused(
            name,
            f"operação {operation!r} não vale para o tipo {spec.type} (operation not valid "
            f"for type {spec.type}); use: {', '.join(spec.operations)}",
        )
    value = _normalise_value(words, spec, operation, condition.get("value"))
    stored: dict[str, Any] = {"category": spec.category, "field": name, "operation": operation}
    if VALUE_SHAPES[operation] != "none":
        stored["value"] = value
    return stored


def _normalise_value(words: Vocabulary, spec: ConditionField, operation: str, value: Any) -> Any:
    shape = VALUE_SHAPES[operation]
    if shape == "none":
        if value not in (None, "", []):
            raise _Refused(spec.name, f"{operation} não leva valor (takes no value)")
        return None
    if shape == "days":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_DAYS:
            raise _Refused(
                spec.name,
                f"{operation} pede um número inteiro de dias de 0 a {MAX_DAYS} "
                f"(whole days, 0 to {MAX_DAYS}): {value!r}",
            )
        return value
    if shape == "list":
        if not isinstance(value, list | tuple) or not value:
            raise _Refused(spec.name, f"one_of pede uma lista não vazia (a list): {value!r}")
        return [_scalar(words, spec, item) for item in value]
    if shape == "pair":
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise _Refused(
                spec.name, f"between pede dois valores [de, até] (two values): {value!r}"
            )
        low, high = (_scalar(words, spec, item) for item in value)
        if _in_wrong_order(spec, low, high):
            raise _Refused(spec.name, f"between: {low} é maior que {high} (low above high)")
        return [low, high]
    return _scalar(words, spec, value)


def _in_wrong_order(spec: ConditionField, low: Any, high: Any) -> bool:
    if spec.type != "date":
        return bool(low > high)
    # Two relative dates, or two fixed ones, keep their order whatever today is;
    # a fixed and a relative one may be in either order depending on the day.
    if _is_relative_date(low) != _is_relative_date(high):
        return False
    reference = date(2000, 1, 1)
    return resolve_date(low, reference) > resolve_date(high, reference)


def _is_relative_date(value: str) -> bool:
    text = value.strip().lower()
    return text in _TODAY_WORDS or bool(_RELATIVE_DATE.match(text))


def _scalar(words: Vocabulary, spec: ConditionField, value: Any) -> Any:
    kind = spec.type
    wrong = f"valor de tipo errado para {kind} (wrong type of value): {value!r}"
    if kind in ("number", "count"):
        if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
            raise _Refused(spec.name, wrong)
        finite = value.is_finite() if isinstance(value, Decimal) else math.isfinite(value)
        if not finite or abs(value) > MAX_NUMBER:
            raise _Refused(
                spec.name,
                f"número fora do intervalo (number out of range): {value!r}; "
                f"use um número finito de até {MAX_NUMBER}",
            )
        if kind == "count" and (value < 0 or value != int(value)):
            raise _Refused(spec.name, f"contagem pede inteiro >= 0 (count): {value!r}")
        return int(value) if kind == "count" or value == int(value) else float(value)
    if kind == "date":
        if isinstance(value, date):  # TOML and YAML read dates themselves
            return resolve_date(value, value).isoformat()
        try:
            resolve_date(value, date(2000, 1, 1))
        except InvalidDate as exc:
            raise _Refused(spec.name, str(exc)) from None
        return value.strip()
    if kind == "boolean":
        if not isinstance(value, bool):
            raise _Refused(spec.name, f"{wrong}; use true ou false")
        return value
    if not isinstance(value, str) or not value.strip():
        raise _Refused(spec.name, wrong)
    value = value.strip()
    if kind == "choice" and spec.choices and value not in spec.choices:
        raise _Refused(
            spec.name,
            f"opção desconhecida (unknown choice) {value!r}; use: {', '.join(spec.choices)}",
        )
    if kind == "user" and value.lower() not in words.users:
        raise _Refused(spec.name, f"usuário não encontrado (unknown user): {value}")
    if kind == "playbook" and value not in words.playbooks:
        raise _Refused(spec.name, f"playbook não encontrado (unknown playbook): {value}")
    return value


def describe_condition(condition: Mapping[str, Any]) -> str:
    """One line a person reads: ``mrr maior que (greater than) 1000``."""
    operation = condition.get("operation", "?")
    label = OPERATION_LABELS.get(operation, (operation, operation))
    shown = f"{condition.get('field')} {label[0]} ({label[1]})"
    if "value" in condition:
        value = condition["value"]
        shown += " " + (", ".join(map(str, value)) if isinstance(value, list) else str(value))
    return shown


# Compilation ---------------------------------------------------------------------------


@dataclass
class _Target:
    """How to read one field in SQL: its expression and the flavour of its values."""

    expression: ColumnElement[Any]
    flavour: str  # column | json


def condition_clause(
    session: Session,
    conditions: Sequence[Mapping[str, Any]],
    *,
    match: str,
    today: date,
    words: Vocabulary | None = None,
) -> ColumnElement[bool]:
    """One boolean SQL expression over ``Customer`` for the conditions combined by ``match``.

    No conditions select every customer. Conditions must have been validated:
    an unknown field or operation raises ``ValueError`` here.
    """
    if match not in ("all", "any"):
        raise ValueError(f"match must be 'all' or 'any', not {match!r}")
    words = words or vocabulary(session)
    clauses = [_compile_one(words, c, today) for c in conditions]
    if not clauses:
        return true()
    return and_(*clauses) if match == "all" else or_(*clauses)


def matching_customer_ids(
    session: Session,
    conditions: Sequence[Mapping[str, Any]],
    *,
    match: str,
    today: date,
) -> list[int]:
    """Ids of the customers the conditions select, in id order, computed by the database."""
    clause = condition_clause(session, conditions, match=match, today=today)
    return list(session.scalars(select(Customer.id).where(clause).order_by(Customer.id)))


def _compile_one(
    words: Vocabulary, condition: Mapping[str, Any], today: date
) -> ColumnElement[bool]:
    spec = words.find(condition.get("category"), condition["field"])
    if spec is None:
        raise ValueError(f"unknown field {condition['field']!r}")
    operation = condition["operation"]
    if operation not in spec.operations:
        raise ValueError(f"operation {operation!r} not valid for {spec.type}")
    value = condition.get("value")

    if spec.type == "playbook":
        return _playbook_clause(spec.name, operation, value)
    target = _target(spec, today)
    compile_type = _COMPILERS[spec.type]
    return compile_type(target, operation, value, today)


def _target(spec: ConditionField, today: date) -> _Target:
    if spec.category == "custom":
        item = Customer.custom[spec.name]
        if spec.type == "number":
            return _Target(item.as_float(), "json")
        if spec.type == "boolean":
            return _Target(item.as_boolean(), "json")
        return _Target(item.as_string(), "json")
    if spec.category == "history":
        return _Target(_history_expression(spec.name, today), "column")
    return _Target(getattr(Customer, spec.column or spec.name), "column")


def _history_expression(name: str, today: date) -> ColumnElement[Any]:
    if name == "open_tasks":
        return (
            select(func.count(Task.id))
            .where(Task.customer_id == Customer.id, Task.status == "open")
            .correlate(Customer)
            .scalar_subquery()
        )
    if name == "overdue_tasks":
        return (
            select(func.count(Task.id))
            .where(
                Task.customer_id == Customer.id,
                Task.status == "open",
                Task.due_date < today,
            )
            .correlate(Customer)
            .scalar_subquery()
        )
    if name == "next_task_due":
        return (
            select(func.min(Task.due_date))
            .where(Task.customer_id == Customer.id, Task.status == "open")
            .correlate(Customer)
            .scalar_subquery()
        )
    raise ValueError(f"unknown history field {name!r}")


def _playbook_clause(name: str, operation: str, value: Any) -> ColumnElement[bool]:
    query = select(PlaybookLoad.id).where(PlaybookLoad.customer_id == Customer.id)
    if name == "open_playbook":
        query = query.where(PlaybookLoad.status == "open")
    if operation in ("equals", "not_equals", "one_of"):
        names = value if isinstance(value, list) else [value]
        query = query.join(Playbook, Playbook.id == PlaybookLoad.playbook_id).where(
            Playbook.name.in_(names)
        )
    found = exists(query.correlate(Customer))
    return not_(found) if operation in ("not_equals", "is_empty") else found


def _text(target: _Target, operation: str, value: Any, today: date) -> ColumnElement[bool]:
    column = target.expression
    if operation == "equals":
        return func.lower(column) == value.lower()
    if operation == "not_equals":
        return or_(column.is_(None), func.lower(column) != value.lower())
    if operation == "one_of":
        return func.lower(column).in_([item.lower() for item in value])
    if operation == "contains":
        return column.icontains(value, autoescape=True)
    if operation == "starts_with":
        return column.istartswith(value, autoescape=True)
    return _emptiness(column, operation, blank=True)


def _choice(target: _Target, operation: str, value: Any, today: date) -> ColumnElement[bool]:
    column = target.expression
    if operation == "equals":
        return column == value
    if operation == "not_equals":
        return or_(column.is_(None), column != value)
    if operation == "one_of":
        return column.in_(value)
    return _emptiness(column, operation, blank=True)


def _number(target: _Target, operation: str, value: Any, today: date) -> ColumnElement[bool]:
    column = target.expression
    comparisons: dict[str, Callable[[Any], ColumnElement[bool]]] = {
        "equals": lambda v: column == v,
        "gt": lambda v: column > v,
        "gte": lambda v: column >= v,
        "lt": lambda v: column < v,
        "lte": lambda v: column <= v,
    }
    if operation in comparisons:
        return comparisons[operation](value)
    if operation == "not_equals":
        return or_(column.is_(None), column != value)
    if operation == "one_of":
        return column.in_(value)
    if operation == "between":
        return and_(column >= value[0], column <= value[1])
    return _emptiness(column, operation, blank=False)


def _boolean(target: _Target, operation: str, value: Any, today: date) -> ColumnElement[bool]:
    column = target.expression
    wanted = true() if value else false()
    if operation == "equals":
        return column == wanted
    if operation == "not_equals":
        return or_(column.is_(None), column != wanted)
    return _emptiness(column, operation, blank=False)


def _user(target: _Target, operation: str, value: Any, today: date) -> ColumnElement[bool]:
    column = target.expression
    if operation in ("equals", "not_equals", "one_of"):
        emails = [v.lower() for v in (value if isinstance(value, list) else [value])]
        user_ids = select(User.id).where(func.lower(User.email).in_(emails))
        if operation == "not_equals":
            return or_(column.is_(None), column.not_in(user_ids))
        return column.in_(user_ids)
    return _emptiness(column, operation, blank=False)


def _date(target: _Target, operation: str, value: Any, today: date) -> ColumnElement[bool]:
    if operation in ("is_empty", "is_not_empty"):
        return _emptiness(target.expression, operation, blank=target.flavour == "json")
    low, high = _date_bounds(operation, value, today)
    inside = _date_range(target, low, high)
    if operation == "not_equals":
        return or_(target.expression.is_(None), not_(inside))
    return inside


def _date_bounds(operation: str, value: Any, today: date) -> tuple[date | None, date | None]:
    """Inclusive first and last day an operation accepts; None is open-ended."""
    if operation in ("equals", "not_equals"):
        day = resolve_date(value, today)
        return day, day
    if operation == "before":
        return None, resolve_date(value, today) - timedelta(days=1)
    if operation == "after":
        return resolve_date(value, today) + timedelta(days=1), None
    if operation == "between":
        return resolve_date(value[0], today), resolve_date(value[1], today)
    if operation == "within_last_days":
        return today - timedelta(days=value), today
    if operation == "within_next_days":
        return today, today + timedelta(days=value)
    raise ValueError(f"operation {operation!r} not valid for dates")


def _date_range(target: _Target, low: date | None, high: date | None) -> ColumnElement[bool]:
    column = target.expression
    parts: list[ColumnElement[bool]] = []
    if target.flavour == "json":
        # ISO text sorts like the date; "< next day" also admits a stored time part.
        if low is not None:
            parts.append(column >= low.isoformat())
        if high is not None:
            parts.append(column < (high + timedelta(days=1)).isoformat())
    else:
        if low is not None:
            parts.append(column >= low)
        if high is not None:
            parts.append(column <= high)
    return and_(*parts)


def _emptiness(column: ColumnElement[Any], operation: str, *, blank: bool) -> ColumnElement[bool]:
    empty = or_(column.is_(None), column == "") if blank else column.is_(None)
    return empty if operation == "is_empty" else not_(empty)


_COMPILERS: dict[str, Callable[[_Target, str, Any, date], ColumnElement[bool]]] = {
    "text": _text,
    "email": _text,
    "choice": _choice,
    "number": _number,
    "count": _number,
    "date": _date,
    "boolean": _boolean,
    "user": _user,
}


def condition_from_text(words: Vocabulary, text: str) -> dict[str, Any]:
    """A condition from one line, as the CLI takes it: ``FIELD OPERATION [VALUE]``.

    ``FIELD`` may carry its category (``custom.plano``, ``history.open_tasks``).
    Lists (one_of) are separated by commas; a pair (between) by ``..``
    (``1000..5000``). The value is read by the field's type: numbers the
    Brazilian or the English way, ``sim``/``não`` or ``true``/``false``.
    Raises ValueError with what is wrong.
    """
    parts = text.strip().split(None, 2)
    if len(parts) < 2:
        raise ValueError(
            f"condição incompleta (incomplete condition) {text!r}: use CAMPO OPERAÇÃO [VALOR]"
        )
    name, operation = parts[0], parts[1].lower()
    raw = parts[2].strip() if len(parts) > 2 else ""
    category, _, bare = name.rpartition(".")
    spec = words.find(category or None, bare)
    if spec is None:
        raise ValueError(f"campo desconhecido (unknown field): {name}")
    condition: dict[str, Any] = {"category": spec.category, "field": spec.name}
    condition["operation"] = operation
    shape = VALUE_SHAPES.get(operation)
    if shape is None or shape == "none":
        return condition
    if shape == "days":
        condition["value"] = _text_value("count", raw)
    elif shape == "list":
        condition["value"] = [_text_value(spec.type, item) for item in raw.split(",")]
    elif shape == "pair":
        low, separator, high = raw.partition("..")
        if not separator:
            raise ValueError(f"between pede DE..ATÉ (use low..high): {raw!r}")
        condition["value"] = [_text_value(spec.type, low), _text_value(spec.type, high)]
    else:
        condition["value"] = _text_value(spec.type, raw)
    return condition


def _text_value(kind: str, text: str) -> Any:
    text = text.strip()
    try:
        if kind in ("number", "count"):
            number = parse_number(text)
            return int(number) if number == number.to_integral_value() else float(number)
        if kind == "boolean":
            return parse_boolean(text)
    except InvalidCustomerValue as exc:
        raise ValueError(str(exc)) from None
    return text
