"""Mailbox health: noticing that polling keeps failing, and telling the admin once.

This module owns ``MailboxState.failing_since`` and ``alert_sent_at``, and the
two letters they lead to. The poller calls :func:`record_poll_health` after
every poll attempt, good or bad:

- the first failed attempt after a success sets ``failing_since``;
- once attempts have failed for ``service.alert_after_minutes``, one
  ``mailbox_failing`` letter goes to ``service.admin_address`` (or, when that
  is not set, ``service.support_address``) and ``alert_sent_at`` is set, so
  later failures send nothing more, even across restarts;
- the first good attempt clears both, and, only if the alert went out, sends
  one ``mailbox_recovered`` letter.

State and letter are committed together, so a crash never sends an alert
twice or loses one. A short outage (a server restart, a dropped
connection) recovers before the threshold and tells nobody.

It also owns reading a poll's error as a kind of failure (login, token,
folder, TLS, connection) and the advice for each, which `portaria status`
shows too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings
from intake.models import MailboxState
from portaria import outbox
from portaria.db import transaction, utcnow

log = logging.getLogger(__name__)

# Fragments of the intake's own error messages (intake/sources.py), first
# match wins, and the kind of failure each one means.
FAILURE_KINDS: tuple[tuple[str, str], ...] = (
    # First: a local Maildir's errors also say "does not exist".
    ("Maildir", "maildir"),
    ("no access token", "token"),
    ("refused the OAuth2 login", "token"),
    ("does not offer AUTH=XOAUTH2", "login"),
    ("refused the login", "login"),
    ("no password for", "login"),
    ("certificate is not trusted", "tls"),
    ("mailbox.ca_file", "tls"),
    ("does not offer STARTTLS", "tls"),
    ("does not exist", "folder"),
    ("opened read-only", "folder"),
)

# What a person should do about each kind of failure, pt-BR first.
ADVICE: dict[str, dict[str, str]] = {
    "login": {
        "pt-BR": "o servidor recusou o login: confira mailbox.username e a senha "
        "(mailbox.password_file ou PORTARIA_MAILBOX__PASSWORD); "
        "depois rode `portaria poll --once`",
        "en": "the server refused the login: check mailbox.username and the password "
        "(mailbox.password_file or PORTARIA_MAILBOX__PASSWORD); "
        "then run `portaria poll --once`",
    },
    "token": {
        "pt-BR": "o token OAuth2 não foi aceito ou não pôde ser obtido: rode o comando "
        "de mailbox.oauth2 (ou confira o arquivo) e renove a autorização no Microsoft 365 "
        "ou Google se preciso; depois rode `portaria poll --once`",
        "en": "the OAuth2 token was refused or could not be obtained: run the "
        "mailbox.oauth2 command (or check the file) and renew the consent in Microsoft 365 "
        "or Google if needed; then run `portaria poll --once`",
    },
    "tls": {
        "pt-BR": "a conexão segura falhou: confira mailbox.security, mailbox.port e "
        "mailbox.ca_file; depois rode `portaria poll --once`",
        "en": "the secure connection failed: check mailbox.security, mailbox.port and "
        "mailbox.ca_file; then run `portaria poll --once`",
    },
    "folder": {
        "pt-BR": "a pasta não existe ou não pode ser alterada: confira mailbox.folder e as "
        "permissões da conta; depois rode `portaria poll --once`",
        "en": "the folder is missing or cannot be changed: check mailbox.folder and the "
        "account's rights; then run `portaria poll --once`",
    },
    "maildir": {
        "pt-BR": "a pasta Maildir local não pode ser usada: confira mailbox.maildir e as "
        "permissões; depois rode `portaria poll --once`",
        "en": "the local Maildir cannot be used: check mailbox.maildir and its "
        "permissions; then run `portaria poll --once`",
    },
    "connection": {
        "pt-BR": "o servidor não responde: confira mailbox.host e mailbox.port, a rede e "
        "se o servidor de e-mail está no ar; depois rode `portaria poll --once`",
        "en": "the server does not answer: check mailbox.host and mailbox.port, the network "
        "and whether the mail server is up; then run `portaria poll --once`",
    },
}

# The outbox's cause column is 80 characters.
CAUSE_LIMIT = 80


@dataclass(frozen=True)
class HealthChange:
    """What one call of :func:`record_poll_health` changed.

    ``letter`` is the kind queued (``mailbox_failing`` or
    ``mailbox_recovered``) and ``outbox_id`` its row, or both None.
    """

    mailbox: str
    failing_since: datetime | None
    letter: str | None = None
    outbox_id: int | None = None


def failure_kind(error: str | None) -> str:
    """The kind of a poll's failure, read from its error message (see FAILURE_KINDS)."""
    text = error or ""
    for fragment, kind in FAILURE_KINDS:
        if fragment in text:
            return kind
    return "connection"


