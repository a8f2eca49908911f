"""Rules: saving, the three actions, preview, recorded runs and rule files.

Emails go end to end: a rule run queues them, the outbox sends them over SMTP
to a real aiosmtpd server on 127.0.0.1, and the test reads what arrived.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from sqlalchemy import func, select
from typer.testing import CliRunner

from config.settings import Settings
from engine.actions import CardOwner, reply_to_owner
from engine.calendar import BusinessCalendar
from engine.errors import InvalidRule, RuleExists
from engine.models import (
    Customer,
    CustomField,
    EmailTemplate,
    Playbook,
    PlaybookLoad,
    PlaybookStep,
    Rule,
    RuleEmail,
    RuleRun,
    Task,
    Unsubscribe,
)
from engine.playbooks import load_onto_customer, set_playbook_active
from engine.rule_files import export_rules, import_rules, read_rule_file
from engine.rules import (
    RemovedRule,
    create_rule,
    edit_rule,
    remove_rule,
    rule_definition,
    rule_history,
)
from engine.runs import preview, run_rule
from engine.tasks import complete_task
from engine.unsubscribe import create_secret_key, unsubscribe, unsubscribe_links
from portaria.cli import app
from portaria.outbox import send_due
from portaria.outbox_models import OutboxMessage
from portaria.wiring import Service, open_service
from provisioning.directory import create_user
from provisioning.models import User
from tests.servers.smtp import SmtpTestServer

# Wednesday 18 June 2025, 09:00 in São Paulo; Thursday 19 is Corpus Christi.
NOW = datetime(2025, 6, 18, 12, 0, tzinfo=UTC)
TODAY = date(2025, 6, 18)
ANA = "ana@cs.example.com.br"
BRUNO = "bruno@cs.example.com.br"
VAREJO = [{"field": "segment", "operation": "equals", "value": "Varejo"}]

AVISO_TEXT = """Olá, {{ customer.contact_name|default('cliente') }}!

