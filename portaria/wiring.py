"""The composition root: settings, database and sessions, built once per process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings
from portaria.db import make_engine, make_sessionmaker, migrate_schema, schema_is_current
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
        with self.sessions() as session, session.begin():
            yield session


def open_service(settings: Settings, *, migrate: bool = False) -> Service:
    """Connect to the database; migrate it when asked, else insist that it is current."""
    engine = make_engine(settings.database_url)
    if migrate:
        migrate_schema(engine)
    elif not schema_is_current(engine):
        raise DatabaseNotReady(
            f"o banco de dados em {engine.url.render_as_string()} não foi criado ou está "
            "desatualizado (the database is not set up or is out of date); "
            "rode (run) `portaria init`"
        )
    return Service(settings=settings, engine=engine, sessions=make_sessionmaker(engine))
