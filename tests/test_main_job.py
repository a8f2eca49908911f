"""The main job on the embedded defaults: Maildir in, SQLite, Maildir out.

Poll → requests pending → approve → user exists → emails in the outbox; a
second poll changes nothing; a crash between commit and move loses nothing
and duplicates nothing.
"""

from __future__ import annotations

import mailbox
import re
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from sqlalchemy import func, select

from config.settings import Settings
from intake.models import InboundMessage
from intake.poller import poll_once
from intake.receiving import content_digest
from portaria.outbox import send_due
from portaria.outbox_models import OutboxMessage
from portaria.wiring import Service
from provisioning.approvals import approve, plan_approval, reject
from provisioning.errors import ProvisioningError, RequestNotPending
from provisioning.models import AccessRequest, AuditEvent, User
from provisioning.queue import pending_ids
from tests.mail import person_block, request_message


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """The same main job on both databases Portaria supports."""
    if request.param == "postgresql":
        settings.database.url = request.getfixturevalue("postgres_url")
    return settings


def deliver(settings: Settings, *messages: bytes) -> None:
    settings.path(settings.mailbox.maildir).parent.mkdir(parents=True, exist_ok=True)
    inbox = mailbox.Maildir(settings.path(settings.mailbox.maildir), create=True)
    for raw in messages:
        inbox.add(raw)


def folder(settings: Settings, name: str) -> list[bytes]:
    root = mailbox.Maildir(settings.path(settings.mailbox.maildir), create=True)
    box = root if name == "INBOX" else root.get_folder(name)
    return [box.get_bytes(key) for key in box.iterkeys()]


def requests_of(service: Service) -> list[AccessRequest]:
    with service.sessions() as session:
        return list(session.scalars(select(AccessRequest).order_by(AccessRequest.id)))


def count(service: Service, model: type) -> int:
    with service.sessions() as session:
        return session.scalar(select(func.count()).select_from(model))


TWO_PEOPLE = (
    "Olá,\n\nPerfil para todos: Agente\n\n"
    "Nome: Davi Moreira\nE-mail: davi.moreira@cliente.test\nÁrea: Unidade Londrina\n\n"
    "Nome: Elisa Tavares\nE-mail: elisa.tavares@cliente.test\nÁrea: Unidade Maringá\n"
)


def test_request_to_account_on_embedded_defaults(service: Service, settings: Settings) -> None:
    deliver(
        settings,
        request_message(TWO_PEOPLE, message_id="<two@cliente.test>"),
        request_message("Vamos almoçar?", subject="Almoço"),
    )

    report = poll_once(service.sessions, settings)

    assert report.fetched == 2
    assert dict(report.outcomes) == {"request": 1, "left": 1}
    pending = requests_of(service)
    assert [(r.name, r.email, r.area, r.access_type, r.status) for r in pending] == [
        ("Davi Moreira", "davi.moreira@cliente.test", "Unidade Londrina", "agente", "pending"),
        ("Elisa Tavares", "elisa.tavares@cliente.test", "Unidade Maringá", "agente", "pending"),
    ]
    assert all(r.requester_email == "helena.costa@cliente.test" for r in pending)
    assert len(folder(settings, "Processed")) == 1
    assert len(folder(settings, "INBOX")) == 1  # the untagged message is left alone

    with service.transaction() as session:
        approve(session, settings, [pending[0].id], actor="cli:admin")

    with service.sessions() as session:
        user = session.scalar(select(User).where(User.email == "davi.moreira@cliente.test"))
        assert (user.name, user.area, user.role, user.active) == (
            "Davi Moreira",
            "Unidade Londrina",
            "agente",
            True,
        )
        assert user.created_via == f"request:{pending[0].id}"
        events = list(session.scalars(select(AuditEvent)))
        assert [(e.actor, e.action, e.subject_id) for e in events] == [
            ("cli:admin", "request.approved", pending[0].id)
        ]
        kinds = sorted(
            (row.kind, tuple(row.recipients)) for row in session.scalars(select(OutboxMessage))
        )
    assert kinds == [
        ("approved", ("helena.costa@cliente.test",)),
        ("received", ("helena.costa@cliente.test",)),
        ("support_notice", ("suporte@portaria.test",)),
        ("welcome", ("davi.moreira@cliente.test",)),
    ]

    sent = send_due(service.sessions, settings)
    assert sent.sent == 4
    written = mailbox.Maildir(settings.path(settings.outbound.maildir))
    letters = [
        message_from_bytes(written.get_bytes(k), policy=policy.default) for k in written.iterkeys()
    ]
    welcome = next(m for m in letters if m["To"] == "davi.moreira@cliente.test")
    assert "https://portaria.test/set-password/" in welcome.get_body(("plain",)).get_content()
    received = next(
        m
        for m in letters
        if m["In-Reply-To"] == "<two@cliente.test>"
        and "Davi" in m.get_body(("plain",)).get_content()
        and "Elisa" in m.get_body(("plain",)).get_content()
    )
    assert received["Auto-Submitted"] == "auto-replied"

    second = poll_once(service.sessions, settings)
    assert second.fetched == 0
    assert count(service, AccessRequest) == 2


