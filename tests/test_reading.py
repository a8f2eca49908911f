"""Reading: bytes to ReadMessage, with the exact decoded values."""

from __future__ import annotations

import hashlib
import logging
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intake.errors import IntakeError, UnreadableMessage
from intake.extraction import FIELD_NAMES, extract
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
            b"From: a@b.c\r\nContent-Type: text/html\r\n\r\n"
            + b'<div style="display:none">' * 50_000,
            b"From: a@b.c\r\nContent-Type: text/html\r\n\r\n"
            + b'<table><tr><td><div><b style="display:none"></div></td></tr></table>' * 10_000,
            b"From: a@b.c\r\nContent-Type: text/html\r\n\r\n"
            + b"<span>" * 20_000
            + b"<div>" * 20_000
            + b"</span>" * 20_000,
            b"From: a@b.c\r\nContent-Type: text/html\r\n\r\n" + b'<a b="' * 100_000,
            b"From: a@b.c\r\nContent-Type: text/html\r\n\r\n"
            + b'<div style="'
            + b"/*" * 100_000
            + b'">x',
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
            "nested-hidden",
            "reopened-hidden",
            "end-tags-blocked-by-blocks",
            "unclosed-quotes",
            "unclosed-css-comments",
        ],
    )
    def test_hostile_messages_are_read_in_linear_time(self, raw: bytes) -> None:
        started = time.perf_counter()
        message = read_message(raw)
        _ = (message.subject, message.from_address, message.to, message.text)
        assert time.perf_counter() - started < 3


def html_message(document: str, plain: str | None = None) -> bytes:
    """A #ACESSO message with an HTML part, and a plain part first when given."""
    head = "From: Helena <helena@cliente.test>\r\nSubject: #ACESSO\r\nMIME-Version: 1.0\r\n"
    html_part = f"Content-Type: text/html; charset=utf-8\r\n\r\n{document}\r\n"
    if plain is None:
        return (head + html_part).encode()
    return (
        head + 'Content-Type: multipart/alternative; boundary="alt"\r\n\r\n'
        f"--alt\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{plain}\r\n"
        f"--alt\r\n{html_part}--alt--\r\n"
    ).encode()


HIDDEN_PERSON = (
    "Nome: Html Oculto<br>E-mail: html.oculto@evil.test<br>Área: TI<br>Tipo de acesso: Comum"
)


