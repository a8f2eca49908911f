"""Rule actions: the kinds a rule may take, checking them, and doing them.

The kinds are a table (:data:`ACTION_KINDS`), and each kind is a class that
applies to a batch of cards and says what it would do to one card:

* ``playbook`` (:class:`PlaybookAction`) loads a playbook onto the card
  unless the card has an open load of it, or had a load of it within
  ``cooldown_days``;
* ``update`` (:class:`UpdateAction`) sets fields (dates may be relative to
  today, ``+7d``);
* ``email`` (:class:`EmailAction`) renders an admin template and queues it in
  the outbox for the contact, the owner or fixed addresses, at most once per
  recipient per run, at most ``engine.email_cap_per_recipient_per_day`` per
  recipient per day across rules (the ``RuleEmail`` ledger), never to an
  unsubscribed address (:class:`RecipientLedger`). Each recipient's copy
  carries its own one-click unsubscribe link (``engine.unsubscribe``) and,
  when the card has an active owner, a Reply-To of that owner, so answers
  reach a person and not the access-request mailbox.

Every action is idempotent, so a run redone after a crash does nothing twice.
Saving a rule checks its actions here (:func:`normalise_actions`); runs and
previews (``engine.runs``) bind them to their playbooks and templates
(:func:`bind_actions`) and share one :class:`RunContext`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from email.utils import formataddr
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from config.settings import Settings
from engine.calendar import BusinessCalendar, calendar_from_settings
from engine.conditions import MAX_DAYS, InvalidDate, resolve_date
from engine.customers import (
    CustomerField,
    Owner,
    coerce_value,
    customer_fields,
    owners_by_email,
)
from engine.errors import (
    EmailRenderError,
    EmailTemplateNotFound,
    EngineError,
    InvalidCustomerValue,
    PlaybookNotFound,
)
from engine.models import (
    Customer,
    EmailTemplate,
    Playbook,
    PlaybookLoad,
    Rule,
    RuleEmail,
    Unsubscribe,
)
from engine.playbooks import get_playbook, load_playbook_many
from engine.templating import RenderedEmail, email_context, get_template, render_email
from engine.unsubscribe import ONE_CLICK, UnsubscribeLinks, unsubscribe_links
from portaria.letters import single_line
from portaria.outbox import InvalidRecipient, check_recipient, enqueue_letter
from portaria.outbox_models import OutboxMessage
from provisioning.models import User

log = logging.getLogger(__name__)

ACTION_KINDS: dict[str, str] = {
    "playbook": "Carregar playbook (load a playbook)",
    "update": "Atualizar campos (update fields)",
    "email": "Enviar e-mail (send an email)",
}
# Words for the recipients of an email action; anything else is a fixed address.
RECIPIENT_WORDS = {
    "contact": "contact",
    "contato": "contact",
    "owner": "owner",
    "responsavel": "owner",
    "responsável": "owner",
}
# Fields an update action may not set: a rule renaming codes would break imports.
READ_ONLY_FIELDS = frozenset({"code"})
OUTBOX_KIND = "rule_email"


def describe_action(action: Mapping[str, Any]) -> str:
    """One line a person reads for a stored action."""
    kind = action.get("kind")
    if kind == "playbook":
        cooldown = action.get("cooldown_days")
        extra = f", intervalo mínimo {cooldown} dias (cool-down)" if cooldown else ""
        return f"carregar playbook (load) {action.get('playbook')!r}{extra}"
    if kind == "update":
        pairs = ", ".join(f"{k} = {v!r}" for k, v in (action.get("set") or {}).items())
        return f"atualizar (update) {pairs}"
    if kind == "email":
        return f"e-mail {action.get('template')!r} para (to) {', '.join(action.get('to') or [])}"
    return f"ação desconhecida (unknown action) {kind!r}"


# Checking ---------------------------------------------------------------------------------


def normalise_actions(
    session: Session, actions: Sequence[Any], problems: list[str]
) -> list[dict[str, Any]]:
    """Actions as a rule stores them; what is wrong is added to ``problems``, one line each."""
    specs: dict[str, CustomerField] | None = None
    owners: dict[str, Owner] | None = None
    stored: list[dict[str, Any]] = []
    for position, action in enumerate(actions, start=1):
        label = f"ação {position} (action)"
        if not isinstance(action, Mapping):
            problems.append(f"{label}: deve ser uma tabela (must be a mapping)")
            continue
        kind = str(action.get("kind") or "").strip().lower()
        if kind not in ACTION_KINDS:
            problems.append(
                f"{label}: tipo desconhecido (unknown kind) {kind!r}; "
                f"use {', '.join(ACTION_KINDS)}"
            )
            continue
        label = f"ação {position} ({kind})"
        allowed = {"playbook": {"playbook", "cooldown_days"}, "update": {"set"}}.get(
            kind, {"template", "to"}
        )
        extra = sorted(set(action) - allowed - {"kind"})
        if extra:
            problems.append(f"{label}: chave desconhecida (unknown key): {', '.join(extra)}")
        if kind == "playbook":
            checked = _playbook_action(session, action, label, problems)
        elif kind == "update":
            if specs is None:
                specs = {spec.key: spec for spec in customer_fields(session)}
                owners = owners_by_email(session)
            checked = _update_action(action, specs, owners or {}, label, problems)
        else:
            checked = _email_action(session, action, label, problems)
        if checked is not None:
            stored.append({"kind": kind, **checked})
    return stored


def _playbook_action(
    session: Session, action: Mapping[str, Any], label: str, problems: list[str]
) -> dict[str, Any] | None:
    name = str(action.get("playbook") or "").strip()
    try:
        playbook = get_playbook(session, name) if name else None
    except PlaybookNotFound:
        playbook = None
    if playbook is None:
        problems.append(f"{label}: playbook não encontrado (playbook not found): {name!r}")
        return None
    if playbook.status != "active":
        problems.append(
            f"{label}: playbook {playbook.name!r} está {playbook.status} e não pode ser "
            "carregado (not loadable)"
        )
    checked: dict[str, Any] = {"playbook": playbook.name}
    cooldown = action.get("cooldown_days")
    if cooldown is None:
        return checked
    if (
        isinstance(cooldown, bool)
        or not isinstance(cooldown, int)
        or not 0 <= cooldown <= MAX_DAYS
    ):
        problems.append(
            f"{label}: cooldown_days deve ser um número inteiro de dias de 0 a {MAX_DAYS} "
            f"(whole days, 0 to {MAX_DAYS}): {cooldown!r}"
        )
    elif cooldown:
        checked["cooldown_days"] = cooldown
    return checked


def _update_action(
    action: Mapping[str, Any],
    specs: Mapping[str, CustomerField],
    owners: Mapping[str, Owner],
    label: str,
    problems: list[str],
) -> dict[str, Any] | None:
    values = action.get("set")
    if not isinstance(values, Mapping) or not values:
        problems.append(f"{label}: set deve listar campo = valor (fields to set)")
        return None
    stored: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = str(raw_key).removeprefix("custom.")
        spec = specs.get(key)
        if spec is None or key in READ_ONLY_FIELDS:
            problems.append(f"{label}, campo {raw_key!r}: campo desconhecido (unknown field)")
            continue
        try:
            stored[key] = _stored_update_value(spec, value, owners)
        except (InvalidCustomerValue, InvalidDate) as exc:
            problems.append(f"{label}, campo {key!r}: {exc}")
    return {"set": stored} if stored else None


def _stored_update_value(spec: CustomerField, value: Any, owners: Mapping[str, Owner]) -> Any:
    """A value as the rule stores it: JSON, relative dates kept, owner as email."""
    if value is None or (isinstance(value, str) and not value.strip()):
        coerce_value(spec, None)  # refuses clearing a required field
        return None
    if spec.kind == "date":
        if isinstance(value, str) and _is_relative(value):
            resolve_date(value, date(2000, 1, 1))
            return value.strip().lower()
        day = coerce_value(spec, value)
        return day if isinstance(day, str) else day.isoformat()
    coerced = coerce_value(spec, value, owners)
    if spec.kind == "user":
        return next(o.email for o in owners.values() if o.id == coerced)
    if isinstance(coerced, Decimal):
        return int(coerced) if coerced == coerced.to_integral_value() else float(coerced)
    return coerced


def _is_relative(value: str) -> bool:
    text = value.strip().lower()
    return text in ("today", "hoje") or text[:1] in ("+", "-")


def _email_action(
    session: Session, action: Mapping[str, Any], label: str, problems: list[str]
) -> dict[str, Any] | None:
    name = str(action.get("template") or "").strip()
    try:
        template = get_template(session, name) if name else None
    except EmailTemplateNotFound:
        template = None
    if template is None:
        problems.append(f"{label}: modelo de e-mail não encontrado (template not found): {name!r}")
    to = action.get("to")
    if isinstance(to, str):
        to = [to]
    if not isinstance(to, list) or not to:
        problems.append(f"{label}: to deve listar contact, owner ou endereços (recipients)")
        return None
    recipients: list[str] = []
    for item in to:
        word = RECIPIENT_WORDS.get(str(item).strip().lower())
        if word is not None:
            recipients.append(word)
            continue
        try:
            recipients.append(check_recipient(str(item)).lower())
        except InvalidRecipient:
            problems.append(
                f"{label}: destinatário inválido (bad recipient) {item!r}: "
                "use contact, owner ou um e-mail"
            )
    if template is None:
        return None
    return {"template": template.name, "to": list(dict.fromkeys(recipients))}


# Applying ---------------------------------------------------------------------------------


@dataclass
class RecipientLedger:
    """Which addresses may still get a rule email: unsubscribes, per-run and per-day caps.

    Counts start from the ``RuleEmail`` ledger and grow as emails are queued,
    so a preview can play a whole run forward without writing anything.
    """

    cap: int
    today: date
    unsubscribed: frozenset[str]
    this_run: set[str] = field(default_factory=set)
    today_counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(
        cls, session: Session, *, cap: int, today: date, run_id: int | None
    ) -> RecipientLedger:
        unsubscribed = frozenset(e.lower() for e in session.scalars(select(Unsubscribe.email)))
        ledger = cls(cap=cap, today=today, unsubscribed=unsubscribed)
        if run_id is not None:
            ledger.this_run = set(
                session.scalars(select(RuleEmail.recipient).where(RuleEmail.run_id == run_id))
            )
        return ledger

    def refusal(self, session: Session, address: str) -> str | None:
        """Why ``address`` gets no email now, or None when it may."""
        if address in self.unsubscribed:
            return "descadastrado (unsubscribed)"
        if address in self.this_run:
            return "já recebe nesta execução (one per run)"
        if self._count(session, address) >= self.cap:
            return f"limite diário de {self.cap} atingido (daily cap)"
        return None

    def record(self, address: str) -> None:
        self.this_run.add(address)
        self.today_counts[address] = self.today_counts.get(address, 0) + 1

    def snapshot(self) -> tuple[set[str], dict[str, int]]:
        return set(self.this_run), dict(self.today_counts)

    def restore(self, state: tuple[set[str], dict[str, int]]) -> None:
        self.this_run, self.today_counts = set(state[0]), dict(state[1])

    def _count(self, session: Session, address: str) -> int:
        if address not in self.today_counts:
            self.today_counts[address] = (
                session.scalar(
                    select(func.count(RuleEmail.id)).where(
                        RuleEmail.recipient == address, RuleEmail.sent_on == self.today
                    )
                )
                or 0
            )
        return self.today_counts[address]


@dataclass
class RunContext:
    """What every action of one run (or preview) shares."""

    rule: Rule
    settings: Settings
    today: date
    now: datetime
    ledger: RecipientLedger
    run_id: int | None = None
    calendar: BusinessCalendar | None = None
    owners: dict[str, Owner] | None = None
    specs: dict[str, CustomerField] | None = None
    links: UnsubscribeLinks | None = None

    def unsubscribe_links(self) -> UnsubscribeLinks:
        """The link signer, made once: it reads the secret key (and may refuse)."""
        if self.links is None:
            self.links = unsubscribe_links(self.settings)
        return self.links

    def owner_map(self, session: Session) -> dict[str, Owner]:
        if self.owners is None:
            self.owners = owners_by_email(session)
        return self.owners

    def field_specs(self, session: Session) -> dict[str, CustomerField]:
        if self.specs is None:
            self.specs = {spec.key: spec for spec in customer_fields(session)}
        return self.specs


class PlaybookAction:
    """Load a playbook onto each card without an open load of it or a recent load."""

    kind = "playbook"

    def __init__(self, index: int, playbook: Playbook, cooldown_days: int | None) -> None:
        self.index = index
        self.playbook = playbook
        self.cooldown_days = cooldown_days

    def blocked(
        self, session: Session, customer_ids: Sequence[int], today: date
    ) -> dict[int, str]:
        """Customers to skip, with the reason. Any open load blocks, not only this rule's:
        one card never carries the same playbook twice at once."""
        reasons: dict[int, str] = {}
        for chunk in batches(customer_ids, 500):
            open_ids = session.scalars(
                select(PlaybookLoad.customer_id).where(
                    PlaybookLoad.playbook_id == self.playbook.id,
                    PlaybookLoad.status == "open",
                    PlaybookLoad.customer_id.in_(chunk),
                )
            )
            for customer_id in open_ids:
                reasons[customer_id] = "já tem o playbook em aberto (open load)"
            if not self.cooldown_days:
                continue
            since = today - timedelta(days=self.cooldown_days)
            recent = session.execute(
                select(PlaybookLoad.customer_id, func.max(PlaybookLoad.loaded_on))
                .where(
                    PlaybookLoad.playbook_id == self.playbook.id,
                    PlaybookLoad.customer_id.in_(chunk),
                    PlaybookLoad.loaded_on > since,
                )
                .group_by(PlaybookLoad.customer_id)
            )
            for customer_id, loaded_on in recent:
                until = loaded_on + timedelta(days=self.cooldown_days)
                reasons.setdefault(
                    customer_id,
                    f"carregado em {loaded_on:%d/%m/%Y}; intervalo até {until:%d/%m/%Y}",
                )
        return reasons

    def apply(
        self, session: Session, context: RunContext, customers: Sequence[Customer]
    ) -> set[int]:
        ids = [c.id for c in customers]
        blocked = self.blocked(session, ids, context.today)
        eligible = [i for i in ids if i not in blocked]
        if not eligible:
            return set()
        if context.calendar is None:
            context.calendar = calendar_from_settings(context.settings)
        load_playbook_many(
            session,
            self.playbook.id,
            eligible,
            loaded_by=f"rule:{context.rule.id}",
            today=context.today,
            calendar=context.calendar,
            rule_id=context.rule.id,
        )
        return set(eligible)

    def preview(
        self, session: Session, context: RunContext, customer: Customer, blocked: Mapping[int, str]
    ) -> str:
        reason = blocked.get(customer.id)
        if reason is not None:
            return f"playbook {self.playbook.name!r}: não carrega (skip): {reason}"
        return f"playbook {self.playbook.name!r}: carrega (would load)"


class UpdateAction:
    """Set fields of each card; relative dates are taken from the run's today."""

    kind = "update"

    def __init__(self, index: int, values: Mapping[str, Any]) -> None:
        self.index = index
        self.values = dict(values)

    def changes(
        self, session: Session, context: RunContext, customer: Customer
    ) -> dict[str, tuple[Any, Any]]:
        """Field → (current, new) for the fields whose value would change."""
        specs = context.field_specs(session)
        found: dict[str, tuple[Any, Any]] = {}
        for key, value in self.values.items():
            spec = specs[key]
            if spec.kind == "date" and isinstance(value, str) and _is_relative(value):
                value = resolve_date(value, context.today)
            new = coerce_value(
                spec, value, context.owner_map(session) if spec.kind == "user" else None
            )
            current = (
                (customer.custom or {}).get(key)
                if spec.custom
                else getattr(customer, spec.column or key)
            )
            if not _same(current, new):
                found[key] = (current, new)
        return found

    def apply(
        self, session: Session, context: RunContext, customers: Sequence[Customer]
    ) -> set[int]:
        specs = context.field_specs(session)
        changed: set[int] = set()
        for customer in customers:
            changes = self.changes(session, context, customer)
            if not changes:
                continue
            custom = dict(customer.custom or {})
            for key, (_, new) in changes.items():
                spec = specs[key]
                if spec.custom:
                    if new is None:
                        custom.pop(key, None)
                    else:
                        custom[key] = new
                else:
                    setattr(customer, spec.column or key, new)
            if custom != (customer.custom or {}):
                customer.custom = custom
            changed.add(customer.id)
        session.flush()
        return changed

    def preview(self, session: Session, context: RunContext, customer: Customer) -> str:
        changes = self.changes(session, context, customer)
        if not changes:
            return "atualizar: nada muda (update: no change)"
        shown = ", ".join(
            f"{k}: {_shown(old)} → {_shown(new)}" for k, (old, new) in changes.items()
        )
        return f"atualizar (update): {shown}"


