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
from rich.table import Table

from config.settings import ConfigError, Settings, config_path, load_settings
from portaria.commands import customers, playbooks, rules, schedule, tasks, templates
from portaria.console import (
    CommandError,
    ConfigOption,
    actor,
    err,
    friendly,
    out,
    service_for,
)
from portaria.wiring import Service, open_service

app = typer.Typer(
    name="portaria",
    help="Portaria: pedidos de acesso #ACESSO por email (access requests by email).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
requests_app = typer.Typer(
    help="Access requests: list, show, approve, reject.", no_args_is_help=True
)
users_app = typer.Typer(help="The users directory.", no_args_is_help=True)
outbox_app = typer.Typer(help="Outgoing email: list, send, retry.", no_args_is_help=True)
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


@app.callback()
def main_options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # mail-parser warns about every unusual part type; our own log says what matters.
    logging.getLogger("mailparser").setLevel(logging.ERROR)


@app.command()
@friendly
def init(
    config: ConfigOption = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing configuration file.")] = False,
) -> None:
    """Write a commented starter configuration (if missing) and create or migrate the database."""
    file = config_path(config)
    if file.exists() and not force:
        out.print(f"configuration: {file} (kept)")
    else:
        file.parent.mkdir(parents=True, exist_ok=True)
        example = resources.files("config").joinpath("portaria.example.toml").read_text("utf-8")
        file.write_text(example, encoding="utf-8")
        out.print(f"configuration: {file} (written)")

    service = open_service(load_settings(file), migrate=True)
    settings = service.settings
    for folder in _local_folders(settings):
        folder.mkdir(parents=True, exist_ok=True)
    out.print(f"database: {service.engine.url.render_as_string()} (up to date)")
    if settings.mailbox.kind == "maildir":
        out.print(f"inbox: {settings.path(settings.mailbox.maildir)} (Maildir)")
    if settings.outbound.kind == "maildir":
        out.print(f"outgoing mail: {settings.path(settings.outbound.maildir)} (Maildir)")


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
        bool, typer.Option("--once", help="One pass over the inbox, then exit.")
    ] = False,
    send: Annotated[
        bool, typer.Option(help="Send due outbox email after each pass (with --once).")
    ] = True,
) -> None:
    """Read new #ACESSO messages from the mailbox and queue their requests."""
    from intake.poller import Stop, poll_forever, poll_once

    service = service_for(config)
    if once:
        report = poll_once(service.sessions, service.settings)
        out.print(f"{report.mailbox}: {report.summary()}")
        if send:
            _send_outbox(service)
        return
    stop = Stop()
    stop.install()
    out.print("polling; Ctrl+C to stop")
    poll_forever(service.sessions, service.settings, stop)