class TestHiddenHtmlIsNotRead:
    def test_hidden_person_block_is_neither_text_nor_a_person(self) -> None:
        document = (
            f'<p>Olá, segue o pedido.</p><div style="display:none">{HIDDEN_PERSON}</div>'
            "<p>Obrigada</p>"
        )
        message = read_message(html_message(document))
        assert message.text == "Olá, segue o pedido.\n\nObrigada"
        extraction = extract(message)
        assert [(p.name, p.email, p.area, p.access_type) for p in extraction.people] == [
            (None, None, None, None)
        ]
        assert extraction.missing == list(FIELD_NAMES)

    @pytest.mark.parametrize(
        "opening",
        [
            '<div style="display:none">',
            '<div style="DISPLAY : None !important">',
            "<div style='color:red;display:\tnone'>",
            "<div style=display:none>",
            '<div style="display:&#110;one">',  # entities are decoded in attributes
            '<div style="disp\\6c ay:none">',  # and CSS escapes in styles
            '<div style="display:none !important; display:block">',
            "<div hidden>",
            '<div HIDDEN="hidden">',
            '<div hidden="until-found" style="display:block">',
            '<div hidden style="display:blok">',  # an invalid display does not show it
            '<div style="visibility:hidden">',
            '<div style="visibility: collapse">',
            '<div style="opacity:0">',
            '<div style="opacity:0.05">',
            '<div style="opacity:0%">',
            '<div style="font-size:0">',
            '<div style="font-size:1px">',
            '<div style="font-size:0.05em">',
            '<div style="color:transparent">',
            '<div style="color:rgba(0, 0, 0, 0)">',
            '<div style="color:rgb(0 0 0 / 0%)">',
            '<div style="color:#fff0">',
            '<div style="-webkit-text-fill-color:transparent">',
            '<div style="display:var(--shown)">',  # cannot be evaluated: not read
            '<div style="font-size:calc(0px)">',
            '<div title=">" style="display:none">',  # ">" inside a quoted value
        ],
    )
    def test_hiding_styles_and_attributes(self, opening: str) -> None:
        document = f"<p>antes</p>{opening}Nome: Oculto<p>E-mail: o@evil.test</p></div>depois"
        assert html_to_text(document) == "antes\n\ndepois"

    @pytest.mark.parametrize(
        "opening",
        [
            '<div aria-hidden="true">',  # only for screen readers: people see it
            '<div hidden style="display:block">',  # its own style shows it
            '<div style="display:no/**/ne">',  # a comment splits the word: invalid
            '<div style="display:block" style="display:none">',  # the first one counts
            '<div style="opacity:0.5">',
            '<div style="font-size:8pt">',
            '<div style="color:#ffffff">',  # same as the background: not detected
            '<div style="overflow:hidden">',
            '<div style="mso-hide:all">',  # Outlook only; other mail clients show it
        ],
    )
    def test_visible_styles(self, opening: str) -> None:
        document = f"<p>antes</p>{opening}Nome: Visível</div>depois"
        assert html_to_text(document) == "antes\n\nNome: Visível\ndepois"

    @pytest.mark.parametrize(
        ("document", "text"),
        [
            # What a descendant shows again of an inherited style.
            (
                '<div style="visibility:hidden">x<span style="visibility:visible">vê</span></div>',
                "vê",
            ),
            (
                '<table><tr><td style="font-size:0">x<span style="font-size:14px">vê</span>'
                "</td></tr></table>",
                "vê",
            ),
            ('<div style="color:transparent">x<span style="color:#333">vê</span></div>', "vê"),
            ('<div style="color:transparent"><span style="color:#12345">y</span></div>', ""),
            ('<div style="font-size:0">x<span style="font-size:2em">y</span></div>', ""),
            ('<div style="display:none">x<span style="display:block">y</span></div>', ""),
            ('<div style="opacity:0">x<span style="opacity:1">y</span></div>', ""),
            # Void elements never open a hidden region (hidden, they break no line).
            ("<br hidden>a<img style='display:none'>b<hr hidden>c<br>d", "abc\nd"),
            (
                "<input type=checkbox checked hidden>Agente <input type=checkbox>Admin",
                "Agente [ ] Admin",
            ),
            # A hidden element left open ends where its parent ends.
            ('<div><span style="display:none">x</div>vê', "vê"),
            ("<table><tr><td><div hidden>x</td><td>vê</td></tr></table>", "\tvê"),
            ("<table><tr><td hidden>x<td>vê</table>depois", "vê\ndepois"),
            ("<table><tr hidden><td>x<tr><td>vê</table>", "vê"),
            ("<p hidden>x<p>vê", "vê"),
            ("<p hidden>x<div>vê</div>", "vê"),
            ("<ul><li hidden>x<li>vê</ul>", "- vê"),
            ("<h2 hidden>x</h3>vê", "vê"),
            ("<div hidden><b>x</div>vê", "vê"),
            # An end tag that does not close the hidden element in a browser.
            ("<span><div hidden>x</span>y", ""),
            ("<td><div hidden>x</td>y", ""),  # no table: browsers drop the cell tags
            ("<div.x hidden>x</div>y", ""),  # "div.x" is no div
            ("<div hidden><table><tr><td>x</div>y</td></tr></table>z", ""),
            ('<div style="display:none"/>x</div>vê', "vê"),  # "/>" closes no div
            # A hidden formatting element closed early is reopened around later text.
            ("<div><b hidden>x</div>y</b>vê", "vê"),
            ("<p><font style='font-size:0'>x</p>y<table><tr><td>vê</td></tr></table>", "vê"),
            # A hidden body hides everything; unclosed raw-text elements run to the end.
            ("antes<body style='display:none'><p>x", ""),
            ("<p>vê</p><title>x", "vê"),
            ("<p>vê</p><iframe>x", "vê"),
            ("<p>vê</p><div hidden", "vê"),  # a tag cut off by the end shows nothing
        ],
    )
    def test_where_hidden_regions_end(self, document: str, text: str) -> None:
        assert html_to_text(document) == text

    def test_hidden_html_does_not_replace_a_plain_stub(self) -> None:
        document = f'<p>Pedido em anexo.</p><div style="display:none">{HIDDEN_PERSON}</div>'
        message = read_message(html_message(document, plain="Esta mensagem está em HTML."))
        assert message.text == "Pedido em anexo."
        assert [p.name for p in extract(message).people] == [None]

    def test_hidden_html_does_not_win_over_an_incomplete_plain_part(self) -> None:
        plain = "Nome: Ana Lima\nE-mail: ana.lima@cliente.test"
        document = (
            "<p>Nome: Ana Lima<br>E-mail: ana.lima@cliente.test</p>"
            f'<div style="font-size:0">{HIDDEN_PERSON}</div>'
        )
        message = read_message(html_message(document, plain=plain))
        assert message.text == plain
        assert message.html_text == "Nome: Ana Lima\nE-mail: ana.lima@cliente.test"
        extraction = extract(message)
        assert [(p.name, p.email, p.area, p.access_type) for p in extraction.people] == [
            ("Ana Lima", "ana.lima@cliente.test", None, None)
        ]
        assert extraction.missing == ["area", "access_type"]


def mime_message(content_type: str, body: str) -> bytes:
    return (
        "From: Helena <helena@cliente.test>\r\nSubject: #ACESSO\r\n"
        f"Message-ID: <m1@cliente.test>\r\nMIME-Version: 1.0\r\nContent-Type: {content_type}"
        f"\r\n\r\n{body}"
    ).encode()


PERSON_BLOCK = (
    "Nome: Ana Lima\r\nE-mail: ana.lima@cliente.test\r\nÁrea: TI\r\nTipo de acesso: Comum\r\n"
)
PERSON_TEXT = PERSON_BLOCK.replace("\r\n", "\n")


