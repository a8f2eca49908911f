"""Fields: what the lines of one segment state, as field items in order.

This module owns the shapes a request is written in: labels ("Nome:",
"E-mail do colaborador:"), several labelled fields on one line, a label
with its value on the next line, table rows under a header row, columns of
a label/values table, checkbox lines, and the unlabelled forms "Fulano de
Tal <fulano@x>" and "name; email; area; access". It says which field each
value is for; `intake.extraction` groups the items into people.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from intake.folding import folded_words
from intake.values import (
    PARENTHESES,
    clean_value,
    looks_like_name,
    parse_access_type,
    parse_email,
    read_access_type,
    read_email,
    read_name,
    split_name_address,
)
from intake.vocabulary import (
    AREA_KIND_OF,
    CHECKED_SYMBOLS,
    FIELD_SEPARATORS,
    FOR_ALL_WORDS,
    LABEL_FILLERS,
    LABEL_HEADS,
    PERSON_NOUNS,
    UNCHECKED_SYMBOLS,
)

__all__ = [
    "Item",
    "Label",
    "Reading",
    "header_row",
    "names_someone",
    "read_lines",
    "row_items",
]

# A label is a few words: longer text before a colon is a sentence.
MAX_LABEL_CHARS = 60
MAX_LABEL_WORDS = 8
# List markers before a label or a person: "- ", "• ", "1. ", "a) ", "> ".
_LIST_MARKER = re.compile(r"^\s*(?:[-–•·▪►●○◦*>#]+\s*|\d{1,3}\s*[.)º°-]\s*|[a-z]\s*[.)]\s+)")
# Emphasis around a label: "*Nome:*", "_Área_".
_MARKUP = str.maketrans("", "", "*_~`")
# A line that starts with a checkbox: "[x] Admin", "( ) Comum", "☑ Agente".
_CHECKBOX_SYMBOLS = re.escape("".join(sorted(CHECKED_SYMBOLS | UNCHECKED_SYMBOLS)))
_CHECKBOX_START = re.compile(
    rf"^\s*(?:[-•*]\s*)?(?:\[\s*[^\]]?\s*\]|\(\s*[^)]?\s*\)|[{_CHECKBOX_SYMBOLS}])"
)
# Cell separators of a table row, in order of preference: a TAB-separated
# row may hold commas inside its cells.
_CELL_SEPARATORS = ("\t", ";", "|", ",")
# The characters of a markdown divider row ("|---|:--:|").
_DIVIDER_CHARS = frozenset("|-:+ \t")


@dataclass(frozen=True)
class Label:
    """What a label names: a field, the kind of area, whether it is for all."""

    field: str  # a FIELD_NAMES entry, or "name_email" for "Nome e e-mail"
    area_kind: str | None = None
    for_all: bool = False


@dataclass
class Item:
    """One field stated for someone: a value with the line it was read on."""

    field: str
    value: str
    line: int
    area_kind: str | None = None
    for_all: bool = False


@dataclass
class Reading:
    """What the lines of one segment say: field items, in order, and table rows."""

    items: list[Item] = field(default_factory=list)
    # Each table row (or column of a label/values table) is one person.
    rows: list[list[Item]] = field(default_factory=list)


# --------------------------------------------------------------------------
# Labels


def _label(text: str) -> Label | None:
    """What a label names, or None when `text` is not a known label."""
    if len(text) > MAX_LABEL_CHARS:
        return None
    text = _LIST_MARKER.sub("", text.translate(_MARKUP))
    text = PARENTHESES.sub(" ", text)
    words = folded_words(text)
    if not words or len(words) > MAX_LABEL_WORDS:
        return None
    fields: list[str] = []
    kinds: list[str] = []
    for_all = False
    person_noun = False
    for word in words:
        head = LABEL_HEADS.get(word)
        if head is not None:
            if head not in fields:
                fields.append(head)
            if head == "area":
                kinds.append(AREA_KIND_OF.get(word, "area"))
        elif word in FOR_ALL_WORDS:
            for_all = True
        elif word in PERSON_NOUNS:
            person_noun = True
        elif word not in LABEL_FILLERS and not word.isdigit():
            return None
    if not fields:
        return Label("name") if person_noun else None
    if fields == ["access_type", "area"] or fields == ["area", "access_type"]:
        # "Tipo de área" is not a thing; "tipo" is the access word only alone.
        fields = ["area"]
    if len(fields) == 1:
        kind = "/".join(dict.fromkeys(kinds)) if fields[0] == "area" else None
        return Label(fields[0], kind, for_all)
    if set(fields) == {"name", "email"}:
        return Label("name_email", None, for_all)
    return None


def _labelled(part: str) -> tuple[Label, str] | None:
    """(label, value) when `part` reads "Label: value" (or "Label - value")."""
    colon = part.find(":")
    if colon > 0:
        label = _label(part[:colon])
        if label is not None:
            return label, part[colon + 1 :]
    for dash in (" - ", " – ", " — "):
        position = part.find(dash)
        if position > 0:
            label = _label(part[:position])
            if label is not None:
                return label, part[position + len(dash) :]
            break
    return None


def names_someone(line: str) -> bool:
    """Whether `line` is a labelled name ("Nome: Ana", "Nome e e-mail: ...")."""
    labelled = _labelled(_LIST_MARKER.sub("", line.strip()))
    return labelled is not None and labelled[0].field in ("name", "name_email")


# --------------------------------------------------------------------------
# Lines: what each line states


def _items_for(label: Label, raw_value: str, line: int) -> list[Item]:
    """The field items a labelled value gives (none when the value is empty).

    An email value is kept whole: whether it is one usable address depends
    on all of it (`intake.values.read_email`), not on the address found in it.
    """
    value = clean_value(raw_value)
    if value is None:
        return []
    if label.field in ("name", "name_email"):
        # Under a name label, the words before an address are the name.
        name, address = split_name_address(value)
        if address is not None:
            items = [Item("email", address, line, for_all=label.for_all)]
            if name and read_name(name) != (None, None):
                items.insert(0, Item("name", name, line))
            return items
        if label.field == "name_email":
            return [Item("name", value, line)] if read_name(value) != (None, None) else []
        return [Item("name", value, line, for_all=label.for_all)]
    if label.field == "email":
        items = [Item("email", value, line, for_all=label.for_all)]
        address, _ = read_email(value)
        name, _ = split_name_address(value) if address else (None, None)
        if name and looks_like_name(name):
            items.append(Item("name", name, line, for_all=False))
        return items
    # "Perfil: Comum para todos" states the access for everyone too.
    for_all = label.for_all or (
        label.field == "access_type" and not FOR_ALL_WORDS.isdisjoint(folded_words(value))
    )
    return [Item(label.field, value, line, label.area_kind, for_all)]


def _split_fields(line: str) -> list[str]:
    """Split a line at ; | TAB and ", " outside parentheses; separators kept."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    index = 0
    size = len(line)
    while index < size:
        char = line[index]
        if char in "([":
            depth += 1
        elif char in ")]" and depth:
            depth -= 1
        elif not depth and (char in FIELD_SEPARATORS or line.startswith(", ", index)):
            parts.append("".join(current))
            parts.append(char)
            current = []
            index += 1
            continue
        current.append(char)
        index += 1
    parts.append("".join(current))
    return parts


