"""The scheduler: due-time arithmetic (time of day, months, daylight saving), and
restarts with a simulated clock: nothing skipped, nothing run twice, catch-up once."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import engine.runs
from config.settings import load_settings
from engine.calendar import BusinessCalendar
from engine.models import (
    Customer,
    EmailTemplate,
    Playbook,
    PlaybookLoad,
    PlaybookStep,
    Rule,
    RuleRun,
    SchedulerJob,
)
from engine.playbooks import load_playbook
from engine.rules import create_rule, disable_rule, next_due
from engine.runs import RunLease, claim_due_run, claim_stale_run, execute_run
from engine.scheduler import (
    Job,
    RunSummary,
    Scheduler,
    claim_job,
    install_stop_signals,
    outbox_job,
)
from engine.unsubscribe import create_secret_key
from portaria.commands.schedule import run_line
from portaria.wiring import Service, open_service

SAO_PAULO = ZoneInfo("America/Sao_Paulo")
NEW_YORK = ZoneInfo("America/New_York")


def cadence(
    unit: str,
    every: int,
    starts_at: datetime,
    *,
    time_of_day: time | None = None,
    timezone: str = "America/Sao_Paulo",
) -> Rule:
    """A rule as the cadence arithmetic sees it (never stored)."""
    return Rule(
        name="r",
        unit=unit,
        every=every,
        starts_at=starts_at.astimezone(UTC),
        time_of_day=time_of_day,
        timezone=timezone,
    )


def slots(rule: Rule, after: datetime, n: int) -> list[datetime]:
    found = []
    for _ in range(n):
        after = next_due(rule, after)
        found.append(after)
    return found


def local(moment: datetime, zone: ZoneInfo) -> str:
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M %z")


class TestDueTimes:
    START = datetime(2025, 6, 18, 9, 0, tzinfo=SAO_PAULO)  # Wednesday

    def test_daily_at_a_time_of_day(self) -> None:
        rule = cadence("days", 1, self.START, time_of_day=time(8, 0))
        # 08:00 on the start day is before the start: the first slot is the next day.
        assert slots(rule, self.START - timedelta(days=5), 3) == [
            datetime(2025, 6, 19, 11, 0, tzinfo=UTC),
            datetime(2025, 6, 20, 11, 0, tzinfo=UTC),
            datetime(2025, 6, 21, 11, 0, tzinfo=UTC),
        ]

    def test_next_is_strictly_after(self) -> None:
        rule = cadence("days", 2, self.START, time_of_day=time(8, 0))
        slot = datetime(2025, 6, 20, 11, 0, tzinfo=UTC)
        assert next_due(rule, slot - timedelta(microseconds=1)) == slot
        assert next_due(rule, slot) == datetime(2025, 6, 22, 11, 0, tzinfo=UTC)

    def test_daily_without_time_keeps_the_start_time(self) -> None:
        rule = cadence("days", 1, self.START)
        assert next_due(rule, self.START) == datetime(2025, 6, 19, 12, 0, tzinfo=UTC)

    def test_hours_and_minutes_step_in_elapsed_time(self) -> None:
        hours = cadence("hours", 6, self.START)
        assert slots(hours, self.START, 3) == [
            datetime(2025, 6, 18, 18, 0, tzinfo=UTC),
            datetime(2025, 6, 19, 0, 0, tzinfo=UTC),
            datetime(2025, 6, 19, 6, 0, tzinfo=UTC),
        ]
        minutes = cadence("minutes", 15, self.START)
        assert next_due(minutes, self.START + timedelta(minutes=31)) == (
            self.START + timedelta(minutes=45)
        )
        assert next_due(minutes, self.START - timedelta(days=1)) == self.START

    def test_weeks(self) -> None:
        rule = cadence("weeks", 2, self.START, time_of_day=time(9, 0))
        assert slots(rule, self.START, 2) == [
            datetime(2025, 7, 2, 12, 0, tzinfo=UTC),
            datetime(2025, 7, 16, 12, 0, tzinfo=UTC),
        ]

    def test_months_keep_the_day_or_the_last_one(self) -> None:
        start = datetime(2025, 1, 31, 8, 0, tzinfo=SAO_PAULO)
        monthly = cadence("months", 1, start)
        assert [s.astimezone(SAO_PAULO).date() for s in slots(monthly, start, 4)] == [
            date(2025, 2, 28),
            date(2025, 3, 31),
            date(2025, 4, 30),
            date(2025, 5, 31),
        ]
        quarterly = cadence("months", 3, start, time_of_day=time(7, 30))
        assert slots(quarterly, datetime(2025, 6, 1, tzinfo=UTC), 2) == [
            datetime(2025, 7, 31, 10, 30, tzinfo=UTC),
            datetime(2025, 10, 31, 10, 30, tzinfo=UTC),
        ]

    def test_spring_forward_neither_skips_nor_doubles(self) -> None:
        # New York, 10 March 2024: 02:00 jumps to 03:00, so 02:30 does not exist.
        start = datetime(2024, 3, 1, 2, 30, tzinfo=NEW_YORK)
        rule = cadence("days", 1, start, timezone="America/New_York")
        found = slots(rule, datetime(2024, 3, 8, 12, tzinfo=UTC), 4)
        assert [local(s, NEW_YORK) for s in found] == [
            "2024-03-09 02:30 -0500",
            "2024-03-10 03:30 -0400",
            "2024-03-11 02:30 -0400",
            "2024-03-12 02:30 -0400",
        ]

    def test_fall_back_runs_the_repeated_hour_once(self) -> None:
        # New York, 3 November 2024: 01:30 happens twice; the rule runs the first time.
        start = datetime(2024, 10, 1, 1, 30, tzinfo=NEW_YORK)
        rule = cadence("days", 1, start, timezone="America/New_York")
        found = slots(rule, datetime(2024, 11, 1, 12, tzinfo=UTC), 3)
        assert [local(s, NEW_YORK) for s in found] == [
            "2024-11-02 01:30 -0400",
            "2024-11-03 01:30 -0400",
            "2024-11-04 01:30 -0500",
        ]
        assert found[2] - found[1] == timedelta(hours=25)

    def test_sao_paulo_when_it_still_had_daylight_saving(self) -> None:
        # 4 November 2018: midnight jumped to 01:00 in São Paulo.
        start = datetime(2018, 10, 1, 0, 30, tzinfo=SAO_PAULO)
        rule = cadence("days", 1, start)
        found = slots(rule, datetime(2018, 11, 2, 12, tzinfo=UTC), 3)
        assert [local(s, SAO_PAULO) for s in found] == [
            "2018-11-03 00:30 -0300",
            "2018-11-04 01:30 -0200",
            "2018-11-05 00:30 -0200",
        ]

    def test_a_time_marked_second_of_a_repeated_hour_still_runs_on_its_day(self) -> None:
        """Clocks went forward at midnight on 4 Nov 2018 in São Paulo: 00:00 never happened."""
        tz = ZoneInfo("America/Sao_Paulo")
        start = datetime(2018, 11, 2, 0, 0, tzinfo=tz)
        rule = cadence("days", 1, start, time_of_day=time(0, 0, fold=1), timezone=tz.key)
        days = [s.astimezone(tz).date() for s in slots(rule, start - timedelta(seconds=1), 4)]
        assert days == [date(2018, 11, 2), date(2018, 11, 3), date(2018, 11, 4), date(2018, 11, 5)]

    def test_hourly_across_a_change_is_every_elapsed_hour(self) -> None:
        start = datetime(2024, 3, 10, 0, 0, tzinfo=NEW_YORK)
        rule = cadence("hours", 1, start, timezone="America/New_York")
        found = slots(rule, start, 24)
        assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(found))
        assert local(found[-1], NEW_YORK) == "2024-03-11 01:00 -0400"

    @settings(max_examples=60, deadline=None)
    @given(
        first=st.dates(min_value=date(2018, 1, 1), max_value=date(2026, 1, 1)),
        at=st.times(),
        zone=st.sampled_from(["America/New_York", "America/Sao_Paulo", "Europe/Lisbon"]),
    )
    def test_daily_rules_run_once_every_local_day(self, first: date, at: time, zone: str) -> None:
        """Over a year, a daily rule runs on each local day exactly once, whatever the DST."""
        tz = ZoneInfo(zone)
        start = datetime.combine(first, time(0), tzinfo=tz)
        rule = cadence("days", 1, start, time_of_day=at.replace(microsecond=0), timezone=zone)
        found = slots(rule, start - timedelta(seconds=1), 370)
        days = [s.astimezone(tz).date() for s in found]
        assert days == [first + timedelta(days=i) for i in range(370)]
        assert found == sorted(set(found))


class Clock:
    """A clock tests move by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


