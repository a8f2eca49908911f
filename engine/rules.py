"""Rules: their definitions, cadence, preview and runs, and their files.

A rule selects customers by conditions (``engine.conditions``) on a cadence
and acts on each of them. This module owns:

* definitions: create, edit, enable, disable, list, show; saving checks the
  cadence, every condition and every action, and refuses with one line per
  problem naming the field or action;
* cadence: :func:`next_due` computes due times as wall-clock times in the
  rule's time zone, so a daylight-saving change neither skips nor doubles a
  run; ``Rule.next_run_at`` is the only record of when a rule is due;
* actions, as a table of kinds (:data:`ACTION_KINDS`): ``playbook`` loads a
  playbook onto the card unless the card has an open load of it, or had a
  load of it within ``cooldown_days``; ``update`` sets fields (dates may be
  relative to today, ``+7d``); ``email`` renders an admin template and queues
  it in the outbox for the contact, the owner or fixed addresses, at most once
  per recipient per run, at most ``engine.email_cap_per_recipient_per_day``
  per recipient per day across rules (the ``RuleEmail`` ledger), never to an
  unsubscribed address. Each recipient's copy carries its own one-click
  unsubscribe link (``engine.unsubscribe``) and, when the card has an active
  owner, a Reply-To of that owner, so answers reach a person and not the
  access-request mailbox;
* :func:`preview`: who matches and what each action would do, changing nothing;
* runs: :func:`run_rule` records a ``RuleRun`` (start, end, matched, actions
  done, per-customer errors). Customers are handled in batches, each batch in
  a transaction; when something in a batch fails, the batch is redone one
  customer per savepoint, so one customer's failure is recorded and the run
  goes on. Every action is idempotent, so a run interrupted by a crash can be
  resumed (:func:`resume_run`) without doing anything twice. A run is held by
  one process at a time through its heartbeat (``RuleRun.heartbeat_at``):
  whoever claims a run writes it, every batch renews it by compare-and-set and
  stops when another process has taken the run over, and only a run whose
  heartbeat is older than ``engine.run_lease_minutes`` may be claimed again;
* files: rules import from and export to TOML or YAML (playbooks and
  templates referenced by name)::

    [[rules]]
    name = "Renovação em 30 dias"
    active = true
    every = 1
    unit = "days"                 # minutes | hours | days | weeks | months
    time_of_day = "08:00"         # optional; days, weeks and months only
    timezone = "America/Sao_Paulo"
    starts_at = "2025-01-06T08:00:00"   # local time in the rule's zone
    match = "all"                 # all | any

    [[rules.conditions]]
    category = "customer"
    field = "renewal_date"
    operation = "within_next_days"
    value = 30

    [[rules.actions]]
    kind = "playbook"
    playbook = "Renovação"
    cooldown_days = 60

    [[rules.actions]]
    kind = "update"
    set = { stage = "renovação", proximo_contato = "+7d" }

    [[rules.actions]]
    kind = "email"
    template = "Aviso de renovação"
    to = ["contact", "owner", "cs-lideres@empresa.com.br"]
"""

from __future__ import annotations

import json
import logging
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from email.utils import formataddr
from pathlib import Path
from time import monotonic
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings
from engine.calendar import BusinessCalendar, calendar_from_settings
from engine.conditions import (
    InvalidDate,
    add_months,
    condition_clause,
    describe_condition,
    normalise_conditions,
    resolve_date,
)
from engine.customers import (
    CustomerField,
    Owner,
    coerce_value,
    customer_fields,
    owners_by_email,
)
from engine.errors import (
    EmailRenderError,
    EmailTemplateNotFound,
    EngineError,
    InvalidCustomerValue,
    InvalidRule,
    PlaybookNotFound,
    RuleExists,
    RuleNotDue,
    RuleNotFound,
)
from engine.models import (
    CADENCE_UNITS,
    Customer,
    EmailTemplate,
    Playbook,
    PlaybookLoad,
    Rule,
    RuleEmail,
    RuleRun,
    Unsubscribe,
)
from engine.playbooks import get_playbook, load_playbook_many
from engine.templating import RenderedEmail, email_context, get_template, render_email
from engine.unsubscribe import ONE_CLICK, UnsubscribeLinks, unsubscribe_links
from portaria.db import transaction, utcnow
from portaria.letters import single_line
from portaria.outbox import InvalidRecipient, check_recipient, new_message_id, threading_headers
from portaria.outbox_models import OutboxMessage
from provisioning.models import User

log = logging.getLogger(__name__)

DEFAULT_TIMEZONE = "America/Sao_Paulo"
ACTION_KINDS: dict[str, str] = {
    "playbook": "Carregar playbook (load a playbook)",
    "update": "Atualizar campos (update fields)",
    "email": "Enviar e-mail (send an email)",
}
# Words for the recipients of an email action; anything else is a fixed address.
RECIPIENT_WORDS = {
    "contact": "contact",
    "contato": "contact",
    "owner": "owner",
    "responsavel": "owner",
    "responsável": "owner",
}
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
# Fields an update action may not set: a rule renaming codes would break imports.
READ_ONLY_FIELDS = frozenset({"code"})
# Customers per transaction in a run: small enough that a busy SQLite file
# still lets the poller write between batches.
BATCH_SIZE = 200
OUTBOX_KIND = "rule_email"

_TIME = re.compile(r"^\s*(\d{1,2})(?::|h)(\d{2})(?::(\d{2}))?\s*$")


# Definitions -----------------------------------------------------------------------------


def get_rule(session: Session, rule: int | str | Rule) -> Rule:
    """A rule by id, by exact name, by name ignoring case, or by id written as text."""
    if isinstance(rule, Rule):
        return rule
    found: Rule | None = None
    if isinstance(rule, int):
        found = session.get(Rule, rule)
    else:
        name = rule.strip()
        found = session.scalar(select(Rule).where(Rule.name == name))
        if found is None:
            found = session.scalar(
                select(Rule).where(func.lower(Rule.name) == name.lower()).limit(1)
            )
        if found is None and name.isdigit():
            found = session.get(Rule, int(name))
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
    """Check and store a rule given as in a rule file (see the module docstring)."""
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
        _raise_problems(found.name, _current_problems(session, found))
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
        "actions": [_plain(a) for a in rule.actions],
    }
    return definition


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def describe_action(action: Mapping[str, Any]) -> str:
    """One line a person reads for a stored action."""
    kind = action.get("kind")
    if kind == "playbook":
        cooldown = action.get("cooldown_days")
        extra = f", intervalo mínimo {cooldown} dias (cool-down)" if cooldown else ""
        return f"carregar playbook (load) {action.get('playbook')!r}{extra}"
    if kind == "update":
        pairs = ", ".join(f"{k} = {v!r}" for k, v in (action.get("set") or {}).items())
        return f"atualizar (update) {pairs}"
    if kind == "email":
        return f"e-mail {action.get('template')!r} para (to) {', '.join(action.get('to') or [])}"
    return f"ação desconhecida (unknown action) {kind!r}"


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


