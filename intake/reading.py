"""Reading: raw message bytes to a `ReadMessage`.

This module owns everything between the bytes of a message and decoded text:
the header block, header decoding (RFC 2047 encoded words, undeclared 8-bit
bytes), addresses, the body text (text/plain, or the text of the HTML that a
reader can see) and attachments. It does no I/O besides the bytes it is given.

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
from typing import NamedTuple

import mailparser

from intake.errors import UnreadableMessage
from intake.values import mixes_scripts

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
# Text types that hold data for a program, not a message for a person. When a
# body has no plain or HTML text, its parts of other text types are read as
# plain text, as RFC 2046 4.1.4 asks of subtypes a reader does not know.
TEXT_DATA_TYPES = CSV_CONTENT_TYPES | {
    "text/rfc822-headers",
    "text/x-amp-html",
    "text/calendar",
    "text/x-vcalendar",
    "text/vcard",
    "text/x-vcard",
    "text/directory",
    "text/rtf",
    "text/richtext",
    "text/xml",
    "text/css",
    "text/javascript",
}

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


# A tag name runs to white space, "/" or ">", as browsers read it: "<div.x>" is no
# div, so "</div>" does not close it.
_TAG_NAME = re.compile(r"<(/?)([A-Za-z][^\t\n\f\r />]*)")
# The ">" that ends a tag, or the opening quote of an attribute value: a ">"
# inside a quoted value ends nothing ('<div title=">" hidden>').
_TAG_END_OR_QUOTE = re.compile(r"=[\t\n\f\r ]*([\"'])|>")
_ATTRIBUTE = re.compile(
    r"([^\t\n\f\r />][^\t\n\f\r />=]*)"
    r"(?:[\t\n\f\r ]*=[\t\n\f\r ]*(\"[^\"]*\"|'[^']*'|[^\t\n\f\r >]*))?"
)
_WHITESPACE_RUN = re.compile(r"[ \t\r\n\f]+")
_BLANK_LINES = re.compile(r"\n{3,}")
_SPACE_RUN = re.compile(r" {2,}")
# Quotes and tables nested deeper than this are read as plain blocks.
MAX_NESTING = 40
# Elements whose content is never shown: read past up to their end tag.
_SKIP_UNTIL_CLOSED = frozenset(
    {"script", "style", "head", "title", "template", "noscript", "iframe", "noembed", "noframes"}
)
# Of those, the ones whose content runs to the end of the document when their
# end tag never comes: browsers read what follows as their raw text, or (for a
# template) as its inert content.
_SKIP_TO_END_UNCLOSED = frozenset(
    {"script", "style", "title", "template", "iframe", "noembed", "noframes"}
)
_LINE_BLOCKS = frozenset(
    {
        "address", "article", "aside", "caption", "center", "dd", "div", "dl", "dt",
        "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5",
        "h6", "header", "hr", "main", "nav", "ol", "section", "ul",
    }
)  # fmt: skip


# --------------------------------------------------------------------------
# What a person reading the HTML can see
#
# Text a person reading the message cannot see is not read: a request hidden
# in the HTML would be queued without anyone having seen it. Hidden text is
# text inside an element with the `hidden` attribute (unless the element's
# own style displays it), or whose inline style, or an ancestor's, removes it
# (display:none), makes it transparent (opacity, text colour), invisible
# (visibility:hidden) or too small to read (font-size). A style value that
# cannot be evaluated here (var(), calc()) counts as hiding: what is not known
# to be visible is not read.
#
# aria-hidden="true" does not hide: it only keeps screen readers off the
# element, and is common on visible text (icons, decorative labels). Text
# coloured like its background is not detected: that needs the colours of
# every ancestor and of the images behind the text. Only inline styles are
# read, not the rules of <style> sheets.

# Below these, text cannot be read on a screen: the tiny and transparent text
# tricks of hidden-text spam.
MIN_VISIBLE_OPACITY = 0.1
MIN_LEGIBLE_FONT_PX = 2.0
DEFAULT_FONT_PX = 16.0
# Hidden formatting elements closed early that HTML opens again around later
# text (see `_OpenElements`). No message has this many; a document that does
# is not read at all, so it cannot hide text by overflowing the count.
MAX_REOPENED = 32

# Elements without content or end tag: they never open a region.
_VOID_ELEMENTS = frozenset(
    {
        "area", "base", "basefont", "bgsound", "br", "col", "embed", "frame", "hr", "img",
        "input", "keygen", "link", "meta", "param", "source", "track", "wbr",
    }
)  # fmt: skip
# HTML's formatting elements: closed by another element's end tag, they are
# opened again, with their attributes, around the text that follows.
_FORMATTING = frozenset(
    {"a", "b", "big", "code", "em", "font", "i", "nobr", "s", "small", "strike", "strong",
     "tt", "u"}
)  # fmt: skip
# HTML's special elements (those ever kept open here): the end tag of an
# ordinary element never closes one of them.
_SPECIAL = frozenset(
    {
        "address", "applet", "article", "aside", "blockquote", "button", "caption", "center",
        "colgroup", "dd", "details", "dir", "div", "dl", "dt", "fieldset", "figcaption",
        "figure", "footer", "form", "frameset", "h1", "h2", "h3", "h4", "h5", "h6", "header",
        "hgroup", "li", "listing", "main", "marquee", "menu", "nav", "object", "ol", "p",
        "plaintext", "pre", "search", "section", "select", "summary", "table", "tbody", "td",
        "textarea", "tfoot", "th", "thead", "tr", "ul", "xmp",
    }
)  # fmt: skip
# Special elements a new list item closes its open list item across.
_ITEM_PASSABLE = frozenset({"address", "div", "p"})
# An end tag does not look past these for its element (HTML "in scope").
_SCOPE_FENCES = ("applet", "caption", "marquee", "object", "table", "td", "th")
# Elements that end the reopening of formatting elements opened inside them.
_MARKERS = frozenset({"applet", "caption", "marquee", "object", "td", "th"})
_TABLE_PARTS = frozenset({"caption", "colgroup", "tbody", "td", "tfoot", "th", "thead", "tr"})
_TABLE_SECTIONS = ("tbody", "tfoot", "thead")
_HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")
# Start tags that close an open paragraph. Not <table>: old-style documents
# (no doctype, as most mail) keep the paragraph open around it.
_CLOSES_P = frozenset(
    {
        "address", "article", "aside", "blockquote", "center", "dd", "details", "dialog",
        "dir", "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "h1",
        "h2", "h3", "h4", "h5", "h6", "header", "hgroup", "hr", "li", "listing", "main",
        "menu", "nav", "ol", "p", "plaintext", "pre", "search", "section", "summary", "ul",
        "xmp",
    }
)  # fmt: skip
# Display values that show an element the `hidden` attribute would hide.
_DISPLAY_WORDS = frozenset(
    {
        "block", "inline", "inline-block", "flex", "inline-flex", "grid", "inline-grid",
        "table", "inline-table", "table-row", "table-cell", "table-row-group",
        "table-header-group", "table-footer-group", "table-column", "table-column-group",
        "table-caption", "list-item", "contents", "flow", "flow-root", "run-in", "ruby",
        "ruby-base", "ruby-text", "math", "inherit", "initial", "unset", "-webkit-box",
        "-webkit-inline-box", "-ms-flexbox",
    }
)  # fmt: skip
_FONT_KEYWORDS = {
    "xx-small": 9.0, "x-small": 10.0, "small": 13.0, "medium": 16.0, "large": 18.0,
    "x-large": 24.0, "xx-large": 32.0, "xxx-large": 48.0, "initial": DEFAULT_FONT_PX,
}  # fmt: skip
# CSS length units in pixels, and font sizes relative to the parent's.
_ABSOLUTE_UNITS = {
    "px": 1.0, "pt": 4 / 3, "pc": 16.0, "in": 96.0, "cm": 96 / 2.54, "mm": 96 / 25.4,
    "q": 96 / 101.6, "rem": DEFAULT_FONT_PX, "vw": 8.0, "vh": 8.0, "vmin": 8.0, "vmax": 8.0,
}  # fmt: skip
_RELATIVE_UNITS = {"em": 1.0, "%": 0.01, "ex": 0.5, "ch": 0.5}
_COLOUR_FUNCTIONS = frozenset(
    {"rgb", "rgba", "hsl", "hsla", "hwb", "lab", "lch", "oklab", "oklch", "color"}
)
# Values that leave a property as the parent has it.
_INHERITED = frozenset({"inherit", "unset", "revert", "revert-layer"})
_CSS_NUMBER = re.compile(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?)([a-z%]*)")
_CSS_ESCAPE = re.compile(r"\\(?:([0-9a-fA-F]{1,6})[ \t\n\r\f]?|(.))", re.DOTALL)
_IMPORTANT = re.compile(r"!\s*important$")


class _Style(NamedTuple):
    """What an element's own attributes do to the visibility of its text.

    None leaves the property as the parent has it.
    """

    removed: bool = False  # not rendered at all, nor anything inside it
    invisible: bool | None = None  # visibility:hidden
    transparent: bool | None = None  # the text colour
    fill_transparent: bool | None = None  # -webkit-text-fill-color, over the colour
    font: tuple[str, float] | None = None  # ("px", size) or ("ratio", to the parent's)


_NO_STYLE = _Style()


def _own_style(source: str, name: str) -> _Style:
    """The `_Style` of a start tag's attributes (`source` is the whole tag)."""
    lowered = source.lower()
    if "style" not in lowered and "hidden" not in lowered:
        return _NO_STYLE
    attributes: dict[str, str] = {}
    for match in _ATTRIBUTE.finditer(source, 1 + len(name), len(source) - 1):
        key = match.group(1).lower()
        if key in attributes:
            continue  # of two same attributes the first counts, as in browsers
        value = match.group(2) or ""
        if value[:1] in ("'", '"'):
            value = value[1:-1]
        attributes[key] = html.unescape(value) if "&" in value else value
    if "style" not in attributes and "hidden" not in attributes:
        return _NO_STYLE
    declarations = _declarations(attributes.get("style", ""))
    display = declarations.get("display")
    displayed = display is not None and _displays(display)
    opacity = declarations.get("opacity")
    # The hidden attribute is the user agent's display:none, which the
    # element's own display overrides; "until-found" hides regardless.
    hidden = "hidden" in attributes and (
        not displayed or attributes["hidden"].strip().lower() == "until-found"
    )
    removed = (
        hidden
        or (display is not None and (display == "none" or "(" in display))
        or (opacity is not None and _opacity_hides(opacity))
    )
    return _Style(
        removed=removed,
        invisible=_invisible(declarations.get("visibility")),
        transparent=_transparent(declarations.get("color")),
        fill_transparent=_transparent(declarations.get("-webkit-text-fill-color")),
        font=_font_size(declarations.get("font-size")),
    )


