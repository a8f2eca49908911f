"""Reading: bytes to ReadMessage, with the exact decoded values."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intake.errors import IntakeError, UnreadableMessage
from intake.reading import Attachment, decode_text, html_to_text, read_message

MESSAGES = Path(__file__).parent / "messages"


def fixture(name: str):
    return read_message((MESSAGES / name).read_bytes())


class TestHeaders:
    def test_outlook_windows1252_encoded_words(self) -> None:
        message = fixture("outlook_html_windows1252_qp.eml")
        assert message.subject == "RE: [#ACESSO] Solicitação de acesso – Financeiro"
        assert message.from_address == "rogerio.mendes@example.com.br"
        assert message.from_name == "Rogério Mendes"
        assert message.to == ["suporte@example.com.br"]
        assert message.message_id == (
            "BN8PR12MB330012AB34CD56EF7890@BN8PR12MB3300.namprd12.prod.outlook.com"
        )
        assert message.date == datetime(2025, 11, 25, 12, 2, 9, tzinfo=UTC)

    def test_raw_8bit_windows1252_headers_are_kept(self) -> None:
        message = fixture("windows1252_8bit_raw_headers.eml")
        assert message.subject == "#ACESSO – Solicitação Angélica"
        assert message.from_name == "João Gonçalves"
        assert message.from_address == "joao.goncalves@example.com.br"

    def test_raw_8bit_utf8_headers(self) -> None:
        raw = "From: Zé Ninguém <ze@example.com>\r\nSubject: Ação #ACESSO\r\n\r\nx".encode()
        message = read_message(raw)
        assert message.subject == "Ação #ACESSO"
        assert message.from_name == "Zé Ninguém"

    def test_latin1_encoded_subject_and_name(self) -> None:
        message = fixture("latin1_qp_numbered.eml")
        assert message.subject == "#ACESSO - João Vitor"
        assert message.from_name == "Cláudia Bastos"

    def test_base64_encoded_subject(self) -> None:
        assert fixture("base64_utf8_batch.eml").subject == "#ACESSO em lote – Regional Sul"

    @pytest.mark.parametrize(
        ("encoded", "decoded"),
        [
            # A character split across two encoded words.
            ("=?UTF-8?B?w6k=?= =?UTF-8?B?w6c=?=", "éç"),
            # Whitespace between encoded words goes, around plain text it stays.
            ("=?utf-8?q?Solicita=C3=A7=C3=A3o?= #ACESSO", "Solicitação #ACESSO"),
            ("RE: =?utf-8?q?a?=\r\n =?utf-8?q?b?= c", "RE: ab c"),
            # Mixed charsets, lower-case encodings, missing padding, glued words.
            ("=?iso-8859-1?q?Jo=E3o?= e =?windows-1252?Q?=93Ana=94?=", "João e “Ana”"),
            ("=?utf-8?b?I0FDRVNTTw?=", "#ACESSO"),
            ("Re:=?utf-8?Q?_#ACESSO?=", "Re: #ACESSO"),
            # Spaces inside an encoded word (a broken encoder).
            ("=?us-ascii?Q?ABC / 123?=", "ABC / 123"),
            # Unknown charsets fall back to UTF-8, then cp1252.
            ("=?x-unknown?Q?Ol=C3=A1?=", "Olá"),
            ("=?none?Q?Ol=E1?=", "Olá"),
            # Not an encoded word at all.
            ("=?utf-8?x?abc?=", "=?utf-8?x?abc?="),
        ],
    )
    def test_encoded_word_variants(self, encoded: str, decoded: str) -> None:
        raw = f"From: a@example.com\r\nSubject: {encoded}\r\n\r\nbody".encode()
        assert read_message(raw).subject == decoded

    def test_header_lookup_is_case_insensitive_and_keeps_order(self) -> None:
        raw = (
            b"Received: first\r\nreceived: second\r\nFrom: a@example.com\r\n"
            b"X-Note: =?utf-8?q?n=C3=A3o?=\r\n\r\nbody"
        )
        message = read_message(raw)
        assert message.headers("RECEIVED") == ["first", "second"]
        assert message.header("x-note") == "não"
        assert message.header("X-Absent") is None
        assert message.headers("X-Absent") == []

    def test_folded_header_is_unfolded(self) -> None:
        raw = b"From: a@example.com\r\nSubject: one\r\n\ttwo\r\n  three\r\n\r\nbody"
        # A header is one line: the tab of the fold becomes a space.
        assert read_message(raw).subject == "one two  three"

    def test_references_and_reply_ids_without_brackets(self) -> None:
        message = fixture("gmail_forward.eml")
        assert message.in_reply_to == "CAJx9k2Lrob3rta+Q@mail.gmail.com"
        assert message.references == ["CAJx9k2Lrob3rta+Q@mail.gmail.com"]
        assert message.message_id == "CAH7sWfwd0001+andre@mail.gmail.com"

    @pytest.mark.parametrize(
        ("header", "address", "name"),
        [
            (
                '"Costa, Helena" <Helena.Costa@Example.com.br>',
                "helena.costa@example.com.br",
                "Costa, Helena",
            ),
            (
                "helena.costa@example.com.br (Helena Costa)",
                "helena.costa@example.com.br",
                "Helena Costa",
            ),
            (
                "Helena Costa helena.costa@example.com.br",
                "helena.costa@example.com.br",
                "Helena Costa",
            ),
            ("=?utf-8?q?Jo=C3=A3o?= <joao@example.com>", "joao@example.com", "João"),
            ("MAILER-DAEMON (Mail Delivery System)", "mailer-daemon", "Mail Delivery System"),
            ('"Sem endereço" <>, Ana <ana@example.com>', "ana@example.com", "Ana"),
        ],
    )
    def test_from_forms(self, header: str, address: str, name: str) -> None:
        raw = f"From: {header}\r\nSubject: x\r\n\r\nbody".encode()
        message = read_message(raw)
        assert (message.from_address, message.from_name) == (address, name)

    def test_from_falls_back_to_reply_to(self) -> None:
        raw = b"Reply-To: <ana@example.com>\r\nSubject: x\r\n\r\nbody"
        assert read_message(raw).from_address == "ana@example.com"

    def test_sha256_and_raw(self) -> None:
        raw = b"From: a@example.com\r\nSubject: x\r\n\r\nbody"
        message = read_message(raw)
        assert message.raw == raw
        assert message.sha256 == hashlib.sha256(raw).hexdigest()
        assert len(message.sha256) == 64

    def test_broken_fold_inside_header_block_is_a_continuation(self) -> None:
        raw = (
            b"Received: from a by b;\r\nQWJDZGVmZ2hpamts\r\nby relay with SMTP\r\n"
            b"From: Ana <ana@example.com>\r\nSubject: #ACESSO\r\n\r\nNome: Ana\r\n"
        )
        message = read_message(raw)
        assert (message.from_address, message.subject) == ("ana@example.com", "#ACESSO")
        assert message.text == "Nome: Ana\n"

    def test_parameter_on_an_unindented_line_is_kept(self) -> None:
        raw = (
            b"From: ana@example.com\nSubject: #ACESSO\n"
            b'Content-Type: multipart/alternative;\nboundary="b1"\nMIME-Version: 1.0\n\n'
            b"--b1\nContent-Type: text/plain; charset=utf-8\n\nNome: Ana\n--b1--\n"
        )
        assert read_message(raw).text == "Nome: Ana"

    def test_body_without_blank_line_after_headers(self) -> None:
        raw = b"From: ana@example.com\nSubject: #ACESSO\nOla,\nNome: Ana\n"
        message = read_message(raw)
        assert message.subject == "#ACESSO"
        assert message.text == "Ola,\nNome: Ana\n"

    def test_date_with_offset_and_bad_date(self) -> None:
        message = fixture("latin1_qp_numbered.eml")
        assert message.date == datetime(
            2025, 11, 28, 10, 20, 29, tzinfo=timezone(-timedelta(hours=3))
        )
        assert read_message(b"From: a@example.com\r\nDate: someday\r\n\r\nx").date is None


class TestBody:
    def test_latin1_quoted_printable_text(self) -> None:
        text = fixture("latin1_qp_numbered.eml").text
        assert "1. Nome da pessoa: João Vitor Conceição\n" in text
        assert "3. Área (Unidade, área, segmento): Unidade São José dos Campos\n" in text

    def test_windows1252_8bit_text(self) -> None:
        text = fixture("windows1252_8bit_raw_headers.eml").text
        assert "Nome: Angélica Müller; E-mail: angelica.muller@example.com.br;" in text
        assert "Área: Logística – Expedição; Acesso: Comum" in text

    def test_undeclared_latin1_body_keeps_accents(self) -> None:
        raw = b"From: a@example.com\r\nSubject: x\r\n\r\nRegi\xe3o: S\xe3o Paulo\r\n"
        assert read_message(raw).text == "Região: São Paulo\n"

    def test_html_only_message_becomes_text(self) -> None:
        message = fixture("outlook_html_windows1252_qp.eml")
        assert message.plain == ""
        assert message.text == message.html_text
        lines = message.text.split("\n")
        assert "Nome: Luísa França Araújo" in lines
        assert "E-mail: Luisa.Araujo@example.com.br" in lines
        assert "Área: Financeiro – Contas a Pagar" in lines
        assert "Gerente de Operações | “Sempre perto do cliente”" in lines
        assert "Font Definitions" not in message.text

    def test_plain_stub_is_replaced_by_html(self) -> None:
        message = fixture("plain_stub_html.eml")
        assert message.plain.startswith("Esta mensagem está em HTML.")
        assert message.text == (
            "Nome: Antônio Freitas\n\nE-mail: antonio.freitas@example.com.br\n\n"
            "Área: Frota\n\nTipo de acesso: Comum"
        )

    def test_plain_part_wins_when_it_has_content(self) -> None:
        message = fixture("gmail_forward.eml")
        assert message.text == message.plain
        assert message.text.startswith("Pode criar, por favor? Já aprovei.\n")
        assert "<div" in message.html

    def test_csv_attachment_in_latin1_with_semicolons(self) -> None:
        message = fixture("csv_latin1_semicolon.eml")
        assert [(a.filename, a.content_type) for a in message.attachments] == [
            ("usuarios.csv", "text/csv")
        ]
        attachment = message.attachments[0]
        assert attachment.is_csv
        assert attachment.rows() == [
            ["Nome", "E-mail", "Área", "Unidade"],
            ["Sérgio Araújo", "sergio.araujo@example.com.br", "Cobrança", "Belém"],
            ["Mônica Lacerda", "monica.lacerda@example.com.br", "Cobrança", "Manaus"],
        ]

    def test_csv_attachment_in_utf8_with_bom_and_commas(self) -> None:
        attachment = fixture("csv_utf8_comma_english.eml").attachments[0]
        assert attachment.filename == "new_hires.csv"
        assert attachment.rows()[0] == ["Full name", "Email", "Department", "Access type"]
        assert attachment.rows()[2] == [
            "Nakamura, Aiko",
            "aiko.nakamura@example.com",
            "Customer Success",
            "Viewer",
        ]

    def test_attached_message_payload(self) -> None:
        message = fixture("forward_as_attachment.eml")
        attached = [a for a in message.attachments if a.content_type == "message/rfc822"]
        assert len(attached) == 1
        inner = read_message(attached[0].payload)
        assert inner.from_address == "sandra.reis@example.com.br"
        assert "Nome: Otávio Bastos" in inner.text

    def test_non_csv_attachment_has_no_rows(self) -> None:
        assert Attachment("a.pdf", "application/pdf", b"%PDF").rows() == []

    def test_mbox_from_line_and_cr_only_line_endings(self) -> None:
        raw = (
            b"From ana@example.com Mon Dec  1 10:00:00 2025\r"
            b"From: ana@example.com\rSubject: x\r\rbody"
        )
        message = read_message(raw)
        assert (message.from_address, message.subject, message.text) == (
            "ana@example.com",
            "x",
            "body",
        )


class TestHtmlToText:
    def test_paragraphs_breaks_and_entities(self) -> None:
        assert html_to_text("<p>a &amp; b</p><p>c<br>d&nbsp;e</p>") == "a & b\n\nc\nd e"

    def test_table_cells_are_tab_separated_rows(self) -> None:
        document = (
            "<table><tr><th>Nome</th><th>E-mail</th></tr>"
            "<tr><td><p>Ana</p></td><td>ana@example.com</td></tr></table>"
        )
        assert html_to_text(document) == "Nome\tE-mail\nAna\tana@example.com"

    def test_layout_table_with_multiline_cell_keeps_lines(self) -> None:
        document = "<table><tr><td><p>Nome: Ana</p><p>Área: TI</p></td></tr></table>"
        assert html_to_text(document) == "Nome: Ana\n\nÁrea: TI"

    def test_blockquote_lines_are_quoted(self) -> None:
        assert html_to_text("new<blockquote>old<br>older</blockquote>") == ("new\n> old\n> older")

    def test_scripts_styles_comments_and_checkboxes(self) -> None:
        document = (
            "<style>p{}</style><script>x()</script><!-- hidden --><p>"
            '<input type="checkbox" checked> Agente <input type=checkbox> Admin</p>'
        )
        assert html_to_text(document) == "[x] Agente [ ] Admin"

    def test_unclosed_tags_and_stray_brackets(self) -> None:
        assert html_to_text("<div>a < b<table><tr><td>x") == "a < b\nx"


class TestUnreadable:
    @pytest.mark.parametrize(
        "raw",
        [
            b"",
            b"   \r\n\r\n",
            b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
            b"Lorem ipsum dolor sit amet.\nNo headers here.\n",
            b"Nome;E-mail\nAna;ana@example.com\n",
        ],
    )
    def test_not_a_message(self, raw: bytes) -> None:
        with pytest.raises(UnreadableMessage) as raised:
            read_message(raw)
        assert isinstance(raised.value, IntakeError)
        assert raised.value.reason in (
            "mensagem vazia (empty message)",
            "sem cabeçalho de mensagem (no message header block)",
        )

    def test_headers_only_message_is_readable(self) -> None:
        message = read_message(b"Subject: only headers\r\n")
        assert message.subject == "only headers"
        assert message.text == ""
        assert message.attachments == []


@pytest.mark.parametrize(
    ("data", "charset", "text"),
    [
        (b"S\xe3o", "iso-8859-1", "São"),
        (b"\x93x\x94", "iso-8859-1", "“x”"),
        (b"S\xc3\xa3o", None, "São"),
        (b"S\xe3o", None, "São"),
        (b"S\xe3o", "utf-8", "São"),
        (b"\x81", None, "\x81"),
        (b"abc", "no-such-charset", "abc"),
    ],
)
def test_decode_text_never_drops_bytes(data: bytes, charset: str | None, text: str) -> None:
    assert decode_text(data, charset) == text


class TestHostileInput:
    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=3000))
    def test_arbitrary_bytes_are_read_or_unreadable(self, data: bytes) -> None:
        try:
            message = read_message(data)
        except UnreadableMessage:
            return
        assert isinstance(message.subject, str)
        assert isinstance(message.from_address, str)
        assert isinstance(message.text, str)
        assert isinstance(message.attachments, list)

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["From", "To", "Subject", "Content-Type", "Date", "X-A"]),
                st.text(st.characters(exclude_characters="\r\n"), max_size=80),
            ),
            max_size=8,
        ),
        st.text(max_size=500),
    )
    def test_arbitrary_header_values_and_bodies(
        self, fields: list[tuple[str, str]], body: str
    ) -> None:
        head = "".join(f"{name}: {value}\r\n" for name, value in fields)
        raw = (head + "Message-ID: <x@y>\r\n\r\n" + body).encode("utf-8", "surrogatepass")
        message = read_message(raw)
        assert isinstance(message.subject, str)
        assert isinstance(message.text, str)

    @pytest.mark.parametrize(
        "raw",
        [
            b"From: " + b"a:" * 100_000 + b"\r\nSubject: x\r\n\r\nx",
            b"From: " + b"a@b.c, " * 100_000 + b"\r\nSubject: x\r\n\r\nx",
            b"From: " + b"(" * 100_000 + b"\r\nSubject: x\r\n\r\nx",
            b"From: a@b.c\r\nSubject: " + b"=?utf-8?q?a?= " * 100_000 + b"\r\n\r\nx",
            b"From: a@b.c\r\nSubject: " + b"=?utf-8?q?a" * 100_000 + b"\r\n\r\nx",
            b"From: a@b.c\r\n" + b"junk\r\n" * 100_000 + b"Subject: x\r\n\r\nx",
            b"From: a@b.c\r\nContent-Type: text/html\r\n\r\n" + b"<" * 200_000 + b">",
            b"From: a@b.c\r\nContent-Type: text/html\r\n\r\n" + b"<title>" * 100_000,
            b"From: a@b.c\r\nContent-Type: text/html\r\n\r\n" + b"<table><tr><td>" * 20_000,
            b"From: a@b.c\r\nContent-Type: text/html\r\n\r\n" + b"<blockquote>" * 20_000,
        ],
        ids=[
            "group-colons",
            "many-addresses",
            "open-comments",
            "encoded-words",
            "unterminated-encoded-words",
            "junk-lines",
            "lone-brackets",
            "unclosed-titles",
            "nested-tables",
            "nested-quotes",
        ],
    )
    def test_hostile_messages_are_read_in_linear_time(self, raw: bytes) -> None:
        started = time.perf_counter()
        message = read_message(raw)
        _ = (message.subject, message.from_address, message.to, message.text)
        assert time.perf_counter() - started < 3
