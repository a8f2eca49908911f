"""Values: what one written value means.

This module owns the reading of a single value, wherever it was found: an
address (`parse_email`), an access type with its synonyms, negations and
checkbox marks (`parse_access_type`), a person's name, an area, and the
"Fulano de Tal <fulano@x>" form that carries both a name and an address.
"""

from __future__ import annotations

import re

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
    "PARENTHESES",
    "clean_area",
    "clean_name",
    "clean_value",
    "looks_like_name",
    "parse_access_type",
    "parse_email",
    "split_name_address",
]

# A name of more words is a sentence, not a name.
MAX_NAME_WORDS = 8

# An aside in parentheses or brackets, dropped from names and labels: "(TI)".
PARENTHESES = re.compile(r"\([^()]*\)|\[[^\[\]]*\]")
# What may stand around an address: spaces, brackets, quotes, punctuation.
_ADDRESS_SEPARATORS = re.compile(r"[\s<>()\[\],;:\"'|]+")
# Where an explanation after an access type starts: "Agente (com ...)", "Admin - total".
_EXPLANATION_START = re.compile(r"[(\[,;:]| [-–—] ")


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
    name = clean_value(PARENTHESES.sub(" ", value))
    if name is None or "@" in name:
        return None
    if not any(char.isalpha() for char in name) or len(name.split()) > MAX_NAME_WORDS * 2:
        return None
    return name


def clean_area(value: str) -> str | None:
    """An area from `value`, without a closing full stop; None when it is empty."""
    area = clean_value(value)
    return area.rstrip(".").strip() if area else None


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