A renovação de {{ customer.name }} vence em {{ customer.renewal_date|date_br }}.
Plano: {{ customer.custom.plano }}. Próxima tarefa: {{ task.name }} ({{ task.due_date|date_br }}).
{% if owner %}Fale com {{ owner.name }} <{{ owner.email }}>.{% endif %}
Para não receber mais: {{ unsubscribe }}
"""
AVISO_HTML = "<p>Renovação de <b>{{ customer.name }}</b> ({{ rule.name }})</p>"


def fill(service: Service) -> Service:
    """Two agents, custom fields, a playbook, two templates and four cards; a secret key."""
    create_secret_key(service.settings)
    with service.transaction() as session:
        ana = create_user(
            session, name="Ana Souza", email=ANA, area="CS", role="agente", created_via="test"
        )
        bruno = create_user(
            session, name="Bruno Lima", email=BRUNO, area="CS", role="agente", created_via="test"
        )
        session.add_all(
            [
                CustomField(key="plano", label="Plano", kind="choice", choices=["ouro", "prata"]),
                CustomField(key="proximo_contato", label="Próximo contato", kind="date"),
            ]
        )
        playbook = Playbook(name="Onboarding", status="active")
        playbook.steps = [
            PlaybookStep(position=1, name="Ligação de boas-vindas", kind="call", business_days=0),
            PlaybookStep(position=2, name="Enviar materiais", kind="email", business_days=2),
            PlaybookStep(position=3, name="Revisão", kind="other", business_days=None),
        ]
        session.add(playbook)
        session.add_all(
            [
                EmailTemplate(
                    name="Aviso",
                    subject="Renovação {{ customer.name }}",
                    body_text=AVISO_TEXT,
                    body_html=AVISO_HTML,
                ),
                EmailTemplate(
                    name="Curto", subject="Oi {{ customer.code }}", body_text="{{ owner.name }}\n"
                ),
            ]
        )
        cards = [
            ("ACME", "Acme & Filhos", ana.id, "Marta", "compras@acme.com.br", "Varejo", 2000,
             "ouro"),
            ("BETA", "Beta Ltda", ana.id, None, "ti@beta.com.br", "Varejo", 800, "prata"),
            ("GAMA", "Gama SA", bruno.id, None, None, "Indústria", 3000, "ouro"),
            ("DELTA", "Delta ME", None, None, "delta@delta.com.br", "Varejo", 100, None),
        ]  # fmt: skip
        for code, name, owner, contact, email, segment, mrr, plano in cards:
            session.add(
                Customer(
                    code=code,
                    name=name,
                    owner_id=owner,
                    contact_name=contact,
                    contact_email=email,
                    segment=segment,
                    mrr=Decimal(mrr),
                    renewal_date=date(2025, 7, 31),
                    custom={"plano": plano} if plano else {},
                )
            )
    return service


@pytest.fixture
def world(service: Service) -> Service:
    return fill(service)


def make_rule(service: Service, actions: list[dict[str, Any]], **extra: Any) -> int:
    definition = {"name": "Regra", "conditions": VAREJO, "actions": actions, **extra}
    with service.transaction() as session:
        return create_rule(session, definition, now=NOW).id


def run(service: Service, rule_id: int, now: datetime = NOW) -> RuleRun:
    return run_rule(service.sessions, service.settings, rule_id, now=now, trigger="manual")


def count(service: Service, model: type, *where: Any) -> int:
    with service.sessions() as session:
        return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


def card_id(service: Service, code: str) -> int:
    with service.sessions() as session:
        return session.scalar(select(Customer.id).where(Customer.code == code))


def with_cap(settings: Settings, cap: int) -> Settings:
    engine = settings.engine.model_copy(update={"email_cap_per_recipient_per_day": cap})
    return settings.model_copy(update={"engine": engine})


class TestPlaybookAction:
    def rule(self, service: Service, **action: Any) -> int:
        return make_rule(
            service,
            [{"kind": "playbook", "playbook": "Onboarding", **action}],
            conditions=[*VAREJO, {"field": "mrr", "operation": "gte", "value": 500}],
        )

    def test_loads_tasks_with_business_day_due_dates(self, world: Service) -> None:
        rule_id = self.rule(world)
        result = run(world, rule_id)
        assert (result.status, result.matched, result.actions_done) == ("ok", 2, 2)

        with world.sessions() as session:
            rows = session.execute(
                select(Customer.code, Task.name, Task.due_date, Task.assignee_id, Task.status)
                .join(Customer, Customer.id == Task.customer_id)
                .order_by(Customer.code, Task.id)
            ).all()
            ana_id = session.scalar(select(Customer.owner_id).where(Customer.code == "ACME"))
            loads = session.scalars(select(PlaybookLoad)).all()
        # Two business days after Wednesday 18: Thursday 19 is Corpus Christi, so
        # Friday 20 and Monday 23.
        assert rows == [
            ("ACME", "Ligação de boas-vindas", date(2025, 6, 18), ana_id, "open"),
            ("ACME", "Enviar materiais", date(2025, 6, 23), ana_id, "open"),
            ("ACME", "Revisão", None, ana_id, "open"),
            ("BETA", "Ligação de boas-vindas", date(2025, 6, 18), ana_id, "open"),
            ("BETA", "Enviar materiais", date(2025, 6, 23), ana_id, "open"),
            ("BETA", "Revisão", None, ana_id, "open"),
        ]
        assert {(load.rule_id, load.loaded_by, load.loaded_on) for load in loads} == {
            (rule_id, f"rule:{rule_id}", TODAY)
        }

    def test_not_loaded_again_while_open(self, world: Service) -> None:
        rule_id = self.rule(world)
        run(world, rule_id)
        again = run(world, rule_id, NOW + timedelta(days=1))
        assert (again.status, again.matched, again.actions_done) == ("ok", 2, 0)
        assert count(world, PlaybookLoad) == 2
        assert count(world, Task) == 6

    def test_loaded_again_once_the_load_is_finished(self, world: Service) -> None:
        rule_id = self.rule(world)
        run(world, rule_id)
        self.finish_tasks(world, "ACME")
        again = run(world, rule_id, NOW + timedelta(days=1))
        assert again.actions_done == 1
        assert count(world, PlaybookLoad, PlaybookLoad.customer_id == card_id(world, "ACME")) == 2

    def test_cool_down_waits_the_days_given(self, world: Service) -> None:
        rule_id = self.rule(world, cooldown_days=30)
        run(world, rule_id)
        self.finish_tasks(world, "ACME")
        assert run(world, rule_id, NOW + timedelta(days=29)).actions_done == 0
        assert run(world, rule_id, NOW + timedelta(days=30)).actions_done == 1
        with world.sessions() as session:
            days = session.scalars(
                select(PlaybookLoad.loaded_on)
                .where(PlaybookLoad.customer_id == card_id(world, "ACME"))
                .order_by(PlaybookLoad.id)
            ).all()
        assert days == [TODAY, TODAY + timedelta(days=30)]

    def test_an_open_load_made_by_a_person_also_blocks(self, world: Service) -> None:
        with world.transaction() as session:
            load_onto_customer(
                session,
                "Onboarding",
                "ACME",
                loaded_by="cli:ana",
                today=TODAY,
                calendar=BusinessCalendar(),
            )
        result = run(world, self.rule(world))
        assert result.actions_done == 1
        assert count(world, PlaybookLoad) == 2

    def finish_tasks(self, service: Service, code: str) -> None:
        with service.transaction() as session:
            ids = session.scalars(
                select(Task.id).where(Task.customer_id == card_id(service, code))
            ).all()
            for task_id in ids:
                complete_task(session, task_id, by="test")


class TestUpdateAction:
    def test_sets_standard_custom_and_relative_values(self, world: Service) -> None:
        action = {
            "kind": "update",
            "set": {
                "stage": "renovação",
                "custom.plano": "prata",
                "proximo_contato": "+7d",
                "renewal_date": "today",
                "mrr": "1.500,50",
                "owner": BRUNO,
            },
        }
        rule_id = make_rule(
            world, [action], conditions=[{"field": "code", "operation": "equals", "value": "ACME"}]
        )
        result = run(world, rule_id)
        assert (result.status, result.matched, result.actions_done) == ("ok", 1, 1)
        with world.sessions() as session:
            card = session.scalar(select(Customer).where(Customer.code == "ACME"))
            bruno_id = session.scalar(select(Customer.owner_id).where(Customer.code == "GAMA"))
            assert card.stage == "renovação"
            assert card.custom == {"plano": "prata", "proximo_contato": "2025-06-25"}
            assert card.renewal_date == TODAY
            assert card.mrr == Decimal("1500.50")
            assert card.owner_id == bruno_id

        assert run(world, rule_id).actions_done == 0

    def test_an_empty_value_clears_the_field(self, world: Service) -> None:
        rule_id = make_rule(world, [{"kind": "update", "set": {"plano": "", "contact_name": ""}}])
        result = run(world, rule_id)
        assert result.actions_done == 2  # ACME and BETA had a plano; DELTA had nothing to clear
        with world.sessions() as session:
            found = session.execute(
                select(Customer.code, Customer.custom, Customer.contact_name).order_by(
                    Customer.code
                )
            ).all()
        assert found == [
            ("ACME", {}, None),
            ("BETA", {}, None),
            ("DELTA", {}, None),
            ("GAMA", {"plano": "ouro"}, None),
        ]


BASE_URL = "https://portaria.example.com"


@pytest.fixture
def mailed(outbound_settings: Callable[..., Settings], smtp_server: SmtpTestServer) -> Service:
    """The same world, with outgoing mail over SMTP to the test server."""
    settings = outbound_settings(smtp_server)
    service_settings = settings.service.model_copy(update={"base_url": BASE_URL})
    settings = settings.model_copy(update={"service": service_settings})
    return fill(open_service(settings, migrate=True))


def link(service: Service, address: str) -> str:
    return unsubscribe_links(service.settings).url(address)


def footer(url: str) -> str:
    return f"\n-- \nPara não receber mais estes e-mails (to stop these emails):\n{url}\n"


def deliver(service: Service, now: datetime = NOW + timedelta(minutes=1)) -> None:
    report = send_due(service.sessions, service.settings, now=now)
    assert report.failed == 0 and report.retried == 0


@pytest.mark.smtp
class TestEmailAction:
    def test_end_to_end_through_the_outbox(
        self, mailed: Service, smtp_server: SmtpTestServer
    ) -> None:
        rule_id = make_rule(
            mailed,
            [
                {"kind": "playbook", "playbook": "Onboarding"},
                {
                    "kind": "email",
                    "template": "Aviso",
                    "to": ["contact", "owner", "lideres@cs.example.com.br"],
                },
            ],
            name="Renovação Varejo",
            conditions=[*VAREJO, {"field": "owner", "operation": "is_not_empty"}],
        )
        result = run(mailed, rule_id)
        assert (result.status, result.matched, result.actions_done) == ("ok", 2, 4)
        deliver(mailed)

        # One email per recipient per run: Ana owns both cards, the leaders'
        # address is fixed; each gets one, and each contact gets its own.
        by_recipient = {m.rcpt_tos[0]: m for m in smtp_server.received}
        assert sorted(by_recipient) == sorted(
            ["compras@acme.com.br", "ti@beta.com.br", ANA, "lideres@cs.example.com.br"]
        )
        assert all(len(m.rcpt_tos) == 1 for m in smtp_server.received)

        message = by_recipient["compras@acme.com.br"].message
        assert message["Subject"] == "Renovação Acme & Filhos"
        assert message["From"] == "Portaria <portaria@acesso.example.com>"
        assert message["Auto-Submitted"] == "auto-generated"
        assert message["X-Portaria-Loop"] == "portaria@acesso.example.com"
        assert message["List-Unsubscribe"] == f"<{link(mailed, 'compras@acme.com.br')}>"
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert message["Reply-To"] == "Ana Souza <ana@cs.example.com.br>"
        assert re.fullmatch(
            r"<portaria\.[0-9a-f]{32}@acesso\.example\.com>", message["Message-ID"]
        )
        text = message.get_body(("plain",)).get_content()
        assert text == (
            "Olá, Marta!\n"
            "\n"
            "A renovação de Acme & Filhos vence em 31/07/2025.\n"
            "Plano: ouro. Próxima tarefa: Ligação de boas-vindas (18/06/2025).\n"
            "Fale com Ana Souza <ana@cs.example.com.br>.\n"
            f"Para não receber mais: {link(mailed, 'compras@acme.com.br')}\n"
        )
        # The HTML part does not place the link itself, so it gets the footer.
        html = message.get_body(("html",)).get_content()
        assert html == (
            "<p>Renovação de <b>Acme &amp; Filhos</b> (Renovação Varejo)</p>\n"
            '<p style="font-size:small;color:#666">Para não receber mais estes e-mails '
            f'(to stop these emails): <a href="{link(mailed, "compras@acme.com.br")}">'
            "descadastrar (unsubscribe)</a></p>\n"
        )
        # Every recipient's copy carries the link that unsubscribes that recipient only.
        for address, received in by_recipient.items():
            assert received.message["List-Unsubscribe"] == f"<{link(mailed, address)}>"
            text = received.message.get_body(("plain",)).get_content()
            assert text.endswith(f"Para não receber mais: {link(mailed, address)}\n")
        beta = by_recipient["ti@beta.com.br"].message.get_body(("plain",)).get_content()
        assert beta.startswith("Olá, cliente!\n")
        assert "Plano: prata." in beta

        with mailed.sessions() as session:
            ledger = session.execute(
                select(RuleEmail.recipient, RuleEmail.sent_on, RuleEmail.run_id)
            ).all()
        assert sorted(ledger) == sorted((address, TODAY, result.id) for address in by_recipient)

    def test_daily_cap_per_recipient_across_rules(
        self, mailed: Service, smtp_server: SmtpTestServer
    ) -> None:
        capped = with_cap(mailed.settings, 2)
        acme = [{"field": "code", "operation": "equals", "value": "ACME"}]
        action = [{"kind": "email", "template": "Curto", "to": ["contact"]}]
        ids = [make_rule(mailed, action, name=f"Regra {n}", conditions=acme) for n in range(3)]
        done = [
            run_rule(mailed.sessions, capped, i, now=NOW, trigger="manual").actions_done
            for i in ids
        ]
        assert done == [1, 1, 0]
        tomorrow = NOW + timedelta(days=1)
        later = run_rule(mailed.sessions, capped, ids[2], now=tomorrow, trigger="manual")
        assert later.actions_done == 1
        deliver(mailed, tomorrow + timedelta(minutes=1))
        assert [m.rcpt_tos for m in smtp_server.received] == [["compras@acme.com.br"]] * 3

    def test_a_cap_of_zero_sends_nothing(self, mailed: Service) -> None:
        rule_id = make_rule(mailed, [{"kind": "email", "template": "Curto", "to": ["contact"]}])
        result = run_rule(mailed.sessions, with_cap(mailed.settings, 0), rule_id, now=NOW)
        assert result.actions_done == 0
        assert count(mailed, OutboxMessage) == 0

    def test_unsubscribed_address_is_skipped(
        self, mailed: Service, smtp_server: SmtpTestServer
    ) -> None:
        with mailed.transaction() as session:
            assert unsubscribe(session, "Compras@Acme.com.br", source="reply") is True
        rule_id = make_rule(
            mailed,
            [{"kind": "email", "template": "Curto", "to": ["contact"]}],
            conditions=[{"field": "owner", "operation": "equals", "value": ANA}],
        )
        result = run(mailed, rule_id)
        assert (result.matched, result.actions_done) == (2, 1)
        deliver(mailed)
        assert [m.rcpt_tos for m in smtp_server.received] == [["ti@beta.com.br"]]

    def test_one_customers_failure_is_recorded_and_the_run_goes_on(
        self, mailed: Service, smtp_server: SmtpTestServer
    ) -> None:
        rule_id = make_rule(
            mailed,
            [
                {"kind": "playbook", "playbook": "Onboarding"},
                {"kind": "email", "template": "Curto", "to": ["contact"]},
            ],
        )
        result = run(mailed, rule_id)
        assert (result.status, result.matched, result.actions_done) == ("partial", 3, 4)
        assert result.errors == [
            {
                "customer_id": card_id(mailed, "DELTA"),
                "customer": "DELTA",
                "action": 2,
                "error": "texto (text), linha 1: owner.name não está definido (is undefined): "
                "cliente sem responsável (no owner)",
            }
        ]
        # The failed card keeps nothing of the run: its playbook load was undone too.
        assert (
            count(mailed, PlaybookLoad, PlaybookLoad.customer_id == card_id(mailed, "DELTA")) == 0
        )
        deliver(mailed)
        assert sorted(m.rcpt_tos[0] for m in smtp_server.received) == [
            "compras@acme.com.br",
            "ti@beta.com.br",
        ]
        first = smtp_server.received[0]
        body = first.message.get_body(("plain",)).get_content()
        assert body == "Ana Souza\n" + footer(link(mailed, first.rcpt_tos[0]))

    def test_a_card_without_the_address_is_skipped(self, mailed: Service) -> None:
        rule_id = make_rule(
            mailed,
            [{"kind": "email", "template": "Curto", "to": ["contact"]}],
            conditions=[{"field": "code", "operation": "equals", "value": "GAMA"}],
        )
        result = run(mailed, rule_id)
        assert (result.status, result.matched, result.actions_done) == ("ok", 1, 0)


class TestPreview:
    def rule(self, service: Service) -> int:
        return make_rule(
            service,
            [
                {"kind": "playbook", "playbook": "Onboarding", "cooldown_days": 10},
                {"kind": "update", "set": {"stage": "renovação", "proximo_contato": "+7d"}},
                {"kind": "email", "template": "Curto", "to": ["contact", "owner"]},
            ],
        )

    def snapshot(self, service: Service) -> list[Any]:
        with service.sessions() as session:
            counts = [
                session.scalar(select(func.count()).select_from(model))
                for model in (PlaybookLoad, Task, OutboxMessage, RuleEmail, RuleRun)
            ]
            cards = session.execute(
                select(Customer.code, Customer.stage, Customer.custom, Customer.updated_at)
            ).all()
        return [counts, sorted(cards)]

    def test_shows_each_customer_and_changes_nothing(self, world: Service) -> None:
        rule_id = self.rule(world)
        with world.transaction() as session:
            load_onto_customer(
                session,
                "Onboarding",
                "BETA",
                loaded_by="cli:ana",
                today=TODAY,
                calendar=BusinessCalendar(),
            )
        before = self.snapshot(world)
        with world.sessions() as session:
            result = preview(session, world.settings, rule_id, TODAY)
        assert self.snapshot(world) == before

        assert result.matched == 3
        shown = {c.code: c for c in result.customers}
        assert shown["ACME"].actions == [
            "playbook 'Onboarding': carrega (would load)",
            "atualizar (update): stage: (vazio) → renovação, proximo_contato: (vazio) → "
            "2025-06-25",
            f"e-mail 'Curto': para (to) compras@acme.com.br, {ANA}",
        ]
        assert shown["BETA"].actions[0] == (
            "playbook 'Onboarding': não carrega (skip): já tem o playbook em aberto (open load)"
        )
        # Ana owns ACME and BETA: the preview plays the one-per-run cap forward.
        assert shown["BETA"].actions[2] == "e-mail 'Curto': para (to) ti@beta.com.br"
        [beta_email] = shown["BETA"].emails
        assert [(p.to, p.skipped) for p in beta_email.recipients] == [
            ("ti@beta.com.br", None),
            (ANA, "já recebe nesta execução (one per run)"),
        ]
        assert beta_email.rendered is not None
        assert beta_email.rendered.subject == "Oi BETA"
        # Rendered as its first recipient gets it: with that address's own link.
        assert beta_email.rendered.text == "Ana Souza\n" + footer(link(world, "ti@beta.com.br"))
        assert beta_email.reply_to == "Ana Souza <ana@cs.example.com.br>"

        assert shown["ACME"].problems == []
        assert shown["DELTA"].problems == [
            "texto (text), linha 1: owner.name não está definido (is undefined): "
            "cliente sem responsável (no owner)"
        ]
        assert result.problems == 1

    def test_limit_keeps_the_full_count(self, world: Service) -> None:
        rule_id = self.rule(world)
        with world.sessions() as session:
            result = preview(session, world.settings, rule_id, TODAY, limit=1)
        assert result.matched == 3
        assert [c.code for c in result.customers] == ["ACME"]


class TestRuns:
    def test_runs_are_recorded_newest_first(self, world: Service) -> None:
        rule_id = make_rule(world, [{"kind": "update", "set": {"stage": "ativo"}}])
        first = run(world, rule_id)
        second = run(world, rule_id, NOW + timedelta(hours=1))
        with world.sessions() as session:
            history = rule_history(session, rule_id)
        assert [r.id for r in history] == [second.id, first.id]
        assert [(r.trigger, r.status, r.matched, r.actions_done) for r in history] == [
            ("manual", "ok", 3, 0),
            ("manual", "ok", 3, 3),
        ]
        assert history[1].started_at == NOW
        assert history[1].finished_at is not None

    def test_a_rule_that_cannot_run_is_recorded_as_failed(self, world: Service) -> None:
        rule_id = make_rule(world, [{"kind": "playbook", "playbook": "Onboarding"}])
        with world.transaction() as session:
            set_playbook_active(session, "Onboarding", False)
        result = run(world, rule_id)
        assert result.status == "failed"
        assert result.matched == 0
        [error] = result.errors
        assert error["customer_id"] is None
        assert "playbook 'Onboarding' está inactive" in error["error"]

    def test_every_customer_failing_fails_the_run(self, world: Service) -> None:
        rule_id = make_rule(
            world,
            [{"kind": "email", "template": "Curto", "to": ["contact"]}],
            conditions=[{"field": "code", "operation": "equals", "value": "DELTA"}],
        )
        assert run(world, rule_id).status == "failed"


class TestSaving:
    def refused(self, service: Service, definition: dict[str, Any]) -> list[str]:
        with pytest.raises(InvalidRule) as caught, service.transaction() as session:
            create_rule(session, {"name": "Ruim", **definition}, now=NOW)
        assert count(service, Rule) == 0
        return caught.value.problems

    def test_every_problem_names_its_field_or_action(self, world: Service) -> None:
        problems = self.refused(
            world,
            {
                "every": 0,
                "unit": "hours",
                "time_of_day": "08:00",
                "timezone": "America/Atlantida",
                "conditions": [{"field": "receita", "operation": "gt", "value": 1}],
                "actions": [
                    {"kind": "playbook", "playbook": "Churn"},
                    {"kind": "update", "set": {"mrr": "muito", "code": "X", "cor": "azul"}},
                    {"kind": "email", "template": "Nenhum", "to": ["contact", "não é email"]},
                    {"kind": "tarefa"},
                ],
            },
        )
        assert problems == [
            "every: inteiro de 1 a 10000 (whole number): 0",
            "time_of_day só vale para dias, semanas e meses (only with days, weeks, months), "
            "não para hours",
            "fuso horário desconhecido (unknown time zone): 'America/Atlantida'",
            "condição 1 (condition), campo 'receita': campo desconhecido (unknown field); "
            "campos: name, code, segment, area, owner, contact_name, contact_email, stage, "
            "health_score, nps, mrr, renewal_date, plano, proximo_contato, open_playbook, "
            "loaded_playbook, open_tasks, overdue_tasks, next_task_due",
            "ação 1 (playbook): playbook não encontrado (playbook not found): 'Churn'",
            "ação 2 (update), campo 'mrr': número inválido (bad number): 'muito'",
            "ação 2 (update), campo 'code': campo desconhecido (unknown field)",
            "ação 2 (update), campo 'cor': campo desconhecido (unknown field)",
            "ação 3 (email): modelo de e-mail não encontrado (template not found): 'Nenhum'",
            "ação 3 (email): destinatário inválido (bad recipient) 'não é email': "
            "use contact, owner ou um e-mail",
            "ação 4 (action): tipo desconhecido (unknown kind) 'tarefa'; "
            "use playbook, update, email",
        ]

    def test_numbers_out_of_range_name_their_action_or_field(self, world: Service) -> None:
        renewal = {"field": "renewal_date", "operation": "within_next_days"}
        problems = self.refused(
            world,
            {
                "conditions": [
                    {**renewal, "value": -3},
                    {**renewal, "value": 36_501},
                    {"field": "mrr", "operation": "gt", "value": float("nan")},
                    {"field": "open_tasks", "operation": "gt", "value": float("inf")},
                    {"field": "mrr", "operation": "between", "value": [0, 2**63]},
                ],
                "actions": [
                    {"kind": "playbook", "playbook": "Onboarding", "cooldown_days": -3},
                    {"kind": "playbook", "playbook": "Onboarding", "cooldown_days": 2.5},
                    {"kind": "playbook", "playbook": "Onboarding", "cooldown_days": 0.0},
                    {"kind": "playbook", "playbook": "Onboarding", "cooldown_days": True},
                    {"kind": "playbook", "playbook": "Onboarding", "cooldown_days": 10**9},
                ],
            },
        )
        days = "pede um número inteiro de dias de 0 a 36500 (whole days, 0 to 36500)"
        out_of_range = "número fora do intervalo (number out of range)"
        finite = "use um número finito de até 9223372036854775807"
        cooldown = (
            "cooldown_days deve ser um número inteiro de dias de 0 a 36500 "
            "(whole days, 0 to 36500)"
        )
        assert problems == [
            f"condição 1 (condition), campo 'renewal_date': within_next_days {days}: -3",
            f"condição 2 (condition), campo 'renewal_date': within_next_days {days}: 36501",
            f"condição 3 (condition), campo 'mrr': {out_of_range}: nan; {finite}",
            f"condição 4 (condition), campo 'open_tasks': {out_of_range}: inf; {finite}",
            f"condição 5 (condition), campo 'mrr': {out_of_range}: 9223372036854775808; {finite}",
            f"ação 1 (playbook): {cooldown}: -3",
            f"ação 2 (playbook): {cooldown}: 2.5",
            f"ação 3 (playbook): {cooldown}: 0.0",
            f"ação 4 (playbook): {cooldown}: True",
            f"ação 5 (playbook): {cooldown}: 1000000000",
        ]

    def test_every_below_one_is_refused(self, world: Service) -> None:
        actions = [{"kind": "update", "set": {"stage": "x"}}]
        for every in (0, -1, 1.5, True):
            assert self.refused(world, {"every": every, "actions": actions}) == [
                f"every: inteiro de 1 a 10000 (whole number): {every!r}"
            ]

    def test_a_cooldown_of_zero_is_no_cooldown(self, world: Service) -> None:
        rule_id = make_rule(
            world, [{"kind": "playbook", "playbook": "Onboarding", "cooldown_days": 0}]
        )
        with world.sessions() as session:
            assert session.get_one(Rule, rule_id).actions == [
                {"kind": "playbook", "playbook": "Onboarding"}
            ]

    def test_a_rule_needs_an_action(self, world: Service) -> None:
        assert self.refused(world, {"actions": []}) == [
            "a regra precisa de ao menos uma ação (at least one action)"
        ]

    def test_names_are_unique(self, world: Service) -> None:
        make_rule(world, [{"kind": "update", "set": {"stage": "x"}}])
        with pytest.raises(RuleExists), world.transaction() as session:
            create_rule(
                session, {"name": "regra", "actions": [{"kind": "update", "set": {"stage": "y"}}]}
            )

    def test_stored_form(self, world: Service) -> None:
        rule_id = make_rule(
            world,
            [
                {"kind": "email", "template": "Curto", "to": ["Contato", "Chefe@Empresa.com.br"]},
                {"kind": "update", "set": {"mrr": "1.000,00", "proximo_contato": "15/07/2025"}},
            ],
            unit="dias",
            time_of_day="8h30",
        )
        with world.sessions() as session:
            rule = session.get_one(Rule, rule_id)
            assert rule.actions == [
                {"kind": "email", "template": "Curto", "to": ["contact", "chefe@empresa.com.br"]},
                {"kind": "update", "set": {"mrr": 1000, "proximo_contato": "2025-07-15"}},
            ]
            assert (rule.unit, rule.time_of_day.isoformat()) == ("days", "08:30:00")
            # Created at 09:00 local with 08:30 as the time: first due tomorrow 08:30.
            assert rule.next_run_at == datetime(2025, 6, 19, 11, 30, tzinfo=UTC)

    def test_edit_checks_the_whole_rule_again(self, world: Service) -> None:
        rule_id = make_rule(world, [{"kind": "update", "set": {"stage": "x"}}])
        with pytest.raises(InvalidRule, match="unknown field"), world.transaction() as session:
            edit_rule(session, rule_id, {"conditions": [{"field": "x", "operation": "is_empty"}]})
        with world.transaction() as session:
            edited = edit_rule(session, rule_id, {"match": "any", "every": 2}, now=NOW)
            assert (edited.match, edited.every, edited.conditions) == ("any", 2, VAREJO_STORED)


VAREJO_STORED = [
    {"category": "customer", "field": "segment", "operation": "equals", "value": "Varejo"}
]


class TestFiles:
    DEFINITION: ClassVar[dict[str, Any]] = {
        "name": "Renovação em 30 dias",
        "active": True,
        "every": 1,
        "unit": "days",
        "timezone": "America/Sao_Paulo",
        "starts_at": "2025-06-18T08:00:00",
        "match": "any",
        "conditions": [
            {
                "category": "customer",
                "field": "renewal_date",
                "operation": "within_next_days",
                "value": 30,
            },
            {"category": "custom", "field": "plano", "operation": "one_of", "value": ["ouro"]},
        ],
        "actions": [
            {"kind": "playbook", "playbook": "Onboarding", "cooldown_days": 60},
            {"kind": "update", "set": {"stage": "renovação", "proximo_contato": "+7d"}},
            {"kind": "email", "template": "Aviso", "to": ["contact", "owner"]},
        ],
        "time_of_day": "08:00",
    }

    @pytest.mark.parametrize("suffix", [".toml", ".yaml"])
    def test_export_then_import_gives_the_same_rule(
        self, world: Service, tmp_path: Path, suffix: str
    ) -> None:
        with world.transaction() as session:
            create_rule(session, self.DEFINITION, now=NOW)
        file = tmp_path / f"regras{suffix}"
        with world.sessions() as session:
            assert export_rules(session, ["Renovação em 30 dias"], file) == [
                "Renovação em 30 dias"
            ]
        assert read_rule_file(file) == [self.DEFINITION]

        with world.transaction() as session:
            session.execute(Rule.__table__.delete())
        with world.transaction() as session:
            report = import_rules(session, file, now=NOW)
        assert report.created == ["Renovação em 30 dias"]
        with world.sessions() as session:
            [rule] = session.scalars(select(Rule)).all()
            assert rule_definition(rule) == self.DEFINITION

    def test_toml_written_by_hand(self, world: Service, tmp_path: Path) -> None:
        file = tmp_path / "regra.toml"
        file.write_text(
            """
