"""The IMAP poller against a real Dovecot on 127.0.0.1, on SQLite and PostgreSQL.

One Dovecot serves the whole session; each test reads a mailbox (a user) of its own. What the
poller does with the database is tried on both databases; what it does with the server alone on
SQLite. Waits are loops on a deadline (the database or the mailbox), never fixed sleeps.
"""

from __future__ import annotations

import contextlib
import email
import faulthandler
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

import mailgate.transports.imap.reader as reader_module
from mailgate.app import App
from mailgate.clock import FixedClock
from mailgate.config import ImapMailbox
from mailgate.ingest.pipeline import TemporaryFailure
from mailgate.models import MailboxState, Message, Ticket
from mailgate.retry import Backoff
from mailgate.transports.imap import ImapPoller, check_mailbox
from mailgate.transports.imap.connect import LoginFailed, oauth2_token
from mailgate.transports.imap.lease import PgAdvisoryLease
from mailgate.transports.imap.reader import DatabaseUnavailable
from tests.dovecot import LACKS_MOVE, LACKS_MOVE_AND_UIDPLUS, Account, Dovecot, running_server
from tests.mails import mail

FAST = {"backoff": Backoff(first=0.05, cap=0.5), "lease_retry_seconds": 0.1, "lease_check_seconds": 0.2}
# Outside the database's business (the server, IDLE, stopping): one database is enough.
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
POSTGRESQL_ONLY = pytest.mark.parametrize(
    "db_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)


@pytest.fixture(scope="session")
def imap_server() -> Iterator[Dovecot]:
    with running_server() as server:
        yield server


@pytest.fixture
def dovecot(imap_server: Dovecot) -> Account:
    """A mailbox of this test's own on the session's Dovecot (started again if a test stopped it)."""
    if not imap_server.running:
        imap_server.start()
    return imap_server.account()


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> float:
    """Poll `condition` until it is true; the seconds it took. Fails after `timeout`."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.01)
    return time.monotonic() - start


class Running:
    """poller.run() in a thread, as the daemon runs it."""

    def __init__(self, poller: ImapPoller) -> None:
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=poller.run, args=(self.stop_event,), name=f"test-{poller.mailbox.name}")
        self.thread.start()

    def stop(self) -> None:
        """Set stop; run() must return promptly. (Stopping twice is harmless.)"""
        self.stop_event.set()
        self.thread.join(timeout=5)
        if self.thread.is_alive():
            faulthandler.dump_traceback()  # where it hangs, for the failure report
            raise AssertionError("run() did not return within 5 s of stop")


@contextmanager
def running(poller: ImapPoller) -> Iterator[Running]:
    handle = Running(poller)
    try:
        yield handle
    finally:
        handle.stop()


def message_id(raw: bytes) -> str:
    return email.message_from_bytes(raw)["Message-ID"]


def stored_message_ids(app: App) -> set[str]:
    with app.read_sessions() as session:
        return {f"<{m}>" for m in session.scalars(select(Message.message_id))}


@contextmanager
def database_admin(db_url: str) -> Iterator[Callable[[bool], None]]:
    """`refuse(True)`: PostgreSQL refuses connections to the test database and ends those it has,
    as in an outage; `refuse(False)` lets them in again (also done at the end, whatever happened)."""
    name = make_url(db_url).database
    admin = create_engine(make_url(db_url).set(database="postgres"), isolation_level="AUTOCOMMIT")

    def refuse(refusing: bool) -> None:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"false" if refusing else "true"}'))
            if refusing:
                conn.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))

    try:
        yield refuse
    finally:
        refuse(False)
        admin.dispose()


def count(app: App, model: type) -> int:
    """In a reading session: a writing one queues for SQLite's lock behind the poller's ingest,
    and on a loaded machine (CI) it gave up after the busy timeout, "database is locked"."""
    with app.read_sessions() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def stored(app: App, message_id: str) -> bool:
    with app.read_sessions() as session:
        return session.scalar(select(func.count()).where(Message.message_id == message_id)) == 1


def commands(account: Account) -> Counter[str]:
    """How often the server saw each command from the account's sessions: 'UID MOVE': 1 …"""
    verbs = (c.split(" ", 2) for c in account.commands())
    return Counter(" ".join(v[:2]).upper() if v[0].upper() == "UID" else v[0].upper() for v in verbs)


def ingest_fails_on(monkeypatch: pytest.MonkeyPatch, marker: bytes) -> list[bytes]:
    """From now on the poller's ingest() fails for now (TemporaryFailure) on every mail containing
    `marker`, as on a mail that trips a bug; the list returned gets each mail it failed on."""
    real_ingest = reader_module.ingest
    failed: list[bytes] = []

    def ingest_failing(app_: App, raw: bytes, source: str, *args: object, **kwargs: object) -> object:
        if marker in raw:
            failed.append(raw)
            raise TemporaryFailure("simulated: this mail trips a bug")
        return real_ingest(app_, raw, source, *args, **kwargs)

    monkeypatch.setattr(reader_module, "ingest", ingest_failing)
    return failed


def imap_records(caplog: pytest.LogCaptureFixture, level: int, contains: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "mailgate.imap" and r.levelno == level and contains in r.getMessage()
    ]


# 1. The backlog ----------------------------------------------------------------------------------


@pytest.mark.parametrize("after", ["move", "flag"])
def test_a_backlog_of_several_batches_is_ingested_exactly_once(
    app: App, dovecot: Account, after: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Batches of 10, so 25 mails are three of them, the last one short (as 250 are with the
    # batches of 100 a daemon uses, at a tenth of the ingest work).
    monkeypatch.setattr(reader_module, "BATCH_MESSAGES", 10)
    dovecot.append("INBOX", [mail(sender=f"user{i}@example.com") for i in range(25)])
    with ImapPoller(app, dovecot.mailbox(after=after)) as poller:
        report = poller.poll_once()
        again = poller.poll_once()
    assert report.candidates == 25 and report.outcomes == {"new_ticket": 25}
    assert (again.candidates, again.handled) == (0, 0)
    assert count(app, Ticket) == 25 and count(app, Message) == 25
    if after == "move":
        assert dovecot.uids("INBOX") == []
        assert len(dovecot.uids(dovecot.folder_name("mailgate/done"))) == 25
    else:
        assert len(dovecot.uids("INBOX", "SEEN")) == 25 and dovecot.uids("INBOX", "UNSEEN") == []
    with app.sessions() as session:
        state = session.scalar(select(MailboxState))
    assert state is not None and state.name == "support" and state.last_uid == 25


# 2. A batch is acknowledged with one command, after its mails are stored --------------------------


@SQLITE_ONLY
@pytest.mark.parametrize("after", ["move", "flag"])
def test_a_batch_is_moved_or_flagged_with_one_command_per_folder(
    app: App, dovecot: Account, monkeypatch: pytest.MonkeyPatch, after: str
) -> None:
    """50 mails, 5 of which fail for good: the server sees one command for the 45 stored (a move
    or a flag) and one move for the 5 that go to the failure folder, not one per mail."""
    ingest_fails_on(monkeypatch, b"<poison-")
    dovecot.append(
        "INBOX",
        [
            mail(
                sender=f"user{i}@example.com", message_id=f"<poison-{i}@client.example.org>" if i % 10 == 3 else "auto"
            )
            for i in range(50)
        ],
    )
    with ImapPoller(app, dovecot.mailbox(after=after, max_failures=1)) as poller:
        report = poller.poll_once()
    assert (report.outcomes, report.to_failure_folder) == ({"new_ticket": 45}, 5)
    assert len(dovecot.uids(dovecot.folder_name("mailgate/failed"))) == 5
    seen = commands(dovecot)
    if after == "move":
        assert len(dovecot.uids(dovecot.folder_name("mailgate/done"))) == 45 and dovecot.uids("INBOX") == []
        assert seen["UID MOVE"] == 2
    else:
        assert len(dovecot.uids("INBOX", "SEEN")) == 45
        assert (seen["UID STORE"], seen["UID MOVE"]) == (1, 1)


@POSTGRESQL_ONLY
def test_a_database_failure_in_the_middle_of_a_batch_leaves_the_mail_not_stored_in_the_folder(
    app: App, db_url: str, dovecot: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database goes away after 4 of a batch of 10 are committed: those 4 are moved, the other 6
    stay in the INBOX (none moved before its commit), and are stored once the database is back."""
    mails = [mail(sender=f"user{i}@example.com") for i in range(10)]
    dovecot.append("INBOX", mails)
    real_ingest = reader_module.ingest
    with database_admin(db_url) as refuse:
        calls = 0

        def ingest_losing_the_database(*args: object, **kwargs: object) -> object:
            nonlocal calls
            calls += 1
            if calls == 5:
                refuse(True)
            return real_ingest(*args, **kwargs)

        monkeypatch.setattr(reader_module, "ingest", ingest_losing_the_database)
        with ImapPoller(app, dovecot.mailbox()) as poller:
            with pytest.raises(DatabaseUnavailable):
                poller.poll_once()
            assert set(dovecot.message_ids(dovecot.folder_name("mailgate/done"))) == {message_id(m) for m in mails[:4]}
            assert set(dovecot.message_ids("INBOX")) == {message_id(m) for m in mails[4:]}
            refuse(False)
            assert stored_message_ids(app) == {message_id(m) for m in mails[:4]}
            assert poller.poll_once().outcomes == {"new_ticket": 6}
    assert dovecot.uids("INBOX") == [] and count(app, Ticket) == 10


@SQLITE_ONLY
@pytest.mark.parametrize(("host", "expunged"), [(LACKS_MOVE, True), (LACKS_MOVE_AND_UIDPLUS, False)])
def test_without_move_a_batch_is_copied_and_a_persons_deleted_mail_is_never_expunged(
    app: App, dovecot: Account, caplog: pytest.LogCaptureFixture, host: str, expunged: bool
) -> None:
    """Without MOVE: one COPY, one STORE \\Deleted and, with UIDPLUS, one UID EXPUNGE of exactly the
    batch. Without UIDPLUS nothing is expunged: a plain EXPUNGE would also remove the mail a person
    flagged \\Deleted and has not expunged; the copies left behind are not read again."""
    dovecot.append("INBOX", [mail(message_id="<kept@client.example.org>")], flags=[b"\\Deleted"])
    mails = [mail(sender=f"user{i}@example.com") for i in range(5)]
    dovecot.append("INBOX", mails)
    with ImapPoller(app, dovecot.mailbox(host=host)) as poller:
        assert poller.poll_once().outcomes == {"new_ticket": 5}
        assert poller.poll_once().candidates == 0
    assert set(dovecot.message_ids(dovecot.folder_name("mailgate/done"))) == {message_id(m) for m in mails}
    assert dovecot.message_ids("INBOX", "UNDELETED") == []
    assert "<kept@client.example.org>" in dovecot.message_ids("INBOX")
    assert len(dovecot.uids("INBOX")) == (1 if expunged else 6)
    seen = commands(dovecot)
    assert (seen["UID MOVE"], seen["UID COPY"], seen["UID STORE"], seen["EXPUNGE"]) == (0, 1, 1, 0)
    assert seen["UID EXPUNGE"] == (1 if expunged else 0)
    warned = imap_records(caplog, logging.WARNING, "neither MOVE nor UIDPLUS")
    assert len(warned) == (0 if expunged else 1)


# 3. The connection dropped mid-batch --------------------------------------------------------------


@pytest.mark.parametrize("after", ["move", "flag"])
def test_connection_dropped_between_commit_and_acknowledgement_loses_and_duplicates_nothing(
    app: App, dovecot: Account, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, after: str
) -> None:
    """The worst moment: mail 24 (of the batch 21-30) is committed, and the connection drops
    before the batch is moved/flagged. After the reconnect the batch comes again: the mails stored
    before the drop are duplicates, none is a second ticket, none is lost."""
    caplog.set_level(logging.INFO, logger="mailgate.imap")
    monkeypatch.setattr(reader_module, "BATCH_MESSAGES", 10)  # 30 mails: three batches of 10
    dovecot.append("INBOX", [mail(sender=f"user{i}@example.com") for i in range(30)])
    real_ingest = reader_module.ingest
    calls = 0

    def ingest_then_drop_the_connection(*args: object, **kwargs: object) -> object:
        nonlocal calls
        result = real_ingest(*args, **kwargs)
        calls += 1
        if calls == 24:
            assert dovecot.kill_connections() == 1
        return result

    monkeypatch.setattr(reader_module, "ingest", ingest_then_drop_the_connection)
    poller = ImapPoller(app, dovecot.mailbox(after=after), **FAST)
    with running(poller):
        wait_for(lambda: poller.totals["new_ticket"] == 30 and poller.state == "idle", 60, "all 30 handled")
    # The mails of the batch 21-30 stored before the move failed came again: duplicates.
    assert set(poller.totals) == {"new_ticket", "duplicate"} and poller.totals["duplicate"] >= 1
    assert count(app, Ticket) == 30 and count(app, Message) == 30
    if after == "move":
        assert dovecot.uids("INBOX") == []
        assert len(dovecot.uids(dovecot.folder_name("mailgate/done"))) == 30
    else:
        assert len(dovecot.uids("INBOX", "SEEN")) == 30
    assert len(imap_records(caplog, logging.WARNING, "IMAP server unavailable")) == 1
    assert len(imap_records(caplog, logging.INFO, "IMAP server is back")) == 1


@SQLITE_ONLY
def test_server_restart_at_any_moment_loses_and_duplicates_nothing(
    app: App, dovecot: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server restarts while the poller is somewhere in its work (fetch, ingest, move).

    Killed in the middle of a MOVE, Dovecot (Maildir) may leave the mail both copied and, flagged
    \\Deleted, in the INBOX: the done folder can then hold a copy twice, never a ticket."""
    mails = [mail(sender=f"user{i}@example.com") for i in range(300)]
    dovecot.append("INBOX", mails)
    real_ingest = reader_module.ingest
    seen = threading.Semaphore(0)

    def counting_ingest(*args: object, **kwargs: object) -> object:
        result = real_ingest(*args, **kwargs)
        seen.release()
        return result

    monkeypatch.setattr(reader_module, "ingest", counting_ingest)
    poller = ImapPoller(app, dovecot.mailbox(), **FAST)
    with running(poller):
        for restart_after in (60, 90, 50):  # three restarts, each while the poller is busy
            for _ in range(restart_after):
                if not seen.acquire(timeout=30):
                    faulthandler.dump_traceback()
                    raise AssertionError(f"the poller stalled (state {poller.state})")
            dovecot.server.restart()
        wait_for(lambda: count(app, Message) == 300 and not dovecot.uids("INBOX", "UNDELETED"), 60, "all 300 stored")
    assert count(app, Ticket) == 300 and count(app, Message) == 300
    assert poller.totals["new_ticket"] == 300  # what came again after a restart was a duplicate
    assert set(dovecot.message_ids(dovecot.folder_name("mailgate/done"))) == {message_id(m) for m in mails}


# 4. UIDVALIDITY ------------------------------------------------------------------------------------


@pytest.mark.parametrize("after", ["move", "flag"])
def test_a_uidvalidity_change_creates_no_duplicate(app: App, dovecot: Account, after: str) -> None:
    folder = "support-in"
    first = [mail(sender=f"user{i}@example.com") for i in range(5)]
    dovecot.append(folder, first)
    with ImapPoller(app, dovecot.mailbox(folder=folder, after=after)) as poller:
        assert poller.poll_once().outcomes == {"new_ticket": 5}
        with app.sessions() as session:
            old_validity = session.scalar(select(MailboxState.uidvalidity))
        # The folder is rebuilt: new UIDVALIDITY, UIDs from 1 again. Some mail we stored comes back
        # (with the \Seen flag we set, and one without it), beside two new ones.
        with dovecot.client() as client:
            client.delete_folder(folder)
            client.create_folder(folder)
        if after == "flag":
            dovecot.append(folder, first[:3], flags=[b"\\Seen"])
            dovecot.append(folder, [first[3]])
        else:
            dovecot.append(folder, first[:3])
        dovecot.append(folder, [mail(), mail()])
        report = poller.poll_once()
        assert report.uidvalidity_reset
        assert report.outcomes == {"duplicate": 4 if after == "flag" else 3, "new_ticket": 2}
        assert poller.poll_once().candidates == 0
    assert count(app, Ticket) == 7 and count(app, Message) == 7
    with app.sessions() as session:
        state = session.scalar(select(MailboxState))
    assert state is not None and state.uidvalidity != old_validity


# 5. IDLE --------------------------------------------------------------------------------------------


@SQLITE_ONLY
def test_new_mail_arrives_through_idle_within_two_seconds(app: App, dovecot: Account) -> None:
    poller = ImapPoller(app, dovecot.mailbox(poll_seconds=60), **FAST)  # the poll would come far too late
    with running(poller):
        for i in range(3):
            wait_for(lambda: poller.state == "idle", 10, "the poller idles")
            message_id = f"idle-{i}@client.example.org"
            dovecot.append("INBOX", [mail(message_id=f"<{message_id}>")])
            wait_for(lambda mid=message_id: stored(app, mid), 2.0, "stored within 2 s of the APPEND")
    assert poller.totals == {"new_ticket": 3}


# 6. The failure folder --------------------------------------------------------------------------------


@SQLITE_ONLY
def test_a_mail_that_keeps_failing_goes_to_the_failure_folder_and_the_rest_is_processed(
    app: App, dovecot: Account, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ingest_fails_on(monkeypatch, b"<poison@client.example.org>")
    dovecot.append("INBOX", [mail(), mail(), mail(message_id="<poison@client.example.org>"), mail(), mail()])
    failed_folder = dovecot.folder_name("mailgate/failed")
    with ImapPoller(app, dovecot.mailbox(max_failures=3)) as poller:
        first = poller.poll_once()
        assert (first.outcomes, first.failed, first.to_failure_folder) == ({"new_ticket": 4}, 1, 0)
        assert dovecot.uids("INBOX") == [3] and dovecot.uids(failed_folder) == []
        second = poller.poll_once()
        assert (second.candidates, second.failed, second.to_failure_folder) == (1, 1, 0)
        third = poller.poll_once()
        assert (third.failed, third.to_failure_folder) == (1, 1)
        assert poller.poll_once().candidates == 0
    assert dovecot.uids("INBOX") == []
    assert len(dovecot.uids(failed_folder, ["HEADER", "Message-ID", "poison@client.example.org"])) == 1
    assert count(app, Ticket) == 4
    errors = imap_records(caplog, logging.ERROR, "msgid=<poison@client.example.org>")
    assert len(errors) == 1 and "failed 3 times, moved to mailgate/failed" in errors[0]


@SQLITE_ONLY
def test_a_failed_mail_waits_poll_seconds_however_much_new_mail_arrives(
    app: App, dovecot: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    failed = ingest_fails_on(monkeypatch, b"<poison@client.example.org>")
    dovecot.append("INBOX", [mail(message_id="<poison@client.example.org>")])
    poller = ImapPoller(app, dovecot.mailbox(max_failures=2, poll_seconds=60), **FAST)
    with running(poller):
        for i in range(4):  # a burst of rounds, each woken by new mail through IDLE
            dovecot.append("INBOX", [mail(message_id=f"<burst-{i}@client.example.org>")])
            wait_for(lambda i=i: poller.totals["new_ticket"] == i + 1, 10, f"burst mail {i} stored")
    assert len(failed) == 1
    assert dovecot.uids("INBOX") == [1] and dovecot.uids(dovecot.folder_name("mailgate/failed")) == []


@POSTGRESQL_ONLY
def test_while_the_database_is_down_nothing_is_counted_against_the_mail(
    app: App, db_url: str, dovecot: Account, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """max_failures=1, and the database goes away as the first mail is ingested: the mail must
    wait in the INBOX, not land in the failure folder; once the database is back it is stored."""
    caplog.set_level(logging.DEBUG, logger="mailgate.imap")
    real_ingest = reader_module.ingest
    dovecot.append("INBOX", [mail(message_id="<during-outage@client.example.org>")])
    with database_admin(db_url) as refuse:
        outage = threading.Event()

        def ingest_during_an_outage(*args: object, **kwargs: object) -> object:
            if not outage.is_set():
                outage.set()
                refuse(True)
            return real_ingest(*args, **kwargs)

        monkeypatch.setattr(reader_module, "ingest", ingest_during_an_outage)
        poller = ImapPoller(app, dovecot.mailbox(max_failures=1), **FAST)
        with running(poller):
            wait_for(lambda: len(imap_records(caplog, logging.DEBUG, "still unavailable")) >= 4, 20, "retries")
            assert dovecot.uids("INBOX") == [1]
            refuse(False)
            wait_for(lambda: poller.totals["new_ticket"] == 1, 20, "stored once the database is back")
    assert stored(app, "during-outage@client.example.org")
    assert dovecot.uids(dovecot.folder_name("mailgate/failed")) == []
    assert len(dovecot.uids(dovecot.folder_name("mailgate/done"))) == 1
    assert len(imap_records(caplog, logging.WARNING, "database unavailable")) == 1
    assert len(imap_records(caplog, logging.INFO, "database is back")) == 1


# 7. The lease ------------------------------------------------------------------------------------------


@POSTGRESQL_ONLY
def test_on_postgresql_one_poller_works_and_another_takes_over(
    settings, clock: FixedClock, dovecot: Account, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Two daemons (two Apps, two pollers) on one database and one mailbox."""
    caplog.set_level(logging.INFO, logger="mailgate.imap")
    first_app, second_app = App.build(settings, clock=clock), App.build(settings, clock=clock)
    first = ImapPoller(first_app, dovecot.mailbox(), **FAST)
    second = ImapPoller(second_app, dovecot.mailbox(), **FAST)
    third = ImapPoller(first_app, dovecot.mailbox(), **FAST)
    assert isinstance(first.lease, PgAdvisoryLease) and isinstance(second.lease, PgAdvisoryLease)

    def terminate(lease: PgAdvisoryLease) -> None:
        with first_app.engine.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": lease.backend_pid()})

    try:
        with contextlib.ExitStack() as stack:
            first_running = stack.enter_context(running(first))
            wait_for(lambda: first.state == "idle", 10, "the first poller works")
            second_running = stack.enter_context(running(second))
            wait_for(lambda: second.state == "standby", 10, "the second stands by")
            dovecot.append("INBOX", [mail(sender=f"user{i}@example.com") for i in range(10)])
            wait_for(lambda: sum(first.totals.values()) == 10, 10, "the first ingests")
            assert sum(first.totals.values()) == 10 and not second.totals and second.state == "standby"
            # The first daemon dies: it never lets go, its connection just stays open ...
            monkeypatch.setattr(first.lease, "release", lambda: None)
            first_running.stop()
            assert second.state == "standby"
            # ... until PostgreSQL closes it (as it does when the dead host's connection times out).
            terminate(first.lease)
            wait_for(lambda: second.state == "idle", 10, "the second takes over")
            dovecot.append("INBOX", [mail(sender=f"user{i}@example.com") for i in range(10)])
            wait_for(lambda: sum(second.totals.values()) == 10, 10, "the second ingests")
            assert sum(second.totals.values()) == 10 and sum(first.totals.values()) == 10

            # The holder's own lease connection breaks: it stops working, then takes the free lease again.
            terminate(second.lease)
            wait_for(lambda: imap_records(caplog, logging.WARNING, "lease lost"), 10, "the second notices")
            wait_for(lambda: second.state == "idle", 10, "the second works again")

            # A third daemon stands by; the second stops cleanly, lets go, and the third takes over.
            stack.enter_context(running(third))
            wait_for(lambda: third.state == "standby", 10, "the third stands by")
            second_running.stop()
            wait_for(lambda: third.state == "idle", 10, "the third takes over")
            dovecot.append("INBOX", [mail(sender=f"user{i}@example.com") for i in range(5)])
            wait_for(lambda: sum(third.totals.values()) == 5, 10, "the third ingests")
        assert [sum(p.totals.values()) for p in (first, second, third)] == [10, 10, 5]
        assert count(first_app, Ticket) == 25
    finally:
        first_app.close()
        second_app.close()


@SQLITE_ONLY
def test_on_sqlite_the_lease_is_a_lock_file_beside_the_database(app: App, dovecot: Account) -> None:
    dovecot.append("INBOX", [mail()])
    with ImapPoller(app, dovecot.mailbox()) as first, ImapPoller(app, dovecot.mailbox()) as second:
        assert first.poll_once().outcomes == {"new_ticket": 1}
        assert second.poll_once().standby
        first.close()
        dovecot.append("INBOX", [mail()])
        assert second.poll_once().outcomes == {"new_ticket": 1}


# Outages, credentials, stopping -------------------------------------------------------------------------


@SQLITE_ONLY
def test_a_server_outage_is_logged_once_and_mail_from_it_arrives_after(
    app: App, dovecot: Account, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="mailgate.imap")
    poller = ImapPoller(app, dovecot.mailbox(), **FAST)
    with running(poller):
        wait_for(lambda: poller.state == "idle", 10, "the poller idles")
        dovecot.server.stop()
        wait_for(lambda: len(imap_records(caplog, logging.DEBUG, "still unavailable")) >= 2, 10, "retries")
        dovecot.server.start()
        dovecot.append("INBOX", [mail(message_id="<after-outage@client.example.org>")])
        wait_for(lambda: stored(app, "after-outage@client.example.org"), 10, "stored after the outage")
    assert len(imap_records(caplog, logging.WARNING, "IMAP server unavailable")) == 1
    assert len(imap_records(caplog, logging.INFO, "IMAP server is back")) == 1


@SQLITE_ONLY
def test_the_password_file_is_read_at_every_connect(
    app: App, dovecot: Account, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="mailgate.imap")
    secret = tmp_path / "imap-password"
    secret.write_text("wrong\n")
    box = dovecot.mailbox(password="", password_file=secret)
    assert "LoginError" in (check_mailbox(box) or "")
    dovecot.append("INBOX", [mail(message_id="<pw@client.example.org>")])
    poller = ImapPoller(app, box, **FAST)
    with running(poller):
        wait_for(lambda: imap_records(caplog, logging.DEBUG, "still unavailable"), 10, "a second failed login")
        secret.write_text("secret\n")  # the right one, with the newline an editor leaves
        wait_for(lambda: stored(app, "pw@client.example.org"), 10, "stored once the password is right")
    assert len(imap_records(caplog, logging.WARNING, "unavailable: LoginError")) == 1
    assert check_mailbox(box) is None


def test_the_oauth2_command_prints_the_token() -> None:
    assert oauth2_token("printf 'ya29.token\\n'") == "ya29.token"
    with pytest.raises(LoginFailed, match="exited with 3: no token for you"):
        oauth2_token("echo 'no token for you' >&2; exit 3")
    with pytest.raises(LoginFailed, match="exited with 0: no output"):
        oauth2_token("true")


@SQLITE_ONLY
def test_stop_during_a_backlog_finishes_the_mail_in_flight(app: App, dovecot: Account) -> None:
    dovecot.append("INBOX", [mail(sender=f"user{i}@example.com") for i in range(300)])
    poller = ImapPoller(app, dovecot.mailbox(), **FAST)
    stop = threading.Event()
    thread = threading.Thread(target=poller.run, args=(stop,))
    thread.start()
    try:
        wait_for(lambda: count(app, Message) >= 1, 30, "the poller is busy")
    finally:
        stop.set()
    assert wait_for(lambda: not thread.is_alive(), 3, "run() returns") < 3
    done = len(dovecot.uids(dovecot.folder_name("mailgate/done")))
    # Every stored mail was moved, every mail moved was stored, and the rest is still waiting.
    assert count(app, Message) == done < 300
    assert len(dovecot.uids("INBOX")) == 300 - done


@SQLITE_ONLY
def test_stop_returns_even_when_the_server_stops_answering(app: App) -> None:
    """A server that stops answering (here: at LOGIN): run() must not wait for the read timeout."""
    listener = socket.create_server(("127.0.0.1", 0))
    got_login = threading.Event()
    accepted: list[socket.socket] = []

    def greet_then_say_nothing() -> None:
        conn, _ = listener.accept()
        accepted.append(conn)
        lines = conn.makefile("rb")
        conn.sendall(b"* OK silent server ready\r\n")
        tag = lines.readline().split()[0]  # CAPABILITY
        conn.sendall(b"* CAPABILITY IMAP4rev1 IDLE\r\n" + tag + b" OK done\r\n")
        if b"LOGIN" in lines.readline():  # never answered
            got_login.set()

    server = threading.Thread(target=greet_then_say_nothing, daemon=True)
    server.start()
    box = ImapMailbox(
        name="silent", host="127.0.0.1", port=listener.getsockname()[1], security="none", user="u", password="p"
    )
    try:
        with running(ImapPoller(app, box, **FAST)) as handle:
            assert got_login.wait(10)
            start = time.monotonic()
            handle.stop()
            assert time.monotonic() - start < 5
    finally:
        for conn in accepted:
            conn.close()
        listener.close()


@SQLITE_ONLY
@pytest.mark.parametrize("security", ["tls", "starttls"])
def test_tls_and_starttls_verify_the_certificate(
    app: App, dovecot: Account, security: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = dovecot.server
    box = dovecot.mailbox(security=security, port=server.tls_port if security == "tls" else server.port)
    assert "CERTIFICATE_VERIFY_FAILED" in (check_mailbox(box) or "")  # not trusted yet
    monkeypatch.setenv("SSL_CERT_FILE", str(server.certificate))  # how a private CA is trusted
    assert check_mailbox(box) is None
    dovecot.append("INBOX", [mail()])
    with ImapPoller(app, box) as poller:
        assert poller.poll_once().outcomes == {"new_ticket": 1}