def _declarations(style: str) -> dict[str, str]:
    """The declarations of a style attribute, lower-cased, as the cascade keeps them."""
    if "/*" in style:
        style = _without_css_comments(style)
    if "\\" in style:
        style = _CSS_ESCAPE.sub(_css_unescape, style)
    found: dict[str, str] = {}
    important: set[str] = set()
    for declaration in style.split(";"):
        name, colon, value = declaration.partition(":")
        if not colon:
            continue
        name = name.strip().lower()
        value = " ".join(value.lower().split())
        marked = _IMPORTANT.search(value)
        if marked:
            value = value[: marked.start()].rstrip()
            important.add(name)
        elif name in important:
            continue  # a later declaration does not override an !important one
        found[name] = value
    return found


def _without_css_comments(style: str) -> str:
    # A comment separates tokens ("no/**/ne" is not "none"); one never closed
    # runs to the end. Found with str.find, so a run of "/*" stays linear.
    kept = []
    pos = 0
    while (start := style.find("/*", pos)) >= 0:
        kept.append(style[pos:start])
        end = style.find("*/", start + 2)
        if end < 0:
            return " ".join(kept)
        pos = end + 2
    kept.append(style[pos:])
    return " ".join(kept)


def _css_unescape(match: re.Match[str]) -> str:
    if match.group(2) is not None:
        return match.group(2)
    code = int(match.group(1), 16)
    return chr(code) if 0 < code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF else "\ufffd"