[[rules]]
name = "Boas-vindas"
unit = "weeks"
time_of_day = 09:00:00
starts_at = 2025-06-16

[[rules.conditions]]
field = "open_playbook"
operation = "is_empty"

[[rules.actions]]
kind = "playbook"
playbook = "Onboarding"
""",
            encoding="utf-8",
        )
        with world.transaction() as session:
            assert import_rules(session, file, now=NOW).created == ["Boas-vindas"]
        with world.sessions() as session:
            rule = session.scalar(select(Rule))
            assert rule.starts_at == datetime(2025, 6, 16, 12, 0, tzinfo=UTC)
            assert rule.next_run_at == datetime(2025, 6, 23, 12, 0, tzinfo=UTC)

    def test_import_replaces_by_name(self, world: Service, tmp_path: Path) -> None:
        make_rule(world, [{"kind": "update", "set": {"stage": "x"}}], name="Boas-vindas", every=3)
        file = tmp_path / "regra.yaml"
        file.write_text(
            yaml.safe_dump(
                {
                    "name": "Boas-vindas",
                    "actions": [{"kind": "playbook", "playbook": "Onboarding"}],
                }
            ),
            encoding="utf-8",
        )
        with world.transaction() as session:
            assert import_rules(session, file, now=NOW).updated == ["Boas-vindas"]
        with world.sessions() as session:
            rule = session.scalar(select(Rule))
            assert (rule.every, rule.conditions) == (1, [])
            assert rule.actions == [{"kind": "playbook", "playbook": "Onboarding"}]

    def test_unknown_keys_are_refused_at_every_level(self, world: Service, tmp_path: Path) -> None:
        file = tmp_path / "regra.toml"
        file.write_text(
            """
