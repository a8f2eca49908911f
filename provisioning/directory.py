"""The built-in users directory: accounts, roles, passwords and set-password links."""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portaria.db import utcnow
from provisioning.errors import InvalidToken, ProvisioningError, UserAlreadyExists
from provisioning.models import ROLES, SetPasswordToken, User

log = logging.getLogger(__name__)

_hasher = PasswordHasher()

MIN_PASSWORD_LENGTH = 10


@dataclass(frozen=True)
class IssuedToken:
    """A set-password link as handed to its owner; only its hash is stored."""

    token: str
    expires_at: datetime


def normalise_email(email: str) -> str:
    return email.strip().lower()


def find_user(session: Session, email: str) -> User | None:
    return session.scalar(select(User).where(func.lower(User.email) == normalise_email(email)))


def create_user(
    session: Session, *, name: str, email: str, area: str, role: str, created_via: str
) -> User:
    """Add an active user without a password; the caller issues a set-password link."""
    if role not in ROLES:
        raise ProvisioningError(
            f"perfil desconhecido (unknown role) {role!r}; use um de: {', '.join(ROLES)}"
        )
    if find_user(session, email) is not None:
        raise UserAlreadyExists(f"{normalise_email(email)} já tem conta (already has an account)")
    user = User(
        name=name.strip(),
        email=normalise_email(email),
        area=area.strip(),
        role=role,
        active=True,
        created_via=created_via,
    )
    session.add(user)
    session.flush()
    log.info("user %s created as %s via %s", user.id, role, created_via)
    return user


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def issue_set_password_token(session: Session, user: User, *, ttl_hours: int) -> IssuedToken:
    """A fresh one-time link; earlier unused links of the same user stop working."""
    now = utcnow()
    for earlier in session.scalars(
        select(SetPasswordToken).where(
            SetPasswordToken.user_id == user.id, SetPasswordToken.used_at.is_(None)
        )
    ):
        earlier.used_at = now
    token = secrets.token_urlsafe(32)
    expires_at = now + timedelta(hours=ttl_hours)
    session.add(
        SetPasswordToken(user_id=user.id, token_hash=_token_hash(token), expires_at=expires_at)
    )
    session.flush()
    return IssuedToken(token=token, expires_at=expires_at)


def check_token(session: Session, token: str) -> SetPasswordToken:
    """The link's row if it can still be used; InvalidToken saying why otherwise."""
    row = session.scalar(
        select(SetPasswordToken).where(SetPasswordToken.token_hash == _token_hash(token))
    )
    now = utcnow()
    if row is None or row.used_at is not None:
        raise InvalidToken(
            "Este link não é válido ou já foi usado; peça um novo ao suporte. "
            "(This link is not valid or was already used; ask support for a new one.)"
        )
    if row.expires_at <= now:
        raise InvalidToken(
            "Este link expirou; peça um novo ao suporte. "
            "(This link has expired; ask support for a new one.)"
        )
    return row


def set_password_with_token(session: Session, token: str, password: str) -> User:
    """Spend a set-password link: check it, hash the password with argon2, retire the link."""
    row = check_token(session, token)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ProvisioningError(
            f"A senha precisa de pelo menos {MIN_PASSWORD_LENGTH} caracteres. "
            f"(The password needs at least {MIN_PASSWORD_LENGTH} characters.)"
        )
    user = session.get(User, row.user_id)
    if user is None or not user.active:
        raise InvalidToken(
            "Esta conta não está ativa; fale com o suporte. (This account is not active.)"
        )
    user.password_hash = _hasher.hash(password)
    row.used_at = utcnow()
    log.info("user %s set a password", user.id)
    return user


def verify_password(user: User, password: str) -> bool:
    if not user.password_hash or not user.active:
        return False
    try:
        return _hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def list_users(session: Session, *, role: str | None = None) -> list[User]:
    query = select(User).order_by(User.id)
    if role:
        query = query.where(User.role == role)
    return list(session.scalars(query))
