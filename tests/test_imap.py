"""The IMAP poller against a real Dovecot on 127.0.0.1, on SQLite and PostgreSQL.

Waits are loops on a deadline (the database or the mailbox), never fixed sleeps.
"""

from __future__ import annotations

import contextlib
import email
import faulthandler
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

import mailgate.transports.imap as imap_module
from mailgate.app import App
from mailgate.clock import FixedClock
from mailgate.config import ImapMailbox
from mailgate.ingest.pipeline import TemporaryFailure
from mailgate.models import MailboxState, Message, Ticket
from mailgate.transports.imap import ImapPoller, check_mailbox
from mailgate.transports.imap_connect import LoginFailed, oauth2_token
from mailgate.transports.lease import PgAdvisoryLease
from tests.dovecot import Dovecot, running_dovecot
from tests.mails import mail

FAST = {"backoff_start": 0.05, "backoff_cap": 0.5, "lease_retry_seconds": 0.1, "lease_check_seconds": 0.2}


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    with running_dovecot() as server:
        yield server


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


def count(app: App, model: type) -> int:
    with app.sessions() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def stored(app: App, message_id: str) -> bool:
    with app.sessions() as session:
        return session.scalar(select(func.count()).where(Message.message_id == message_id)) == 1


def imap_records(caplog: pytest.LogCaptureFixture, level: int, contains: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "mailgate.imap" and r.levelno == level and contains in r.getMessage()
    ]


# 1. The backlog ----------------------------------------------------------------------------------


@pytest.mark.parametrize("after", ["move", "flag"])
def test_a_backlog_of_500_is_ingested_exactly_once(app: App, dovecot: Dovecot, after: str) -> None:
    dovecot.append("INBOX", [mail() for _ in range(500)])
    with ImapPoller(app, dovecot.mailbox(after=after)) as poller:
        start = time.monotonic()
        report = poller.poll_once()
        seconds = time.monotonic() - start
        again = poller.poll_once()
    print(f"\n500 mails from IMAP ({after}, {app.engine.dialect.name}): {seconds:.2f}s, {500 / seconds:.0f} mails/s")
    assert report.candidates == 500 and report.outcomes == {"new_ticket": 500}
    assert (again.candidates, again.handled) == (0, 0)
    assert count(app, Ticket) == 500 and count(app, Message) == 500
    if after == "move":
        assert dovecot.uids("INBOX") == []
        assert len(dovecot.uids(dovecot.folder_name("mailgate/done"))) == 500
    else:
        assert len(dovecot.uids("INBOX", "SEEN")) == 500 and dovecot.uids("INBOX", "UNSEEN") == []
    with app.sessions() as session:
        state = session.scalar(select(MailboxState))
    assert state is not None and state.name == "support" and state.last_uid == 500


# 2. The connection dropped mid-batch --------------------------------------------------------------


@pytest.mark.parametrize("after", ["move", "flag"])
def test_connection_dropped_between_commit_and_acknowledgement_loses_and_duplicates_nothing(
    app: App, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, after: str
) -> None:
    """The worst moment: mail 120 (of the batch 101-200) is committed, and the connection drops
    before it is moved/flagged. After the reconnect it comes again and is a duplicate."""
    caplog.set_level(logging.INFO, logger="mailgate.imap")
    dovecot.append("INBOX", [mail() for _ in range(250)])
    real_ingest = imap_module.ingest
    calls = 0

    def ingest_then_drop_the_connection(*args: object, **kwargs: object) -> object:
        nonlocal calls
        result = real_ingest(*args, **kwargs)
        calls += 1
        if calls == 120:
            assert dovecot.kill_connections() == 1
        return result

    monkeypatch.setattr(imap_module, "ingest", ingest_then_drop_the_connection)
    poller = ImapPoller(app, dovecot.mailbox(after=after), **FAST)
    with running(poller):
        wait_for(lambda: sum(poller.totals.values()) == 250 and poller.state == "idle", 60, "all 250 handled")
    # Mail 120 was stored before the drop, and acknowledged after it as a duplicate.
    assert poller.totals == {"new_ticket": 249, "duplicate": 1}
    assert count(app, Ticket) == 250 and count(app, Message) == 250
    if after == "move":
        assert dovecot.uids("INBOX") == []
        assert len(dovecot.uids(dovecot.folder_name("mailgate/done"))) == 250
    else:
        assert len(dovecot.uids("INBOX", "SEEN")) == 250
    assert len(imap_records(caplog, logging.WARNING, "IMAP server unavailable")) == 1
    assert len(imap_records(caplog, logging.INFO, "IMAP server is back")) == 1