# Monday 16 June 2025, 07:00 in São Paulo.
DAY0 = datetime(2025, 6, 16, 10, 0, tzinfo=UTC)
EIGHT = timedelta(hours=1)  # 08:00 local is one hour after DAY0


@pytest.fixture
def daily(service: Service) -> Service:
    """Three cards and a rule due every day at 08:00 that loads a playbook onto them."""
    create_secret_key(service.settings)
    with service.transaction() as session:
        playbook = Playbook(name="Acompanhamento", status="active")
        playbook.steps = [PlaybookStep(position=1, name="Ligar", kind="call", business_days=1)]
        session.add(playbook)
        session.add_all(Customer(code=f"C{n}", name=f"Cliente {n}", custom={}) for n in range(3))
        session.add(EmailTemplate(name="Oi", subject="Oi {{ customer.name }}", body_text="oi\n"))
        create_rule(
            session,
            {
                "name": "Diária",
                "time_of_day": "08:00",
                "actions": [{"kind": "playbook", "playbook": "Acompanhamento"}],
            },
            now=DAY0,
        )
    return service


def runs(service: Service) -> list[tuple[datetime | None, str]]:
    with service.sessions() as session:
        rows = session.execute(select(RuleRun.scheduled_for, RuleRun.status).order_by(RuleRun.id))
        return [(scheduled_for, status) for scheduled_for, status in rows]


