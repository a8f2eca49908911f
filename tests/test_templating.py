"""Admin-written templates: the sandbox, unknown names refused with their line, escaping."""

from __future__ import annotations

import os
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.errors import EmailRenderError, EmailTemplateInUse, EmailTemplateRefused
from engine.models import Customer, CustomField, EmailTemplate, Rule
from engine.rules import create_rule
from engine.templating import (
    EmailTemplateProblems,
    RenderedEmail,
    create_template,
    date_br,
    edit_template,
    email_context,
    get_template,
    html_with_footer,
    money_br,
    remove_template,
    render_email,
    text_with_footer,
    variables_help,
)
from portaria.cli import app
from portaria.wiring import Service
from provisioning.directory import create_user

TODAY = date(2025, 6, 10)


@pytest.fixture
def shop(service: Service) -> Service:
    """One custom field and two cards: one with an owner, one without."""
    with service.transaction() as session:
        owner = create_user(
            session,
            name="Ana Souza",
            email="ana@cs.example.com.br",
            area="CS",
            role="agente",
            created_via="test",
        )
        session.add(CustomField(key="plano", label="Plano", kind="text"))
        session.add_all(
            [
                Customer(
                    code="ACME",
                    name='Acme <Indústria> & "Filhos"',
                    owner_id=owner.id,
                    contact_email="compras@acme.com.br",
                    mrr=Decimal("1234.5"),
                    renewal_date=date(2025, 7, 1),
                    custom={"plano": "ouro"},
                ),
                Customer(code="SOLO", name="Solo\nLinha dois", custom={}),
            ]
        )
    return service


def save(service: Service, *, subject: str = "Olá", text: str = "Oi", html: str | None = None):
    with service.transaction() as session:
        return create_template(
            session, name="Modelo", subject=subject, body_text=text, body_html=html
        )


def refusal(service: Service, **parts: str) -> EmailTemplateRefused:
    with pytest.raises(EmailTemplateRefused) as caught:
        save(service, **parts)
    with service.sessions() as session:
        assert session.query(EmailTemplate).count() == 0
    return caught.value


class TestSandbox:
    def test_class_walk_is_refused_at_save(self, shop: Service) -> None:
        refused = refusal(shop, text="Oi\n{{ ''.__class__.__mro__[1].__subclasses__() }}")
        assert refused.part == "text"
        assert refused.line == 2
        assert refused.name == "__class__"
        assert "sandbox" in str(refused)

    def test_cycler_globals_are_refused_at_save(self, shop: Service) -> None:
        refused = refusal(shop, html="<p>\n\n{{ cycler.__init__.__globals__ }}</p>")
        assert refused.part == "html"
        assert refused.line == 3
        assert refused.name == "__init__"

    def test_globals_outside_the_vocabulary_are_unknown(self, shop: Service) -> None:
        refused = refusal(shop, text="{{ lipsum() }}")
        assert refused.name == "lipsum"
        assert "unknown variable" in str(refused)

    @pytest.mark.parametrize(
        "source",
        [
            "{{ customer.name|attr('__class__') }}",
            "{{ customer['__class__'] }}",
            "{{ customer._values }}",
            "{% set c = customer %}{{ c.__class__ }}",
        ],
    )
    def test_underscore_access_is_refused(self, shop: Service, source: str) -> None:
        refused = refusal(shop, text=source)
        assert "sandbox" in str(refused) or "attr" in str(refused)

    def test_format_string_escape_is_caught_by_the_trial_render(self, shop: Service) -> None:
        refused = refusal(shop, subject="{{ '{0.__class__}'.format(customer.name) }}")
        assert refused.part == "subject"
        assert "sandbox" in str(refused)

    def test_lists_cannot_be_changed(self, shop: Service) -> None:
        refused = refusal(shop, text="{% set x = [1] %}{{ x.append(2) }}")
        assert "sandbox" in str(refused)


