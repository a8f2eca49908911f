"""Decisions on access requests: approve (which provisions the account) or reject.

A decision is all or nothing: every id is checked first, and one that cannot
be decided stops the whole call with nothing changed. Each decision is an
audit event and queues the emails that tell the people concerned.

Before approving, :func:`plan_approval` sorts out what one call may approve.
In bulk it leaves out every request that needs a look (any flag), whose
person already has an account, or whose person an earlier request of the
same call gets. Named ids are a person's explicit decision, flags included;
only an id naming the same person as an earlier one is left out. Each
request left out comes with why and what to do about it.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from config.settings import Settings
from portaria import outbox
from portaria.db import utcnow
from portaria.letters import single_line
from portaria.outbox import check_recipient
from provisioning import audit
from provisioning.directory import (
    create_user,
    find_user,
    issue_set_password_token,
    normalise_email,
)
from provisioning.errors import ProvisioningError, RequestNotPending
from provisioning.models import STATUS_PT, AccessRequest, User
from provisioning.queue import (
    flag_reasons,
    get_request,
    letter_person,
    list_requests,
    needs_a_look,
)

log = logging.getLogger(__name__)

MAX_REASON_LENGTH = 2000
STATUS_PLURAL_PT = {"pending": "pendentes", "incomplete": "incompletos"}


def approve(
    session: Session, settings: Settings, request_ids: Sequence[int], *, actor: str
) -> list[AccessRequest]:
    """Approve pending requests: create each account, issue its link, tell everyone."""
    check_decider(session, actor)
    requests = _decidable(session, request_ids)
    taken = [r for r in requests if find_user(session, r.email or "") is not None]
    if taken:
        listed = ", ".join(f"#{r.id} ({r.email})" for r in taken)
        raise ProvisioningError(
            f"já tem conta (already has an account): {listed}; nada foi aprovado (nothing "
            "was approved); recuse esses com um motivo (reject those with a reason): "
            '`portaria requests reject ID --reason "..."`'
        )
    twins = _same_person_as_earlier(requests)
    if twins:
        listed = ", ".join(
            f"#{twins[r.id].id} e #{r.id} ({r.email})" for r in requests if r.id in twins
        )
        raise ProvisioningError(
            f"mesma pessoa em mais de um pedido (same person in more than one request): {listed}; "
            "nada foi aprovado (nothing was approved); aprove um só (approve only one)"
        )

    now = utcnow()
    for request in requests:
        user = create_user(
            session,
            name=request.name or "",
            email=request.email or "",
            area=request.area or "",
            role=request.access_type or "comum",
            created_via=f"request:{request.id}",
        )
        request.status = "approved"
        request.decided_by = actor
        request.decided_at = now
        request.user_id = user.id
        audit.record(
            session,
            actor=actor,
            action="request.approved",
            subject_type="access_request",
            subject_id=request.id,
            user_id=user.id,
            role=user.role,
        )
        welcome(session, settings, user, cause=f"request:{request.id}")
        log.info("request %s approved by %s; user %s created", request.id, actor, user.id)

    _tell_requesters(session, settings, requests, kind="approved")
    return requests


def check_decider(session: Session, actor: str) -> None:
    """Only Admins decide: an actor named by address must be an active Admin user.

    Other actors are the system's own (``cli:<login>`` for whoever runs the
    command on the server, ``auto:...`` for policy); they are trusted by access
    to the machine, not by the directory.
    """
    if "@" not in actor:
        return
    user = find_user(session, actor)
    if user is None or not user.active or user.role != "admin":
        raise ProvisioningError(
            f"só um Admin ativo pode decidir (only an active Admin may decide): {actor} não é "
            "Admin ativo (is not an active Admin); veja (see) `portaria users list`, ou rode sem "
            "--by (or run without --by) para decidir como o login do servidor (to decide as the "
            "server login)"
        )


@dataclass(frozen=True)
class LeftOut:
    """A request one approval leaves for a person: why, and what to do about it."""

    request: AccessRequest
    reason: str
    advice: str


@dataclass(frozen=True)
class ApprovalPlan:
    """What one approval call does: ``ids`` to approve, in order, and the rest left out."""

    ids: list[int]
    left_out: list[LeftOut]


def plan_approval(session: Session, request_ids: Sequence[int] | None) -> ApprovalPlan:
    """Sort the requests of one approval into those to approve and those left out.

    ``None`` means every pending request (``--all-pending``). Named ids that
    cannot be decided at all stop the call here, as in :func:`approve`; one
    whose person already has an account is left for :func:`approve` to refuse,
    since naming it is a mistake to correct, not a request to skip.
    """
    bulk = request_ids is None
    if request_ids is None:
        candidates = list_requests(session, status="pending")
    else:
        candidates = _decidable(session, request_ids)

    kept: dict[str, AccessRequest] = {}
    left: list[AccessRequest] = []
    with_account: set[str] = set()
    for request in candidates:
        person = _person(request)
        if bulk and person not in kept and find_user(session, person) is not None:
            with_account.add(person)
        if person in kept or (bulk and (needs_a_look(request) or person in with_account)):
            left.append(request)
        else:
            kept[person] = request

    left_out = []
    for request in left:
        person = _person(request)
        if person in kept:
            first = kept[person].id
            reason = (
                f"mesma pessoa do pedido #{first}, aprovado agora "
                f"(same person as request #{first}, approved now)"
            )
            left_out.append(LeftOut(request, reason, _reject_advice(request.id)))
        elif person in with_account:
            reason = "já tem conta (already has an account)"
            left_out.append(LeftOut(request, reason, _reject_advice(request.id)))
        else:
            reasons = flag_reasons(request)
            others = [f"#{r.id}" for r in left if r is not request and _person(r) == person]
            if others:
                reasons.append(
                    f"mesma pessoa no(s) pedido(s) {', '.join(others)} "
                    f"(same person in request(s) {', '.join(others)})"
                )
            left_out.append(LeftOut(request, "; ".join(reasons), _look_advice(request.id)))
    return ApprovalPlan(ids=[r.id for r in kept.values()], left_out=left_out)


def _person(request: AccessRequest) -> str:
    # A pending request always names an address; the id keeps a malformed one apart.
    return normalise_email(request.email) if request.email else f"#{request.id}"


def _same_person_as_earlier(requests: Sequence[AccessRequest]) -> dict[int, AccessRequest]:
    """Each later request of ``requests`` that names an earlier one's person, by its id."""
    first: dict[str, AccessRequest] = {}
    later: dict[int, AccessRequest] = {}
    for request in requests:
        earlier = first.setdefault(_person(request), request)
        if earlier is not request:
            later[request.id] = earlier
    return later