def next_run(service: Service) -> datetime | None:
    with service.sessions() as session:
        return session.scalar(select(Rule.next_run_at))


def loads(service: Service) -> int:
    with service.sessions() as session:
        return session.scalar(select(func.count(PlaybookLoad.id))) or 0


class TestRestarts:
    def test_nothing_runs_before_it_is_due(self, daily: Service) -> None:
        clock = Clock(DAY0 + EIGHT - timedelta(seconds=1))
        report = Scheduler(daily.sessions, daily.settings, now=clock).tick()
        assert report.runs == []
        assert next_run(daily) == DAY0 + EIGHT

    def test_restart_neither_skips_nor_repeats(self, daily: Service) -> None:
        clock = Clock(DAY0 + EIGHT + timedelta(seconds=5))
        first = Scheduler(daily.sessions, daily.settings, now=clock)
        assert [status for _, _, status in first.tick().runs] == ["ok"]

        # The process dies; a new one starts half a minute later, then keeps ticking.
        second = Scheduler(daily.sessions, daily.settings, now=clock)
        clock.now = DAY0 + EIGHT + timedelta(seconds=30)
        assert second.tick().runs == []
        clock.now = DAY0 + EIGHT + timedelta(days=1) - timedelta(seconds=1)
        assert second.tick().runs == []
        clock.now = DAY0 + EIGHT + timedelta(days=1)
        assert len(second.tick().runs) == 1

        assert runs(daily) == [(DAY0 + EIGHT, "ok"), (DAY0 + EIGHT + timedelta(days=1), "ok")]
        assert next_run(daily) == DAY0 + EIGHT + timedelta(days=2)

    def test_missed_slots_run_once(self, daily: Service) -> None:
        # Down from Monday to Thursday 10:00: three slots missed, one catch-up run.
        clock = Clock(DAY0 + timedelta(days=3, hours=3))
        scheduler = Scheduler(daily.sessions, daily.settings, now=clock)
        assert len(scheduler.tick().runs) == 1
        assert scheduler.tick().runs == []
        assert runs(daily) == [(DAY0 + EIGHT, "ok")]
        assert next_run(daily) == DAY0 + EIGHT + timedelta(days=4)
        assert loads(daily) == 3

    def test_two_schedulers_claim_a_slot_once(self, daily: Service) -> None:
        now = DAY0 + EIGHT
        assert claim_due_run(daily.sessions, 1, now=now) is not None
        assert claim_due_run(daily.sessions, 1, now=now) is None
        clock = Clock(now)
        other = Scheduler(daily.sessions, daily.settings, now=clock)
        other._started = True  # only the claim is under test, not the resume at start
        assert other.tick().runs == []

    def test_an_interrupted_run_is_finished_once_after_restart(self, daily: Service) -> None:
        now = DAY0 + EIGHT
        run_id = claim_due_run(daily.sessions, 1, now=now)
        # The process had committed the first card before it died.
        with daily.transaction() as session:
            first = session.scalar(select(Customer.id).where(Customer.code == "C0"))
            load_playbook(
                session,
                "Acompanhamento",
                first,
                loaded_by="rule:1",
                today=now.astimezone(SAO_PAULO).date(),
                calendar=BusinessCalendar(),
                rule_id=1,
            )
        # Past the 15-minute lease: nothing renewed the heartbeat, its process is gone.
        clock = Clock(now + timedelta(minutes=16))
        scheduler = Scheduler(daily.sessions, daily.settings, now=clock)
        assert scheduler.start() == [run_id]
        assert runs(daily) == [(DAY0 + EIGHT, "ok")]
        assert loads(daily) == 3
        assert scheduler.tick().runs == []

    def test_a_disabled_rule_does_not_run(self, daily: Service) -> None:
        with daily.transaction() as session:
            disable_rule(session, "Diária", now=DAY0)
        clock = Clock(DAY0 + timedelta(days=2))
        assert Scheduler(daily.sessions, daily.settings, now=clock).tick().runs == []
        assert next_run(daily) is None


