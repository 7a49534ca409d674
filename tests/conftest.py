"""Fixtures: real databases (SQLite always, PostgreSQL when reachable), a movable clock, an App.

MAILGATE_TEST_REQUIRE_SERVERS=1 (set by CI) turns "server not available" skips into failures.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from mailgate.app import App
from mailgate.clock import FixedClock
from mailgate.config import Settings
from mailgate.db import make_engine, upgrade
from mailgate.models import Base
from mailgate.spool import Spool

REPO = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("MAILGATE_TEST_PG_URL", "postgresql+psycopg:///mailgate_test")
REQUIRE_SERVERS = os.environ.get("MAILGATE_TEST_REQUIRE_SERVERS", "") not in ("", "0")
# A Monday morning, so business-hours arithmetic in later tests starts on a working day.
START = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def pytest_configure(config: pytest.Config) -> None:
    # The daemon lowers its ingest and sender threads to niceness 19 by default, so that its
    # listener goes first under a flood (mailgate.wakeup). In a test run four test processes
    # share two cores: at niceness 19 beside the other three, those threads get about 1.5% of a
    # core, and a daemon test would wait for that, not for the daemon. So the daemons that tests
    # run inside the test process keep them at niceness 0. (`mailgate run` started as a process
    # of its own gets the environment without MAILGATE_ variables: it runs as configured.)
    os.environ.setdefault("MAILGATE_BACKGROUND_NICENESS", "0")


def server_missing(reason: str) -> None:
    """Skip, or fail when the run promised that every server is there."""
    if REQUIRE_SERVERS:
        pytest.fail(f"{reason} (MAILGATE_TEST_REQUIRE_SERVERS is set)")
    pytest.skip(reason)


def corpus_dir() -> Path:
    return Path(os.environ.get("MAILGATE_CORPUS", REPO.parent / "shared" / "corpus"))


@pytest.fixture(scope="session")
def corpus() -> Path:
    path = corpus_dir()
    if not path.is_dir():
        pytest.skip(f"shared corpus not found at {path} (set MAILGATE_CORPUS)")
    return path


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file; each test gets a copy (migrating every time is slow)."""
    path = tmp_path_factory.mktemp("template") / "mailgate.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def pg_migrated() -> Iterator[str]:
    """A PostgreSQL database of this test run's own, so parallel runs never meet; dropped after."""
    try:
        admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            name = f"{make_url(PG_URL).database}_{os.getpid()}"
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        server_missing(f"PostgreSQL not usable at {PG_URL}: {type(exc).__name__}: {exc}")
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _empty_pg(url: str) -> None:
    """Every table emptied and every id sequence back at 1, as after the migration. DELETE, not
    TRUNCATE: a test leaves a few rows, and TRUNCATE gives each of the tables and their indexes
    new files (85 ms a test here; DELETE: about 30 ms, most of it the connection)."""
    engine = create_engine(url, poolclass=NullPool)  # a test may have terminated the backends
    statements = [f'DELETE FROM "{t.name}"' for t in reversed(Base.metadata.sorted_tables)]
    statements += [
        # In place (ALTER SEQUENCE ... RESTART would give each a new file too).
        "SELECT setval((quote_ident(schemaname) || '.' || quote_ident(sequencename))::regclass, 1, false)"
        " FROM pg_sequences WHERE schemaname = current_schema()",
        "INSERT INTO counters (name, value) VALUES ('ticket', 0)",
    ]
    with engine.begin() as conn:
        conn.exec_driver_sql("; ".join(statements))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    if request.param == "sqlite":
        path = tmp_path / "mailgate.db"
        shutil.copy(sqlite_template, path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("pg_migrated")
    _empty_pg(url)
    return url


_PG_ENGINES: dict[str, Engine] = {}


def _shared_pg_engine(url: str) -> Engine | None:
    """The tests of a process share one engine per PostgreSQL database (they all use the same
    one, emptied between tests): a new engine would connect, learn the server and compile every
    statement again, about a third of a short test's time. App.close() disposes of its pooled
    connections, never of the engine. SQLite tests get an engine of their own (a file each)."""
    if not url.startswith("postgresql"):
        return None
    if url not in _PG_ENGINES:
        _PG_ENGINES[url] = make_engine(url)
    return _PG_ENGINES[url]


@pytest.fixture(autouse=True)
def _every_app_is_closed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A test that fails before its own app.close() must not leave pooled database connections
    to be collected during a later test: psycopg warns then, and that later test fails for it."""
    built: list[App] = []
    build = App.build.__func__  # type: ignore[attr-defined]

    def recorded(cls: type[App], settings: Settings, *args: object, **kwargs: object) -> App:
        if not args and "engine" not in kwargs:
            kwargs["engine"] = _shared_pg_engine(settings.effective_database_url)
        application = build(cls, settings, *args, **kwargs)
        built.append(application)
        return application

    monkeypatch.setattr(App, "build", classmethod(recorded))
    yield
    for application in built:
        application.close()


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(START)


def make_settings(tmp_path: Path, db_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": tmp_path / "data",
        "database_url": db_url,
        "secret": "test-secret-not-for-production",
        "addresses": {
            "support": "support@example.com",
            "dispatcher": "dispatch@example.com",
            "own": ["helpdesk@example.com"],
        },
        "staff": [
            {"address": "alice@example.com", "name": "Alice Jones", "team": "network"},
            {"address": "dispatch@example.com", "name": "Dispatcher", "role": "dispatcher"},
        ],
        "limits": {"acks_per_sender": 3, "ack_window_minutes": 60, "max_attachment_bytes": 1_000_000},
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return make_settings(tmp_path, db_url)


@pytest.fixture
def app(settings: Settings, clock: FixedClock) -> Iterator[App]:
    application = App.build(settings, clock=clock)
    yield application
    application.close()


@pytest.fixture
def spool(app: App) -> Iterator[Spool]:
    """The app's spool, locked as its daemon would hold it."""
    spool = Spool(app.settings.spool_dir)
    spool.lock()
    yield spool
    spool.unlock()
