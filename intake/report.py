"""The parse report: one message's bytes to the decision intake makes on it.

This module owns the report shape shared by the CLI (`portaria parse`), the
shared scoring tool and anything else that wants intake's verdict as plain
data, and its rendering for a person to read. It chains the stages: read,
screen (headers only), then extract (body) only for requests.

Outcomes:

- "ignored": screening set the message aside (untagged, automatic, ours);
  `reason` says why.
- "request": every person found has all four fields; `requests` lists them.
- "incomplete": nobody was found, or at least one person lacks a field.
  `requests` still lists the complete people and `missing` names the fields
  lacking for the others; `problems` says, one line each (pt-BR, as the
  requester is told), what was wrong with those that were written but
  cannot be used ("E-mail inválido: ana@@x"). A message mixing complete and incomplete people is
  incomplete on purpose: the requester has to be asked for the rest anyway,
  and reporting it as a plain request would hide that question; the complete
  people are not lost, they are in `requests` for the queue.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from intake.extraction import FIELD_NAMES, Extraction, extract
from intake.reading import ReadMessage, read_message
from intake.screening import screen
from portaria.letters import DEFAULT_LANGUAGE, describe_problem
from portaria.letters import FIELD_LABELS as LETTER_FIELD_LABELS

log = logging.getLogger(__name__)

__all__ = ["format_report", "missing_reason", "parse_report", "problem_lines"]

# pt-BR first, English after, for the printed report.
OUTCOME_LABELS = {
    "request": "pedido (request)",
    "incomplete": "incompleto (incomplete)",
    "ignored": "ignorado (ignored)",
    "held": "retido para revisão (held)",
    "unreadable": "ilegível (unreadable)",
}
FIELD_LABELS = {
    "name": "nome (name)",
    "email": "e-mail",
    "area": "área (area)",
    "access_type": "tipo de acesso (access type)",
}


def parse_report(raw: bytes, *, tag: str = "#ACESSO") -> dict[str, Any]:
    """Read, screen and extract one message; return the report as plain data.

    Raises UnreadableMessage when `raw` is not a message at all.
    """
    message = read_message(raw)
    screening = screen(message, tag=tag)
    if screening.outcome == "ignored":
        return _report(message, "ignored", [], [], screening.reason)

    extraction = extract(message)
    requests = [
        {name: getattr(person, name) for name in FIELD_NAMES}
        for person in extraction.complete_people
    ]
    if not extraction.incomplete_people:
        return _report(message, "request", requests, [], "")
    problems = problem_lines((name, problem.record()) for _, name, problem in extraction.problems)
    return _report(message, "incomplete", requests, extraction.missing, _why(extraction), problems)


def problem_lines(problems: Iterable[tuple[str, Mapping[str, Any]]]) -> list[str]:
    """One line per distinct problem, from (field, problem record) pairs, in order."""
    lines = (describe_problem(name, record, DEFAULT_LANGUAGE) for name, record in problems)
    return list(dict.fromkeys(lines))


def missing_reason(missing: Iterable[str]) -> str:
    """'faltam (missing): nome, e-mail': the fields as the pt-BR letters name them."""
    labels = LETTER_FIELD_LABELS[DEFAULT_LANGUAGE]
    return "faltam (missing): " + ", ".join(labels.get(name, name).lower() for name in missing)


def _why(extraction: Extraction) -> str:
    people = extraction.people
    if not any(person.name or person.email or person.problems for person in people):
        return "nenhuma pessoa encontrada (no person found)"
    lacking = len(extraction.incomplete_people)
    return (
        f"pessoas incompletas (incomplete people): {lacking} de {len(people)}; "
        f"{missing_reason(extraction.missing)}"
    )


def _report(
    message: ReadMessage,
    outcome: str,
    requests: list[dict[str, Any]],
    missing: list[str],
    reason: str,
    problems: list[str] | None = None,
) -> dict[str, Any]:
    log.info(
        "%s: %s, %d complete, missing %s", message.message_id, outcome, len(requests), missing
    )
    return {
        "outcome": outcome,
        "requests": requests,
        "missing": missing,
        "problems": problems or [],
        "reason": reason,
        "message": {
            "message_id": message.message_id,
            "from": message.from_address,
            "subject": message.subject,
        },
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as short text for a person: pt-BR labels, English in parentheses."""
    header = report.get("message") or {}
    lines = [
        f"Resultado (result): {OUTCOME_LABELS.get(report['outcome'], report['outcome'])}",
        f"Mensagem (message): {header.get('message_id') or '-'}",
        f"De (from): {header.get('from') or '-'}",
        f"Assunto (subject): {header.get('subject') or '-'}",
    ]
    requests = report.get("requests") or []
    if requests:
        lines.append("Pessoas (people):")
        for number, person in enumerate(requests, start=1):
            lines.append(
                f"  {number}. {person['name']} <{person['email']}> · "
                f"área: {person['area']} · acesso: {person['access_type']}"
            )
    missing = report.get("missing") or []
    if missing:
        labels = ", ".join(FIELD_LABELS.get(name, name) for name in missing)
        lines.append(f"Faltando (missing): {labels}")
    problems = report.get("problems") or []
    if problems:
        lines.append("Problemas (problems):")
        lines.extend(f"  {problem}" for problem in problems)
    if report.get("reason"):
        lines.append(f"Motivo (reason): {report['reason']}")
    return "\n".join(lines)