class TestJobs:
    def test_a_job_runs_once_per_interval_across_restarts(self, daily: Service) -> None:
        calls: list[datetime] = []
        job = Job("eco", timedelta(seconds=30), lambda now: calls.append(now) or "feito")
        clock = Clock(DAY0)
        Scheduler(daily.sessions, daily.settings, jobs=[job], now=clock).tick()
        clock.now = DAY0 + timedelta(seconds=10)
        Scheduler(daily.sessions, daily.settings, jobs=[job], now=clock).tick()
        clock.now = DAY0 + timedelta(seconds=30)
        Scheduler(daily.sessions, daily.settings, jobs=[job], now=clock).tick()
        assert calls == [DAY0, DAY0 + timedelta(seconds=30)]
        with daily.sessions() as session:
            row = session.get_one(SchedulerJob, "eco")
            assert (row.last_run_at, row.next_run_at, row.last_result) == (
                DAY0 + timedelta(seconds=30),
                DAY0 + timedelta(seconds=60),
                "feito",
            )
        assert claim_job(daily.sessions, job, now=DAY0 + timedelta(seconds=59)) is False

    def test_a_failing_job_is_recorded_and_the_tick_goes_on(self, daily: Service) -> None:
        def broken(now: datetime) -> str:
            raise ConnectionError("servidor fora do ar")

        after: list[str] = []
        jobs = [Job("quebrado", timedelta(minutes=1), broken), Job("depois", timedelta(minutes=1),
                lambda now: after.append("ok") or "ok")]  # fmt: skip
        report = Scheduler(daily.sessions, daily.settings, jobs=jobs, now=Clock(DAY0)).tick()
        assert report.jobs == {
            "quebrado": "error: ConnectionError: servidor fora do ar",
            "depois": "ok",
        }
        assert after == ["ok"]

    def test_rule_emails_leave_through_the_outbox_job(self, daily: Service) -> None:
        with daily.transaction() as session:
            session.execute(Customer.__table__.update().values(contact_email="c@exemplo.com.br"))
            create_rule(
                session,
                {
                    "name": "Aviso",
                    "time_of_day": "08:00",
                    "actions": [{"kind": "email", "template": "Oi", "to": ["contact"]}],
                },
                now=DAY0,
            )
        clock = Clock(DAY0 + EIGHT)
        jobs = [outbox_job(daily.sessions, daily.settings)]
        report = Scheduler(daily.sessions, daily.settings, jobs=jobs, now=clock).tick()
        # One email per recipient per run: the three cards share one contact address.
        assert report.jobs == {"outbox": "1 sent, 0 to retry, 0 failed"}
        maildir = daily.settings.path(daily.settings.outbound.maildir) / "new"
        assert len(list(maildir.iterdir())) == 1