@dataclass
class PlannedEmail:
    """One recipient of one customer's email, in a preview: sent or skipped, and why."""

    to: str
    skipped: str | None = None


@dataclass
class EmailOutcome:
    """A customer's email in a preview: recipients, the rendered letter or the problem.

    Nothing is rendered when no recipient would get it, as in a run.
    """

    template: str
    recipients: list[PlannedEmail]
    rendered: RenderedEmail | None = None
    problem: str | None = None
    reply_to: str | None = None

    @property
    def sending(self) -> list[str]:
        return [p.to for p in self.recipients if p.skipped is None]


@dataclass(frozen=True)
class CardOwner:
    """The owner of a card as a rule email needs it: where replies go."""

    email: str
    name: str
    active: bool


def reply_to_owner(owner: CardOwner | None) -> str | None:
    """A Reply-To header value for the card's owner, or None.

    None without an owner, for an inactive one (nobody reads that mailbox),
    and for an address that is not exactly one ASCII addr-spec: it goes into a
    header, so a line break or an odd address must never get there.
    """
    if owner is None or not owner.active:
        return None
    try:
        address = check_recipient(owner.email)
    except InvalidRecipient:
        return None
    if not address.isascii():
        return None
    # formataddr quotes the name and encodes it (RFC 2047) when it is not ASCII.
    return formataddr((single_line(owner.name), address))


