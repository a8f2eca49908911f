"""`portaria schedule` and `portaria run`: the long-running processes of the engine.

Two plain functions with Typer-annotated parameters; the CLI registers them as
top-level commands. This is the composition root of the scheduler: it builds
the jobs (outbox, and intake when asked), which the engine cannot import,
and runs each of them under the mail-handling lock (:mod:`portaria.locking`).
Each rule run is printed on standard output as one line (:func:`run_line`),
with or without ``-v``: a person watching the process sees the runs, and the
log level stays for diagnosing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo

import typer
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings
from engine.scheduler import (
    DEFAULT_TICK_SECONDS,
    Job,
    RunSummary,
    Scheduler,
    install_stop_signals,
    outbox_job,
)
from portaria.commands.rules import RUN_LABELS
from portaria.console import ConfigOption, friendly, out, service_for
from portaria.db import utcnow
from portaria.locking import MailHandlingBusy, mail_handling
from portaria.wiring import Service

log = logging.getLogger(__name__)

# How long `portaria run` waits for the intake thread after the scheduler stops.
INTAKE_GRACE_SECONDS = 5.0

TickOption = Annotated[
    float,
    typer.Option("--tick", min=1.0, help="Segundos entre verificações (seconds between checks)."),
]


def intake_job(sessions: sessionmaker[Session], settings: Settings) -> Job:
    """Poll the mailbox once per ``mailbox.poll_interval`` seconds."""
    from intake.poller import poll_once

    def work(_now: object) -> str:
        report = poll_once(sessions, settings)
        return f"{report.mailbox}: {report.summary()}"

    return Job("intake", timedelta(seconds=settings.mailbox.poll_interval), work)


def mail_job(job: Job, service: Service, stop: threading.Event) -> Job:
    """``job`` done under the mail-handling lock, waited for as long as it takes.

    The lock is held for one run of the job only, so commands run by hand get
    their turn between runs. A stop while waiting skips the run; its slot is
    claimed already, so the next start does it.
    """

    def work(now: datetime) -> str:
        try:
            with mail_handling(service, wait=None, stop=stop):
                return job.work(now)
        except MailHandlingBusy:
            if not stop.is_set():
                raise
            return "não executado, parando (skipped: stopping)"

    return Job(job.name, job.every, work)


def run_line(summary: RunSummary, zone: str, at: datetime) -> str:
    """``2026-12-04 08:00:03 regra (rule) #3 'Diária': execução (run) #12 ok; ...``,
    with ``at`` shown in ``zone``."""
    when = at.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S")
    status = RUN_LABELS.get(summary.status, summary.status)
    resumed = " (retomada, resumed)" if summary.resumed else ""
    return (
        f"{when} regra (rule) #{summary.rule_id} {summary.rule_name!r}: execução (run) "
        f"#{summary.run_id}{resumed} {status}; {summary.matched} cliente(s) (matched), "
        f"{summary.actions_done} ação(ões) (actions), {summary.errors} erro(s) (errors)"
    )


def _printer(settings: Settings) -> Callable[[RunSummary], None]:
    def show(summary: RunSummary) -> None:
        line = run_line(summary, settings.engine.timezone, utcnow())
        out.print(line, markup=False, soft_wrap=True)

    return show


@friendly
def schedule_command(
    config: ConfigOption = None,
    with_intake: Annotated[
        bool,
        typer.Option("--with-intake", help="Também ler a caixa de entrada (also poll the inbox)."),
    ] = False,
    tick: TickOption = DEFAULT_TICK_SECONDS,
) -> None:
    """Rodar as regras na hora certa e enviar a fila de e-mails; SIGTERM encerra."""
    service = service_for(config)
    jobs = [outbox_job(service.sessions, service.settings)]
    if with_intake:
        jobs.append(intake_job(service.sessions, service.settings))
    stop = threading.Event()
    jobs = [mail_job(job, service, stop) for job in jobs]
    install_stop_signals(stop)
    scheduler = Scheduler(
        service.sessions,
        service.settings,
        jobs=jobs,
        stop=stop,
        on_run=_printer(service.settings),
    )
    out.print(
        "agendador rodando (scheduler running): "
        + ", ".join(["regras", *(job.name for job in jobs)])
        + "; Ctrl+C para parar"
    )
    scheduler.run_forever(tick_seconds=tick)
    out.print("agendador parado (scheduler stopped)")


@friendly
def run_command(
    config: ConfigOption = None,
    tick: TickOption = DEFAULT_TICK_SECONDS,
) -> None:
    """Ler pedidos da caixa de entrada (IDLE quando houver) e rodar o agendador juntos."""
    from intake.poller import Stop, poll_forever

    service = service_for(config)
    stop = Stop()
    stop.install()

    def intake() -> None:
        try:
            # The lock is taken for each poll, as the outbox job takes it for
            # each pass: the two threads, and commands run by hand, take turns.
            poll_forever(
                service.sessions,
                service.settings,
                stop,
                guard=lambda: mail_handling(service, wait=None, stop=stop.event),
            )
        except Exception as exc:  # without intake the process is half-alive; stop all
            if isinstance(exc, MailHandlingBusy) and stop.event.is_set():
                return  # stopped while waiting for the lock: nothing was started
            log.exception("intake stopped unexpectedly; stopping the scheduler too")
            stop.event.set()

    reader = threading.Thread(target=intake, name="intake", daemon=True)
    reader.start()
    scheduler = Scheduler(
        service.sessions,
        service.settings,
        jobs=[mail_job(outbox_job(service.sessions, service.settings), service, stop.event)],
        stop=stop.event,
        on_run=_printer(service.settings),
    )
    out.print("portaria rodando: entrada, regras e fila de e-mails; Ctrl+C para parar")
    scheduler.run_forever(tick_seconds=tick)
    # The poller notices the stop between polls, but may be sleeping until the
    # next one; its steps are safe to cut (a move owed is made on the next start).
    reader.join(timeout=INTAKE_GRACE_SECONDS)
    out.print("portaria parado (stopped)")
