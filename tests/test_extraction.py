"""Extraction and the parse report: one test per shape of request, with exact fields."""

from __future__ import annotations

import time
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intake.errors import UnreadableMessage
from intake.extraction import (
    FIELD_NAMES,
    Extraction,
    Person,
    extract,
    parse_access_type,
    parse_email,
)
from intake.reading import ReadMessage, read_message
from intake.report import format_report, parse_report

MESSAGES = Path(__file__).parent / "messages"
SENDER = "Helena Costa <helena.costa@example.com.br>"


def fixture(name: str) -> ReadMessage:
    return read_message((MESSAGES / name).read_bytes())


def plain(body: str, *, sender: str = SENDER, subject: str = "#ACESSO") -> ReadMessage:
    head = (
        f"From: {sender}\r\nTo: suporte@example.com.br\r\nSubject: {subject}\r\n"
        "Message-ID: <test@example.com.br>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    )
    return read_message(head.encode("ascii") + body.replace("\n", "\r\n").encode("utf-8"))


def html(document: str, *, sender: str = SENDER) -> ReadMessage:
    head = (
        f"From: {sender}\r\nTo: suporte@example.com.br\r\nSubject: #ACESSO\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
    )
    return read_message(head.encode("ascii") + document.encode("utf-8"))


def people(extraction: Extraction) -> list[tuple[str | None, ...]]:
    return [(p.name, p.email, p.area, p.access_type) for p in extraction.people]


class TestLabels:
    def test_portuguese_labels(self) -> None:
        message = plain(
            "Olá,\n\nNome: Marcelo Antunes\nE-mail: marcelo.antunes@example.com.br\n"
            "Área: Unidade Sorocaba\nTipo de acesso: Comum\n\nObrigada!\nHelena\n"
        )
        assert people(extract(message)) == [
            ("Marcelo Antunes", "marcelo.antunes@example.com.br", "Unidade Sorocaba", "comum")
        ]

    def test_english_labels(self) -> None:
        message = plain(
            "Hi,\n\nFull name: Grace Whitfield\nEmail address: grace.whitfield@example.com\n"
            "Department: Partner Success\nAccess type: viewer\n\nThanks,\nHelena\n"
        )
        assert people(extract(message)) == [
            ("Grace Whitfield", "grace.whitfield@example.com", "Partner Success", "comum")
        ]

    @pytest.mark.parametrize(
        ("name_label", "email_label", "area_label", "access_label"),
        [
            ("Nome completo", "E-mail corporativo", "Setor", "Perfil"),
            ("Nome da pessoa", "E-mail da pessoa", "Departamento", "Acesso"),
            ("Name", "Email", "Unit", "Access"),
            ("Colaborador", "Endereço de e-mail", "Team", "Role"),
            ("NOME DO USUÁRIO", "EMAIL", "SEGMENTO", "NÍVEL DE ACESSO"),
        ],
    )
    def test_label_synonyms(
        self, name_label: str, email_label: str, area_label: str, access_label: str
    ) -> None:
        message = plain(
            f"{name_label}: Ana Paula Lins\n{email_label}: ana.lins@example.com.br\n"
            f"{area_label}: Cobrança\n{access_label}: Agente\n"
        )
        assert people(extract(message)) == [
            ("Ana Paula Lins", "ana.lins@example.com.br", "Cobrança", "agente")
        ]

    def test_parenthesised_hints_and_numbered_list_in_latin1(self) -> None:
        assert people(extract(fixture("latin1_qp_numbered.eml"))) == [
            (
                "João Vitor Conceição",
                "joao.conceicao@example.com.br",
                "Unidade São José dos Campos",
                "comum",
            )
        ]

    def test_bold_and_markdown_labels(self) -> None:
        assert people(extract(fixture("markdown_labels.eml"))) == [
            ("Rafaela Guimarães", "rafaela.guimaraes@example.com.br", "Tesouraria", "admin")
        ]

    def test_label_with_value_on_next_line(self) -> None:
        message = plain(
            "Nome:\nIsadora Leal\n\nE-mail:\nisadora.leal@example.com.br\n"
            "Área:\nRH\nTipo de acesso:\nAdmin\n"
        )
        assert people(extract(message)) == [
            ("Isadora Leal", "isadora.leal@example.com.br", "RH", "admin")
        ]

    def test_dash_separated_labels(self) -> None:
        message = plain(
            "Nome - Otto Brandt\nE-mail - otto.brandt@example.com.br\n"
            "Área – Engenharia\nPerfil – Comum\n"
        )
        assert people(extract(message)) == [
            ("Otto Brandt", "otto.brandt@example.com.br", "Engenharia", "comum")
        ]


class TestHtml:
    def test_outlook_paragraphs_windows1252(self) -> None:
        assert people(extract(fixture("outlook_html_windows1252_qp.eml"))) == [
            (
                "Luísa França Araújo",
                "luisa.araujo@example.com.br",
                "Financeiro – Contas a Pagar",
                "agente",
            )
        ]

    def test_table_of_label_value_rows(self) -> None:
        assert people(extract(fixture("outlook_table_label_value.eml"))) == [
            ("Carla Dias Pereira", "carla.pereira@example.com.br", "Campinas / Varejo", "comum")
        ]

    def test_table_with_header_row_one_person_per_row(self) -> None:
        assert people(extract(fixture("html_table_header_rows.eml"))) == [
            ("Tiago Almeida", "tiago.almeida@example.com.br", "Unidade Recife", "agente"),
            ("Beatriz Nunes", "beatriz.nunes@example.com.br", "Unidade Recife", "comum"),
            (
                "José Carlos Ribeiro",
                "jose.ribeiro@example.com.br",
                "Unidade Recife / Backoffice",
                "admin",
            ),
        ]

    def test_table_with_one_person_per_column(self) -> None:
        message = html(
            "<table><tr><td>Nome</td><td>Caio Lopes</td><td>Dora Lima</td></tr>"
            "<tr><td>E-mail</td><td>caio.lopes@example.com.br</td>"
            "<td>dora.lima@example.com.br</td></tr>"
            "<tr><td>Área</td><td>Fiscal</td><td>Contábil</td></tr>"
            "<tr><td>Acesso</td><td>Comum</td><td>Agente</td></tr></table>"
        )
        assert people(extract(message)) == [
            ("Caio Lopes", "caio.lopes@example.com.br", "Fiscal", "comum"),
            ("Dora Lima", "dora.lima@example.com.br", "Contábil", "agente"),
        ]

    def test_plain_stub_uses_html(self) -> None:
        assert people(extract(fixture("plain_stub_html.eml"))) == [
            ("Antônio Freitas", "antonio.freitas@example.com.br", "Frota", "comum")
        ]


class TestOneLineAndBatches:
    def test_fields_separated_by_semicolons(self) -> None:
        assert people(extract(fixture("windows1252_8bit_raw_headers.eml"))) == [
            ("Angélica Müller", "angelica.muller@example.com.br", "Logística – Expedição", "comum")
        ]

    def test_fields_separated_by_commas_and_pipes(self) -> None:
        message = plain(
            "Nome: Vitor Hugo, E-mail: vitor.hugo@example.com.br, Área: Vendas, Perfil: Agente\n"
            "Nome: Ada Reis | E-mail: ada.reis@example.com.br | Área: Vendas | Perfil: Comum\n"
        )
        assert people(extract(message)) == [
            ("Vitor Hugo", "vitor.hugo@example.com.br", "Vendas", "agente"),
            ("Ada Reis", "ada.reis@example.com.br", "Vendas", "comum"),
        ]

    def test_several_labels_on_one_line_without_separators(self) -> None:
        message = plain(
            "Nome: Ana Reis E-mail: ana.reis@example.com.br\nÁrea: CS Tipo de acesso: Agente\n"
        )
        assert people(extract(message)) == [
            ("Ana Reis", "ana.reis@example.com.br", "CS", "agente")
        ]

    def test_blocks_with_access_stated_once_for_all(self) -> None:
        assert people(extract(fixture("base64_utf8_batch.eml"))) == [
            (
                "Eduarda Kowalski",
                "eduarda.kowalski@example.com.br",
                "Curitiba / Agronegócio",
                "agente",
            ),
            ("Henrique Bauer", "henrique.bauer@example.com.br", "Joinville / Indústria", "agente"),
            ("Lívia Tomaz", "livia.tomaz@example.com.br", "Porto Alegre / Serviços", "admin"),
        ]

    def test_profile_for_all_before_blocks(self) -> None:
        message = plain(
            "Perfil para todos: Comum\n\nNome: Davi Moreira\nE-mail: davi@example.com.br\n"
            "Área: Londrina\n\nNome: Elisa Tavares\nE-mail: elisa@example.com.br\n"
            "Área: Maringá\n"
        )
        assert people(extract(message)) == [
            ("Davi Moreira", "davi@example.com.br", "Londrina", "comum"),
            ("Elisa Tavares", "elisa@example.com.br", "Maringá", "comum"),
        ]

    def test_for_all_in_the_value(self) -> None:
        message = plain(
            "Perfil: Comum para todos\n\nNome: Ana Reis\nE-mail: ana@example.com.br\n"
            "Área: CS\n\nNome: Bia Reis\nE-mail: bia@example.com.br\nÁrea: CS\n"
        )
        assert [p.access_type for p in extract(message).people] == ["comum", "comum"]

    def test_for_all_in_a_value_inside_a_block(self) -> None:
        message = plain(
            "Nome: Ana Reis\nE-mail: ana@example.com.br\nÁrea: CS\nPerfil: Agente (todos)\n\n"
            "Nome: Bia Reis\nE-mail: bia@example.com.br\nÁrea: CS\n"
        )
        assert [p.access_type for p in extract(message).people] == ["agente", "agente"]

    def test_access_for_all_stated_after_blocks(self) -> None:
        message = plain(
            "Nome: Davi Moreira\nE-mail: davi@example.com.br\nÁrea: Londrina\n\n"
            "Nome: Elisa Tavares\nE-mail: elisa@example.com.br\nÁrea: Maringá\n\n"
            "Todos com perfil Agente.\n"
        )
        assert people(extract(message)) == [
            ("Davi Moreira", "davi@example.com.br", "Londrina", "agente"),
            ("Elisa Tavares", "elisa@example.com.br", "Maringá", "agente"),
        ]

    def test_plain_text_table_with_header_row(self) -> None:
        message = plain(
            "Nome;E-mail;Área;Acesso\n"
            "Rui Barros;rui.barros@example.com.br;TI;Admin\n"
            "Sara Melo;sara.melo@example.com.br;TI;Comum\n"
        )
        assert people(extract(message)) == [
            ("Rui Barros", "rui.barros@example.com.br", "TI", "admin"),
            ("Sara Melo", "sara.melo@example.com.br", "TI", "comum"),
        ]

    def test_unlabelled_row_per_person(self) -> None:
        message = plain(
            "Por favor criar:\n"
            "- Rui Barros; rui.barros@example.com.br; Financeiro; Agente\n"
            "- Sara Melo; sara.melo@example.com.br; Financeiro; Comum\n"
        )
        assert people(extract(message)) == [
            ("Rui Barros", "rui.barros@example.com.br", "Financeiro", "agente"),
            ("Sara Melo", "sara.melo@example.com.br", "Financeiro", "comum"),
        ]


class TestAttachments:
    def test_csv_latin1_semicolons_with_profile_in_body(self) -> None:
        assert people(extract(fixture("csv_latin1_semicolon.eml"))) == [
            ("Sérgio Araújo", "sergio.araujo@example.com.br", "Cobrança / Belém", "comum"),
            ("Mônica Lacerda", "monica.lacerda@example.com.br", "Cobrança / Manaus", "comum"),
        ]

    def test_csv_english_commas_utf8_bom(self) -> None:
        assert people(extract(fixture("csv_utf8_comma_english.eml"))) == [
            ("Oliver Grant", "oliver.grant@example.com", "Customer Success", "agente"),
            ("Nakamura, Aiko", "aiko.nakamura@example.com", "Customer Success", "comum"),
        ]

    def test_forward_as_attached_message(self) -> None:
        assert people(extract(fixture("forward_as_attachment.eml"))) == [
            ("Otávio Bastos", "otavio.bastos@example.com.br", "Auditoria", "comum")
        ]


class TestForwardsAndReplies:
    def test_outlook_original_message_block(self) -> None:
        assert people(extract(fixture("outlook_forward_original_message.eml"))) == [
            (
                "Priscila Yamamoto",
                "priscila.yamamoto@example.com.br",
                "Customer Success",
                "agente",
            )
        ]

    def test_gmail_forwarded_message(self) -> None:
        assert people(extract(fixture("gmail_forward.eml"))) == [
            (
                "Gustavo Henrique Saldanha",
                "gustavo.saldanha@example.com.br",
                "Compras",
                "comum",
            )
        ]

    def test_apple_begin_forwarded_message(self) -> None:
        assert people(extract(fixture("apple_begin_forwarded.eml"))) == [
            ("Priya Raman", "priya.raman@example.com", "Renewals", "admin")
        ]

    def test_header_block_without_marker_line(self) -> None:
        message = plain(
            "Segue.\n\n________________________________\n"
            "De: Nívea Couto <nivea.couto@example.com.br>\nEnviado: segunda-feira, 1 de dezembro\n"
            "Para: Helena Costa <helena.costa@example.com.br>\nAssunto: #ACESSO\n"
            "Nome: Tales Mota\nE-mail: tales.mota@example.com.br\nÁrea: Jurídico\n"
            "Acesso: Comum\n"
        )
        assert people(extract(message)) == [
            ("Tales Mota", "tales.mota@example.com.br", "Jurídico", "comum")
        ]

    def test_thunderbird_forward_starting_with_subject(self) -> None:
        message = plain(
            "-------- Mensagem encaminhada --------\nAssunto: \t#ACESSO\n"
            "Data: \tWed, 3 Dec 2025 15:51:30 -0300\n"
            "De: \tNívea Couto <nivea.couto@example.com.br>\n"
            "Para: \tHelena Costa <helena.costa@example.com.br>\n\n\n"
            "Nome: Tales Mota\nE-mail: tales.mota@example.com.br\nÁrea: Jurídico\n"
            "Acesso: Comum\n"
        )
        assert people(extract(message)) == [
            ("Tales Mota", "tales.mota@example.com.br", "Jurídico", "comum")
        ]

    def test_new_text_wins_over_quoted_request(self) -> None:
        assert people(extract(fixture("reply_new_text_wins.eml"))) == [
            ("Renata Figueiredo", "renata.figueiredo@example.com.br", "Jurídico", "comum")
        ]

    def test_reply_adds_field_to_quoted_request(self) -> None:
        assert people(extract(fixture("reply_adds_missing_area.eml"))) == [
            ("Simone Prado", "simone.prado@example.com.br", "Controladoria", "agente")
        ]

    def test_quoted_html_reply_is_not_new_text(self) -> None:
        message = html(
            "<div>Nome: Lia Prado<br>E-mail: lia.prado@example.com.br<br>Área: Fiscal<br>"
            "Acesso: Comum</div><div class='gmail_quote'>Em ter., 2 de dez., Helena "
            "escreveu:<blockquote>Nome: Leo Prado<br>E-mail: leo.prado@example.com.br<br>"
            "Área: Fiscal<br>Acesso: Admin</blockquote></div>"
        )
        assert people(extract(message)) == [
            ("Lia Prado", "lia.prado@example.com.br", "Fiscal", "comum")
        ]


class TestAddressesAndSignatures:
    def test_thanks_above_the_request_is_no_signature(self) -> None:
        message = plain(
            "Obrigada!\n\nNome: Ana Reis\nE-mail: ana@example.com.br\nÁrea: CS\n"
            "Acesso: Comum\n\nObrigada!\nHelena\nE-mail: helena.costa@example.com.br\n"
        )
        assert people(extract(message)) == [("Ana Reis", "ana@example.com.br", "CS", "comum")]

    def test_signature_address_is_not_a_person(self) -> None:
        assert people(extract(fixture("signature_with_sender_address.eml"))) == [
            ("Wellington Souza", "wellington.souza@example.com.br", "Ouvidoria", "comum")
        ]

    def test_name_and_angle_address_lines(self) -> None:
        assert people(extract(fixture("name_angle_address_lines.eml"))) == [
            ("Mariana Souza", "mariana.souza@example.com.br", "Marketing", "comum"),
            ("Paulo Nogueira", "paulo.nogueira@example.com.br", "Vendas Corporativas", "agente"),
        ]

    def test_name_and_angle_address_as_email_value(self) -> None:
        message = plain(
            "E-mail: Rafael Prado <Rafael.Prado@Example.com.br>\nÁrea: Suprimentos\n"
            "Acesso: Admin\n"
        )
        assert people(extract(message)) == [
            ("Rafael Prado", "rafael.prado@example.com.br", "Suprimentos", "admin")
        ]

    def test_name_and_email_under_one_label(self) -> None:
        message = plain(
            "Nome e e-mail: Rafael Prado <rafael.prado@example.com.br>\nÁrea: Suprimentos\n"
            "Acesso: Admin\n"
        )
        assert people(extract(message)) == [
            ("Rafael Prado", "rafael.prado@example.com.br", "Suprimentos", "admin")
        ]

    def test_addresses_are_lower_cased_and_mailto_removed(self) -> None:
        message = plain(
            "Nome: Ana Lins\nE-mail: <mailto:ANA.LINS@Example.COM.br>\nÁrea: X\nAcesso: Comum\n"
        )
        assert extract(message).people[0].email == "ana.lins@example.com.br"

    def test_invalid_address_is_missing(self) -> None:
        message = plain("Nome: Ana Lins\nE-mail: ana.lins@\nÁrea: RH\nAcesso: Comum\n")
        extraction = extract(message)
        assert people(extraction) == [("Ana Lins", None, "RH", "comum")]
        assert extraction.missing == ["email"]


class TestAreaAndText:
    def test_area_parts_on_separate_lines_joined_in_order(self) -> None:
        message = plain(
            "Nome: Téo Lima\nE-mail: teo.lima@example.com.br\nSegmento: Varejo\n"
            "Unidade: Salvador\nÁrea: Vendas\nPerfil: Comum\n"
        )
        assert people(extract(message)) == [
            ("Téo Lima", "teo.lima@example.com.br", "Varejo / Salvador / Vendas", "comum")
        ]

    def test_decomposed_unicode_is_normalised_to_nfc(self) -> None:
        body = unicodedata.normalize(
            "NFD", "Nome: Conceição Brandão\nE-mail: c.brandao@example.com.br\n"
        )
        message = plain(body + "Área: Maceió\nAcesso: Agente\n")
        person = extract(message).people[0]
        assert person.name == "Conceição Brandão"
        assert unicodedata.is_normalized("NFC", person.name)

    def test_mojibake_is_repaired(self) -> None:
        message = plain(
            "Nome: ConceiÃ§Ã£o BrandÃ£o\nE-mail: c.brandao@example.com.br\n"
            "Ãrea: MaceiÃ³\nAcesso: Agente\n".replace("Ãrea", "Área")
        )
        assert people(extract(message)) == [
            ("Conceição Brandão", "c.brandao@example.com.br", "Maceió", "agente")
        ]


class TestAccessTypes:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("Comum", "comum"),
            ("viewer", "comum"),
            ("Visualização", "comum"),
            ("visualizador", "comum"),
            ("Somente leitura", "comum"),
            ("read-only", "comum"),
            ("Leitura", "comum"),
            ("consulta", "comum"),
            ("Usuário comum", "comum"),
            ("Agente", "agente"),
            ("agent", "agente"),
            ("Operador", "agente"),
            ("Agente (com permissões de ações dentro dos clientes)", "agente"),
            ("Admin", "admin"),
            ("Admin ( com permissões administrativas)", "admin"),
            ("Administrador", "admin"),
            ("administrator", "admin"),
            ("ADM", "admin"),
            ("Comum, não admin", "comum"),
            ("[ ] Comum [x] Agente [ ] Admin", "agente"),
            ("( ) Comum (X) Admin", "admin"),
            ("☐ Comum ☒ Admin", "admin"),
            ("✔ Admin", "admin"),
            ("gestor", None),
            ("analista", None),
            ("Agente ou Admin", None),
            ("total", None),
            ("[ ] Comum [ ] Agente", None),
        ],
    )
    def test_values_and_synonyms(self, value: str, expected: str | None) -> None:
        assert parse_access_type(value) == expected

    def test_checkbox_lines_under_label(self) -> None:
        assert people(extract(fixture("checkbox_form.eml"))) == [
            ("Yasmin Carvalho", "yasmin.carvalho@example.com.br", "Pós-venda", "agente")
        ]

    def test_checked_symbol_lines(self) -> None:
        message = plain(
            "Nome: Yuri Dantas\nE-mail: yuri.dantas@example.com.br\nÁrea: TI\n"
            "☐ Comum\n☐ Agente\n✔ Admin\n"
        )
        assert people(extract(message)) == [
            ("Yuri Dantas", "yuri.dantas@example.com.br", "TI", "admin")
        ]

    def test_unknown_access_type_is_missing(self) -> None:
        message = plain(
            "Nome: Yuri Dantas\nE-mail: yuri.dantas@example.com.br\nÁrea: TI\nPerfil: Gestor\n"
        )
        extraction = extract(message)
        assert people(extraction) == [("Yuri Dantas", "yuri.dantas@example.com.br", "TI", None)]
        assert extraction.missing == ["access_type"]


