"""The spool directory: a mail answered 250 (or exit 0) is kept until ingest() stored it, whatever fails."""

from __future__ import annotations

import shutil
import smtplib
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import make_url

from mailgate.app import App
from mailgate.clock import FixedClock
from mailgate.daemon import Running
from mailgate.db import make_engine
from mailgate.ingest.spooled import drain
from mailgate.legacy_spool import drain_legacy_spool
from mailgate.models import Message, Outbox, Quarantine, SpoolEntry, Ticket
from mailgate.retry import SPOOL
from mailgate.spool import Envelope, Spool, SpoolBusy
from tests.conftest import START, make_settings
from tests.daemon_harness import count_rows, running_daemon, wait_for
from tests.mails import mail

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def _envelope(received_at: datetime = NOW, source: str = "smtp") -> Envelope:
    return Envelope(source, "dana@example.com", ("support@example.com",), received_at)


@pytest.fixture
def wall() -> FixedClock:
    """The clock the spool's retries are timed by (the app's clock dates tickets)."""
    return FixedClock(datetime.now(UTC))


def _tickets_table_away(app: App, away: bool) -> None:
    """A real failure inside ingest(): the table it writes to is gone (a migration half done)."""
    names = ("tickets", "tickets_away") if away else ("tickets_away", "tickets")
    with app.engine.begin() as conn:
        conn.execute(text(f"ALTER TABLE {names[0]} RENAME TO {names[1]}"))


# -- the directory on its own ------------------------------------------------------------------


