"""The `portaria rules` commands: define, preview, run and follow automation rules,
and the addresses that asked for no rule email (unsubscribes)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import typer
from rich.table import Table
from rich.text import Text
from sqlalchemy.orm import Session

from engine.actions import describe_action
from engine.conditions import condition_from_text, describe_condition, vocabulary
from engine.errors import InvalidRule
from engine.models import Rule, RuleRun
from engine.rule_files import export_rules, import_rules
from engine.rules import (
    create_rule,
    describe_cadence,
    edit_rule,
    get_rule,
    list_rules,
    remove_rule,
    rule_history,
    set_rule_active,
)
from engine.runs import Preview, preview, run_rule
from engine.unsubscribe import unsubscribe, unsubscribed_addresses
from portaria.commands.definition_files import (
    ExportFileOption,
    ImportFileArgument,
    export_definitions,
    print_import_report,
)
from portaria.console import (
    CommandError,
    ConfigOption,
    actor,
    friendly,
    out,
    reference_day,
    service_for,
)
from portaria.db import utcnow
from portaria.outbox import InvalidRecipient, check_recipient

app = typer.Typer(
    help="Regras (rules): condições que escolhem clientes e ações sobre eles.",
    no_args_is_help=True,
)

STATUS_LABELS = {"active": "ativa", "inactive": "inativa"}
RUN_LABELS = {"running": "rodando", "ok": "ok", "partial": "parcial", "failed": "falhou"}

NameArgument = Annotated[str, typer.Argument(help="Nome ou id da regra.")]
EveryOption = Annotated[int | None, typer.Option("--every", help="A cada N unidades.")]
UnitOption = Annotated[
    str | None, typer.Option("--unit", help="minutes, hours, days, weeks ou months.")
]
TimeOption = Annotated[
    str | None, typer.Option("--time", help="Hora do dia, HH:MM (dias, semanas, meses).")
]
ZoneOption = Annotated[
    str | None, typer.Option("--timezone", help="Fuso horário (padrão America/Sao_Paulo).")
]
StartOption = Annotated[
    str | None, typer.Option("--starts", help="Início, hora local: AAAA-MM-DDTHH:MM.")
]
MatchOption = Annotated[
    str | None, typer.Option("--match", help="all (todas as condições) ou any (alguma).")
]
ConditionOption = Annotated[
    list[str] | None,
    typer.Option(
        "--if",
        help="Condição 'CAMPO OPERAÇÃO [VALOR]', repetível; ex.: 'mrr gt 1000', "
        "'custom.plano one_of ouro,prata', 'renewal_date within_next_days 30'.",
    ),
]
PlaybookOption = Annotated[
    str | None, typer.Option("--playbook", help="Ação: carregar este playbook.")
]
CooldownOption = Annotated[
    int | None, typer.Option("--cooldown", help="Dias mínimos entre cargas no mesmo cliente.")
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Ação: CAMPO=VALOR, repetível; datas como +7d ou today."),
]
EmailOption = Annotated[str | None, typer.Option("--email", help="Ação: modelo de e-mail.")]
ToOption = Annotated[
    list[str] | None,
    typer.Option("--to", help="Destinatário: contact, owner ou um e-mail; repetível."),
]


def _local(moment: datetime | None, zone: str) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(ZoneInfo(zone)).strftime("%d/%m/%Y %H:%M")


def _definition(
    session: Session,
    *,
    every: int | None,
    unit: str | None,
    time_of_day: str | None,
    timezone: str | None,
    starts: str | None,
    match: str | None,
    conditions: list[str] | None,
    playbook: str | None,
    cooldown: int | None,
    updates: list[str] | None,
    email: str | None,
    to: list[str] | None,
) -> dict[str, Any]:
    """Only what was given: a rule definition (create) or the changes to one (edit)."""
    definition: dict[str, Any] = {}
    for key, value in (
        ("every", every),
        ("unit", unit),
        ("time_of_day", time_of_day),
        ("timezone", timezone),
        ("starts_at", starts),
        ("match", match),
    ):
        if value is not None:
            definition[key] = value
    if conditions:
        words = vocabulary(session)
        try:
            definition["conditions"] = [condition_from_text(words, c) for c in conditions]
        except ValueError as exc:
            raise CommandError(f"--if: {exc}") from None
    actions: list[dict[str, Any]] = []
    if playbook is not None:
        action: dict[str, Any] = {"kind": "playbook", "playbook": playbook}
        if cooldown:
            action["cooldown_days"] = cooldown
        actions.append(action)
    elif cooldown is not None:
        raise CommandError("--cooldown só vale com --playbook (needs --playbook)")
    if updates:
        values: dict[str, str] = {}
        for item in updates:
            key, separator, value = item.partition("=")
            if not separator or not key.strip():
                raise CommandError(f"--set: use CAMPO=VALOR (FIELD=VALUE): {item!r}")
            values[key.strip()] = value.strip()
        actions.append({"kind": "update", "set": values})
    if email is not None:
        actions.append({"kind": "email", "template": email, "to": to or ["contact"]})
    elif to:
        raise CommandError("--to só vale com --email (needs --email)")
    if actions:
        definition["actions"] = actions
    return definition


@contextmanager
def _refused_rule() -> Iterator[None]:
    """A refused rule as a command error, one problem per line: it often has several."""
    try:
        yield
    except InvalidRule as exc:
        if not exc.problems:
            raise CommandError(str(exc)) from None
        headline = str(exc).split(": ", 1)[0]
        raise CommandError(headline + ":\n  " + "\n  ".join(exc.problems)) from None


@app.command("list")
@friendly
def rules_list(config: ConfigOption = None) -> None:
    """Listar regras, com a próxima execução (hora local da regra)."""
    service = service_for(config)
    with service.sessions() as session:
        rules = list_rules(session)
        rows = []
        for rule in rules:
            last = rule_history(session, rule, limit=1)
            rows.append(
                (
                    str(rule.id),
                    rule.name,
                    STATUS_LABELS.get(rule.status, rule.status),
                    describe_cadence(rule),
                    _local(rule.next_run_at, rule.timezone),
                    RUN_LABELS.get(last[0].status, last[0].status) if last else "-",
                )
            )
    if not rows:
        out.print("nenhuma regra (no rules)")
        return
    table = Table("id", "nome", "situação", "cadência", "próxima", "última execução")
    for row in rows:
        table.add_row(*row)
    out.print(table)


@app.command("show")
@friendly
def rules_show(name: NameArgument, config: ConfigOption = None) -> None:
    """Ver uma regra: cadência, condições, ações e as últimas execuções."""
    service = service_for(config)
    with service.sessions() as session:
        rule = get_rule(session, name)
        _print_rule(rule)
        runs = rule_history(session, rule, limit=5)
    if runs:
        out.print("últimas execuções (latest runs):")
        for run in runs:
            out.print("  " + _run_line(run, rule.timezone), markup=False, soft_wrap=True)


def _print_rule(rule: Rule) -> None:
    state = STATUS_LABELS.get(rule.status, rule.status)
    lines = [
        f"{rule.name} (#{rule.id}, {state})",
        f"  cadência (cadence): {describe_cadence(rule)}",
        f"  início (starts): {_local(rule.starts_at, rule.timezone)}",
        f"  próxima execução (next run): {_local(rule.next_run_at, rule.timezone)}",
        f"  condições (conditions), {'todas' if rule.match == 'all' else 'qualquer uma'}"
        f" ({rule.match}):",
    ]
    lines += [f"    - {describe_condition(c)}" for c in rule.conditions] or [
        "    - nenhuma: todos os clientes (none: every customer)"
    ]
    lines.append("  ações (actions):")
    lines += [f"    {i}. {describe_action(a)}" for i, a in enumerate(rule.actions, 1)]
    for line in lines:
        out.print(line, markup=False, soft_wrap=True)


def _run_line(run: RuleRun, zone: str) -> str:
    status = RUN_LABELS.get(run.status, run.status)
    return (
        f"#{run.id} {_local(run.started_at, zone)} {status} ({run.trigger}): "
        f"{run.matched} cliente(s), {run.actions_done} ação(ões), {len(run.errors)} erro(s)"
    )


@app.command("create")
@friendly
def rules_create(
    name: Annotated[str, typer.Argument(help="Nome da nova regra.")],
    every: EveryOption = None,
    unit: UnitOption = None,
    time_of_day: TimeOption = None,
    timezone: ZoneOption = None,
    starts: StartOption = None,
    match: MatchOption = None,
    conditions: ConditionOption = None,
    playbook: PlaybookOption = None,
    cooldown: CooldownOption = None,
    updates: SetOption = None,
    email: EmailOption = None,
    to: ToOption = None,
    inactive: Annotated[
        bool, typer.Option("--inactive", help="Criar inativa (para ver o preview antes).")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Criar uma regra; para regras longas, prefira um arquivo e `rules import`."""
    service = service_for(config)
    with _refused_rule(), service.transaction() as session:
        definition = _definition(
            session,
            every=every,
            unit=unit,
            time_of_day=time_of_day,
            timezone=timezone,
            starts=starts,
            match=match,
            conditions=conditions,
            playbook=playbook,
            cooldown=cooldown,
            updates=updates,
            email=email,
            to=to,
        )
        definition["name"] = name
        definition["active"] = not inactive
        rule = create_rule(session, definition, default_timezone=service.settings.engine.timezone)
        _print_rule(rule)
    out.print("Regra criada (rule created).")