def _current_problems(session: Session, rule: Rule) -> list[str]:
    """What is wrong with a stored rule now (a playbook archived, a template removed)."""
    _, condition_problems = normalise_conditions(session, rule.conditions)
    problems = [str(p) for p in condition_problems]
    _normalise_actions(session, rule.actions, problems)
    return problems


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
        actions = _normalise_actions(session, raw_actions, problems)

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


# Actions: checking ----------------------------------------------------------------------


def _normalise_actions(
    session: Session, actions: Sequence[Any], problems: list[str]
) -> list[dict[str, Any]]:
    specs: dict[str, CustomerField] | None = None
    owners: dict[str, Owner] | None = None
    stored: list[dict[str, Any]] = []
    for position, action in enumerate(actions, start=1):
        label = f"ação {position} (action)"
        if not isinstance(action, Mapping):
            problems.append(f"{label}: deve ser uma tabela (must be a mapping)")
            continue
        kind = str(action.get("kind") or "").strip().lower()
        if kind not in ACTION_KINDS:
            problems.append(
                f"{label}: tipo desconhecido (unknown kind) {kind!r}; "
                f"use {', '.join(ACTION_KINDS)}"
            )
            continue
        label = f"ação {position} ({kind})"
        allowed = {"playbook": {"playbook", "cooldown_days"}, "update": {"set"}}.get(
            kind, {"template", "to"}
        )
        extra = sorted(set(action) - allowed - {"kind"})
        if extra:
            problems.append(f"{label}: chave desconhecida (unknown key): {', '.join(extra)}")
        if kind == "playbook":
            checked = _playbook_action(session, action, label, problems)
        elif kind == "update":
            if specs is None:
                specs = {spec.key: spec for spec in customer_fields(session)}
                owners = owners_by_email(session)
            checked = _update_action(action, specs, owners or {}, label, problems)
        else:
            checked = _email_action(session, action, label, problems)
        if checked is not None:
            stored.append({"kind": kind, **checked})
    return stored


def _playbook_action(
    session: Session, action: Mapping[str, Any], label: str, problems: list[str]
) -> dict[str, Any] | None:
    name = str(action.get("playbook") or "").strip()
    try:
        playbook = get_playbook(session, name) if name else None
    except PlaybookNotFound:
        playbook = None
    if playbook is None:
        problems.append(f"{label}: playbook não encontrado (playbook not found): {name!r}")
        return None
    if playbook.status != "active":
        problems.append(
            f"{label}: playbook {playbook.name!r} está {playbook.status} e não pode ser "
            "carregado (not loadable)"
        )
    checked: dict[str, Any] = {"playbook": playbook.name}
    cooldown = action.get("cooldown_days")
    if cooldown not in (None, 0):
        if isinstance(cooldown, bool) or not isinstance(cooldown, int) or cooldown < 0:
            problems.append(f"{label}: cooldown_days deve ser inteiro >= 0: {cooldown!r}")
        else:
            checked["cooldown_days"] = cooldown
    return checked


def _update_action(
    action: Mapping[str, Any],
    specs: Mapping[str, CustomerField],
    owners: Mapping[str, Owner],
    label: str,
    problems: list[str],
) -> dict[str, Any] | None:
    values = action.get("set")
    if not isinstance(values, Mapping) or not values:
        problems.append(f"{label}: set deve listar campo = valor (fields to set)")
        return None
    stored: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = str(raw_key).removeprefix("custom.")
        spec = specs.get(key)
        if spec is None or key in READ_ONLY_FIELDS:
            problems.append(f"{label}, campo {raw_key!r}: campo desconhecido (unknown field)")
            continue
        try:
            stored[key] = _stored_update_value(spec, value, owners)
        except (InvalidCustomerValue, InvalidDate) as exc:
            problems.append(f"{label}, campo {key!r}: {exc}")
    return {"set": stored} if stored else None


def _stored_update_value(spec: CustomerField, value: Any, owners: Mapping[str, Owner]) -> Any:
    """A value as the rule stores it: JSON, relative dates kept, owner as email."""
    if value is None or (isinstance(value, str) and not value.strip()):
        coerce_value(spec, None)  # refuses clearing a required field
        return None
    if spec.kind == "date":
        if isinstance(value, str) and _is_relative(value):
            resolve_date(value, date(2000, 1, 1))
            return value.strip().lower()
        day = coerce_value(spec, value)
        return day if isinstance(day, str) else day.isoformat()
    coerced = coerce_value(spec, value, owners)
    if spec.kind == "user":
        return next(o.email for o in owners.values() if o.id == coerced)
    if isinstance(coerced, Decimal):
        return int(coerced) if coerced == coerced.to_integral_value() else float(coerced)
    return coerced


def _is_relative(value: str) -> bool:
    text = value.strip().lower()
    return text in ("today", "hoje") or text[:1] in ("+", "-")


def _email_action(
    session: Session, action: Mapping[str, Any], label: str, problems: list[str]
) -> dict[str, Any] | None:
    name = str(action.get("template") or "").strip()
    try:
        template = get_template(session, name) if name else None
    except EmailTemplateNotFound:
        template = None
    if template is None:
        problems.append(f"{label}: modelo de e-mail não encontrado (template not found): {name!r}")
    to = action.get("to")
    if isinstance(to, str):
        to = [to]
    if not isinstance(to, list) or not to:
        problems.append(f"{label}: to deve listar contact, owner ou endereços (recipients)")
        return None
    recipients: list[str] = []
    for item in to:
        word = RECIPIENT_WORDS.get(str(item).strip().lower())
        if word is not None:
            recipients.append(word)
            continue
        try:
            recipients.append(check_recipient(str(item)).lower())
        except InvalidRecipient:
            problems.append(
                f"{label}: destinatário inválido (bad recipient) {item!r}: "
                "use contact, owner ou um e-mail"
            )
    if template is None:
        return None
    return {"template": template.name, "to": list(dict.fromkeys(recipients))}


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


