"""Folding: the body text as extraction compares it.

This module owns two steps that every reader shares: normalising a body
before it is split (invisible characters, odd spaces, full-width colons,
UTF-8 read as Latin-1, line ends) and folding words for comparison with
the tables in `intake.vocabulary` (lower case, no accents, "e-mail" as
"email").
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["fold", "folded_words", "normalise"]

# A request never needs more text than this; the rest is not read, which also
# bounds the work hostile input can cause.
MAX_TEXT_CHARS = 200_000

# Zero-width characters and soft hyphens that editors leave inside words.
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"), None)
# No-break, thin and wide spaces, which HTML mail turns text spaces into.
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


def normalise(text: str) -> str:
    """`text` as the readers take it: bounded, repaired, plain spaces and LF line ends."""
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


def fold(text: str) -> str:
    """Lower case without accents, for comparing words."""
    if text.isascii():
        return text.lower()
    return unicodedata.normalize("NFKD", text.casefold()).translate(_ACCENTS)


_EMAIL_WORD = re.compile(r"\be[\s-]?mail\b")
_WORDS = re.compile(r"[a-z0-9]+")


def folded_words(text: str) -> list[str]:
    """The folded words of `text`, letters and digits only; "e-mail" is "email"."""
    folded = _EMAIL_WORD.sub("email", fold(text))
    return _WORDS.findall(folded)
