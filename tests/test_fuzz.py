"""Property-based tests of reading and extraction on generated and mutated messages.

Two sources of input:

- mutated: real messages (tests/messages/ and the shared #ACESSO examples)
  with bytes flipped, inserted or cut, header fields repeated, charsets and
  transfer encodings swapped for odd or bogus ones, encoded words injected,
  line ends changed, boundaries broken and messages nested;
- generated: requests built from parts (people, labels, layout as lines or
  an HTML table, charset, transfer encoding, multipart or not).

The property for both: `parse_report` either raises UnreadableMessage or
returns a valid report (a known outcome, complete people with the four
fields, missing fields named from the four, plain JSON-able data), and every
property of the read message is there to use. Generated requests that keep
to the request format must also give back exactly the people put in,
whatever their encoding.

Each test runs a bounded number of examples with no deadline; the "ci"
profile in conftest.py derandomizes them under CI, so a red run replays.
"""

from __future__ import annotations

import base64
import json
import quopri
import re
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from intake.errors import UnreadableMessage
from intake.extraction import FIELD_NAMES, extract
from intake.reading import ReadMessage, read_message
from intake.report import parse_report
from intake.screening import screen

MESSAGES = Path(__file__).parent / "messages"
SHARED_EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "examples" / "acesso"

SEEDS = [path.read_bytes() for path in sorted(MESSAGES.glob("*.eml"))] + [
    path.read_bytes() for path in sorted(SHARED_EXAMPLES.glob("*.eml"))
]

OUTCOMES = {"request", "incomplete", "ignored"}
ACCESS_TYPES = {"comum", "agente", "admin"}

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Charset names: real, aliased, multibyte, stateful, misspelt, hostile to codecs.
CHARSETS = (
    "utf-8", "UTF8", "uft-8", "iso-8859-1", "latin1", "windows-1252", "cp1252",
    "iso-8859-15", "koi8-r", "windows-1251", "gb2312", "gbk", "big5", "shift_jis",
    "euc-jp", "iso-2022-jp", "ks_c_5601-1987", "utf-7", "utf-16", "utf-16le", "utf-32",
    "us-ascii", "x-unknown", "fakescii", "none", "", "zlib", "rot13", "base64", "idna",
    "punycode", "x-mac-cyrillic", "iso-8859-8-i", "unicode-1-1-utf-7", "a" * 80,
)  # fmt: skip
TRANSFER_ENCODINGS = (
    "7bit", "8bit", "binary", "base64", "quoted-printable", "x-uuencode", "uuencode",
    "x-gzip64", "bogus", "",
)  # fmt: skip
INJECTED = (
    b"\x00", b"\r", b"\n", b"\r\n\r\n", b"\xff\xfe", b"\xc3", b"=?", b"?=", b"<", b">",
    b"--", b"\t", b":", b"\x1b$B", b"\xe2\x80\xae", b"=\r\n", b"begin 644 x\n",
)  # fmt: skip


def assert_valid_report(raw: bytes) -> None:
    """The property: a valid report, or UnreadableMessage and nothing else."""
    try:
        report = parse_report(raw)
    except UnreadableMessage:
        return
    assert report["outcome"] in OUTCOMES
    assert isinstance(report["reason"], str)
    assert set(report["missing"]) <= set(FIELD_NAMES)
    if report["outcome"] == "request":
        assert report["requests"] and not report["missing"]
    for person in report["requests"]:
        assert set(person) == set(FIELD_NAMES)
        assert all(isinstance(person[name], str) and person[name] for name in FIELD_NAMES)
        assert person["access_type"] in ACCESS_TYPES
        assert "@" in person["email"]
    header = report["message"]
    assert all(value is None or isinstance(value, str) for value in header.values())
    json.dumps(report)

    message = read_message(raw)
    assert_usable(message)


def assert_usable(message: ReadMessage) -> None:
    for text in (message.subject, message.from_address, message.from_name, message.text):
        assert isinstance(text, str)
    assert all(isinstance(address, str) for address in message.to)
    assert all(isinstance(reference, str) for reference in message.references)
    for attachment in message.attachments:
        assert isinstance(attachment.text, str)
        assert isinstance(attachment.rows(), list)
    assert isinstance(message.html_text, str)
    _ = (message.message_id, message.in_reply_to, message.date, message.header_names())
    decision = screen(message)
    assert decision.outcome in {"request", "ignored"}
    extraction = extract(message)
    assert set(extraction.missing) <= set(FIELD_NAMES)


# --------------------------------------------------------------------------
# Mutations of real messages


def _header_end(raw: bytes) -> int:
    found = re.search(rb"\r?\n\r?\n", raw)
    return found.start() if found else len(raw)


def _header_lines(raw: bytes) -> list[tuple[int, int]]:
    """(start, end including the line end) of each header line."""
    end = _header_end(raw)
    return [
        (match.start(), match.end())
        for match in re.finditer(rb"[^\r\n]*(?:\r\n|\n)", raw[:end])
        if match.group().strip()
    ]


