"""The listener's spool: a mail answered 250 is kept until ingest() stored it, whatever fails."""

from __future__ import annotations

import asyncio
import shutil
import smtplib
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from mailgate.app import App
from mailgate.clock import FixedClock
from mailgate.daemon import Running
from mailgate.db import make_engine, sync_to_disk, upgrade
from mailgate.ingest.spooled import MAX_ATTEMPTS, drain
from mailgate.models import Message, Outbox, Quarantine, SpoolEntry, Ticket
from mailgate.spool import Spool, retry_delay
from mailgate.transports import smtp
from mailgate.transports.group_commit import GroupCommit
from tests.conftest import START, make_settings
from tests.daemon_harness import running_daemon, wait_for
from tests.mails import mail


@pytest.fixture
def spool(app: App) -> Spool:
    spool = Spool.open(app.settings.spool_database_url, clock=FixedClock(START))
    yield spool
    spool.close()


def _count(app: App, model: type) -> int:
    with app.sessions() as s:
        return s.scalar(select(func.count()).select_from(model))


def _tickets_table_away(app: App, away: bool) -> None:
    """A real failure inside ingest(): the table it writes to is gone (a migration half done)."""
    names = ("tickets", "tickets_away") if away else ("tickets_away", "tickets")
    with app.engine.begin() as conn:
        conn.execute(text(f"ALTER TABLE {names[0]} RENAME TO {names[1]}"))


def test_a_spooled_mail_waits_out_a_failing_database_and_is_stored_once(app: App, spool: Spool) -> None:
    raw = mail(message_id="<spooled@client.example.org>")
    spool.put(raw, "smtp", "dana@example.com", ["support@example.com"])
    _tickets_table_away(app, True)
    try:
        report = drain(app, spool)
        assert (report.stored, report.retried) == (0, 1)
        assert spool.count() == 1
        assert drain(app, spool).taken == 0  # not due again before its back-off
    finally:
        _tickets_table_away(app, False)
    spool.clock.advance(retry_delay(1))
    assert drain(app, spool).stored == 1
    assert spool.count() == 0
    assert _count(app, Ticket) == 1
    # The worker died after ingest() committed and before it removed the row: offered again,
    # the mail is recognised and makes no second ticket.
    spool.put(raw, "smtp", "dana@example.com", ["support@example.com"])
    assert drain(app, spool).stored == 1
    assert (_count(app, Ticket), _count(app, Message), spool.count()) == (1, 1, 0)


