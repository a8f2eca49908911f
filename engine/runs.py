"""Rule previews and runs: who a rule matches and what its actions do to them.

This module owns:

* :func:`preview`: who matches and what each action would do, changing nothing;
* runs: :func:`run_rule` records a ``RuleRun`` (start, end, matched, actions
  done, per-customer errors). Customers are handled in batches, each batch in
  a transaction; when something in a batch fails, the batch is redone one
  customer per savepoint, so one customer's failure is recorded and the run
  goes on. Every action is idempotent (``engine.actions``), so a run
  interrupted by a crash can be resumed (:func:`resume_run`) without doing
  anything twice;
* heartbeats: a run is held by one process at a time through its heartbeat
  (``RuleRun.heartbeat_at``): whoever claims a run (:func:`claim_due_run`,
  :func:`claim_stale_run`) writes it, every batch renews it by compare-and-set
  (:class:`RunLease`) and stops when another process has taken the run over,
  and only a run whose heartbeat is older than ``engine.run_lease_minutes``
  may be claimed again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from time import monotonic
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings
from engine.actions import (
    Action,
    EmailOutcome,
    PlaybookAction,
    RecipientLedger,
    RunContext,
    UpdateAction,
    batches,
    bind_actions,
    card_owners,
    describe_action,
)
from engine.conditions import condition_clause, describe_condition
from engine.errors import EngineError, RuleNotDue
from engine.models import Customer, Rule, RuleRun
from engine.rules import check_runnable, get_rule, next_due
from engine.unsubscribe import UnsubscribeLinks, unsubscribe_links
from portaria.db import transaction, utcnow

log = logging.getLogger(__name__)

# Customers per transaction in a run: small enough that a busy SQLite file
# still lets the poller write between batches.
BATCH_SIZE = 200


# Preview ---------------------------------------------------------------------------------


@dataclass
class CustomerPreview:
    """What a run would do to one matched customer."""

    customer_id: int
    code: str
    name: str
    actions: list[str] = field(default_factory=list)
    emails: list[EmailOutcome] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return [e.problem for e in self.emails if e.problem]


@dataclass
class Preview:
    """Who a rule matches today and what each action would do; nothing was changed."""

    rule: str
    today: date
    matched: int
    customers: list[CustomerPreview]
    conditions: list[str]
    actions: list[str]

    @property
    def problems(self) -> int:
        return sum(len(c.problems) for c in self.customers)


def preview(
    session: Session,
    settings: Settings,
    rule: int | str | Rule,
    today: date,
    *,
    limit: int | None = None,
) -> Preview:
    """Play a run forward without writing: matched customers and each action's outcome.

    ``limit`` caps how many customers are detailed (the count is always full).
    Emails are rendered for every detailed customer; undefined variables are
    reported per customer in ``CustomerPreview.problems``.
    """
    found = get_rule(session, rule)
    check_runnable(session, found)
    actions = bind_actions(session, found)
    clause = condition_clause(session, found.conditions, match=found.match, today=today)
    ids = list(session.scalars(select(Customer.id).where(clause).order_by(Customer.id)))
    shown = ids if limit is None else ids[:limit]
    context = RunContext(
        rule=found,
        settings=settings,
        today=today,
        now=utcnow(),
        ledger=RecipientLedger.load(
            session, cap=settings.engine.email_cap_per_recipient_per_day, today=today, run_id=None
        ),
    )
    blocked = {
        a.index: a.blocked(session, shown, today) for a in actions if isinstance(a, PlaybookAction)
    }
    result = Preview(
        rule=found.name,
        today=today,
        matched=len(ids),
        customers=[],
        conditions=[describe_condition(c) for c in found.conditions],
        actions=[describe_action(a) for a in found.actions],
    )
    needs_cards = any(not isinstance(a, PlaybookAction) for a in actions)
    for chunk in batches(shown, 500):
        if needs_cards:
            customers = _customers(session, chunk)
        else:
            rows = session.execute(
                select(Customer.id, Customer.code, Customer.name).where(Customer.id.in_(chunk))
            )
            customers = [Customer(id=i, code=c, name=n) for i, c, n in rows]
        owners = card_owners(session, customers) if needs_cards else {}
        for customer in customers:
            entry = CustomerPreview(customer.id, customer.code, customer.name)
            for action in actions:
                if isinstance(action, PlaybookAction):
                    entry.actions.append(
                        action.preview(session, context, customer, blocked[action.index])
                    )
                elif isinstance(action, UpdateAction):
                    entry.actions.append(action.preview(session, context, customer))
                else:
                    outcome = action.preview(
                        session, context, customer, owners.get(customer.owner_id)
                    )
                    entry.emails.append(outcome)
                    sending = outcome.sending
                    entry.actions.append(
                        f"e-mail {action.template.name!r}: "
                        + (f"para (to) {', '.join(sending)}" if sending else "ninguém (nobody)")
                    )
            result.customers.append(entry)
    log.info("rule %s preview for %s: %s matched", found.id, today, len(ids))
    return result


def _customers(session: Session, ids: Sequence[int]) -> list[Customer]:
    rows = session.scalars(select(Customer).where(Customer.id.in_(ids)))
    by_id = {c.id: c for c in rows}
    return [by_id[i] for i in ids if i in by_id]


# Runs ------------------------------------------------------------------------------------


class _ActionFailed(Exception):
    def __init__(self, index: int, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.index = index
        self.cause = cause


@dataclass
class _Tally:
    actions_done: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)


def run_rule(
    sessions: sessionmaker[Session],
    settings: Settings,
    rule_id: int,
    *,
    now: datetime | None = None,
    trigger: str = "manual",
) -> RuleRun:
    """Run a rule now and return its recorded run.

    ``trigger="schedule"`` first claims the rule's due slot (see
    :func:`claim_due_run`) and raises RuleNotDue when the rule is not due or
    another scheduler claimed it; a manual run leaves the schedule alone.
    """
    now = now or utcnow()
    if trigger == "schedule":
        run_id = claim_due_run(sessions, rule_id, now=now)
        if run_id is None:
            raise RuleNotDue(f"regra {rule_id} não está devida (rule not due)")
    else:
        with transaction(sessions) as session:
            found = get_rule(session, rule_id)
            run = RuleRun(
                rule_id=found.id,
                trigger="manual",
                started_at=now,
                heartbeat_at=now,
                status="running",
            )
            session.add(run)
            found.last_run_at = now
            session.flush()
            run_id = run.id
    return execute_run(sessions, settings, run_id, now=now)


def claim_due_run(sessions: sessionmaker[Session], rule_id: int, *, now: datetime) -> int | None:
    """Claim a due rule: advance ``next_run_at`` past now and record the run start, at once.

    The update only applies while ``next_run_at`` still holds the value read
    (compare-and-set), so of two schedulers only one wins a slot. Slots missed
    while nothing ran collapse into this one run. Returns the run id, or None.
    """
    with transaction(sessions) as session:
        rule = session.get(Rule, rule_id)
        if rule is None or rule.status != "active" or rule.next_run_at is None:
            return None
        slot = rule.next_run_at
        if slot > now:
            return None
        following = next_due(rule, now)
        won = session.execute(
            update(Rule)
            .where(Rule.id == rule_id, Rule.status == "active", Rule.next_run_at == slot)
            .values(next_run_at=following, last_run_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount
        if won != 1:
            log.info("rule %s: slot %s already claimed elsewhere", rule_id, slot.isoformat())
            return None
        run = RuleRun(
            rule_id=rule_id,
            trigger="schedule",
            scheduled_for=slot,
            started_at=now,
            heartbeat_at=now,
            status="running",
        )
        session.add(run)
        session.flush()
        log.info(
            "rule %s run %s: claimed slot %s; next %s",
            rule_id,
            run.id,
            slot.isoformat(timespec="seconds"),
            following.isoformat(timespec="seconds"),
        )
        return run.id


def stale_run_ids(session: Session, *, now: datetime, lease: timedelta) -> list[int]:
    """Runs never finished whose heartbeat is older than ``lease``: their process died.

    A run still being done (a scheduled run elsewhere, a manual ``rules run``)
    renews its heartbeat after every batch, so it is not listed.
    """
    beat = func.coalesce(RuleRun.heartbeat_at, RuleRun.started_at)
    return list(
        session.scalars(
            select(RuleRun.id)
            .where(
                RuleRun.status == "running",
                RuleRun.finished_at.is_(None),
                beat < now - lease,
            )
            .order_by(RuleRun.id)
        )
    )


def claim_stale_run(
    sessions: sessionmaker[Session], run_id: int, *, now: datetime, lease: timedelta
) -> bool:
    """Take over an abandoned run: its heartbeat becomes ``now`` if it is still stale.

    One UPDATE both checks and writes, so of two processes claiming at once
    only one changes the row; the other finds a fresh heartbeat and gets False.
    """
    beat = func.coalesce(RuleRun.heartbeat_at, RuleRun.started_at)
    with transaction(sessions) as session:
        won = session.execute(
            update(RuleRun)
            .where(
                RuleRun.id == run_id,
                RuleRun.status == "running",
                RuleRun.finished_at.is_(None),
                beat < now - lease,
            )
            .values(heartbeat_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount
    if won != 1:
        log.info("run %s: not stale or taken by another process; left alone", run_id)
    return won == 1


def resume_run(
    sessions: sessionmaker[Session],
    settings: Settings,
    run_id: int,
    *,
    now: datetime,
    lease: timedelta | None = None,
) -> RuleRun | None:
    """Finish an abandoned run, if it can be claimed; None when it is not ours to finish.

    Customers it already handled are skipped by the actions' idempotency.
    """
    lease = lease or timedelta(minutes=settings.engine.run_lease_minutes)
    if not claim_stale_run(sessions, run_id, now=now, lease=lease):
        return None
    log.info("run %s: resuming a run its process left unfinished", run_id)
    return execute_run(sessions, settings, run_id, now=now)


class RunLease:
    """This process's hold on a run: the heartbeat value it wrote last.

    The heartbeat moves on with the run's own clock (its ``now`` plus the time
    elapsed), so a run driven by a simulated clock stays on that clock.
    """

    def __init__(self, run_id: int, now: datetime) -> None:
        self.run_id = run_id
        self.origin = now
        self.value = now
        self._started = monotonic()

    def renew(self, session: Session) -> bool:
        """Write a fresh heartbeat if the run is still ours; False once another took it."""
        fresh = self.origin + timedelta(seconds=monotonic() - self._started)
        won = session.execute(
            update(RuleRun)
            .where(
                RuleRun.id == self.run_id,
                RuleRun.heartbeat_at == self.value,
                RuleRun.finished_at.is_(None),
            )
            .values(heartbeat_at=fresh)
            .execution_options(synchronize_session=False)
        ).rowcount
        if won == 1:
            self.value = fresh
        return won == 1


class _LeaseLost(Exception):
    """Another process took the run over; this one must write nothing more."""


def execute_run(
    sessions: sessionmaker[Session], settings: Settings, run_id: int, *, now: datetime
) -> RuleRun:
    """Do a recorded run: match, act in batches, record the outcome. See the module docstring.

    Call it with the ``now`` that claimed the run (wrote its heartbeat): that
    value is the lease. Each batch renews the lease in its own transaction,
    and a batch whose lease was taken over by another process is rolled back
    and the run left to that process.
    """
    lease = RunLease(run_id, now)
    failure: str | None = None
    ids: list[int] = []
    links: UnsubscribeLinks | None = None
    with sessions() as session:
        run = session.get_one(RuleRun, run_id)
        rule = session.get_one(Rule, run.rule_id)
        zone = ZoneInfo(rule.timezone)
        # "Today" is the day the run started, so a resumed run means the same day.
        today = run.started_at.astimezone(zone).date()
        prior_done = run.actions_done
        try:
            check_runnable(session, rule)
            clause = condition_clause(session, rule.conditions, match=rule.match, today=today)
            ids = list(session.scalars(select(Customer.id).where(clause).order_by(Customer.id)))
            links = (
                unsubscribe_links(settings)
                if any(a.get("kind") == "email" for a in rule.actions)
                else None
            )
        except EngineError as exc:
            failure = str(exc)
    if failure is not None:
        return _finish(sessions, lease, rule.id, matched=0, tally=_Tally(), failure=failure)
    log.info("rule %s run %s: %s customer(s) matched on %s", rule.id, run_id, len(ids), today)

    tally = _Tally(actions_done=prior_done)
    with sessions() as session:
        context = RunContext(
            rule=session.get_one(Rule, rule.id),
            settings=settings,
            today=today,
            now=now,
            run_id=run_id,
            ledger=RecipientLedger.load(
                session,
                cap=settings.engine.email_cap_per_recipient_per_day,
                today=today,
                run_id=run_id,
            ),
            links=links,
        )
        actions = bind_actions(session, context.rule)
    try:
        for chunk in batches(ids, BATCH_SIZE):
            with transaction(sessions) as session:
                if not lease.renew(session):
                    raise _LeaseLost
                context.rule = session.get_one(Rule, rule.id)
                _act_on_batch(session, context, actions, chunk, tally)
                progress = session.get_one(RuleRun, run_id)
                progress.matched = len(ids)
                progress.actions_done = tally.actions_done
                progress.errors = list(tally.errors)
    except _LeaseLost:
        return _taken_over(sessions, run_id, rule.id)
    return _finish(sessions, lease, rule.id, matched=len(ids), tally=tally, failure=None)


def _taken_over(sessions: sessionmaker[Session], run_id: int, rule_id: int) -> RuleRun:
    log.warning(
        "rule %s run %s: taken over by another process (this one stalled past the lease); "
        "stopping here",
        rule_id,
        run_id,
    )
    with sessions() as session:
        return session.get_one(RuleRun, run_id)


def _act_on_batch(
    session: Session,
    context: RunContext,
    actions: Sequence[Action],
    ids: Sequence[int],
    tally: _Tally,
) -> None:
    """All the batch at once; when anything fails, again one customer per savepoint."""
    state = context.ledger.snapshot()
    try:
        with session.begin_nested():
            done = _act(session, context, actions, _customers(session, ids))
        tally.actions_done += done
        return
    except Exception:  # the batch is redone one by one below, which records the cause
        context.ledger.restore(state)
        session.expire_all()
    for customer_id in ids:
        state = context.ledger.snapshot()
        try:
            with session.begin_nested():
                done = _act(session, context, actions, _customers(session, [customer_id]))
            tally.actions_done += done
        except Exception as exc:  # one customer's failure must not stop the run
            context.ledger.restore(state)
            session.expire_all()
            index = exc.index if isinstance(exc, _ActionFailed) else None
            cause = exc.cause if isinstance(exc, _ActionFailed) else exc
            code = session.scalar(select(Customer.code).where(Customer.id == customer_id))
            message = (
                str(cause)
                if isinstance(cause, EngineError)
                else (f"{type(cause).__name__}: {cause}")
            )
            tally.errors.append(
                {"customer_id": customer_id, "customer": code, "action": index, "error": message}
            )
            log.warning(
                "rule %s run %s: customer %s (%s) failed at action %s: %s",
                context.rule.id,
                context.run_id,
                customer_id,
                code,
                index,
                message,
            )


def _act(
    session: Session, context: RunContext, actions: Sequence[Action], customers: list[Customer]
) -> int:
    """Every action over the customers, action by action; how many (action, card) were done."""
    done = 0
    for action in actions:
        try:
            done += len(action.apply(session, context, customers))
        except Exception as exc:
            raise _ActionFailed(action.index, exc) from exc
    return done


def _finish(
    sessions: sessionmaker[Session],
    lease: RunLease,
    rule_id: int,
    *,
    matched: int,
    tally: _Tally,
    failure: str | None,
) -> RuleRun:
    run_id = lease.run_id
    errors = list(tally.errors)
    if failure is not None:
        errors.insert(0, {"customer_id": None, "customer": None, "action": None, "error": failure})
    failed_customers = {e["customer_id"] for e in tally.errors}
    if failure is not None or (matched and len(failed_customers) >= matched):
        status = "failed"
    elif errors:
        status = "partial"
    else:
        status = "ok"
    with transaction(sessions) as session:
        held = lease.renew(session)
        if held:
            run = session.get_one(RuleRun, run_id)
            run.finished_at = utcnow()
            run.matched = matched
            run.actions_done = tally.actions_done
            run.errors = errors
            run.status = status
    if not held:
        return _taken_over(sessions, run_id, rule_id)
    if run.status == "failed":
        log.error(
            "rule %s run %s: failed: %s",
            rule_id,
            run_id,
            failure or f"every one of {matched} customer(s) failed",
        )
    else:
        log.info(
            "rule %s run %s: %s; %s matched, %s action(s) done, %s error(s)",
            rule_id,
            run_id,
            run.status,
            matched,
            run.actions_done,
            len(errors),
        )
    return run