@st.composite
def mutations(draw: st.DrawFn, raw: bytes) -> bytes:
    kind = draw(
        st.sampled_from(
            [
                "flip", "insert", "cut", "truncate", "duplicate header", "charset",
                "transfer encoding", "encoded word", "line ends", "no blank line",
                "boundary", "nest",
            ]
        )
    )  # fmt: skip
    size = len(raw)
    if kind == "flip" and size:
        at = draw(st.integers(0, size - 1))
        return raw[:at] + bytes([raw[at] ^ draw(st.integers(1, 255))]) + raw[at + 1 :]
    if kind == "insert":
        at = draw(st.integers(0, size))
        chunk = draw(st.one_of(st.sampled_from(INJECTED), st.binary(min_size=1, max_size=40)))
        return raw[:at] + chunk * draw(st.integers(1, 50)) + raw[at:]
    if kind == "cut" and size:
        start = draw(st.integers(0, size - 1))
        return raw[:start] + raw[start + draw(st.integers(1, 200)) :]
    if kind == "truncate":
        return raw[: draw(st.integers(0, size))]
    lines = _header_lines(raw)
    if kind == "duplicate header" and lines:
        start, end = draw(st.sampled_from(lines))
        return raw[:end] + raw[start:end] * draw(st.integers(1, 30)) + raw[end:]
    if kind == "charset":
        charset = draw(st.sampled_from(CHARSETS)).encode()
        if b"charset=" in raw.lower():
            return re.sub(rb'(?i)charset="?[^";\s]*"?', b'charset="' + charset + b'"', raw)
        return raw.replace(b"text/plain", b"text/plain; charset=" + charset, 1)
    if kind == "transfer encoding":
        encoding = draw(st.sampled_from(TRANSFER_ENCODINGS)).encode()
        found = re.sub(rb"(?i)(content-transfer-encoding:)[^\r\n]*", rb"\1 " + encoding, raw)
        if found != raw:
            return found
        return b"Content-Transfer-Encoding: " + encoding + b"\r\n" + raw
    if kind == "encoded word":
        charset = draw(st.sampled_from(CHARSETS))
        payload = draw(st.binary(max_size=60))
        if draw(st.booleans()):
            text = base64.b64encode(payload).decode("ascii")
            word = f"=?{charset}?B?{text[: draw(st.integers(0, len(text)))]}?="
        else:
            word = f"=?{charset}?Q?{quopri.encodestring(payload).decode('ascii')}?="
        field = draw(st.sampled_from([b"Subject", b"From", b"To", b"Content-Type"]))
        line = field + b": " + word.encode("ascii", "replace") + b" #ACESSO\r\n"
        return line + raw
    if kind == "line ends":
        old, new = draw(
            st.sampled_from([(b"\r\n", b"\r"), (b"\n", b"\r\n"), (b"\r\n", b"\n\n"), (b"\n", b"")])
        )
        return raw.replace(old, new)
    if kind == "no blank line":
        end = _header_end(raw)
        return raw[:end] + re.sub(rb"^\r?\n\r?\n", b"\n", raw[end:])
    if kind == "boundary":
        found = re.search(rb'(?i)boundary="?([^";\r\n]+)', raw)
        if found:
            broken = draw(st.sampled_from([b"", b"-", b"x" * 200, found.group(1)[:-1]]))
            return raw[: found.start(1)] + broken + raw[found.end(1) :]
        return raw
    if kind == "nest":
        depth = draw(st.integers(1, 12))
        for level in range(depth):
            raw = (
                b"Content-Type: multipart/mixed; boundary=b%d\r\nSubject: #ACESSO\r\n\r\n"
                b"--b%d\r\nContent-Type: message/rfc822\r\n\r\n%s\r\n--b%d--\r\n"
                % (level, level, raw, level)
            )
        return raw
    return raw


@st.composite
def mutated_messages(draw: st.DrawFn) -> bytes:
    raw = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 4))):
        raw = draw(mutations(raw))
    return raw


@FUZZ
@given(mutated_messages())
@example(b"")
@example(b"Subject: #ACESSO\r\n\r\n")
@example(b"From: =?utf-7?B?Kw?= \r\nContent-Type: text/plain; charset=utf-16\r\n\r\n\xff")
def test_mutated_real_messages_give_a_valid_report(raw: bytes) -> None:
    assert_valid_report(raw)


def test_every_seed_message_gives_a_valid_report() -> None:
    assert len(SEEDS) >= 20
    for raw in SEEDS:
        assert_valid_report(raw)


# --------------------------------------------------------------------------
# Generated requests

FIRST_NAMES = ("Ana", "Bruno", "Célia", "Davi", "Érica", "Fábio", "Glória", "Íris", "João")
LAST_NAMES = ("Lima", "Moreira", "Gonçalves", "Araújo", "Simões", "Tavares", "Brandão")
AREAS = ("Financeiro", "Jurídico", "Unidade Londrina", "CS Sul", "Operações", "Marketing")
ACCESS = {"comum": "Comum", "agente": "Agente", "admin": "Administrador"}
LABELS = {
    "name": ("Nome", "Nome completo", "Name"),
    "email": ("E-mail", "Email", "E-mail corporativo"),
    "area": ("Área", "Setor", "Departamento"),
    "access_type": ("Tipo de acesso", "Perfil", "Acesso"),
}
# Charsets that can write every letter above, and transfer encodings.
BODY_CHARSETS = ("utf-8", "iso-8859-1", "windows-1252", "iso-8859-15")
BODY_ENCODINGS = ("8bit", "quoted-printable", "base64")


