"""Playbooks: their tasks, their files, and loading them onto customer cards.

A playbook is a named, ordered list of task templates (name; kind call, email or
other; optional business days until due). Loading it onto a card copies each
template into a task for the card's owner, due that many business days after
the load on the :class:`~engine.calendar.BusinessCalendar`. A load stays open
while any of its tasks is open.

Removing a playbook that was ever loaded archives it instead, so the history of
the cards keeps its name; an archived playbook is renamed "<name> (arquivado
#<id>)" to free its name, and can no longer be edited or loaded.

Playbook files (TOML or YAML, by extension) hold one playbook or several::

    [[playbooks]]
    name = "Onboarding"
    active = true            # optional, default true

    [[playbooks.tasks]]
    name = "Ligação de boas-vindas"
    kind = "call"            # call | email | other
    days = 2                 # optional: business days after the load

The YAML twin is ``playbooks: [{name, active, tasks: [{name, kind, days}]}]``;
a file may also hold a single playbook at the top (``name`` and ``tasks``), and
YAML a bare list of them. Portuguese keys work too (nome, ativo, tarefas, tipo,
dias), and kinds may be written ligação, e-mail or outro. Importing a playbook
whose name exists replaces its tasks and status.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy import exists, func, insert, select, update
from sqlalchemy.orm import Session

from engine.calendar import BusinessCalendar
from engine.customers import get_customer, normalise_name
from engine.definition_files import (
    DefinitionImportReport,
    file_format,
    read_definition_file,
    toml_pair,
    yaml_document,
)
from engine.errors import (
    CustomerNotFound,
    InvalidPlaybook,
    PlaybookAlreadyLoaded,
    PlaybookExists,
    PlaybookNotFound,
    PlaybookNotLoadable,
)
from engine.lookup import find_by_id_or_name
from engine.models import Customer, Playbook, PlaybookLoad, PlaybookStep, Task
from portaria.db import utcnow

log = logging.getLogger(__name__)

# Names people write for task kinds, normalised (lower case, no accents), to the stored kind.
KIND_NAMES = {
    "call": "call",
    "ligacao": "call",
    "chamada": "call",
    "telefonema": "call",
    "telefone": "call",
    "email": "email",
    "e_mail": "email",
    "mail": "email",
    "other": "other",
    "outro": "other",
    "outra": "other",
}
KIND_LABELS = {"call": "Ligação", "email": "E-mail", "other": "Outro"}

MAX_BUSINESS_DAYS = 999
_NAME_LENGTH = 200
# Rows per statement when loading a playbook onto many cards at once.
_BATCH = 500

# Keys of playbook files, in English or Portuguese, to their meaning.
_PLAYBOOK_KEYS = {"name": "name", "nome": "name", "active": "active", "ativo": "active"}
_PLAYBOOK_KEYS |= {"tasks": "tasks", "tarefas": "tasks", "steps": "tasks"}
_TASK_KEYS = {"name": "name", "nome": "name", "kind": "kind", "tipo": "kind"}
_TASK_KEYS |= {"days": "days", "dias": "days", "dias_uteis": "days", "business_days": "days"}


@dataclass(frozen=True)
class StepSpec:
    """A task template as given by a person or a file, before it is stored."""

    name: str
    kind: str
    business_days: int | None = None


@dataclass
class PlaybookSpec:
    """A playbook as a file holds it."""

    name: str
    active: bool = True
    steps: list[StepSpec] = field(default_factory=list)


def parse_kind(text: str) -> str:
    """``call``, ``email`` or ``other`` from English or Portuguese (ligação, e-mail, outro)."""
    kind = KIND_NAMES.get(normalise_name(str(text)))
    if kind is None:
        raise InvalidPlaybook(
            f"tipo de tarefa inválido (bad task kind) {text!r}: use ligação, email ou outro"
        )
    return kind


_EMPTY_NAME = {
    "playbook": "nome do playbook vazio (empty playbook name)",
    "tarefa": "nome da tarefa vazio (empty task name)",
}


def _check_name(name: str, what: str = "playbook") -> str:
    name = name.strip()
    if not name:
        raise InvalidPlaybook(_EMPTY_NAME[what])
    if len(name) > _NAME_LENGTH:
        raise InvalidPlaybook(f"nome longo demais (name too long): {len(name)} > {_NAME_LENGTH}")
    return name


def _check_days(days: Any) -> int | None:
    if days is None or days == "":
        return None
    if isinstance(days, str) and days.strip().isdigit():
        days = int(days)
    if isinstance(days, bool) or not isinstance(days, int):
        raise InvalidPlaybook(f"dias úteis inválidos (bad business days): {days!r}")
    if not 0 <= days <= MAX_BUSINESS_DAYS:
        raise InvalidPlaybook(
            f"dias úteis fora de 0..{MAX_BUSINESS_DAYS} (business days out of range): {days}"
        )
    return days


def make_step(name: str, kind: str, business_days: Any = None) -> StepSpec:
    """A checked task template: name not empty, kind known, business days >= 0 or none."""
    return StepSpec(_check_name(name, "tarefa"), parse_kind(kind), _check_days(business_days))


# ---------------------------------------------------------------------------
# Playbooks and their tasks


def get_playbook(session: Session, playbook: int | str | Playbook) -> Playbook:
    """By id; from text, by exact name, by name ignoring case, then by id."""
    found = find_by_id_or_name(session, Playbook, playbook)
    if found is None:
        raise PlaybookNotFound(f"Playbook não encontrado (playbook not found): {playbook}")
    return found


def list_playbooks(session: Session, *, include_archived: bool = False) -> list[Playbook]:
    query = select(Playbook).order_by(Playbook.name)
    if not include_archived:
        query = query.where(Playbook.status != "archived")
    return list(session.scalars(query))


def _ensure_name_free(session: Session, name: str, keep: Playbook | None = None) -> None:
    clash = session.scalar(
        select(Playbook).where(func.lower(Playbook.name) == name.lower()).limit(1)
    )
    if clash is not None and clash is not keep:
        raise PlaybookExists(f"já existe um playbook com esse nome (name taken): {clash.name}")


def _editable(session: Session, playbook: int | str | Playbook) -> Playbook:
    found = get_playbook(session, playbook)
    if found.status == "archived":
        raise InvalidPlaybook(
            f"playbook arquivado não pode ser alterado (archived playbook): {found.name}"
        )
    return found


def create_playbook(
    session: Session, name: str, steps: Iterable[StepSpec] = (), *, active: bool = True
) -> Playbook:
    name = _check_name(name)
    _ensure_name_free(session, name)
    playbook = Playbook(name=name, status="active" if active else "inactive")
    playbook.steps = [
        PlaybookStep(position=i, name=s.name, kind=s.kind, business_days=s.business_days)
        for i, s in enumerate(steps, 1)
    ]
    session.add(playbook)
    session.flush()
    log.info("playbook %s created: %s with %s tasks", playbook.id, name, len(playbook.steps))
    return playbook


def rename_playbook(session: Session, playbook: int | str | Playbook, new_name: str) -> Playbook:
    found = _editable(session, playbook)
    new_name = _check_name(new_name)
    _ensure_name_free(session, new_name, keep=found)
    old, found.name = found.name, new_name
    session.flush()
    log.info("playbook %s renamed from %s to %s", found.id, old, new_name)
    return found


def set_playbook_active(
    session: Session, playbook: int | str | Playbook, active: bool
) -> Playbook:
    found = _editable(session, playbook)
    found.status = "active" if active else "inactive"
    session.flush()
    log.info("playbook %s is now %s", found.id, found.status)
    return found


def remove_playbook(session: Session, playbook: int | str | Playbook) -> str:
    """Delete a playbook never loaded; archive one that was. Returns "deleted" or "archived"."""
    found = _editable(session, playbook)
    loaded = session.scalar(select(exists().where(PlaybookLoad.playbook_id == found.id)))
    if loaded:
        found.status = "archived"
        # Frees the name for a new playbook; loads keep pointing at this row.
        suffix = f" (arquivado #{found.id})"
        found.name = found.name[: _NAME_LENGTH - len(suffix)] + suffix
        session.flush()
        log.info("playbook %s archived as %s", found.id, found.name)
        return "archived"
    session.delete(found)
    session.flush()
    log.info("playbook %s deleted", found.id)
    return "deleted"


def _renumber(session: Session, playbook: Playbook, steps: list[PlaybookStep]) -> None:
    # (playbook_id, position) is unique and rows are updated one by one, so park
    # every step on a negative position first; then give the final ones.
    for i, step in enumerate(steps, 1):
        step.position = -i
    session.flush()
    for i, step in enumerate(steps, 1):
        step.position = i
    playbook.steps = steps
    session.flush()


def add_step(
    session: Session,
    playbook: int | str | Playbook,
    step: StepSpec,
    *,
    position: int | None = None,
) -> PlaybookStep:
    """Add a task at ``position`` (1-based; default: last)."""
    found = _editable(session, playbook)
    steps = list(found.steps)
    where = len(steps) + 1 if position is None else position
    if not 1 <= where <= len(steps) + 1:
        raise InvalidPlaybook(
            f"posição fora de 1..{len(steps) + 1} (position out of range): {position}"
        )
    row = PlaybookStep(
        position=len(steps) + 1, name=step.name, kind=step.kind, business_days=step.business_days
    )
    found.steps.append(row)
    session.flush()
    steps.insert(where - 1, row)
    if where != len(steps):
        _renumber(session, found, steps)
    log.info("playbook %s: task %s added at %s", found.id, step.name, where)
    return row


def _step_at(playbook: Playbook, position: int) -> PlaybookStep:
    if not 1 <= position <= len(playbook.steps):
        raise InvalidPlaybook(
            f"playbook {playbook.name!r} não tem a tarefa {position} "
            f"(no such task; it has {len(playbook.steps)})"
        )
    return playbook.steps[position - 1]


def remove_step(session: Session, playbook: int | str | Playbook, position: int) -> PlaybookStep:
    """Remove the task at ``position`` (1-based); the ones after it move up."""
    found = _editable(session, playbook)
    row = _step_at(found, position)
    remaining = [s for s in found.steps if s is not row]
    found.steps.remove(row)
    session.flush()
    _renumber(session, found, remaining)
    log.info("playbook %s: task %s removed", found.id, position)
    return row


def move_step(
    session: Session, playbook: int | str | Playbook, position: int, to: int
) -> Playbook:
    """Move the task at ``position`` to ``to`` (both 1-based)."""
    found = _editable(session, playbook)
    row = _step_at(found, position)
    _step_at(found, to)
    steps = [s for s in found.steps if s is not row]
    steps.insert(to - 1, row)
    _renumber(session, found, steps)
    log.info("playbook %s: task %s moved to %s", found.id, position, to)
    return found


def replace_steps(
    session: Session, playbook: int | str | Playbook, steps: Sequence[StepSpec]
) -> Playbook:
    found = _editable(session, playbook)
    found.steps.clear()
    session.flush()
    found.steps = [
        PlaybookStep(position=i, name=s.name, kind=s.kind, business_days=s.business_days)
        for i, s in enumerate(steps, 1)
    ]
    session.flush()
    return found


# ---------------------------------------------------------------------------
# Loading onto cards


def _check_loadable(playbook: Playbook) -> None:
    if playbook.status != "active":
        state = {"inactive": "inativo", "archived": "arquivado"}.get(playbook.status)
        raise PlaybookNotLoadable(
            f"playbook {state} não pode ser carregado (playbook is {playbook.status}): "
            f"{playbook.name}"
        )
    if not playbook.steps:
        raise PlaybookNotLoadable(
            f"playbook sem tarefas não pode ser carregado (playbook has no tasks): {playbook.name}"
        )


def load_playbook(
    session: Session,
    playbook_id_or_name: int | str,
    customer_id: int,
    *,
    loaded_by: str,
    today: date,
    calendar: BusinessCalendar,
    rule_id: int | None = None,
) -> PlaybookLoad:
    """Load a playbook onto one card: one task per template, for the card's owner.

    Each task is due ``business_days`` after ``today`` on ``calendar`` (no due date
    when the template has none). Raises :class:`PlaybookNotLoadable` for an
    inactive, archived or empty playbook. Does not check for an open load of the
    same playbook: callers that must not repeat one ask :func:`has_open_load`.
    """
    loads = load_playbook_many(
        session,
        playbook_id_or_name,
        [customer_id],
        loaded_by=loaded_by,
        today=today,
        calendar=calendar,
        rule_id=rule_id,
    )
    return loads[0]


def load_playbook_many(
    session: Session,
    playbook_id_or_name: int | str | Playbook,
    customer_ids: Sequence[int],
    *,
    loaded_by: str,
    today: date,
    calendar: BusinessCalendar,
    rule_id: int | None = None,
) -> list[PlaybookLoad]:
    """:func:`load_playbook` onto many cards with a few statements per batch, not per card."""
    playbook = get_playbook(session, playbook_id_or_name)
    _check_loadable(playbook)
    due = [
        None if s.business_days is None else calendar.add_business_days(today, s.business_days)
        for s in playbook.steps
    ]
    templates = [(s.name, s.kind, d) for s, d in zip(playbook.steps, due, strict=True)]
    now = utcnow()
    loads: list[PlaybookLoad] = []
    for start in range(0, len(customer_ids), _BATCH):
        chunk = list(customer_ids[start : start + _BATCH])
        rows = session.execute(
            select(Customer.id, Customer.owner_id).where(Customer.id.in_(chunk))
        )
        owners = {customer_id: owner_id for customer_id, owner_id in rows}
        missing = [c for c in chunk if c not in owners]
        if missing:
            raise CustomerNotFound(f"Cliente não encontrado (customer not found): id {missing[0]}")
        # One INSERT .. RETURNING per batch gives the loads (and their ids) back as objects.
        batch = list(
            session.scalars(
                insert(PlaybookLoad).returning(PlaybookLoad, sort_by_parameter_order=True),
                [
                    {
                        "playbook_id": playbook.id,
                        "customer_id": c,
                        "rule_id": rule_id,
                        "loaded_by": loaded_by,
                        "loaded_on": today,
                        "status": "open",
                        "created_at": now,
                    }
                    for c in chunk
                ],
            )
        )
        # Core on the table: the ORM's bulk path splits a batch at every change of
        # which columns are NULL (dated and undated tasks alternate here).
        session.execute(
            insert(Task.__table__),
            [
                {
                    "customer_id": load.customer_id,
                    "load_id": load.id,
                    "name": name,
                    "kind": kind,
                    "due_date": due_date,
                    "assignee_id": owners[load.customer_id],
                    "status": "open",
                    "created_at": now,
                }
                for load in batch
                for name, kind, due_date in templates
            ],
        )
        loads.extend(batch)
    # One line per load for a person's load; a rule's run over many cards gets one line.
    level = logging.INFO if len(loads) == 1 else logging.DEBUG
    for load in loads:
        log.log(
            level,
            "load %s: playbook %s onto customer %s by %s",
            load.id,
            playbook.id,
            load.customer_id,
            loaded_by,
        )
    if len(loads) > 1:
        log.info("playbook %s: loaded onto %s cards by %s", playbook.id, len(loads), loaded_by)
    return loads


def has_open_load(
    session: Session, playbook_id: int, customer_id: int, rule_id: int | None = None
) -> bool:
    """Whether the card has an open load of the playbook (made by ``rule_id``, when given)."""
    query = select(PlaybookLoad.id).where(
        PlaybookLoad.playbook_id == playbook_id,
        PlaybookLoad.customer_id == customer_id,
        PlaybookLoad.status == "open",
    )
    if rule_id is not None:
        query = query.where(PlaybookLoad.rule_id == rule_id)
    return session.scalar(query.limit(1)) is not None


def open_load_customer_ids(
    session: Session, playbook_id: int, rule_id: int | None = None
) -> set[int]:
    """Cards with an open load of the playbook: :func:`has_open_load` for many at once."""
    query = select(PlaybookLoad.customer_id).where(
        PlaybookLoad.playbook_id == playbook_id, PlaybookLoad.status == "open"
    )
    if rule_id is not None:
        query = query.where(PlaybookLoad.rule_id == rule_id)
    return set(session.scalars(query))


def load_onto_customer(
    session: Session,
    playbook: int | str,
    customer_code: str,
    *,
    loaded_by: str,
    today: date,
    calendar: BusinessCalendar,
) -> PlaybookLoad:
    """What a person asks for: load by card code, refusing a second open load."""
    customer = get_customer(session, customer_code)
    found = get_playbook(session, playbook)
    if has_open_load(session, found.id, customer.id):
        raise PlaybookAlreadyLoaded(
            f"playbook já carregado e em aberto neste cliente (already loaded and open): "
            f"{found.name} em {customer.code}"
        )
    return load_playbook(
        session, found.id, customer.id, loaded_by=loaded_by, today=today, calendar=calendar
    )


def close_finished_loads(session: Session, customer_id: int | None = None) -> int:
    """Close every open load none of whose tasks is open; returns how many were closed."""
    open_task = exists().where(Task.load_id == PlaybookLoad.id, Task.status == "open")
    statement = (
        update(PlaybookLoad)
        .where(PlaybookLoad.status == "open", ~open_task)
        .values(status="closed", closed_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if customer_id is not None:
        statement = statement.where(PlaybookLoad.customer_id == customer_id)
    closed = session.execute(statement).rowcount or 0
    if closed:
        session.expire_all()
        log.info("%s finished loads closed", closed)
    return closed


def close_load_if_finished(session: Session, load_id: int) -> bool:
    """Close one load when none of its tasks is open; whether it was closed now."""
    load = session.get(PlaybookLoad, load_id)
    if load is None or load.status != "open":
        return False
    still_open = session.scalar(
        select(exists().where(Task.load_id == load_id, Task.status == "open"))
    )
    if still_open:
        return False
    load.status = "closed"
    load.closed_at = utcnow()
    session.flush()
    log.info("load %s closed: no open tasks left", load_id)
    return True


# ---------------------------------------------------------------------------
# Files


def _refused_file(message: str, problems: list[str]) -> InvalidPlaybook:
    """A playbook file that cannot be used: one message, the problems already in it."""
    return InvalidPlaybook(message)


def read_playbook_file(path: Path | str) -> list[PlaybookSpec]:
    """Parse and check a playbook file; every problem is reported at once."""
    file = Path(path)
    data = read_definition_file(file, _refused_file)
    return parse_playbooks(data, source=file.name)


def parse_playbooks(data: Any, *, source: str = "arquivo") -> list[PlaybookSpec]:
    """Playbooks from parsed TOML/YAML data; raises one error listing every problem."""
    if isinstance(data, Mapping):
        entries = _top_level_entries(data, source)
    elif isinstance(data, list):
        entries = data
    else:
        raise InvalidPlaybook(f"{source}: nenhum playbook encontrado (no playbooks found)")
    if not entries:
        raise InvalidPlaybook(f"{source}: nenhum playbook encontrado (no playbooks found)")
    problems: list[str] = []
    specs: list[PlaybookSpec] = []
    seen: set[str] = set()
    for number, entry in enumerate(entries, 1):
        spec = _parse_entry(entry, number, problems)
        if spec is None:
            continue
        if spec.name.lower() in seen:
            problems.append(f"playbook {spec.name!r}: repetido no arquivo (duplicate name)")
        seen.add(spec.name.lower())
        specs.append(spec)
    if problems:
        raise InvalidPlaybook(f"{source}: " + "; ".join(problems))
    return specs


def _top_level_entries(data: Mapping[str, Any], source: str) -> list[Any]:
    for key in ("playbooks", "playbook"):
        if key in data:
            value = data[key]
            extra = sorted(set(data) - {key})
            if extra:
                raise InvalidPlaybook(f"{source}: chave desconhecida (unknown key): {extra[0]}")
            return value if isinstance(value, list) else [value]
    return [data]


def _parse_entry(entry: Any, number: int, problems: list[str]) -> PlaybookSpec | None:
    if not isinstance(entry, Mapping):
        problems.append(f"playbook {number}: esperava nome e tarefas (expected a table)")
        return None
    values: dict[str, Any] = {}
    label = f"playbook {number}"
    raw_name = next(
        (entry[k] for k in entry if _PLAYBOOK_KEYS.get(normalise_name(k)) == "name"), None
    )
    if isinstance(raw_name, str) and raw_name.strip():
        label = f"playbook {raw_name.strip()!r}"
    for key, value in entry.items():
        meaning = _PLAYBOOK_KEYS.get(normalise_name(str(key)))
        if meaning is None:
            problems.append(f"{label}: chave desconhecida (unknown key) {key!r}")
        else:
            values[meaning] = value
    try:
        name = _check_name(str(values.get("name") or ""))
    except InvalidPlaybook as exc:
        problems.append(f"{label}: {exc}")
        return None
    active = values.get("active", True)
    if not isinstance(active, bool):
        problems.append(f"{label}: active/ativo deve ser true ou false (must be true or false)")
    tasks = values.get("tasks") or []
    if not isinstance(tasks, list):
        problems.append(f"{label}: tarefas deve ser uma lista (tasks must be a list)")
        tasks = []
    steps = []
    for position, task in enumerate(tasks, 1):
        step = _parse_task(task, f"{label}, tarefa {position}", problems)
        if step is not None:
            steps.append(step)
    return PlaybookSpec(name=name, active=active is not False, steps=steps)


def _parse_task(task: Any, label: str, problems: list[str]) -> StepSpec | None:
    if not isinstance(task, Mapping):
        problems.append(f"{label}: esperava nome, tipo e dias (expected a table)")
        return None
    values: dict[str, Any] = {}
    for key, value in task.items():
        meaning = _TASK_KEYS.get(normalise_name(str(key)))
        if meaning is None:
            problems.append(f"{label}: chave desconhecida (unknown key) {key!r}")
        else:
            values[meaning] = value
    if "kind" not in values:
        problems.append(f"{label}: falta o tipo (kind missing): ligação, email ou outro")
        return None
    try:
        return make_step(str(values.get("name") or ""), str(values["kind"]), values.get("days"))
    except InvalidPlaybook as exc:
        problems.append(f"{label}: {exc}")
        return None


def import_playbooks(session: Session, path: Path | str) -> DefinitionImportReport:
    """Create the file's playbooks, or replace the tasks and status of those that exist."""
    specs = read_playbook_file(path)
    report = DefinitionImportReport()
    for spec in specs:
        try:
            existing = get_playbook(session, spec.name)
        except PlaybookNotFound:
            existing = None
        if existing is None or existing.status == "archived":
            create_playbook(session, spec.name, spec.steps, active=spec.active)
            report.created.append(spec.name)
        else:
            replace_steps(session, existing, spec.steps)
            existing.status = "active" if spec.active else "inactive"
            report.updated.append(existing.name)
    session.flush()
    log.info(
        "playbooks import %s: %s created, %s updated",
        Path(path).name,
        len(report.created),
        len(report.updated),
    )
    return report