def _css_number(value: str) -> tuple[float, str] | None:
    match = _CSS_NUMBER.fullmatch(value)
    return (float(match.group(1)), match.group(2)) if match else None


def _displays(display: str) -> bool:
    """Whether a display value is a valid one that renders the element."""
    words = display.split()
    return bool(words) and all(word in _DISPLAY_WORDS for word in words)


def _opacity_hides(value: str) -> bool:
    if "(" in value:
        return True
    number = _css_number(value)
    if number is None or number[1] not in ("", "%"):
        return False  # invalid: browsers ignore it
    amount = number[0] / 100 if number[1] == "%" else number[0]
    return amount < MIN_VISIBLE_OPACITY


def _invisible(value: str | None) -> bool | None:
    if value is None or value in _INHERITED:
        return None
    if value in ("hidden", "collapse") or "(" in value:
        return True
    return False if value in ("visible", "initial") else None


def _transparent(value: str | None) -> bool | None:
    """Whether a colour value is transparent; None when it keeps the parent's.

    Colour names are not checked, and browsers ignore an invalid colour: a
    name keeps the parent's transparency rather than end it on a misspelling.
    """
    if value is None or value in _INHERITED or value == "currentcolor":
        return None
    if value in ("transparent", "initial"):
        return value == "transparent"
    if value.startswith("#"):
        digits = value[1:]
        if len(digits) not in (3, 4, 6, 8) or any(c not in "0123456789abcdef" for c in digits):
            return None  # invalid: browsers ignore it
        # #rgba and #rrggbbaa carry an alpha digit or two; the rest are opaque.
        return len(digits) in (4, 8) and int(digits[-len(digits) // 4 :], 16) == 0
    if "(" not in value:
        return None
    function, _, arguments = value.partition("(")
    if function.strip() not in _COLOUR_FUNCTIONS or "(" in arguments:
        return True  # var(), calc() and the like cannot be evaluated here
    arguments = arguments.rstrip(")")
    if "/" in arguments:
        alpha = arguments.rpartition("/")[2]
    elif arguments.count(",") == 3:
        alpha = arguments.rpartition(",")[2]
    else:
        return False
    number = _css_number(alpha.strip())
    if number is None:
        return True
    amount = number[0] / 100 if number[1] == "%" else number[0]
    return amount < MIN_VISIBLE_OPACITY


def _font_size(value: str | None) -> tuple[str, float] | None:
    if value is None or value in _INHERITED:
        return None
    if value in _FONT_KEYWORDS:
        return ("px", _FONT_KEYWORDS[value])
    if value in ("smaller", "larger"):
        return ("ratio", 1 / 1.2 if value == "smaller" else 1.2)
    if "(" in value:
        return ("px", 0.0)  # calc() and the like cannot be evaluated here
    number = _css_number(value)
    if number is None or number[0] < 0:
        return None  # invalid: browsers ignore it
    amount, unit = number
    if unit in _ABSOLUTE_UNITS:
        return ("px", amount * _ABSOLUTE_UNITS[unit])
    if unit in _RELATIVE_UNITS:
        return ("ratio", amount * _RELATIVE_UNITS[unit])
    return ("px", 0.0) if not unit and amount == 0 else None


class _Element:
    """An open element: where it sits among the open ones and how its text shows."""

    __slots__ = (
        "barrier", "fill_transparent", "font_px", "hides", "invisible", "markers", "name",
        "removed", "serial", "shown", "special", "transparent", "visible",
    )  # fmt: skip

    def __init__(
        self, name: str, parent: _Element | None, style: _Style, index: int, serial: int
    ) -> None:
        self.name = name
        self.serial = serial
        self.shown = False  # its start tag reached the text
        self.removed = style.removed or bool(parent and parent.removed)
        self.invisible = _pick(style.invisible, parent.invisible if parent else None)
        self.transparent = _pick(style.transparent, parent.transparent if parent else None)
        self.fill_transparent = _pick(
            style.fill_transparent, parent.fill_transparent if parent else None
        )
        base = parent.font_px if parent else DEFAULT_FONT_PX
        if style.font is None:
            self.font_px = base
        else:
            self.font_px = style.font[1] * (base if style.font[0] == "ratio" else 1.0)
        fill = self.fill_transparent
        self.visible = not (
            self.removed
            or self.invisible
            or self.font_px < MIN_LEGIBLE_FONT_PX
            or (fill if fill is not None else self.transparent)
        )
        # Hidden by its own attributes, so hidden again wherever HTML reopens it.
        self.hides = (
            style.removed
            or style.invisible is True
            or bool(style.transparent or style.fill_transparent)
            or (style.font is not None and self.font_px < MIN_LEGIBLE_FONT_PX)
        )
        special = name in _SPECIAL
        # Indexes of the innermost special element at or below this one, and
        # of the innermost one a new list item does not close across.
        self.special = index if special else parent.special if parent else 0
        self.barrier = (
            index if special and name not in _ITEM_PASSABLE else parent.barrier if parent else 0
        )
        self.markers = (parent.markers if parent else 0) + (name in _MARKERS)


def _pick(own: bool | None, inherited: bool | None) -> bool | None:
    return inherited if own is None else own


class _OpenElements:
    """The elements open at a point of an HTML document, as a browser keeps them.

    Enough of HTML's tree-building rules to know where an element ends when
    its end tag is missing or misplaced: an end tag closes its element only
    within its scope and never past a special element it does not name, a
    block closes an open paragraph, a cell or row closes the last one, table
    parts outside a table are dropped, and formatting elements closed early
    are reopened around the text that follows. Where a rule is simplified, the
    simplification keeps an element open longer, never shorter, so hidden text
    stays hidden. Every step takes amortised constant time.
    """

    def __init__(self) -> None:
        self.serial = 0
        self.stack = [_Element("", None, _NO_STYLE, 0, 0)]
        self.where: dict[str, list[int]] = {}  # element name -> indexes in the stack
        self.reopened: list[_Element] = []  # hidden formatting elements closed early
        self.blank = False  # the whole document is hidden

    @property
    def text_visible(self) -> bool:
        top = self.stack[-1]
        if self.blank or not top.visible:
            return False
        # A reopened element holds the text only up to the cell it was opened in.
        return not (self.reopened and self.reopened[-1].markers == top.markers)

    def innermost(self, *names: str) -> int:
        """Index of the innermost open element named one of `names`; 0 when none is."""
        where = self.where
        return max((where[name][-1] for name in names if where.get(name)), default=0)

    def start(self, name: str, source: str) -> bool:
        """Open element `name`; whether its start tag reaches the text."""
        style = _own_style(source, name)
        if name in ("html", "body"):
            # Not kept open (their end tags end nothing); their style is the root's.
            root = self.stack[0]
            self.stack[0] = _Element("", root, style, 0, 0)
            self.blank = self.blank or style.removed
            return False
        if (name in _TABLE_PARTS or name == "table") and not self._enter_table_part(name):
            return not self.stack[-1].removed
        if name in ("li", "dd", "dt"):
            item = self.innermost("li") if name == "li" else self.innermost("dd", "dt")
            if item and item == self.stack[-1].barrier:
                self.pop_to(item)
        if name in _CLOSES_P:
            paragraph = self.innermost("p")
            if paragraph > self.innermost(*_SCOPE_FENCES, "button"):
                self.pop_to(paragraph)
        if name in _HEADINGS and self.stack[-1].name in _HEADINGS:
            self.pop_to(len(self.stack) - 1)
        self.serial += 1
        element = _Element(name, self.stack[-1], style, len(self.stack), self.serial)
        if name in _VOID_ELEMENTS:
            # A checkbox becomes text ("[x]"); a line break only shapes it.
            return element.visible if name == "input" else not element.removed
        element.shown = not element.removed
        self.where.setdefault(name, []).append(len(self.stack))
        self.stack.append(element)
        return element.shown

    def _enter_table_part(self, name: str) -> bool:
        """Close what a new table or table part closes; False when no table is open."""
        table = self.innermost("table")
        if name == "table":
            if table and self.innermost("td", "th", "caption") < table:
                self.pop_to(table)  # a table straight inside a table ends that table
            return True
        if not table:
            return False  # browsers drop a cell or row outside any table
        if name in ("td", "th", "tr"):
            cell = self.innermost("td", "th")
            if cell > table:
                self.pop_to(cell)
            if name == "tr" and self.innermost("tr") > table:
                self.pop_to(self.innermost("tr"))
            # Back to the row, section or table, out of what sits in between.
            rows = ("tr", *_TABLE_SECTIONS) if name != "tr" else _TABLE_SECTIONS
            self.pop_to(self.innermost(*rows, "table") + 1)
        else:
            self.pop_to(table + 1)
        return True

    def end(self, name: str) -> bool:
        """Close element `name` if this end tag closes it; whether the tag reaches the text."""
        target = self.innermost(name)
        if name in ("html", "body"):
            return False
        if name in _HEADINGS:
            target = self.innermost(*_HEADINGS)  # any heading's end tag closes a heading
            fence = self.innermost(*_SCOPE_FENCES)
        elif name in _TABLE_PARTS or name == "table":
            fence = self.innermost("table") if name != "table" else 0
        elif name == "p":
            fence = self.innermost(*_SCOPE_FENCES, "button")
        elif name == "li":
            fence = self.innermost(*_SCOPE_FENCES, "ol", "ul")
        elif name in _SPECIAL:
            fence = self.innermost(*(other for other in _SCOPE_FENCES if other != name))
        else:
            if name in _FORMATTING and self._forget_reopened(name, target):
                return False
            fence = self.stack[-1].special
        if target <= fence:
            return not self.stack[-1].removed  # closes nothing, as in browsers
        element = self.stack[target]
        self.pop_to(target, element)
        return element.shown

    def _forget_reopened(self, name: str, open_index: int) -> bool:
        """Whether the end tag of formatting element `name` ends a reopened one."""
        open_serial = self.stack[open_index].serial if open_index else -1
        markers = self.stack[-1].markers
        for position in range(len(self.reopened) - 1, -1, -1):
            element = self.reopened[position]
            if element.markers != markers:
                return False
            if element.name == name:
                if element.serial < open_serial:
                    return False  # the open one is the later: it is the one closed
                del self.reopened[position]
                return True
        return False

    def pop_to(self, index: int, closing: _Element | None = None) -> None:
        """Close the elements from `index` up; `closing` is the one its own end tag ends."""
        while len(self.stack) > index:
            element = self.stack.pop()
            self.where[element.name].pop()
            if element.hides and element.name in _FORMATTING and element is not closing:
                self.reopened.append(element)
        markers = self.stack[-1].markers
        while self.reopened and self.reopened[-1].markers > markers:
            self.reopened.pop()
        if len(self.reopened) > MAX_REOPENED:
            self.blank = True


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
    "[ ]". Scripts, styles and comments are dropped, and so is text a reader
    cannot see (see `_OpenElements` and the rules above it).

    One pass over the document: every search starts where the previous one
    could not have matched, so hostile markup ("<<<<...>") stays linear.
    """
    builder = _HtmlText()
    elements = _OpenElements()
    pos = 0
    size = len(document)
    unclosed: set[str] = set()  # elements whose closing tag does not occur again
    while pos < size and not elements.blank:
        lt = document.find("<", pos)
        if lt < 0:
            if elements.text_visible:
                builder.text(document[pos:])
            break
        if lt > pos and elements.text_visible:
            builder.text(document[pos:lt])
        if document.startswith("<!--", lt):
            end = document.find("-->", lt + 4)
            pos = size if end < 0 else end + 3
            continue
        match = _TAG_NAME.match(document, lt)
        if match is None:
            if document.startswith(("<!", "<?", "</"), lt):
                # Doctype, conditional comment mark, processing instruction or
                # "</" without a name: up to the next ">", as browsers read them.
                gt = document.find(">", lt + 2)
                pos = size if gt < 0 else gt + 1
            else:
                if elements.text_visible:
                    builder.text("<")  # a lone "<" in text ("a < b")
                pos = lt + 1
            continue
        gt = _tag_end(document, match.end())
        if gt < 0:
            break  # a tag the document cuts off: browsers show nothing of it
        pos = gt + 1
        closing, name = bool(match.group(1)), match.group(2).lower()
        if not closing and name in _SKIP_UNTIL_CLOSED:
            closing_tag = None if name in unclosed else _closing_tag(name).search(document, pos)
            if closing_tag is not None:
                close_gt = document.find(">", closing_tag.end())
                pos = size if close_gt < 0 else close_gt + 1
            elif name in _SKIP_TO_END_UNCLOSED:
                pos = size
            else:
                unclosed.add(name)
            continue
        source = document[lt:pos]
        reaches_text = elements.end(name) if closing else elements.start(name, source)
        if reaches_text:
            builder.tag(closing, name, source)
    return "" if elements.blank else builder.result()


def _tag_end(document: str, pos: int) -> int:
    """Where the tag whose name ends at `pos` ends (its ">"); -1 when it never does."""
    while True:
        found = _TAG_END_OR_QUOTE.search(document, pos)
        if found is None or found.group(1) is None:
            return -1 if found is None else found.start()
        close = document.find(found.group(1), found.end())
        if close < 0:
            return -1  # a quoted value never closed runs to the end, as in browsers
        pos = close + 1


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
    """mail-parser, with body parts decoded through `decode_text` and sorted here.

    mail-parser decodes a text part with its declared charset, or UTF-8 when
    none is declared, and replaces what fails; undeclared Latin-1 bodies then
    lose their accents. It also reads as text only the subtypes "plain" and
    "html", and drops a multipart without a boundary (subtype "mixed"), which
    is text a person reads. `_decode_body_payload` is its per-part decoding
    step for every part that is no attachment: each is kept in `texts`, in
    order, as `_text_kind` reads it.
    """

    texts: list[tuple[str, str]]  # (kind, text) of the body parts, in order

    def _reset(self):
        super()._reset()
        self.texts = []

    def _decode_body_payload(self, part, charset, part_index):
        kind = _text_kind(part)
        if kind is None:
            return ""  # not body text: nothing for mail-parser to file or warn about
        payload = part.get_payload(decode=True) or b""
        text = decode_text(payload, part.get_content_charset())
        self.texts.append((kind, text))
        # mail-parser files the text by subtype; a multipart is kept here only.
        return text if kind == part.get_content_subtype() else ""


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
        doubts.extend(
            f"o domínio do From mistura alfabetos (From domain mixes scripts): {address}"
            for _, address in addressed
            if mixes_scripts(address.rpartition("@")[2])
        )
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
            texts = parsed.texts
            plain = "\n\n".join(text for kind, text in texts if kind == "plain" and text.strip())
            document = "\n".join(text for kind, text in texts if kind == "html" and text)
            attachments = [_attachment(item) for item in parsed.attachments]
        except Exception as exc:
            # mail-parser on hostile input (a multipart cut short): read what
            # the parts hold one by one; only when that fails too is the body
            # unreadable, and the headers can still be screened. The message
            # is read either way, so this is no warning for the user.
            error = f"{type(exc).__name__}: {exc}"[:300]
            log.debug("%s: mail-parser failed (%s)", self.message_id, error, exc_info=True)
            try:
                plain, document, attachments = _body_part_by_part(self._mime)
            except Exception as second:
                log.warning("%s: body could not be parsed (%s)", self.message_id, error)
                log.debug(
                    "%s: where reading part by part failed", self.message_id, exc_info=second
                )
                return "", "", [], error
            log.info("%s: body read part by part, without mail-parser", self.message_id)
        else:
            if not plain.strip() and not document.strip():
                plain, document = self._text_part_by_part(plain, document)
        return _clean_text(plain), document, attachments, None

    def _text_part_by_part(self, plain: str, document: str) -> tuple[str, str]:
        """The text of a body in which mail-parser found none, read part by part.

        A safety net for parts mail-parser files as neither text nor
        attachment; the attachments stay as mail-parser found them.
        """
        try:
            found_plain, found_document, _ = _body_part_by_part(
                self._mime, attachments=False, any_text=True
            )
        except Exception:
            log.debug("%s: where reading part by part failed", self.message_id, exc_info=True)
            return plain, document
        if found_plain.strip() or found_document.strip():
            log.info("%s: body text read part by part; mail-parser found none", self.message_id)
            return found_plain, found_document
        return plain, document

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


def _text_kind(part: email.message.Message, *, any_text: bool = False) -> str | None:
    """How a body part reads: "plain", "html", or None when it is not read.

    A multipart whose boundary is missing or never comes is text a person
    would read as is (mail clients show it so), so it counts as plain text.
    With `any_text`, so do text types other than plain, HTML and data.
    """
    subtype = part.get_content_subtype()
    if subtype in ("plain", "html"):
        return subtype  # by subtype, as mail-parser has always read them
    if part.get_content_maintype() == "multipart" and not part.is_multipart():
        return "plain"
    if any_text and part.get_content_maintype() == "text":
        return None if part.get_content_type() in TEXT_DATA_TYPES else "plain"
    return None


def _body_part_by_part(
    mime: bytes, *, attachments: bool = True, any_text: bool = False
) -> tuple[str, str, list[Attachment]]:
    """Text and attachments read with Python's email package, one leaf part at a time.

    Parts are read as `_text_kind` says. What is attached is not entered: an
    attached message, or a multipart sent as an attachment, is one attachment
    and none of its text is body text. Attachments are decoded only when
    `attachments` is true.
    """
    message = email.message_from_bytes(mime, policy=email.policy.compat32)
    plain: list[str] = []
    documents: list[str] = []
    found: list[Attachment] = []
    parts = [message]
    while parts:
        part = parts.pop()
        attached = bool(part.get_filename()) or part.get_content_disposition() == "attachment"
        if part.is_multipart() and not attached and part.get_content_maintype() != "message":
            parts.extend(reversed(part.get_payload()))
            continue
        content_type = part.get_content_type()
        if attached or part.get_content_maintype() == "message":
            if attachments:
                found.append(Attachment(part.get_filename() or "", content_type, _payload(part)))
            continue
        kind = _text_kind(part, any_text=any_text)
        payload = part.get_payload(decode=True) if kind else None
        if isinstance(payload, bytes):
            text = decode_text(payload, part.get_content_charset())
            (documents if kind == "html" else plain).append(text)
    text = "\n\n".join(chunk for chunk in plain if chunk.strip())
    return text, "\n".join(documents), found


def _payload(part: email.message.Message) -> bytes:
    """A part's content as bytes: decoded, or for a message or multipart its source."""
    if not part.is_multipart():
        payload = part.get_payload(decode=True)
        return payload if isinstance(payload, bytes) else b""
    inner = part.get_payload()
    try:
        if part.get_content_maintype() == "message" and len(inner) == 1:
            return inner[0].as_bytes()
        return part.as_bytes().partition(b"\n\n")[2]
    except (LookupError, UnicodeError, ValueError):
        return b""  # a part the email package cannot write back: nothing to read in it


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
