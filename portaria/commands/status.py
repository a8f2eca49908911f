"""`portaria status`: what the service did lately, what is wrong, and what to do about it.

This module owns the operations view: :func:`read_status` gathers it from
the database (it never talks to the mail servers, so it answers even when
they are down) and :func:`status_command` prints it, as text (pt-BR first,
English in parentheses) or as JSON for monitoring.

Exit status, the contract monitoring relies on:

- 0: nothing needs a person (warnings may be shown);
- 1: at least one problem below needs a person (or the database is not
  ready);
- 2: the configuration cannot be used.

Problems (each printed with what to do):

- ``mailbox_never_polled``: the configured mailbox has never been polled;
- ``mailbox_silent``: no poll for ``service.alert_after_minutes`` (or three
  ``mailbox.poll_interval``, whichever is longer): the poller is not running;
- ``mailbox_failing``: polls fail and have never succeeded, or have failed for
  ``service.alert_after_minutes``
  or longer (a shorter failure is a warning);
- ``outbox_failed``: emails created in the window (``--hours``, 24) that
  failed for good;
- ``outbox_stalled``: emails still being retried ``alert_after_minutes``
  after they were written (a younger retry is a warning);
- ``unreadable_messages`` and ``held_messages``: messages received in the
  window that wait in the needs-attention folder for a person;
- ``pending_requests_waiting``: pending requests older than
  ``--pending-hours`` (24);
- ``rule_runs_failed``: rule runs started in the window that failed or
  partly failed.

Problems tied to the window clear by themselves when it passes; the
others clear when their cause is fixed.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

import typer
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from config.settings import Settings
from engine.models import Rule, RuleRun
from intake.health import failure_advice
from intake.models import MESSAGE_OUTCOMES, InboundMessage, MailboxState
from intake.sources import open_source
from portaria.console import ConfigOption, friendly, out, service_for
from portaria.db import utcnow
from portaria.outbox_models import OutboxMessage
from provisioning.models import AccessRequest

EXIT_OK = 0
EXIT_NEEDS_PERSON = 1

# A healthy poller records a poll at least every poll_interval; missing
# this many in a row means it is not running.
SILENT_POLLS = 3

OUTCOME_LABELS = {
    "request": "pedido (request)",
    "incomplete": "incompleto (incomplete)",
    "ignored": "ignorado (ignored)",
    "held": "retido (held)",
    "unreadable": "ilegível (unreadable)",
    "duplicate": "duplicado (duplicate)",
    "left": "deixado na caixa (left)",
}

Severity = Literal["problem", "warning"]


@dataclass(frozen=True)
class Finding:
    """Something a person should know: what happened and what to do, in pt-BR and English."""

    code: str
    severity: Severity
    pt: str
    en: str
    action_pt: str
    action_en: str


@dataclass(frozen=True)
class MailboxView:
    identity: str
    kind: str
    last_poll_at: datetime | None = None
    last_result: str | None = None
    last_error: str | None = None
    last_success_at: datetime | None = None
    failing_since: datetime | None = None
    alert_sent_at: datetime | None = None


@dataclass(frozen=True)
class UnreadableView:
    id: int
    received_at: datetime
    outcome: str
    sender: str | None
    subject: str | None
    reason: str


@dataclass(frozen=True)
class OutboxFailureView:
    id: int
    kind: str
    status: str
    recipients: list[str]
    attempts: int
    created_at: datetime
    last_error: str | None


@dataclass(frozen=True)
class RuleRunView:
    id: int
    rule: str
    status: str
    started_at: datetime
    errors: int
    first_error: str | None


@dataclass
class StatusReport:
    """Everything `portaria status` shows; ``findings`` decide the exit status."""

    now: datetime
    window_hours: int
    mailbox: MailboxView
    outcomes_all: dict[str, int]
    outcomes_recent: dict[str, int]
    pending_requests: int
    flagged_requests: int
    oldest_pending_at: datetime | None
    outbox: dict[str, int]
    recent_attention: list[UnreadableView] = field(default_factory=list)
    recent_outbox_failures: list[OutboxFailureView] = field(default_factory=list)
    recent_rule_failures: list[RuleRunView] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "problem"]

    @property
    def exit_code(self) -> int:
        return EXIT_NEEDS_PERSON if self.problems else EXIT_OK

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = not self.problems
        data["exit_code"] = self.exit_code
        return _jsonable(data)


def read_status(
    session: Session,
    settings: Settings,
    *,
    now: datetime | None = None,
    window_hours: int = 24,
    pending_hours: int = 24,
    limit: int = 5,
) -> StatusReport:
    """Gather the operations view from the database; ``now`` fixes the clock (tests)."""
    now = now if now is not None else utcnow()
    since = now - timedelta(hours=window_hours)

    mailbox = _mailbox_view(session, settings)
    outcomes_all = _outcome_counts(session, None)
    outcomes_recent = _outcome_counts(session, since)
    pending = list(
        session.execute(
            select(AccessRequest.flags, AccessRequest.created_at).where(
                AccessRequest.status == "pending"
            )
        )
    )
    outbox_counts = _outbox_counts(session, since)

    report = StatusReport(
        now=now,
        window_hours=window_hours,
        mailbox=mailbox,
        outcomes_all=outcomes_all,
        outcomes_recent=outcomes_recent,
        pending_requests=len(pending),
        flagged_requests=sum(1 for flags, _ in pending if flags),
        oldest_pending_at=min((created for _, created in pending), default=None),
        outbox=outbox_counts,
        recent_attention=_recent_attention(session, limit),
        recent_outbox_failures=_recent_outbox_failures(session, limit),
        recent_rule_failures=_recent_rule_failures(session, since, limit),
    )
    stalled_before = now - timedelta(minutes=settings.service.alert_after_minutes)
    stalled = session.scalar(
        select(func.count())
        .select_from(OutboxMessage)
        .where(
            OutboxMessage.status == "pending",
            OutboxMessage.attempts > 0,
            OutboxMessage.created_at <= stalled_before,
        )
    )
    old_pending = sum(
        1 for _, created in pending if created <= now - timedelta(hours=pending_hours)
    )
    report.findings = [
        *_mailbox_findings(settings, mailbox, now),
        *_outbox_findings(report, stalled or 0, settings),
        *_message_findings(settings, outcomes_recent, window_hours),
        *_request_findings(report, old_pending, pending_hours),
        *_rule_findings(report, window_hours),
    ]
    return report


# Gathering


def _mailbox_view(session: Session, settings: Settings) -> MailboxView:
    identity = open_source(settings.mailbox, settings.path).identity
    state = session.get(MailboxState, identity)
    if state is None:
        return MailboxView(identity=identity, kind=settings.mailbox.kind)
    return MailboxView(
        identity=identity,
        kind=settings.mailbox.kind,
        last_poll_at=state.last_poll_at,
        last_result=state.last_result,
        last_error=state.last_error,
        last_success_at=state.last_success_at,
        failing_since=state.failing_since,
        alert_sent_at=state.alert_sent_at,
    )


def _outcome_counts(session: Session, since: datetime | None) -> dict[str, int]:
    statement = select(InboundMessage.outcome, func.count()).group_by(InboundMessage.outcome)
    if since is not None:
        statement = statement.where(InboundMessage.received_at >= since)
    counts = {outcome: 0 for outcome in MESSAGE_OUTCOMES}
    counts.update({outcome: n for outcome, n in session.execute(statement)})
    return counts


def _outbox_counts(session: Session, since: datetime) -> dict[str, int]:
    rows = session.execute(
        select(OutboxMessage.status, OutboxMessage.attempts, OutboxMessage.created_at).where(
            OutboxMessage.status != "sent"
        )
    )
    counts: Counter[str] = Counter(pending=0, retrying=0, failed=0, failed_recent=0)
    for status, attempts, created_at in rows:
        counts[status] += 1
        if status == "pending" and attempts > 0:
            counts["retrying"] += 1
        if status == "failed" and created_at >= since:
            counts["failed_recent"] += 1
    counts["sent"] = (
        session.scalar(
            select(func.count()).select_from(OutboxMessage).where(OutboxMessage.status == "sent")
        )
        or 0
    )
    return dict(counts)


def _recent_attention(session: Session, limit: int) -> list[UnreadableView]:
    rows = session.scalars(
        select(InboundMessage)
        .where(InboundMessage.outcome.in_(("unreadable", "held")))
        .order_by(InboundMessage.id.desc())
        .limit(limit)
    )
    return [
        UnreadableView(
            id=row.id,
            received_at=row.received_at,
            outcome=row.outcome,
            sender=row.sender,
            subject=row.subject,
            reason=row.reason,
        )
        for row in rows
    ]


def _recent_outbox_failures(session: Session, limit: int) -> list[OutboxFailureView]:
    rows = session.scalars(
        select(OutboxMessage)
        .where(
            (OutboxMessage.status == "failed")
            | ((OutboxMessage.status == "pending") & (OutboxMessage.attempts > 0))
        )
        .order_by(OutboxMessage.id.desc())
        .limit(limit)
    )
    return [
        OutboxFailureView(
            id=row.id,
            kind=row.kind,
            status=row.status,
            recipients=list(row.recipients),
            attempts=row.attempts,
            created_at=row.created_at,
            last_error=row.last_error,
        )
        for row in rows
    ]


def _recent_rule_failures(session: Session, since: datetime, limit: int) -> list[RuleRunView]:
    rows = session.execute(
        select(RuleRun, Rule.name)
        .join(Rule, Rule.id == RuleRun.rule_id)
        .where(RuleRun.status.in_(("failed", "partial")), RuleRun.started_at >= since)
        .order_by(RuleRun.id.desc())
        .limit(limit)
    )
    views = []
    for run, name in rows:
        first = run.errors[0].get("error") if run.errors else None
        views.append(
            RuleRunView(
                id=run.id,
                rule=name,
                status=run.status,
                started_at=run.started_at,
                errors=len(run.errors),
                first_error=str(first) if first is not None else None,
            )
        )
    return views


# Deciding what needs a person


def _mailbox_findings(settings: Settings, mailbox: MailboxView, now: datetime) -> list[Finding]:
    alert_after = timedelta(minutes=settings.service.alert_after_minutes)
    silent_after = max(
        alert_after, timedelta(seconds=SILENT_POLLS * settings.mailbox.poll_interval)
    )
    run_it = (
        "inicie `portaria run` (ou `portaria schedule --with-intake`) e veja o log dele",
        "start `portaria run` (or `portaria schedule --with-intake`) and read its log",
    )
    if mailbox.last_poll_at is None:
        return [
            Finding(
                "mailbox_never_polled",
                "problem",
                "a caixa de entrada nunca foi lida",
                "the mailbox has never been polled",
                *run_it,
            )
        ]

    findings = []
    quiet = now - mailbox.last_poll_at
    if quiet >= silent_after:
        findings.append(
            Finding(
                "mailbox_silent",
                "problem",
                f"nenhuma leitura da caixa há {_duration(quiet, 'pt')}; o leitor parou?",
                f"no poll for {_duration(quiet, 'en')}; is the poller running?",
                *run_it,
            )
        )
    if mailbox.last_error is not None:
        start = mailbox.failing_since or mailbox.last_success_at or mailbox.last_poll_at
        failing = now - start
        findings.append(
            Finding(
                "mailbox_failing",
                # A mailbox that has never been read is not a passing hiccup.
                "problem"
                if failing >= alert_after or mailbox.last_success_at is None
                else "warning",
                f"a leitura da caixa falha há {_duration(failing, 'pt')}",
                f"polling has failed for {_duration(failing, 'en')}",
                failure_advice(mailbox.last_error, "pt-BR"),
                failure_advice(mailbox.last_error, "en"),
            )
        )
    return findings


def _outbox_findings(report: StatusReport, stalled: int, settings: Settings) -> list[Finding]:
    findings = []
    failed = report.outbox["failed_recent"]
    if failed:
        findings.append(
            Finding(
                "outbox_failed",
                "problem",
                f"{failed} e-mail(s) falharam de vez nas últimas {report.window_hours} h",
                f"{failed} email(s) failed for good in the last {report.window_hours} h",
                "leia o erro de cada um abaixo (ou `portaria outbox list --status failed`), "
                "corrija o endereço ou as configurações outbound.*, e rode "
                "`portaria outbox retry`",
                "read each error below (or `portaria outbox list --status failed`), fix the "
                "address or the outbound.* settings, then run `portaria outbox retry`",
            )
        )
    retrying = report.outbox["retrying"]
    if retrying:
        minutes = settings.service.alert_after_minutes
        findings.append(
            Finding(
                "outbox_stalled" if stalled else "outbox_retrying",
                "problem" if stalled else "warning",
                f"{retrying} e-mail(s) em nova tentativa"
                + (f", {stalled} há mais de {minutes} min" if stalled else ""),
                f"{retrying} email(s) being retried"
                + (f", {stalled} for over {minutes} min" if stalled else ""),
                "confira o servidor SMTP e as configurações outbound.* (erro abaixo); "
                "depois rode `portaria outbox send`",
                "check the SMTP server and the outbound.* settings (error below); "
                "then run `portaria outbox send`",
            )
        )
    return findings


def _message_findings(
    settings: Settings, outcomes_recent: dict[str, int], window_hours: int
) -> list[Finding]:
    folder = settings.mailbox.attention_folder
    findings = []
    unreadable = outcomes_recent.get("unreadable", 0)
    if unreadable:
        findings.append(
            Finding(
                "unreadable_messages",
                "problem",
                f"{unreadable} mensagem(ns) ilegível(is) nas últimas {window_hours} h",
                f"{unreadable} unreadable message(s) in the last {window_hours} h",
                f"abra a pasta {folder} da caixa, leia o motivo abaixo e trate cada uma à mão "
                "(responda ao remetente ou reenvie uma cópia corrigida)",
                f"open the mailbox's {folder} folder, read the reason below and handle each by "
                "hand (answer the sender or resend a fixed copy)",
            )
        )
    held = outcomes_recent.get("held", 0)
    if held:
        findings.append(
            Finding(
                "held_messages",
                "problem",
                f"{held} mensagem(ns) retida(s) para revisão nas últimas {window_hours} h",
                f"{held} message(s) held for review in the last {window_hours} h",
                f"revise-as na pasta {folder} e em `portaria requests list`; "
                "nada é liberado sem aprovação explícita",
                f"review them in the {folder} folder and `portaria requests list`; "
                "nothing is provisioned without an explicit approval",
            )
        )
    return findings


def _request_findings(report: StatusReport, old: int, pending_hours: int) -> list[Finding]:
    if not old:
        return []
    return [
        Finding(
            "pending_requests_waiting",
            "problem",
            f"{old} pedido(s) pendente(s) há mais de {pending_hours} h",
            f"{old} pending request(s) older than {pending_hours} h",
            "aprove ou recuse: `portaria requests list --status pending`",
            "approve or reject them: `portaria requests list --status pending`",
        )
    ]


def _rule_findings(report: StatusReport, window_hours: int) -> list[Finding]:
    runs = report.recent_rule_failures
    if not runs:
        return []
    names = sorted({run.rule for run in runs})
    return [
        Finding(
            "rule_runs_failed",
            "problem",
            f"execuções de regra com falha nas últimas {window_hours} h: {', '.join(names)}",
            f"rule runs failed in the last {window_hours} h: {', '.join(names)}",
            "veja os erros com `portaria rules history NOME --errors` e corrija a regra",
            "see the errors with `portaria rules history NAME --errors` and fix the rule",
        )
    ]


# Showing


def format_status(report: StatusReport, zone: ZoneInfo) -> str:
    """The report as text for a person: sections, then problems with what to do."""

    def when(value: datetime | None) -> str:
        return "-" if value is None else f"{value.astimezone(zone):%d/%m/%Y %H:%M}"

    mailbox = report.mailbox
    lines = [
        f"Portaria — situação (status) em {when(report.now)} ({zone.key})",
        "",
        f"Caixa de entrada (mailbox): {mailbox.identity}",
    ]
    if mailbox.last_poll_at is None:
        lines.append("  nunca lida (never polled)")
    else:
        result = "falhou (failed)" if mailbox.last_error else "ok"
        lines += [
            f"  última leitura (last poll): {when(mailbox.last_poll_at)}, {result}",
            f"  última leitura ok (last success): {when(mailbox.last_success_at)}",
            f"  resultado (last result): {mailbox.last_result or '-'}",
        ]
        if mailbox.last_error:
            lines.append(f"  erro (error): {mailbox.last_error}")
        if mailbox.failing_since:
            lines.append(f"  falhando desde (failing since): {when(mailbox.failing_since)}")
        if mailbox.alert_sent_at:
            lines.append(f"  alerta enviado (alert sent): {when(mailbox.alert_sent_at)}")

    hours = report.window_hours
    lines += ["", f"Mensagens recebidas (messages): total / últimas {hours} h (last {hours} h)"]
    for outcome, total in report.outcomes_all.items():
        label = OUTCOME_LABELS.get(outcome, outcome)
        lines.append(f"  {label}: {total} / {report.outcomes_recent.get(outcome, 0)}")

    oldest = when(report.oldest_pending_at) if report.oldest_pending_at else "-"
    outbox = report.outbox
    lines += [
        "",
        f"Pedidos pendentes (pending requests): {report.pending_requests}, "
        f"com alerta (flagged): {report.flagged_requests}, mais antigo (oldest): {oldest}",
        f"Fila de e-mails (outbox): {outbox['pending']} a enviar (pending), "
        f"{outbox['retrying']} em nova tentativa (retrying), {outbox['failed']} com falha "
        f"(failed), {outbox['sent']} enviados (sent)",
    ]

    errors = _error_lines(report, when)
    if errors:
        lines += ["", "Erros recentes (recent errors):", *errors]

    problems = report.problems
    warnings = [f for f in report.findings if f.severity == "warning"]
    lines.append("")
    if not problems and warnings:
        lines.append(
            f"Nada precisa de uma pessoa agora, mas veja {len(warnings)} aviso(s) "
            "(nothing needs a person yet; see the warnings)"
        )
    elif not problems:
        lines.append("Tudo certo: nada precisa de uma pessoa (all good: nothing needs a person)")
    else:
        lines.append(f"Precisa de uma pessoa (needs a person): {len(problems)}")
    for finding in [*problems, *warnings]:
        tag = "PROBLEMA (problem)" if finding.severity == "problem" else "aviso (warning)"
        lines += [
            f"  {tag}: {finding.pt} ({finding.en})",
            f"    o que fazer: {finding.action_pt}",
            f"    (what to do: {finding.action_en})",
        ]
    return "\n".join(lines)


def _error_lines(report: StatusReport, when: Callable[[datetime | None], str]) -> list[str]:
    lines = []
    for message in report.recent_attention:
        label = OUTCOME_LABELS.get(message.outcome, message.outcome)
        lines.append(
            f"  mensagem (message) {message.id}, {when(message.received_at)}, {label}, "
            f"de (from) {message.sender or '-'}: {message.reason or '-'}"
        )
    for row in report.recent_outbox_failures:
        state = "falhou (failed)" if row.status == "failed" else "em nova tentativa (retrying)"
        lines.append(
            f"  e-mail {row.id} ({row.kind}) para (to) {', '.join(row.recipients)}, {state} "
            f"após {row.attempts} tentativa(s) (attempts): {row.last_error or '-'}"
        )
    for run in report.recent_rule_failures:
        lines.append(
            f"  regra (rule) {run.rule!r}, execução (run) {run.id}, {when(run.started_at)}, "
            f"{run.status}, {run.errors} erro(s): {run.first_error or '-'}"
        )
    return lines


def _duration(value: timedelta, language: str) -> str:
    minutes = int(value.total_seconds() // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    unit = "dias" if language == "pt" else "days"
    return f"{days} {unit} {hours} h" if hours else f"{days} {unit}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    return value


# The command


@friendly
def status_command(
    config: ConfigOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON para monitoramento (JSON for monitoring).")
    ] = False,
    hours: Annotated[
        int,
        typer.Option(
            "--hours", min=1, help="Janela dos erros recentes, em horas (recent-errors window)."
        ),
    ] = 24,
    pending_hours: Annotated[
        int,
        typer.Option(
            "--pending-hours",
            min=1,
            help="Pedido pendente há mais que isso precisa de alguém (pending too long).",
        ),
    ] = 24,
    limit: Annotated[
        int, typer.Option("--limit", min=1, help="Quantos erros recentes listar (how many).")
    ] = 5,
) -> None:
    """Situação do serviço: leitura da caixa, filas, erros e o que fazer.

    Sai com 1 quando algo precisa de uma pessoa (exits 1 when something needs a
    person): leitura falhando ou parada, e-mails com falha ou travados, mensagens
    ilegíveis ou retidas, pedidos pendentes há muito tempo, regras com falha.
    """
    service = service_for(config)
    with service.sessions() as session:
        report = read_status(
            session, service.settings, window_hours=hours, pending_hours=pending_hours, limit=limit
        )
    if as_json:
        sys.stdout.write(json.dumps(report.as_json(), ensure_ascii=False, indent=2) + "\n")
    else:
        zone = ZoneInfo(service.settings.engine.timezone)
        out.print(format_status(report, zone), markup=False, soft_wrap=True)
    if report.exit_code != EXIT_OK:
        raise typer.Exit(report.exit_code)