def test_incomplete_request_goes_to_attention_and_is_answered(
    service: Service, settings: Settings
) -> None:
    deliver(settings, request_message("Nome: Fábio Queiroga\nE-mail: fabio@cliente.test\n"))

    report = poll_once(service.sessions, settings)

    assert dict(report.outcomes) == {"incomplete": 1}
    [request] = requests_of(service)
    assert request.status == "incomplete"
    assert request.missing == ["area", "access_type"]
    assert len(folder(settings, "NeedsAttention")) == 1
    with service.sessions() as session:
        [answer] = session.scalars(select(OutboxMessage)).all()
    assert answer.kind == "incomplete"
    assert answer.recipients == ["helena.costa@cliente.test"]
    with service.transaction() as session, pytest.raises(RequestNotPending):
        approve(session, settings, [request.id], actor="admin")


UNUSABLE_VALUES = (
    person_block("Ana Lima", "email ruim@cliente.test", "RH", "Comum")
    + "\n"
    + person_block("Bia Reis", "bia@cliente.test", "TI", "Comum, Admin")
    + "\n"
    + person_block("C" * 5000, "caio@cliente.test", "Jurídico", "Superusuário")
)


def test_unusable_values_are_incomplete_with_what_was_wrong(
    service: Service, settings: Settings
) -> None:
    deliver(settings, request_message(UNUSABLE_VALUES))

    report = poll_once(service.sessions, settings)

    assert dict(report.outcomes) == {"incomplete": 1}
    requests = requests_of(service)
    assert [(r.name, r.email, r.area, r.access_type, r.status) for r in requests] == [
        ("Ana Lima", None, "RH", "comum", "incomplete"),
        ("Bia Reis", "bia@cliente.test", "TI", None, "incomplete"),
        (None, "caio@cliente.test", "Jurídico", None, "incomplete"),
    ]
    assert [(r.missing, r.problems) for r in requests] == [
        (
            ["email"],
            {
                "email": {
                    "kind": "unclear",
                    "value": "email ruim@cliente.test",
                    "found": ["ruim@cliente.test"],
                }
            },
        ),
        (
            ["access_type"],
            {
                "access_type": {
                    "kind": "several",
                    "value": "Comum, Admin",
                    "found": ["comum", "admin"],
                }
            },
        ),
        (
            ["name", "access_type"],
            {
                "name": {"kind": "too_long", "length": 5000, "limit": 200},
                "access_type": {"kind": "unrecognised", "value": "Superusuário"},
            },
        ),
    ]
    with service.sessions() as session:
        assert pending_ids(session, include_flagged=True) == []
        [answer] = session.scalars(select(OutboxMessage)).all()
    assert (answer.kind, answer.recipients) == ("incomplete", ["helena.costa@cliente.test"])

    # The letter queued says what was wrong, not only what is missing.
    assert (
        "Pessoa 1: Ana Lima\n"
        "  E-mail inválido: email ruim@cliente.test (escreva só o endereço, sem outras palavras)\n"
        "\n"
        "Pessoa 2: Bia Reis\n"
        "  Mais de um tipo de acesso: Comum, Admin\n"
        "\n"
        "Pessoa 3: caio@cliente.test\n"
        "  Nome longo demais: 5000 caracteres, máximo 200\n"
        "  Tipo de acesso não reconhecido: Superusuário (use Comum, Agente ou Admin)\n"
    ) in answer.body_text