class TestMultipartWithoutBoundary:
    @pytest.mark.parametrize(
        "content_type",
        [
            "multipart/mixed",
            "multipart/alternative; charset=utf-8",
            "Multipart/Related",
            'multipart/mixed; boundary="never-comes"',
        ],
    )
    def test_body_is_read_as_plain_text(self, content_type: str) -> None:
        message = read_message(mime_message(content_type, PERSON_BLOCK))
        assert (message.plain, message.text, message.html) == (PERSON_TEXT, PERSON_TEXT, "")
        assert message.body_error is None
        extraction = extract(message)
        assert [(p.name, p.email, p.area, p.access_type) for p in extraction.people] == [
            ("Ana Lima", "ana.lima@cliente.test", "TI", "comum")
        ]
        assert extraction.missing == []

    def test_inner_multipart_without_boundary_is_read_in_order(self) -> None:
        body = (
            "--b\r\nContent-Type: text/plain\r\n\r\nSegue o pedido:\r\n"
            f"--b\r\nContent-Type: multipart/alternative\r\n\r\n{PERSON_BLOCK}"
            "--b\r\nContent-Type: text/plain\r\n\r\nObrigada\r\n--b--\r\n"
        )
        message = read_message(mime_message('multipart/mixed; boundary="b"', body))
        assert message.text == f"Segue o pedido:\n\n{PERSON_TEXT}\n\nObrigada"

    def test_unknown_text_type_alone_is_read_as_plain_text(self) -> None:
        message = read_message(mime_message("text/x-pedido; charset=utf-8", PERSON_BLOCK))
        assert message.text == PERSON_TEXT

    @pytest.mark.parametrize(
        ("content_type", "body"),
        [
            ("application/pdf", "JVBERi0xLjQKJcOkw7zDtsOfCg==\r\n"),
            ("application/octet-stream", "\x00\x01\x02 bytes\r\n"),
            ("image/png", "iVBORw0KGgoAAAANSUhEUg==\r\n"),
            ("text/calendar", "BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n"),
            ("text/csv", "Nome;E-mail\r\nAna;ana@cliente.test\r\n"),
        ],
    )
    def test_a_single_part_that_is_no_message_text_is_not_read(
        self, content_type: str, body: str
    ) -> None:
        message = read_message(mime_message(content_type, body))
        assert (message.plain, message.html, message.text) == ("", "", "")
        assert message.attachments == []

    def test_attachments_only_message_has_no_text(self) -> None:
        body = (
            '--b\r\nContent-Type: application/pdf; name="a.pdf"\r\n'
            'Content-Disposition: attachment; filename="a.pdf"\r\n'
            "Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n"
            '--b\r\nContent-Type: text/plain; name="notas.txt"\r\n'
            'Content-Disposition: attachment; filename="notas.txt"\r\n\r\n'
            f"{PERSON_BLOCK}--b--\r\n"
        )
        message = read_message(mime_message('multipart/mixed; boundary="b"', body))
        assert message.text == ""
        assert [(a.filename, a.content_type) for a in message.attachments] == [
            ("a.pdf", "application/pdf"),
            ("notas.txt", "text/plain"),
        ]
        assert message.attachments[0].payload == b"%PDF-1.4\n"


# mail-parser raises on this one (a nested multipart whose boundary never comes,
# in an outer one never closed); the body is then read part by part.
MAIL_PARSER_FAILS = (
    "--b\r\nContent-Type: text/plain\r\n\r\nNome: Ana Lima\r\n"
    '--b\r\nContent-Type: message/rfc822; name="original.eml"\r\n\r\n'
    "From: outra@cliente.test\r\nSubject: antiga\r\n\r\nNome: Pessoa Anexada\r\n"
    '--b\r\nContent-Type: multipart/alternative; boundary="never"\r\n\r\n'
    "E-mail: ana.lima@cliente.test\r\n"
)


class TestBodyReadPartByPart:
    def test_read_when_mail_parser_fails_and_logged_as_info(self, caplog) -> None:
        caplog.set_level(logging.DEBUG, logger="intake.reading")
        message = read_message(mime_message('multipart/mixed; boundary="b"', MAIL_PARSER_FAILS))
        assert message.text == "Nome: Ana Lima\n\nE-mail: ana.lima@cliente.test\n"
        assert message.body_error is None
        # The attached message is an attachment, and none of its text is body text.
        assert [(a.filename, a.content_type) for a in message.attachments] == [
            ("original.eml", "message/rfc822")
        ]
        assert read_message(message.attachments[0].payload).text == "Nome: Pessoa Anexada"
        records = [
            (r.levelno, r.getMessage()) for r in caplog.records if r.levelno > logging.DEBUG
        ]
        assert records == [
            (logging.INFO, "m1@cliente.test: body read part by part, without mail-parser")
        ]
        details = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
        assert (
            "m1@cliente.test: mail-parser failed "
            "(AttributeError: 'NoneType' object has no attribute 'index')"
        ) in details
