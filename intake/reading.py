"""Reading: raw message bytes to a `ReadMessage`.

This module owns everything between the bytes of a message and decoded text:
the header block, header decoding (RFC 2047 encoded words, undeclared 8-bit
bytes), addresses, the body text (text/plain, or HTML turned into text) and
attachments. It does no I/O besides the bytes it is given.

The header block is parsed here, from the raw bytes, on every read; the MIME
body is parsed by mail-parser only when a body property is first used, and
mail-parser gets only the MIME header fields with the body (it would decode
every other header again, quadratically on hostile encoded words). That lets
the screening stage decide from headers alone, and the body is parsed at
most once per message.

Header values keep every byte: raw 8-bit bytes (undeclared Latin-1, common in
real mail) are decoded as UTF-8 when they are valid UTF-8, else as cp1252,
else as Latin-1, and never replaced or dropped. Declared charsets go through
the same fallback when they cannot decode what they declare.
"""

from __future__ import annotations

import binascii
import codecs
import csv
import email
import email.policy
import email.utils
import hashlib
import html
import io
import logging
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property, lru_cache

import mailparser

from intake.errors import UnreadableMessage

log = logging.getLogger(__name__)

__all__ = [
    "Attachment",
    "ReadMessage",
    "decode_text",
    "html_to_text",
    "read_message",
]

# A header block must contain at least one of these fields for the bytes to
# count as a message; anything else (a CSV file, a PNG) is unreadable.
MESSAGE_FIELDS = frozenset(
    {
        "from",
        "to",
        "cc",
        "subject",
        "date",
        "message-id",
        "received",
        "return-path",
        "sender",
        "reply-to",
        "mime-version",
        "content-type",
        "delivered-to",
        "in-reply-to",
        "references",
    }
)

# Header fields the MIME parser needs: the rest it would only decode again.
MIME_FIELD_PREFIXES = ("content-", "mime-version")

# Charset names seen in real mail that Python does not know, or knows under
# a narrower meaning than the senders use. ISO-8859-1 and US-ASCII are read as
# cp1252 (as browsers do): Windows clients label cp1252 text that way.
CHARSET_ALIASES = {
    "iso-8859-1": "cp1252",
    "iso8859-1": "cp1252",
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "us-ascii": "cp1252",
    "ascii": "cp1252",
    "ansi_x3.4-1968": "cp1252",
    "windows-1252": "cp1252",
    "utf8": "utf-8",
    "uft-8": "utf-8",
    "utf-8": "utf-8",
    "unicode-1-1-utf-7": "utf-7",
    "gb2312": "gb18030",
    "iso-gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "cp936": "gb18030",
    "ks_c_5601-1987": "cp949",
    "ks_c_5601": "cp949",
    "euc-kr": "cp949",
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "sjis": "cp932",
    "x-sjis": "cp932",
    "iso-2022-jp": "iso2022_jp_2",
    "big5": "big5hkscs",
    "iso-8859-8-i": "iso-8859-8",
    "x-mac-cyrillic": "mac_cyrillic",
    "tis-620": "cp874",
    "windows-874": "cp874",
}

# Codecs that map every byte: when one of these fails on the bytes given, the
# declared charset is wrong, and the cp1252 fallback reads better than
# replacement characters.
SINGLE_BYTE_CODECS = frozenset({"cp1252", "utf-8", "ascii", "latin-1", "iso8859-1"})

# Charsets worth trying with undeclared 8-bit header bytes when the message
# declares the key for its parts: 8-bit Japanese mail is mostly Shift_JIS
# even when its parts say ISO-2022-JP.
RELATED_CHARSETS = {"iso2022_jp_2": ("cp932", "euc_jp")}
CHARSET_HINT_SCAN_BYTES = 65536

# Where the requester's address comes from, in order of preference.
SENDER_FIELDS = ("from", "sender", "reply-to")

# Phrases of a text/plain part that only points at the HTML part.
PLAIN_STUB_PHRASES = (
    "view this in html",
    "view this email in your browser",
    "this message is in html",
    "this is an html message",
    "html version",
    "does not support html",
    "enable html",
    "mensagem em html",
    "esta mensagem esta em html",
    "visualize em html",
    "visualizar em html",
    "versao em html",
    "nao suporta html",
    "habilite o html",
)
PLAIN_STUB_MAX_CHARS = 400

CSV_CONTENT_TYPES = frozenset(
    {"text/csv", "application/csv", "text/comma-separated-values", "text/x-csv"}
)