# Actions: applying ----------------------------------------------------------------------


@dataclass
class RecipientLedger:
    """Which addresses may still get a rule email: unsubscribes, per-run and per-day caps.

    Counts start from the ``RuleEmail`` ledger and grow as emails are queued,
    so a preview can play a whole run forward without writing anything.
    """

    cap: int
    today: date
    unsubscribed: frozenset[str]
    this_run: set[str] = field(default_factory=set)
    today_counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(
        cls, session: Session, *, cap: int, today: date, run_id: int | None
    ) -> RecipientLedger:
        unsubscribed = frozenset(e.lower() for e in session.scalars(select(Unsubscribe.email)))
        ledger = cls(cap=cap, today=today, unsubscribed=unsubscribed)
        if run_id is not None:
            ledger.this_run = set(
                session.scalars(select(RuleEmail.recipient).where(RuleEmail.run_id == run_id))
            )
        return ledger

    def refusal(self, session: Session, address: str) -> str | None:
        """Why ``address`` gets no email now, or None when it may."""
        if address in self.unsubscribed:
            return "descadastrado (unsubscribed)"
        if address in self.this_run:
            return "já recebe nesta execução (one per run)"
        if self._count(session, address) >= self.cap:
            return f"limite diário de {self.cap} atingido (daily cap)"
        return None

    def record(self, address: str) -> None:
        self.this_run.add(address)
        self.today_counts[address] = self.today_counts.get(address, 0) + 1

    def snapshot(self) -> tuple[set[str], dict[str, int]]:
        return set(self.this_run), dict(self.today_counts)

    def restore(self, state: tuple[set[str], dict[str, int]]) -> None:
        self.this_run, self.today_counts = set(state[0]), dict(state[1])

    def _count(self, session: Session, address: str) -> int:
        if address not in self.today_counts:
            self.today_counts[address] = (
                session.scalar(
                    select(func.count(RuleEmail.id)).where(
                        RuleEmail.recipient == address, RuleEmail.sent_on == self.today
                    )
                )
                or 0
            )
        return self.today_counts[address]


@dataclass
class _Context:
    """What every action of one run (or preview) shares."""

    rule: Rule
    settings: Settings
    today: date
    now: datetime
    ledger: RecipientLedger
    run_id: int | None = None
    calendar: BusinessCalendar | None = None
    owners: dict[str, Owner] | None = None
    specs: dict[str, CustomerField] | None = None
    links: UnsubscribeLinks | None = None

    def unsubscribe_links(self) -> UnsubscribeLinks:
        """The link signer, made once: it reads the secret key (and may refuse)."""
        if self.links is None:
            self.links = unsubscribe_links(self.settings)
        return self.links

    def owner_map(self, session: Session) -> dict[str, Owner]:
        if self.owners is None:
            self.owners = owners_by_email(session)
        return self.owners

    def field_specs(self, session: Session) -> dict[str, CustomerField]:
        if self.specs is None:
            self.specs = {spec.key: spec for spec in customer_fields(session)}
        return self.specs


class PlaybookAction:
    """Load a playbook onto each card without an open load of it or a recent load."""

    kind = "playbook"

    def __init__(self, index: int, playbook: Playbook, cooldown_days: int | None) -> None:
        self.index = index
        self.playbook = playbook
        self.cooldown_days = cooldown_days

    def blocked(
        self, session: Session, customer_ids: Sequence[int], today: date
    ) -> dict[int, str]:
        """Customers to skip, with the reason. Any open load blocks, not only this rule's:
        one card never carries the same playbook twice at once."""
        reasons: dict[int, str] = {}
        for chunk in _chunks(customer_ids, 500):
            open_ids = session.scalars(
                select(PlaybookLoad.customer_id).where(
                    PlaybookLoad.playbook_id == self.playbook.id,
                    PlaybookLoad.status == "open",
                    PlaybookLoad.customer_id.in_(chunk),
                )
            )
            for customer_id in open_ids:
                reasons[customer_id] = "já tem o playbook em aberto (open load)"
            if not self.cooldown_days:
                continue
            since = today - timedelta(days=self.cooldown_days)
            recent = session.execute(
                select(PlaybookLoad.customer_id, func.max(PlaybookLoad.loaded_on))
                .where(
                    PlaybookLoad.playbook_id == self.playbook.id,
                    PlaybookLoad.customer_id.in_(chunk),
                    PlaybookLoad.loaded_on > since,
                )
                .group_by(PlaybookLoad.customer_id)
            )
            for customer_id, loaded_on in recent:
                until = loaded_on + timedelta(days=self.cooldown_days)
                reasons.setdefault(
                    customer_id,
                    f"carregado em {loaded_on:%d/%m/%Y}; intervalo até {until:%d/%m/%Y}",
                )
        return reasons

    def apply(
        self, session: Session, context: _Context, customers: Sequence[Customer]
    ) -> set[int]:
        ids = [c.id for c in customers]
        blocked = self.blocked(session, ids, context.today)
        eligible = [i for i in ids if i not in blocked]
        if not eligible:
            return set()
        if context.calendar is None:
            context.calendar = calendar_from_settings(context.settings)
        load_playbook_many(
            session,
            self.playbook.id,
            eligible,
            loaded_by=f"rule:{context.rule.id}",
            today=context.today,
            calendar=context.calendar,
            rule_id=context.rule.id,
        )
        return set(eligible)

    def preview(
        self, session: Session, context: _Context, customer: Customer, blocked: Mapping[int, str]
    ) -> str:
        reason = blocked.get(customer.id)
        if reason is not None:
            return f"playbook {self.playbook.name!r}: não carrega (skip): {reason}"
        return f"playbook {self.playbook.name!r}: carrega (would load)"