def header_row(cells: Sequence[str]) -> list[Label | None] | None:
    """The column labels when `cells` is a table header row naming 2+ fields."""
    if len(cells) < 2 or any("@" in cell for cell in cells):
        return None
    labels = [_label(cell.rstrip(":")) if cell.strip() else None for cell in cells]
    fields = {label.field for label in labels if label is not None}
    if len(fields) < 2:
        return None
    return labels


def _cells(line: str) -> list[str]:
    """Cells of a table-like line (TAB, ; or | separated), or [] if not one."""
    stripped = line.strip().strip("|").strip()
    for separator in _CELL_SEPARATORS:
        if separator in stripped:
            return [cell.strip() for cell in stripped.split(separator)]
    return []


def row_items(labels: Sequence[Label | None], cells: Sequence[str], line: int) -> list[Item]:
    """The items of one table row, each cell read under its column's label."""
    items: list[Item] = []
    for label, cell in zip(labels, cells, strict=False):
        if label is not None and cell.strip():
            items.extend(_items_for(label, cell, line))
    return items


def read_lines(lines: list[str], participants: set[str]) -> Reading:
    """What `lines` state, in order; `participants` are addresses named by no one.

    An unlabelled address of a participant (the sender, a quoted author) is
    the signature of someone writing, not a person to give access to.
    """
    reading = Reading()
    index = 0
    count = len(lines)
    while index < count:
        line = lines[index].strip()
        index += 1
        if not line:
            continue

        cells = _cells(line)
        header = header_row(cells)
        if header is not None:
            index = _read_table(lines, index, header, cells, reading)
            continue
        if "\t" in line and cells and _label(cells[0].rstrip(":")) is not None:
            index = _read_column_table(lines, index - 1, reading)
            continue

        parts = _split_fields(line)
        found = _read_labelled_parts(parts, index - 1)
        if found is not None:
            items, trailing_label = found
            reading.items.extend(items)
            if trailing_label is not None:
                # "Nome:" alone: the value is on the next non-empty line.
                index = _read_value_below(lines, index, trailing_label, reading)
            continue

        bare = _label(line.rstrip(":")) if len(line) <= MAX_LABEL_CHARS else None
        if bare is not None:
            # A label alone on its line, as Outlook renders table cells in text.
            index = _read_value_below(lines, index, bare, reading)
            continue

        if _CHECKBOX_START.match(line):
            index = _read_checkboxes(lines, index - 1, reading)
            continue

        unlabelled = _unlabelled(line, parts, participants, index - 1)
        if unlabelled:
            if any(item.field == "email" for item in unlabelled) and len(unlabelled) > 2:
                reading.rows.append(unlabelled)
            else:
                reading.items.extend(unlabelled)
            continue

        if folded_words(line) and set(folded_words(line)) & FOR_ALL_WORDS:
            access = parse_access_type(line)
            if access is not None:
                reading.items.append(Item("access_type", access, index - 1, for_all=True))
    return reading