BLOCKED = "bloqueado pelo sandbox (sandbox): "
TOO_LARGE = "construiria um valor grande demais (result too large): "


class TestSizeLimits:
    """Operators, methods, filters and the whole render are bounded: no 1 GB strings."""

    def test_a_constant_repetition_is_refused_at_save_in_any_branch(self, shop: Service) -> None:
        refused = refusal(shop, text='Oi\n{% if false %}\n{{ "x" * 999999999 }}{% endif %}')
        assert (refused.part, refused.line, refused.name) == ("text", 3, "*")
        assert str(refused) == (
            f"modelo recusado (template refused): texto (text), linha 3: {BLOCKED}'*' "
            f"{TOO_LARGE}999999999 > 100000 caracteres ou itens (characters or items)"
        )

    @pytest.mark.parametrize(
        ("source", "name", "detail"),
        [
            ("{{ [1, 2] * 60000 }}", "*", "120000 > 100000 caracteres ou itens"),
            ("{{ 10 ** 999999999 }}", "**", "inteiro com mais de 10000 bits (integer)"),
            ('{{ "%999999999s" % 1 }}', "%", "largura acima de 100000 (width or precision)"),
        ],
    )
    def test_other_constant_operations_are_refused_at_save(
        self, shop: Service, source: str, name: str, detail: str
    ) -> None:
        refused = refusal(shop, html=source)
        assert (refused.part, refused.line, refused.name) == ("html", 1, name)
        assert str(refused).startswith(
            f"modelo recusado (template refused): HTML, linha 1: {BLOCKED}{name!r} "
            f"{TOO_LARGE}{detail}"
        )

    @pytest.mark.parametrize(
        ("source", "name", "detail"),
        [
            (
                "{% set ns = namespace(n=10) %}{% for i in range(40) %}"
                "{% set ns.n = ns.n * ns.n %}{% endfor %}{{ ns.n }}",
                "*",
                "inteiro com mais de 10000 bits (integer)",
            ),
            (
                '{% set ns = namespace(s="x") %}{% for i in range(40) %}'
                "{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
                "~",
                "1048576 > 1000000 caracteres ou itens (characters or items)",
            ),
            (
                '{% set ns = namespace(s="x") %}{% for i in range(40) %}'
                "{% set ns.s = ns.s + ns.s %}{% endfor %}",
                "+",
                "1048576 > 1000000 caracteres ou itens (characters or items)",
            ),
            (
                "{{ customer.name.ljust(999999999) }}",
                "ljust",
                "pode passar de 1000000 caracteres (may exceed)",
            ),
            (
                "{{ customer.name|center(999999999) }}",
                "center",
                "pode passar de 1000000 caracteres (may exceed)",
            ),
            (
                "{{ '{:>999999999}'.format(customer.name) }}",
                "format",
                "largura acima de 100000 (width or precision)",
            ),
            (
                "{% set s = 'x' * 99999 %}{{ s|replace('x', s) }}",
                "replace",
                "pode passar de 1000000 caracteres (may exceed)",
            ),
        ],
    )
    def test_what_only_a_render_shows_is_refused_by_the_trial_render(
        self, shop: Service, source: str, name: str, detail: str
    ) -> None:
        refused = refusal(shop, text=source)
        assert (refused.part, refused.line, refused.name) == ("text", 1, name)
        assert str(refused) == (
            f"modelo recusado (template refused): texto (text), linha 1: {BLOCKED}{name!r} "
            f"{TOO_LARGE}{detail}"
        )

    def test_the_rendered_size_is_capped(self, shop: Service) -> None:
        refused = refusal(shop, text="{% for i in range(100000) %}{{ 'x' * 11 }}{% endfor %}")
        assert (refused.part, refused.line, refused.name) == ("text", None, "render")
        assert str(refused) == (
            f"modelo recusado (template refused): texto (text): {BLOCKED}'render' "
            f"{TOO_LARGE}mais de 1000000 caracteres (too many characters)"
        )

    def test_a_stored_template_is_refused_at_render_time(self, shop: Service) -> None:
        with shop.transaction() as session:
            session.add(
                EmailTemplate(
                    name="Antigo", subject="s", body_text="Oi\n{{ customer.name * 99999 }}"
                )
            )
        with shop.sessions() as session:
            card = session.query(Customer).filter_by(code="ACME").one()
            context = email_context(session, card, today=TODAY)
            with pytest.raises(EmailRenderError) as caught:
                render_email(get_template(session, "Antigo"), context)
        error = caught.value
        assert (error.part, error.line, error.name) == ("text", 2, "*")
        assert str(error) == (
            f"texto (text), linha 2: {BLOCKED}'*' {TOO_LARGE}"
            "2699973 > 100000 caracteres ou itens (characters or items)"
        )

    def test_ordinary_use_of_the_operators_is_fine(self, shop: Service) -> None:
        with shop.transaction() as session:
            create_template(
                session,
                name="Contas",
                subject="{{ '=' * 10 }}",
                body_text="{{ 'ab' * 3 }} {{ 2 ** 10 }} {{ [1, 2] * 2 }} {{ '%5s' % 'a' }}|"
                "{{ 'x'|center(5) }}|{{ range(3)|join(',') }}|{{ 'a' + 'b' ~ 'c' }}|"
                "{{ '{:>4}'.format(7) }}|{{ 2 * 3 }}",
            )
        with shop.sessions() as session:
            card = session.query(Customer).filter_by(code="ACME").one()
            email = render_email(
                get_template(session, "Contas"), email_context(session, card, today=TODAY)
            )
        assert email.subject == "=========="
        assert email.text == "ababab 1024 [1, 2, 1, 2]     a|  x  |0,1,2|abc|   7|6"


