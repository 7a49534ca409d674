"""One place wires settings, database, clock, secret, attachment store and templates together."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from mailgate.clock import Clock, SystemClock
from mailgate.config import Settings
from mailgate.db import make_engine, make_sessionmaker, reader
from mailgate.outgoing.compose import Templates
from mailgate.storage import AttachmentStore


@dataclass
class App:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]  # for transactions that write (on SQLite: BEGIN IMMEDIATE)
    read_sessions: sessionmaker[Session]  # for those that only read: they never block a writer
    clock: Clock
    secret: bytes
    store: AttachmentStore
    templates: Templates
    # Called after a transaction queued outgoing mail; the daemon wakes its sender with it.
    outbox_hook: Callable[[], None] | None = None

    @classmethod
    def build(cls, settings: Settings, clock: Clock | None = None, engine: Engine | None = None) -> App:
        engine = engine or make_engine(settings.effective_database_url)
        return cls(
            settings=settings,
            engine=engine,
            sessions=make_sessionmaker(engine),
            read_sessions=make_sessionmaker(reader(engine)),
            clock=clock or SystemClock(),
            secret=settings.secret_bytes(),
            store=AttachmentStore(settings.attachments_dir),
            templates=Templates(settings.templates_path),
        )

    def outbox_changed(self) -> None:
        if self.outbox_hook is not None:
            self.outbox_hook()

    def close(self) -> None:
        self.engine.dispose()
