"""Unsubscribes from rule emails: the addresses that asked, and the signed links.

An unsubscribe is one row per address (:func:`unsubscribe`), from a link or
recorded by a person; no rule emails that address again. Every rule email
carries its recipient's one-click unsubscribe link (RFC 8058).

A link is ``{service.base_url}/unsubscribe/{token}``. The token is the
recipient's address and an HMAC-SHA256 of it under the service's secret key,
both in URL-safe base64 without padding: ``ADDRESS.SIGNATURE``. The web console
reads the address back and recomputes the signature, so nothing needs to be
stored per email, and a forged or edited link is refused. The address travels
in the link (it is the recipient's own); the key never leaves the server.

The key is ``service.secret_key`` or, when that is not set, the contents of
``service.secret_key_file`` (``var/secret.key`` beside the configuration by
default), which ``portaria init`` creates. It is read when links are made or
checked, not when settings load, so commands that need no link run without it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from config.settings import Settings
from engine.errors import EngineError
from engine.models import Unsubscribe

log = logging.getLogger(__name__)

KEY_BYTES = 32
MIN_KEY_CHARS = 32
# Domain separation: the same key may sign other things later without a
# signature made for one purpose being accepted for another.
PURPOSE = b"portaria/unsubscribe/v1\x00"
# An address is at most 320 characters: anything much longer is not ours.
MAX_TOKEN_CHARS = 600
ONE_CLICK = "List-Unsubscribe=One-Click"


class SecretKeyUnavailable(EngineError):
    """No usable secret key: not configured, file missing or unreadable, or too short."""


class InvalidUnsubscribeToken(EngineError):
    """An unsubscribe link that was not made by this service (edited, cut or forged)."""


def unsubscribe(session: Session, email: str, *, source: str = "link") -> bool:
    """Stop rule emails to ``email``; False when it was already unsubscribed.

    Idempotent: asking again changes nothing, not even the date of the first.
    """
    address = email.strip().lower()
    if session.get(Unsubscribe, address) is not None:
        return False
    session.add(Unsubscribe(email=address, source=source[:60]))
    session.flush()
    # The address stays out of the log: it is personal data and the row has it.
    log.info("unsubscribe recorded for an address, source %s", source)
    return True


def is_unsubscribed(session: Session, email: str) -> bool:
    return session.get(Unsubscribe, email.strip().lower()) is not None


def unsubscribed_addresses(session: Session) -> list[Unsubscribe]:
    """Every address that gets no rule email, the most recent first."""
    return list(
        session.scalars(select(Unsubscribe).order_by(Unsubscribe.at.desc(), Unsubscribe.email))
    )


def secret_key_path(settings: Settings) -> Path:
    """Where the key file is, resolved against the configuration's folder."""
    return settings.path(settings.service.secret_key_file)


def read_secret_key(settings: Settings) -> bytes:
    """The key as bytes; SecretKeyUnavailable says how to get one."""
    given = settings.service.secret_key
    if given is not None:
        text = given.get_secret_value().strip()
        origin = "service.secret_key"
    else:
        path = secret_key_path(settings)
        origin = f"service.secret_key_file ({path})"
        try:
            text = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise SecretKeyUnavailable(
                f"chave secreta não encontrada (no secret key): {path}; rode (run) "
                "`portaria init` para criá-la, ou defina PORTARIA_SERVICE__SECRET_KEY"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "não é texto (not text)"
            raise SecretKeyUnavailable(
                f"chave secreta ilegível (cannot read the secret key) {path}: {reason}"
            ) from None
    if len(text) < MIN_KEY_CHARS:
        raise SecretKeyUnavailable(
            f"{origin}: chave secreta curta demais (secret key too short), são precisos "
            f"{MIN_KEY_CHARS}+ caracteres; apague o arquivo e rode (run) `portaria init`"
        )
    return text.encode("utf-8")


def create_secret_key(settings: Settings) -> Path | None:
    """Write a new key file when no key is configured and the default file is missing.

    Returns the file written, or None when there was nothing to do: a key is
    given inline, the file exists, or ``secret_key_file`` was set by the admin
    (a file they named is theirs to provide).
    """
    service = settings.service
    if service.secret_key is not None or "secret_key_file" in service.model_fields_set:
        return None
    path = secret_key_path(settings)
    if path.exists():
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    text = base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")
    # O_EXCL: two `init`s at once must not overwrite each other's key. The mode
    # is given at creation, so the key is never readable by others, not even briefly.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as handle:
        handle.write(text + "\n")
    os.chmod(path, 0o600)
    log.info("secret key file created: %s", path)
    return path


def _encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class UnsubscribeLinks:
    """Makes and checks the links of one key; build it once per run, not per email."""

    def __init__(self, key: bytes, base_url: str) -> None:
        self._key = key
        self.base_url = base_url.rstrip("/")

    def _signature(self, address: str) -> bytes:
        return hmac.new(self._key, PURPOSE + address.encode("utf-8"), hashlib.sha256).digest()

    def token(self, address: str) -> str:
        normal = address.strip().lower()
        return f"{_encode(normal.encode('utf-8'))}.{_encode(self._signature(normal))}"

    def url(self, address: str) -> str:
        return f"{self.base_url}/unsubscribe/{self.token(address)}"

    def address(self, token: str) -> str:
        """The address a token was made for; InvalidUnsubscribeToken when it was not ours."""
        refused = InvalidUnsubscribeToken(
            "link de descadastro inválido ou incompleto (invalid unsubscribe link): "
            "copie o link inteiro do e-mail (copy the whole link from the email)"
        )
        if not token or len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
            raise refused
        encoded, _, signature = token.partition(".")
        try:
            raw = _decode(encoded)
            given = _decode(signature)
            address = raw.decode("utf-8")
        except ValueError:  # bad base64 or not UTF-8
            raise refused from None
        # compare_digest: the time taken must not tell how much of a guess was right.
        if not hmac.compare_digest(given, self._signature(address)):
            raise refused
        if address != address.strip().lower() or "@" not in address:
            raise refused
        return address


def unsubscribe_links(settings: Settings) -> UnsubscribeLinks:
    """Links signed with the configured key; SecretKeyUnavailable says how to get one."""
    return UnsubscribeLinks(read_secret_key(settings), settings.service.base_url)