class UpdateAction:
    """Set fields of each card; relative dates are taken from the run's today."""

    kind = "update"

    def __init__(self, index: int, values: Mapping[str, Any]) -> None:
        self.index = index
        self.values = dict(values)

    def changes(
        self, session: Session, context: _Context, customer: Customer
    ) -> dict[str, tuple[Any, Any]]:
        """Field → (current, new) for the fields whose value would change."""
        specs = context.field_specs(session)
        found: dict[str, tuple[Any, Any]] = {}
        for key, value in self.values.items():
            spec = specs[key]
            if spec.kind == "date" and isinstance(value, str) and _is_relative(value):
                value = resolve_date(value, context.today)
            new = coerce_value(
                spec, value, context.owner_map(session) if spec.kind == "user" else None
            )
            current = (
                (customer.custom or {}).get(key)
                if spec.custom
                else getattr(customer, spec.column or key)
            )
            if not _same(current, new):
                found[key] = (current, new)
        return found

    def apply(
        self, session: Session, context: _Context, customers: Sequence[Customer]
    ) -> set[int]:
        specs = context.field_specs(session)
        changed: set[int] = set()
        for customer in customers:
            changes = self.changes(session, context, customer)
            if not changes:
                continue
            custom = dict(customer.custom or {})
            for key, (_, new) in changes.items():
                spec = specs[key]
                if spec.custom:
                    if new is None:
                        custom.pop(key, None)
                    else:
                        custom[key] = new
                else:
                    setattr(customer, spec.column or key, new)
            if custom != (customer.custom or {}):
                customer.custom = custom
            changed.add(customer.id)
        session.flush()
        return changed

    def preview(self, session: Session, context: _Context, customer: Customer) -> str:
        changes = self.changes(session, context, customer)
        if not changes:
            return "atualizar: nada muda (update: no change)"
        shown = ", ".join(
            f"{k}: {_shown(old)} → {_shown(new)}" for k, (old, new) in changes.items()
        )
        return f"atualizar (update): {shown}"


@dataclass
class PlannedEmail:
    """One recipient of one customer's email, in a preview: sent or skipped, and why."""

    to: str
    skipped: str | None = None


@dataclass
class EmailOutcome:
    """A customer's email in a preview: recipients, the rendered letter or the problem.

    Nothing is rendered when no recipient would get it, as in a run.
    """

    template: str
    recipients: list[PlannedEmail]
    rendered: RenderedEmail | None = None
    problem: str | None = None
    reply_to: str | None = None

    @property
    def sending(self) -> list[str]:
        return [p.to for p in self.recipients if p.skipped is None]


@dataclass(frozen=True)
class CardOwner:
    """The owner of a card as a rule email needs it: where replies go."""

    email: str
    name: str
    active: bool


def reply_to_owner(owner: CardOwner | None) -> str | None:
    """A Reply-To header value for the card's owner, or None.

    None without an owner, for an inactive one (nobody reads that mailbox),
    and for an address that is not exactly one ASCII addr-spec: it goes into a
    header, so a line break or an odd address must never get there.
    """
    if owner is None or not owner.active:
        return None
    try:
        address = check_recipient(owner.email)
    except InvalidRecipient:
        return None
    if not address.isascii():
        return None
    # formataddr quotes the name and encodes it (RFC 2047) when it is not ASCII.
    return formataddr((single_line(owner.name), address))


class EmailAction:
    """Render a template for each card and queue it for its recipients."""

    kind = "email"

    def __init__(self, index: int, template: EmailTemplate, to: Sequence[str]) -> None:
        self.index = index
        self.template = template
        self.to = list(to)

    def addresses(
        self, customer: Customer, owner_email: str | None
    ) -> list[tuple[str, str | None]]:
        """(recipient as written, address or None when the card has none)."""
        found: list[tuple[str, str | None]] = []
        for item in self.to:
            if item == "contact":
                address = customer.contact_email
            elif item == "owner":
                address = owner_email
            else:
                address = item
            found.append((item, address.strip().lower() if address else None))
        return found

    def variables(self, session: Session, context: _Context, customer: Customer) -> dict[str, Any]:
        """The customer's template variables, without a recipient's unsubscribe link."""
        playbook = next(
            (a["playbook"] for a in context.rule.actions if a.get("kind") == "playbook"), None
        )
        return email_context(
            session, customer, today=context.today, rule=context.rule, playbook_name=playbook
        )

    def render(
        self, context: _Context, variables: Mapping[str, Any], address: str
    ) -> tuple[RenderedEmail, str]:
        """The letter as ``address`` gets it, with the link only that address can use."""
        link = context.unsubscribe_links().url(address)
        letter = render_email(
            self.template, {**variables, "unsubscribe_url": link, "unsubscribe": link}
        )
        return letter, link

    def apply(
        self, session: Session, context: _Context, customers: Sequence[Customer]
    ) -> set[int]:
        owners = _card_owners(session, customers)
        mailed: set[int] = set()
        for customer in customers:
            owner = owners.get(customer.owner_id)
            wanted = []
            for _, address in self.addresses(customer, owner.email if owner else None):
                if address is None or address in wanted:
                    continue
                if context.ledger.refusal(session, address) is None:
                    wanted.append(address)
            if not wanted:
                continue
            variables = self.variables(session, context, customer)
            reply_to = reply_to_owner(owner)
            for address in wanted:
                letter, link = self.render(context, variables, address)
                row = enqueue_rule_email(
                    session,
                    context.settings,
                    email=letter,
                    to=address,
                    cause=f"rule:{context.rule.id}:run:{context.run_id}:customer:{customer.id}",
                    now=context.now,
                    unsubscribe_url=link,
                    reply_to=reply_to,
                )
                session.add(
                    RuleEmail(
                        rule_id=context.rule.id,
                        run_id=context.run_id,
                        customer_id=customer.id,
                        recipient=address,
                        sent_on=context.today,
                        outbox_id=row.id,
                    )
                )
                context.ledger.record(address)
            session.flush()
            mailed.add(customer.id)
        return mailed

    def preview(
        self, session: Session, context: _Context, customer: Customer, owner: CardOwner | None
    ) -> EmailOutcome:
        """Who would get the email and, for the first of them, the letter itself."""
        outcome = EmailOutcome(template=self.template.name, recipients=[])
        for item, address in self.addresses(customer, owner.email if owner else None):
            if address is None:
                missing = "sem e-mail de contato" if item == "contact" else "sem responsável"
                outcome.recipients.append(PlannedEmail(to=item, skipped=f"{missing} (no address)"))
                continue
            reason = context.ledger.refusal(session, address)
            if reason is None and address in (p.to for p in outcome.recipients):
                reason = "repetido (duplicate)"
            outcome.recipients.append(PlannedEmail(to=address, skipped=reason))
            if reason is None:
                context.ledger.record(address)
        if not outcome.sending:
            return outcome
        outcome.reply_to = reply_to_owner(owner)
        try:
            variables = self.variables(session, context, customer)
            outcome.rendered, _ = self.render(context, variables, outcome.sending[0])
        except EmailRenderError as exc:
            outcome.problem = str(exc)
        return outcome