class EmailAction:
    """Render a template for each card and queue it for its recipients."""

    kind = "email"

    def __init__(self, index: int, template: EmailTemplate, to: Sequence[str]) -> None:
        self.index = index
        self.template = template
        self.to = list(to)

    def addresses(
        self, customer: Customer, owner_email: str | None
    ) -> list[tuple[str, str | None]]:
        """(recipient as written, address or None when the card has none)."""
        found: list[tuple[str, str | None]] = []
        for item in self.to:
            if item == "contact":
                address = customer.contact_email
            elif item == "owner":
                address = owner_email
            else:
                address = item
            found.append((item, address.strip().lower() if address else None))
        return found

    def variables(
        self, session: Session, context: RunContext, customer: Customer
    ) -> dict[str, Any]:
        """The customer's template variables, without a recipient's unsubscribe link."""
        playbook = next(
            (a["playbook"] for a in context.rule.actions if a.get("kind") == "playbook"), None
        )
        return email_context(
            session, customer, today=context.today, rule=context.rule, playbook_name=playbook
        )

    def render(
        self, context: RunContext, variables: Mapping[str, Any], address: str
    ) -> tuple[RenderedEmail, str]:
        """The letter as ``address`` gets it, with the link only that address can use."""
        link = context.unsubscribe_links().url(address)
        letter = render_email(
            self.template, {**variables, "unsubscribe_url": link, "unsubscribe": link}
        )
        return letter, link

    def apply(
        self, session: Session, context: RunContext, customers: Sequence[Customer]
    ) -> set[int]:
        owners = card_owners(session, customers)
        mailed: set[int] = set()
        for customer in customers:
            owner = owners.get(customer.owner_id)
            wanted = []
            for _, address in self.addresses(customer, owner.email if owner else None):
                if address is None or address in wanted:
                    continue
                if context.ledger.refusal(session, address) is None:
                    wanted.append(address)
            if not wanted:
                continue
            variables = self.variables(session, context, customer)
            reply_to = reply_to_owner(owner)
            for address in wanted:
                letter, link = self.render(context, variables, address)
                row = enqueue_rule_email(
                    session,
                    context.settings,
                    email=letter,
                    to=address,
                    cause=f"rule:{context.rule.id}:run:{context.run_id}:customer:{customer.id}",
                    now=context.now,
                    unsubscribe_url=link,
                    reply_to=reply_to,
                )
                session.add(
                    RuleEmail(
                        rule_id=context.rule.id,
                        run_id=context.run_id,
                        customer_id=customer.id,
                        recipient=address,
                        sent_on=context.today,
                        outbox_id=row.id,
                    )
                )
                context.ledger.record(address)
            session.flush()
            mailed.add(customer.id)
        return mailed

    def preview(
        self, session: Session, context: RunContext, customer: Customer, owner: CardOwner | None
    ) -> EmailOutcome:
        """Who would get the email and, for the first of them, the letter itself."""
        outcome = EmailOutcome(template=self.template.name, recipients=[])
        for item, address in self.addresses(customer, owner.email if owner else None):
            if address is None:
                missing = "sem e-mail de contato" if item == "contact" else "sem responsável"
                outcome.recipients.append(PlannedEmail(to=item, skipped=f"{missing} (no address)"))
                continue
            reason = context.ledger.refusal(session, address)
            if reason is None and address in (p.to for p in outcome.recipients):
                reason = "repetido (duplicate)"
            outcome.recipients.append(PlannedEmail(to=address, skipped=reason))
            if reason is None:
                context.ledger.record(address)
        if not outcome.sending:
            return outcome
        outcome.reply_to = reply_to_owner(owner)
        try:
            variables = self.variables(session, context, customer)
            outcome.rendered, _ = self.render(context, variables, outcome.sending[0])
        except EmailRenderError as exc:
            outcome.problem = str(exc)
        return outcome