[[rules]]
name = "Chaves"
cor = "azul"

[[rules.conditions]]
field = "segment"
operation = "equals"
value = "Varejo"

[[rules.conditions]]
field = "mrr"
operation = "gt"
value = 10
extra_key = 1
peso = 2

[[rules.actions]]
kind = "playbook"
playbook = "Onboarding"
cooldown_days = -3
prioridade = 1
""",
            encoding="utf-8",
        )
        with pytest.raises(InvalidRule) as caught, world.transaction() as session:
            import_rules(session, file, now=NOW)
        assert caught.value.problems == [
            "Chaves: chave desconhecida (unknown key): cor",
            "Chaves: condição 2 (condition), campo 'mrr': chave desconhecida (unknown key): "
            "extra_key, peso",
            "Chaves: ação 1 (playbook): chave desconhecida (unknown key): prioridade",
            "Chaves: ação 1 (playbook): cooldown_days deve ser um número inteiro de dias de 0 "
            "a 36500 (whole days, 0 to 36500): -3",
        ]
        assert count(world, Rule) == 0

    def test_a_wrong_rule_imports_nothing(self, world: Service, tmp_path: Path) -> None:
        file = tmp_path / "regras.yaml"
        file.write_text(
            yaml.safe_dump(
                {
                    "rules": [
                        {"name": "Boa", "actions": [{"kind": "update", "set": {"stage": "a"}}]},
                        {"name": "Ruim", "actions": [{"kind": "email", "template": "X"}]},
                    ]
                }
            ),
            encoding="utf-8",
        )
        with pytest.raises(InvalidRule) as caught, world.transaction() as session:
            import_rules(session, file, now=NOW)
        assert caught.value.problems == [
            "Ruim: ação 1 (email): modelo de e-mail não encontrado (template not found): 'X'",
            "Ruim: ação 1 (email): to deve listar contact, owner ou endereços (recipients)",
        ]
        assert count(world, Rule) == 0


def outbox_headers(service: Service) -> dict[str, dict[str, str]]:
    """Each queued rule email's headers, by recipient."""
    with service.sessions() as session:
        rows = session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))
        return {row.recipients[0]: dict(row.headers) for row in rows}


