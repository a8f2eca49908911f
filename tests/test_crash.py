"""Crash safety: `portaria poll --once` killed with SIGKILL at random moments, then run again.

A few hundred #ACESSO messages, each asking for a different person, wait in
a real Dovecot inbox. The poller runs as its own process, the way cron or
systemd runs it, and is killed (SIGKILL: no cleanup, no rollback handler)
again and again: at random delays, while it fetches, in the middle of a
batch, right after a batch is committed and before its messages move, after
a move, and while it finishes the moves an earlier run owed. Then it runs
until one run completes, and once more.

The end state must be as if it had never crashed: one recorded row per
message, one request per person, one acknowledgement per message, every
message in the folder its outcome names and none left in the inbox.

The kill plan comes from a fixed seed, so a failing run can be replayed;
what it hits still depends on timing, which is the point.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from email.utils import make_msgid
from pathlib import Path

import pytest
from sqlalchemy import select

from config.settings import load_settings
from intake.models import InboundMessage
from intake.reading import read_message
from portaria.outbox_models import OutboxMessage
from portaria.wiring import Service, open_service
from provisioning.models import AccessRequest
from tests.mail import request_message
from tests.servers.dovecot import ImapAccount

pytestmark = pytest.mark.imap

SEED = 20261201
MESSAGES = 300
BATCH = 10
KILLS = 20
# Every INCOMPLETE_EVERY-th message lacks the area, so it goes to NeedsAttention.
INCOMPLETE_EVERY = 7
RUN_DEADLINE = 60.0  # seconds; a run that takes longer than this is stuck

FIRST_NAMES = (
    "Ana", "Bruno", "Carla", "Diego", "Elisa", "Fábio", "Gabriela", "Heitor", "Isabel",
    "João", "Karina", "Lucas", "Marina", "Nuno", "Olívia", "Paulo", "Raquel", "Sérgio",
    "Tatiana", "Vítor",
)  # fmt: skip
LAST_NAMES = (
    "Almeida", "Barbosa", "Cardoso", "Duarte", "Esteves", "Ferraz", "Gouveia", "Hora",
    "Junqueira", "Lacerda", "Macedo", "Nogueira", "Oliveira", "Pacheco", "Queiroz",
    "Rezende", "Siqueira", "Teixeira", "Valente", "Xavier",
)  # fmt: skip

# Where to kill, as (what the poller logs just before, how far into it).
# The log lines are the poller's own INFO lines; killing as soon as one is
# read lands in the step that follows it.
TRIGGERS = {
    "during fetch": r"new message\(s\) to read",
    "mid-batch": r"intake\.(receiving|screening|extraction): ",
    "after commit, before move": r"message\(s\) recorded, to be moved",
    "after a move": r"message\(s\) moved to",
    "during owed moves": r"owed by an earlier run",
}


@dataclass(frozen=True)
class Person:
    name: str
    email: str
    complete: bool


@dataclass
class Kill:
    """One planned kill: at the ``occurrence``-th line matching ``trigger``, or after ``delay``."""

    trigger: str | None
    occurrence: int = 1
    delay: float = 0.0


@dataclass
class Run:
    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    reached: threading.Event = field(default_factory=threading.Event)


def people() -> list[Person]:
    found = []
    for number in range(MESSAGES):
        first = FIRST_NAMES[number % len(FIRST_NAMES)]
        last = LAST_NAMES[number // len(FIRST_NAMES) % len(LAST_NAMES)]
        # A third name keeps names distinct past 400 people.
        middle = LAST_NAMES[number // 400 % len(LAST_NAMES)] if number >= 400 else ""
        name = " ".join(part for part in (first, middle, last) if part)
        email = f"pessoa{number:04d}@cliente.test"
        found.append(Person(name, email, complete=number % INCOMPLETE_EVERY != 3))
    return found


def request_for(person: Person) -> bytes:
    area = "Área: Financeiro\n" if person.complete else ""
    body = f"Nome: {person.name}\nE-mail: {person.email}\n{area}Tipo de acesso: Comum\n"
    # A requester of their own each: the hourly cap on answers per address
    # would otherwise (rightly) stop the acknowledgements this test counts.
    manager = person.email.replace("pessoa", "gestor")
    return request_message(
        body, sender=f"Gestor <{manager}>", message_id=make_msgid(domain="cliente.test")
    )


RANDOM_MOMENT = "at a random moment"


def kill_plan(rng: random.Random) -> list[str]:
    """KILLS kinds of kill, every kind about as often, in a random order."""
    kinds = [*TRIGGERS, RANDOM_MOMENT]
    plan = [kinds[number % len(kinds)] for number in range(KILLS)]
    rng.shuffle(plan)
    return plan


def next_kill(kind: str, rng: random.Random, moves_owed: bool) -> Kill:
    """The kill for this run. A run that is not killed finishes all the work, so a
    kill whose moment cannot come (no moves owed) becomes a mid-batch one."""
    if kind == "during owed moves" and not moves_owed:
        kind = "mid-batch"
    if kind == RANDOM_MOMENT:
        # The command takes about a second to start: some land before any
        # work, most in it.
        return Kill(None, delay=rng.uniform(0.2, 1.5))
    if kind == "mid-batch":
        return Kill(kind, occurrence=rng.randint(1, 3 * BATCH))
    if kind in ("after commit, before move", "after a move"):
        return Kill(kind, occurrence=rng.randint(1, 3))
    return Kill(kind)


@pytest.fixture
def config_file(tmp_path: Path, imap_account: ImapAccount) -> Path:
    file = tmp_path / "portaria.toml"
    file.write_text(
        f"""