_LINE_END = re.compile(rb"\r\n|\n|\r")
_FIELD_LINE = re.compile(rb"([!-9;-~]+)[ \t]*:(.*)")
_ENCODED_WORD = re.compile(r"=\?([^?\s]{1,75})\?([QqBb])\?([^?]*)\?=")
_QP_ESCAPE = re.compile(rb"=([0-9A-Fa-f]{2})")
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")
_CHARSET_PARAM = re.compile(rb"charset\s*=\s*[\"']?([A-Za-z0-9_.:-]{1,40})", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_HEADER_CONTROLS = re.compile(r"[\x00-\x1f\x7f]")
_MSG_ID = re.compile(r"<([^<>]+)>")


def _latin1_for_undefined(error: UnicodeDecodeError) -> tuple[str, int]:
    # cp1252 leaves five bytes undefined; read them as Latin-1 so nothing is lost.
    chunk = error.object[error.start : error.end]
    return bytes(chunk).decode("latin-1"), error.end


codecs.register_error("intake.latin1", _latin1_for_undefined)


@lru_cache(maxsize=256)
def _codec_for(charset: str | None) -> str | None:
    if not charset:
        return None
    name = charset.strip().strip("\"'").lower()
    name = CHARSET_ALIASES.get(name, name)
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        return None
    # bytes.decode refuses non-text codecs (zlib, rot13...); never offer them.
    if not getattr(info, "_is_text_encoding", True):
        return None
    return info.name


def decode_text(data: bytes, charset: str | None = None) -> str:
    """Decode `data` declared as `charset`; fall back to UTF-8, then cp1252.

    No byte is dropped: what the declared charset cannot read is read by the
    fallback instead.
    """
    codec = _codec_for(charset)
    if codec is not None:
        try:
            return data.decode(codec)
        # UnicodeError, not only UnicodeDecodeError: codecs that are no
        # charset at all (idna, punycode, undefined) raise the base class.
        except (UnicodeError, LookupError):
            pass
    if data.isascii():
        return data.decode("ascii")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if codec is not None and codec not in SINGLE_BYTE_CODECS:
        # A multibyte charset with a few bad sequences: keep the readable rest.
        try:
            return data.decode(codec, "replace")
        except (UnicodeError, LookupError):
            pass
    return data.decode("cp1252", "intake.latin1")


def _decode_q(text: bytes) -> bytes:
    return _QP_ESCAPE.sub(lambda m: bytes.fromhex(m.group(1).decode()), text.replace(b"_", b" "))


def _decode_b(text: bytes) -> bytes:
    cleaned = _NOT_BASE64.sub(b"", text)
    if len(cleaned) % 4 == 1:
        cleaned = cleaned[:-1]
    cleaned += b"=" * (-len(cleaned) % 4)
    try:
        return binascii.a2b_base64(cleaned)
    except binascii.Error:
        return text


def decode_encoded_words(value: str) -> str:
    """Decode RFC 2047 encoded words in `value`, tolerating common breakage.

    Adjacent encoded words are joined before their charset is applied, so a
    character split across two words survives; words glued to text or with
    spaces inside are decoded too, as mail clients do.
    """
    if "=?" not in value:
        return value
    # (charset, byte chunks) for runs of encoded words; (None, [text]) between.
    pieces: list[tuple[str | None, list]] = []
    pos = 0
    for match in _ENCODED_WORD.finditer(value):
        between = value[pos : match.start()]
        previous_encoded = bool(pieces) and pieces[-1][0] is not None
        if between and not (previous_encoded and between.isspace()):
            pieces.append((None, [between]))
        charset = match.group(1).split("*", 1)[0].lower()
        payload = match.group(3).encode("utf-8")
        data = _decode_q(payload) if match.group(2) in "Qq" else _decode_b(payload)
        if pieces and pieces[-1][0] == charset:
            pieces[-1][1].append(data)
        else:
            pieces.append((charset, [data]))
        pos = match.end()
    if not pieces:
        return value
    parts = [
        chunks[0] if charset is None else decode_text(b"".join(chunks), charset)
        for charset, chunks in pieces
    ]
    return "".join(parts) + value[pos:]


@dataclass(frozen=True)
class _HeaderBlock:
    fields: list[tuple[str, bytes]]
    # The bytes for the MIME parser: the MIME fields of the header block, a
    # blank line, then the body. Headers are decoded here, so mail-parser
    # never decodes them again (and never sees a hostile Subject or From).
    mime: bytes


def _split_header_block(raw: bytes) -> _HeaderBlock:
    """Parse the header block: fields as (name, unfolded raw value).

    The block ends at the first blank line. A line that is neither a field nor
    a continuation (a fold that lost its indent, or a "---- Original ----"
    banner) is read as a continuation when message fields other than the
    MIME ones still follow it before the blank line; otherwise the body
    starts there without its blank line, as in Python's email parser.
    """
    lines: list[tuple[int, int, bytes]] = []  # (start, end with line break, line)
    rest = len(raw)
    for line_start, line_end, line in _lines(raw):
        if not line:
            rest = line_start
            break
        lines.append((line_start, line_end, line))

    parsed: list[tuple[int, str | None, bytes]] = []  # (line index, field name, value)
    last_standard = -1
    for index, (_, _, line) in enumerate(lines):
        if line[:1] in (b" ", b"\t"):
            parsed.append((index, "", line))
            continue
        match = _FIELD_LINE.match(line)
        if match is None and index == 0 and line.startswith(b"From "):
            continue  # mbox separator line: not a field, not junk, not for the MIME parser
        if match is None:
            parsed.append((index, None, line))
            continue
        name = match.group(1).decode("ascii")
        parsed.append((index, name, match.group(2)))
        if name.lower() in MESSAGE_FIELDS and not name.lower().startswith(MIME_FIELD_PREFIXES):
            last_standard = index

    fields: list[tuple[str, list[bytes]]] = []
    mime_lines: list[bytes] = []
    in_mime_field = False
    for index, name, value in parsed:
        source = raw[lines[index][0] : lines[index][1]]
        if name is None:
            # A fold that lost its indent: message fields still follow, or
            # the field before ends with ";" and so expects a parameter.
            parameter_due = bool(fields) and fields[-1][1][-1].rstrip().endswith(b";")
            if index > last_standard and not parameter_due:
                rest = lines[index][0]
                break
            name, value, source = "", b" " + value, b" " + source
        if name:
            fields.append((name, [value]))
            in_mime_field = name.lower().startswith(MIME_FIELD_PREFIXES)
        elif fields:
            fields[-1][1].append(value)
        else:
            continue  # junk before the first field ("---- Original message ----")
        if in_mime_field:
            mime_lines.append(source)

    body = raw[rest:]
    if not body.startswith((b"\r\n", b"\n", b"\r")):
        body = b"\n" + body
    mime = b"".join(mime_lines) + body
    return _HeaderBlock([(name, b"".join(parts).strip()) for name, parts in fields], mime)


def _lines(raw: bytes) -> Iterable[tuple[int, int, bytes]]:
    """(start, end including the line break, line) for each line of `raw`, lazily.

    Lines end with CRLF, LF or CR alone.
    """
    start = 0
    size = len(raw)
    while start < size:
        match = _LINE_END.search(raw, start)
        if match is None:
            yield start, size, raw[start:]
            return
        yield start, match.end(), raw[start : match.start()]
        start = match.end()


def _mailboxes(value: str) -> list[tuple[str, str]]:
    """(display name, lower-cased address) pairs from an address header value.

    A single linear pass; email.utils.getaddresses recurses on nested group
    syntax and is quadratic on long lists, which hostile headers exploit.
    """
    result = []
    for segment in _address_segments(value):
        name, address = _mailbox(segment)
        if address or name:
            result.append((name, address))
    return result


def _address_segments(value: str) -> list[str]:
    """Split an address list at commas and group marks outside quotes, <>, ()."""
    segments: list[str] = []
    current: list[str] = []
    quoted = escaped = in_angle = has_at = False
    depth = 0
    for char in value:
        if escaped:
            escaped = False
        elif char == "\\" and (quoted or depth):
            escaped = True
        elif quoted:
            quoted = char != '"'
        elif depth:
            depth += {"(": 1, ")": -1}.get(char, 0)
        elif char == '"':
            quoted = True
        elif char == "(":
            depth = 1
        elif char == "<":
            in_angle = True
        elif char == ">":
            in_angle = False
        elif char in ",;" and not in_angle:
            segments.append("".join(current))
            current = []
            has_at = False
            continue
        elif char == ":" and not in_angle and not has_at:
            current = []  # "group name:" starts a group; the name is no mailbox
            continue
        has_at = has_at or char == "@"
        current.append(char)
    segments.append("".join(current))
    return [segment for segment in segments if segment.strip()]


def _without_comments(segment: str) -> tuple[str, str]:
    """The segment without its (comments), and the text of the first comment."""
    kept: list[str] = []
    comment: list[str] = []
    first_comment = ""
    quoted = escaped = False
    depth = 0
    for char in segment:
        if depth:
            if char == "(" and not escaped:
                depth += 1
            elif char == ")" and not escaped:
                depth -= 1
                if not depth:
                    first_comment = first_comment or "".join(comment).strip()
                    continue
            escaped = char == "\\" and not escaped
            comment.append(char)
            continue
        if char == "(" and not quoted:
            depth = 1
            comment = []
            continue
        if char == '"' and not escaped:
            quoted = not quoted
        escaped = char == "\\" and not escaped
        kept.append(char)
    return "".join(kept), first_comment


def _unquote(name: str) -> str:
    name = name.strip()
    if len(name) >= 2 and name[0] == name[-1] == '"':
        name = name[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return _WHITESPACE.sub(" ", name).strip()


def _unquoted_find(text: str, char: str) -> int:
    """Where `char` first appears outside a quoted string; -1 when it does not."""
    quoted = escaped = False
    for index, found in enumerate(text):
        if escaped:
            escaped = False
        elif found == "\\" and quoted:
            escaped = True
        elif found == '"':
            quoted = not quoted
        elif found == char and not quoted:
            return index
    return -1


def _mailbox(segment: str) -> tuple[str, str]:
    text, comment = _without_comments(segment)
    angle = _unquoted_find(text, "<")
    if angle >= 0:
        close = text.find(">", angle)
        address = text[angle + 1 : close if close >= 0 else len(text)]
        name = text[:angle]
        address = address.rsplit(":", 1)[-1]  # drop an obsolete source route
    else:
        words = text.split()
        at_words = [index for index, word in enumerate(words) if "@" in word]
        if '"' in text and at_words:
            name, address = "", text  # a quoted local part: "a b"@host
        elif at_words:
            # "Name addr@host" without angle brackets: the address is the
            # word holding the @, the rest is the name.
            at = at_words[-1]
            address = words[at]
            name = " ".join(words[:at] + words[at + 1 :])
        elif len(words) == 1:
            name, address = "", words[0]  # a local name such as MAILER-DAEMON
        else:
            name, address = text, ""
    if '"' not in address:
        address = _WHITESPACE.sub("", address)
    name = decode_encoded_words(_unquote(name) or comment)
    return name, address.strip().strip("<>").lower()


# An address written inside a display name, as a name chosen to pass for another
# sender shows it.
_ADDRESS_IN_TEXT = re.compile(r"[^\s<>()\[\]\"',;:@]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_QUOTED_LOCAL_PART = re.compile(r'"(?:[^"\\]|\\.)*"@\S+')


def _mailbox_doubt(segment: str) -> str | None:
    """Why one From mailbox does not plainly name its sender; None when it does."""
    text = _without_comments(segment)[0].strip()
    angle = _unquoted_find(text, "<")
    if angle < 0 and not (len(text.split()) == 1 or _QUOTED_LOCAL_PART.fullmatch(text)):
        return f"From não é um endereço bem formado (not one well-formed address): {text!r}"
    if angle >= 0 and ((close := text.find(">", angle)) < 0 or text[close + 1 :].strip()):
        return f"From não é um endereço bem formado (not one well-formed address): {text!r}"
    if angle >= 0 and ":" in text[angle:close]:
        return f"From com rota de origem obsoleta (obsolete source route): {text!r}"
    name, address = _mailbox(segment)
    # Look-alike characters (a fullwidth at sign) count as what they look like.
    name = unicodedata.normalize("NFKC", name)
    shown = sorted({found.lower() for found in _ADDRESS_IN_TEXT.findall(name)} - {address})
    if shown:
        return (
            "o nome no From mostra outro endereço (the From name shows another address): "
            + ", ".join(shown)
        )
    return None


def _message_ids(value: str | None) -> list[str]:
    if not value:
        return []
    found = [_WHITESPACE.sub("", item) for item in _MSG_ID.findall(value)]
    return [item for item in found if item] or [item.strip("<>") for item in value.split()]


# --------------------------------------------------------------------------
# HTML to text


_TAG_NAME = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9:_-]*)")
_WHITESPACE_RUN = re.compile(r"[ \t\r\n\f]+")
_BLANK_LINES = re.compile(r"\n{3,}")
_SPACE_RUN = re.compile(r" {2,}")
# Quotes and tables nested deeper than this are read as plain blocks.
MAX_NESTING = 40
_SKIP_UNTIL_CLOSED = frozenset({"script", "style", "head", "title", "template", "noscript"})
_LINE_BLOCKS = frozenset(
    {
        "address", "article", "aside", "caption", "center", "dd", "div", "dl", "dt",
        "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5",
        "h6", "header", "hr", "main", "nav", "ol", "section", "ul",
    }
)  # fmt: skip


class _Frame:
    """A place text is collected: the document, a quote, a table or a cell."""

    __slots__ = ("chunks", "kind", "row", "rows")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.chunks: list[str] = []
        self.rows: list[list[str]] = []
        self.row: list[str] | None = None


def _tidy(text: str) -> str:
    text = _SPACE_RUN.sub(" ", text.replace("\xa0", " "))
    lines = [line.strip(" ") for line in text.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip("\n")


def _render_row(cells: list[str]) -> str:
    while cells and not cells[-1]:
        cells.pop()
    cells = [_soft_lines(cell) for cell in cells]
    if any("\n" in cell for cell in cells):
        return "\n".join(cell for cell in cells if cell)
    return "\t".join(cells)


def _soft_lines(cell: str) -> str:
    """A cell's line breaks, when they only wrap a value, become spaces.

    Mail clients break long names and areas inside table cells ("Ana<br>Beatriz
    Castro"); kept as lines they would tear the row apart. A cell holding
    paragraphs or "Label: value" lines is a block of its own and keeps them.
    """
    if "\n" not in cell or "\n\n" in cell or ":" in cell:
        return cell
    lines = cell.split("\n")
    if len(lines) > 4 or any(len(line) > 80 for line in lines):
        return cell
    return " ".join(line for line in lines if line)


class _HtmlText:
    """Linear-time HTML to text: one pass, no backtracking regexes on the document."""

    def __init__(self) -> None:
        self.stack = [_Frame("root")]
        self.pre_depth = 0

    # Collecting

    def add(self, text: str) -> None:
        top = self.stack[-1]
        if top.kind == "table" and not text.strip():
            return  # whitespace between rows and cells
        top.chunks.append(text)

    def close_top(self) -> None:
        frame = self.stack.pop()
        parent = self.stack[-1]
        if frame.kind == "cell":  # a cell's parent is always its table
            if parent.row is None:
                parent.row = []
            parent.row.append(_tidy("".join(frame.chunks)))
        elif frame.kind == "table":
            self.finish_row(frame)
            rendered = [_render_row(row) for row in frame.rows]
            loose = _tidy("".join(frame.chunks))
            body = "\n".join(part for part in [loose, *rendered] if part)
            self.add_block(body)
        elif frame.kind == "quote":
            text = _tidy("".join(frame.chunks))
            quoted = "\n".join("> " + line if line else ">" for line in text.split("\n"))
            self.add_block(quoted)

    def add_block(self, text: str) -> None:
        self.add("\n" + text + "\n")

    @staticmethod
    def finish_row(table: _Frame) -> None:
        if table.row is not None:
            if any(cell for cell in table.row):
                table.rows.append(table.row)
            table.row = None

    def close_until(self, kind: str) -> None:
        """Close the innermost open `kind` frame and those inside it; none: ignore."""
        if not any(frame.kind == kind for frame in self.stack[1:]):
            return
        while self.stack[-1].kind != kind:
            self.close_top()
        self.close_top()

    # Tags

    def tag(self, closing: bool, name: str, source: str) -> None:
        top = self.stack[-1]
        if name == "br":
            self.add("\n")
        elif name == "p":
            self.add("\n\n")
        elif name in _LINE_BLOCKS:
            self.add("\n")
        elif name == "li":
            self.add("\n" if closing else "\n- ")
        elif name == "pre":
            self.pre_depth = max(0, self.pre_depth + (-1 if closing else 1))
            self.add("\n")
        elif name in ("blockquote", "table") and not closing and len(self.stack) > MAX_NESTING:
            self.add("\n")  # nested beyond any real message: read as a plain block
        elif name == "blockquote":
            if closing:
                self.close_until("quote")
            else:
                self.stack.append(_Frame("quote"))
        elif name == "table":
            if closing:
                self.close_until("table")
            else:
                self.stack.append(_Frame("table"))
        elif name == "tr":
            if top.kind == "cell" and self.stack[-2].kind == "table":
                self.close_top()
            if self.stack[-1].kind == "table":
                self.finish_row(self.stack[-1])
                if not closing:
                    self.stack[-1].row = []
        elif name in ("td", "th"):
            if top.kind == "cell" and self.stack[-2].kind == "table":
                self.close_top()
            if not closing and self.stack[-1].kind == "table":
                self.stack.append(_Frame("cell"))
            elif not closing:
                self.add(" ")
        elif name == "input" and not closing and "checkbox" in source.lower():
            self.add("[x] " if "checked" in source.lower() else "[ ] ")

    def text(self, raw: str) -> None:
        if "&" in raw:
            raw = html.unescape(raw)
        if not self.pre_depth:
            raw = _WHITESPACE_RUN.sub(" ", raw)
        if raw:
            self.add(raw)

    def result(self) -> str:
        while len(self.stack) > 1:
            self.close_top()
        return _tidy("".join(self.stack[0].chunks))


def html_to_text(document: str) -> str:
    """Turn HTML into text, keeping paragraphs, lines, quotes and table cells.

    Table rows become lines with cells separated by a tab; blockquotes become
    lines prefixed with "> "; entities are decoded; checkboxes become "[x]" or
    "[ ]". Scripts, styles and comments are dropped.

    One pass over the document: every search starts where the previous one
    could not have matched, so hostile markup ("<<<<...>") stays linear.
    """
    builder = _HtmlText()
    pos = 0
    size = len(document)
    gt = -1
    unclosed: set[str] = set()  # elements whose closing tag does not occur again
    while pos < size:
        lt = document.find("<", pos)
        if lt < 0:
            builder.text(document[pos:])
            break
        if lt > pos:
            builder.text(document[pos:lt])
        if document.startswith("<!--", lt):
            end = document.find("-->", lt + 4)
            pos = size if end < 0 else end + 3
            continue
        if gt <= lt:
            gt = document.find(">", lt + 1)
        if gt < 0:
            builder.text(document[lt:])
            break
        source = document[lt : gt + 1]
        match = _TAG_NAME.match(source)
        if match is None:
            if source.startswith(("<!", "<?")):
                pos = gt + 1  # doctype, conditional comment mark, processing instruction
            else:
                builder.text("<")  # a lone "<" in text ("a < b")
                pos = lt + 1
            continue
        pos = gt + 1
        closing, name = bool(match.group(1)), match.group(2).lower()
        if not closing and name in _SKIP_UNTIL_CLOSED:
            closing_tag = None if name in unclosed else _closing_tag(name).search(document, pos)
            if closing_tag is not None:
                close_gt = document.find(">", closing_tag.end())
                pos = size if close_gt < 0 else close_gt + 1
            elif name in ("script", "style"):
                pos = size
            else:
                unclosed.add(name)
            continue
        builder.tag(closing, name, source)
    return builder.result()


@lru_cache(maxsize=len(_SKIP_UNTIL_CLOSED))
def _closing_tag(name: str) -> re.Pattern[str]:
    return re.compile("</" + name, re.IGNORECASE)


# --------------------------------------------------------------------------
# Attachments


@dataclass(frozen=True)
class Attachment:
    """One attached file: its name, lower-cased MIME type and decoded bytes."""

    filename: str
    content_type: str
    payload: bytes = field(repr=False)

    @property
    def is_csv(self) -> bool:
        return self.content_type in CSV_CONTENT_TYPES or self.filename.lower().endswith(".csv")

    @property
    def text(self) -> str:
        """The payload as text: UTF-8 (with or without BOM), else cp1252/Latin-1."""
        return decode_text(self.payload.removeprefix(codecs.BOM_UTF8), "utf-8")

    def rows(self) -> list[list[str]]:
        """The CSV rows of this attachment (";", "," or tab separated); [] if not CSV."""
        if not self.is_csv:
            return []
        text = self.text
        header = next((line for line in text.splitlines() if line.strip()), "")
        delimiter = max(";,\t", key=header.count)
        # The reader gets the whole text so a quoted cell may span lines; inside a
        # cell a line break only wraps the value.
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        rows = ([" ".join(cell.split()) for cell in row] for row in reader)
        return [row for row in rows if any(row)]


# --------------------------------------------------------------------------
# The message


class _BodyParser(mailparser.MailParser):
    """mail-parser, with text parts decoded through `decode_text`.

    mail-parser decodes a text part with its declared charset, or UTF-8 when
    none is declared, and replaces what fails; undeclared Latin-1 bodies then
    lose their accents. This hook is its per-part decoding step.
    """

    def _decode_body_payload(self, part, charset, part_index):
        payload = part.get_payload(decode=True) or b""
        return decode_text(payload, part.get_content_charset())


class ReadMessage:
    """A message read from bytes: decoded headers now, body on first use.

    `message_id`, `in_reply_to` and `references` hold Message-IDs without
    their angle brackets ("abc@host"). Addresses are lower-cased.
    """

    def __init__(self, raw: bytes, block: _HeaderBlock) -> None:
        self.raw = raw
        self._fields = block.fields
        self._mime = block.mime
        self._decoded: dict[str, list[str]] = {}

    def __repr__(self) -> str:
        return f"ReadMessage(message_id={self.message_id!r}, subject={self.subject!r})"

    # Headers

    def headers(self, name: str) -> list[str]:
        """Every decoded value of header `name` (case-insensitive), in order."""
        key = name.lower()
        values = self._decoded.get(key)
        if values is None:
            values = [
                _HEADER_CONTROLS.sub(" ", decode_encoded_words(text)).strip()
                for text in self._undecoded(key)
            ]
            self._decoded[key] = values
        return values

    def header(self, name: str) -> str | None:
        """The first decoded value of header `name`, or None when absent."""
        values = self.headers(name)
        return values[0] if values else None

    def header_names(self) -> list[str]:
        """Names of the header fields, in order, as spelled in the message."""
        return [name for name, _ in self._fields]

    def _undecoded(self, key: str) -> list[str]:
        """Values of header `key` as text, encoded words still encoded."""
        return [self._text_of(value) for name, value in self._fields if name.lower() == key]

    def _text_of(self, value: bytes) -> str:
        if value.isascii():
            return value.decode("ascii")
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            pass
        # Undeclared 8-bit bytes: the charsets the message declares for its
        # parts are the best guess for its headers too.
        for codec in self._charset_hints:
            try:
                return value.decode(codec)
            except UnicodeDecodeError:
                continue
        return value.decode("cp1252", "intake.latin1")

    @cached_property
    def _charset_hints(self) -> list[str]:
        hints: list[str] = []
        for match in _CHARSET_PARAM.finditer(self.raw, 0, CHARSET_HINT_SCAN_BYTES):
            codec = _codec_for(match.group(1).decode("ascii"))
            for candidate in (codec, *RELATED_CHARSETS.get(codec, ())):
                if candidate and candidate not in SINGLE_BYTE_CODECS and candidate not in hints:
                    hints.append(candidate)
        return hints

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()

    @cached_property
    def subject(self) -> str:
        return self.header("Subject") or ""

    @cached_property
    def _sender(self) -> tuple[str, str]:
        # From, else Sender, else Reply-To: the first mailbox with an address
        # that has an @; failing that, whatever From names ("MAILER-DAEMON").
        candidates = [
            mailbox
            for key in SENDER_FIELDS
            for value in self._undecoded(key)
            for mailbox in _mailboxes(value)
        ]
        with_domain = [mailbox for mailbox in candidates if "@" in mailbox[1]]
        with_address = [mailbox for mailbox in candidates if mailbox[1]]
        for found in (with_domain, with_address):
            if found:
                return found[0]
        return ("", "")

    @cached_property
    def sender_doubts(self) -> list[str]:
        """Why the From field does not plainly name one sender; empty when it does.

        Where two readers of one header can differ on who sent the message, a
        check made on one reading (the receiving server's DMARC) says nothing
        of the other: that is how forged senders pass authentication.
        """
        values = self._undecoded("from")
        if not values:
            return ["sem campo From (no From field)"]
        addressed = [
            (segment, address)
            for value in values
            for segment in _address_segments(value)
            if "@" in (address := _mailbox(segment)[1])
        ]
        named = ", ".join(address for _, address in addressed)
        doubts = []
        if len(values) > 1:
            doubts.append(
                f"{len(values)} campos From (From fields): {named or 'sem endereço (no address)'}"
            )
        if not addressed:
            return [*doubts, "From sem endereço (From holds no address)"]
        if len(values) == 1 and len(addressed) > 1:
            doubts.append(f"{len(addressed)} endereços no From (addresses in From): {named}")
        doubts.extend(doubt for segment, _ in addressed if (doubt := _mailbox_doubt(segment)))
        return doubts

    @property
    def from_address(self) -> str:
        return self._sender[1]

    @property
    def from_name(self) -> str:
        # An encoded word may decode to CR/LF; a display name is one line of text.
        return " ".join(self._sender[0].split())

    @cached_property
    def to(self) -> list[str]:
        return [address for _, address in _mailboxes(", ".join(self._undecoded("to"))) if address]

    @cached_property
    def message_id(self) -> str | None:
        ids = _message_ids(self.header("Message-ID"))
        return ids[0] if ids else None

    @cached_property
    def in_reply_to(self) -> str | None:
        ids = _message_ids(self.header("In-Reply-To"))
        return ids[0] if ids else None

    @cached_property
    def references(self) -> list[str]:
        return _message_ids(" ".join(self.headers("References")))

    @cached_property
    def date(self) -> datetime | None:
        value = self.header("Date")
        if not value:
            return None
        try:
            return email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None

    # Body

    @cached_property
    def _body(self) -> tuple[str, str, list[Attachment], str | None]:
        try:
            parsed = _BodyParser.from_bytes(self._mime)
            plain = "\n\n".join(part for part in parsed.text_plain if part.strip())
            document = "\n".join(parsed.text_html)
            attachments = [_attachment(item) for item in parsed.attachments]
        except Exception as exc:
            # mail-parser on hostile input (a multipart cut short): read what
            # the parts hold one by one; only when that fails too is the body
            # unreadable, and the headers can still be screened.
            error = f"{type(exc).__name__}: {exc}"[:300]
            log.debug("%s: where mail-parser failed", self.message_id, exc_info=True)
            try:
                plain, document, attachments = _body_part_by_part(self._mime)
            except Exception as second:
                log.warning("%s: body could not be parsed (%s)", self.message_id, error)
                log.debug(
                    "%s: where reading part by part failed", self.message_id, exc_info=second
                )
                return "", "", [], error
            log.warning(
                "%s: body read part by part; mail-parser failed (%s)", self.message_id, error
            )
        return _clean_text(plain), document, attachments, None

    @property
    def body_error(self) -> str | None:
        """Why the body could not be parsed at all; None when it could."""
        return self._body[3]

    @property
    def plain(self) -> str:
        """The text/plain parts, joined."""
        return self._body[0]

    @property
    def html(self) -> str:
        """The text/html parts as HTML, joined."""
        return self._body[1]

    @cached_property
    def html_text(self) -> str:
        """The HTML parts turned into text (see `html_to_text`)."""
        return _clean_text(html_to_text(self.html)) if self.html else ""

    @cached_property
    def text(self) -> str:
        """The body text: text/plain, or the HTML as text when the plain part is a stub."""
        if self.html and _is_stub(self.plain):
            return self.html_text
        return self.plain

    @property
    def attachments(self) -> list[Attachment]:
        return self._body[2]


def _body_part_by_part(mime: bytes) -> tuple[str, str, list[Attachment]]:
    """Text and attachments read with Python's email package, one leaf part at a time.

    A multipart whose boundary never comes is text a person would read as is,
    so it counts as plain text.
    """
    message = email.message_from_bytes(mime, policy=email.policy.compat32)
    plain: list[str] = []
    documents: list[str] = []
    attachments: list[Attachment] = []
    for part in message.walk():
        if part.is_multipart():
            continue
        content_type = part.get_content_type()
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        if part.get_filename() or part.get_content_disposition() == "attachment":
            attachments.append(Attachment(part.get_filename() or "", content_type, payload))
        elif content_type == "text/html":
            documents.append(decode_text(payload, part.get_content_charset()))
        elif content_type == "text/plain" or part.get_content_maintype() == "multipart":
            plain.append(decode_text(payload, part.get_content_charset()))
    text = "\n\n".join(chunk for chunk in plain if chunk.strip())
    return text, "\n".join(documents), attachments


def _attachment(item: dict) -> Attachment:
    payload = item.get("payload") or ""
    if item.get("binary"):
        # The wire base64 of the part, which may be broken: decode leniently.
        data = _decode_b(payload.encode("ascii", "ignore"))
    else:
        try:
            data = payload.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            data = payload.encode("utf-8", "replace")
    content_type = (item.get("mail_content_type") or "application/octet-stream").lower()
    return Attachment(str(item.get("filename") or ""), content_type, data)


def _clean_text(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").removeprefix("\ufeff")
    return _CONTROL_CHARS.sub("", text)


def _is_stub(plain: str) -> bool:
    stripped = plain.strip()
    if not stripped:
        return True
    if len(stripped) > PLAIN_STUB_MAX_CHARS:
        return False
    folded = _fold(stripped)
    return any(phrase in folded for phrase in PLAIN_STUB_PHRASES)


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _header_offset(raw: bytes) -> int:
    """Where the header block starts: after a UTF-8 BOM and leading blank lines."""
    start = 3 if raw.startswith(codecs.BOM_UTF8) else 0
    while start < len(raw) and raw[start] in b"\r\n":
        start += 1
    return start


def read_message(raw: bytes) -> ReadMessage:
    """Read a message from its raw bytes.

    Raises UnreadableMessage only when the bytes are not a message at all:
    empty, or without a header block naming any message field.
    """
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise TypeError(f"read_message needs bytes, not {type(raw).__name__}")
    raw = bytes(raw)
    if not raw.strip():
        raise UnreadableMessage("mensagem vazia (empty message)")
    start = _header_offset(raw)
    block = _split_header_block(raw[start:] if start else raw)
    if not any(name.lower() in MESSAGE_FIELDS for name, _ in block.fields):
        raise UnreadableMessage("sem cabeçalho de mensagem (no message header block)")
    message = ReadMessage(raw, block)
    log.debug(
        "%s: read %d bytes, %d header fields", message.message_id, len(raw), len(block.fields)
    )
    return message