def failure_advice(error: str | None, language: str) -> str:
    """What to do about a poll's failure, in ``language`` (pt-BR when unknown)."""
    advice = ADVICE[failure_kind(error)]
    return advice.get(language, advice["pt-BR"])


def record_poll_health(
    sessions: sessionmaker[Session],
    settings: Settings,
    mailbox: str,
    *,
    ok: bool,
    error: str | None = None,
    now: datetime | None = None,
) -> HealthChange:
    """Record one poll attempt of ``mailbox``; alert or reassure the admin when it is time.

    ``ok`` says whether the attempt worked and ``error`` is its message when
    it did not. ``now`` fixes the clock (tests). Commits its own transaction.
    """
    now = now if now is not None else utcnow()
    with transaction(sessions) as session:
        state = session.get(MailboxState, mailbox)
        if ok:
            if state is None or (state.failing_since is None and state.alert_sent_at is None):
                return HealthChange(mailbox, None)
            return _recovered(session, settings, state, now)
        if state is None:
            state = MailboxState(mailbox=mailbox)
            session.add(state)
        return _failed(session, settings, state, error or state.last_error, now)


def _failed(
    session: Session, settings: Settings, state: MailboxState, error: str | None, now: datetime
) -> HealthChange:
    if state.failing_since is None:
        state.failing_since = now
        log.warning("%s: polling failed; failing since %s", state.mailbox, now)
    since = state.failing_since
    threshold = timedelta(minutes=settings.service.alert_after_minutes)
    if state.alert_sent_at is not None or now - since < threshold:
        return HealthChange(state.mailbox, since)

    # Set even with nobody to tell: the moment was handled and logged once.
    state.alert_sent_at = now
    recipient = settings.service.alert_address
    minutes = int((now - since).total_seconds() // 60)
    if recipient is None:
        log.error(
            "%s: polling has failed for %d min and nobody is told: set service.admin_address "
            "or service.support_address",
            state.mailbox,
            minutes,
        )
        return HealthChange(state.mailbox, since)

    row = outbox.enqueue(
        session,
        settings,
        kind="mailbox_failing",
        to=[recipient],
        context={
            "mailbox": state.mailbox,
            "error": error,
            "advice": failure_advice(error, settings.service.language),
            "failing_since": since,
            "last_success_at": state.last_success_at,
        },
        cause=_cause(state.mailbox),
    )
    log.error(
        "%s: polling has failed for %d min; %s alerted (outbox %s)",
        state.mailbox,
        minutes,
        recipient,
        row.id,
    )
    return HealthChange(state.mailbox, since, "mailbox_failing", row.id)


def _recovered(
    session: Session, settings: Settings, state: MailboxState, now: datetime
) -> HealthChange:
    since, alerted = state.failing_since, state.alert_sent_at is not None
    state.failing_since = None
    state.alert_sent_at = None
    log.info(
        "%s: polling works again (failing since %s)",
        state.mailbox,
        since or "-",
    )
    recipient = settings.service.alert_address
    if not alerted or recipient is None:
        return HealthChange(state.mailbox, None)

    row = outbox.enqueue(
        session,
        settings,
        kind="mailbox_recovered",
        to=[recipient],
        context={
            "mailbox": state.mailbox,
            # An alert implies a failure start; the fallback only guards old rows.
            "failing_since": since or now,
            "recovered_at": now,
            "last_error": state.last_error,
        },
        cause=_cause(state.mailbox),
    )
    log.info("%s: %s told that polling recovered (outbox %s)", state.mailbox, recipient, row.id)
    return HealthChange(state.mailbox, None, "mailbox_recovered", row.id)


def _cause(mailbox: str) -> str:
    return f"mailbox:{mailbox}"[:CAUSE_LIMIT]