def test_crash_between_commit_and_move_loses_and_repeats_nothing(
    service: Service, settings: Settings
) -> None:
    deliver(
        settings,
        request_message(person_block("Ana Lima", "ana@cliente.test", "Financeiro", "Comum")),
        request_message(person_block("Rui Paiva", "rui@cliente.test", "Jurídico", "Admin")),
    )

    def crash(_rows: object) -> None:
        raise RuntimeError("power cut after commit")

    with pytest.raises(RuntimeError):
        poll_once(service.sessions, settings, after_commit=crash)
    assert count(service, AccessRequest) == 2
    assert len(folder(settings, "INBOX")) == 2  # committed, not yet moved

    rerun = poll_once(service.sessions, settings)

    assert rerun.fetched == 0
    assert rerun.moved == 2
    assert count(service, AccessRequest) == 2
    assert sorted(r.email for r in requests_of(service)) == [
        "ana@cliente.test",
        "rui@cliente.test",
    ]
    assert folder(settings, "INBOX") == []
    assert len(folder(settings, "Processed")) == 2
    with service.sessions() as session:
        assert session.scalar(select(func.count()).where(InboundMessage.moved_at.is_(None))) == 0


def test_same_message_delivered_twice_creates_nothing_new(
    service: Service, settings: Settings
) -> None:
    raw = request_message(
        person_block("Ana Lima", "ana@cliente.test", "Financeiro", "Comum"),
        message_id="<once@cliente.test>",
    )
    deliver(settings, raw)
    poll_once(service.sessions, settings)
    deliver(settings, raw)

    report = poll_once(service.sessions, settings)

    assert dict(report.outcomes) == {"duplicate": 1}
    assert count(service, AccessRequest) == 1
    assert len(folder(settings, "Processed")) == 2


def test_copy_delivered_again_by_another_route_is_a_duplicate(
    service: Service, settings: Settings
) -> None:
    raw = request_message(
        person_block("Ana Lima", "ana@cliente.test", "Financeiro", "Comum"),
        message_id="<route@cliente.test>",
    )
    deliver(settings, raw)
    poll_once(service.sessions, settings)
    # What a second delivery looks like: new trace headers on top, a rewritten
    # Date, line ends as another store keeps them.
    again = (
        b"Received: from relay.cliente.test by mx.portaria.test; Tue, 1 Dec 2026 12:05:00 -0300\n"
        b"Delivered-To: acesso@portaria.test\n"
        + re.sub(rb"(?m)^Date: .*$", b"Date: Tue, 01 Dec 2026 12:05:00 -0300", raw)
    ).replace(b"\n", b"\r\n")
    deliver(settings, again)

    report = poll_once(service.sessions, settings)

    assert dict(report.outcomes) == {"duplicate": 1}
    assert count(service, AccessRequest) == 1
    with service.sessions() as session:
        kinds = session.scalars(select(OutboxMessage.kind).order_by(OutboxMessage.id))
        assert list(kinds) == ["received", "support_notice"]


def test_same_message_id_and_body_from_another_sender_is_a_new_message(
    service: Service, settings: Settings
) -> None:
    body = person_block("Ana Lima", "ana@cliente.test", "Financeiro", "Comum")
    deliver(settings, request_message(body, message_id="<same@cliente.test>"))
    poll_once(service.sessions, settings)
    deliver(
        settings,
        request_message(
            body, message_id="<same@cliente.test>", sender="Rui <rui.paiva@cliente.test>"
        ),
    )

    report = poll_once(service.sessions, settings)

    assert dict(report.outcomes) == {"request": 1}
    assert [r.requester_email for r in requests_of(service)] == [
        "helena.costa@cliente.test",
        "rui.paiva@cliente.test",
    ]


def test_content_digest_ignores_trace_headers_and_line_ends_only() -> None:
    raw = b"From: a@x.test\nSubject: s\n\nNome: Ana\nE-mail: ana@x.test\n"
    crlf = b"Received: by mx\r\n" + raw.replace(b"\n", b"\r\n")
    digest = content_digest(raw, "a@x.test", "s")

    assert content_digest(crlf, "a@x.test", "s") == digest
    assert content_digest(raw, "b@x.test", "s") != digest
    assert content_digest(raw, "a@x.test", "#ACESSO s") != digest
    assert content_digest(raw + b"x", "a@x.test", "s") != digest


