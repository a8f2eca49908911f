"""Extraction: the people an #ACESSO request names, each with four fields.

This module owns turning a read message into people: name, email, area and
access type. The vocabularies (field labels, access-type synonyms, reply and
forward markers, checkbox marks) are data tables at the top; the code below
them only applies the tables.

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
5. CSV attachments (header row naming the columns) add their rows; an
   attached message (forward as attachment) is read when the body names
   nobody.

Access-type synonyms map onto comum, agente or admin only when the word
names an access level. Job titles ("gestor", "analista", "coordenador") are
deliberately not mapped: granting a privilege on a guess is worse than
asking the requester, so they leave access_type missing.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from intake.errors import UnreadableMessage
from intake.reading import ReadMessage, read_message

log = logging.getLogger(__name__)

__all__ = [
    "ACCESS_WORDS",
    "FIELD_NAMES",
    "LABEL_WORDS",
    "Extraction",
    "Person",
    "extract",
    "parse_access_type",
    "parse_email",
]

AccessType = Literal["comum", "agente", "admin"]
FIELD_NAMES = ("name", "email", "area", "access_type")

# --------------------------------------------------------------------------
# Vocabulary. Keys are folded: lower case, no accents, "e-mail" as "email".

# Label head words: each names the field a label is for.
LABEL_WORDS: dict[str, tuple[str, ...]] = {
    "name": ("nome", "name", "fullname", "sobrenome"),
    "email": ("email", "mail"),
    "area": (
        "area", "areas", "setor", "departamento", "depto", "unidade", "segmento",
        "diretoria", "gerencia", "coordenacao", "equipe", "time", "filial", "regional",
        "lotacao", "divisao", "department", "dept", "unit", "team", "segment", "sector",
        "division", "branch",
    ),
    "access_type": (
        "acesso", "access", "perfil", "profile", "role", "permissao", "permissoes",
        "permission", "permissions", "nivel", "level", "tipo", "type", "papel",
    ),
}  # fmt: skip

# Kinds of area label. A kind repeated means the next person; different kinds
# (a unit, then a segment) are parts of one area, joined with " / ".
AREA_KINDS: dict[str, tuple[str, ...]] = {
    "unit": ("unidade", "unit", "filial", "regional", "branch"),
    "segment": ("segmento", "segment"),
    "team": ("equipe", "time", "team"),
    "department": (
        "setor", "departamento", "depto", "department", "dept", "sector", "diretoria",
        "gerencia", "coordenacao", "division", "divisao", "lotacao",
    ),
}  # fmt: skip

# Words a label may carry without changing the field it names.
LABEL_FILLERS = frozenset(
    {
        "a", "o", "as", "os", "da", "do", "das", "dos", "de", "e", "ou", "em", "no", "na",
        "para", "com", "cada", "of", "the", "for", "or", "and", "to", "in", "your", "with",
        "each", "per", "novo", "nova", "new", "completo", "completa", "full", "corporativo",
        "corporativa", "corporate", "work", "institucional", "profissional", "comercial",
        "endereco", "address", "eletronico", "solicitado", "solicitada", "requested",
        "desejado", "desejada", "desired", "sistema", "plataforma", "platform", "conta",
        "account", "negocio", "negocios", "business", "atuacao", "principal", "primary",
        "sua", "seu", "his", "her", "their", "membro", "member",
    }
)  # fmt: skip

# A label of only these (and fillers) names the person: "Colaborador: Ana".
PERSON_NOUNS = frozenset(
    {
        "pessoa", "usuario", "usuaria", "colaborador", "colaboradora", "funcionario",
        "funcionaria", "user", "person", "employee",
    }
)  # fmt: skip

# Words that make a field apply to every person: "Perfil para todos: Comum".
FOR_ALL_WORDS = frozenset({"todos", "todas", "all", "everyone", "everybody", "geral"})

# Lower-case words that still belong in a person's name.
NAME_PARTICLES = frozenset({"de", "da", "do", "das", "dos", "e", "del", "di", "van", "von", "der"})

# Access-type words and phrases. Job titles ("gestor", "analista",
# "coordenador") are deliberately absent: see the module docstring.
ACCESS_WORDS: dict[AccessType, tuple[str, ...]] = {
    "comum": (
        "comum", "common", "viewer", "view", "visualizacao", "visualizador", "visualizadora",
        "visualizar", "leitura", "readonly", "read only", "consulta", "basico", "basic",
        "padrao", "standard", "regular", "observador", "observer",
    ),
    "agente": ("agente", "agent", "operador", "operadora", "operator"),
    "admin": (
        "admin", "adm", "administrador", "administradora", "administrator", "administrativo",
        "administrativa", "administrativos", "administrativas", "administracao",
    ),
}  # fmt: skip

# A synonym right after one of these does not count: "Comum, não admin".
NEGATIONS = frozenset({"nao", "not", "no", "sem", "without", "nunca", "never", "exceto"})

# Lookups derived from the tables above.
LABEL_HEADS = {word: field for field, words in LABEL_WORDS.items() for word in words}
AREA_KIND_OF = {word: kind for kind, words in AREA_KINDS.items() for word in words}
ACCESS_SYNONYMS = {
    tuple(phrase.split()): access for access, phrases in ACCESS_WORDS.items() for phrase in phrases
}
ACCESS_PHRASE_MAX_WORDS = max(len(words) for words in ACCESS_SYNONYMS)

# Checkbox marks: checked ones select their option, unchecked ones do not.
# Inside brackets or parentheses: "[x]", "(X)", "[✔]"; empty ones are unchecked.
CHECKED_INSIDE = frozenset({"x", "X", "✓", "✔", "*", "•"})
CHECKED_SYMBOLS = frozenset("☒☑✓✔✅■▣◉●")
UNCHECKED_SYMBOLS = frozenset("☐□○◯")

# Lines that open a forwarded or quoted message, folded and stripped of the
# dashes, underscores and spaces around them.
FORWARD_MARKERS = frozenset(
    {
        "mensagem original",
        "original message",
        "mensagem encaminhada",
        "forwarded message",
        "mensagem reencaminhada",
        "begin forwarded message:",
        "inicio da mensagem encaminhada:",
        "inicio da mensagem reencaminhada:",
        "forwarded message follows",
        "message transfere",
        "mensaje original",
        "mensaje reenviado",
    }
)
# A reply header: starts with one of these and ends with one of those.
REPLY_HEADER_STARTS = ("em ", "on ", "no dia ", "el ", "le ", "am ")
REPLY_HEADER_ENDS = ("escreveu:", "wrote:", "escribio:", "a ecrit :", "a ecrit:", "schrieb:")
# Labels of the header block of a forwarded or quoted message (folded).
QUOTED_HEADER_LABELS = frozenset(
    {
        "de", "from", "enviado", "enviada", "enviado em", "enviada em", "sent", "data",
        "date", "para", "to", "cc", "cco", "bcc", "assunto", "subject", "importancia",
        "importance", "anexos", "attachments", "responder a", "reply-to",
    }
)  # fmt: skip
QUOTED_HEADER_FROM = frozenset({"de", "from"})
QUOTED_HEADER_SUBJECT = frozenset({"assunto", "subject"})
QUOTED_HEADER_MAX_LINES = 10

# Closings that end the author's text; the signature follows (folded,
# without trailing punctuation).
VALEDICTIONS = frozenset(
    {
        "att", "att.", "atte", "atenciosamente", "cordialmente", "obrigado", "obrigada",
        "obrigado a todos", "obrigada a todos", "muito obrigado", "muito obrigada",
        "grato", "grata", "abracos", "abraco", "abs", "um abraco", "sds", "saudacoes",
        "at.te", "agradeco", "desde ja agradeco", "no aguardo", "fico no aguardo",
        "regards", "best regards", "kind regards", "best", "thanks", "thank you",
        "many thanks", "cheers", "sincerely",
    }
)  # fmt: skip
SIGNATURE_DELIMITERS = frozenset({"--", "-- "})

# Separators of several fields on one line, and of unlabelled row cells.
FIELD_SEPARATORS = frozenset(";|\t")
MAX_LABEL_CHARS = 60
MAX_LABEL_WORDS = 8
MAX_NAME_WORDS = 8
MAX_QUOTE_DEPTH = 8
# A request never needs more text than this; the rest is not read, which also
# bounds the work hostile input can cause.
MAX_TEXT_CHARS = 200_000

# --------------------------------------------------------------------------
# Results


@dataclass
class Person:
    """One person named by a request, with whatever fields were found."""

    name: str | None = None
    email: str | None = None
    area: str | None = None
    access_type: AccessType | None = None

    @property
    def missing(self) -> list[str]:
        """Names of the fields not found, in FIELD_NAMES order."""
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


# --------------------------------------------------------------------------
# Text normalisation

_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"), None)
_SPACES = dict.fromkeys(map(ord, "\u00a0\u2007\u202f\u2002\u2003\u2009\u3000"), " ")
_FULLWIDTH_COLON = {ord("："): ":", ord("﹕"): ":"}

# UTF-8 read as cp1252 or Latin-1 ("ConceiÃ§Ã£o"): a lead Â/Ã followed by a
# continuation byte's character, or â followed by two (quotes and dashes).
_MOJIBAKE_BYTE: dict[str, int] = {}
for _byte in range(0x80, 0x100):
    _MOJIBAKE_BYTE.setdefault(bytes([_byte]).decode("cp1252", "ignore") or chr(_byte), _byte)
    _MOJIBAKE_BYTE.setdefault(chr(_byte), _byte)
_CONTINUATION = re.escape("".join(c for c, b in _MOJIBAKE_BYTE.items() if 0x80 <= b < 0xC0))
_MOJIBAKE = re.compile(f"[ÂÃ][{_CONTINUATION}]|â[{_CONTINUATION}]{{2}}")


def _repair_mojibake(text: str) -> str:
    if "Ã" not in text and "Â" not in text and "â" not in text:
        return text

    def repair(match: re.Match[str]) -> str:
        chunk = match.group(0)
        try:
            return bytes(_MOJIBAKE_BYTE[char] for char in chunk).decode("utf-8")
        except UnicodeDecodeError:
            return chunk

    return _MOJIBAKE.sub(repair, text)


def _normalise(text: str) -> str:
    text = text[:MAX_TEXT_CHARS]
    text = text.translate(_INVISIBLE).translate(_SPACES).translate(_FULLWIDTH_COLON)
    text = _repair_mojibake(text)
    return unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))


# The combining diacritical mark blocks: what accents decompose into.
_ACCENTS = dict.fromkeys(
    [
        *range(0x0300, 0x0370),
        *range(0x1AB0, 0x1B00),
        *range(0x1DC0, 0x1E00),
        *range(0x20D0, 0x2100),
        *range(0xFE20, 0xFE30),
    ]
)


def _fold(text: str) -> str:
    """Lower case without accents, for comparing words."""
    if text.isascii():
        return text.lower()
    return unicodedata.normalize("NFKD", text.casefold()).translate(_ACCENTS)


_EMAIL_WORD = re.compile(r"\be[\s-]?mail\b")
_WORDS = re.compile(r"[a-z0-9]+")
_PARENTHESES = re.compile(r"\([^()]*\)|\[[^\[\]]*\]")
_LIST_MARKER = re.compile(r"^\s*(?:[-–•·▪►●○◦*>#]+\s*|\d{1,3}\s*[.)º°-]\s*|[a-z]\s*[.)]\s+)")
_MARKUP = str.maketrans("", "", "*_~`")
_ADDRESS_SEPARATORS = re.compile(r"[\s<>()\[\],;:\"'|]+")
# Where an explanation after an access type starts: "Agente (com ...)", "Admin - total".
_EXPLANATION_START = re.compile(r"[(\[,;:]| [-–—] ")


def _words(text: str) -> list[str]:
    folded = _EMAIL_WORD.sub("email", _fold(text))
    return _WORDS.findall(folded)


# --------------------------------------------------------------------------
# Values


def parse_email(value: str) -> str | None:
    """The first valid address in `value`, lower-cased; None when there is none."""
    # ":" separates too, so "mailto:ana@x" yields "mailto" and "ana@x".
    for token in _ADDRESS_SEPARATORS.split(value):
        if "@" in token:
            candidate = token.strip(".").lower()
            return candidate if _is_address(candidate) else None
    return None


_LOCAL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.!#$%&'*+/=?^_`{|}~-")


def _is_address(candidate: str) -> bool:
    local, at, domain = candidate.rpartition("@")
    if not at or not local or len(local) > 64 or len(candidate) > 254:
        return False
    if local[0] == "." or local[-1] == "." or ".." in local:
        return False
    if not set(local) <= _LOCAL_CHARS:
        return False
    labels = domain.split(".")
    if len(labels) < 2:
        return False
    for label in labels:
        if not label or len(label) > 63 or label[0] == "-" or label[-1] == "-":
            return False
        if not all(char.isalnum() or char == "-" for char in label):
            return False
    top = labels[-1]
    return (top.isalpha() and len(top) >= 2) or top.startswith("xn--")


def _checked_options(value: str) -> list[str] | None:
    """Options after checked marks; None when the value has no marks at all."""
    marks: list[tuple[int, int, bool]] = []  # (start, end, checked)
    index = 0
    size = len(value)
    while index < size:
        char = value[index]
        if char in "[(":
            close = value.find("]" if char == "[" else ")", index + 1, index + 4)
            inside = value[index + 1 : close].strip() if close > 0 else None
            if inside == "" or inside in CHECKED_INSIDE:
                marks.append((index, close + 1, bool(inside)))
                index = close + 1
                continue
        elif char in CHECKED_SYMBOLS or char in UNCHECKED_SYMBOLS:
            marks.append((index, index + 1, char in CHECKED_SYMBOLS))
        index += 1
    if not marks:
        return None
    options = []
    for position, (_, end, checked) in enumerate(marks):
        stop = marks[position + 1][0] if position + 1 < len(marks) else size
        if checked:
            options.append(value[end:stop])
    return options


def _access_in(text: str) -> list[AccessType]:
    words = _words(text.replace("-", " "))
    found: list[AccessType] = []
    index = 0
    while index < len(words):
        for length in range(ACCESS_PHRASE_MAX_WORDS, 0, -1):
            access = ACCESS_SYNONYMS.get(tuple(words[index : index + length]))
            if access is None:
                continue
            negated = any(word in NEGATIONS for word in words[max(0, index - 2) : index])
            if not negated and access not in found:
                found.append(access)
            index += length - 1
            break
        index += 1
    return found


def parse_access_type(value: str) -> AccessType | None:
    """Map an access-type value onto comum, agente or admin.

    Trailing explanations ("Agente (com permissões...)", "Admin - total")
    are ignored when the value starts with a known word; checkbox marks
    select the checked option; two different levels are ambiguous (None).
    """
    options = _checked_options(value)
    if options is None:
        options = [value]
    found: list[AccessType] = []
    for option in options:
        primary = _EXPLANATION_START.split(option, maxsplit=1)[0]
        for access in _access_in(primary) or _access_in(option):
            if access not in found:
                found.append(access)
    return found[0] if len(found) == 1 else None


def _clean_value(value: str) -> str | None:
    value = value.strip().strip("*_~`").strip()
    value = value.strip("\"'“”‘’").rstrip(";,").strip()
    if not any(char.isalnum() for char in value):
        return None
    return re.sub(r"\s+", " ", value)


def _split_name_address(value: str) -> tuple[str | None, str | None]:
    """("Fulano de Tal", "fulano@x") from "Fulano de Tal <fulano@x>" and kin."""
    address = parse_email(value)
    if address is None:
        return None, None
    lower = value.lower()
    at = lower.find(address)
    before = value[:at] if at >= 0 else value
    after = value[at + len(address) :] if at >= 0 else ""
    name_part = before if len(before.strip(" <([\"'-–:,;")) >= 2 else after
    name_part = name_part.replace("mailto:", " ")
    name = _clean_value(name_part.strip(" <>()[]\"'-–—:,;|"))
    return name, address


def _clean_name(value: str) -> str | None:
    name = _clean_value(_PARENTHESES.sub(" ", value))
    if name is None or "@" in name:
        return None
    if not any(char.isalpha() for char in name) or len(name.split()) > MAX_NAME_WORDS * 2:
        return None
    return name


def _clean_area(value: str) -> str | None:
    area = _clean_value(value)
    return area.rstrip(".").strip() if area else None


def _looks_like_name(text: str) -> bool:
    """Two to eight capitalised words (particles such as "de" aside), letters only."""
    words = text.split()
    if not 2 <= len(words) <= MAX_NAME_WORDS or "@" in text or ":" in text:
        return False
    for word in words:
        if not all(char.isalpha() or char in ".'’-" for char in word):
            return False
        if not word[0].isupper() and word.lower() not in NAME_PARTICLES:
            return False
    return True


# --------------------------------------------------------------------------
# Labels


@dataclass(frozen=True)
class _Label:
    field: str  # a FIELD_NAMES entry, or "name_email" for "Nome e e-mail"
    area_kind: str | None = None
    for_all: bool = False


def _label(text: str) -> _Label | None:
    """What a label names, or None when `text` is not a known label."""
    if len(text) > MAX_LABEL_CHARS:
        return None
    text = _LIST_MARKER.sub("", text.translate(_MARKUP))
    text = _PARENTHESES.sub(" ", text)
    words = _words(text)
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
        return _Label("name") if person_noun else None
    if fields == ["access_type", "area"] or fields == ["area", "access_type"]:
        # "Tipo de área" is not a thing; "tipo" is the access word only alone.
        fields = ["area"]
    if len(fields) == 1:
        kind = "/".join(dict.fromkeys(kinds)) if fields[0] == "area" else None
        return _Label(fields[0], kind, for_all)
    if set(fields) == {"name", "email"}:
        return _Label("name_email", None, for_all)
    return None


# --------------------------------------------------------------------------
# Items: what the lines say


@dataclass
class _Item:
    field: str
    value: str
    line: int
    area_kind: str | None = None
    for_all: bool = False


def _items_for(label: _Label, raw_value: str, line: int) -> list[_Item]:
    """The field items a labelled value gives (none when the value is empty)."""
    value = _clean_value(raw_value)
    if value is None:
        return []
    if label.field in ("name", "name_email"):
        name, address = _split_name_address(value)
        if address is not None:
            items = [_Item("email", address, line, for_all=label.for_all)]
            if name and _clean_name(name):
                items.insert(0, _Item("name", _clean_name(name) or name, line))
            return items
        if label.field == "name_email":
            name = _clean_name(value)
            return [_Item("name", name, line)] if name else []
        return [_Item("name", value, line, for_all=label.for_all)]
    if label.field == "email":
        name, address = _split_name_address(value)
        items = [_Item("email", address or value, line, for_all=label.for_all)]
        if address and name and _looks_like_name(name):
            items.append(_Item("name", name, line, for_all=False))
        return items
    # "Perfil: Comum para todos" states the access for everyone too.
    for_all = label.for_all or (
        label.field == "access_type" and not FOR_ALL_WORDS.isdisjoint(_words(value))
    )
    return [_Item(label.field, value, line, label.area_kind, for_all)]


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


def _labelled(part: str) -> tuple[_Label, str] | None:
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


def _header_row(cells: Sequence[str]) -> list[_Label | None] | None:
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
    for separator in ("\t", ";", "|", ","):
        if separator in stripped:
            return [cell.strip() for cell in stripped.split(separator)]
    return []


def _row_items(labels: Sequence[_Label | None], cells: Sequence[str], line: int) -> list[_Item]:
    items: list[_Item] = []
    for label, cell in zip(labels, cells, strict=False):
        if label is not None and cell.strip():
            items.extend(_items_for(label, cell, line))
    return items


_CHECKBOX_START = re.compile(
    r"^\s*(?:[-•*]\s*)?(?:\[\s*[^\]]?\s*\]|\(\s*[^)]?\s*\)|[☐☑☒✓✔✅□■▣◉●○◯])"
)


@dataclass
class _Segment:
    """A run of lines by one author: the new text, or a quoted/forwarded part."""

    lines: list[str]
    author_name: str = ""
    author_address: str = ""


@dataclass
class _Reading:
    """What the lines of one segment say: field items, in order, and table rows."""

    items: list[_Item] = field(default_factory=list)
    # Each table row (or column of a label/values table) is one person.
    rows: list[list[_Item]] = field(default_factory=list)


def _read_lines(lines: list[str], participants: set[str]) -> _Reading:
    reading = _Reading()
    index = 0
    count = len(lines)
    while index < count:
        line = lines[index].strip()
        index += 1
        if not line:
            continue

        cells = _cells(line)
        header = _header_row(cells)
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
            access = parse_access_type(line)
            if access is not None:
                reading.items.append(_Item("access_type", access, index - 1))
            continue

        unlabelled = _unlabelled(line, parts, participants, index - 1)
        if unlabelled:
            if any(item.field == "email" for item in unlabelled) and len(unlabelled) > 2:
                reading.rows.append(unlabelled)
            else:
                reading.items.extend(unlabelled)
            continue

        if _words(line) and set(_words(line)) & FOR_ALL_WORDS:
            access = parse_access_type(line)
            if access is not None:
                reading.items.append(_Item("access_type", access, index - 1, for_all=True))
    return reading


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


def _read_labelled_parts(parts: list[str], line: int) -> tuple[list[_Item], _Label | None] | None:
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
    found: list[tuple[_Label, list[str]]] = []  # (label, pieces of its value)
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
    items: list[_Item] = []
    trailing: _Label | None = None
    for label, pieces in found:
        value = "".join(pieces)
        new = _items_for(label, value, line)
        items.extend(new)
        trailing = label if not new and not value.strip() else None
    return items, trailing


def _read_value_below(lines: list[str], index: int, label: _Label, reading: _Reading) -> int:
    while index < len(lines) and not lines[index].strip():
        index += 1
    if index >= len(lines):
        return index
    below = lines[index].strip()
    if _labelled(below) is not None or _header_row(_cells(below)) is not None:
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
    header: list[_Label | None],
    header_cells: list[str],
    reading: _Reading,
) -> int:
    separator = next(sep for sep in ("\t", ";", "|", ",") if sep in lines[index - 1])
    while index < len(lines):
        line = lines[index].strip()
        if not line:
            index += 1
            continue
        if separator not in line or set(line) <= set("|-:+ \t"):
            if set(line) <= set("|-:+ \t"):
                index += 1  # a markdown divider row
                continue
            break
        cells = [cell.strip() for cell in line.strip().strip("|").strip().split(separator)]
        items = _row_items(header, cells, index)
        if items:
            reading.rows.append(items)
        index += 1
    return index


def _read_column_table(lines: list[str], index: int, reading: _Reading) -> int:
    """Table rows "Label<TAB>value[<TAB>value...]": one person per value column.

    With a single value column the items join the running text, so a table
    of some fields and paragraphs with the others still make one person.
    """
    columns: dict[int, list[_Item]] = {}
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


def _unlabelled(line: str, parts: list[str], participants: set[str], number: int) -> list[_Item]:
    """Items of "Fulano <fulano@x>" lines and "name; email; area; access" rows."""
    if "@" not in line:
        return []
    texts = [text.strip() for text in parts[0::2] if text.strip()]
    if len(texts) == 1:
        texts = [text.strip() for text in re.split(r" [-–—|] |, ", line) if text.strip()]
    text = _LIST_MARKER.sub("", line)
    if len(texts) <= 2:
        name, address = _split_name_address(text)
        if address is None or address in participants or not name:
            return []
        if not _looks_like_name(name):
            return []
        return [_Item("name", name, number), _Item("email", address, number)]
    if len(texts) > 5:
        return []
    items: list[_Item] = []
    rest: list[str] = []
    for cell in texts:
        address = parse_email(cell) if "@" in cell else None
        access = parse_access_type(cell) if address is None else None
        if address is not None and not any(item.field == "email" for item in items):
            name, _ = _split_name_address(cell)
            if name and _looks_like_name(name):
                items.append(_Item("name", name, number))
            items.append(_Item("email", address, number))
        elif access is not None and len(cell.split()) <= 4:
            items.append(_Item("access_type", access, number))
        else:
            rest.append(_LIST_MARKER.sub("", cell))
    emails = [item.value for item in items if item.field == "email"]
    if len(emails) != 1 or emails[0] in participants:
        return []
    if not any(item.field == "name" for item in items) and rest and _looks_like_name(rest[0]):
        items.insert(0, _Item("name", rest.pop(0), number))
    if any(char.isdigit() for cell in rest for char in cell):
        return []  # phone numbers and the like: a signature, not a request
    if rest:
        items.append(_Item("area", " / ".join(rest), number))
    return items if any(item.field == "name" for item in items) else []


# --------------------------------------------------------------------------
# Segments: new text, quotes, forwards, signatures


def _is_forward_marker(line: str) -> bool:
    """A "-----Mensagem original-----"-like line (Yahoo puts the headers after it)."""
    stripped = line.strip()
    if len(stripped) >= 8 and set(stripped) == {"_"}:
        return True  # Outlook draws a line of underscores above the quoted headers
    folded = _fold(stripped)
    core = folded.strip("-_=* ")
    if core in FORWARD_MARKERS:
        return True
    if folded.startswith("--"):
        head = core.split("--", 1)[0].strip()
        return head in FORWARD_MARKERS
    return False


def _reply_header_length(lines: list[str], index: int) -> int:
    """How many lines the "Em ..., X escreveu:" header at `index` spans (0: none)."""
    first = _fold(lines[index].strip())
    if not first.startswith(REPLY_HEADER_STARTS):
        return 0
    for span in (1, 2, 3):
        if index + span > len(lines):
            break
        joined = " ".join(_fold(line.strip()) for line in lines[index : index + span])
        if joined.endswith(REPLY_HEADER_ENDS):
            return span
        if len(joined) > 400:
            break
    return 0


def _quoted_header_label(line: str) -> str | None:
    colon = line.find(":")
    if colon <= 0 or colon > 20:
        return None
    label = _fold(line[:colon].strip().strip("*_"))
    return label if label in QUOTED_HEADER_LABELS else None


def _quoted_header_block(lines: list[str], index: int, after_marker: bool = False) -> int:
    """Length of a "De: ... Assunto: ..." block starting at `index` (0: none).

    Without a marker line above, the block must start with De:/From: and hold
    Assunto:/Subject:; after a marker, any of the quoted header labels may
    come first (Thunderbird starts with Assunto:).
    """
    first = _quoted_header_label(lines[index])
    if first is None or (not after_marker and first not in QUOTED_HEADER_FROM):
        return 0
    end = index
    labels: set[str] = set()
    while end < len(lines) and end - index < QUOTED_HEADER_MAX_LINES:
        label = _quoted_header_label(lines[end])
        if label is None:
            break
        labels.add(label)
        end += 1
    if labels & QUOTED_HEADER_SUBJECT or (after_marker and labels & QUOTED_HEADER_FROM):
        return end - index
    return 0


def _author_of(block: list[str]) -> tuple[str, str]:
    for line in block:
        if _quoted_header_label(line) in QUOTED_HEADER_FROM:
            value = line.split(":", 1)[1]
            name, address = _split_name_address(value)
            return (name or _clean_value(value) or ""), (address or "")
    return "", ""


def _segments(text: str, author_name: str, author_address: str, depth: int = 0) -> list[_Segment]:
    """The new text, then each quoted or forwarded part, in reading order.

    Quotes nested deeper than MAX_QUOTE_DEPTH are not read: no request hides
    there, and hostile input could nest them without end.
    """
    lines = text.split("\n")
    segments: list[_Segment] = []
    current = _Segment([], author_name, author_address)
    index = 0
    while index < len(lines):
        line = lines[index]
        reply = _reply_header_length(lines, index)
        forward = _is_forward_marker(line)
        block = _quoted_header_block(lines, index) if not reply else 0
        if reply or forward or block:
            segments.append(current)
            index += reply or (1 if forward and not block else 0)
            while forward and index < len(lines) and not lines[index].strip():
                index += 1
            if not block and index < len(lines):
                block = _quoted_header_block(lines, index, after_marker=forward)
            name, address = _author_of(lines[index : index + block])
            if reply:
                name, address = _reply_author(lines[index - reply : index])
            current = _Segment([], name, address)
            index += block
            continue
        current.lines.append(line)
        index += 1
    segments.append(current)

    ordered: list[_Segment] = []
    for segment in segments:
        own = [line for line in segment.lines if not line.lstrip().startswith(">")]
        quoted = [_unquote_line(line) for line in segment.lines if line.lstrip().startswith(">")]
        ordered.append(_Segment(own, segment.author_name, segment.author_address))
        if depth < MAX_QUOTE_DEPTH and any(line.strip() for line in quoted):
            ordered.extend(_segments("\n".join(quoted), "", "", depth + 1))
    return ordered


def _unquote_line(line: str) -> str:
    stripped = line.lstrip()[1:]
    return stripped[1:] if stripped.startswith(" ") else stripped


def _reply_author(header_lines: list[str]) -> tuple[str, str]:
    joined = " ".join(line.strip() for line in header_lines)
    address = parse_email(joined) or ""
    return "", address


def _without_signature(segment: _Segment) -> list[str]:
    """The segment's lines up to its signature.

    "-- " always starts the signature. A closing ("Obrigada!") or the
    author's name alone on a line starts it only when no "Nome:" line comes
    later: a thank-you above the request does not hide the request.
    """
    names = set()
    if segment.author_name:
        folded = _fold(segment.author_name).strip()
        names = {folded, folded.split()[0]} if folded else set()
    last_name_line = max(
        (
            index
            for index, line in enumerate(segment.lines)
            if ":" in line and _names_someone(line)
        ),
        default=-1,
    )
    kept: list[str] = []
    for index, line in enumerate(segment.lines):
        stripped = line.strip()
        if stripped in SIGNATURE_DELIMITERS:
            break
        folded = _fold(stripped).rstrip(" !.,;:")
        closing = folded in VALEDICTIONS or (folded and folded in names)
        if closing and index > last_name_line:
            break
        kept.append(line)
    return kept


def _names_someone(line: str) -> bool:
    labelled = _labelled(_LIST_MARKER.sub("", line.strip()))
    return labelled is not None and labelled[0].field in ("name", "name_email")


# --------------------------------------------------------------------------
# People


def _apply(person: Person, item: _Item, kinds: list[str]) -> bool:
    """Set `item` on `person`; False when the person already has that field."""
    if item.field == "area":
        kind = item.area_kind or "area"
        if kind in kinds:
            return False
        area = _clean_area(item.value)
        if area is None:
            return True
        kinds.append(kind)
        person.area = f"{person.area} / {area}" if person.area else area
        return True
    if getattr(person, item.field) is not None or item.field in kinds:
        return False
    kinds.append(item.field)
    if item.field == "name":
        person.name = _clean_name(item.value)
    elif item.field == "email":
        person.email = parse_email(item.value)
    elif item.field == "access_type":
        person.access_type = parse_access_type(item.value)
    return True


def _group(items: Iterable[_Item]) -> tuple[list[Person], dict[str, _Item]]:
    """People from items in reading order, and the fields meant for everyone.

    Returns (people, defaults). A field repeated for the same person starts a
    new person. Fields seen before anyone is named, or marked for all, are
    defaults for every person who lacks them.
    """
    people: list[Person] = []
    kinds: list[list[str]] = []
    defaults: dict[str, _Item] = {}
    pending: list[_Item] = []
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
    return people, defaults


def _fill(people: list[Person], defaults: dict[str, _Item]) -> None:
    for person in people:
        for item in defaults.values():
            if getattr(person, item.field) is None:
                _apply(person, item, [])


def _identified(person: Person) -> bool:
    return person.name is not None or person.email is not None


def _trailing_defaults(people: list[Person], items: list[_Item]) -> dict[str, _Item]:
    """Fields stated once after the last person's block, for everyone.

    "Nome: A ... Nome: B ...<blank line>Perfil: Comum" states the access for
    all: the trailing field belongs to the last person only by position.
    """
    if len(people) < 2 or not items:
        return {}
    trailing: dict[str, _Item] = {}
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


def _people_of(reading: _Reading) -> tuple[list[Person], dict[str, _Item]]:
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


def _drop_participants(people: list[Person], participants: set[str]) -> list[Person]:
    """Drop people who are only a signature: a participant's address, nothing else."""
    return [
        person
        for person in people
        if person.email not in participants
        or person.area is not None
        or person.access_type is not None
    ]


