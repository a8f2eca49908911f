"""Rules: their definitions and their cadence.

A rule selects customers by conditions (``engine.conditions``) on a cadence
and acts on each of them (``engine.actions``). This module owns:

* definitions: create, edit, enable, disable, remove, list, show; saving checks
  the cadence, every condition and every action, and refuses with one line per
  problem naming the field or action;
* cadence: :func:`next_due` computes due times as wall-clock times in the
  rule's time zone, so a daylight-saving change neither skips nor doubles a
  run; ``Rule.next_run_at`` is the only record of when a rule is due, and
  :func:`due_rule_ids` lists the rules due now.

Previews and runs are ``engine.runs``; rule files are ``engine.rule_files``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from engine.actions import normalise_actions
from engine.conditions import add_months, normalise_conditions
from engine.definition_files import plain_data
from engine.errors import InvalidRule, RuleExists, RuleNotFound
from engine.lookup import find_by_id_or_name
from engine.models import CADENCE_UNITS, PlaybookLoad, Rule, RuleRun
from portaria.db import utcnow

log = logging.getLogger(__name__)

DEFAULT_TIMEZONE = "America/Sao_Paulo"
UNIT_WORDS = {
    **{unit: unit for unit in CADENCE_UNITS},
    "minutos": "minutes",
    "horas": "hours",
    "dias": "days",
    "semanas": "weeks",
    "meses": "months",
}
UNIT_LABELS = {
    "minutes": "minuto(s)",
    "hours": "hora(s)",
    "days": "dia(s)",
    "weeks": "semana(s)",
    "months": "mês(es)",
}
RULE_KEYS = (
    "name",
    "active",
    "status",
    "every",
    "unit",
    "time_of_day",
    "timezone",
    "starts_at",
    "match",
    "conditions",
    "actions",
)

_TIME = re.compile(r"^\s*(\d{1,2})(?::|h)(\d{2})(?::(\d{2}))?\s*$")


# Definitions -----------------------------------------------------------------------------


def get_rule(session: Session, rule: int | str | Rule) -> Rule:
    """A rule by id, by exact name, by name ignoring case, or by id written as text."""
    found = find_by_id_or_name(session, Rule, rule)
    if found is None:
        raise RuleNotFound(f"Regra não encontrada (rule not found): {rule}")
    return found


def list_rules(session: Session) -> list[Rule]:
    return list(session.scalars(select(Rule).order_by(Rule.name)))


def create_rule(
    session: Session,
    definition: Mapping[str, Any],
    *,
    now: datetime | None = None,
    default_timezone: str = DEFAULT_TIMEZONE,
) -> Rule:
    """Check and store a rule given as in a rule file (see ``engine.rule_files``)."""
    now = now or utcnow()
    values = _checked_definition(session, definition, default_timezone=default_timezone, now=now)
    clash = session.scalar(select(Rule).where(func.lower(Rule.name) == values["name"].lower()))
    if clash is not None:
        raise RuleExists(f"Já existe uma regra com esse nome (rule exists): {clash.name}")
    rule = Rule(**values)
    rule.next_run_at = first_due(rule, now) if rule.status == "active" else None
    session.add(rule)
    session.flush()
    log.info(
        "rule %s created: %s, every %s %s, next run %s",
        rule.id,
        rule.name,
        rule.every,
        rule.unit,
        rule.next_run_at,
    )
    return rule


def edit_rule(
    session: Session,
    rule: int | str | Rule,
    changes: Mapping[str, Any],
    *,
    now: datetime | None = None,
) -> Rule:
    """Change parts of a rule; the whole rule is checked again before anything is kept.

    A change of cadence (or of its start) computes the next run again from now.
    """
    now = now or utcnow()
    found = get_rule(session, rule)
    merged = {**rule_definition(found), **changes}
    values = _checked_definition(session, merged, default_timezone=found.timezone, now=now)
    if values["name"].lower() != found.name.lower():
        clash = session.scalar(
            select(Rule).where(
                func.lower(Rule.name) == values["name"].lower(), Rule.id != found.id
            )
        )
        if clash is not None:
            raise RuleExists(f"Já existe uma regra com esse nome (rule exists): {clash.name}")
    cadence = ("every", "unit", "time_of_day", "timezone", "starts_at", "status")
    recompute = any(getattr(found, key) != values[key] for key in cadence)
    for key, value in values.items():
        setattr(found, key, value)
    if recompute or (found.status == "active" and found.next_run_at is None):
        found.next_run_at = first_due(found, now) if found.status == "active" else None
    session.flush()
    log.info(
        "rule %s edited: %s; next run %s", found.id, ", ".join(sorted(changes)), found.next_run_at
    )
    return found


def set_rule_active(
    session: Session, rule: int | str | Rule, active: bool, *, now: datetime | None = None
) -> Rule:
    """Enable (due again from now: time spent disabled is not caught up) or disable."""
    found = get_rule(session, rule)
    now = now or utcnow()
    if active and found.status != "active":
        check_runnable(session, found)
    found.status = "active" if active else "inactive"
    found.next_run_at = first_due(found, now) if active else None
    session.flush()
    log.info("rule %s %s; next run %s", found.id, found.status, found.next_run_at)
    return found


def enable_rule(session: Session, rule: int | str | Rule, *, now: datetime | None = None) -> Rule:
    return set_rule_active(session, rule, True, now=now)


def disable_rule(session: Session, rule: int | str | Rule, *, now: datetime | None = None) -> Rule:
    return set_rule_active(session, rule, False, now=now)


@dataclass(frozen=True)
class RemovedRule:
    """What :func:`remove_rule` deleted, for the person who asked."""

    id: int
    name: str
    runs: int
    loads: int


def remove_rule(session: Session, rule: int | str | Rule) -> RemovedRule:
    """Delete a rule and its run history (runs and their email ledger).

    Playbook loads it made, and their tasks, stay on the cards (no longer linked
    to a rule); emails already queued are still sent.
    """
    found = get_rule(session, rule)
    runs = session.scalar(select(func.count(RuleRun.id)).where(RuleRun.rule_id == found.id))
    loads = session.scalar(
        select(func.count(PlaybookLoad.id)).where(PlaybookLoad.rule_id == found.id)
    )
    removed = RemovedRule(id=found.id, name=found.name, runs=runs or 0, loads=loads or 0)
    session.delete(found)
    session.flush()
    log.info("rule %s removed: %s, with %s run(s)", removed.id, removed.name, removed.runs)
    return removed


def rule_history(session: Session, rule: int | str | Rule, *, limit: int = 20) -> list[RuleRun]:
    """The latest runs of a rule, newest first."""
    found = get_rule(session, rule)
    return list(
        session.scalars(
            select(RuleRun)
            .where(RuleRun.rule_id == found.id)
            .order_by(RuleRun.started_at.desc(), RuleRun.id.desc())
            .limit(limit)
        )
    )


def rule_definition(rule: Rule) -> dict[str, Any]:
    """The rule as a file holds it: plain data, start in the rule's local time."""
    zone = ZoneInfo(rule.timezone)
    definition: dict[str, Any] = {
        "name": rule.name,
        "active": rule.status == "active",
        "every": rule.every,
        "unit": rule.unit,
    }
    if rule.time_of_day is not None:
        definition["time_of_day"] = rule.time_of_day.strftime("%H:%M")
    definition |= {
        "timezone": rule.timezone,
        "starts_at": rule.starts_at.astimezone(zone).replace(tzinfo=None).isoformat(),
        "match": rule.match,
        "conditions": [dict(c) for c in rule.conditions],
        "actions": [plain_data(a) for a in rule.actions],
    }
    return definition