[database]
url = "sqlite:///portaria.db"

[mailbox]
kind = "imap"
host = "{imap_account.host}"
port = {imap_account.port}
security = "plain"
username = "{imap_account.username}"
password_file = "{tmp_path / "imap-password"}"
batch_size = {BATCH}

[outbound]
kind = "maildir"
maildir = "outbox"
from_address = "acesso@portaria.test"

[service]
support_address = "suporte@portaria.test"
base_url = "https://portaria.test"
""",
        encoding="utf-8",
    )
    (tmp_path / "imap-password").write_text(imap_account.password, encoding="utf-8")
    return file


def start_poller(config: Path) -> Run:
    command = shutil.which("portaria", path=str(Path(sys.executable).parent))
    assert command, "the portaria command is not installed next to this Python"
    process = subprocess.Popen(
        [command, "-v", "poll", "--config", str(config), "--once", "--no-send"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={key: value for key, value in os.environ.items() if not key.startswith("PORTARIA")},
    )
    return Run(process)


def follow(run: Run, pattern: re.Pattern[str] | None, occurrence: int) -> None:
    """Read the child's log as it comes; signal when the trigger line has been seen."""
    assert run.process.stdout is not None
    seen = 0
    for line in run.process.stdout:
        run.lines.append(line)
        if pattern is not None and pattern.search(line):
            seen += 1
            if seen == occurrence:
                run.reached.set()
    run.reached.set()  # the process ended: nothing more to wait for


def run_once(config: Path, kill: Kill | None) -> tuple[bool, Run]:
    """One poller run; True when it was killed, False when it ended by itself."""
    run = start_poller(config)
    pattern = re.compile(TRIGGERS[kill.trigger]) if kill and kill.trigger else None
    reader = threading.Thread(
        target=follow, args=(run, pattern, kill.occurrence if kill else 1), daemon=True
    )
    reader.start()
    killed = False
    if kill is not None:
        if kill.trigger is None:
            run.reached.wait(kill.delay)
        else:
            run.reached.wait(RUN_DEADLINE)
        if run.process.poll() is None:
            run.process.send_signal(signal.SIGKILL)
            killed = True
    try:
        run.process.wait(RUN_DEADLINE)
    except subprocess.TimeoutExpired:
        run.process.kill()
        pytest.fail("the poller did not finish:\n" + "".join(run.lines[-30:]))
    reader.join(RUN_DEADLINE)
    if not killed and run.process.returncode != 0:
        pytest.fail(
            f"the poller exited with {run.process.returncode}:\n" + "".join(run.lines[-30:])
        )
    return killed, run


