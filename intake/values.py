"""Values: what one written value means.

This module owns the reading of a single value, wherever it was found: an
address (`parse_email`), an access type with its synonyms, negations and
checkbox marks (`parse_access_type`), a person's name, an area, and the
"Fulano de Tal <fulano@x>" form that carries both a name and an address.

The `read_*` functions read the whole value of one field and say why a value
that was written cannot be used (a `Problem`): the requester is asked again
rather than a guess made. What they refuse, by kind:

- "invalid": an email value with no valid address in it, or a name with no
  letters, an "@", or as many words as a sentence;
- "unclear": an address with a loose word beside it, set apart only by
  spaces ("email ruim@x", "ana@x com"): the word may be part of the address,
  and the address left over may be someone else's mailbox;
- "several": two different addresses or access types for one person;
- "unrecognised": an access type that is none of Comum, Agente and Admin;
- "too_long": a name or area longer than the request can hold.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from intake.folding import folded_words
from intake.vocabulary import (
    ACCESS_PHRASE_MAX_WORDS,
    ACCESS_SYNONYMS,
    CHECKED_INSIDE,
    CHECKED_SYMBOLS,
    NAME_PARTICLES,
    NEGATIONS,
    UNCHECKED_SYMBOLS,
    AccessType,
)

__all__ = [
    "MAX_AREA_CHARS",
    "MAX_NAME_CHARS",
    "PARENTHESES",
    "PROBLEM_KINDS",
    "Problem",
    "clean_area",
    "clean_name",
    "clean_value",
    "looks_like_name",
    "mixes_scripts",
    "parse_access_type",
    "parse_email",
    "read_access_type",
    "read_area",
    "read_email",
    "read_name",
    "split_name_address",
]

# A name of more words is a sentence, not a name.
MAX_NAME_WORDS = 8
# The longest name and area a request holds (the columns of the request row).
# Longer is a problem to report, never a value to cut: the cut one is not
# what the requester wrote.
MAX_NAME_CHARS = 200
MAX_AREA_CHARS = 300
# A value quoted in a problem is kept to this many characters: it is
# attacker-controlled text, stored and shown back.
MAX_QUOTED_CHARS = 200
# At most this many distinct values are kept in a "several" problem.
MAX_FOUND = 5

PROBLEM_KINDS = ("invalid", "unclear", "several", "unrecognised", "too_long")

# An aside in parentheses or brackets, dropped from names and labels: "(TI)".
PARENTHESES = re.compile(r"\([^()]*\)|\[[^\[\]]*\]")
# What may stand around an address: spaces, brackets, quotes, punctuation.
_ADDRESS_SEPARATORS = re.compile(r"[\s<>()\[\],;:\"'|]+")
# Where an explanation after an access type starts: "Agente (com ...)", "Admin - total".
# Not a comma or semicolon: those separate items of a list, so the second
# type in "Comum, Admin" is a second type, not an explanation of the first.
_EXPLANATION_START = re.compile(r"[(\[:]| [-–—] ")


@dataclass(frozen=True)
class Problem:
    """Why a value that was written for a field cannot be used.

    ``kind`` is one of PROBLEM_KINDS; ``value`` the value as written, on one
    line and bounded; ``found`` the distinct addresses or access types read
    in it; ``length`` and ``limit`` the sizes of a value too long.
    """

    kind: str
    value: str = ""
    found: tuple[str, ...] = ()
    length: int = 0
    limit: int = 0

    def record(self) -> dict[str, Any]:
        """The problem as plain data (JSON), without the parts that say nothing."""
        record: dict[str, Any] = {"kind": self.kind}
        if self.value:
            record["value"] = self.value
        if self.found:
            record["found"] = list(self.found)
        if self.limit:
            record.update(length=self.length, limit=self.limit)
        return record


def _quoted(value: str) -> str:
    """`value` on one line and bounded, keeping both ends (an address's domain is at its end)."""
    value = " ".join(value.split())
    if len(value) <= MAX_QUOTED_CHARS:
        return value
    head = MAX_QUOTED_CHARS * 2 // 3
    return value[:head] + "…" + value[-(MAX_QUOTED_CHARS - head - 1) :]


def parse_email(value: str) -> str | None:
    """The first valid address in `value`, lower-cased; None when there is none."""
    # ":" separates too, so "mailto:ana@x" yields "mailto" and "ana@x".
    for token in _ADDRESS_SEPARATORS.split(value):
        if "@" in token:
            candidate = token.strip(".").lower()
            return candidate if _is_address(candidate) else None
    return None


# A run of text between the characters that may stand around an address.
_ADDRESS_TOKEN = re.compile(r"[^\s<>()\[\],;:\"'|]+")


def read_email(value: str) -> tuple[str | None, Problem | None]:
    """The one address an email field's `value` states, or why it states none usable.

    Usable: an address alone or set apart from other text by brackets, quotes
    or punctuation: "ana@x", "<ana@x>", "Ana Lima <ana@x>", "mailto:ana@x",
    "ana@x (corporativo)", "ana@x.", and a link whose text and target agree
    ("ana@x<mailto:ana@x>"). Returns (None, None) for an empty value.
    """
    value = value.strip()
    if not value:
        return None, None
    tokens = list(_ADDRESS_TOKEN.finditer(value))
    positions = [index for index, token in enumerate(tokens) if "@" in token.group()]
    if not positions:
        return None, Problem("invalid", _quoted(value))
    addresses = [tokens[index].group().strip(".").lower() for index in positions]
    if not all(map(_is_address, addresses)):
        return None, Problem("invalid", _quoted(value))
    distinct = tuple(dict.fromkeys(addresses))
    if len(distinct) > 1:
        return None, Problem("several", _quoted(value), distinct[:MAX_FOUND])
    if any(_loose_word_beside(value, tokens, index) for index in positions):
        return None, Problem("unclear", _quoted(value), distinct)
    return distinct[0], None


def _loose_word_beside(value: str, tokens: list[re.Match[str]], index: int) -> bool:
    """Whether a word stands next to the address at `index` with only spaces between.

    A full stop that ends the address ("ana@x. Obrigada") sets it apart.
    """
    token = tokens[index]
    neighbours = []
    if index > 0 and not token.group().startswith("."):
        neighbours.append((tokens[index - 1], value[tokens[index - 1].end() : token.start()]))
    if index + 1 < len(tokens) and not token.group().endswith("."):
        neighbours.append((tokens[index + 1], value[token.end() : tokens[index + 1].start()]))
    return any(
        not gap.strip() and "@" not in word.group() and any(map(str.isalnum, word.group()))
        for word, gap in neighbours
    )


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
    if mixes_scripts(domain):
        return False
    top = labels[-1]
    return (top.isalpha() and len(top) >= 2) or top.startswith("xn--")


def mixes_scripts(domain: str) -> bool:
    """Whether a label of `domain` mixes writing systems, punycode labels decoded."""
    for label in domain.lower().split("."):
        if label.startswith("xn--"):
            try:
                label = label.encode("ascii").decode("idna")
            except UnicodeError:
                continue
        if len(_scripts(label)) > 1:
            return True
    return False


def _scripts(label: str) -> set[str]:
    """The writing systems of a domain label's letters ("LATIN", "CYRILLIC", ...).

    A label mixing two of them ("clіente" with a Cyrillic і) is how a look-alike
    domain passes for a real one; accented Latin ("ação") is one script.
    """
    return {
        unicodedata.name(char, "?").split(" ", 1)[0]
        for char in label
        if char.isalpha() and not char.isascii()
    } | ({"LATIN"} if any(char.isascii() and char.isalpha() for char in label) else set())


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
    words = folded_words(text.replace("-", " "))
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
    """Map an access-type value onto comum, agente or admin; None when it names no one level.

    See `read_access_type`, which also says why.
    """
    return read_access_type(value)[0]


def read_access_type(value: str) -> tuple[AccessType | None, Problem | None]:
    """The access type `value` names, or why it names no usable one.

    Trailing explanations ("Agente (com permissões...)", "Admin - total")
    are ignored when the value starts with a known word; checkbox marks
    select the checked option, and a list with nothing checked states
    nothing (None, None). Two different levels ("Comum, Admin", two checked
    boxes) are a problem, never resolved to one of them.
    """
    options = _checked_options(value)
    if options is None:
        options = [value]
    elif not options:
        return None, None
    found: list[AccessType] = []
    for option in options:
        primary = _EXPLANATION_START.split(option, maxsplit=1)[0]
        for access in _access_in(primary) or _access_in(option):
            if access not in found:
                found.append(access)
    if len(found) == 1:
        return found[0], None
    if found:
        return None, Problem("several", _quoted(value), tuple(found))
    return None, Problem("unrecognised", _quoted(value))


def clean_value(value: str) -> str | None:
    """`value` without markup, quotes and trailing separators; None when nothing is left."""
    value = value.strip().strip("*_~`").strip()
    value = value.strip("\"'“”‘’").rstrip(";,").strip()
    if not any(char.isalnum() for char in value):
        return None
    return re.sub(r"\s+", " ", value)


def split_name_address(value: str) -> tuple[str | None, str | None]:
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
    name = clean_value(name_part.strip(" <>()[]\"'-–—:,;|"))
    return name, address


def clean_name(value: str) -> str | None:
    """A person's name from `value`, asides dropped; None when it is not a name."""
    return read_name(value)[0]


def read_name(value: str) -> tuple[str | None, Problem | None]:
    """A person's name from `value`, asides dropped, or why it is not one."""
    name = clean_value(PARENTHESES.sub(" ", value))
    if name is None:
        return None, None
    if len(name) > MAX_NAME_CHARS:
        return None, Problem("too_long", length=len(name), limit=MAX_NAME_CHARS)
    if "@" in name or not any(char.isalpha() for char in name):
        return None, Problem("invalid", _quoted(name))
    if len(name.split()) > MAX_NAME_WORDS * 2:
        return None, Problem("invalid", _quoted(name))
    return name, None


def clean_area(value: str) -> str | None:
    """An area from `value`, without a closing full stop; None when it is empty."""
    area = clean_value(value)
    return area.rstrip(".").strip() if area else None


def read_area(value: str) -> tuple[str | None, Problem | None]:
    """An area from `value` (see `clean_area`), or why it cannot be one."""
    area = clean_area(value)
    if area is not None and len(area) > MAX_AREA_CHARS:
        return None, Problem("too_long", length=len(area), limit=MAX_AREA_CHARS)
    return area, None


def looks_like_name(text: str) -> bool:
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
