"""The `portaria` command: thin entry points that validate, then hand over.

Every command loads the settings, opens the database and calls one function
of intake, provisioning or the outbox. Errors a person can act on are printed
as one line with what to do, and the command exits non-zero; no tracebacks.
"""

from __future__ import annotations

import json
import logging
import sys
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Column, Table
from rich.text import Text

from config.settings import ConfigError, Settings, config_path, load_settings
from portaria.commands import (
    customers,
    playbooks,
    rules,
    schedule,
    status,
    tasks,
    templates,
)
from portaria.console import (
    CommandError,
    ConfigOption,
    actor,
    err,
    friendly,
    out,
    service_for,
)
from portaria.locking import BUSY_WAIT_SECONDS, MailHandlingBusy, mail_handling
from portaria.wiring import Service, open_service

log = logging.getLogger(__name__)

# `requests show` right-aligns its bilingual labels to the longest one.
LABEL_WIDTH = len("decidido por (decided by)")

app = typer.Typer(
    name="portaria",
    help="Portaria: pedidos de acesso #ACESSO por email (access requests by email).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
requests_app = typer.Typer(
    help="Pedidos de acesso: listar, ver, aprovar, recusar (access requests).",
    no_args_is_help=True,
)
users_app = typer.Typer(help="Usuários da plataforma (the users directory).", no_args_is_help=True)
outbox_app = typer.Typer(
    help="E-mails de saída: listar, enviar, reenviar (outgoing email).", no_args_is_help=True
)
app.add_typer(requests_app, name="requests")
app.add_typer(users_app, name="users")
app.add_typer(outbox_app, name="outbox")
for _name, _commands in (
    ("customers", customers.app),
    ("playbooks", playbooks.app),
    ("tasks", tasks.app),
    ("rules", rules.app),
    ("templates", templates.app),
):
    app.add_typer(_commands, name=_name)
app.command("schedule")(schedule.schedule_command)
app.command("run")(schedule.run_command)
app.command("status")(status.status_command)


@app.callback()
def main_options(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Mostrar o que acontece (log what happens).")
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Tudo, até as bibliotecas (log everything).")
    ] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # mail-parser warns about every unusual part type; our own log says what matters.
    logging.getLogger("mailparser").setLevel(logging.ERROR)
    # Alembic announces its plugins and context at INFO on every command; that is
    # only worth reading when debugging.
    if not debug:
        logging.getLogger("alembic").setLevel(logging.WARNING)


@app.command()
@friendly
def init(
    config: ConfigOption = None,
    force: Annotated[
        bool, typer.Option(help="Sobrescrever a configuração existente (overwrite it).")
    ] = False,
) -> None:
    """Criar a configuração comentada (se faltar) e criar ou atualizar o banco de dados."""
    file = config_path(config)
    if file.exists() and not force:
        out.print(f"configuração (configuration): {file} (mantida, kept)")
    else:
        file.parent.mkdir(parents=True, exist_ok=True)
        example = resources.files("config").joinpath("portaria.example.toml").read_text("utf-8")
        file.write_text(example, encoding="utf-8")
        out.print(f"configuração (configuration): {file} (criada, written)")

    service = open_service(load_settings(file), migrate=True)
    settings = service.settings
    for folder in _local_folders(settings):
        folder.mkdir(parents=True, exist_ok=True)
    out.print(f"banco de dados (database): {service.engine.url.render_as_string()} (atualizado)")
    from engine.unsubscribe import create_secret_key

    if (key_file := create_secret_key(settings)) is not None:
        out.print(f"chave secreta (secret key): {key_file} (criada, written)")
    if settings.mailbox.kind == "maildir":
        out.print(f"caixa de entrada (inbox): {settings.path(settings.mailbox.maildir)} (Maildir)")
    if settings.outbound.kind == "maildir":
        out.print(
            f"e-mails de saída (outgoing): {settings.path(settings.outbound.maildir)} (Maildir)"
        )


def _local_folders(settings: Settings) -> list[Path]:
    folders = []
    if settings.mailbox.kind == "maildir":
        folders += [settings.path(settings.mailbox.maildir) / sub for sub in ("cur", "new", "tmp")]
    if settings.outbound.kind == "maildir":
        folders += [settings.path(settings.outbound.maildir) / s for s in ("cur", "new", "tmp")]
    return folders


@app.command()
@friendly
def poll(
    config: ConfigOption = None,
    once: Annotated[
        bool, typer.Option("--once", help="Ler a caixa uma vez e sair (one pass, then exit).")
    ] = False,
    send: Annotated[
        bool,
        typer.Option(help="Enviar os e-mails da fila depois (send due email after, with --once)."),
    ] = True,
    wait: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Segundos de espera se outro processo estiver lendo ou enviando, com --once "
            "(seconds to wait for another process handling mail, with --once).",
        ),
    ] = BUSY_WAIT_SECONDS,
) -> None:
    """Ler as mensagens #ACESSO novas e enfileirar os pedidos (poll the mailbox)."""
    from intake.poller import Stop, poll_forever, poll_once

    service = service_for(config)
    if once:
        # Poll and send are one cycle under one lock, as in the long-running loops.
        with mail_handling(service, wait=wait):
            report = poll_once(service.sessions, service.settings)
            out.print(f"{report.mailbox}: {report.summary()}")
            if send:
                _send_outbox(service)
        return
    stop = Stop()
    stop.install()
    out.print("lendo a caixa de entrada; Ctrl+C para parar (polling; Ctrl+C to stop)")
    # The lock is taken for each poll and waited for as long as it takes, so
    # commands run by hand get their turn between polls.
    try:
        poll_forever(
            service.sessions,
            service.settings,
            stop,
            guard=lambda: mail_handling(service, wait=None, stop=stop.event),
        )
    except MailHandlingBusy:
        if not stop.event.is_set():
            raise