class TestReplyTo:
    SIMPLES: ClassVar[dict[str, Any]] = {
        "kind": "email",
        "template": "Simples",
        "to": ["contact"],
    }

    def rule(self, service: Service) -> int:
        with service.transaction() as session:
            session.add(EmailTemplate(name="Simples", subject="Oi", body_text="Olá\n"))
        return make_rule(service, [self.SIMPLES])

    def test_the_owner_gets_the_replies_and_a_card_without_one_sets_none(
        self, world: Service
    ) -> None:
        run(world, self.rule(world))

        headers = outbox_headers(world)
        assert headers["compras@acme.com.br"] == {
            "Auto-Submitted": "auto-generated",
            "X-Portaria-Loop": "acesso@portaria.test",
            "X-Auto-Response-Suppress": "OOF, AutoReply",
            "List-Unsubscribe": f"<{link(world, 'compras@acme.com.br')}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            "Reply-To": "Ana Souza <ana@cs.example.com.br>",
        }
        assert headers["ti@beta.com.br"]["Reply-To"] == "Ana Souza <ana@cs.example.com.br>"
        assert "Reply-To" not in headers["delta@delta.com.br"]

    def test_an_inactive_owner_gets_no_replies(self, world: Service) -> None:
        with world.transaction() as session:
            session.execute(User.__table__.update().where(User.email == ANA).values(active=False))
        run(world, self.rule(world))
        assert ["Reply-To" in h for h in outbox_headers(world).values()] == [False] * 3

    @pytest.mark.parametrize(
        ("owner", "expected"),
        [
            (None, None),
            (CardOwner("ana@cs.example.com.br", "Ana Souza", True),
             "Ana Souza <ana@cs.example.com.br>"),
            # "João Ávila", encoded (RFC 2047): a header carries ASCII only.
            (CardOwner("joao@cs.example.com.br", "João Ávila", True),
             "=?utf-8?b?Sm/Do28gw4F2aWxh?= <joao@cs.example.com.br>"),
            (CardOwner("ana@cs.example.com.br", "Ana\r\nBcc: x@y.com", True),
             '"Ana Bcc: x@y.com" <ana@cs.example.com.br>'),
            (CardOwner("ana@cs.example.com.br\r\nBcc: x@y.com", "Ana", True), None),
            (CardOwner("não é e-mail", "Ana", True), None),
            (CardOwner("joão@cs.example.com.br", "João", True), None),
            (CardOwner("ana@cs.example.com.br", "Ana", False), None),
        ],
    )  # fmt: skip
    def test_only_a_clean_address_reaches_the_header(
        self, owner: CardOwner | None, expected: str | None
    ) -> None:
        assert reply_to_owner(owner) == expected