def _reject_advice(request_id: int) -> str:
    return f"recuse com motivo (reject with a reason): {_reject_command(request_id)}"


def _look_advice(request_id: int) -> str:
    return (
        f"confira (check) `portaria requests show {request_id}` e aprove pelo número "
        f"(then approve by id) `portaria requests approve {request_id}`, ou recuse com "
        f"motivo (or reject with a reason): {_reject_command(request_id)}"
    )


def _reject_command(request_id: int) -> str:
    return f'`portaria requests reject {request_id} --reason "..."`'


def welcome(session: Session, settings: Settings, user: User, *, cause: str) -> None:
    """Issue a set-password link and queue the welcome email that carries it."""
    token = issue_set_password_token(session, user, ttl_hours=settings.service.token_ttl_hours)
    outbox.enqueue(
        session,
        settings,
        kind="welcome",
        to=[user.email],
        context={
            "user": {
                "name": user.name,
                "email": user.email,
                "area": user.area,
                "access_type": user.role,
            },
            "set_password_url": f"{settings.service.base_url}/set-password/{token.token}",
            "expires_at": token.expires_at,
            "console_url": settings.service.base_url,
        },
        cause=cause,
    )


def add_user(
    session: Session,
    settings: Settings,
    *,
    name: str,
    email: str,
    area: str,
    role: str,
    actor: str,
) -> User:
    """An admin adds a user directly: created, audited, welcomed with a set-password link."""
    check_decider(session, actor)
    checked = check_recipient(email)
    # Typed by a person, but shown in emails and tables like a requested name:
    # one line, within what the directory keeps.
    name, area = single_line(name), single_line(area)
    if not name:
        raise ProvisioningError("informe o nome (name is required)")
    for label, value, column in (
        ("nome (name)", name, User.name),
        ("área (area)", area, User.area),
    ):
        limit = column.type.length
        if len(value) > limit:
            raise ProvisioningError(
                f"{label} longo demais (too long): {len(value)} caracteres, máximo (at most) "
                f"{limit}"
            )
    user = create_user(
        session, name=name, email=checked, area=area, role=role, created_via="admin"
    )
    audit.record(
        session,
        actor=actor,
        action="user.created",
        subject_type="user",
        subject_id=user.id,
        role=role,
    )
    welcome(session, settings, user, cause=f"user:{user.id}")
    return user


