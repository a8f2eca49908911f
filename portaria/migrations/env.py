"""Alembic environment: runs migrations on the connection Portaria hands over."""

from alembic import context
from sqlalchemy import create_engine

# Importing the models registers their tables on Base.metadata.
import engine.models  # noqa: F401
import intake.models  # noqa: F401
import portaria.outbox_models  # noqa: F401
import provisioning.models  # noqa: F401
from portaria.db import Base

target_metadata = Base.metadata


def run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        engine = create_engine(context.config.get_main_option("sqlalchemy.url"))
        with engine.begin() as connection:
            _run_on(connection)
    else:
        _run_on(connection)


def _run_on(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run()