@app.command("edit")
@friendly
def rules_edit(
    name: NameArgument,
    rename: Annotated[str | None, typer.Option("--rename", help="Novo nome.")] = None,
    every: EveryOption = None,
    unit: UnitOption = None,
    time_of_day: TimeOption = None,
    timezone: ZoneOption = None,
    starts: StartOption = None,
    match: MatchOption = None,
    conditions: ConditionOption = None,
    no_conditions: Annotated[
        bool, typer.Option("--no-conditions", help="Tirar todas as condições.")
    ] = False,
    playbook: PlaybookOption = None,
    cooldown: CooldownOption = None,
    updates: SetOption = None,
    email: EmailOption = None,
    to: ToOption = None,
    no_time: Annotated[bool, typer.Option("--no-time", help="Tirar a hora do dia.")] = False,
    config: ConfigOption = None,
) -> None:
    """Alterar uma regra. --if substitui todas as condições; uma ação substitui todas as ações."""
    service = service_for(config)
    with _refused_rule(), service.transaction() as session:
        changes = _definition(
            session,
            every=every,
            unit=unit,
            time_of_day=time_of_day,
            timezone=timezone,
            starts=starts,
            match=match,
            conditions=conditions,
            playbook=playbook,
            cooldown=cooldown,
            updates=updates,
            email=email,
            to=to,
        )
        if rename is not None:
            changes["name"] = rename
        if no_conditions:
            changes["conditions"] = []
        if no_time:
            changes["time_of_day"] = None
        if not changes:
            raise CommandError("nada a alterar (nothing to change): veja --help")
        rule = edit_rule(session, name, changes)
        _print_rule(rule)
    out.print("Regra alterada (rule changed).")


