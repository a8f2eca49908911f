"""The scheduler: the loop that runs due rules and the recurring jobs (outbox, intake).

The ``schedule`` library only drives the tick; what is due lives in the
database, so a restart neither skips nor repeats anything:

* a rule is due when ``Rule.next_run_at`` has passed. Each tick claims it
  with a compare-and-set that moves ``next_run_at`` past now in the same
  transaction that records the run's start (``engine.runs.claim_due_run``):
  slots missed while the scheduler was down collapse into one run, and of two
  schedulers only one wins a slot;
* a job (``SchedulerJob`` row by name) is due when its ``next_run_at`` has
  passed; it is claimed the same way, then run, then its result recorded;
* a run recorded as started and never finished is resumed only when its
  heartbeat is older than ``engine.run_lease_minutes``: then the process doing
  it died. A live run (this scheduler's, another scheduler's, or a manual
  ``rules run`` in another process) renews its heartbeat after every batch.
  Each tick looks for such runs; claiming one is a compare-and-set on its
  heartbeat (``engine.runs.claim_stale_run``), so two schedulers never both
  finish it, and its actions are idempotent.

Every rule run done (or resumed) is handed to ``on_run``, so the command can
print one line per run without turning on the whole log.

The clock is injected (``now``), so tests play days forward in a few calls.
A stop event, set by SIGTERM or SIGINT, is checked between steps: the current
step (one rule run, one job) finishes, then the loop returns.

Jobs are plain callables handed in by the composition root: the engine does
not import intake, so ``portaria schedule --with-intake`` builds the intake
job there.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import schedule
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings
from engine.models import Rule, RuleRun, SchedulerJob
from engine.rules import due_rule_ids
from engine.runs import claim_due_run, execute_run, resume_run, stale_run_ids
from portaria.db import transaction, utcnow
from portaria.outbox import send_due

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

DEFAULT_TICK_SECONDS = 10.0
OUTBOX_EVERY = timedelta(seconds=30)


@dataclass(frozen=True)
class Job:
    """A recurring step: ``work(now)`` runs at most once per ``every`` and returns a summary."""

    name: str
    every: timedelta
    work: Callable[[datetime], str]


@dataclass
class TickReport:
    """What one tick did: rule runs and resumed runs (rule id, run id, status), and job
    results by name."""

    runs: list[tuple[int, int, str]] = field(default_factory=list)
    resumed: list[tuple[int, int, str]] = field(default_factory=list)
    jobs: dict[str, str] = field(default_factory=dict)
    stopped: bool = False


@dataclass(frozen=True)
class RunSummary:
    """One rule run as it ended, for a person watching the scheduler."""

    rule_id: int
    rule_name: str
    run_id: int
    status: str
    matched: int
    actions_done: int
    errors: int
    resumed: bool = False


RunObserver = Callable[[RunSummary], None]


def outbox_job(
    sessions: sessionmaker[Session], settings: Settings, every: timedelta = OUTBOX_EVERY
) -> Job:
    """Send the due outbox email."""

    def work(now: datetime) -> str:
        report = send_due(sessions, settings, now=now)
        return f"{report.sent} sent, {report.retried} to retry, {report.failed} failed"

    return Job("outbox", every, work)


class Scheduler:
    """Runs due rules and jobs on each :meth:`tick`; :meth:`run_forever` ticks until stopped."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        *,
        jobs: Sequence[Job] = (),
        now: Clock = utcnow,
        stop: threading.Event | None = None,
        on_run: RunObserver | None = None,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.jobs = list(jobs)
        self.now = now
        self.stop = stop or threading.Event()
        self.on_run = on_run
        self.lease = timedelta(minutes=settings.engine.run_lease_minutes)

    def start(self) -> list[int]:
        """Resume the runs whose process died (stale heartbeat); returns their ids."""
        report = TickReport()
        self._resume_stale(report)
        return [run_id for _, run_id, _ in report.resumed]

    def tick(self) -> TickReport:
        """One pass: stale runs finished, every due rule (one run each), every due job."""
        report = TickReport()
        self._resume_stale(report)
        now = self.now()
        with self.sessions() as session:
            due = due_rule_ids(session, now)
        for rule_id in due:
            if self.stop.is_set():
                report.stopped = True
                return report
            self._run_rule(rule_id, report)
        for job in self.jobs:
            if self.stop.is_set():
                report.stopped = True
                return report
            self._run_job(job, report)
        return report

    def run_forever(self, *, tick_seconds: float = DEFAULT_TICK_SECONDS) -> None:
        """Tick every ``tick_seconds`` (driven by ``schedule``) until the stop event is set."""
        driver = schedule.Scheduler()
        driver.every(tick_seconds).seconds.do(self._tick_safely)
        log.info(
            "scheduler started: tick every %ss, jobs: %s",
            tick_seconds,
            ", ".join(job.name for job in self.jobs) or "none",
        )
        self._tick_safely()
        while not self.stop.is_set():
            driver.run_pending()
            idle = driver.idle_seconds
            wait = tick_seconds if idle is None else min(max(idle, 0.05), tick_seconds)
            self.stop.wait(wait)
        driver.clear()
        log.info("scheduler stopped")

    def _tick_safely(self) -> None:
        try:
            self.tick()
        except Exception:  # a database hiccup must not end a loop meant to run for months
            log.exception("scheduler: tick failed; trying again on the next one")

    def _resume_stale(self, report: TickReport) -> None:
        with self.sessions() as session:
            stale = stale_run_ids(session, now=self.now(), lease=self.lease)
        for run_id in stale:
            if self.stop.is_set():
                report.stopped = True
                return
            try:
                run = resume_run(
                    self.sessions, self.settings, run_id, now=self.now(), lease=self.lease
                )
            except Exception:  # the loop must survive; the run goes stale again and is retried
                log.exception("run %s: could not be resumed", run_id)
                continue
            if run is not None:
                report.resumed.append((run.rule_id, run.id, run.status))
                self._tell(run, resumed=True)

    def _run_rule(self, rule_id: int, report: TickReport) -> None:
        now = self.now()
        try:
            run_id = claim_due_run(self.sessions, rule_id, now=now)
            if run_id is None:
                return
            run = execute_run(self.sessions, self.settings, run_id, now=now)
        except Exception:  # recorded and logged; the other rules still run
            log.exception("rule %s: scheduled run failed", rule_id)
            return
        report.runs.append((rule_id, run.id, run.status))
        self._tell(run, resumed=False)

    def _tell(self, run: RuleRun, *, resumed: bool) -> None:
        if self.on_run is None:
            return
        with self.sessions() as session:
            name = session.scalar(select(Rule.name).where(Rule.id == run.rule_id)) or "?"
        summary = RunSummary(
            rule_id=run.rule_id,
            rule_name=name,
            run_id=run.id,
            status=run.status,
            matched=run.matched,
            actions_done=run.actions_done,
            errors=len(run.errors or []),
            resumed=resumed,
        )
        try:
            self.on_run(summary)
        except Exception:  # a closed terminal must not stop the rules
            log.exception("rule %s run %s: could not report the run", run.rule_id, run.id)

    def _run_job(self, job: Job, report: TickReport) -> None:
        now = self.now()
        if not claim_job(self.sessions, job, now=now):
            return
        try:
            result = job.work(now)
        except Exception as exc:  # a dead SMTP or IMAP server is retried at the next slot
            log.exception("job %s: failed", job.name)
            result = f"error: {type(exc).__name__}: {exc}"
        report.jobs[job.name] = result
        with transaction(self.sessions) as session:
            row = session.get_one(SchedulerJob, job.name)
            row.last_result = result[:2000]
        log.info("job %s: %s", job.name, result)


