"""The composition root: settings, database and sessions, built once per process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings
from portaria.db import (
    make_engine,
    make_sessionmaker,
    migrate_schema,
    schema_is_current,
    transaction,
)
from portaria.errors import PortariaError


class DatabaseNotReady(PortariaError):
    """The database schema is missing or older than this version of Portaria."""


@dataclass
class Service:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with transaction(self.sessions) as session:
            yield session


def open_service(settings: Settings, *, migrate: bool = False) -> Service:
    """Connect to the database; migrate it when asked, else insist that it is current.

    Every table is registered first: the mapper resolves foreign keys across
    packages (a request points at the intake's message), whichever command runs.
    """
    _register_tables()
    url = settings.database_url
    try:
        if not migrate and _missing_sqlite_file(url):
            raise DatabaseNotReady(
                f"o banco de dados {url} ainda não existe (the database does not exist yet); "
                "rode (run) `portaria init`"
            )
        engine = make_engine(url)
        if migrate:
            migrate_schema(engine)
        elif not schema_is_current(engine):
            raise DatabaseNotReady(
                f"o banco de dados em {engine.url.render_as_string()} não foi criado ou está "
                "desatualizado (the database is not set up or is out of date); "
                "rode (run) `portaria init`"
            )
    except (SQLAlchemyError, OSError, ImportError, ValueError) as exc:
        raise DatabaseUnavailable(
            f"database.url: não foi possível usar o banco de dados (cannot use the database) "
            f"{_shown(url)}: {_reason(exc)}; corrija database.url no portaria.toml ou "
            "PORTARIA_DATABASE__URL (fix it)"
        ) from exc
    return Service(settings=settings, engine=engine, sessions=make_sessionmaker(engine))


class DatabaseUnavailable(PortariaError):
    """The configured database cannot be opened or reached."""


def _register_tables() -> None:
    import engine.models  # noqa: F401
    import intake.models  # noqa: F401
    import portaria.outbox_models  # noqa: F401
    import provisioning.models  # noqa: F401


def _missing_sqlite_file(url: str) -> bool:
    prefix = "sqlite:///"
    return (
        url.startswith(prefix) and ":memory:" not in url and not Path(url[len(prefix) :]).exists()
    )


def _shown(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return repr(url)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return str(exc.orig).splitlines()[0]
    if isinstance(exc, ImportError):
        return f"driver not installed ({exc.name})"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
