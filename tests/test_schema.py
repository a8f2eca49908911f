"""The Alembic migrations build exactly the schema the models describe.

A column added to a model without a migration (or the other way round) would
work in tests that create tables from the models and break a real upgrade.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

import engine.models  # noqa: F401  (the tables register themselves on import)
import intake.models  # noqa: F401
import portaria.outbox_models  # noqa: F401
import provisioning.models  # noqa: F401
from portaria.db import Base, migrate_schema


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migrations_match_the_models(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if backend == "postgresql":
        url = request.getfixturevalue("postgres_url")
    else:
        url = f"sqlite:///{tmp_path / 'schema.db'}"
    database = create_engine(url)
    migrate_schema(database)

    with database.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)

    database.dispose()
    assert differences == []