class TestOutcomes:
    def test_nobody_found_gives_one_empty_person(self) -> None:
        extraction = extract(plain("Podemos falar amanhã às 10h?\n"))
        assert extraction.people == [Person()]
        assert extraction.missing == ["name", "email", "area", "access_type"]
        assert extraction.complete_people == []

    def test_complete_and_incomplete_people(self) -> None:
        message = plain(
            "Nome: Ivo Reis\nE-mail: ivo.reis@example.com.br\nÁrea: TI\nAcesso: Comum\n\n"
            "Nome: Gil Reis\nE-mail: gil.reis@example.com.br\n"
        )
        extraction = extract(message)
        assert [p.name for p in extraction.complete_people] == ["Ivo Reis"]
        assert [p.name for p in extraction.incomplete_people] == ["Gil Reis"]
        assert extraction.incomplete_people[0].missing == ["area", "access_type"]
        assert extraction.missing == ["area", "access_type"]

    def test_missing_fields_are_in_field_order(self) -> None:
        person = Person(name=None, email="a@example.com", area=None, access_type="comum")
        assert person.missing == ["name", "area"]
        assert not person.complete


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("joao@example.com.br", "joao@example.com.br"),
        ("JOAO.Silva+cs@Example.COM", "joao.silva+cs@example.com"),
        ("mailto:ana@example.org.", "ana@example.org"),
        ("Ana <ana@example.org>", "ana@example.org"),
        ("ana@example", None),
        ("ana@@example.com", None),
        ("ana..silva@example.com", None),
        ("sem e-mail", None),
        ("ana@exam_ple.com", None),
    ],
)
def test_parse_email(value: str, expected: str | None) -> None:
    assert parse_email(value) == expected