def describe_cadence(rule: Rule) -> str:
    """``a cada 1 dia(s) às 08:00 (every 1 days, America/Sao_Paulo)``."""
    at = f" às {rule.time_of_day:%H:%M}" if rule.time_of_day else ""
    word = UNIT_LABELS.get(rule.unit, rule.unit)
    return f"a cada {rule.every} {word}{at} (every {rule.every} {rule.unit}, {rule.timezone})"


def _raise_problems(name: str, problems: list[str]) -> None:
    if problems:
        raise InvalidRule(
            f"regra {name!r} recusada (rule refused): " + "; ".join(problems), problems
        )


def check_runnable(session: Session, rule: Rule) -> None:
    """Refuse a stored rule that no longer holds (a playbook archived, a template removed).

    Enabling, previewing and running a rule check it again: what it refers to
    may have changed since it was saved.
    """
    _, condition_problems = normalise_conditions(session, rule.conditions)
    problems = [str(p) for p in condition_problems]
    normalise_actions(session, rule.actions, problems)
    _raise_problems(rule.name, problems)


def _checked_definition(
    session: Session, definition: Mapping[str, Any], *, default_timezone: str, now: datetime
) -> dict[str, Any]:
    """Rule column values from a definition; InvalidRule lists every problem."""
    problems: list[str] = []
    unknown = sorted(set(definition) - set(RULE_KEYS))
    if unknown:
        problems.append(f"chave desconhecida (unknown key): {', '.join(unknown)}")

    name = str(definition.get("name") or "").strip()
    if not name or len(name) > 200 or "\n" in name:
        problems.append("nome obrigatório, até 200 caracteres (name required)")

    status = _status(definition, problems)
    every = definition.get("every", 1)
    if isinstance(every, bool) or not isinstance(every, int) or not 1 <= every <= 10_000:
        problems.append(f"every: inteiro de 1 a 10000 (whole number): {every!r}")
        every = 1
    unit = UNIT_WORDS.get(str(definition.get("unit", "days")).strip().lower())
    if unit is None:
        problems.append(
            f"unit desconhecida (unknown unit) {definition.get('unit')!r}: "
            f"use {', '.join(CADENCE_UNITS)}"
        )
        unit = "days"
    time_of_day = _time_of_day(definition.get("time_of_day"), problems)
    if time_of_day is not None and unit in ("minutes", "hours"):
        problems.append(
            f"time_of_day só vale para dias, semanas e meses (only with days, weeks, months), "
            f"não para {unit}"
        )
    zone_name = str(definition.get("timezone") or default_timezone).strip()
    try:
        zone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(f"fuso horário desconhecido (unknown time zone): {zone_name!r}")
        zone, zone_name = ZoneInfo(DEFAULT_TIMEZONE), DEFAULT_TIMEZONE
    starts_at = _starts_at(definition.get("starts_at"), zone, time_of_day, now, problems)
    match = str(definition.get("match") or "all").strip().lower()
    if match not in ("all", "any"):
        problems.append(f"match deve ser all ou any (must be all or any): {match!r}")

    raw_conditions = definition.get("conditions") or []
    raw_actions = definition.get("actions") or []
    conditions: list[dict[str, Any]] = []
    if not isinstance(raw_conditions, list):
        problems.append("conditions deve ser uma lista (must be a list)")
    else:
        conditions, condition_problems = normalise_conditions(session, raw_conditions)
        problems.extend(str(p) for p in condition_problems)
    actions: list[dict[str, Any]] = []
    if not isinstance(raw_actions, list) or not raw_actions:
        problems.append("a regra precisa de ao menos uma ação (at least one action)")
    else:
        actions = normalise_actions(session, raw_actions, problems)

    _raise_problems(name or "?", problems)
    return {
        "name": name,
        "status": status,
        "every": every,
        "unit": unit,
        "time_of_day": time_of_day,
        "timezone": zone_name,
        "starts_at": starts_at,
        "match": match,
        "conditions": conditions,
        "actions": actions,
    }