@pytest.fixture
def restore_signals() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_sigterm_finishes_the_step_then_stops(daily: Service, restore_signals: None) -> None:
    done: list[str] = []

    def terminate(now: datetime) -> str:
        os.kill(os.getpid(), signal.SIGTERM)
        done.append("terminate")
        return "sinal enviado"

    def never(now: datetime) -> str:
        done.append("never")
        return "não deveria rodar"

    clock = Clock(DAY0 + EIGHT)
    scheduler = Scheduler(
        daily.sessions,
        daily.settings,
        jobs=[Job("a", timedelta(minutes=1), terminate), Job("b", timedelta(minutes=1), never)],
        now=clock,
    )
    install_stop_signals(scheduler.stop)
    scheduler.run_forever(tick_seconds=3600)
    assert done == ["terminate"]
    assert runs(daily) == [(DAY0 + EIGHT, "ok")]


def heartbeat(service: Service, run_id: int) -> tuple[datetime | None, str]:
    with service.sessions() as session:
        run = session.get_one(RuleRun, run_id)
        return run.heartbeat_at, run.status


class TestLeases:
    """A run is resumed only when the process doing it died; never by two processes."""

    NOW = DAY0 + EIGHT

    def test_a_live_run_elsewhere_is_left_alone_until_it_goes_stale(self, daily: Service) -> None:
        # Another process (a scheduler, or `rules run`) claimed the run and is on it.
        run_id = claim_due_run(daily.sessions, 1, now=self.NOW)
        clock = Clock(self.NOW + timedelta(minutes=14))
        scheduler = Scheduler(daily.sessions, daily.settings, now=clock)

        assert scheduler.start() == []
        report = scheduler.tick()
        assert (report.runs, report.resumed) == ([], [])
        assert heartbeat(daily, run_id) == (self.NOW, "running")
        assert loads(daily) == 0

        # Fifteen minutes without a heartbeat: that process is gone; the next tick finishes it.
        clock.now = self.NOW + timedelta(minutes=15, seconds=1)
        assert scheduler.tick().resumed == [(1, run_id, "ok")]
        assert loads(daily) == 3
        assert runs(daily) == [(self.NOW, "ok")]

    def test_the_lease_is_a_setting(self, daily: Service) -> None:
        engine = daily.settings.engine.model_copy(update={"run_lease_minutes": 60})
        settings = daily.settings.model_copy(update={"engine": engine})
        run_id = claim_due_run(daily.sessions, 1, now=self.NOW)
        clock = Clock(self.NOW + timedelta(minutes=59))
        assert Scheduler(daily.sessions, settings, now=clock).start() == []
        clock.now = self.NOW + timedelta(minutes=61)
        assert Scheduler(daily.sessions, settings, now=clock).start() == [run_id]

    def test_each_batch_renews_the_heartbeat(
        self, daily: Service, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(engine.runs, "BATCH_SIZE", 1)
        seen: list[datetime | None] = []
        act = engine.runs._act_on_batch

        def watching(session: Session, *args: Any) -> None:
            seen.append(session.get_one(RuleRun, 1).heartbeat_at)
            act(session, *args)

        monkeypatch.setattr(engine.runs, "_act_on_batch", watching)
        run_id = claim_due_run(daily.sessions, 1, now=self.NOW)
        execute_run(daily.sessions, daily.settings, run_id, now=self.NOW)

        assert len(seen) == 3
        assert all(beat is not None and beat > self.NOW for beat in seen)
        assert seen == sorted(seen)
        final, status = heartbeat(daily, run_id)
        assert status == "ok" and final is not None and final >= seen[-1]
        assert final - self.NOW < timedelta(minutes=1)

    def test_two_processes_claim_a_stale_run_once(self, daily: Service) -> None:
        run_id = claim_due_run(daily.sessions, 1, now=self.NOW)
        later = self.NOW + timedelta(minutes=20)
        lease = timedelta(minutes=15)
        other = open_service(daily.settings)  # its own engine and connections

        assert claim_stale_run(daily.sessions, run_id, now=later, lease=lease) is True
        assert claim_stale_run(other.sessions, run_id, now=later, lease=lease) is False
        assert heartbeat(daily, run_id) == (later, "running")
        other.engine.dispose()

    def test_two_schedulers_starting_together_finish_a_run_once(self, daily: Service) -> None:
        run_id = claim_due_run(daily.sessions, 1, now=self.NOW)
        clock = Clock(self.NOW + timedelta(minutes=20))
        services = [open_service(daily.settings) for _ in range(2)]
        together = threading.Barrier(2)
        resumed: list[list[int]] = []

        def start(service: Service) -> None:
            scheduler = Scheduler(service.sessions, service.settings, now=clock)
            together.wait()
            resumed.append(scheduler.start())

        threads = [threading.Thread(target=start, args=(s,)) for s in services]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)

        assert sorted(resumed) == [[], [run_id]]
        assert loads(daily) == 3
        assert runs(daily) == [(self.NOW, "ok")]
        for service in services:
            service.engine.dispose()

    def test_a_process_that_lost_its_run_writes_nothing_more(
        self, daily: Service, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A stalls past the lease after its first batch; B takes the run over and ends it."""
        monkeypatch.setattr(engine.runs, "BATCH_SIZE", 1)
        run_id = claim_due_run(daily.sessions, 1, now=self.NOW)
        taken_at = self.NOW + timedelta(minutes=20)
        process_b = open_service(daily.settings)
        renew = engine.runs.RunLease.renew
        claims: list[bool] = []

        def stalled_before_the_second_batch(lease: RunLease, session: Session) -> bool:
            if lease.value != self.NOW and not claims:
                # A's first batch is committed; while A stalls, B finds the run stale.
                claims.append(
                    claim_stale_run(
                        process_b.sessions, run_id, now=taken_at, lease=timedelta(minutes=15)
                    )
                )
            return renew(lease, session)

        monkeypatch.setattr(engine.runs.RunLease, "renew", stalled_before_the_second_batch)
        stopped = execute_run(daily.sessions, daily.settings, run_id, now=self.NOW)

        assert claims == [True]
        assert (stopped.status, stopped.finished_at, stopped.heartbeat_at) == (
            "running",
            None,
            taken_at,
        )
        assert loads(daily) == 1

        monkeypatch.setattr(engine.runs.RunLease, "renew", renew)
        finished = execute_run(process_b.sessions, daily.settings, run_id, now=taken_at)
        assert (finished.status, finished.actions_done) == ("ok", 3)
        assert loads(daily) == 3
        with daily.sessions() as session:
            per_card = session.execute(
                select(PlaybookLoad.customer_id, func.count()).group_by(PlaybookLoad.customer_id)
            ).all()
        assert [n for _, n in per_card] == [1, 1, 1]
        process_b.engine.dispose()


class TestRunReports:
    def test_each_run_is_handed_to_on_run(self, daily: Service) -> None:
        seen: list[RunSummary] = []
        clock = Clock(DAY0 + EIGHT)
        Scheduler(daily.sessions, daily.settings, now=clock, on_run=seen.append).tick()
        assert seen == [
            RunSummary(
                rule_id=1,
                rule_name="Diária",
                run_id=1,
                status="ok",
                matched=3,
                actions_done=3,
                errors=0,
                resumed=False,
            )
        ]

    def test_the_printed_line(self) -> None:
        summary = RunSummary(1, "Diária", 7, "partial", 3, 2, 1, resumed=True)
        assert run_line(summary, "America/Sao_Paulo", DAY0 + EIGHT) == (
            "2025-06-16 08:00:00 regra (rule) #1 'Diária': execução (run) #7 (retomada, resumed) "
            "parcial; 3 cliente(s) (matched), 2 ação(ões) (actions), 1 erro(s) (errors)"
        )


def portaria_command() -> str:
    command = shutil.which("portaria", path=str(Path(sys.executable).parent))
    assert command, "the portaria command is not installed next to this Python"
    return command


@pytest.fixture
def configured(tmp_path: Path) -> Path:
    """A folder after `portaria init`, with the daily rule due since an hour ago."""
    config = tmp_path / "portaria.toml"
    config.write_text('[database]\nurl = "sqlite:///portaria.db"\n', encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTARIA")}
    done = subprocess.run(
        [portaria_command(), "init", "--config", str(config)],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    service = open_service(load_settings(config))
    with service.transaction() as session:
        playbook = Playbook(name="Acompanhamento", status="active")
        playbook.steps = [PlaybookStep(position=1, name="Ligar", kind="call", business_days=1)]
        session.add(playbook)
        session.add_all(Customer(code=f"C{n}", name=f"Cliente {n}", custom={}) for n in range(3))
        rule = create_rule(
            session,
            {"name": "Diária", "actions": [{"kind": "playbook", "playbook": "Acompanhamento"}]},
        )
        rule.next_run_at = datetime.now(UTC) - timedelta(hours=1)
    service.engine.dispose()
    return config


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PORTARIA")}


def test_schedule_prints_each_run_without_verbose(configured: Path) -> None:
    process = subprocess.Popen(
        [portaria_command(), "schedule", "--config", str(configured), "--tick", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(),
    )  # fmt: skip
    watchdog = threading.Timer(60, process.kill)
    watchdog.start()
    assert process.stdout is not None
    lines = [process.stdout.readline(), process.stdout.readline()]
    process.send_signal(signal.SIGTERM)
    rest, errors = process.communicate(timeout=60)
    watchdog.cancel()

    assert process.returncode == 0
    assert lines[0] == "agendador rodando (scheduler running): regras, outbox; Ctrl+C para parar\n"
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d regra \(rule\) #1 'Diária': execução \(run\) #1 ok; "
        r"3 cliente\(s\) \(matched\), 3 ação\(ões\) \(actions\), 0 erro\(s\) \(errors\)\n",
        lines[1],
    )
    assert rest == "agendador parado (scheduler stopped)\n"
    assert errors == ""


def test_verbose_leaves_alembic_out_and_debug_brings_it_back(configured: Path) -> None:
    def stderr_of(*options: str) -> str:
        done = subprocess.run(
            [portaria_command(), *options, "rules", "list", "--config", str(configured)],
            capture_output=True, text=True, timeout=60, env=clean_env(),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stderr

    assert "alembic" not in stderr_of("-v")
    assert "INFO alembic.runtime.migration: Context impl SQLiteImpl." in stderr_of("--debug")