def test_mail_is_taken_once_in_arrival_order_and_leaves_when_done(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    for i in range(3):
        spool.put(f"mail {i}".encode(), _envelope())
    taken = [spool.claim(name) for name in spool.due(NOW)]
    assert [c.raw for c in taken if c] == [b"mail 0", b"mail 1", b"mail 2"]
    assert all(c and c.envelope == _envelope() for c in taken)
    assert spool.due(NOW) == []  # nothing left to take
    assert spool.count() == 3  # claimed, not gone: a crash now loses nothing
    for claimed in taken:
        assert claimed is not None
        spool.done(claimed.name)
    assert spool.count() == 0


def test_an_attempt_is_counted_before_the_try_and_a_dead_workers_claims_come_back_at_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.put(b"poison", _envelope())
    first = spool.claim(spool.due(NOW)[0])
    assert first is not None and first.name.attempts == 1
    # The worker died while ingesting it (nothing settled the claim); a new daemon starts.
    restarted = Spool(tmp_path / "spool")
    restarted.lock()
    assert restarted.recover() == 1
    again = restarted.claim(restarted.due(NOW)[0])  # due at once, not after a timeout
    assert again is not None and again.name.attempts == 2 and again.raw == b"poison"
    restarted.unlock()


def test_a_second_daemon_cannot_work_the_same_spool(tmp_path: Path) -> None:
    first, second = Spool(tmp_path / "spool"), Spool(tmp_path / "spool")
    first.lock()
    with pytest.raises(SpoolBusy, match="another mailgate daemon"):
        second.lock()
    first.unlock()
    second.lock()  # free again once the first one stopped
    second.unlock()


def test_a_retry_waits_its_turn_and_an_outage_gives_the_attempt_back(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.put(b"x", _envelope())
    claimed = spool.claim(spool.due(NOW)[0])
    assert claimed is not None
    spool.retry(claimed.name, "OperationalError: database is locked", NOW + timedelta(seconds=30), count=False)
    assert spool.due(NOW) == [] and spool.next_due() == NOW + timedelta(seconds=30)
    [waiting] = spool.waiting()
    assert (waiting.attempts, waiting.last_error) == (0, "OperationalError: database is locked")
    back = spool.claim(spool.due(NOW + timedelta(seconds=30))[0])
    assert back is not None and back.name.attempts == 1


def test_a_writer_that_died_before_its_rename_leaves_nothing_behind(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.put(b"x", _envelope())
    (spool.tmp / "123.1.abc").write_bytes(b"half a mail")  # never renamed: its client got no 250
    old = datetime.now().timestamp() - 40 * 3600
    import os

    os.utime(spool.tmp / "123.1.abc", (old, old))
    spool.lock()
    spool.recover()
    assert list(spool.tmp.iterdir()) == [] and spool.count() == 1
    spool.unlock()


# -- the worker: spool -> ingest() ----------------------------------------------------------------


def test_a_half_done_migration_is_an_outage_the_mail_waits_out_without_spending_tries(
    app: App, spool: Spool, wall: FixedClock
) -> None:
    raw = mail(message_id="<spooled@client.example.org>")
    spool.put(raw, _envelope())
    _tickets_table_away(app, True)
    try:
        for _ in range(app.settings.spool.max_attempts + 2):  # more rounds than tries allowed
            report = drain(app, spool, clock=wall)
            assert report.outage_until is not None and report.quarantined == 0
            wall.set(report.outage_until)
        assert [w.attempts for w in spool.waiting()] == [0]
    finally:
        _tickets_table_away(app, False)
    assert drain(app, spool, clock=wall).stored == 1
    assert spool.count() == 0
    assert count_rows(app, Ticket) == 1 and count_rows(app, Message) == 1 and count_rows(app, Quarantine) == 0


def test_a_mail_that_keeps_failing_for_a_reason_of_its_own_goes_to_quarantine_with_its_bytes(
    app: App, spool: Spool, wall: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug that only this mail hits (not the database's fault): tried spool.max_attempts times,
    then kept in quarantine with its bytes and the last error, and the mail behind it flows."""
    import mailgate.ingest.spooled as worker

    real = worker.ingest

    def ingest(app: App, raw: bytes, *args: object, **kwargs: object) -> object:
        if b"hopeless" in raw:
            try:
                raise RuntimeError("a parser bug this mail hits")
            except RuntimeError as exc:
                raise worker.TemporaryFailure(f"RuntimeError: {exc}") from exc
        return real(app, raw, *args, **kwargs)

    monkeypatch.setattr(worker, "ingest", ingest)
    raw = mail(message_id="<hopeless@client.example.org>")
    spool.put(raw, _envelope())
    limit = app.settings.spool.max_attempts
    for attempt in range(1, limit + 1):
        assert drain(app, spool, clock=wall).retried == 1
        wall.advance(SPOOL.delay(attempt))
    spool.put(mail(subject="the next one"), _envelope())
    report = drain(app, spool, clock=wall)
    assert (report.quarantined, report.stored) == (1, 1)
    assert spool.count() == 0
    with app.sessions() as s:
        row = s.scalars(select(Quarantine)).one()
    assert row.raw == raw and row.source == "smtp"
    assert row.reason.startswith(f"not stored after {limit} attempts; the last:")
    assert "a parser bug this mail hits" in row.reason  # the last error says what failed


def test_a_file_dropped_into_the_spool_by_hand_goes_to_quarantine_whole(app: App, spool: Spool) -> None:
    """Not a file mailgate wrote (no envelope, a name of its own): kept, never passed over."""
    (spool.new / "urgent.eml").write_bytes(b"Subject: dropped here by hand\r\n\r\nhello\r\n")
    assert drain(app, spool).quarantined == 1
    with app.sessions() as s:
        row = s.scalars(select(Quarantine)).one()
    assert row.raw == b"Subject: dropped here by hand\r\n\r\nhello\r\n" and "envelope" in row.reason
    assert spool.count() == 0


def test_a_mail_that_waited_in_the_spool_gets_its_arrival_time(app: App, spool: Spool, clock) -> None:
    """The database was down for two hours: the ticket's clock (and its first-response target)
    starts when the mail arrived, not when the spool was worked off."""
    spool.put(mail(message_id="<waited@client.example.org>"), _envelope(received_at=START))
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


def test_mail_spooled_before_a_stop_is_ingested_at_the_next_start(tmp_path: Path, db_url: str, clock) -> None:
    app = App.build(make_settings(tmp_path, db_url, smtp={"host": "127.0.0.1", "port": 0}), clock=clock)
    Spool(app.settings.spool_dir).put(mail(subject="left over from the last run"), _envelope())
    with running_daemon(app):
        wait_for(lambda: count_rows(app, Ticket) == 1)
    with app.sessions() as s:
        assert s.scalars(select(Ticket.subject)).one() == "left over from the last run"
    app.close()


# -- upgrading from the database spool -------------------------------------------------------------


def _old_row(raw: bytes) -> dict[str, object]:
    return {
        "raw": raw,
        "source": "smtp",
        "envelope_sender": "dana@example.com",
        "envelope_recipients": ["support@example.com"],
        "received_at": START,
        "attempts": 2,
        "next_attempt_at": START,
        "last_error": "",
    }


def test_mail_left_in_the_old_sqlite_spool_file_moves_into_the_directory(
    tmp_path: Path, sqlite_template: Path, clock
) -> None:
    shutil.copy(sqlite_template, tmp_path / "mailgate.db")
    app = App.build(make_settings(tmp_path, f"sqlite:///{tmp_path / 'mailgate.db'}"), clock=clock)
    spool = Spool(app.settings.spool_dir)
    old_file = Path(make_url(app.settings.legacy_spool_url).database)
    engine = make_engine(app.settings.legacy_spool_url)
    SpoolEntry.__table__.create(engine)
    with engine.begin() as conn:
        conn.execute(insert(SpoolEntry.__table__), [_old_row(mail(subject=f"old {i}")) for i in range(3)])
    engine.dispose()
    assert drain_legacy_spool(app.settings, spool) == 3
    assert not old_file.exists()
    while drain(app, spool).stored:
        pass
    with app.sessions() as s:
        assert sorted(s.scalars(select(Ticket.subject))) == ["old 0", "old 1", "old 2"]
        assert set(s.scalars(select(Ticket.created_at))) == {START}  # when they arrived then
    assert drain_legacy_spool(app.settings, spool) == 0  # once only
    app.close()


@pytest.mark.postgres
def test_mail_left_in_the_old_postgresql_spool_table_moves_into_the_directory(
    pg_migrated: str, tmp_path: Path, clock
) -> None:
    from tests.conftest import _empty_pg

    _empty_pg(pg_migrated)
    app = App.build(make_settings(tmp_path, pg_migrated), clock=clock)
    with app.engine.begin() as conn:
        conn.execute(insert(SpoolEntry.__table__), [_old_row(mail(subject="old pg"))])
    spool = Spool(app.settings.spool_dir)
    assert drain_legacy_spool(app.settings, spool) == 1
    with app.sessions() as s:
        assert s.scalar(select(func.count()).select_from(SpoolEntry)) == 0
    assert drain(app, spool).stored == 1
    assert count_rows(app, Ticket) == 1
    app.close()


# -- the listener beside a busy database ----------------------------------------------------------


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
    when the lock is free (a lock wait is not the mail's fault: no attempt is spent on it)."""
    with _daemon_on_sqlite(tmp_path, sqlite_template, clock) as (app, running):
        with _write_lock_held_elsewhere(app), smtplib.SMTP("127.0.0.1", running.smtp_port, timeout=5) as client:
            for i in range(3):
                assert client.sendmail("dana@example.com", ["support@example.com"], mail(subject=f"n{i}")) == {}
        wait_for(lambda: count_rows(app, Ticket) == 3, timeout=40)
        assert count_rows(app, Quarantine) == 0


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
        wait_for(lambda: count_rows(app, Ticket) == 3, timeout=40)

        def accepted_again() -> bool:
            with smtplib.SMTP("127.0.0.1", running.smtp_port, timeout=5) as client:
                try:
                    client.sendmail("dana@example.com", ["support@example.com"], mail(subject="later"))
                except smtplib.SMTPRecipientsRefused:
                    return False
            return True

        wait_for(accepted_again, interval=0.2)
        wait_for(lambda: count_rows(app, Ticket) == 4)


def test_sqlites_lock_held_past_the_busy_timeout_is_an_outage_not_the_mails_fault(
    tmp_path: Path, sqlite_template: Path, clock, wall: FixedClock
) -> None:
    shutil.copy(sqlite_template, tmp_path / "mailgate.db")
    app = App.build(make_settings(tmp_path, f"sqlite:///{tmp_path / 'mailgate.db'}"), clock=clock)
    spool = Spool(app.settings.spool_dir)
    spool.put(mail(), _envelope())
    try:
        with _write_lock_held_elsewhere(app):  # longer than the 5 s a writer waits for it
            report = drain(app, spool, clock=wall)
        assert report.outage_until is not None and report.retried == 0
        assert [w.attempts for w in spool.waiting()] == [0]
        wall.set(report.outage_until)
        assert drain(app, spool, clock=wall).stored == 1
    finally:
        app.close()


def test_an_unexpected_error_on_one_mail_counts_as_its_try_and_never_strands_it(
    app: App, spool: Spool, wall: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mailgate.ingest.spooled as worker

    def ingest(*args: object, **kwargs: object) -> object:
        raise TypeError("a bug, not a TemporaryFailure")

    monkeypatch.setattr(worker, "ingest", ingest)
    spool.put(mail(), _envelope())
    assert drain(app, spool, clock=wall).retried == 1
    [waiting] = spool.waiting()
    assert not waiting.claimed and waiting.attempts == 1 and "TypeError" in waiting.last_error


def test_an_envelope_with_a_time_without_zone_is_taken_as_utc(app: App, spool: Spool) -> None:
    (spool.new / "1.1.abcd").write_bytes(
        b'{"source": "pipe", "sender": "dana@example.com", "recipients": [], "received_at": "2026-11-23T09:00:00"}\n'
        + mail()
    )
    assert drain(app, spool).stored == 1


def test_a_quarantined_mail_keeps_its_envelope_so_its_retry_threads_like_the_original(
    app: App, spool: Spool, wall: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reply whose only evidence is the signed token in the address it was sent to (the
    envelope recipient): quarantined after its tries, then retried, it still lands on its ticket."""
    import email.utils

    import mailgate.ingest.spooled as worker
    from mailgate import quarantine
    from mailgate.ingest.pipeline import ingest as real_ingest

    real_ingest(app, mail(subject="Printer jams"), "smtp")
    with app.sessions() as s:
        ack = s.scalars(select(Outbox).where(Outbox.kind == "ack")).one()
    token_address = email.utils.parseaddr(ack.headers["Reply-To"])[1]
    reply = mail(subject="more details", body="It jams on A3 paper too.\n")

    def failing(*args: object, **kwargs: object) -> object:
        try:
            raise RuntimeError("a bug, fixed later")
        except RuntimeError as exc:
            raise worker.TemporaryFailure(str(exc)) from exc

    monkeypatch.setattr(worker, "ingest", failing)
    spool.put(reply, Envelope("smtp", "dana@example.com", (token_address,), NOW))
    for attempt in range(1, app.settings.spool.max_attempts + 1):
        drain(app, spool, clock=wall)
        wall.advance(SPOOL.delay(attempt))
    assert drain(app, spool, clock=wall).quarantined == 1
    monkeypatch.undo()
    with app.sessions() as s:
        qid = s.scalars(select(Quarantine.id)).one()
    assert quarantine.retry(app, qid) == "reply 1"