def test_server_restart_at_any_moment_loses_and_duplicates_nothing(
    app: App, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server restarts while the poller is somewhere in its work (fetch, ingest, move).

    Killed in the middle of a MOVE, Dovecot (Maildir) may leave the mail both copied and, flagged
    \\Deleted, in the INBOX: the done folder can then hold a copy twice, never a ticket."""
    mails = [mail() for _ in range(300)]
    dovecot.append("INBOX", mails)
    real_ingest = imap_module.ingest
    seen = threading.Semaphore(0)

    def counting_ingest(*args: object, **kwargs: object) -> object:
        result = real_ingest(*args, **kwargs)
        seen.release()
        return result

    monkeypatch.setattr(imap_module, "ingest", counting_ingest)
    poller = ImapPoller(app, dovecot.mailbox(), **FAST)
    with running(poller):
        for restart_after in (60, 90, 50):  # three restarts, each while the poller is busy
            for _ in range(restart_after):
                if not seen.acquire(timeout=30):
                    faulthandler.dump_traceback()
                    raise AssertionError(f"the poller stalled (state {poller.state})")
            dovecot.restart()
        wait_for(lambda: count(app, Message) == 300 and not dovecot.uids("INBOX", "UNDELETED"), 60, "all 300 stored")
    assert count(app, Ticket) == 300 and count(app, Message) == 300
    assert poller.totals["new_ticket"] + poller.totals["duplicate"] <= 300
    assert set(dovecot.message_ids(dovecot.folder_name("mailgate/done"))) == {message_id(m) for m in mails}


# 3. UIDVALIDITY ------------------------------------------------------------------------------------


@pytest.mark.parametrize("after", ["move", "flag"])
def test_a_uidvalidity_change_creates_no_duplicate(app: App, dovecot: Dovecot, after: str) -> None:
    folder = "support-in"
    first = [mail() for _ in range(5)]
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


# 4. IDLE --------------------------------------------------------------------------------------------


def test_new_mail_arrives_through_idle_within_two_seconds(app: App, dovecot: Dovecot) -> None:
    poller = ImapPoller(app, dovecot.mailbox(poll_seconds=60), **FAST)  # the poll would come far too late
    latencies = []
    with running(poller):
        for i in range(3):
            wait_for(lambda: poller.state == "idle", 10, "the poller idles")
            message_id = f"idle-{i}@client.example.org"
            start = time.monotonic()
            dovecot.append("INBOX", [mail(message_id=f"<{message_id}>")])
            wait_for(lambda mid=message_id: stored(app, mid), 2.0, "stored within 2 s of the APPEND")
            latencies.append(time.monotonic() - start)
    print(f"\nIDLE latency APPEND -> committed ({app.engine.dialect.name}): {[f'{s:.2f}s' for s in latencies]}")
    assert poller.totals == {"new_ticket": 3}


# 5. The failure folder --------------------------------------------------------------------------------


def test_a_mail_that_keeps_failing_goes_to_the_failure_folder_and_the_rest_is_processed(
    app: App, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_ingest = imap_module.ingest

    def ingest_failing_on_poison(app_: App, raw: bytes, source: str, *args: object, **kwargs: object) -> object:
        if b"<poison@client.example.org>" in raw:
            raise TemporaryFailure("simulated: this mail trips a bug")
        return real_ingest(app_, raw, source, *args, **kwargs)

    monkeypatch.setattr(imap_module, "ingest", ingest_failing_on_poison)
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


def test_a_failed_mail_waits_poll_seconds_however_much_new_mail_arrives(
    app: App, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_ingest = imap_module.ingest
    attempts = 0

    def ingest_failing_on_poison(app_: App, raw: bytes, source: str, *args: object, **kwargs: object) -> object:
        nonlocal attempts
        if b"<poison@client.example.org>" in raw:
            attempts += 1
            raise TemporaryFailure("simulated")
        return real_ingest(app_, raw, source, *args, **kwargs)

    monkeypatch.setattr(imap_module, "ingest", ingest_failing_on_poison)
    dovecot.append("INBOX", [mail(message_id="<poison@client.example.org>")])
    poller = ImapPoller(app, dovecot.mailbox(max_failures=2, poll_seconds=60), **FAST)
    with running(poller):
        for i in range(4):  # a burst of rounds, each woken by new mail through IDLE
            dovecot.append("INBOX", [mail(message_id=f"<burst-{i}@client.example.org>")])
            wait_for(lambda i=i: poller.totals["new_ticket"] == i + 1, 10, f"burst mail {i} stored")
    assert attempts == 1
    assert dovecot.uids("INBOX") == [1] and dovecot.uids(dovecot.folder_name("mailgate/failed")) == []


@pytest.mark.parametrize("db_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
def test_while_the_database_is_down_nothing_is_counted_against_the_mail(
    app: App, db_url: str, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """max_failures=1, and the database goes away as the first mail is ingested: the mail must
    wait in the INBOX, not land in the failure folder; once the database is back it is stored."""
    caplog.set_level(logging.DEBUG, logger="mailgate.imap")
    name = make_url(db_url).database
    admin = create_engine(make_url(db_url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    real_ingest = imap_module.ingest
    outage = threading.Event()

    def ingest_during_an_outage(*args: object, **kwargs: object) -> object:
        if not outage.is_set():
            outage.set()
            with admin.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
                conn.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
        return real_ingest(*args, **kwargs)

    monkeypatch.setattr(imap_module, "ingest", ingest_during_an_outage)
    dovecot.append("INBOX", [mail(message_id="<during-outage@client.example.org>")])
    poller = ImapPoller(app, dovecot.mailbox(max_failures=1), **FAST)
    try:
        with running(poller):
            wait_for(lambda: len(imap_records(caplog, logging.DEBUG, "still unavailable")) >= 4, 20, "retries")
            assert dovecot.uids("INBOX") == [1]
            with admin.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
            wait_for(lambda: poller.totals["new_ticket"] == 1, 20, "stored once the database is back")
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()
    assert stored(app, "during-outage@client.example.org")
    assert dovecot.uids(dovecot.folder_name("mailgate/failed")) == []
    assert len(dovecot.uids(dovecot.folder_name("mailgate/done"))) == 1
    assert len(imap_records(caplog, logging.WARNING, "database unavailable")) == 1
    assert len(imap_records(caplog, logging.INFO, "database is back")) == 1


# 6. The lease ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("db_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
def test_on_postgresql_one_poller_works_and_another_takes_over(
    settings, clock: FixedClock, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
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
            dovecot.append("INBOX", [mail() for _ in range(10)])
            wait_for(lambda: sum(first.totals.values()) == 10, 10, "the first ingests")
            assert sum(first.totals.values()) == 10 and not second.totals and second.state == "standby"
            # The first daemon dies: it never lets go, its connection just stays open ...
            monkeypatch.setattr(first.lease, "release", lambda: None)
            first_running.stop()
            assert second.state == "standby"
            # ... until PostgreSQL closes it (as it does when the dead host's connection times out).
            terminate(first.lease)
            wait_for(lambda: second.state == "idle", 10, "the second takes over")
            dovecot.append("INBOX", [mail() for _ in range(10)])
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
            dovecot.append("INBOX", [mail() for _ in range(5)])
            wait_for(lambda: sum(third.totals.values()) == 5, 10, "the third ingests")
        assert [sum(p.totals.values()) for p in (first, second, third)] == [10, 10, 5]
        assert count(first_app, Ticket) == 25
    finally:
        first_app.close()
        second_app.close()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_on_sqlite_the_lease_is_a_lock_file_beside_the_database(app: App, dovecot: Dovecot) -> None:
    dovecot.append("INBOX", [mail()])
    with ImapPoller(app, dovecot.mailbox()) as first, ImapPoller(app, dovecot.mailbox()) as second:
        assert first.poll_once().outcomes == {"new_ticket": 1}
        assert second.poll_once().standby
        first.close()
        dovecot.append("INBOX", [mail()])
        assert second.poll_once().outcomes == {"new_ticket": 1}


# Outages, credentials, stopping -------------------------------------------------------------------------


def test_a_server_outage_is_logged_once_and_mail_from_it_arrives_after(
    app: App, dovecot: Dovecot, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="mailgate.imap")
    poller = ImapPoller(app, dovecot.mailbox(), **FAST)
    with running(poller):
        wait_for(lambda: poller.state == "idle", 10, "the poller idles")
        dovecot.stop()
        wait_for(lambda: len(imap_records(caplog, logging.DEBUG, "still unavailable")) >= 5, 10, "several retries")
        dovecot.start()
        dovecot.append("INBOX", [mail(message_id="<after-outage@client.example.org>")])
        wait_for(lambda: stored(app, "after-outage@client.example.org"), 10, "stored after the outage")
    assert len(imap_records(caplog, logging.WARNING, "IMAP server unavailable")) == 1
    assert len(imap_records(caplog, logging.INFO, "IMAP server is back")) == 1


def test_the_password_file_is_read_at_every_connect(
    app: App, dovecot: Dovecot, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="mailgate.imap")
    secret = tmp_path / "imap-password"
    secret.write_text("wrong\n")
    box = dovecot.mailbox(password="", password_file=secret)
    assert "LoginError" in (check_mailbox(box) or "")
    dovecot.append("INBOX", [mail(message_id="<pw@client.example.org>")])
    poller = ImapPoller(app, box, **FAST)
    with running(poller):
        wait_for(lambda: len(imap_records(caplog, logging.DEBUG, "still unavailable")) >= 2, 10, "retries")
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


def test_stop_during_a_backlog_finishes_the_mail_in_flight(app: App, dovecot: Dovecot) -> None:
    dovecot.append("INBOX", [mail() for _ in range(300)])
    poller = ImapPoller(app, dovecot.mailbox(), **FAST)
    stop = threading.Event()
    thread = threading.Thread(target=poller.run, args=(stop,))
    thread.start()
    wait_for(lambda: count(app, Message) >= 50, 30, "the poller is busy")
    stop.set()
    assert wait_for(lambda: not thread.is_alive(), 3, "run() returns") < 3
    done = len(dovecot.uids(dovecot.folder_name("mailgate/done")))
    # Every stored mail was moved, every mail moved was stored, and the rest is still waiting.
    assert count(app, Message) == done < 300
    assert len(dovecot.uids("INBOX")) == 300 - done


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


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("security", ["tls", "starttls"])
def test_tls_and_starttls_verify_the_certificate(app: App, security: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with running_dovecot(tls=True) as server:
        port = server.tls_port if security == "tls" else server.port
        box = server.mailbox(security=security, port=port)
        assert "CERTIFICATE_VERIFY_FAILED" in (check_mailbox(box) or "")  # not trusted yet
        monkeypatch.setenv("SSL_CERT_FILE", str(server.certificate))  # how a private CA is trusted
        assert check_mailbox(box) is None
        server.append("INBOX", [mail()])
        with ImapPoller(app, box) as poller:
            assert poller.poll_once().outcomes == {"new_ticket": 1}
