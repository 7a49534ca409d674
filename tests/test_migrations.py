"""The schema comes from alembic migrations only, and they match the models on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

from mailgate.db import SCHEMA_REVISION, alembic_config, upgrade
from mailgate.models import Base


def test_migrations_create_exactly_the_models(db_url: str) -> None:
    engine = create_engine(db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def test_upgrade_is_idempotent_and_sqlite_uses_wal(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    upgrade(url)
    from mailgate.db import make_engine

    engine = make_engine(url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert "tickets" in inspect(conn).get_table_names()
    engine.dispose()


def test_the_release_knows_its_newest_migration() -> None:
    """The daemon checks the database against SCHEMA_REVISION at start (without alembic)."""
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head == SCHEMA_REVISION, f"a new migration: set mailgate.db.SCHEMA_REVISION to {head!r}"