@app.command("enable")
@friendly
def rules_enable(name: NameArgument, config: ConfigOption = None) -> None:
    """Ativar uma regra: a próxima execução conta a partir de agora."""
    _set_active(name, True, config)


@app.command("disable")
@friendly
def rules_disable(name: NameArgument, config: ConfigOption = None) -> None:
    """Desativar uma regra."""
    _set_active(name, False, config)


def _set_active(name: str, active: bool, config: Path | None) -> None:
    service = service_for(config)
    with _refused_rule(), service.transaction() as session:
        rule = set_rule_active(session, name, active)
        shown = f"{rule.name}: {STATUS_LABELS[rule.status]}"
        following = _local(rule.next_run_at, rule.timezone)
    out.print(shown + (f"; próxima execução (next run) {following}" if active else ""))


@app.command("preview")
@friendly
def rules_preview(
    name: NameArgument,
    today: Annotated[
        str | None, typer.Option("--today", help="Simular este dia (dd/mm/aaaa ou aaaa-mm-dd).")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="Clientes detalhados (0 = todos).")] = 20,
    emails: Annotated[
        bool, typer.Option("--emails", help="Mostrar o texto de cada e-mail.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Quem a regra escolhe hoje e o que cada ação faria; nada é alterado."""
    service = service_for(config)
    with service.sessions() as session:
        rule = get_rule(session, name)
        day = reference_day(today) or utcnow().astimezone(ZoneInfo(rule.timezone)).date()
        with _refused_rule():
            result = preview(session, service.settings, rule, day, limit=limit or None)
        session.rollback()
    _print_preview(result, show_emails=emails)


def _print_preview(result: Preview, *, show_emails: bool) -> None:
    lines = [
        f"Preview de {result.rule!r} em {result.today:%d/%m/%Y} (nada foi alterado; "
        "nothing was changed)",
        f"Clientes escolhidos (matched): {result.matched}",
    ]
    for customer in result.customers:
        lines.append(f"- {customer.code} {customer.name}")
        lines += [f"    {action}" for action in customer.actions]
        for outcome in customer.emails:
            for planned in outcome.recipients:
                if planned.skipped:
                    lines.append(
                        f"    e-mail para {planned.to}: não envia (skip): {planned.skipped}"
                    )
            if outcome.problem:
                lines.append(f"    PROBLEMA no e-mail {outcome.template!r}: {outcome.problem}")
            elif show_emails and not outcome.sending:
                lines.append(f"    e-mail {outcome.template!r}: sem destinatário (no recipient)")
            elif show_emails and outcome.rendered is not None:
                lines.append(f"    Para (to): {outcome.sending[0]}")
                if outcome.reply_to:
                    lines.append(f"    Responder a (Reply-To): {outcome.reply_to}")
                lines.append(f"    Assunto (subject): {outcome.rendered.subject}")
                lines += [f"      | {text}" for text in outcome.rendered.text.splitlines()]
    hidden = result.matched - len(result.customers)
    if hidden > 0:
        lines.append(f"... e mais {hidden} cliente(s) (use --limit 0 para ver todos)")
    if result.problems:
        lines.append(f"{result.problems} problema(s) nos e-mails: corrija o modelo ou os dados.")
    for line in lines:
        out.print(line, markup=False, soft_wrap=True)


@app.command("run")
@friendly
def rules_run(name: NameArgument, config: ConfigOption = None) -> None:
    """Executar uma regra agora (a agenda não muda); os e-mails vão para a fila de saída."""
    service = service_for(config)
    with service.sessions() as session:
        rule = get_rule(session, name)
        rule_id, zone = rule.id, rule.timezone
    run = run_rule(service.sessions, service.settings, rule_id, trigger="manual")
    out.print(_run_line(run, zone), markup=False, soft_wrap=True)
    for error in run.errors[:20]:
        who = error.get("customer") or "regra"
        out.print(f"  {who}: {error['error']}", markup=False, soft_wrap=True)
    out.print("e-mails na fila: envie com `portaria outbox send` ou deixe o `portaria schedule`.")
    if run.status == "failed":
        raise typer.Exit(1)


@app.command("remove")
@friendly
def rules_remove(name: NameArgument, config: ConfigOption = None) -> None:
    """Remover uma regra agora, sem confirmação. O histórico de execuções dela é apagado
    junto (run history is deleted too); as tarefas e playbooks que ela carregou ficam nos
    clientes, e e-mails já na fila ainda saem. Para só parar a regra, use `rules disable`."""
    service = service_for(config)
    with service.transaction() as session:
        removed = remove_rule(session, name)
    out.print(
        f"Regra removida (rule removed): {removed.name} (#{removed.id}); "
        f"{removed.runs} execução(ões) apagada(s) do histórico (runs deleted); "
        f"{removed.loads} carga(s) de playbook continuam nos clientes (loads kept)",
        markup=False,
        soft_wrap=True,
    )


@app.command("unsubscribe")
@friendly
def rules_unsubscribe(
    email: Annotated[str, typer.Argument(help="Endereço que não quer mais e-mails das regras.")],
    by: Annotated[
        str | None, typer.Option("--by", help="Quem registra (who; default cli:<login>).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Descadastrar um endereço (por telefone, por exemplo): nenhuma regra manda mais e-mail."""
    try:
        address = check_recipient(email).lower()
    except InvalidRecipient:
        raise CommandError(
            f"endereço inválido (bad address) {email!r}: use um e-mail como nome@empresa.com.br"
        ) from None
    service = service_for(config)
    with service.transaction() as session:
        added = unsubscribe(session, address, source=actor(by))
    if added:
        out.print(
            f"Descadastrado (unsubscribed): {address}; nenhuma regra enviará e-mail a ele",
            markup=False,
        )
    else:
        out.print(f"Já estava descadastrado (already unsubscribed): {address}", markup=False)


@app.command("unsubscribed")
@friendly
def rules_unsubscribed(config: ConfigOption = None) -> None:
    """Endereços descadastrados, do mais recente: quando e por onde (link ou quem registrou)."""
    service = service_for(config)
    with service.sessions() as session:
        rows = [
            (row.email, _local(row.at, service.settings.engine.timezone), row.source)
            for row in unsubscribed_addresses(session)
        ]
    if not rows:
        out.print("nenhum endereço descadastrado (no unsubscribed addresses)")
        return
    table = Table("e-mail", "quando (when)", "origem (source)")
    for row in rows:
        # Text, not markup: the addresses and sources come from outside.
        table.add_row(*(Text(value) for value in row))
    out.print(table)


@app.command("history")
@friendly
def rules_history(
    name: NameArgument,
    limit: Annotated[int, typer.Option("--limit", help="Quantas execuções.")] = 20,
    errors: Annotated[bool, typer.Option("--errors", help="Listar os erros de cada uma.")] = False,
    config: ConfigOption = None,
) -> None:
    """Execuções de uma regra, da mais recente: quando, quantos clientes, ações e erros."""
    service = service_for(config)
    with service.sessions() as session:
        rule = get_rule(session, name)
        runs = rule_history(session, rule, limit=limit)
        zone = rule.timezone
    if not runs:
        out.print("nenhuma execução (no runs yet)")
        return
    for run in runs:
        out.print(_run_line(run, zone), markup=False, soft_wrap=True)
        if errors:
            for error in run.errors:
                who = error.get("customer") or "regra"
                out.print(f"    {who}: {error['error']}", markup=False, soft_wrap=True)


@app.command("import")
@friendly
def rules_import(file: ImportFileArgument, config: ConfigOption = None) -> None:
    """Importar regras de um arquivo: cria ou substitui por nome; tudo ou nada."""
    service = service_for(config)
    with _refused_rule(), service.transaction() as session:
        report = import_rules(session, file, default_timezone=service.settings.engine.timezone)
    print_import_report(report, created="criada (created)", updated="substituída (replaced)")


@app.command("export")
@friendly
def rules_export(
    names: Annotated[
        list[str] | None, typer.Argument(help="Regras a exportar (padrão: todas).")
    ] = None,
    to: ExportFileOption = Path("regras.toml"),
    config: ConfigOption = None,
) -> None:
    """Exportar regras para um arquivo, com playbooks e modelos pelo nome."""
    written = export_definitions(config, export_rules, names, to)
    out.print(f"{len(written)} regra(s) em (written to) {to}", markup=False)


@app.command("fields")
@friendly
def rules_fields(config: ConfigOption = None) -> None:
    """Campos e operações que as condições podem usar (condition vocabulary)."""
    service = service_for(config)
    with service.sessions() as session:
        fields = list(vocabulary(session).fields.values())
    table = Table("categoria", "campo", "tipo", "descrição", "operações")
    for spec in fields:
        table.add_row(spec.category, spec.name, spec.type, spec.label, ", ".join(spec.operations))
    out.print(table)
