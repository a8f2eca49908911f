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
    SettingsError,
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


AuthMethod = Literal["password", "oauth2"]


class OAuth2Settings(_Section):
    """Where a fresh OAuth2 access token comes from; read again at every login.

    Tokens from Microsoft 365 and Gmail expire after about an hour, so
    Portaria never keeps one: the file is read, or the command run, each
    time it logs in.
    """

    token_command: str | None = Field(
        None,
        description="Command that prints a current access token on its standard output "
        "(split like a shell would, but run without one).",
    )
    token_file: Path | None = Field(
        None, description="File that holds a current access token, kept fresh by another tool."
    )
    command_timeout: float = Field(
        30.0, gt=0, le=600, description="Seconds token_command may take before it is stopped."
    )

    @model_validator(mode="after")
    def _one_source(self) -> OAuth2Settings:
        if self.token_command is not None and self.token_file is not None:
            raise ValueError("set token_command or token_file, not both")
        if self.token_command is not None and not self.token_command.strip():
            raise ValueError("token_command is empty")
        return self


def _oauth2_ready(auth: str, oauth2: OAuth2Settings | None) -> None:
    """With auth = 'oauth2', one token source must be configured."""
    if auth != "oauth2":
        return
    if oauth2 is None or (oauth2.token_command is None and oauth2.token_file is None):
        raise ValueError(
            "auth = 'oauth2' needs oauth2.token_command or oauth2.token_file "
            "(e.g. oauth2 = { token_file = '/run/portaria/token' })"
        )