class TestUnknownNames:
    def test_unknown_variable_names_line_and_name(self, shop: Service) -> None:
        refused = refusal(shop, text="Olá,\n\n{{ clinete.name }}\n")
        assert refused.line == 3
        assert refused.name == "clinete"
        assert str(refused) == (
            "modelo recusado (template refused): texto (text), linha 3: "
            "variável desconhecida (unknown variable): 'clinete'"
        )

    def test_unknown_field_of_a_known_variable(self, shop: Service) -> None:
        refused = refusal(shop, subject="{{ customer.nmae }}")
        assert refused.part == "subject"
        assert refused.name == "customer.nmae"

    def test_unknown_custom_field(self, shop: Service) -> None:
        refused = refusal(shop, text="a\n{{ customer.custom.desconto }}")
        assert refused.line == 2
        assert refused.name == "customer.custom.desconto"

    def test_syntax_error_names_the_line(self, shop: Service) -> None:
        refused = refusal(shop, text="a\nb\n{% if customer.name %}sem fim")
        assert refused.line == 3
        assert "syntax error" in str(refused)

    def test_names_the_template_sets_itself_are_fine(self, shop: Service) -> None:
        template = save(
            shop,
            text=(
                "{% set total = customer.mrr %}{{ total|money_br }}\n"
                "{% for letra in customer.code %}{{ loop.index }}{{ letra }}{% endfor %}\n"
                "{% if owner %}{{ owner.name }}{% endif %} {{ today|date_br }}\n"
            ),
        )
        assert template.id is not None