class TestHostileText:
    @settings(max_examples=300, deadline=None)
    @given(
        st.text(alphabet=st.sampled_from(list("Nome:E-mail@ab.;|,\t\n>[]()x☒-_*Á")), max_size=400)
    )
    def test_any_text_extracts_without_error(self, body: str) -> None:
        extraction = extract(plain(body))
        assert extraction.people
        assert all(name in FIELD_NAMES for name in extraction.missing)

    @pytest.mark.parametrize(
        "body",
        [
            "Nome: " * 100_000,
            "x:" * 100_000,
            "Nome: " + "a; " * 100_000,
            "(" * 100_000,
            "[x] " * 100_000,
            "todos " * 100_000,
            "Nome\t" * 100_000,
            "Em " * 100_000,
            "Ã©" * 100_000,
            "a@" * 100_000,
            "\n".join(">" * depth + " Nome: A" for depth in range(3_000)),
            "Nome;E-mail;Área\n" + "A Silva;a@example.com;X\n" * 20_000,
        ],
        ids=[
            "labels",
            "colons",
            "separators",
            "parentheses",
            "checkboxes",
            "for-all",
            "tabs",
            "reply-starts",
            "mojibake",
            "at-signs",
            "deep-quotes",
            "long-table",
        ],
    )
    def test_hostile_text_is_read_in_linear_time(self, body: str) -> None:
        message = plain(body)
        started = time.perf_counter()
        extract(message)
        assert time.perf_counter() - started < 3