@st.composite
def people(draw: st.DrawFn) -> list[dict[str, str]]:
    count = draw(st.integers(1, 4))
    chosen = draw(
        st.lists(
            st.tuples(st.sampled_from(FIRST_NAMES), st.sampled_from(LAST_NAMES)),
            min_size=count,
            max_size=count,
            unique=True,
        )
    )
    found = []
    for number, (first, last) in enumerate(chosen):
        found.append(
            {
                "name": f"{first} {last}",
                "email": f"pessoa{number}@cliente.example.com.br",
                "area": draw(st.sampled_from(AREAS)),
                "access_type": draw(st.sampled_from(sorted(ACCESS))),
            }
        )
    return found


def _encode(text: str, charset: str, encoding: str) -> bytes:
    data = text.encode(charset)
    if encoding == "quoted-printable":
        return quopri.encodestring(data.replace(b"\n", b"\r\n"))
    if encoding == "base64":
        return base64.encodebytes(data)
    return data.replace(b"\n", b"\r\n")


@st.composite
def generated_requests(draw: st.DrawFn) -> tuple[bytes, list[dict[str, str]]]:
    wanted = draw(people())
    layout = draw(st.sampled_from(["lines", "html table", "html lines"]))
    labels = {field: draw(st.sampled_from(options)) for field, options in LABELS.items()}
    greeting = draw(st.sampled_from(["Olá,", "Bom dia!", "Prezados,", ""]))
    closing = draw(st.sampled_from(["Obrigada,\nHelena", "Att.", ""]))

    def written(person: dict[str, str], field: str) -> str:
        return ACCESS[person[field]] if field == "access_type" else person[field]

    if layout == "lines":
        blocks = [
            "\n".join(f"{labels[field]}: {written(person, field)}" for field in FIELD_NAMES)
            for person in wanted
        ]
        body, subtype = f"{greeting}\n\n" + "\n\n".join(blocks) + f"\n\n{closing}\n", "plain"
    else:
        if layout == "html table":
            head = "".join(f"<th>{labels[field]}</th>" for field in FIELD_NAMES)
            rows = "".join(
                "<tr>" + "".join(f"<td>{written(p, f)}</td>" for f in FIELD_NAMES) + "</tr>"
                for p in wanted
            )
            content = f"<table><tr>{head}</tr>{rows}</table>"
        else:
            content = "".join(
                "<p>"
                + "<br>".join(f"<b>{labels[f]}:</b> {written(p, f)}" for f in FIELD_NAMES)
                + "</p>"
                for p in wanted
            )
        body = f"<html><body><p>{greeting}</p>{content}<p>{closing}</p></body></html>"
        subtype = "html"

    charset = draw(st.sampled_from(BODY_CHARSETS))
    encoding = draw(st.sampled_from(BODY_ENCODINGS))
    subject = draw(st.sampled_from(["#ACESSO", "RE: [#acesso] novos usuários", "Fwd: #Acesso"]))
    if draw(st.booleans()):
        subject = "=?utf-8?B?" + base64.b64encode(subject.encode()).decode() + "?="
    else:
        subject = subject.encode("utf-8").decode("latin-1")  # raw 8-bit UTF-8
    part = (
        f"Content-Type: text/{subtype}; charset={charset}\r\n"
        f"Content-Transfer-Encoding: {encoding}\r\n\r\n"
    ).encode() + _encode(body, charset, encoding)
    if draw(st.booleans()):
        part = (
            b"Content-Type: multipart/alternative; boundary=sep\r\n\r\n"
            b"--sep\r\n" + part + b"\r\n--sep--\r\n"
        )
    head = (
        "From: Helena Costa <helena.costa@cliente.example.com.br>\r\n"
        "To: acesso@portaria.test\r\n"
        f"Subject: {subject}\r\n"
        "Date: Mon, 1 Dec 2025 10:00:00 -0300\r\n"
        "Message-ID: <gerado@cliente.example.com.br>\r\n"
        "MIME-Version: 1.0\r\n"
    ).encode("latin-1")
    return head + part, wanted


@FUZZ
@given(generated_requests())
def test_generated_requests_give_back_the_people_put_in(
    case: tuple[bytes, list[dict[str, str]]],
) -> None:
    raw, wanted = case
    report = parse_report(raw)
    assert report["outcome"] == "request", report
    assert report["requests"] == wanted
    assert_valid_report(raw)


@FUZZ
@given(generated_requests(), st.data())
def test_mutated_generated_requests_give_a_valid_report(
    case: tuple[bytes, list[dict[str, str]]], data: st.DataObject
) -> None:
    raw, _ = case
    for _ in range(data.draw(st.integers(1, 3))):
        raw = data.draw(mutations(raw))
    assert_valid_report(raw)