class TestRendering:
    def render(self, service: Service, code: str, **parts: str):
        with service.transaction() as session:
            template = create_template(session, name="R", **parts)
        with service.sessions() as session:
            card = session.query(Customer).filter_by(code=code).one()
            context = email_context(session, card, today=TODAY)
            return render_email(get_template(session, template.name), context)

    def test_html_is_escaped_and_text_is_not(self, shop: Service) -> None:
        email = self.render(
            shop,
            "ACME",
            subject="Renovação de {{ customer.name }}",
            body_text="{{ customer.name }}: {{ customer.mrr|money_br }} em "
            "{{ customer.renewal_date|date_br }}, plano {{ customer.custom.plano }}\n",
            body_html="<p>{{ customer.name }}</p><p>{{ owner.name }}</p>",
        )
        assert email.subject == 'Renovação de Acme <Indústria> & "Filhos"'
        assert email.text == 'Acme <Indústria> & "Filhos": R$ 1.234,50 em 01/07/2025, plano ouro\n'
        assert email.html == (
            "<p>Acme &lt;Indústria&gt; &amp; &#34;Filhos&#34;</p><p>Ana Souza</p>"
        )

    def test_subject_is_one_line(self, shop: Service) -> None:
        email = self.render(shop, "SOLO", subject="Cliente {{ customer.name }}\n", body_text="x")
        assert email.subject == "Cliente Solo Linha dois"

    def test_empty_values_print_as_nothing(self, shop: Service) -> None:
        email = self.render(shop, "SOLO", subject="s", body_text="[{{ customer.segment }}]")
        assert email.text == "[]"

    def test_missing_owner_is_reported_with_its_path(self, shop: Service) -> None:
        with pytest.raises(EmailRenderError) as caught:
            self.render(shop, "SOLO", subject="s", body_text="Oi\n{{ owner.name }}")
        assert caught.value.line == 2
        assert str(caught.value) == (
            "texto (text), linha 2: owner.name não está definido (is undefined): "
            "cliente sem responsável (no owner)"
        )

    def test_missing_custom_value_is_reported(self, shop: Service) -> None:
        with pytest.raises(EmailRenderError) as caught:
            self.render(shop, "SOLO", subject="{{ customer.custom.plano }}", body_text="x")
        assert caught.value.part == "subject"
        assert "customer.custom.plano não está definido para este cliente" in str(caught.value)

    def test_default_filter_covers_a_missing_value(self, shop: Service) -> None:
        email = self.render(
            shop, "SOLO", subject="s", body_text="{{ customer.custom.plano|default('básico') }}"
        )
        assert email.text == "básico"


class TestStoring:
    def test_rename_follows_into_rules(self, shop: Service) -> None:
        save(shop, text="{{ customer.name }}")
        with shop.transaction() as session:
            create_rule(
                session,
                {
                    "name": "Aviso",
                    "actions": [{"kind": "email", "template": "Modelo", "to": ["contact"]}],
                },
            )
            edit_template(session, "Modelo", new_name="Modelo novo")
        with shop.sessions() as session:
            rule = session.query(Rule).one()
            assert rule.actions == [
                {"kind": "email", "template": "Modelo novo", "to": ["contact"]}
            ]

    def test_template_in_use_is_not_removed(self, shop: Service) -> None:
        save(shop)
        with shop.transaction() as session:
            create_rule(
                session,
                {
                    "name": "Aviso",
                    "actions": [{"kind": "email", "template": "Modelo", "to": ["owner"]}],
                },
            )
        with pytest.raises(EmailTemplateInUse, match="Aviso"), shop.transaction() as session:
            remove_template(session, "Modelo")

    def test_unused_template_is_removed(self, shop: Service) -> None:
        save(shop)
        with shop.transaction() as session:
            remove_template(session, "Modelo")
        with shop.sessions() as session:
            assert session.query(EmailTemplate).count() == 0

    def test_edit_is_checked_like_a_save(self, shop: Service) -> None:
        save(shop)
        with pytest.raises(EmailTemplateRefused) as caught, shop.transaction() as session:
            edit_template(session, "Modelo", body_text="{{ customer.__class__ }}")
        assert caught.value.name == "__class__"
        with shop.sessions() as session:
            assert get_template(session, "Modelo").body_text == "Oi"


def test_variables_are_documented_with_custom_fields(shop: Service) -> None:
    with shop.sessions() as session:
        names = [name for name, _ in variables_help(session)]
    for expected in (
        "customer",
        "customer.name",
        "customer.custom.plano",
        "owner.email",
        "task.due_date",
        "playbook.name",
        "rule.name",
        "today",
        "unsubscribe",
    ):
        assert expected in names