Action = PlaybookAction | UpdateAction | EmailAction


def bind_actions(session: Session, rule: Rule) -> list[Action]:
    """The rule's stored actions bound to their playbooks and templates."""
    built: list[Action] = []
    for index, action in enumerate(rule.actions, start=1):
        kind = action.get("kind")
        if kind == "playbook":
            built.append(
                PlaybookAction(
                    index, get_playbook(session, action["playbook"]), action.get("cooldown_days")
                )
            )
        elif kind == "update":
            built.append(UpdateAction(index, action["set"]))
        elif kind == "email":
            built.append(
                EmailAction(index, get_template(session, action["template"]), action["to"])
            )
        else:
            raise EngineError(f"ação {index}: tipo desconhecido (unknown kind) {kind!r}")
    return built


def _same(current: Any, new: Any) -> bool:
    if isinstance(current, Decimal | int | float) and isinstance(new, Decimal | int | float):
        return Decimal(str(current)) == Decimal(str(new))
    return current == new


def _shown(value: Any) -> str:
    if value is None or value == "":
        return "(vazio)"
    if isinstance(value, date):
        return value.strftime("%d/%m/%Y")
    return str(value)


def card_owners(session: Session, customers: Iterable[Customer]) -> dict[int | None, CardOwner]:
    """The owners of the cards, by user id, in one query."""
    ids = {c.owner_id for c in customers if c.owner_id is not None}
    if not ids:
        return {}
    rows = session.execute(
        select(User.id, User.email, User.name, User.active).where(User.id.in_(ids))
    )
    return {
        user_id: CardOwner(email=email, name=name, active=active)
        for user_id, email, name, active in rows
    }