class MailboxSettings(_Section):
    kind: Literal["maildir", "imap"] = Field(
        "maildir", description="Where requests arrive: a local Maildir folder or an IMAP mailbox."
    )
    maildir: Path = Field(Path("var/mail/inbox"), description="Maildir read when kind = maildir.")
    host: str | None = None
    port: int | None = Field(None, ge=1, le=65535, description="Default: 993 for ssl, else 143.")
    security: Security = "ssl"
    username: str | None = None
    auth: AuthMethod = Field(
        "password", description="How to log in: 'password', or 'oauth2' (SASL XOAUTH2)."
    )
    password: SecretStr | None = None
    password_file: Path | None = None
    oauth2: OAuth2Settings | None = Field(None, description="Token source when auth = 'oauth2'.")
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
            _oauth2_ready(self.auth, self.oauth2)
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
    auth: AuthMethod = Field(
        "password", description="How to log in when username is set: 'password' or 'oauth2'."
    )
    password: SecretStr | None = None
    password_file: Path | None = None
    oauth2: OAuth2Settings | None = Field(None, description="Token source when auth = 'oauth2'.")
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
        if self.kind == "smtp" and self.auth == "oauth2":
            if not self.username:
                raise ValueError("username is required when auth = 'oauth2'")
            _oauth2_ready(self.auth, self.oauth2)
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
    admin_address: str | None = Field(
        None,
        description="Who is emailed when the mailbox stops working and when it recovers; "
        "default: support_address.",
    )
    alert_after_minutes: int = Field(
        30,
        ge=1,
        le=7 * 24 * 60,
        description="How long polling must keep failing before the admin is emailed; "
        "also when `portaria status` calls a silent or failing mailbox a problem.",
    )
    secret_key: SecretStr | None = Field(
        None,
        description="Key (32+ characters) that signs the one-click unsubscribe links of rule "
        "emails; better in PORTARIA_SERVICE__SECRET_KEY or secret_key_file than here. "
        "Changing it breaks the links already sent.",
    )
    secret_key_file: Path = Field(
        Path("var/secret.key"),
        description="File holding the secret key when secret_key is not set; read when a "
        "link is made or checked. `portaria init` creates it (32 random bytes, mode 0600).",
    )

    @field_validator("support_address", "admin_address")
    @classmethod
    def _support_address(cls, value: str | None) -> str | None:
        return None if value is None else _address(value)

    @property
    def alert_address(self) -> str | None:
        """Where mailbox health alerts go: admin_address, else support_address."""
        return self.admin_address or self.support_address

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
    run_lease_minutes: int = Field(
        15,
        ge=1,
        le=24 * 60,
        description="A rule run not finished whose heartbeat is older than this is taken as "
        "abandoned by a dead process, and the scheduler finishes it; a live run renews its "
        "heartbeat after every batch of customers.",
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (e.g. 'America/Sao_Paulo')") from exc
        return value


MIB = 1024 * 1024

AuthenticationMethod = Literal["dmarc", "dkim", "spf"]

_DOMAIN = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*$")
_MIME_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*$")


def _address_or_domain(value: str) -> str:
    """One requester entry: an address (exact match) or a domain (it and its subdomains)."""
    value = value.strip().lower()
    if "@" in value.lstrip("@"):
        return _address(value)
    domain = value.lstrip("@")
    if not _DOMAIN.match(domain):
        raise ValueError(
            f"{value!r} is neither an address (ana@empresa.com.br) nor a domain (empresa.com.br)"
        )
    return domain


class IntakeSettings(_Section):
    """Limits and sender policy for incoming requests, and loop protection.

    Over a limit, a message is recorded with the limit and the value and
    moved to the attention folder; it is never dropped.
    """

    max_message_bytes: int = Field(
        25 * MIB,
        ge=1024,
        description=(
            "Largest message read; of a larger one only the headers are downloaded, "
            "and it is recorded as unreadable"
        ),
    )
    max_people_per_message: int = Field(
        50, ge=1, description="Most people one message may ask for; more holds the message."
    )
    max_attachment_bytes: int = Field(
        5 * MIB,
        ge=1,
        description="Largest attachment of an allowed type that is read; a larger one holds "
        "the message.",
    )
    attachment_types: list[str] = Field(
        default_factory=lambda: ["text/csv", "text/plain", "message/rfc822"],
        description="Attachment types the extraction reads (CSV also by its .csv name; "
        "message/rfc822 is a message forwarded as an attachment). Others are not read.",
    )
    auto_replies_per_hour: int = Field(
        5,
        ge=0,
        description="Most automatic answers one address gets per hour; the request is still "
        "queued. 0 never answers requesters.",
    )
    allowed_requesters: list[str] = Field(
        default_factory=list,
        description="Addresses and domains (with their subdomains) allowed to ask for "
        "access; empty allows everyone. Others are held for a person.",
    )
    require_authentication: list[AuthenticationMethod] = Field(
        default_factory=list,
        description="Hold a request unless our receiving server's Authentication-Results "
        "says one of these passed, aligned with the From domain: dmarc, dkim, spf.",
    )
    authserv_id: str | None = Field(
        None,
        description="The authserv-id our receiving server writes in Authentication-Results "
        "(e.g. mx.empresa.com.br); only its topmost header is believed.",
    )
    trusted_requesters: list[str] = Field(
        default_factory=list,
        description="Addresses and domains whose Comum requests are approved automatically "
        "(audited as auto:trusted-requester); empty turns it off. Needs "
        "require_authentication.",
    )

    @field_validator("allowed_requesters", "trusted_requesters")
    @classmethod
    def _requesters(cls, values: list[str]) -> list[str]:
        return [_address_or_domain(value) for value in values]

    @field_validator("attachment_types")
    @classmethod
    def _mime_types(cls, values: list[str]) -> list[str]:
        types = [value.strip().lower() for value in values]
        for value in types:
            if not _MIME_TYPE.match(value):
                raise ValueError(f"{value!r} is not a MIME type such as 'text/csv'")
        return types

    @field_validator("authserv_id")
    @classmethod
    def _authserv_id(cls, value: str | None) -> str | None:
        return None if value is None else value.strip().lower() or None

    @model_validator(mode="after")
    def _authentication_is_anchored(self) -> IntakeSettings:
        if self.require_authentication and not self.authserv_id:
            raise ValueError(
                "authserv_id is required with require_authentication: the name our receiving "
                "server writes first in Authentication-Results (e.g. 'mx.empresa.com.br')"
            )
        # A From address alone is easy to forge: approving on it needs proof.
        if self.trusted_requesters and not self.require_authentication:
            raise ValueError(
                "trusted_requesters needs require_authentication (e.g. ['dmarc']) and "
                "authserv_id, or anyone could forge a trusted From address"
            )
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PORTARIA_", env_nested_delimiter="__", extra="forbid"
    )

    database: DatabaseSettings = DatabaseSettings()
    mailbox: MailboxSettings = MailboxSettings()
    outbound: OutboundSettings = OutboundSettings()
    service: ServiceSettings = ServiceSettings()
    engine: EngineSettings = EngineSettings()
    intake: IntakeSettings = IntakeSettings()

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

    @model_validator(mode="after")
    def _read_password_files(self) -> Settings:
        # Here, not in the sections: only now is the configuration's folder known,
        # and a relative password_file is read from there like every other path.
        for name in ("mailbox", "outbound"):
            section = getattr(self, name)
            file = self.path(section.password_file) if section.password_file else None
            section.password = _read_secret(section.password, file, f"{name}.password")
        return self

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
    # A path someone named (flag or $PORTARIA_CONFIG) must exist; only ./portaria.toml is optional.
    named = path is not None or bool(os.environ.get(CONFIG_ENV))
    if file.exists():
        try:
            with file.open("rb") as handle:
                tomllib.load(handle)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(
                f"{file}: TOML inválido (not valid TOML): {exc}; corrija o arquivo "
                "(fix the file), o exemplo comentado está em config/portaria.example.toml"
            ) from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{file}: o arquivo não está em UTF-8 (the file is not UTF-8): byte "
                f"{exc.start}; salve-o como UTF-8 (save it as UTF-8)"
            ) from exc
        except OSError as exc:
            what = "é uma pasta (is a folder)" if file.is_dir() else exc.strerror or str(exc)
            raise ConfigError(
                f"{file}: não dá para ler a configuração (cannot read the configuration): "
                f"{what}; aponte --config / $PORTARIA_CONFIG para o arquivo portaria.toml"
            ) from exc
        source: Path | None = file
    elif required or named:
        raise ConfigError(
            f"{file}: arquivo de configuração não encontrado (configuration file not found); "
            "rode (run) `portaria init` para criá-lo, ou corrija --config / $PORTARIA_CONFIG"
        )
    else:
        source = None

    _toml_file_for_loading["path"] = source
    try:
        settings = Settings(config_dir=(file.parent if source else Path(".")).resolve())
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, file if source else None)) from exc
    except SettingsError as exc:
        # Raised before validation when an environment value cannot be decoded;
        # lists and tables there must be JSON.
        field = re.search(r'field "(\w+)"', str(exc))
        section = field.group(1) if field else "?"
        raise ConfigError(
            f"PORTARIA_{section.upper()}__*: um valor do ambiente não pôde ser lido "
            f"(an environment value could not be read): {exc.__cause__ or exc}; listas e "
            "tabelas vão em JSON (lists and tables are JSON), ex. "
            "PORTARIA_INTAKE__ALLOWED_REQUESTERS='[\"empresa.com.br\"]'"
        ) from exc
    finally:
        _toml_file_for_loading["path"] = None
    return settings