def playbook_spec(playbook: Playbook) -> PlaybookSpec:
    return PlaybookSpec(
        name=playbook.name,
        active=playbook.status == "active",
        steps=[StepSpec(s.name, s.kind, s.business_days) for s in playbook.steps],
    )


def dump_playbooks(specs: Sequence[PlaybookSpec], fmt: str) -> str:
    """Playbooks as TOML or YAML text in the documented format."""
    if fmt == "yaml":
        data = {
            "playbooks": [
                {
                    "name": spec.name,
                    "active": spec.active,
                    "tasks": [
                        {"name": s.name, "kind": s.kind}
                        | ({} if s.business_days is None else {"days": s.business_days})
                        for s in spec.steps
                    ],
                }
                for spec in specs
            ]
        }
        return yaml_document(data)
    lines = ["# Playbooks do Portaria (Portaria playbooks)"]
    for spec in specs:
        lines += ["", "[[playbooks]]", toml_pair("name", spec.name)]
        lines.append(toml_pair("active", spec.active))
        for step in spec.steps:
            lines += ["", "[[playbooks.tasks]]"]
            lines.append(toml_pair("name", step.name))
            lines.append(toml_pair("kind", step.kind))
            if step.business_days is not None:
                lines.append(toml_pair("days", step.business_days))
    return "\n".join(lines) + "\n"


def export_playbooks(
    session: Session, playbooks: Sequence[int | str], path: Path | str
) -> list[str]:
    """Write the named playbooks (all active and inactive ones when none named) to a file."""
    file = Path(path)
    fmt = file_format(file, _refused_file)
    found = [get_playbook(session, p) for p in playbooks] if playbooks else list_playbooks(session)
    file.write_text(dump_playbooks([playbook_spec(p) for p in found], fmt), encoding="utf-8")
    log.info("playbooks export %s: %s", file.name, ", ".join(p.name for p in found))
    return [p.name for p in found]
