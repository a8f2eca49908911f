"""Benchmark: a rule over 200,000 customers in SQLite, against filtering them in Python.

Creates the customers with a bulk insert, a playbook, and a rule with three
conditions (a standard text field, a number, a custom choice field in the JSON
column) and a playbook action, matching about 10% of the cards. Times:

* the selection alone, compiled to SQL and run by the database;
* ``preview`` (selection plus what the action would do for each card);
* ``run_rule`` (selection plus loading the playbook onto every matched card);
* the same selection done by loading every customer into Python and
  filtering there, which is what rules must never do.

Not a test; run it by hand: ``.venv/bin/python bench/rules.py [--customers N]``.
"""

from __future__ import annotations

import argparse
import logging
import random
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import insert, select

from config.settings import Settings
from engine.conditions import matching_customer_ids
from engine.models import Customer, CustomField, Playbook, PlaybookStep, Task
from engine.rules import create_rule
from engine.runs import preview, run_rule
from portaria.wiring import Service, open_service

T = TypeVar("T")

NOW = datetime(2025, 6, 18, 12, 0, tzinfo=UTC)
TODAY = date(2025, 6, 18)
SEGMENTS = ("Varejo", "Indústria", "Serviços", "Saúde", "Educação")
PLANS = ("ouro", "prata", "bronze")
CONDITIONS = [
    {"field": "segment", "operation": "equals", "value": "Varejo"},
    {"field": "mrr", "operation": "gte", "value": 2000},
    {"field": "plano", "operation": "one_of", "value": ["ouro", "prata"]},
]
INSERT_BATCH = 10_000


def build(service: Service, customers: int) -> None:
    """The cards (bulk insert, no ORM objects), a custom field and a playbook."""
    generator = random.Random(20250618)
    with service.transaction() as session:
        session.add(CustomField(key="plano", label="Plano", kind="choice", choices=list(PLANS)))
        playbook = Playbook(name="Renovação", status="active")
        playbook.steps = [
            PlaybookStep(position=1, name="Ligar", kind="call", business_days=0),
            PlaybookStep(position=2, name="Proposta", kind="email", business_days=3),
            PlaybookStep(position=3, name="Revisar", kind="other", business_days=None),
        ]
        session.add(playbook)
    for start in range(0, customers, INSERT_BATCH):
        rows = [
            {
                "code": f"C{n:07d}",
                "name": f"Cliente {n}",
                "segment": generator.choice(SEGMENTS),
                "mrr": Decimal(generator.randrange(0, 10_000)),
                "renewal_date": TODAY + timedelta(days=generator.randrange(-365, 365)),
                "contact_email": f"contato{n}@exemplo.com.br",
                "custom": {"plano": generator.choice(PLANS)},
                "created_at": NOW,
                "updated_at": NOW,
            }
            for n in range(start, min(start + INSERT_BATCH, customers))
        ]
        with service.transaction() as session:
            session.execute(insert(Customer), rows)


def python_selection(service: Service) -> list[int]:
    """What rules must not do: every card into Python, then filtered there."""
    with service.sessions() as session:
        cards = session.scalars(select(Customer)).all()
        return sorted(
            c.id
            for c in cards
            if c.segment is not None
            and c.segment.lower() == "varejo"
            and c.mrr is not None
            and c.mrr >= 2000
            and (c.custom or {}).get("plano") in ("ouro", "prata")
        )


def timed(work: Callable[[], T]) -> tuple[T, float]:
    started = time.perf_counter()
    result = work()
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=200_000)
    parser.add_argument(
        "--folder", type=Path, help="Keep the SQLite file here (default: deleted)."
    )
    options = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if options.folder is not None:
        options.folder.mkdir(parents=True, exist_ok=True)
        measure(options.folder, options.customers)
        return
    with tempfile.TemporaryDirectory(prefix="portaria-bench-") as folder:
        measure(Path(folder), options.customers)


def measure(folder: Path, customers: int) -> None:
    settings = Settings(
        database={"url": f"sqlite:///{folder}/bench.db"},
        outbound={"kind": "maildir", "maildir": folder / "outbox"},
        config_dir=folder,
    )
    service = open_service(settings, migrate=True)
    _, build_seconds = timed(lambda: build(service, customers))
    with service.transaction() as session:
        rule_id = create_rule(
            session,
            {
                "name": "Renovação Varejo",
                "conditions": CONDITIONS,
                "actions": [{"kind": "playbook", "playbook": "Renovação"}],
            },
            now=NOW,
        ).id

    def sql_selection() -> list[int]:
        with service.sessions() as session:
            return matching_customer_ids(session, CONDITIONS, match="all", today=TODAY)

    def preview_rule() -> Any:
        with service.sessions() as session:
            return preview(session, settings, rule_id, TODAY)

    selected, sql_seconds = timed(sql_selection)
    shown, preview_seconds = timed(preview_rule)
    in_python, python_seconds = timed(lambda: python_selection(service))
    done, run_seconds = timed(
        lambda: run_rule(service.sessions, settings, rule_id, now=NOW, trigger="manual")
    )
    if in_python != selected or shown.matched != len(selected) or done.matched != len(selected):
        raise SystemExit("the selections differ: the benchmark is wrong")
    with service.sessions() as session:
        tasks = len(session.scalars(select(Task.id)).all())

    share = 100 * len(selected) / customers
    lines = [
        f"customers: {customers:,} (inserted in {build_seconds:.1f} s)",
        f"rule: 3 conditions, playbook action; matched {len(selected):,} ({share:.1f}%)",
        f"selection in SQL:             {sql_seconds:8.3f} s",
        f"preview (SQL + per card):     {preview_seconds:8.3f} s",
        f"run (load onto every match):  {run_seconds:8.3f} s "
        f"({done.actions_done:,} loads, {tasks:,} tasks)",
        f"selection in Python (ORM):    {python_seconds:8.3f} s",
        f"ratio Python / SQL selection: {python_seconds / sql_seconds:8.1f}x",
        f"ratio Python / preview:       {python_seconds / preview_seconds:8.1f}x",
    ]
    print("\n".join(lines))
    service.engine.dispose()


if __name__ == "__main__":
    main()