def deactivate_user(session: Session, email: str, *, actor: str) -> User:
    """Switch an account off; its history stays. Pending set-password links stop working."""
    check_decider(session, actor)
    user = find_user(session, email)
    if user is None:
        raise ProvisioningError(f"usuário não encontrado (no such user): {email}")
    user.active = False
    audit.record(
        session, actor=actor, action="user.deactivated", subject_type="user", subject_id=user.id
    )
    return user


def reject(
    session: Session,
    settings: Settings,
    request_ids: Sequence[int],
    *,
    actor: str,
    reason: str,
) -> list[AccessRequest]:
    """Reject pending requests with a reason the requester will read."""
    check_decider(session, actor)
    reason = reason.strip()
    if not reason:
        raise ProvisioningError(
            'a recusa precisa de um motivo (a rejection needs a reason): --reason "..."'
        )
    if len(reason) > MAX_REASON_LENGTH:
        raise ProvisioningError(
            f"o motivo passa de {MAX_REASON_LENGTH} caracteres "
            f"(the reason is longer than {MAX_REASON_LENGTH} characters)"
        )
    requests = _decidable(session, request_ids, statuses=("pending", "incomplete"))

    now = utcnow()
    for request in requests:
        request.status = "rejected"
        request.reason = reason
        request.decided_by = actor
        request.decided_at = now
        audit.record(
            session,
            actor=actor,
            action="request.rejected",
            subject_type="access_request",
            subject_id=request.id,
            reason=reason,
        )
        log.info("request %s rejected by %s", request.id, actor)

    _tell_requesters(session, settings, requests, kind="rejected", reason=reason)
    return requests


def _decidable(
    session: Session, request_ids: Sequence[int], *, statuses: Sequence[str] = ("pending",)
) -> list[AccessRequest]:
    if not request_ids:
        raise ProvisioningError(
            "informe ao menos um número de pedido ou --all-pending "
            "(name at least one request id, or --all-pending)"
        )
    requests = [get_request(session, request_id) for request_id in dict.fromkeys(request_ids)]
    undecidable = [r for r in requests if r.status not in statuses]
    if undecidable:
        listed = ", ".join(f"#{r.id} está {STATUS_PT[r.status]} ({r.status})" for r in undecidable)
        raise RequestNotPending(
            f"só pedidos {' ou '.join(STATUS_PLURAL_PT[s] for s in statuses)} podem ser "
            "decididos "
            f"aqui (only {' or '.join(statuses)} requests): {listed}; "
            "nada foi alterado (nothing was changed)"
        )
    return requests


def _tell_requesters(
    session: Session,
    settings: Settings,
    requests: Sequence[AccessRequest],
    *,
    kind: str,
    reason: str | None = None,
) -> None:
    """One email per requester and request message, listing every person decided."""
    threads: dict[tuple[str, str | None], list[AccessRequest]] = defaultdict(list)
    for request in requests:
        threads[(request.requester_email, request.source_message_ref)].append(request)

    for (requester_email, message_ref), decided in threads.items():
        first = decided[0]
        context = {
            "requester_name": first.requester_name,
            "original_subject": first.source_subject or "",
            "people": [letter_person(r) for r in decided],
        }
        if reason is not None:
            context["reason"] = reason
        outbox.enqueue(
            session,
            settings,
            kind=kind,
            to=[requester_email],
            context=context,
            in_reply_to=message_ref,
            cause=f"request:{first.id}",
        )