@app.command()
def parse(
    files: Annotated[
        list[Path], typer.Argument(help="Arquivos de mensagem (.eml) (message files).")
    ],
    as_json: Annotated[
        bool, typer.Option("--json", help="Saída em JSON; JSON Lines para vários arquivos.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Mostrar o que a Portaria entende de mensagens; nada é gravado nem enviado (dry run)."""
    from intake.dry_run import dry_run
    from intake.report import format_report

    try:
        settings = load_settings(config)
    except ConfigError as exc:
        err.print(f"[bold red]erro de configuração (configuration error):[/] {escape(str(exc))}")
        raise typer.Exit(2) from None

    several = len(files) > 1
    failed = False
    for file in files:
        try:
            report = dry_run(file.read_bytes(), settings)
        except OSError as exc:
            reason = f"não foi possível ler o arquivo (cannot read file): {exc.strerror}"
            report = {"outcome": "unreadable", "reason": reason}
            failed = True
        if several:
            report = {"file": str(file), **report}
        if as_json:
            sys.stdout.write(json.dumps(report, ensure_ascii=False) + "\n")
        else:
            if several:
                out.print(Text(str(file), style="bold"))
            text = format_report(report) if "message" in report else _unreadable(report)
            # A bilingual reason can pass 200 columns; one line each, as `status` prints.
            out.print(text, markup=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)


def _unreadable(report: dict[str, Any]) -> str:
    return f"Resultado (result): ilegível (unreadable)\nMotivo (reason): {report['reason']}"


@requests_app.command("list")
@friendly
def requests_list(
    config: ConfigOption = None,
    status: Annotated[
        str | None, typer.Option(help="pending, approved, rejected ou incomplete.")
    ] = None,
) -> None:
    """Listar os pedidos de acesso, do mais antigo ao mais novo."""
    from intake.report import missing_reason
    from provisioning.queue import list_requests

    service = service_for(config)
    with service.sessions() as session:
        requests = list_requests(session, status=status)
        # Two-line headers keep the table narrow. Nothing is cut short: addresses
        # and status words keep one line, names, areas and flags wrap around them.
        table = Table(
            "id",
            Column("situação\n(status)", no_wrap=True, min_width=len("incomplete")),
            Column("nome\n(name)", overflow="fold"),
            Column("e-mail\n(email)", no_wrap=True, overflow="fold"),
            Column("área\n(area)", overflow="fold"),
            Column("acesso\n(access)", no_wrap=True, min_width=len("(access)")),
            Column("sinais\n(flags)", overflow="fold"),
            Column("solicitante\n(requester)", no_wrap=True, overflow="fold"),
        )
        for r in requests:
            table.add_row(
                str(r.id),
                r.status,
                r.name or "-",
                r.email or "-",
                r.area or "-",
                r.access_type or "-",
                ", ".join(r.flags) or (missing_reason(r.missing) if r.missing else ""),
                r.requester_email,
            )
    if not requests:
        out.print("nenhum pedido (no requests)" + (f": {status}" if status else ""))
        return
    out.print(table)


@requests_app.command("show")
@friendly
def requests_show(request_id: int, config: ConfigOption = None) -> None:
    """Ver um pedido, a mensagem de origem e o histórico."""
    from intake.models import InboundMessage
    from portaria.letters import describe_problem
    from provisioning.audit import events_for
    from provisioning.queue import get_request

    service = service_for(config)
    with service.sessions() as session:
        r = get_request(session, request_id)
        source = session.get(InboundMessage, r.source_message_id) if r.source_message_id else None
        fields = {
            "número (id)": r.id,
            "situação (status)": r.status,
            "nome (name)": r.name,
            "e-mail (email)": r.email,
            "área (area)": r.area,
            "acesso (access type)": r.access_type,
            "faltam (missing)": ", ".join(r.missing) or None,
            "problemas (problems)": "; ".join(
                describe_problem(field, problem, "pt-BR") for field, problem in r.problems.items()
            )
            or None,
            "sinais (flags)": ", ".join(r.flags) or None,
            "solicitante (requester)": f"{r.requester_name} <{r.requester_email}>".strip(),
            "mensagem (message)": r.source_message_ref,
            "assunto (subject)": r.source_subject,
            # Why the message was held or incomplete: what the flags stand for.
            "entrada (intake)": f"{source.outcome}: {source.reason}"
            if source and source.reason
            else None,
            "recebido (received)": r.created_at.isoformat(timespec="seconds"),
            "decidido por (decided by)": r.decided_by,
            "decidido em (decided at)": r.decided_at.isoformat(timespec="seconds")
            if r.decided_at
            else None,
            "motivo (reason)": r.reason,
            "usuário (user id)": r.user_id,
        }
        for label, value in fields.items():
            if value not in (None, ""):
                # The intake reason, pt-BR and English, can pass 200 columns: one line each.
                out.print(f"{label:>{LABEL_WIDTH}}: {value}", soft_wrap=True)
        events = events_for(session, "access_request", r.id)
        if events:
            out.print(f"{'histórico (history)':>{LABEL_WIDTH}}:")
            for e in events:
                when = e.at.isoformat(timespec="seconds")
                out.print(
                    f"{'':>{LABEL_WIDTH}}  {when} {e.action} por (by) {e.actor} "
                    + ", ".join(f"{key}={value}" for key, value in (e.detail or {}).items())
                )


@requests_app.command("approve")
@friendly
def requests_approve(
    request_ids: Annotated[
        list[int] | None, typer.Argument(help="Números dos pedidos (request ids).")
    ] = None,
    all_pending: Annotated[
        bool,
        typer.Option(
            "--all-pending",
            help="Todos os pendentes sem sinalização; os sinalizados, pelo número "
            "(every pending request not flagged; flagged ones by id).",
        ),
    ] = False,
    by: Annotated[
        str | None, typer.Option(help="Quem decide (who decides; default cli:<login>).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Aprovar pedidos: cria as contas e avisa o solicitante e cada novo usuário."""
    from provisioning.approvals import approve, check_decider, plan_approval

    if bool(request_ids) == all_pending:
        raise CommandError(
            "informe números de pedido ou --all-pending, um dos dois "
            "(give request ids or --all-pending, not both)"
        )
    service = service_for(config)
    decider = actor(by)
    with service.transaction() as session:
        check_decider(session, decider)
        plan = plan_approval(session, None if all_pending else request_ids)
        approved = approve(session, service.settings, plan.ids, actor=decider) if plan.ids else []
        lines = [f"aprovado (approved) #{r.id}: {r.email} como {r.access_type}" for r in approved]
        lines += [
            f"não aprovado (left out) #{o.request.id} {o.request.email}: {o.reason} — {o.advice}"
            for o in plan.left_out
        ]
    if not lines:
        out.print("nenhum pedido pendente (no pending requests)")
        return
    out.print("\n".join(lines), soft_wrap=True)
    if approved:
        out.print("e-mails na fila; envie com (send with) `portaria outbox send`")
    else:
        out.print("nenhum pedido aprovado (nothing approved)")


@requests_app.command("reject")
@friendly
def requests_reject(
    request_ids: Annotated[list[int], typer.Argument(help="Números dos pedidos (request ids).")],
    reason: Annotated[
        str,
        typer.Option(
            "--reason", help="Motivo; o solicitante vai ler (why; the requester reads it)."
        ),
    ] = "",
    by: Annotated[
        str | None, typer.Option(help="Quem decide (who decides; default cli:<login>).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Recusar pedidos com um motivo; o solicitante é avisado."""
    from provisioning.approvals import reject

    service = service_for(config)
    with service.transaction() as session:
        rejected = reject(session, service.settings, request_ids, actor=actor(by), reason=reason)
        lines = [f"recusado (rejected) #{r.id}: {r.email}" for r in rejected]
    out.print("\n".join(lines))


@users_app.command("list")
@friendly
def users_list(
    config: ConfigOption = None,
    role: Annotated[str | None, typer.Option(help="comum, agente ou admin.")] = None,
) -> None:
    """Listar os usuários."""
    from provisioning.directory import list_users

    service = service_for(config)
    with service.sessions() as session:
        users = list_users(session, role=role)
    if not users:
        out.print("nenhum usuário (no users)")
        return
    table = Table(
        "id",
        "nome\n(name)",
        Column("e-mail\n(email)", no_wrap=True, overflow="fold"),
        Column("área\n(area)", overflow="fold"),
        "perfil\n(role)",
        "ativo\n(active)",
        "senha\n(password)",
        "criado por\n(created via)",
    )
    for u in users:
        table.add_row(
            str(u.id),
            u.name,
            u.email,
            u.area,
            u.role,
            "yes" if u.active else "no",
            "set" if u.password_hash else "not set",
            u.created_via,
        )
    out.print(table)


@users_app.command("add")
@friendly
def users_add(
    name: Annotated[str, typer.Argument(help="Nome completo (full name).")],
    email: Annotated[str, typer.Argument(help="E-mail da pessoa (the person's address).")],
    role: Annotated[str, typer.Option(help="comum, agente ou admin.")],
    area: Annotated[str, typer.Option(help="Área, unidade ou segmento (area).")] = "",
    by: Annotated[str | None, typer.Option(help="Quem cria (who; default cli:<login>).")] = None,
    config: ConfigOption = None,
) -> None:
    """Criar um usuário direto, sem pedido por e-mail; ele recebe o link para definir a senha."""
    from provisioning.approvals import add_user

    service = service_for(config)
    with service.transaction() as session:
        user = add_user(
            session,
            service.settings,
            name=name,
            email=email,
            area=area,
            role=role.strip().lower(),
            actor=actor(by),
        )
        line = f"usuário criado (user created) #{user.id}: {user.email} como {user.role}"
    out.print(line)
    out.print("e-mail de boas-vindas na fila; envie com (send with) `portaria outbox send`")


@users_app.command("deactivate")
@friendly
def users_deactivate(
    email: Annotated[str, typer.Argument(help="E-mail do usuário (the user's address).")],
    by: Annotated[
        str | None, typer.Option(help="Quem desativa (who; default cli:<login>).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Desativar um usuário; o histórico fica."""
    from provisioning.approvals import deactivate_user

    service = service_for(config)
    with service.transaction() as session:
        user = deactivate_user(session, email, actor=actor(by))
        line = f"usuário desativado (deactivated): {user.email}"
    out.print(line)


@outbox_app.command("list")
@friendly
def outbox_list(
    config: ConfigOption = None,
    status: Annotated[str | None, typer.Option(help="pending, sent ou failed.")] = None,
) -> None:
    """Listar os e-mails de saída, o mais novo por último."""
    from portaria.outbox import list_outbox

    service = service_for(config)
    with service.sessions() as session:
        rows = list_outbox(session, status=status)
    if not rows:
        out.print("fila de saída vazia (outbox empty)" + (f": {status}" if status else ""))
        return
    table = Table(
        "id",
        "situação\n(status)",
        "tipo\n(kind)",
        Column("para\n(to)", overflow="fold"),
        Column("assunto\n(subject)", overflow="fold"),
        "tentativas\n(tries)",
        Column("último erro\n(last error)", overflow="fold"),
    )
    for row in rows:
        table.add_row(
            str(row.id),
            row.status,
            row.kind,
            ", ".join(row.recipients),
            row.subject,
            str(row.attempts),
            row.last_error or "",
        )
    out.print(table)


@outbox_app.command("send")
@friendly
def outbox_send(
    config: ConfigOption = None,
    wait: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Segundos de espera se outro processo estiver lendo ou enviando "
            "(seconds to wait for another process handling mail).",
        ),
    ] = BUSY_WAIT_SECONDS,
) -> None:
    """Enviar agora os e-mails que estão na hora."""
    service = service_for(config)
    with mail_handling(service, wait=wait):
        _send_outbox(service)


def _send_outbox(service: Service) -> None:
    from portaria.outbox import send_due

    report = send_due(service.sessions, service.settings)
    where = (
        service.settings.path(service.settings.outbound.maildir)
        if service.settings.outbound.kind == "maildir"
        else f"{service.settings.outbound.host}"
    )
    out.print(
        f"fila de saída (outbox): {report.sent} enviado(s) (sent), {report.retried} para "
        f"tentar de novo (to retry), {report.failed} com falha (failed) — {where}"
    )


@outbox_app.command("bounced")
@friendly
def outbox_bounced(config: ConfigOption = None) -> None:
    """Endereços que devolveram e-mail e não recebem mais respostas automáticas."""
    from sqlalchemy import select

    from portaria.outbox_models import BouncedAddress

    service = service_for(config)
    with service.sessions() as session:
        rows = list(session.scalars(select(BouncedAddress).order_by(BouncedAddress.email)))
    if not rows:
        out.print("nenhum endereço devolvido (no bounced addresses)")
        return
    table = Table(
        Column("e-mail", no_wrap=True, overflow="fold"),
        "devoluções\n(bounces)",
        "última\n(last)",
        Column("motivo\n(reason)", overflow="fold"),
    )
    for row in rows:
        table.add_row(
            row.email, str(row.bounces), row.last_at.isoformat(timespec="minutes"), row.last_reason
        )
    out.print(table)


@outbox_app.command("unbounce")
@friendly
def outbox_unbounce(
    emails: Annotated[list[str], typer.Argument(help="Endereços a liberar (addresses).")],
    config: ConfigOption = None,
) -> None:
    """Voltar a escrever para endereços que devolveram e-mail (depois de corrigidos)."""
    from portaria.outbox import unbounce

    service = service_for(config)
    with service.transaction() as session:
        cleared = unbounce(session, emails)
    out.print(
        f"{len(cleared)} endereço(s) liberado(s) (cleared): {', '.join(cleared)}; "
        "reenvie com (retry with) "
        "`portaria outbox retry`",
        soft_wrap=True,
    )


@outbox_app.command("retry")
@friendly
def outbox_retry(
    ids: Annotated[
        list[int] | None, typer.Argument(help="Números na fila (default: todos os que falharam).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Devolver à fila os e-mails que falharam, para enviar agora."""
    from portaria.outbox import retry

    service = service_for(config)
    with service.transaction() as session:
        count = retry(session, ids or None)
    if not count:
        out.print("nenhum e-mail com falha (no failed email)")
        return
    out.print(f"{count} e-mail(s) de volta à fila; envie com (send with) `portaria outbox send`")


@app.command()
@friendly
def web(
    config: ConfigOption = None,
    host: Annotated[str, typer.Option(help="Endereço (address to listen on).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Porta (port).", min=1, max=65535)] = 8000,
) -> None:
    """Servir o console web (a página de definir senha do e-mail de boas-vindas)."""
    import uvicorn

    from portaria.web import create_app

    uvicorn.run(create_app(service_for(config)), host=host, port=port, log_level="info")


def main() -> None:
    app()
