"""The settings model: every option Portaria reads, its default and its meaning.

Settings come from one TOML file plus ``PORTARIA_*`` environment variables
(nested keys joined with ``__``, e.g. ``PORTARIA_MAILBOX__PASSWORD``). The
environment wins over the file. Secrets are never required in the file: each
password has a ``*_file`` twin that names a file holding it.

Relative paths in the file are resolved against the file's own folder, so a
configuration directory can be moved as a whole.
"""

from __future__ import annotations

import os
import re
import tomllib
from datetime import date
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_CONFIG_NAME = "portaria.toml"
CONFIG_ENV = "PORTARIA_CONFIG"

Security = Literal["ssl", "starttls", "plain"]


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key and the fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _read_secret(value: SecretStr | None, path: Path | None, key: str) -> SecretStr | None:
    """Return the secret given inline, or read it from the file named by ``<key>_file``."""
    if value is not None:
        return value
    if path is None:
        return None
    try:
        return SecretStr(path.read_text(encoding="utf-8").strip())
    except OSError as exc:
        raise ValueError(f"{key}_file: cannot read {path}: {exc.strerror}") from exc


# Deliberately looser than a full RFC 5322 check: local names such as
# portaria@localhost and reserved test domains are legitimate here.
_ADDRESS = re.compile(r"^[^@\s<>()\[\],;:\"]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")


def _address(value: str) -> str:
    value = value.strip()
    if not _ADDRESS.match(value):
        raise ValueError("must be one email address, like acesso@example.com.br")
    return value.lower()


class DatabaseSettings(_Section):
    url: str = Field(
        "sqlite:///var/portaria.db",
        description="SQLAlchemy URL: sqlite:///path/to/file.db or "
        "postgresql+psycopg://user@host/dbname.",
    )


class OAuth2Settings(_Section):
    token_command: str | None = Field(None, description="Command that prints an access token.")
    token_file: Path | None = Field(None, description="File that holds an access token.")


class MailboxSettings(_Section):
    kind: Literal["maildir", "imap"] = Field(
        "maildir", description="Where requests arrive: a local Maildir folder or an IMAP mailbox."
    )
    maildir: Path = Field(Path("var/mail/inbox"), description="Maildir read when kind = maildir.")
    host: str | None = None
    port: int | None = Field(None, ge=1, le=65535, description="Default: 993 for ssl, else 143.")
    security: Security = "ssl"
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    ca_file: Path | None = Field(None, description="CA bundle to verify the server with.")
    folder: str = "INBOX"
    processed_folder: str = Field("Processed", description="Where handled messages go.")
    attention_folder: str = Field(
        "NeedsAttention", description="Where incomplete, held and unreadable messages go."
    )
    batch_size: int = Field(200, ge=1, le=5000, description="Messages fetched per round trip.")
    poll_interval: int = Field(60, ge=1, description="Seconds between polls without IDLE.")
    idle: bool = Field(True, description="Use IMAP IDLE when the server offers it.")
    timeout: float = Field(60.0, gt=0, description="Socket timeout in seconds.")

    @model_validator(mode="after")
    def _imap_needs_server(self) -> MailboxSettings:
        if self.kind == "imap":
            if not self.host:
                raise ValueError(
                    "host is required when kind = 'imap' (e.g. host = 'imap.example.com')"
                )
            if not self.username:
                raise ValueError("username is required when kind = 'imap'")
        self.password = _read_secret(self.password, self.password_file, "password")
        return self

    @property
    def effective_port(self) -> int:
        return self.port or (993 if self.security == "ssl" else 143)


class OutboundSettings(_Section):
    kind: Literal["maildir", "smtp"] = Field(
        "maildir", description="How mail leaves: written to a local Maildir, or sent over SMTP."
    )
    maildir: Path = Field(
        Path("var/mail/outbox"), description="Maildir written when kind = maildir."
    )
    host: str | None = None
    port: int | None = Field(
        None, ge=1, le=65535, description="Default: 465 ssl, 587 starttls, 25."
    )
    security: Security = "starttls"
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    timeout: float = Field(30.0, gt=0)
    from_address: str = Field(
        "portaria@localhost", description="Sender of every email Portaria writes."
    )
    from_name: str = "Portaria"
    max_attempts: int = Field(8, ge=1, le=100, description="Tries before a message is failed.")
    backoff_seconds: int = Field(60, ge=1, description="First retry delay; doubles each time.")

    @field_validator("from_address")
    @classmethod
    def _from_address(cls, value: str) -> str:
        return _address(value)

    @model_validator(mode="after")
    def _smtp_needs_server(self) -> OutboundSettings:
        if self.kind == "smtp" and not self.host:
            raise ValueError(
                "host is required when kind = 'smtp' (e.g. host = 'smtp.example.com')"
            )
        self.password = _read_secret(self.password, self.password_file, "password")
        return self

    @property
    def effective_port(self) -> int:
        if self.port:
            return self.port
        return {"ssl": 465, "starttls": 587, "plain": 25}[self.security]