def _dedupe(people: list[Person]) -> list[Person]:
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
        for name in FIELD_NAMES:
            if getattr(first, name) is None:
                setattr(first, name, getattr(person, name))
    return result


@dataclass
class _Found:
    """People read from one text, the defaults it states, and where."""

    people: list[Person]
    defaults: dict[str, _Item]
    source: str

    def score(self) -> tuple[int, int, int]:
        complete = sum(person.complete for person in self.people)
        named = sum(map(_identified, self.people))
        missing = sum(len(person.missing) for person in self.people)
        return complete, named, -missing


def _from_text(text: str, message: ReadMessage, source: str) -> _Found:
    participants = {message.from_address} if message.from_address else set()
    segments = _segments(_normalise(text), message.from_name, message.from_address)
    participants.update(segment.author_address for segment in segments if segment.author_address)

    defaults: dict[str, _Item] = {}
    partial: list[Person] = []
    for position, segment in enumerate(segments):
        reading = _read_lines(_without_signature(segment), participants)
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
                    defaults.setdefault(name, _Item(name, value, -1))
        partial = partial or people
    _fill(partial, defaults)
    return _Found(partial, defaults, source)


def _from_csv(rows: list[list[str]]) -> list[Person]:
    """People from CSV rows whose first row names the columns."""
    header = _header_row(rows[0]) if rows else None
    if header is None:
        return []
    people: list[Person] = []
    for number, cells in enumerate(rows[1:], start=1):
        row_people, _ = _group(_row_items(header, cells, number))
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