def claim_job(sessions: sessionmaker[Session], job: Job, *, now: datetime) -> bool:
    """Whether this scheduler may run ``job`` now; the claim moves its next run a step ahead."""
    following = now + job.every
    try:
        with transaction(sessions) as session:
            row = session.get(SchedulerJob, job.name)
            if row is None:
                session.add(SchedulerJob(name=job.name, next_run_at=following, last_run_at=now))
                return True
            if row.next_run_at is not None and row.next_run_at > now:
                return False
            previous = SchedulerJob.next_run_at
            condition = (
                previous.is_(None) if row.next_run_at is None else previous == row.next_run_at
            )
            won = session.execute(
                update(SchedulerJob)
                .where(SchedulerJob.name == job.name, condition)
                .values(next_run_at=following, last_run_at=now)
                .execution_options(synchronize_session=False)
            ).rowcount
            return won == 1
    except IntegrityError:
        # Another scheduler created the row first: the slot is theirs.
        return False


def job_states(session: Session) -> list[SchedulerJob]:
    """Every job the scheduler has run, with its next run and last result."""
    return list(session.scalars(select(SchedulerJob).order_by(SchedulerJob.name)))


def install_stop_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set ``stop``: the current step finishes, then the loop returns."""

    def handle(_signum: int, _frame: object) -> None:
        # Only set the flag: a handler that logs could interleave with a log write.
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, handle)