def batches(items: Sequence[int], size: int) -> Iterable[Sequence[int]]:
    """``items`` in consecutive slices of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


# Queueing -------------------------------------------------------------------------------


def enqueue_rule_email(
    session: Session,
    settings: Settings,
    *,
    email: RenderedEmail,
    to: str,
    cause: str,
    now: datetime,
    unsubscribe_url: str,
    reply_to: str | None = None,
) -> OutboxMessage:
    """Queue an already rendered email for one recipient through the outbox.

    It carries the outbox's headers plus the recipient's one-click unsubscribe
    (List-Unsubscribe, RFC 2369, as an HTTPS link a mail client may POST to,
    RFC 8058) and, when given, Reply-To (see :func:`reply_to_owner`).
    """
    headers = {"List-Unsubscribe": f"<{unsubscribe_url}>", "List-Unsubscribe-Post": ONE_CLICK}
    if reply_to is not None:
        headers["Reply-To"] = reply_to
    row = enqueue_letter(
        session,
        settings,
        letter=email,
        to=[to],
        kind=OUTBOX_KIND,
        language=settings.service.language,
        cause=cause[:80],
        headers=headers,
        now=now,
    )
    log.debug("outbox %s %s: rule email queued, cause %s", row.id, row.message_id, cause)
    return row