def test_reused_message_id_on_new_content_is_a_new_message(
    service: Service, settings: Settings
) -> None:
    deliver(
        settings,
        request_message(
            person_block("Ana Lima", "ana@cliente.test", "Financeiro", "Comum"),
            message_id="<reused@cliente.test>",
        ),
    )
    poll_once(service.sessions, settings)
    deliver(
        settings,
        request_message(
            person_block("Rui Paiva", "rui@cliente.test", "Jurídico", "Comum"),
            message_id="<reused@cliente.test>",
        ),
    )

    report = poll_once(service.sessions, settings)

    assert dict(report.outcomes) == {"request": 1}
    assert [r.email for r in requests_of(service)] == ["ana@cliente.test", "rui@cliente.test"]


def test_known_person_is_flagged_not_duplicated(service: Service, settings: Settings) -> None:
    block = person_block("Ana Lima", "Ana@Cliente.test", "Financeiro", "Admin")
    deliver(settings, request_message(block), request_message(block))

    poll_once(service.sessions, settings)

    first, second = requests_of(service)
    assert first.flags == ["admin_access"]
    assert second.flags == ["pending_duplicate", "admin_access"]
    with service.transaction() as session:
        approve(session, settings, [first.id], actor="admin")
    with service.transaction() as session, pytest.raises(ProvisioningError, match="already has"):
        approve(session, settings, [second.id], actor="admin")
    assert count(service, User) == 1


def test_reject_needs_a_reason_and_tells_the_requester(
    service: Service, settings: Settings
) -> None:
    deliver(settings, request_message(person_block("Ana Lima", "ana@x.test", "RH", "Comum")))
    poll_once(service.sessions, settings)
    [request] = requests_of(service)

    with service.transaction() as session, pytest.raises(ProvisioningError, match="reason"):
        reject(session, settings, [request.id], actor="admin", reason="  ")
    with service.transaction() as session:
        reject(session, settings, [request.id], actor="admin", reason="Use o e-mail corporativo")

    [request] = requests_of(service)
    assert (request.status, request.reason, request.decided_by) == (
        "rejected",
        "Use o e-mail corporativo",
        "admin",
    )
    with service.sessions() as session:
        rejected = session.scalar(select(OutboxMessage).where(OutboxMessage.kind == "rejected"))
    assert "Use o e-mail corporativo" in rejected.body_text
    with service.transaction() as session, pytest.raises(RequestNotPending, match="rejected"):
        reject(session, settings, [request.id], actor="admin", reason="again")


def test_unreadable_bytes_are_kept_with_a_reason(service: Service, settings: Settings) -> None:
    inbox = Path(settings.path(settings.mailbox.maildir))
    deliver(settings, request_message(person_block("Ana Lima", "ana@x.test", "RH", "Comum")))
    (inbox / "new" / "garbage.host").write_bytes(b"\x00\x01\x02 not mail")

    report = poll_once(service.sessions, settings)

    assert report.outcomes["unreadable"] == 1
    assert report.outcomes["request"] == 1
    assert len(folder(settings, "NeedsAttention")) == 1
    with service.sessions() as session:
        row = session.scalar(select(InboundMessage).where(InboundMessage.outcome == "unreadable"))
    assert row.reason


def test_completing_an_incomplete_request_supersedes_it(
    service: Service, settings: Settings
) -> None:
    deliver(settings, request_message("Nome: Fábio Queiroga\nE-mail: fabio@cliente.test\n"))
    poll_once(service.sessions, settings)
    deliver(
        settings,
        request_message(
            "Segue completo:\n\n"
            + person_block("Fábio Queiroga", "fabio@cliente.test", "Unidade Natal", "Comum"),
            subject="RE: #ACESSO — faltam informações",
        ),
    )

    poll_once(service.sessions, settings)

    assert [(r.status, r.area) for r in requests_of(service)] == [
        ("superseded", None),
        ("pending", "Unidade Natal"),
    ]
    with service.sessions() as session:
        [event] = session.scalars(select(AuditEvent)).all()
    assert (event.action, event.actor) == ("request.superseded", "portaria")