@pytest.mark.parametrize(
    ("value", "expected"),
    [(Decimal("1234567.891"), "R$ 1.234.567,89"), (0, "R$ 0,00"), (-5.5, "-R$ 5,50"), (None, "")],
)
def test_money_br(value: object, expected: str) -> None:
    assert money_br(value) == expected


def test_date_br() -> None:
    assert date_br(date(2025, 12, 31)) == "31/12/2025"
    assert date_br("2025-01-02") == "02/01/2025"
    assert date_br(None) == ""


class TestEveryProblemAtOnce:
    def test_subject_text_and_html_are_all_reported(self, shop: Service) -> None:
        refused = refusal(
            shop,
            subject="{{ clinete.name }}",
            text="Oi\n{{ customer.nmae }} {{ ''.__class__.__mro__ }}\n"
            "{{ customer.custom.desconto }}\n{{ customer.nmae }}",
            html="<p>\n{% if owner %}</p>",
        )

        assert isinstance(refused, EmailTemplateProblems)
        assert [(p.part, p.line, p.name) for p in refused.problems] == [
            ("subject", 1, "clinete"),
            ("text", 2, "__class__"),
            ("text", 2, "customer.nmae"),
            ("text", 3, "customer.custom.desconto"),
            ("text", 4, "customer.nmae"),
            ("html", 2, None),
        ]
        # The first problem is also the error's own part, line and name.
        assert (refused.part, refused.line, refused.name) == ("subject", 1, "clinete")
        assert str(refused) == (
            "modelo recusado (template refused), 6 problemas (problems): "
            "assunto (subject), linha 1: variável desconhecida (unknown variable): 'clinete'; "
            "texto (text), linha 2: acesso proibido pelo sandbox (sandbox): '__class__'; "
            "texto (text), linha 2: campo desconhecido (unknown field): customer.nmae; "
            "texto (text), linha 3: campo personalizado desconhecido (unknown custom field): "
            "desconto; "
            "texto (text), linha 4: campo desconhecido (unknown field): customer.nmae; "
            "HTML, linha 2: erro de sintaxe (syntax error): Unexpected end of template. "
            "Jinja was looking for the following tags: 'elif' or 'else' or 'endif'. "
            "The innermost block that needs to be closed is 'if'."
        )

    def test_a_trial_render_problem_comes_with_the_static_ones(self, shop: Service) -> None:
        refused = refusal(
            shop, subject="{{ '{0.__class__}'.format(customer.name) }}", text="{{ tarefa }}"
        )
        assert [(p.part, p.line, p.name) for p in refused.problems] == [
            ("subject", 1, None),
            ("text", 1, "tarefa"),
        ]

    def test_one_problem_reads_as_before(self, shop: Service) -> None:
        refused = refusal(shop, text="{{ clinete }}")
        assert str(refused) == (
            "modelo recusado (template refused): texto (text), linha 1: "
            "variável desconhecida (unknown variable): 'clinete'"
        )

    def test_the_command_prints_one_problem_a_line(
        self, shop: Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        for name in list(os.environ):
            if name.startswith("PORTARIA_"):
                monkeypatch.delenv(name)
        config = tmp_path / "portaria.toml"
        config.write_text('[database]\nurl = "sqlite:///portaria.db"\n', encoding="utf-8")
        (tmp_path / "corpo.html").write_text("<p>{{ customer.nome }}</p>", encoding="utf-8")
        args = ["templates", "create", "Aviso", "--config", str(config), "--subject",
                "{{ cliente.name }}", "--text", "Oi\n{{ owner.nome }}",
                "--html-file", str(tmp_path / "corpo.html")]  # fmt: skip

        result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})

        assert (result.exit_code, result.output) == (
            1,
            "erro (error): modelo recusado (template refused), 3 problemas (problems):\n"
            "  assunto (subject), linha 1: variável desconhecida (unknown variable): 'cliente'\n"
            "  texto (text), linha 2: campo desconhecido (unknown field): owner.nome\n"
            "  HTML, linha 1: campo desconhecido (unknown field): customer.nome\n",
        )
        with shop.sessions() as session:
            assert session.query(EmailTemplate).count() == 0