def owed_moves(service: Service) -> int:
    with service.sessions() as session:
        rows = session.scalars(
            select(InboundMessage).where(
                InboundMessage.destination.is_not(None), InboundMessage.moved_at.is_(None)
            )
        )
        return len(list(rows))


def test_killed_poller_processes_every_message_exactly_once(
    config_file: Path, imap_account: ImapAccount
) -> None:
    started = time.monotonic()
    everyone = people()
    assert len({person.name for person in everyone}) == MESSAGES
    raws = [request_for(person) for person in everyone]
    imap_account.append(raws)
    service = open_service(load_settings(config_file), migrate=True)

    rng = random.Random(SEED)
    kills: Counter[str] = Counter()
    left_moves_owed = 0
    runs = 0
    for kind in kill_plan(rng):
        planned = next_kill(kind, rng, owed_moves(service) > 0)
        killed, _run = run_once(config_file, planned)
        runs += 1
        if not killed:
            break  # the work was done before this kill could land
        kills[planned.trigger or RANDOM_MOMENT] += 1
        left_moves_owed += owed_moves(service) > 0

    # Until one run completes, then one more that must find nothing to do.
    while True:
        killed, _run = run_once(config_file, None)
        runs += 1
        if not killed:
            break
    _killed, last = run_once(config_file, None)
    runs += 1
    elapsed = time.monotonic() - started
    print(
        f"crash test: {MESSAGES} messages, {sum(kills.values())} kills "
        f"({', '.join(f'{n} {kind}' for kind, n in sorted(kills.items()))}), "
        f"{left_moves_owed} left moves owed, {runs} runs, {elapsed:.1f} s"
    )
    assert sum(kills.values()) >= KILLS // 2, f"too few kills landed: {kills}"
    assert "0 new message(s); 0 moved" in "".join(last.lines), "".join(last.lines[-10:])

    _assert_each_message_recorded_once(service, everyone)
    _assert_each_person_requested_and_answered_once(service, everyone)
    _assert_each_message_in_its_folder(imap_account, everyone, raws)


def _assert_each_message_recorded_once(service: Service, everyone: list[Person]) -> None:
    with service.sessions() as session:
        rows = list(session.scalars(select(InboundMessage)))
    assert len(rows) == len(everyone)
    assert len({row.mailbox_key for row in rows}) == len(rows)
    assert len({row.message_id for row in rows}) == len(rows)
    assert Counter(row.outcome for row in rows) == {
        "request": sum(person.complete for person in everyone),
        "incomplete": sum(not person.complete for person in everyone),
    }
    assert all(row.moved_at is not None for row in rows)


def _assert_each_person_requested_and_answered_once(
    service: Service, everyone: list[Person]
) -> None:
    with service.sessions() as session:
        requests = list(session.scalars(select(AccessRequest)))
        letters = list(session.scalars(select(OutboxMessage)))
    assert Counter(request.email for request in requests) == Counter(
        person.email for person in everyone
    )
    assert all(request.flags == [] for request in requests), "a person was queued twice"

    per_message = Counter((letter.cause, letter.kind) for letter in letters)
    repeated = {key: count for key, count in per_message.items() if count > 1}
    assert not repeated, f"letters queued more than once: {repeated}"
    kinds = Counter(letter.kind for letter in letters)
    complete = sum(person.complete for person in everyone)
    assert kinds == {
        "received": complete,
        "support_notice": complete,
        "incomplete": len(everyone) - complete,
    }


def _assert_each_message_in_its_folder(
    account: ImapAccount, everyone: list[Person], raws: list[bytes]
) -> None:
    person_of = {
        read_message(raw).message_id: person for raw, person in zip(raws, everyone, strict=True)
    }

    def people_in(folder: str) -> Counter[str]:
        return Counter(
            person_of[read_message(raw).message_id].email for raw in account.messages(folder)
        )

    assert account.messages("INBOX") == []
    assert people_in("Processed") == Counter(p.email for p in everyone if p.complete)
    assert people_in("NeedsAttention") == Counter(p.email for p in everyone if not p.complete)