@app.command()
def parse(
    files: Annotated[list[Path], typer.Argument(help="Message files (.eml) to read.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON (JSON Lines for several).")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Show what Portaria would make of message files. A dry run: nothing is stored or sent."""
    from intake.errors import IntakeError
    from intake.report import format_report, parse_report

    tag = "#ACESSO"
    try:
        if config is not None or config_path(None).exists():
            tag = load_settings(config).service.tag
    except ConfigError as exc:
        err.print(f"configuration error: {exc}")
        raise typer.Exit(2) from None

    several = len(files) > 1
    failed = False
    for file in files:
        try:
            report = parse_report(file.read_bytes(), tag=tag)
        except OSError as exc:
            report = {"outcome": "unreadable", "reason": f"cannot read file: {exc.strerror}"}
            failed = True
        except IntakeError as exc:
            report = {"outcome": "unreadable", "reason": str(exc)}
        if several:
            report = {"file": str(file), **report}
        if as_json:
            sys.stdout.write(json.dumps(report, ensure_ascii=False) + "\n")
        else:
            if several:
                out.print(f"[bold]{escape(str(file))}[/]")
            text = format_report(report) if "message" in report else _unreadable(report)
            out.print(text, markup=False)
    if failed and not several:
        raise typer.Exit(1)


def _unreadable(report: dict[str, Any]) -> str:
    return f"Resultado (outcome): ilegível (unreadable)\nMotivo (reason): {report['reason']}"


@requests_app.command("list")
@friendly
def requests_list(
    config: ConfigOption = None,
    status: Annotated[
        str | None, typer.Option(help="pending, approved, rejected or incomplete.")
    ] = None,
) -> None:
    """List access requests, oldest first."""
    from provisioning.queue import list_requests

    service = service_for(config)
    with service.sessions() as session:
        requests = list_requests(session, status=status)
        table = Table("id", "status", "name", "email", "area", "access", "flags", "requester")
        for r in requests:
            table.add_row(
                str(r.id),
                r.status,
                r.name or "-",
                r.email or "-",
                r.area or "-",
                r.access_type or "-",
                ", ".join(r.flags) or ("missing: " + ", ".join(r.missing) if r.missing else ""),
                r.requester_email,
            )
    if not requests:
        out.print("no requests" + (f" with status {status}" if status else ""))
        return
    out.print(table)


@requests_app.command("show")
@friendly
def requests_show(request_id: int, config: ConfigOption = None) -> None:
    """Show one request, its source message and its history."""
    from provisioning.audit import events_for
    from provisioning.queue import get_request

    service = service_for(config)
    with service.sessions() as session:
        r = get_request(session, request_id)
        fields = {
            "id": r.id,
            "status": r.status,
            "name": r.name,
            "email": r.email,
            "area": r.area,
            "access type": r.access_type,
            "missing": ", ".join(r.missing) or None,
            "flags": ", ".join(r.flags) or None,
            "requester": f"{r.requester_name} <{r.requester_email}>".strip(),
            "message": r.source_message_ref,
            "subject": r.source_subject,
            "received": r.created_at.isoformat(timespec="seconds"),
            "decided by": r.decided_by,
            "decided at": r.decided_at.isoformat(timespec="seconds") if r.decided_at else None,
            "reason": r.reason,
            "user id": r.user_id,
        }
        for label, value in fields.items():
            if value not in (None, ""):
                out.print(f"{label:>12}: {value}")
        events = events_for(session, "access_request", r.id)
        if events:
            out.print("     history:")
            for e in events:
                when = e.at.isoformat(timespec="seconds")
                out.print(f"              {when} {e.action} by {e.actor} {e.detail or ''}")


@requests_app.command("approve")
@friendly
def requests_approve(
    request_ids: Annotated[list[int] | None, typer.Argument(help="Request ids.")] = None,
    all_pending: Annotated[
        bool, typer.Option("--all-pending", help="Every pending request.")
    ] = False,
    by: Annotated[str | None, typer.Option(help="Who decides (default: cli:<login>).")] = None,
    config: ConfigOption = None,
) -> None:
    """Approve requests: create the accounts and email the requester and each new user."""
    from provisioning.approvals import approve
    from provisioning.queue import pending_ids

    if bool(request_ids) == all_pending:
        raise CommandError("give request ids or --all-pending, not both and not neither")
    service = service_for(config)
    with service.transaction() as session:
        ids = pending_ids(session) if all_pending else request_ids or []
        if not ids:
            out.print("no pending requests")
            return
        approved = approve(session, service.settings, ids, actor=actor(by))
        lines = [f"approved #{r.id}: {r.email} as {r.access_type}" for r in approved]
    out.print("\n".join(lines))
    out.print("emails queued; send them with `portaria outbox send`")


@requests_app.command("reject")
@friendly
def requests_reject(
    request_ids: Annotated[list[int], typer.Argument(help="Request ids.")],
    reason: Annotated[str, typer.Option("--reason", help="Why; the requester reads it.")] = "",
    by: Annotated[str | None, typer.Option(help="Who decides (default: cli:<login>).")] = None,
    config: ConfigOption = None,
) -> None:
    """Reject requests with a reason; the requester is told."""
    from provisioning.approvals import reject

    service = service_for(config)
    with service.transaction() as session:
        rejected = reject(session, service.settings, request_ids, actor=actor(by), reason=reason)
        lines = [f"rejected #{r.id}: {r.email}" for r in rejected]
    out.print("\n".join(lines))


@users_app.command("list")
@friendly
def users_list(
    config: ConfigOption = None,
    role: Annotated[str | None, typer.Option(help="comum, agente or admin.")] = None,
) -> None:
    """List the users directory."""
    from provisioning.directory import list_users

    service = service_for(config)
    with service.sessions() as session:
        users = list_users(session, role=role)
    if not users:
        out.print("no users")
        return
    table = Table("id", "name", "email", "area", "role", "active", "password", "created via")
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


@outbox_app.command("list")
@friendly
def outbox_list(
    config: ConfigOption = None,
    status: Annotated[str | None, typer.Option(help="pending, sent or failed.")] = None,
) -> None:
    """List outgoing email, newest last."""
    from portaria.outbox import list_outbox

    service = service_for(config)
    with service.sessions() as session:
        rows = list_outbox(session, status=status)
    if not rows:
        out.print("outbox empty" + (f" for status {status}" if status else ""))
        return
    table = Table("id", "status", "kind", "to", "subject", "tries", "last error")
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
def outbox_send(config: ConfigOption = None) -> None:
    """Send every email that is due now."""
    _send_outbox(service_for(config))


def _send_outbox(service: Service) -> None:
    from portaria.outbox import send_due

    report = send_due(service.sessions, service.settings)
    where = (
        service.settings.path(service.settings.outbound.maildir)
        if service.settings.outbound.kind == "maildir"
        else f"{service.settings.outbound.host}"
    )
    out.print(
        f"outbox: {report.sent} sent, {report.retried} to retry, {report.failed} failed ({where})"
    )


@outbox_app.command("retry")
@friendly
def outbox_retry(
    ids: Annotated[
        list[int] | None, typer.Argument(help="Outbox ids (default: every failed).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Put failed emails back in the queue to be sent now."""
    from portaria.outbox import retry

    service = service_for(config)
    with service.transaction() as session:
        count = retry(session, ids or None)
    out.print(f"{count} email(s) queued again; send with `portaria outbox send`")


@app.command()
@friendly
def web(
    config: ConfigOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Serve the web console (the set-password page the welcome email links to)."""
    import uvicorn

    from portaria.web import create_app

    uvicorn.run(create_app(service_for(config)), host=host, port=port, log_level="info")


def main() -> None:
    app()
