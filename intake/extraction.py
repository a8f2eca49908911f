"""Extraction: the people an #ACESSO request names, each with four fields.

This module owns turning a read message into people (name, email, area and
access type): it groups the field items of each part of the body into
people, chooses the part that names them, and adds CSV attachments and
attached messages. The stages it drives each have their own module:

- `intake.vocabulary`: the tables (labels, synonyms, markers), as data;
- `intake.folding`: the body normalised, words folded for comparing;
- `intake.segments`: new text, quoted and forwarded parts, signatures;
- `intake.fields`: what the lines of one part state, as field items;
- `intake.values`: what one value means (an address, an access type).

How a message is read, in order:

1. The body text is split into segments: the new text first, then each
   quoted or forwarded part ("> " lines, "Em ... escreveu:", "-----Mensagem
   original-----", "De:/From: ... Assunto:/Subject:" blocks). New text wins:
   people come from the first segment that names anyone. Fields stated alone
   in earlier segments (a reply that only adds "Área: X") are defaults for
   the people found later.
2. A segment ends at its signature ("-- ", a closing such as "Obrigada," or
   the author's own name alone on a line).
3. Each line becomes labelled fields ("Nome: X", "Nome: X; E-mail: y",
   "Nome<TAB>X"), table rows under a header row, checkbox marks, or the
   unlabelled forms "Fulano de Tal <fulano@x>" and "name; email; area;
   access" rows.
4. Fields are grouped into people: a field that the current person already
   has starts the next person. Fields stated before the first person, or
   marked "para todos" / "for all", apply to every person lacking them.
   A field written but unusable (an address with loose words, two access
   types, a name too long: see `intake.values`) stays empty, is missing, and
   keeps its problem, which the requester is told; a default does not fill it.
5. CSV attachments (header row naming the columns) add their rows; an
   attached message (forward as attachment) is read when the body names
   nobody.

Job titles are deliberately not access types: see `intake.vocabulary`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import pairwise

from intake.errors import UnreadableMessage
from intake.fields import Item, Reading, header_row, read_lines, row_items
from intake.folding import normalise
from intake.reading import ReadMessage, read_message
from intake.segments import split_segments, without_signature
from intake.values import (
    MAX_AREA_CHARS,
    Problem,
    parse_access_type,
    parse_email,
    read_access_type,
    read_area,
    read_email,
    read_name,
)
from intake.vocabulary import ACCESS_WORDS, AREA_KINDS, LABEL_WORDS, AccessType

log = logging.getLogger(__name__)

# The vocabularies and value parsers are published here too, where callers
# have always found them.
__all__ = [
    "ACCESS_WORDS",
    "AREA_KINDS",
    "FIELD_NAMES",
    "LABEL_WORDS",
    "Extraction",
    "Person",
    "Problem",
    "extract",
    "parse_access_type",
    "parse_email",
]

FIELD_NAMES = ("name", "email", "area", "access_type")

# How each field's value is read: the value, or why it cannot be used.
_READERS = {
    "name": read_name,
    "email": read_email,
    "access_type": read_access_type,
}


@dataclass
class Person:
    """One person named by a request, with whatever fields were found.

    ``problems`` holds, for a field that was written but cannot be used, why;
    that field is None and missing like one never written.
    """

    name: str | None = None
    email: str | None = None
    area: str | None = None
    access_type: AccessType | None = None
    problems: dict[str, Problem] = field(default_factory=dict)

    @property
    def missing(self) -> list[str]:
        """Names of the fields not found or not usable, in FIELD_NAMES order."""
        return [name for name in FIELD_NAMES if getattr(self, name) is None]

    @property
    def complete(self) -> bool:
        return not self.missing


@dataclass
class Extraction:
    """The people found in one message, and where they were found."""

    people: list[Person]
    source: str = "body"

    @property
    def complete_people(self) -> list[Person]:
        return [person for person in self.people if person.complete]

    @property
    def incomplete_people(self) -> list[Person]:
        return [person for person in self.people if not person.complete]

    @property
    def missing(self) -> list[str]:
        """Fields missing for any person, in FIELD_NAMES order."""
        gaps = {name for person in self.people for name in person.missing}
        return [name for name in FIELD_NAMES if name in gaps]

    @property
    def problems(self) -> list[tuple[int, str, Problem]]:
        """(person's index, field, problem) for every field written but unusable, in order."""
        return [
            (index, name, person.problems[name])
            for index, person in enumerate(self.people)
            for name in FIELD_NAMES
            if name in person.problems
        ]


# --------------------------------------------------------------------------
# People: field items grouped into persons


def _apply(person: Person, item: Item, kinds: list[str]) -> bool:
    """Set `item` on `person`; False when the person already has that field."""
    if item.field == "area":
        kind = item.area_kind or "area"
        if kind in kinds:
            return False
        area, problem = read_area(item.value)
        if area is None and problem is None:
            return True
        kinds.append(kind)
        _add_area_part(person, area, problem)
        return True
    if getattr(person, item.field) is not None or item.field in kinds:
        return False
    kinds.append(item.field)
    value, problem = _READERS[item.field](item.value)
    setattr(person, item.field, value)
    if problem is not None:
        person.problems[item.field] = problem
    return True


def _add_area_part(person: Person, area: str | None, problem: Problem | None) -> None:
    """Join `area` to the parts the person has, unless the whole is unusable."""
    if "area" in person.problems:
        return  # one part is already unusable: so is the whole area
    joined = f"{person.area} / {area}" if person.area else area
    if problem is None and joined is not None and len(joined) > MAX_AREA_CHARS:
        problem = Problem("too_long", length=len(joined), limit=MAX_AREA_CHARS)
    if problem is not None:
        person.area = None
        person.problems["area"] = problem
    else:
        person.area = joined


def _group(items: Iterable[Item]) -> tuple[list[Person], dict[str, Item]]:
    """People from items in reading order, and the fields meant for everyone.

    Returns (people, defaults). A field repeated for the same person starts a
    new person. Fields seen before anyone is named, or marked for all, are
    defaults for every person who lacks them.
    """
    people: list[Person] = []
    kinds: list[list[str]] = []
    defaults: dict[str, Item] = {}
    pending: list[Item] = []
    for item in items:
        if item.for_all:
            defaults.setdefault(item.field, item)
            continue
        if not people and item.field not in ("name", "email"):
            pending.append(item)
            continue
        if not people or not _apply(people[-1], item, kinds[-1]):
            people.append(Person())
            kinds.append([])
            for earlier in pending if len(people) == 1 else ():
                _apply(people[-1], earlier, kinds[-1])
            _apply(people[-1], item, kinds[-1])
    for item in pending:
        defaults.setdefault(item.field, item)
    if not people and pending:
        people.append(Person())
        kinds.append([])
        for item in pending:
            _apply(people[-1], item, kinds[-1])
    _contradicted_access(people)
    return people, defaults


def _contradicted_access(people: list[Person]) -> None:
    """Two access types in a row for one person make the access type unusable.

    "Acesso: Comum" then "Perfil: Admin" starts a next person by the grouping
    rule; when nobody is ever named for it, the second type was said of the
    person before, and the first one cannot simply win.
    """
    for before, after in pairwise(people):
        if not _identified(before) or _identified(after):
            continue
        found = (before.access_type, after.access_type)
        if None not in found and found[0] != found[1]:
            before.access_type = None
            before.problems["access_type"] = Problem("several", found=found)


def _fill(people: list[Person], defaults: dict[str, Item]) -> None:
    """Give each person the defaults for the fields they lack.

    A field written for the person but unusable is not lacking: the default
    would replace what the requester wrote for this person with a guess.
    """
    for person in people:
        for item in defaults.values():
            if getattr(person, item.field) is None and item.field not in person.problems:
                _apply(person, item, [])


def _identified(person: Person) -> bool:
    """Whether someone is named, even by a name or address that cannot be used."""
    return (
        person.name is not None
        or person.email is not None
        or not {"name", "email"}.isdisjoint(person.problems)
    )


def _trailing_defaults(people: list[Person], items: list[Item]) -> dict[str, Item]:
    """Fields stated once after the last person's block, for everyone.

    "Nome: A ... Nome: B ...<blank line>Perfil: Comum" states the access for
    all: the trailing field belongs to the last person only by position.
    """
    if len(people) < 2 or not items:
        return {}
    trailing: dict[str, Item] = {}
    last_identity = max(
        (i for i, item in enumerate(items) if item.field in ("name", "email")), default=-1
    )
    for item in items[last_identity + 1 :]:
        if item.field in ("name", "email") or item.for_all:
            continue
        gap = item.line - items[last_identity].line > 1 if last_identity >= 0 else False
        if gap and all(getattr(person, item.field) is None for person in people[:-1]):
            trailing.setdefault(item.field, item)
    return trailing


def _people_of(reading: Reading) -> tuple[list[Person], dict[str, Item]]:
    people, defaults = _group(reading.items)
    trailing = _trailing_defaults(people, reading.items)
    if trailing:
        defaults = {**trailing, **defaults}
    for row in reading.rows:
        row_people, row_defaults = _group(row)
        people.extend(row_people)
        for key, value in row_defaults.items():
            defaults.setdefault(key, value)
    return people, defaults


def _addresses(person: Person) -> set[str]:
    """The addresses stated for `person`, usable or not (an unclear one has one)."""
    if person.email is not None:
        return {person.email}
    problem = person.problems.get("email")
    return set(problem.found) if problem is not None else set()


def _drop_participants(people: list[Person], participants: set[str]) -> list[Person]:
    """Drop people who are only a signature: a participant's address, nothing else."""
    return [
        person
        for person in people
        if not (addresses := _addresses(person))
        or not addresses <= participants
        or person.area is not None
        or person.access_type is not None
        or not {"area", "access_type"}.isdisjoint(person.problems)
    ]


def _dedupe(people: list[Person]) -> list[Person]:
    """One person per address: later mentions fill the fields the first lacks.

    Two different access types for the same address are a problem, as they
    are in one value: neither mention is more the requester's than the other.
    """
    seen: dict[str, Person] = {}
    result: list[Person] = []
    for person in people:
        if person.email is None:
            result.append(person)
            continue
        first = seen.get(person.email)
        if first is None:
            seen[person.email] = person
            result.append(person)
            continue
        _merge(first, person)
    return result


def _merge(first: Person, later: Person) -> None:
    if first.access_type is not None and later.access_type not in (None, first.access_type):
        found = (first.access_type, later.access_type)
        first.access_type = None
        first.problems["access_type"] = Problem("several", found=found)
    for name in FIELD_NAMES:
        if getattr(first, name) is not None:
            continue
        if getattr(later, name) is not None and name not in first.problems:
            setattr(first, name, getattr(later, name))
        elif name in later.problems and name not in first.problems:
            first.problems[name] = later.problems[name]


# --------------------------------------------------------------------------
# Messages: the body, its HTML twin and the attachments


@dataclass
class _Found:
    """People read from one text, the defaults it states, and where."""

    people: list[Person]
    defaults: dict[str, Item]
    source: str

    def score(self) -> tuple[int, int, int]:
        complete = sum(person.complete for person in self.people)
        named = sum(map(_identified, self.people))
        missing = sum(len(person.missing) for person in self.people)
        return complete, named, -missing


def _from_text(text: str, message: ReadMessage, source: str) -> _Found:
    participants = {message.from_address} if message.from_address else set()
    segments = split_segments(normalise(text), message.from_name, message.from_address)
    participants.update(segment.author_address for segment in segments if segment.author_address)

    defaults: dict[str, Item] = {}
    partial: list[Person] = []
    for position, segment in enumerate(segments):
        reading = read_lines(without_signature(segment), participants)
        people, stated = _people_of(reading)
        people = _drop_participants(people, participants)
        for key, value in stated.items():
            defaults.setdefault(key, value)
        named = [person for person in people if _identified(person)]
        if named:
            _fill(named, defaults)
            where = source if position == 0 else f"{source}, quoted part {position}"
            return _Found(_dedupe(named), defaults, where)
        # Nobody named here: what this part states applies to those named later.
        for person in people:
            for name in FIELD_NAMES:
                value = getattr(person, name)
                if value is not None:
                    defaults.setdefault(name, Item(name, value, -1))
        partial = partial or people
    _fill(partial, defaults)
    return _Found(partial, defaults, source)


def _from_csv(rows: list[list[str]]) -> list[Person]:
    """People from CSV rows whose first row names the columns."""
    header = header_row(rows[0]) if rows else None
    if header is None:
        return []
    people: list[Person] = []
    for number, cells in enumerate(rows[1:], start=1):
        row_people, _ = _group(row_items(header, cells, number))
        people.extend(person for person in row_people if _identified(person))
    return people


def extract(message: ReadMessage) -> Extraction:
    """The people `message` asks access for.

    Never empty: when nobody is found, the one Person has every field None,
    so the request is incomplete with all four fields missing.
    """
    return _extract(message, read_attached=True)


def _extract(message: ReadMessage, *, read_attached: bool) -> Extraction:
    found = _from_text(message.text, message, "body")
    incomplete = not found.people or any(not person.complete for person in found.people)
    if incomplete and message.html and message.text != message.html_text:
        # The HTML keeps the table structure that the plain part may have lost.
        from_html = _from_text(message.html_text, message, "html")
        if from_html.score() > found.score():
            found = from_html

    named = [person for person in found.people if _identified(person)]
    source = found.source
    for attachment in message.attachments:
        if attachment.is_csv:
            tabular = _from_csv(attachment.rows())
            if tabular:
                _fill(tabular, found.defaults)
                named.extend(tabular)
                source = f"{source} + {attachment.filename or 'csv'}"
        elif attachment.content_type == "message/rfc822" and read_attached and not named:
            inner = _attached_message(attachment.payload, message)
            if inner is not None:
                _fill(inner.people, found.defaults)
                named.extend(person for person in inner.people if _identified(person))
                source = f"attached message ({inner.source})"

    people = _dedupe(named) or found.people or [Person()]
    extraction = Extraction(people, source)
    log.debug(
        "%s: %d people from %s, missing %s",
        message.message_id,
        len(people),
        source,
        extraction.missing,
    )
    return extraction


def _attached_message(payload: bytes, message: ReadMessage) -> Extraction | None:
    try:
        # One level only: an attachment's own attachments are not read.
        return _extract(read_message(payload), read_attached=False)
    except UnreadableMessage:
        log.info("%s: attached message is unreadable", message.message_id)
        return None