Action = PlaybookAction | UpdateAction | EmailAction


def _actions(session: Session, rule: Rule) -> list[Action]:
    """The rule's stored actions bound to their playbooks and templates."""
    built: list[Action] = []
    for index, action in enumerate(rule.actions, start=1):
        kind = action.get("kind")
        if kind == "playbook":
            built.append(
                PlaybookAction(
                    index, get_playbook(session, action["playbook"]), action.get("cooldown_days")
                )
            )
        elif kind == "update":
            built.append(UpdateAction(index, action["set"]))
        elif kind == "email":
            built.append(
                EmailAction(index, get_template(session, action["template"]), action["to"])
            )
        else:
            raise EngineError(f"ação {index}: tipo desconhecido (unknown kind) {kind!r}")
    return built


def _same(current: Any, new: Any) -> bool:
    if isinstance(current, Decimal | int | float) and isinstance(new, Decimal | int | float):
        return Decimal(str(current)) == Decimal(str(new))
    return current == new


def _shown(value: Any) -> str:
    if value is None or value == "":
        return "(vazio)"
    if isinstance(value, date):
        return value.strftime("%d/%m/%Y")
    return str(value)


def _card_owners(session: Session, customers: Iterable[Customer]) -> dict[int | None, CardOwner]:
    ids = {c.owner_id for c in customers if c.owner_id is not None}
    if not ids:
        return {}
    rows = session.execute(
        select(User.id, User.email, User.name, User.active).where(User.id.in_(ids))
    )
    return {
        user_id: CardOwner(email=email, name=name, active=active)
        for user_id, email, name, active in rows
    }