def test_an_incomplete_request_can_be_rejected(service: Service, settings: Settings) -> None:
    deliver(settings, request_message("Nome: Fábio Queiroga\n"))
    poll_once(service.sessions, settings)
    [request] = requests_of(service)

    with service.transaction() as session, pytest.raises(RequestNotPending, match="incompleto"):
        approve(session, settings, [request.id], actor="admin")
    with service.transaction() as session:
        reject(session, settings, [request.id], actor="admin", reason="Pedido sem dados")

    assert requests_of(service)[0].status == "rejected"


def test_held_requests_need_an_explicit_decision(service: Service, settings: Settings) -> None:
    deliver(settings, request_message("Nome: Fábio Queiroga\nE-mail: fabio@cliente.test\n"))
    poll_once(service.sessions, settings)
    settings.intake.allowed_requesters = ["parceiro.test"]
    deliver(
        settings,
        request_message(person_block("Fábio Queiroga", "fabio@cliente.test", "RH", "Comum")),
    )

    report = poll_once(service.sessions, settings)

    assert dict(report.outcomes) == {"held": 1}
    first, held = requests_of(service)
    assert first.status == "incomplete"  # a possibly forged message supersedes nothing
    assert (held.status, held.flags) == ("pending", ["sender_outside_policy"])
    with service.sessions() as session:
        assert pending_ids(session) == []
        assert pending_ids(session, include_flagged=True) == [held.id]


def test_every_flagged_request_waits_to_be_approved_by_id(
    service: Service, settings: Settings
) -> None:
    admin = person_block("Quer Admin", "quer.admin@cliente.test", "TI", "Admin")
    for raw in (
        request_message(admin),
        request_message(admin, sender="Rui Paiva <rui@cliente.test>"),
        request_message(person_block("Ana Lima", "ana@cliente.test", "RH", "Comum")),
    ):
        deliver(settings, raw)
        poll_once(service.sessions, settings)
    first, second, ana = requests_of(service)

    with service.sessions() as session:
        assert pending_ids(session) == [ana.id]
        assert pending_ids(session, include_flagged=True) == [first.id, second.id, ana.id]
        plan = plan_approval(session, None)

    admin_reason = "acesso Admin, sempre conferido (Admin access, always checked)"
    assert plan.ids == [ana.id]
    assert [(o.request.id, o.reason) for o in plan.left_out] == [
        (
            first.id,
            f"{admin_reason}; mesma pessoa no(s) pedido(s) #{second.id} "
            f"(same person in request(s) #{second.id})",
        ),
        (
            second.id,
            f"pedido repetido (repeated request); {admin_reason}; mesma pessoa no(s) "
            f"pedido(s) #{first.id} (same person in request(s) #{first.id})",
        ),
    ]
    assert plan.left_out[0].advice == (
        f"confira (check) `portaria requests show {first.id}` e aprove pelo número (then "
        f"approve by id) `portaria requests approve {first.id}`, ou recuse com motivo (or "
        f'reject with a reason): `portaria requests reject {first.id} --reason "..."`'
    )


def test_two_requests_for_one_person_in_one_approval(service: Service, settings: Settings) -> None:
    ana = person_block("Ana Lima", "ana@cliente.test", "RH", "Comum")
    for raw in (request_message(ana), request_message(ana, sender="Rui <rui@cliente.test>")):
        deliver(settings, raw)
        poll_once(service.sessions, settings)
    first, second = requests_of(service)

    with service.transaction() as session, pytest.raises(ProvisioningError) as refused:
        approve(session, settings, [first.id, second.id], actor="admin")

    assert str(refused.value) == (
        "mesma pessoa em mais de um pedido (same person in more than one request): "
        f"#{first.id} e #{second.id} (ana@cliente.test); nada foi aprovado (nothing was "
        "approved); aprove um só (approve only one)"
    )
    assert count(service, User) == 0
    with service.sessions() as session:
        plan = plan_approval(session, [second.id, first.id, second.id])
    assert plan.ids == [second.id]
    assert [(o.request.id, o.reason, o.advice) for o in plan.left_out] == [
        (
            first.id,
            f"mesma pessoa do pedido #{second.id}, aprovado agora "
            f"(same person as request #{second.id}, approved now)",
            "recuse com motivo (reject with a reason): "
            f'`portaria requests reject {first.id} --reason "..."`',
        )
    ]
