"""Rule files: rules imported from and exported to TOML or YAML.

A file holds one rule, or a ``rules`` list; playbooks and templates are
referenced by name, and the start is a local time in the rule's zone::

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

An import is all or nothing: a rule whose name exists is replaced, and when
any rule of the file is refused nothing of the file is kept. Reading and
writing the formats themselves is ``engine.definition_files``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from engine.definition_files import (
    DefinitionImportReport,
    file_format,
    plain_data,
    read_definition_file,
    toml_pair,
    yaml_document,
)
from engine.errors import InvalidRule, RuleNotFound
from engine.rules import (
    DEFAULT_TIMEZONE,
    create_rule,
    edit_rule,
    get_rule,
    list_rules,
    rule_definition,
)

log = logging.getLogger(__name__)


def read_rule_file(path: Path | str) -> list[dict[str, Any]]:
    """The rule definitions a TOML or YAML file holds (one rule, or a ``rules`` list)."""
    file = Path(path)
    data = read_definition_file(file, InvalidRule)
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


def import_rules(
    session: Session,
    path: Path | str,
    *,
    now: datetime | None = None,
    default_timezone: str = DEFAULT_TIMEZONE,
) -> DefinitionImportReport:
    """Create the file's rules, or replace those whose name exists. All or nothing:
    the caller's transaction is left to roll back when any rule is refused."""
    report = DefinitionImportReport()
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
    fmt = file_format(file, InvalidRule)
    found = [get_rule(session, r) for r in rules] if rules else list_rules(session)
    file.write_text(dump_rules([rule_definition(r) for r in found], fmt), encoding="utf-8")
    log.info("rules export %s: %s", file.name, ", ".join(r.name for r in found))
    return [r.name for r in found]


def dump_rules(definitions: Sequence[Mapping[str, Any]], fmt: str) -> str:
    """Rule definitions as TOML or YAML text in the documented format."""
    if fmt == "yaml":
        return yaml_document({"rules": [plain_data(d) for d in definitions]})
    lines = ["# Regras do Portaria (Portaria rules)"]
    for definition in definitions:
        lines += ["", "[[rules]]"]
        for key, value in definition.items():
            if key not in ("conditions", "actions") and value is not None:
                lines.append(toml_pair(key, value))
        for table in ("conditions", "actions"):
            for item in definition.get(table) or []:
                lines += ["", f"[[rules.{table}]]"]
                lines.extend(toml_pair(k, v) for k, v in item.items() if v is not None)
    return "\n".join(lines) + "\n"