class ServiceSettings(_Section):
    tag: str = Field("#ACESSO", min_length=2, description="Subject tag that marks a request.")
    language: Literal["pt-BR", "en"] = Field("pt-BR", description="Language of outgoing email.")
    support_address: str | None = Field(
        None, description="Who is told that requests are waiting for approval."
    )
    base_url: str = Field(
        "http://127.0.0.1:8000", description="Public address of the web console, for links."
    )
    token_ttl_hours: int = Field(72, ge=1, le=24 * 30, description="Set-password link lifetime.")

    @field_validator("support_address")
    @classmethod
    def _support_address(cls, value: str | None) -> str | None:
        return None if value is None else _address(value)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


class EngineSettings(_Section):
    holiday_country: str = Field(
        "BR", description="Country whose public holidays are not business days (ISO code)."
    )
    holiday_subdivision: str | None = Field(
        None,
        description="State or city whose holidays are also closed, e.g. 'SP', 'RJ' or "
        "'São Paulo Capital'.",
    )
    closed_dates: list[date] = Field(
        default_factory=list,
        description="Extra days off of this company (ISO dates), e.g. a city anniversary.",
    )
    timezone: str = Field(
        "America/Sao_Paulo", description="Time zone that decides what 'today' is for due dates."
    )
    email_cap_per_recipient_per_day: int = Field(
        3, ge=0, description="Most rule emails one address receives per day; 0 turns them off."
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (e.g. 'America/Sao_Paulo')") from exc
        return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PORTARIA_", env_nested_delimiter="__", extra="forbid"
    )

    database: DatabaseSettings = DatabaseSettings()
    mailbox: MailboxSettings = MailboxSettings()
    outbound: OutboundSettings = OutboundSettings()
    service: ServiceSettings = ServiceSettings()
    engine: EngineSettings = EngineSettings()

    # Set by load_settings; where relative paths are anchored.
    config_dir: Path = Field(Path("."), exclude=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = _toml_file_for_loading.get("path")
        sources: list[PydanticBaseSettingsSource] = [env_settings, init_settings]
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    def path(self, value: Path) -> Path:
        """Resolve a path from the settings against the configuration's folder."""
        value = value.expanduser()
        return value if value.is_absolute() else (self.config_dir / value).resolve()

    @property
    def database_url(self) -> str:
        url = self.database.url
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
            return prefix + str(self.path(Path(url[len(prefix) :])))
        return url


# pydantic-settings builds sources inside the class; the file to read travels here.
_toml_file_for_loading: dict[str, Path | None] = {"path": None}


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The configuration file to use: the one given, $PORTARIA_CONFIG, or ./portaria.toml."""
    if explicit:
        return Path(explicit)
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_NAME)


def load_settings(
    path: str | os.PathLike[str] | None = None, *, required: bool = False
) -> Settings:
    """Read and validate the settings; raise ConfigError naming the key and the fix."""
    file = config_path(path)
    if file.exists():
        try:
            with file.open("rb") as handle:
                tomllib.load(handle)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: not valid TOML: {exc}") from exc
        source: Path | None = file
    elif required or path is not None:
        raise ConfigError(
            f"{file}: configuration file not found; run `portaria init` to write one"
        )
    else:
        source = None

    _toml_file_for_loading["path"] = source
    try:
        settings = Settings(config_dir=(file.parent if source else Path(".")).resolve())
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, file if source else None)) from exc
    finally:
        _toml_file_for_loading["path"] = None
    return settings


def describe_validation_error(exc: ValidationError, file: Path | None) -> str:
    """One line per problem: the dotted key, what was wrong, and where to fix it."""
    where = f"in {file} or " if file else "in portaria.toml or "
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        env = "PORTARIA_" + "__".join(str(p).upper() for p in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        given = error.get("input")
        shown = "" if isinstance(given, dict) or "password" in key else f" (got {given!r})"
        lines.append(f"{key}: {message}{shown}; set it {where}{env}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def settings_as_dict(settings: Settings) -> dict[str, Any]:
    """The settings without secrets, for `portaria config show`."""
    return settings.model_dump(mode="json", exclude={"config_dir"})