class TestRemove:
    def test_history_goes_and_the_loads_stay(self, world: Service) -> None:
        rule_id = make_rule(world, [{"kind": "playbook", "playbook": "Onboarding"}])
        run(world, rule_id)
        run(world, rule_id, NOW + timedelta(days=1))

        with world.transaction() as session:
            removed = remove_rule(session, "regra")

        assert removed == RemovedRule(id=rule_id, name="Regra", runs=2, loads=3)
        assert count(world, Rule) == 0
        assert count(world, RuleRun) == 0
        assert count(world, PlaybookLoad, PlaybookLoad.rule_id.is_(None)) == 3
        assert count(world, Task, Task.status == "open") == 9


runner = CliRunner()

CONFIG = """\
[database]
url = "sqlite:///portaria.db"

[mailbox]
maildir = "mail/inbox"

[outbound]
maildir = "mail/outbox"
from_address = "acesso@portaria.test"

[service]
base_url = "https://portaria.test"
"""


@pytest.fixture
def cli(
    world: Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., tuple[int, str]]:
    """`portaria` on the world's database, through a configuration file beside it."""
    for name in list(os.environ):
        if name.startswith("PORTARIA_"):
            monkeypatch.delenv(name)
    config = tmp_path / "portaria.toml"
    config.write_text(CONFIG, encoding="utf-8")

    def portaria(*args: str) -> tuple[int, str]:
        result = runner.invoke(app, [*args, "--config", str(config)], env={"COLUMNS": "200"})
        return result.exit_code, result.output

    return portaria


