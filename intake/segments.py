"""Segments: the parts of a body, and which of them carry the request.

This module owns splitting a normalised body into the new text and each
quoted or forwarded part ("> " lines, "Em ... escreveu:", "-----Mensagem
original-----", "De:/From: ... Assunto:/Subject:" blocks), each with its
author, and cutting every part at its signature. Which part names the
people is decided in `intake.extraction`: new text wins.
"""

from __future__ import annotations

from dataclasses import dataclass

from intake.fields import names_someone
from intake.folding import fold
from intake.values import clean_value, parse_email, split_name_address
from intake.vocabulary import (
    FORWARD_MARKERS,
    QUOTED_HEADER_FROM,
    QUOTED_HEADER_LABELS,
    QUOTED_HEADER_SUBJECT,
    REPLY_HEADER_ENDS,
    REPLY_HEADER_STARTS,
    SIGNATURE_DELIMITERS,
    VALEDICTIONS,
)

__all__ = ["Segment", "split_segments", "without_signature"]

# Quotes inside quotes deeper than this are not read (see split_segments).
MAX_QUOTE_DEPTH = 8
# The longest header block of a quoted or forwarded message, in lines.
QUOTED_HEADER_MAX_LINES = 10


@dataclass
class Segment:
    """A run of lines by one author: the new text, or a quoted/forwarded part."""

    lines: list[str]
    author_name: str = ""
    author_address: str = ""


def _is_forward_marker(line: str) -> bool:
    """A "-----Mensagem original-----"-like line (Yahoo puts the headers after it)."""
    stripped = line.strip()
    if len(stripped) >= 8 and set(stripped) == {"_"}:
        return True  # Outlook draws a line of underscores above the quoted headers
    folded = fold(stripped)
    core = folded.strip("-_=* ")
    if core in FORWARD_MARKERS:
        return True
    if folded.startswith("--"):
        head = core.split("--", 1)[0].strip()
        return head in FORWARD_MARKERS
    return False


def _reply_header_length(lines: list[str], index: int) -> int:
    """How many lines the "Em ..., X escreveu:" header at `index` spans (0: none)."""
    first = fold(lines[index].strip())
    if not first.startswith(REPLY_HEADER_STARTS):
        return 0
    for span in (1, 2, 3):
        if index + span > len(lines):
            break
        joined = " ".join(fold(line.strip()) for line in lines[index : index + span])
        if joined.endswith(REPLY_HEADER_ENDS):
            return span
        if len(joined) > 400:
            break
    return 0


def _quoted_header_label(line: str) -> str | None:
    colon = line.find(":")
    if colon <= 0 or colon > 20:
        return None
    label = fold(line[:colon].strip().strip("*_"))
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
            name, address = split_name_address(value)
            return (name or clean_value(value) or ""), (address or "")
    return "", ""


def split_segments(
    text: str, author_name: str, author_address: str, depth: int = 0
) -> list[Segment]:
    """The new text, then each quoted or forwarded part, in reading order.

    Quotes nested deeper than MAX_QUOTE_DEPTH are not read: no request hides
    there, and hostile input could nest them without end.
    """
    lines = text.split("\n")
    segments: list[Segment] = []
    current = Segment([], author_name, author_address)
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
            current = Segment([], name, address)
            index += block
            continue
        current.lines.append(line)
        index += 1
    segments.append(current)

    ordered: list[Segment] = []
    for segment in segments:
        own = [line for line in segment.lines if not line.lstrip().startswith(">")]
        quoted = [_unquote_line(line) for line in segment.lines if line.lstrip().startswith(">")]
        ordered.append(Segment(own, segment.author_name, segment.author_address))
        if depth < MAX_QUOTE_DEPTH and any(line.strip() for line in quoted):
            ordered.extend(split_segments("\n".join(quoted), "", "", depth + 1))
    return ordered


def _unquote_line(line: str) -> str:
    stripped = line.lstrip()[1:]
    return stripped[1:] if stripped.startswith(" ") else stripped


def _reply_author(header_lines: list[str]) -> tuple[str, str]:
    joined = " ".join(line.strip() for line in header_lines)
    address = parse_email(joined) or ""
    return "", address


def without_signature(segment: Segment) -> list[str]:
    """The segment's lines up to its signature.

    "-- " always starts the signature. A closing ("Obrigada!") or the
    author's name alone on a line starts it only when no "Nome:" line comes
    later: a thank-you above the request does not hide the request.
    """
    names = set()
    if segment.author_name:
        folded = fold(segment.author_name).strip()
        names = {folded, folded.split()[0]} if folded else set()
    last_name_line = max(
        (index for index, line in enumerate(segment.lines) if ":" in line and names_someone(line)),
        default=-1,
    )
    kept: list[str] = []
    for index, line in enumerate(segment.lines):
        stripped = line.strip()
        if stripped in SIGNATURE_DELIMITERS:
            break
        folded = fold(stripped).rstrip(" !.,;:")
        closing = folded in VALEDICTIONS or (folded and folded in names)
        if closing and index > last_name_line:
            break
        kept.append(line)
    return kept