def _read_checkboxes(lines: list[str], index: int, reading: Reading) -> int:
    """A list of checkbox lines, read as one choice; returns the index after it.

    Read line by line, a second checked access type would be taken for the
    next person's; read together, two checked types are seen as two.
    """
    start = index
    marked = [lines[index].strip()]
    index += 1
    while index < len(lines) and (not lines[index].strip() or _is_checkbox(lines[index])):
        if lines[index].strip():
            marked.append(lines[index].strip())
        index += 1
    value = " ".join(marked)
    access, problem = read_access_type(value)
    if access is not None:
        reading.items.append(Item("access_type", access, start))
    elif problem is not None and problem.kind == "several":
        reading.items.append(Item("access_type", value, start))
    # Otherwise the boxes choose no access type: a list of something else.
    return index


def _is_checkbox(line: str) -> bool:
    """A checkbox line, not a labelled one that starts like one ("(1) Nome: Ana")."""
    line = line.strip()
    return bool(_CHECKBOX_START.match(line)) and _labelled(_LIST_MARKER.sub("", line)) is None


def _split_embedded(text: str) -> list[str]:
    """Split "Nome: Ana Reis E-mail: ana@x" before each later "Label:"."""
    first = text.find(":")
    if first < 0:
        return [text]
    pieces: list[str] = []
    start = 0
    floor = first + 1  # a later label starts after the previous label's colon
    colon = text.find(":", floor)
    while colon > 0:
        # The longest run of up to four words before the colon that is a label.
        word_start = colon
        label_start = -1
        for _ in range(MAX_LABEL_WORDS // 2):
            space = text.rfind(" ", floor, word_start)
            if space < 0 or not text[floor:space].strip():
                break
            word_start = space
            if _label(text[space + 1 : colon]) is not None:
                label_start = space
        if label_start > 0:
            pieces.append(text[start:label_start])
            start = label_start + 1
        floor = colon + 1
        colon = text.find(":", floor)
    pieces.append(text[start:])
    return pieces


def _read_labelled_parts(parts: list[str], line: int) -> tuple[list[Item], Label | None] | None:
    """Items of "Label: value" parts; None when the line has no labelled part.

    Unlabelled parts continue the value before them ("Área: Vendas, Norte");
    a label inside a part ("Nome: Ana E-mail: ana@x") starts a new part.
    Returns the label of a final empty "Label:" part, whose value comes next.
    """
    texts: list[str] = []
    separators: list[str] = []
    for position, text in enumerate(parts[0::2]):
        pieces = _split_embedded(text)
        if position:
            separators.append(parts[2 * position - 1])
        separators.extend([" "] * (len(pieces) - 1))
        texts.extend(pieces)
    found: list[tuple[Label, list[str]]] = []  # (label, pieces of its value)
    for position, text in enumerate(texts):
        labelled = _labelled(text)
        if labelled is not None:
            found.append((labelled[0], [labelled[1]]))
        elif found:
            found[-1][1].extend((separators[position - 1], text))
        elif text.strip():
            return None
    if not found:
        return None
    items: list[Item] = []
    trailing: Label | None = None
    for label, pieces in found:
        value = "".join(pieces)
        new = _items_for(label, value, line)
        items.extend(new)
        trailing = label if not new and not value.strip() else None
    return items, trailing


def _read_value_below(lines: list[str], index: int, label: Label, reading: Reading) -> int:
    while index < len(lines) and not lines[index].strip():
        index += 1
    if index >= len(lines):
        return index
    below = lines[index].strip()
    if _labelled(below) is not None or header_row(_cells(below)) is not None:
        return index
    if len(below) <= MAX_LABEL_CHARS and _label(below.rstrip(":")) is not None:
        return index  # another label: this one was left empty
    if label.field == "access_type" and _CHECKBOX_START.match(below):
        return index  # a checkbox list: each line is read on its own
    reading.items.extend(_items_for(label, below, index))
    return index + 1


def _read_table(
    lines: list[str],
    index: int,
    header: list[Label | None],
    header_cells: list[str],
    reading: Reading,
) -> int:
    separator = next(sep for sep in _CELL_SEPARATORS if sep in lines[index - 1])
    while index < len(lines):
        line = lines[index].strip()
        if not line:
            index += 1
            continue
        if separator not in line or set(line) <= _DIVIDER_CHARS:
            if set(line) <= _DIVIDER_CHARS:
                index += 1  # a markdown divider row
                continue
            break
        cells = [cell.strip() for cell in line.strip().strip("|").strip().split(separator)]
        items = row_items(header, cells, index)
        if items:
            reading.rows.append(items)
        index += 1
    return index


def _read_column_table(lines: list[str], index: int, reading: Reading) -> int:
    """Table rows "Label<TAB>value[<TAB>value...]": one person per value column.

    With a single value column the items join the running text, so a table
    of some fields and paragraphs with the others still make one person.
    """
    columns: dict[int, list[Item]] = {}
    while index < len(lines):
        cells = [cell.strip() for cell in lines[index].strip().split("\t")]
        label = _label(cells[0].rstrip(":")) if len(cells) > 1 else None
        if label is None:
            break
        for column, value in enumerate(cells[1:]):
            if value:
                columns.setdefault(column, []).extend(_items_for(label, value, index))
        index += 1
    if len(columns) == 1:
        reading.items.extend(next(iter(columns.values())))
    else:
        reading.rows.extend(items for _, items in sorted(columns.items()) if items)
    return index


def _unlabelled(line: str, parts: list[str], participants: set[str], number: int) -> list[Item]:
    """Items of "Fulano <fulano@x>" lines and "name; email; area; access" rows."""
    if "@" not in line:
        return []
    texts = [text.strip() for text in parts[0::2] if text.strip()]
    if len(texts) == 1:
        texts = [text.strip() for text in re.split(r" [-–—|] |, ", line) if text.strip()]
    text = _LIST_MARKER.sub("", line)
    if len(texts) <= 2:
        name, address = split_name_address(text)
        if address is None or address in participants or not name:
            return []
        if not looks_like_name(name):
            return []
        return [Item("name", name, number), Item("email", address, number)]
    if len(texts) > 5:
        return []
    items: list[Item] = []
    accesses: list[str] = []
    rest: list[str] = []
    for cell in texts:
        address = parse_email(cell) if "@" in cell else None
        access, problem = read_access_type(cell) if address is None else (None, None)
        if address is not None and not any(item.field == "email" for item in items):
            name, _ = split_name_address(cell)
            if name and looks_like_name(name):
                items.append(Item("name", name, number))
                items.append(Item("email", address, number))
            else:
                # Whether the cell is that one address alone is the whole cell's to say.
                items.append(Item("email", _LIST_MARKER.sub("", cell), number))
        elif len(cell.split()) <= 4 and (access or (problem and problem.kind == "several")):
            accesses.append(cell)
        else:
            rest.append(_LIST_MARKER.sub("", cell))
    if accesses:
        # Cells naming access types are one value: "Comum, Admin" names two types.
        items.append(Item("access_type", ", ".join(accesses), number))
    emails = [parse_email(item.value) for item in items if item.field == "email"]
    if len(emails) != 1 or emails[0] in participants:
        return []
    if not any(item.field == "name" for item in items) and rest and looks_like_name(rest[0]):
        items.insert(0, Item("name", rest.pop(0), number))
    if any(char.isdigit() for cell in rest for char in cell):
        return []  # phone numbers and the like: a signature, not a request
    if rest:
        items.append(Item("area", " / ".join(rest), number))
    return items if any(item.field == "name" for item in items) else []