def _chunks(items: Sequence[int], size: int) -> Iterable[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# Outbox ----------------------------------------------------------------------------------


def enqueue_rule_email(
    session: Session,
    settings: Settings,
    *,
    email: RenderedEmail,
    to: str,
    cause: str,
    now: datetime,
    unsubscribe_url: str,
    reply_to: str | None = None,
) -> OutboxMessage:
    """Queue an already rendered email for one recipient, as ``portaria.outbox`` would.

    The outbox composes only its file templates, so rule emails are written
    here with the same headers (stable Message-ID, Auto-Submitted, the loop
    marker) plus the recipient's one-click unsubscribe (List-Unsubscribe,
    RFC 2369, as an HTTPS link a mail client may POST to, RFC 8058) and, when
    given, Reply-To (see :func:`reply_to_owner`).
    """
    recipient = check_recipient(to)
    sender = str(settings.outbound.from_address)
    headers = threading_headers(None, ())
    headers["X-Portaria-Loop"] = sender
    headers["X-Auto-Response-Suppress"] = "OOF, AutoReply"
    headers["List-Unsubscribe"] = f"<{unsubscribe_url}>"
    headers["List-Unsubscribe-Post"] = ONE_CLICK
    if reply_to is not None:
        headers["Reply-To"] = reply_to
    row = OutboxMessage(
        message_id=new_message_id(sender),
        kind=OUTBOX_KIND,
        language=settings.service.language,
        sender=sender,
        recipients=[recipient],
        subject=email.subject,
        body_text=email.text,
        body_html=email.html,
        headers=headers,
        status="pending",
        attempts=0,
        next_attempt_at=now,
        created_at=now,
        cause=cause[:80],
    )
    session.add(row)
    session.flush()
    log.debug("outbox %s %s: rule email queued, cause %s", row.id, row.message_id, cause)
    return row


def unsubscribe(session: Session, email: str, *, source: str = "link") -> bool:
    """Stop rule emails to ``email``; False when it was already unsubscribed.

    Idempotent: asking again changes nothing, not even the date of the first.
    """
    address = email.strip().lower()
    if session.get(Unsubscribe, address) is not None:
        return False
    session.add(Unsubscribe(email=address, source=source[:60]))
    session.flush()
    # The address stays out of the log: it is personal data and the row has it.
    log.info("unsubscribe recorded for an address, source %s", source)
    return True


def is_unsubscribed(session: Session, email: str) -> bool:
    return session.get(Unsubscribe, email.strip().lower()) is not None


def unsubscribed_addresses(session: Session) -> list[Unsubscribe]:
    """Every address that gets no rule email, the most recent first."""
    return list(
        session.scalars(select(Unsubscribe).order_by(Unsubscribe.at.desc(), Unsubscribe.email))
    )


# Preview ---------------------------------------------------------------------------------


@dataclass
class CustomerPreview:
    """What a run would do to one matched customer."""

    customer_id: int
    code: str
    name: str
    actions: list[str] = field(default_factory=list)
    emails: list[EmailOutcome] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return [e.problem for e in self.emails if e.problem]


@dataclass
class Preview:
    """Who a rule matches today and what each action would do; nothing was changed."""

    rule: str
    today: date
    matched: int
    customers: list[CustomerPreview]
    conditions: list[str]
    actions: list[str]

    @property
    def problems(self) -> int:
        return sum(len(c.problems) for c in self.customers)


def preview(
    session: Session,
    settings: Settings,
    rule: int | str | Rule,
    today: date,
    *,
    limit: int | None = None,
) -> Preview:
    """Play a run forward without writing: matched customers and each action's outcome.

    ``limit`` caps how many customers are detailed (the count is always full).
    Emails are rendered for every detailed customer; undefined variables are
    reported per customer in ``CustomerPreview.problems``.
    """
    found = get_rule(session, rule)
    _raise_problems(found.name, _current_problems(session, found))
    actions = _actions(session, found)
    clause = condition_clause(session, found.conditions, match=found.match, today=today)
    ids = list(session.scalars(select(Customer.id).where(clause).order_by(Customer.id)))
    shown = ids if limit is None else ids[:limit]
    context = _Context(
        rule=found,
        settings=settings,
        today=today,
        now=utcnow(),
        ledger=RecipientLedger.load(
            session, cap=settings.engine.email_cap_per_recipient_per_day, today=today, run_id=None
        ),
    )
    blocked = {
        a.index: a.blocked(session, shown, today) for a in actions if isinstance(a, PlaybookAction)
    }
    result = Preview(
        rule=found.name,
        today=today,
        matched=len(ids),
        customers=[],
        conditions=[describe_condition(c) for c in found.conditions],
        actions=[describe_action(a) for a in found.actions],
    )
    needs_cards = any(not isinstance(a, PlaybookAction) for a in actions)
    for chunk in _chunks(shown, 500):
        if needs_cards:
            customers = _customers(session, chunk)
        else:
            rows = session.execute(
                select(Customer.id, Customer.code, Customer.name).where(Customer.id.in_(chunk))
            )
            customers = [Customer(id=i, code=c, name=n) for i, c, n in rows]
        owners = _card_owners(session, customers) if needs_cards else {}
        for customer in customers:
            entry = CustomerPreview(customer.id, customer.code, customer.name)
            for action in actions:
                if isinstance(action, PlaybookAction):
                    entry.actions.append(
                        action.preview(session, context, customer, blocked[action.index])
                    )
                elif isinstance(action, UpdateAction):
                    entry.actions.append(action.preview(session, context, customer))
                else:
                    outcome = action.preview(
                        session, context, customer, owners.get(customer.owner_id)
                    )
                    entry.emails.append(outcome)
                    sending = outcome.sending
                    entry.actions.append(
                        f"e-mail {action.template.name!r}: "
                        + (f"para (to) {', '.join(sending)}" if sending else "ninguém (nobody)")
                    )
            result.customers.append(entry)
    log.info("rule %s preview for %s: %s matched", found.id, today, len(ids))
    return result


def _customers(session: Session, ids: Sequence[int]) -> list[Customer]:
    rows = session.scalars(select(Customer).where(Customer.id.in_(ids)))
    by_id = {c.id: c for c in rows}
    return [by_id[i] for i in ids if i in by_id]


# Runs ------------------------------------------------------------------------------------


class _ActionFailed(Exception):
    def __init__(self, index: int, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.index = index
        self.cause = cause


@dataclass
class _Tally:
    actions_done: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)


def run_rule(
    sessions: sessionmaker[Session],
    settings: Settings,
    rule_id: int,
    *,
    now: datetime | None = None,
    trigger: str = "manual",
) -> RuleRun:
    """Run a rule now and return its recorded run.

    ``trigger="schedule"`` first claims the rule's due slot (see
    :func:`claim_due_run`) and raises RuleNotDue when the rule is not due or
    another scheduler claimed it; a manual run leaves the schedule alone.
    """
    now = now or utcnow()
    if trigger == "schedule":
        run_id = claim_due_run(sessions, rule_id, now=now)
        if run_id is None:
            raise RuleNotDue(f"regra {rule_id} não está devida (rule not due)")
    else:
        with transaction(sessions) as session:
            found = get_rule(session, rule_id)
            run = RuleRun(
                rule_id=found.id,
                trigger="manual",
                started_at=now,
                heartbeat_at=now,
                status="running",
            )
            session.add(run)
            found.last_run_at = now
            session.flush()
            run_id = run.id
    return execute_run(sessions, settings, run_id, now=now)


def claim_due_run(sessions: sessionmaker[Session], rule_id: int, *, now: datetime) -> int | None:
    """Claim a due rule: advance ``next_run_at`` past now and record the run start, at once.

    The update only applies while ``next_run_at`` still holds the value read
    (compare-and-set), so of two schedulers only one wins a slot. Slots missed
    while nothing ran collapse into this one run. Returns the run id, or None.
    """
    with transaction(sessions) as session:
        rule = session.get(Rule, rule_id)
        if rule is None or rule.status != "active" or rule.next_run_at is None:
            return None
        slot = rule.next_run_at
        if slot > now:
            return None
        following = next_due(rule, now)
        won = session.execute(
            update(Rule)
            .where(Rule.id == rule_id, Rule.status == "active", Rule.next_run_at == slot)
            .values(next_run_at=following, last_run_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount
        if won != 1:
            log.info("rule %s: slot %s already claimed elsewhere", rule_id, slot.isoformat())
            return None
        run = RuleRun(
            rule_id=rule_id,
            trigger="schedule",
            scheduled_for=slot,
            started_at=now,
            heartbeat_at=now,
            status="running",
        )
        session.add(run)
        session.flush()
        log.info(
            "rule %s run %s: claimed slot %s; next %s",
            rule_id,
            run.id,
            slot.isoformat(timespec="seconds"),
            following.isoformat(timespec="seconds"),
        )
        return run.id


def stale_run_ids(session: Session, *, now: datetime, lease: timedelta) -> list[int]:
    """Runs never finished whose heartbeat is older than ``lease``: their process died.

    A run still being done (a scheduled run elsewhere, a manual ``rules run``)
    renews its heartbeat after every batch, so it is not listed.
    """
    beat = func.coalesce(RuleRun.heartbeat_at, RuleRun.started_at)
    return list(
        session.scalars(
            select(RuleRun.id)
            .where(
                RuleRun.status == "running",
                RuleRun.finished_at.is_(None),
                beat < now - lease,
            )
            .order_by(RuleRun.id)
        )
    )


def claim_stale_run(
    sessions: sessionmaker[Session], run_id: int, *, now: datetime, lease: timedelta
) -> bool:
    """Take over an abandoned run: its heartbeat becomes ``now`` if it is still stale.

    One UPDATE both checks and writes, so of two processes claiming at once
    only one changes the row; the other finds a fresh heartbeat and gets False.
    """
    beat = func.coalesce(RuleRun.heartbeat_at, RuleRun.started_at)
    with transaction(sessions) as session:
        won = session.execute(
            update(RuleRun)
            .where(
                RuleRun.id == run_id,
                RuleRun.status == "running",
                RuleRun.finished_at.is_(None),
                beat < now - lease,
            )
            .values(heartbeat_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount
    if won != 1:
        log.info("run %s: not stale or taken by another process; left alone", run_id)
    return won == 1


def resume_run(
    sessions: sessionmaker[Session],
    settings: Settings,
    run_id: int,
    *,
    now: datetime,
    lease: timedelta | None = None,
) -> RuleRun | None:
    """Finish an abandoned run, if it can be claimed; None when it is not ours to finish.

    Customers it already handled are skipped by the actions' idempotency.
    """
    lease = lease or timedelta(minutes=settings.engine.run_lease_minutes)
    if not claim_stale_run(sessions, run_id, now=now, lease=lease):
        return None
    log.info("run %s: resuming a run its process left unfinished", run_id)
    return execute_run(sessions, settings, run_id, now=now)


class RunLease:
    """This process's hold on a run: the heartbeat value it wrote last.

    The heartbeat moves on with the run's own clock (its ``now`` plus the time
    elapsed), so a run driven by a simulated clock stays on that clock.
    """

    def __init__(self, run_id: int, now: datetime) -> None:
        self.run_id = run_id
        self.origin = now
        self.value = now
        self._started = monotonic()

    def renew(self, session: Session) -> bool:
        """Write a fresh heartbeat if the run is still ours; False once another took it."""
        fresh = self.origin + timedelta(seconds=monotonic() - self._started)
        won = session.execute(
            update(RuleRun)
            .where(
                RuleRun.id == self.run_id,
                RuleRun.heartbeat_at == self.value,
                RuleRun.finished_at.is_(None),
            )
            .values(heartbeat_at=fresh)
            .execution_options(synchronize_session=False)
        ).rowcount
        if won == 1:
            self.value = fresh
        return won == 1


class _LeaseLost(Exception):
    """Another process took the run over; this one must write nothing more."""


def execute_run(
    sessions: sessionmaker[Session], settings: Settings, run_id: int, *, now: datetime
) -> RuleRun:
    """Do a recorded run: match, act in batches, record the outcome. See the module docstring.

    Call it with the ``now`` that claimed the run (wrote its heartbeat): that
    value is the lease. Each batch renews the lease in its own transaction,
    and a batch whose lease was taken over by another process is rolled back
    and the run left to that process.
    """
    lease = RunLease(run_id, now)
    failure: str | None = None
    ids: list[int] = []
    links: UnsubscribeLinks | None = None
    with sessions() as session:
        run = session.get_one(RuleRun, run_id)
        rule = session.get_one(Rule, run.rule_id)
        zone = ZoneInfo(rule.timezone)
        # "Today" is the day the run started, so a resumed run means the same day.
        today = run.started_at.astimezone(zone).date()
        prior_done = run.actions_done
        try:
            _raise_problems(rule.name, _current_problems(session, rule))
            clause = condition_clause(session, rule.conditions, match=rule.match, today=today)
            ids = list(session.scalars(select(Customer.id).where(clause).order_by(Customer.id)))
            links = (
                unsubscribe_links(settings)
                if any(a.get("kind") == "email" for a in rule.actions)
                else None
            )
        except EngineError as exc:
            failure = str(exc)
    if failure is not None:
        return _finish(sessions, lease, rule.id, matched=0, tally=_Tally(), failure=failure)
    log.info("rule %s run %s: %s customer(s) matched on %s", rule.id, run_id, len(ids), today)

    tally = _Tally(actions_done=prior_done)
    with sessions() as session:
        context = _Context(
            rule=session.get_one(Rule, rule.id),
            settings=settings,
            today=today,
            now=now,
            run_id=run_id,
            ledger=RecipientLedger.load(
                session,
                cap=settings.engine.email_cap_per_recipient_per_day,
                today=today,
                run_id=run_id,
            ),
            links=links,
        )
        actions = _actions(session, context.rule)
    try:
        for chunk in _chunks(ids, BATCH_SIZE):
            with transaction(sessions) as session:
                if not lease.renew(session):
                    raise _LeaseLost
                context.rule = session.get_one(Rule, rule.id)
                _act_on_batch(session, context, actions, chunk, tally)
                progress = session.get_one(RuleRun, run_id)
                progress.matched = len(ids)
                progress.actions_done = tally.actions_done
                progress.errors = list(tally.errors)
    except _LeaseLost:
        return _taken_over(sessions, run_id, rule.id)
    return _finish(sessions, lease, rule.id, matched=len(ids), tally=tally, failure=None)


def _taken_over(sessions: sessionmaker[Session], run_id: int, rule_id: int) -> RuleRun:
    log.warning(
        "rule %s run %s: taken over by another process (this one stalled past the lease); "
        "stopping here",
        rule_id,
        run_id,
    )
    with sessions() as session:
        return session.get_one(RuleRun, run_id)


def _act_on_batch(
    session: Session,
    context: _Context,
    actions: Sequence[Action],
    ids: Sequence[int],
    tally: _Tally,
) -> None:
    """All the batch at once; when anything fails, again one customer per savepoint."""
    state = context.ledger.snapshot()
    try:
        with session.begin_nested():
            done = _act(session, context, actions, _customers(session, ids))
        tally.actions_done += done
        return
    except Exception:  # the batch is redone one by one below, which records the cause
        context.ledger.restore(state)
        session.expire_all()
    for customer_id in ids:
        state = context.ledger.snapshot()
        try:
            with session.begin_nested():
                done = _act(session, context, actions, _customers(session, [customer_id]))
            tally.actions_done += done
        except Exception as exc:  # one customer's failure must not stop the run
            context.ledger.restore(state)
            session.expire_all()
            index = exc.index if isinstance(exc, _ActionFailed) else None
            cause = exc.cause if isinstance(exc, _ActionFailed) else exc
            code = session.scalar(select(Customer.code).where(Customer.id == customer_id))
            message = (
                str(cause)
                if isinstance(cause, EngineError)
                else (f"{type(cause).__name__}: {cause}")
            )
            tally.errors.append(
                {"customer_id": customer_id, "customer": code, "action": index, "error": message}
            )
            log.warning(
                "rule %s run %s: customer %s (%s) failed at action %s: %s",
                context.rule.id,
                context.run_id,
                customer_id,
                code,
                index,
                message,
            )


def _act(
    session: Session, context: _Context, actions: Sequence[Action], customers: list[Customer]
) -> int:
    """Every action over the customers, action by action; how many (action, card) were done."""
    done = 0
    for action in actions:
        try:
            done += len(action.apply(session, context, customers))
        except Exception as exc:
            raise _ActionFailed(action.index, exc) from exc
    return done


def _finish(
    sessions: sessionmaker[Session],
    lease: RunLease,
    rule_id: int,
    *,
    matched: int,
    tally: _Tally,
    failure: str | None,
) -> RuleRun:
    run_id = lease.run_id
    errors = list(tally.errors)
    if failure is not None:
        errors.insert(0, {"customer_id": None, "customer": None, "action": None, "error": failure})
    failed_customers = {e["customer_id"] for e in tally.errors}
    if failure is not None or (matched and len(failed_customers) >= matched):
        status = "failed"
    elif errors:
        status = "partial"
    else:
        status = "ok"
    with transaction(sessions) as session:
        held = lease.renew(session)
        if held:
            run = session.get_one(RuleRun, run_id)
            run.finished_at = utcnow()
            run.matched = matched
            run.actions_done = tally.actions_done
            run.errors = errors
            run.status = status
    if not held:
        return _taken_over(sessions, run_id, rule_id)
    if run.status == "failed":
        log.error(
            "rule %s run %s: failed: %s",
            rule_id,
            run_id,
            failure or f"every one of {matched} customer(s) failed",
        )
    else:
        log.info(
            "rule %s run %s: %s; %s matched, %s action(s) done, %s error(s)",
            rule_id,
            run_id,
            run.status,
            matched,
            run.actions_done,
            len(errors),
        )
    return run


# Files -----------------------------------------------------------------------------------


def _file_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".toml":
        return "toml"
    if suffix in (".yaml", ".yml"):
        return "yaml"
    raise InvalidRule(
        f"formato desconhecido (unknown format) {path.name}: use .toml, .yaml ou .yml",
        [f"{path.name}: .toml, .yaml ou .yml"],
    )


def _yaml() -> Any:
    try:
        import yaml
    except ImportError as exc:  # pyyaml is optional; TOML always works
        raise EngineError(
            "arquivos YAML precisam do pacote pyyaml (YAML needs pyyaml): pip install pyyaml"
        ) from exc
    return yaml


def read_rule_file(path: Path | str) -> list[dict[str, Any]]:
    """The rule definitions a TOML or YAML file holds (one rule, or a ``rules`` list)."""
    file = Path(path)
    kind = _file_format(file)
    try:
        text = file.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise InvalidRule(
            f"não foi possível ler (cannot read) {file}: {exc.strerror}", []
        ) from exc
    except UnicodeDecodeError:
        raise InvalidRule(
            f"{file.name}: o arquivo precisa ser UTF-8 (must be UTF-8)", []
        ) from None
    if kind == "toml":
        try:
            data: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InvalidRule(f"{file.name}: TOML inválido (bad TOML): {exc}", []) from None
    else:
        yaml = _yaml()
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" (linha {mark.line + 1})" if mark is not None else ""
            raise InvalidRule(f"{file.name}: YAML inválido (bad YAML){at}", []) from None
    if isinstance(data, Mapping) and ("rules" in data or "rule" in data):
        entries = data.get("rules", data.get("rule"))
        entries = entries if isinstance(entries, list) else [entries]
    elif isinstance(data, list):
        entries = data
    elif isinstance(data, Mapping):
        entries = [data]
    else:
        entries = []
    if not entries or not all(isinstance(e, Mapping) for e in entries):
        raise InvalidRule(f"{file.name}: nenhuma regra encontrada (no rules found)", [])
    return [dict(e) for e in entries]


@dataclass
class RuleImportReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)


def import_rules(
    session: Session,
    path: Path | str,
    *,
    now: datetime | None = None,
    default_timezone: str = DEFAULT_TIMEZONE,
) -> RuleImportReport:
    """Create the file's rules, or replace those whose name exists. All or nothing:
    the caller's transaction is left to roll back when any rule is refused."""
    report = RuleImportReport()
    problems: list[str] = []
    for definition in read_rule_file(path):
        name = str(definition.get("name") or "?")
        try:
            try:
                existing = get_rule(session, name)
            except RuleNotFound:
                existing = None
            if existing is None:
                create_rule(session, definition, now=now, default_timezone=default_timezone)
                report.created.append(name)
            else:
                # The file is the whole rule: what it leaves out takes the default.
                replacement = {
                    "active": True,
                    "every": 1,
                    "unit": "days",
                    "time_of_day": None,
                    "timezone": default_timezone,
                    "match": "all",
                    "conditions": [],
                    **definition,
                }
                edit_rule(session, existing, replacement, now=now)
                report.updated.append(existing.name)
        except InvalidRule as exc:
            problems.extend(f"{name}: {p}" for p in (exc.problems or [str(exc)]))
    if problems:
        raise InvalidRule(
            f"{Path(path).name}: nada importado (nothing imported): " + "; ".join(problems),
            problems,
        )
    log.info(
        "rules import %s: %s created, %s updated",
        Path(path).name,
        len(report.created),
        len(report.updated),
    )
    return report


def export_rules(session: Session, rules: Sequence[int | str], path: Path | str) -> list[str]:
    """Write the named rules (every rule when none is named) to a TOML or YAML file."""
    file = Path(path)
    fmt = _file_format(file)
    found = [get_rule(session, r) for r in rules] if rules else list_rules(session)
    file.write_text(dump_rules([rule_definition(r) for r in found], fmt), encoding="utf-8")
    log.info("rules export %s: %s", file.name, ", ".join(r.name for r in found))
    return [r.name for r in found]


def dump_rules(definitions: Sequence[Mapping[str, Any]], fmt: str) -> str:
    """Rule definitions as TOML or YAML text in the documented format."""
    if fmt == "yaml":
        data = {"rules": [_plain(d) for d in definitions]}
        return str(_yaml().safe_dump(data, allow_unicode=True, sort_keys=False))
    lines = ["# Regras do Portaria (Portaria rules)"]
    for definition in definitions:
        lines += ["", "[[rules]]"]
        for key, value in definition.items():
            if key not in ("conditions", "actions") and value is not None:
                lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
        for table in ("conditions", "actions"):
            for item in definition.get(table) or []:
                lines += ["", f"[[rules.{table}]]"]
                lines.extend(
                    f"{_toml_key(k)} = {_toml_value(v)}" for k, v in item.items() if v is not None
                )
    return "\n".join(lines) + "\n"


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key, ensure_ascii=False)


def _toml_value(value: Any) -> str:
    # A JSON string is a valid TOML basic string, escapes included.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, Mapping):
        inner = ", ".join(
            f"{_toml_key(str(k))} = {_toml_value('' if v is None else v)}"
            for k, v in value.items()
        )
        return "{ " + inner + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, date):
        return json.dumps(value.isoformat())
    return json.dumps(str(value), ensure_ascii=False)