def test_a_round_cut_short_by_the_spool_gives_back_what_it_did_not_settle(
    app: App, spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(3):
        spool.put(mail(message_id=f"<cut{n}@client.example.org>"), "smtp", "dana@example.com", ["support@example.com"])
    _tickets_table_away(app, True)  # ingest fails for now (real)

    def spool_down(entry: object, error: str) -> None:  # and so does the spool, at that moment
        raise OperationalError("UPDATE spool", {}, sqlite3.OperationalError("disk I/O error"))

    monkeypatch.setattr(spool, "failed", spool_down)
    try:
        with pytest.raises(OperationalError):
            drain(app, spool)
    finally:
        _tickets_table_away(app, False)
        monkeypatch.undo()
    # Due again now, not when the 10-minute claim runs out.
    assert drain(app, spool).stored == 3
    assert _count(app, Ticket) == 3


def test_one_mail_the_database_refuses_does_not_fail_the_others_of_its_group_commit(
    db_url: str, tmp_path: Path
) -> None:
    spool = Spool.open(make_settings(tmp_path, db_url).spool_database_url, pre_ping=False)
    written: list[int] = []
    executor = ThreadPoolExecutor(1)
    group = GroupCommit(spool, executor, on_written=written.append)

    async def three_at_once() -> list[int | BaseException]:
        # The first is written alone; the other two wait for it and are written together.
        puts = [
            group.put(b"first", "smtp", sender, ["support@example.com"])
            for sender in ("one@example.com", "bad\udcff@example.com", "three@example.com")
        ]
        return await asyncio.gather(*puts, return_exceptions=True)

    try:
        first, refused, third = asyncio.run(three_at_once())
        assert isinstance(first, int) and isinstance(third, int)
        assert isinstance(refused, Exception)  # that client gets 451 and keeps its mail
        assert written == [1, 1]
        assert [entry.envelope_sender for entry in spool.take(10)] == ["one@example.com", "three@example.com"]
    finally:
        executor.shutdown()
        spool.close()


def test_a_mail_that_never_stores_goes_to_quarantine_with_its_bytes(app: App, spool: Spool) -> None:
    raw = mail(message_id="<hopeless@client.example.org>")
    spool.put(raw, "smtp", "dana@example.com", ["support@example.com"])
    _tickets_table_away(app, True)
    try:
        for attempt in range(1, MAX_ATTEMPTS):
            assert drain(app, spool).retried == 1
            spool.clock.advance(retry_delay(attempt))
        assert drain(app, spool).quarantined == 1
    finally:
        _tickets_table_away(app, False)
    assert spool.count() == 0
    with app.sessions() as s:
        row = s.scalars(select(Quarantine)).one()
    assert row.raw == raw and row.source == "smtp"
    assert row.reason.startswith(f"could not be stored after {MAX_ATTEMPTS} attempts:")
    assert "tickets" in row.reason  # the last error says what failed


def test_mail_spooled_before_a_stop_is_ingested_at_the_next_start(tmp_path: Path, db_url: str, clock) -> None:
    app = App.build(make_settings(tmp_path, db_url, smtp={"host": "127.0.0.1", "port": 0}), clock=clock)
    left = Spool.open(app.settings.spool_database_url)
    left.put(mail(subject="left over from the last run"), "smtp", "dana@example.com", ["support@example.com"])
    left.close()
    with running_daemon(app):
        wait_for(lambda: _count(app, Ticket) == 1, timeout=10)
    with app.sessions() as s:
        assert s.scalars(select(Ticket.subject)).one() == "left over from the last run"
    app.close()


@contextmanager
def _daemon_on_sqlite(tmp_path: Path, template: Path, clock, **smtp: object) -> Iterator[tuple[App, Running]]:
    shutil.copy(template, tmp_path / "mailgate.db")
    smtp = {"host": "127.0.0.1", "port": 0, **smtp}
    app = App.build(make_settings(tmp_path, f"sqlite:///{tmp_path / 'mailgate.db'}", smtp=smtp), clock=clock)
    try:
        with running_daemon(app) as running:
            yield app, running
    finally:
        app.close()


@contextmanager
def _write_lock_held_elsewhere(app: App) -> Iterator[None]:
    """A long write transaction (a report, a migration, a backup) holds SQLite's one write lock."""
    holder = sqlite3.connect(make_url(app.settings.effective_database_url).database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_the_listener_accepts_mail_while_ingest_waits_for_the_sqlite_lock(
    tmp_path: Path, sqlite_template: Path, clock
) -> None:
    """Mail is still answered 250 at once while ingest waits for the lock, and becomes a ticket
    when the lock is free."""
    with _daemon_on_sqlite(tmp_path, sqlite_template, clock) as (app, running):
        with _write_lock_held_elsewhere(app), smtplib.SMTP("127.0.0.1", running.smtp_port, timeout=5) as client:
            for i in range(3):
                assert client.sendmail("dana@example.com", ["support@example.com"], mail(subject=f"n{i}")) == {}
        wait_for(lambda: _count(app, Ticket) == 3, timeout=10)


def test_a_mail_that_waited_in_the_spool_gets_its_arrival_time(app: App, spool: Spool, clock) -> None:
    """The database was down for two hours: the ticket's clock (and its first-response target)
    starts when the mail arrived, not when the spool was worked off."""
    spool.put(mail(message_id="<waited@client.example.org>"), "smtp", "dana@example.com", ["support@example.com"])
    clock.advance(timedelta(hours=2))
    assert drain(app, spool).stored == 1
    with app.sessions() as s:
        ticket = s.scalars(select(Ticket)).one()
        received = s.scalar(select(Message.received_at))
        acknowledged = s.scalar(select(Outbox.created_at).where(Outbox.kind == "ack"))
    hours = app.settings.tickets.first_response_hours[ticket.priority]
    assert (ticket.created_at, received) == (START, START)
    assert ticket.first_response_due == START + timedelta(hours=hours)
    assert acknowledged == START + timedelta(hours=2)  # what ingest() sends is dated when it runs


def test_a_full_spool_defers_new_mail_with_452_until_ingest_catches_up(
    tmp_path: Path, sqlite_template: Path, clock
) -> None:
    """Ingest is stuck: once smtp.max_spooled mails wait, recipients get 452 4.3.1 and the
    sender's MTA keeps the mail; when the spool empties, mail is taken again."""
    with _daemon_on_sqlite(tmp_path, sqlite_template, clock, max_spooled=3) as (app, running):
        with _write_lock_held_elsewhere(app), smtplib.SMTP("127.0.0.1", running.smtp_port, timeout=5) as client:
            for i in range(3):
                assert client.sendmail("dana@example.com", ["support@example.com"], mail(subject=f"n{i}")) == {}
            with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
                client.sendmail("dana@example.com", ["support@example.com"], mail(subject="one too many"))
        code, reply = refused.value.recipients["support@example.com"]
        assert (code, reply[:5]) == (452, b"4.3.1")
        wait_for(lambda: _count(app, Ticket) == 3, timeout=10)

        def accepted_again() -> bool:
            with smtplib.SMTP("127.0.0.1", running.smtp_port, timeout=5) as client:
                try:
                    client.sendmail("dana@example.com", ["support@example.com"], mail(subject="later"))
                except smtplib.SMTPRecipientsRefused:
                    return False
            return True

        wait_for(accepted_again, timeout=10, interval=0.2)
        wait_for(lambda: _count(app, Ticket) == 4, timeout=10)


def test_the_listener_stores_spool_rows_as_sqlalchemy_would(tmp_path: Path, db_url: str) -> None:
    """The listener's direct driver insert writes the very values a Core insert writes (times as
    SQLAlchemy formats them, addresses as JSON), so every reader sees one format; a batch gets
    its ids in the order of its mails."""
    url = make_settings(tmp_path, db_url).spool_database_url
    spool = Spool.open(url, clock=FixedClock(START), pre_ping=False)
    fast = spool.put(b"raw", "smtp", "dana@example.com", ["support@example.com"])
    batch = spool.put_many(
        [
            {"raw": f"mail {i}".encode(), "source": "smtp", "sender": f"u{i}@example.com", "recipients": []}
            for i in range(3)
        ]
    )
    with spool.engine.begin() as conn:
        core = conn.execute(
            SpoolEntry.__table__.insert().values(
                raw=b"raw",
                source="smtp",
                envelope_sender="dana@example.com",
                envelope_recipients=["support@example.com"],
                received_at=START,
                attempts=0,
                next_attempt_at=START,
                last_error="",
            )
        ).inserted_primary_key[0]
        text_of = "::text" if spool.engine.dialect.name == "postgresql" else ""  # the JSON as stored
        query = f"SELECT id, received_at, next_attempt_at, envelope_recipients{text_of} FROM spool"
        stored = {row[0]: row[1:] for row in conn.exec_driver_sql(query)}
        senders = dict(conn.exec_driver_sql("SELECT id, envelope_sender FROM spool").all())
    spool.close()
    assert stored[fast] == stored[core]
    assert [senders[i] for i in batch] == ["u0@example.com", "u1@example.com", "u2@example.com"]


@pytest.mark.postgres
def test_the_listener_survives_postgresql_dropping_its_connection(pg_migrated: str) -> None:
    """No pre-ping round trip per mail: a connection the server dropped (a restart, an admin's
    pg_terminate_backend) is found at the next mail and replaced, and the mail is kept."""
    from tests.conftest import _empty_pg

    _empty_pg(pg_migrated)
    spool = Spool.open(pg_migrated, clock=FixedClock(START), pre_ping=False)
    try:
        first = spool.put(b"one", "smtp", "dana@example.com", ["support@example.com"])
        admin = create_engine(pg_migrated)
        with admin.connect() as conn:
            killed = conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
        admin.dispose()
        assert killed >= 1  # the spool's pooled connection among them
        second = spool.put(b"two", "smtp", "dana@example.com", ["support@example.com"])
        assert second > first
        assert [entry.raw for entry in spool.take(10)] == [b"one", b"two"]
    finally:
        spool.close()


def test_the_listeners_backlog_count_matches_the_spool_when_a_recount_meets_a_write(tmp_path: Path) -> None:
    """The once-a-second recount queued behind a spool write sees that write: the mail must not
    be counted a second time on top (a wrong count answers 452 too early)."""
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'mailgate.db'}")
    spool = Spool.open(settings.spool_database_url)
    executor = ThreadPoolExecutor(max_workers=1)
    holder = sqlite3.connect(make_url(settings.spool_database_url).database, timeout=5, isolation_level=None)

    async def scenario() -> int:
        loop = asyncio.get_running_loop()
        group = GroupCommit(spool, executor)
        listener = smtp.Listener(settings, b"s" * 32, group)
        group.on_written = listener.spooled_more  # as the listener process wires it
        envelope = SimpleNamespace(
            original_content=mail(), content=None, mail_from="dana@example.com", rcpt_tos=["support@example.com"]
        )
        holder.execute("BEGIN IMMEDIATE")  # the write below waits, as behind a slow commit
        data = asyncio.create_task(listener.handle_DATA(None, SimpleNamespace(peer=("127.0.0.1", 1)), envelope))
        await asyncio.sleep(0.05)
        recount = asyncio.create_task(listener.watch_backlog(lambda: loop.run_in_executor(executor, spool.count), 60))
        await asyncio.sleep(0.05)
        holder.execute("ROLLBACK")
        assert (await data).startswith("250")
        await asyncio.sleep(0.2)
        recount.cancel()
        return listener.spooled

    try:
        assert asyncio.run(scenario()) == spool.count() == 1
    finally:
        holder.close()
        executor.shutdown()
        spool.close()


def test_the_ingest_workers_commits_reach_the_disk_before_its_spool_rows_go(tmp_path: Path) -> None:
    """The daemon's ingest worker commits without a sync each (synchronous=NORMAL) and syncs
    the -wal file once per batch; every other writer syncs each commit (FULL)."""
    url = f"sqlite:///{tmp_path / 'mailgate.db'}"
    upgrade(url)
    synced, batched = make_engine(url), make_engine(url, synced=False)
    try:
        # One after the other: each transaction takes the file's writer lock (db._WriterQueue).
        with synced.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        with batched.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        with batched.begin() as conn:
            conn.exec_driver_sql("UPDATE counters SET value = value + 1 WHERE name = 'ticket'")
        assert (tmp_path / "mailgate.db-wal").stat().st_size > 0
        sync_to_disk(batched)  # one fsync of that file; must not fail with the WAL present
    finally:
        synced.dispose()
        batched.dispose()
    sync_to_disk(make_engine(f"sqlite:///{tmp_path / 'none.db'}"))  # no -wal file: nothing pending