def describe_validation_error(exc: ValidationError, file: Path | None) -> str:
    """One line per problem: the dotted key, what was wrong, and where to fix it."""
    where = f"{file} ou (or) " if file else "portaria.toml ou (or) "
    lines = []
    for error in exc.errors():
        location = [str(part) for part in error["loc"]]
        message = error["msg"].removeprefix("Value error, ")
        given = error.get("input")
        # A check across a section's keys is reported on the section; its message
        # starts with the key at fault, so point there instead.
        field = re.match(r"([\w.]+)[: ]", message)
        if (
            isinstance(given, dict)
            and field
            and field.group(1).split(".")[-1] in (given.keys() | _KEYS | _section_keys())
        ):
            location += [p for p in field.group(1).split(".") if p not in location]
            message = message.removeprefix(field.group(1) + ":").strip()
        key = ".".join(location)
        env = "PORTARIA_" + "__".join(part.upper() for part in location)
        if error["type"] == "extra_forbidden":
            lines.append(
                f"{key}: chave desconhecida (unknown key); tire-a de (remove it from) {where}{env}"
            )
            continue
        shown = "" if isinstance(given, dict) or "password" in key else f" (got {given!r})"
        lines.append(f"{key}: {message}{shown}; corrija em (set it in) {where}{env}")
    return "configuração inválida (invalid configuration):\n  " + "\n  ".join(lines)


_KEYS = {"host", "username", "password", "password_file", "token_command", "token_file"}


def _section_keys() -> set[str]:
    """Every key of every section: a check across keys names one of them first."""
    keys: set[str] = set()
    for field in Settings.model_fields.values():
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            keys |= set(section.model_fields)
    return keys


def settings_as_dict(settings: Settings) -> dict[str, Any]:
    """The settings without secrets, for `portaria config show`."""
    return settings.model_dump(mode="json", exclude={"config_dir"})