class TestReport:
    def test_request_report(self) -> None:
        raw = (MESSAGES / "latin1_qp_numbered.eml").read_bytes()
        assert parse_report(raw) == {
            "outcome": "request",
            "requests": [
                {
                    "name": "João Vitor Conceição",
                    "email": "joao.conceicao@example.com.br",
                    "area": "Unidade São José dos Campos",
                    "access_type": "comum",
                }
            ],
            "missing": [],
            "problems": [],
            "reason": "",
            "message": {
                "message_id": "20251128132029.GA4411@smtp.example.com.br",
                "from": "claudia.bastos@example.com.br",
                "subject": "#ACESSO - João Vitor",
            },
        }

    def test_mixed_complete_and_incomplete_is_incomplete(self) -> None:
        raw = (
            "From: Helena <helena.costa@example.com.br>\r\nSubject: #ACESSO\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n"
            "Nome: Ivo Reis\nE-mail: ivo@example.com.br\nÁrea: TI\nAcesso: Comum\n\n"
            "Nome: Gil Reis\nE-mail: gil@example.com.br\nAcesso: Admin\n"
        ).encode()
        report = parse_report(raw)
        assert report["outcome"] == "incomplete"
        assert report["requests"] == [
            {
                "name": "Ivo Reis",
                "email": "ivo@example.com.br",
                "area": "TI",
                "access_type": "comum",
            }
        ]
        assert report["missing"] == ["area"]
        assert report["reason"] == (
            "pessoas incompletas (incomplete people): 1 de 2; faltam (missing): área"
        )

    def test_nobody_found_is_incomplete_with_everything_missing(self) -> None:
        raw = b"From: a@example.com\r\nSubject: #ACESSO\r\n\r\nPodem ver isso?\r\n"
        report = parse_report(raw)
        assert (report["outcome"], report["requests"], report["missing"]) == (
            "incomplete",
            [],
            ["name", "email", "area", "access_type"],
        )
        assert report["reason"] == "nenhuma pessoa encontrada (no person found)"

    def test_ignored_report(self) -> None:
        raw = (MESSAGES / "outlook_auto_reply.eml").read_bytes()
        report = parse_report(raw)
        assert (report["outcome"], report["requests"], report["missing"], report["reason"]) == (
            "ignored",
            [],
            [],
            "resposta automática (auto-reply): Auto-Submitted: auto-generated",
        )
        assert report["message"]["subject"] == "Resposta automática: RE: [#ACESSO] Solicitação"

    def test_custom_tag(self) -> None:
        raw = b"From: a@example.com\r\nSubject: #USUARIO\r\n\r\nx\r\n"
        assert parse_report(raw)["reason"] == (
            "sem a tag #ACESSO no assunto (no #ACESSO tag in subject)"
        )
        assert parse_report(raw, tag="#USUARIO")["outcome"] == "incomplete"

    def test_unreadable_bytes_raise(self) -> None:
        with pytest.raises(UnreadableMessage):
            parse_report(b"\x00\x01 not a message")

    def test_format_report_for_people(self) -> None:
        report = parse_report((MESSAGES / "base64_utf8_batch.eml").read_bytes())
        assert format_report(report) == (
            "Resultado (result): pedido (request)\n"
            "Mensagem (message): b7c0e1a2-regional-sul@example.com.br\n"
            "De (from): patricia.souza@example.com.br\n"
            "Assunto (subject): #ACESSO em lote – Regional Sul\n"
            "Pessoas (people):\n"
            "  1. Eduarda Kowalski <eduarda.kowalski@example.com.br> · "
            "área: Curitiba / Agronegócio · acesso: agente\n"
            "  2. Henrique Bauer <henrique.bauer@example.com.br> · "
            "área: Joinville / Indústria · acesso: agente\n"
            "  3. Lívia Tomaz <livia.tomaz@example.com.br> · "
            "área: Porto Alegre / Serviços · acesso: admin"
        )

    def test_format_report_for_missing_fields(self) -> None:
        raw = b"From: a@example.com\r\nSubject: #ACESSO\r\n\r\nNome: Ana Reis\r\n"
        text = format_report(parse_report(raw))
        assert "Resultado (result): incompleto (incomplete)" in text
        assert "Faltando (missing): e-mail, área (area), tipo de acesso (access type)" in text