def _status(definition: Mapping[str, Any], problems: list[str]) -> str:
    if "status" in definition:
        status = str(definition["status"]).strip().lower()
        if status not in ("active", "inactive"):
            problems.append(f"status deve ser active ou inactive: {status!r}")
            return "inactive"
        return status
    active = definition.get("active", True)
    if not isinstance(active, bool):
        problems.append(f"active deve ser true ou false (must be true or false): {active!r}")
        return "inactive"
    return "active" if active else "inactive"


def _time_of_day(value: Any, problems: list[str]) -> time | None:
    if value in (None, ""):
        return None
    if isinstance(value, time):
        return value.replace(tzinfo=None, microsecond=0)
    found = _TIME.match(str(value))
    if found:
        hour, minute, second = int(found[1]), int(found[2]), int(found[3] or 0)
        if hour < 24 and minute < 60 and second < 60:
            return time(hour, minute, second)
    problems.append(f"time_of_day inválido (bad time), use HH:MM: {value!r}")
    return None


def _starts_at(
    value: Any, zone: ZoneInfo, time_of_day: time | None, now: datetime, problems: list[str]
) -> datetime:
    """When the cadence starts, as UTC: a local date, local date-time or aware date-time.

    Without one, the next whole minute: a readable start, and a new rule that
    steps in minutes or hours first runs within a minute.
    """
    if value in (None, ""):
        return (now + timedelta(minutes=1)).astimezone(UTC).replace(second=0, microsecond=0)
    moment: datetime | None = None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime.combine(value, time_of_day or time(0))
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            moment = None
    if moment is None:
        problems.append(f"starts_at inválido (bad start), use AAAA-MM-DDTHH:MM: {value!r}")
        return now.astimezone(UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return moment.astimezone(UTC)


# Cadence ---------------------------------------------------------------------------------


def next_due(rule: Rule, after: datetime) -> datetime:
    """The first slot of the rule's cadence strictly after ``after`` (UTC).

    Minutes and hours step in elapsed time from ``starts_at``. Days, weeks and
    months step in the rule's calendar: the same wall-clock time (``time_of_day``,
    else the start's local time) on each due day, whatever the UTC offset that
    day. A wall-clock time that does not exist (the hour skipped when clocks go
    forward) runs at the same offset as before the change, one hour later by
    the clock; one that happens twice (clocks go back) runs the first time.
    Months keep the start's day, or the month's last day when shorter.
    """
    start = rule.starts_at.astimezone(UTC)
    after = after.astimezone(UTC)
    if rule.unit in ("minutes", "hours"):
        step = (
            timedelta(minutes=rule.every)
            if rule.unit == "minutes"
            else timedelta(hours=rule.every)
        )
        if after < start:
            return start
        return start + step * ((after - start) // step + 1)

    zone = ZoneInfo(rule.timezone)
    local_start = start.astimezone(zone)
    # fold=0 picks the rule the docstring states for skipped and repeated clock
    # times; a time carrying fold=1 would land a skipped hour on the day before.
    clock = (rule.time_of_day or local_start.time()).replace(tzinfo=None, fold=0)
    anchor = local_start.date()

    def slot(index: int) -> datetime:
        if rule.unit == "months":
            day = add_months(anchor, index * rule.every)
        else:
            days = rule.every * (7 if rule.unit == "weeks" else 1)
            day = anchor + timedelta(days=index * days)
        return datetime.combine(day, clock, tzinfo=zone).astimezone(UTC)

    local_after = max(after, start).astimezone(zone).date()
    if rule.unit == "months":
        elapsed = (local_after.year - anchor.year) * 12 + local_after.month - anchor.month
        index = max(0, elapsed // rule.every - 1)
    else:
        span = rule.every * (7 if rule.unit == "weeks" else 1)
        index = max(0, (local_after - anchor).days // span - 1)
    while True:
        candidate = slot(index)
        if candidate >= start and candidate > after:
            return candidate
        index += 1


def first_due(rule: Rule, now: datetime) -> datetime:
    """The first slot at or after both the start and ``now``: when a saved rule runs first."""
    moment = max(rule.starts_at.astimezone(UTC), now.astimezone(UTC))
    return next_due(rule, moment - timedelta(microseconds=1))


def due_rule_ids(session: Session, now: datetime) -> list[int]:
    """Active rules whose next run is due at ``now``, the most overdue first."""
    return list(
        session.scalars(
            select(Rule.id)
            .where(Rule.status == "active", Rule.next_run_at <= now)
            .order_by(Rule.next_run_at, Rule.id)
        )
    )