LINK = "https://portaria.test/unsubscribe/Y29tcHJhc0BhY21lLmNvbS5icg.assinatura"


class TestUnsubscribeFooter:
    def render(self, service: Service, **parts: str) -> RenderedEmail:
        with service.transaction() as session:
            template = create_template(session, name="R", **parts)
            card = session.query(Customer).filter_by(code="ACME").one()
            context = email_context(session, card, today=TODAY, unsubscribe_url=LINK)
            return render_email(template, context)

    def test_a_template_without_the_link_gets_the_footer(self, shop: Service) -> None:
        email = self.render(
            shop,
            subject="Oi",
            body_text="Olá, {{ customer.code }}!\n\n",
            body_html="<html><body><p>Olá</p></BODY></html>",
        )
        assert email.text == (
            "Olá, ACME!\n"
            "\n"
            "-- \n"
            "Para não receber mais estes e-mails (to stop these emails):\n"
            f"{LINK}\n"
        )
        assert email.html == (
            "<html><body><p>Olá</p>"
            '<p style="font-size:small;color:#666">Para não receber mais estes e-mails '
            f'(to stop these emails): <a href="{LINK}">descadastrar (unsubscribe)</a></p>\n'
            "</BODY></html>"
        )

    def test_a_template_placing_the_link_gets_no_footer(self, shop: Service) -> None:
        email = self.render(
            shop,
            subject="Oi",
            body_text="Sair: {{ unsubscribe_url }}\n",
            body_html='<a href="{{ unsubscribe }}">sair</a>',
        )
        assert email.text == f"Sair: {LINK}\n"
        assert email.html == f'<a href="{LINK}">sair</a>'

    def test_each_part_is_decided_alone(self, shop: Service) -> None:
        email = self.render(
            shop, subject="Oi", body_text="Sair: {{ unsubscribe_url }}", body_html="<p>Oi</p>"
        )
        assert email.text == f"Sair: {LINK}"
        assert email.html == (
            "<p>Oi</p>\n"
            '<p style="font-size:small;color:#666">Para não receber mais estes e-mails '
            f'(to stop these emails): <a href="{LINK}">descadastrar (unsubscribe)</a></p>\n'
        )

    def test_without_a_link_nothing_is_added(self, shop: Service) -> None:
        with shop.transaction() as session:
            template = create_template(session, name="R", subject="s", body_text="Oi\n")
            card = session.query(Customer).filter_by(code="ACME").one()
            email = render_email(template, email_context(session, card, today=TODAY))
        assert email.text == "Oi\n"

    def test_the_html_footer_escapes_the_link(self) -> None:
        assert html_with_footer("<p>Oi</p>\n", 'https://x.test/u?a=1&b="2"') == (
            "<p>Oi</p>\n"
            '<p style="font-size:small;color:#666">Para não receber mais estes e-mails '
            "(to stop these emails): "
            '<a href="https://x.test/u?a=1&amp;b=&#34;2&#34;">descadastrar (unsubscribe)</a>'
            "</p>\n"
        )
        assert text_with_footer("", LINK) == (
            f"\n\n-- \nPara não receber mais estes e-mails (to stop these emails):\n{LINK}\n"
        )


def test_the_unsubscribe_link_is_documented(shop: Service) -> None:
    with shop.sessions() as session:
        described = dict(variables_help(session))
    assert described["unsubscribe_url"] == (
        "Link de descadastro deste destinatário (one-click unsubscribe link); "
        "sem ele no modelo, um rodapé com o link é acrescentado"
    )
    assert described["unsubscribe"] == "O mesmo link, nome antigo (same link, older name)"
