"""Values that mail clients wrap: line breaks inside table cells and quoted CSV cells."""

from __future__ import annotations

from email.message import EmailMessage

from intake.extraction import extract
from intake.reading import html_to_text, read_message


def html_request(html: str) -> bytes:
    message = EmailMessage()
    message["From"] = "Helena Costa <helena@cliente.test>"
    message["Subject"] = "#ACESSO"
    message["Message-ID"] = "<wrapped@cliente.test>"
    message.set_content(html, subtype="html")
    return message.as_bytes()


def people(raw: bytes) -> list[tuple[str | None, ...]]:
    return [(p.name, p.email, p.area, p.access_type) for p in extract(read_message(raw)).people]


def test_br_inside_a_header_row_table_cell_wraps_the_value() -> None:
    table = (
        "<table><tr><th>Nome</th><th>E-mail</th><th>Área</th><th>Acesso</th></tr>"
        "<tr><td>Ana<br>Beatriz Castro</td><td>ana@cliente.test</td>"
        "<td>Unidade<br>Recife</td><td>Comum</td></tr></table>"
    )

    assert people(html_request(table)) == [
        ("Ana Beatriz Castro", "ana@cliente.test", "Unidade Recife", "comum")
    ]


def test_a_cell_of_labelled_lines_keeps_its_lines() -> None:
    cell = "<table><tr><td>Nome: Ana<br>E-mail: ana@x.test<br>Área: RH</td></tr></table>"

    assert html_to_text(cell) == "Nome: Ana\nE-mail: ana@x.test\nÁrea: RH"


def test_a_layout_cell_with_paragraphs_keeps_them() -> None:
    cell = "<table><tr><td><p>Olá,</p><p>segue o pedido</p></td><td>x</td></tr></table>"

    assert html_to_text(cell) == "Olá,\n\nsegue o pedido\nx"


def test_quoted_csv_cells_may_span_lines() -> None:
    message = EmailMessage()
    message["From"] = "helena@cliente.test"
    message["Subject"] = "#ACESSO em lote"
    message["Message-ID"] = "<csv-wrap@cliente.test>"
    message.set_content("Segue a planilha.")
    sheet = (
        'nome;email;area;acesso\r\n"Marta ""M""\r\nSilva";marta@cliente.test;'
        '"Unidade\nRecife";Comum\r\nJoão Reis;joao@cliente.test;RH;Agente\r\n'
    )
    message.add_attachment(sheet.encode(), maintype="text", subtype="csv", filename="p.csv")

    assert people(message.as_bytes()) == [
        ('Marta "M" Silva', "marta@cliente.test", "Unidade Recife", "comum"),
        ("João Reis", "joao@cliente.test", "RH", "agente"),
    ]