class TestCommands:
    def test_remove_says_what_went(
        self, world: Service, cli: Callable[..., tuple[int, str]]
    ) -> None:
        rule_id = make_rule(world, [{"kind": "playbook", "playbook": "Onboarding"}])
        run(world, rule_id)

        assert cli("rules", "remove", "Regra") == (
            0,
            f"Regra removida (rule removed): Regra (#{rule_id}); 1 execução(ões) apagada(s) "
            "do histórico (runs deleted); 3 carga(s) de playbook continuam nos clientes "
            "(loads kept)\n",
        )
        assert cli("rules", "remove", "Regra") == (
            1,
            "erro (error): Regra não encontrada (rule not found): Regra\n",
        )

    def test_remove_help_says_history_is_deleted(
        self, cli: Callable[..., tuple[int, str]]
    ) -> None:
        code, output = cli("rules", "remove", "--help")
        assert code == 0
        assert "execuções dela é apagado" in output and "run history is deleted" in output

    def test_support_unsubscribes_an_address(
        self, world: Service, cli: Callable[..., tuple[int, str]]
    ) -> None:
        assert cli("rules", "unsubscribed") == (
            0,
            "nenhum endereço descadastrado (no unsubscribed addresses)\n",
        )
        unsubscribe = ("rules", "unsubscribe", " Compras@Acme.com.br")
        assert cli(*unsubscribe, "--by", "ana.suporte@portaria.test") == (
            0,
            "Descadastrado (unsubscribed): compras@acme.com.br; nenhuma regra enviará "
            "e-mail a ele\n",
        )
        assert cli("rules", "unsubscribe", "compras@acme.com.br") == (
            0,
            "Já estava descadastrado (already unsubscribed): compras@acme.com.br\n",
        )
        assert cli("rules", "unsubscribe", "compras arroba acme") == (
            1,
            "erro (error): endereço inválido (bad address) 'compras arroba acme': use um "
            "e-mail como nome@empresa.com.br\n",
        )

        code, output = cli("rules", "unsubscribed")
        assert code == 0
        [row] = [line for line in output.splitlines() if "compras@acme.com.br" in line]
        assert re.fullmatch(
            r"│ compras@acme\.com\.br │ \d\d/\d\d/\d{4} \d\d:\d\d "
            r"│ ana\.suporte@portaria\.test\s+│",
            row,
        )
        with world.sessions() as session:
            assert [(u.email, u.source) for u in session.scalars(select(Unsubscribe))] == [
                ("compras@acme.com.br", "ana.suporte@portaria.test")
            ]

    def test_preview_of_an_email_nobody_would_get(
        self, world: Service, cli: Callable[..., tuple[int, str]]
    ) -> None:
        make_rule(
            world,
            [{"kind": "email", "template": "Curto", "to": ["contact"]}],
            conditions=[{"field": "code", "operation": "one_of", "value": ["ACME", "GAMA"]}],
        )
        with world.sessions() as session:
            result = preview(session, world.settings, "Regra", TODAY)
        gama = next(c for c in result.customers if c.code == "GAMA")
        [outcome] = gama.emails
        assert (outcome.sending, outcome.rendered, outcome.problem) == ([], None, None)

        code, output = cli("rules", "preview", "Regra", "--today", "18/06/2025", "--emails")
        assert code == 0, output
        assert output == (
            "Preview de 'Regra' em 18/06/2025 (nada foi alterado; nothing was changed)\n"
            "Clientes escolhidos (matched): 2\n"
            "- ACME Acme & Filhos\n"
            "    e-mail 'Curto': para (to) compras@acme.com.br\n"
            "    Para (to): compras@acme.com.br\n"
            f"    Responder a (Reply-To): Ana Souza <{ANA}>\n"
            "    Assunto (subject): Oi ACME\n"
            "      | Ana Souza\n"
            "      | \n"
            "      | -- \n"
            "      | Para não receber mais estes e-mails (to stop these emails):\n"
            f"      | {link(world, 'compras@acme.com.br')}\n"
            "- GAMA Gama SA\n"
            "    e-mail 'Curto': ninguém (nobody)\n"
            "    e-mail para contact: não envia (skip): sem e-mail de contato (no address)\n"
            "    e-mail 'Curto': sem destinatário (no recipient)\n"
        )
