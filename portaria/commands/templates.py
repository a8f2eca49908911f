"""The `portaria templates` commands: admin-written email templates used by rules."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.table import Table

from engine.calendar import today_for
from engine.customers import get_customer
from engine.errors import EmailRenderError
from engine.rules import get_rule
from engine.templating import (
    REFUSED,
    EmailTemplateProblems,
    create_template,
    edit_template,
    email_context,
    get_template,
    list_templates,
    problem_detail,
    remove_template,
    render_email,
    variables_help,
)
from engine.unsubscribe import unsubscribe_links
from portaria.console import CommandError, ConfigOption, friendly, out, service_for

app = typer.Typer(
    help="Modelos de e-mail das regras (rule email templates), com Jinja no sandbox.",
    no_args_is_help=True,
)

NameArgument = Annotated[str, typer.Argument(help="Nome do modelo.")]
SubjectOption = Annotated[str | None, typer.Option("--subject", help="Assunto (uma linha).")]
TextOption = Annotated[str | None, typer.Option("--text", help="Corpo em texto.")]
TextFileOption = Annotated[
    Path | None, typer.Option("--text-file", help="Arquivo com o corpo em texto (UTF-8).")
]
HtmlFileOption = Annotated[
    Path | None, typer.Option("--html-file", help="Arquivo com o corpo em HTML (UTF-8).")
]


def _read(file: Path | None, option: str) -> str | None:
    if file is None:
        return None
    try:
        return file.read_text(encoding="utf-8-sig")
    except OSError as exc:
        reason = f"não foi possível ler (cannot read) {file}: {exc.strerror}"
        raise CommandError(f"{option}: {reason}") from None
    except UnicodeDecodeError:
        raise CommandError(f"{option}: {file} precisa ser UTF-8 (must be UTF-8)") from None


def _print_refusal(exc: EmailTemplateProblems) -> NoReturn:
    """Every problem on its own line: part, line and name, so all are fixed in one go."""
    if len(exc.problems) == 1:
        raise CommandError(str(exc))
    lines = [problem_detail(p) for p in exc.problems]
    raise CommandError(f"{REFUSED}, {len(lines)} problemas (problems):\n  " + "\n  ".join(lines))


def _body(text: str | None, text_file: Path | None) -> str | None:
    if text is not None and text_file is not None:
        raise CommandError("use --text ou --text-file, não os dois (not both)")
    return text if text is not None else _read(text_file, "--text-file")


@app.command("list")
@friendly
def templates_list(config: ConfigOption = None) -> None:
    """Listar os modelos de e-mail."""
    service = service_for(config)
    with service.sessions() as session:
        rows = [
            (str(t.id), t.name, t.subject, "sim" if t.body_html else "não")
            for t in list_templates(session)
        ]
    if not rows:
        out.print("nenhum modelo (no templates)")
        return
    table = Table("id", "nome", "assunto", "HTML")
    for row in rows:
        table.add_row(*row)
    out.print(table)


@app.command("show")
@friendly
def templates_show(name: NameArgument, config: ConfigOption = None) -> None:
    """Ver o código de um modelo: assunto, texto e HTML."""
    service = service_for(config)
    with service.sessions() as session:
        template = get_template(session, name)
        parts = [
            f"{template.name} (#{template.id})",
            f"Assunto (subject): {template.subject}",
            "--- texto (text) ---",
            template.body_text.rstrip("\n"),
        ]
        if template.body_html:
            parts += ["--- HTML ---", template.body_html.rstrip("\n")]
    for part in parts:
        out.print(part, markup=False, highlight=False, soft_wrap=True)


@app.command("create")
@friendly
def templates_create(
    name: NameArgument,
    subject: SubjectOption = None,
    text: TextOption = None,
    text_file: TextFileOption = None,
    html_file: HtmlFileOption = None,
    config: ConfigOption = None,
) -> None:
    """Criar um modelo; é recusado se usar variável desconhecida ou sair do sandbox."""
    body = _body(text, text_file)
    if subject is None or body is None:
        raise CommandError("informe --subject e --text ou --text-file (subject and body needed)")
    html = _read(html_file, "--html-file")
    service = service_for(config)
    try:
        with service.transaction() as session:
            template = create_template(
                session, name=name, subject=subject, body_text=body, body_html=html
            )
            shown = template.name
    except EmailTemplateProblems as exc:
        _print_refusal(exc)
    out.print(f"Modelo criado (template created): {shown}", markup=False)


@app.command("edit")
@friendly
def templates_edit(
    name: NameArgument,
    rename: Annotated[str | None, typer.Option("--rename", help="Novo nome.")] = None,
    subject: SubjectOption = None,
    text: TextOption = None,
    text_file: TextFileOption = None,
    html_file: HtmlFileOption = None,
    no_html: Annotated[bool, typer.Option("--no-html", help="Tirar a parte HTML.")] = False,
    config: ConfigOption = None,
) -> None:
    """Alterar um modelo; renomear também atualiza as regras que o usam."""
    if no_html and html_file is not None:
        raise CommandError("use --html-file ou --no-html, não os dois (not both)")
    body = _body(text, text_file)
    html = "" if no_html else _read(html_file, "--html-file")
    if all(v is None for v in (rename, subject, body, html)):
        raise CommandError("nada a alterar (nothing to change): veja --help")
    service = service_for(config)
    try:
        with service.transaction() as session:
            template = edit_template(
                session, name, new_name=rename, subject=subject, body_text=body, body_html=html
            )
            shown = template.name
    except EmailTemplateProblems as exc:
        _print_refusal(exc)
    out.print(f"Modelo alterado (template changed): {shown}", markup=False)


@app.command("remove")
@friendly
def templates_remove(name: NameArgument, config: ConfigOption = None) -> None:
    """Remover um modelo que nenhuma regra usa."""
    service = service_for(config)
    with service.transaction() as session:
        remove_template(session, name)
    out.print(f"Modelo removido (template removed): {name}", markup=False)


@app.command("vars")
@friendly
def templates_vars(config: ConfigOption = None) -> None:
    """Variáveis e filtros que um modelo pode usar (template variables)."""
    service = service_for(config)
    with service.sessions() as session:
        lines = variables_help(session)
    table = Table("variável", "o que é (what it is)")
    for name, description in lines:
        table.add_row(name, description)
    out.print(table)
    out.print(
        "Ex.: {{ customer.name }}, {{ customer.custom.plano }}, {{ task.due_date | date_br }}, "
        "{% if owner %}{{ owner.name }}{% endif %}",
        markup=False,
        soft_wrap=True,
    )


@app.command("preview")
@friendly
def templates_preview(
    name: NameArgument,
    customer: Annotated[str, typer.Option("--customer", help="Código do cliente.")],
    rule: Annotated[
        str | None, typer.Option("--rule", help="Regra que enviaria (para rule e playbook).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Mostrar o e-mail como o contato do cliente o receberia; nada é enviado."""
    service = service_for(config)
    settings = service.settings
    links = unsubscribe_links(settings)
    with service.sessions() as session:
        template = get_template(session, name)
        card = get_customer(session, customer)
        found = get_rule(session, rule) if rule else None
        playbook = next(
            (a["playbook"] for a in (found.actions if found else []) if a["kind"] == "playbook"),
            None,
        )
        # The link is the contact's, as in a run; a card without one shows a sample's.
        recipient = card.contact_email or "contato@exemplo.com.br"
        context = email_context(
            session,
            card,
            today=today_for(settings),
            rule=found,
            playbook_name=playbook,
            unsubscribe_url=links.url(recipient),
        )
        try:
            rendered = render_email(template, context)
        except EmailRenderError as exc:
            raise CommandError(f"{card.code}: {exc}") from None
    parts = [f"Assunto (subject): {rendered.subject}", "--- texto (text) ---"]
    parts.append(rendered.text.rstrip("\n"))
    if rendered.html:
        parts += ["--- HTML ---", rendered.html.rstrip("\n")]
    for part in parts:
        out.print(part, markup=False, highlight=False, soft_wrap=True)
