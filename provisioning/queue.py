"""The access-request queue: one request per person asked for, flagged when in doubt."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from provisioning import audit
from provisioning.directory import find_user, normalise_email
from provisioning.errors import RequestNotFound
from provisioning.models import REQUEST_STATUSES, AccessRequest

log = logging.getLogger(__name__)

# Why a request deserves a second look; shown to support with the request.
FLAG_EXISTING_USER = "existing_user"
FLAG_PENDING_DUPLICATE = "pending_duplicate"
FLAG_ADMIN_ACCESS = "admin_access"
# Set by the intake on requests from a message outside the sender policy.
FLAG_SENDER_OUTSIDE_POLICY = "sender_outside_policy"

# What each flag tells the person deciding, in the lines that say why a request waits.
FLAG_REASONS = {
    FLAG_EXISTING_USER: "já tinha conta quando foi pedido (had an account when requested)",
    FLAG_PENDING_DUPLICATE: "pedido repetido (repeated request)",
    FLAG_ADMIN_ACCESS: "acesso Admin, sempre conferido (Admin access, always checked)",
    FLAG_SENDER_OUTSIDE_POLICY: "remetente fora da política (sender outside policy)",
}


@dataclass(frozen=True)
class RequestedPerson:
    """One person as the intake understood them.

    ``missing`` names the fields that are absent or unusable; ``problems``
    says, for each unusable one, why (a plain record: see the request's column).
    """

    name: str | None
    email: str | None
    area: str | None
    access_type: str | None
    missing: Sequence[str] = field(default_factory=tuple)
    problems: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Requester:
    email: str
    name: str = ""
    message_ref: str | None = None  # the request email's Message-ID
    subject: str | None = None


def queue_requests(
    session: Session,
    requester: Requester,
    people: Sequence[RequestedPerson],
    *,
    source_message_id: int | None = None,
    flags: Sequence[str] = (),
) -> list[AccessRequest]:
    """Create one request per person: ``pending`` when complete, else ``incomplete``.

    The same person named twice in one message gives one request. Someone who
    already has an account or a pending request is flagged, so support sees
    it before deciding; nothing is created in the directory here. ``flags``
    are the intake's own doubts about the message; a request carrying them
    does not supersede anything, since its sender may not be who it claims.
    Text longer than its column is cut, so one message cannot fail a batch.
    """
    created: list[AccessRequest] = []
    seen: set[str] = set()
    for person in people:
        email = normalise_email(person.email) if person.email else None
        identity = email or f"#{len(created)}"
        if identity in seen:
            continue
        seen.add(identity)

        status = "incomplete" if person.missing else "pending"
        request = AccessRequest(
            source_message_id=source_message_id,
            source_message_ref=requester.message_ref,
            source_subject=requester.subject,
            requester_email=normalise_email(requester.email),
            requester_name=_clip(requester.name, AccessRequest.requester_name),
            name=_clip(person.name, AccessRequest.name),
            email=email if email is None or len(email) <= 320 else None,
            area=_clip(person.area, AccessRequest.area),
            access_type=person.access_type,
            status=status,
            missing=list(person.missing),
            problems={key: dict(problem) for key, problem in person.problems.items()},
            flags=[
                *(_flags_for(session, email, person.access_type) if status == "pending" else []),
                *flags,
            ],
        )
        session.add(request)
        session.flush()
        created.append(request)
        if status == "pending" and not flags:
            _supersede_incomplete(session, request)
        log.info(
            "request %s queued as %s for %s (flags: %s)",
            request.id,
            status,
            email or "unknown address",
            ",".join(request.flags) or "none",
        )
    return created


def _clip(value: str | None, column: object) -> str | None:
    limit = column.type.length  # type: ignore[attr-defined]
    return value if value is None or len(value) <= limit else value[: limit - 1] + "…"


def _supersede_incomplete(session: Session, request: AccessRequest) -> None:
    """Close the requester's earlier incomplete requests for the same person.

    A requester answers "faltam informações" by sending the person again, complete;
    the earlier, incomplete request is then done with, not left open for ever.
    """
    earlier = session.scalars(
        select(AccessRequest).where(
            AccessRequest.status == "incomplete",
            AccessRequest.requester_email == request.requester_email,
            AccessRequest.id != request.id,
        )
    )
    for old in earlier:
        same_email = old.email is not None and old.email == request.email
        same_name = (
            old.email is None
            and old.name is not None
            and request.name is not None
            and old.name.casefold() == request.name.casefold()
        )
        if same_email or same_name:
            old.status = "superseded"
            audit.record(
                session,
                actor="portaria",
                action="request.superseded",
                subject_type="access_request",
                subject_id=old.id,
                by_request=request.id,
            )
            log.info("request %s superseded by request %s", old.id, request.id)


def _flags_for(session: Session, email: str | None, access_type: str | None) -> list[str]:
    flags = []
    if email and find_user(session, email) is not None:
        flags.append(FLAG_EXISTING_USER)
    if email and session.scalar(
        select(func.count(AccessRequest.id)).where(
            AccessRequest.status == "pending", AccessRequest.email == email
        )
    ):
        flags.append(FLAG_PENDING_DUPLICATE)
    if access_type == "admin":
        flags.append(FLAG_ADMIN_ACCESS)
    return flags


def letter_person(request: AccessRequest) -> dict[str, str]:
    """The person a request names, as the email templates expect it."""
    return {
        "name": request.name or "",
        "email": request.email or "",
        "area": request.area or "",
        "access_type": request.access_type or "",
    }


def get_request(session: Session, request_id: int) -> AccessRequest:
    request = session.get(AccessRequest, request_id)
    if request is None:
        raise RequestNotFound(
            f"pedido #{request_id} não existe (no access request #{request_id}); "
            "veja `portaria requests list`"
        )
    return request


def list_requests(session: Session, *, status: str | None = None) -> list[AccessRequest]:
    if status is not None and status not in REQUEST_STATUSES:
        raise RequestNotFound(
            f"situação desconhecida (unknown status) {status!r}; "
            f"use uma de: {', '.join(REQUEST_STATUSES)}"
        )
    query = select(AccessRequest).order_by(AccessRequest.id)
    if status:
        query = query.where(AccessRequest.status == status)
    return list(session.scalars(query))


def needs_a_look(request: AccessRequest) -> bool:
    """Whether a person must look at ``request`` before approving it: any flag says so.

    This is the one rule for it: a request that needs a look is approved only
    by its id, never in bulk (``requests approve --all-pending``).
    """
    return bool(request.flags)


def flag_reasons(request: AccessRequest) -> list[str]:
    """Why ``request`` needs a look, one phrase per flag, as the person deciding reads it."""
    return [FLAG_REASONS.get(flag, flag) for flag in request.flags]


def pending_ids(session: Session, *, include_flagged: bool = False) -> list[int]:
    """Pending request ids, oldest first; those that need a look only if asked."""
    requests = list_requests(session, status="pending")
    return [r.id for r in requests if include_flagged or not needs_a_look(r)]
