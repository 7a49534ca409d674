"""The SMTP listener end to end, with real clients (smtplib, swaks) and a real relay on 127.0.0.1."""

from __future__ import annotations

import base64
import email
import mailbox
import shutil
import smtplib
import subprocess
from concurrent.futures import ThreadPoolExecutor
from email.policy import default
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from mailgate import tokens
from mailgate.app import App
from mailgate.journal import journal_dir
from mailgate.models import Message, Outbox, OutboxState, Ticket
from tests.conftest import make_settings
from tests.daemon_harness import count_rows, running_daemon, wait_for
from tests.mails import mail
from tests.smtp_peers import relay


def _app(tmp_path: Path, db_url: str, clock, **overrides: object) -> App:
    smtp = {"host": "127.0.0.1", "port": 0, **overrides.pop("smtp", {})}  # port 0: the OS picks a free one
    return App.build(make_settings(tmp_path, db_url, smtp=smtp, **overrides), clock=clock)


@pytest.fixture
def daemon_app(tmp_path: Path, db_url: str, clock):
    app = _app(tmp_path, db_url, clock)
    yield app
    app.close()


def _send(port: int, raw: bytes, to: list[str] | None = None, sender: str = "dana@example.com") -> dict:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        return client.sendmail(sender, to or ["support@example.com"], raw)


def test_smtplib_mail_becomes_a_ticket_and_the_ack_lands_in_the_maildir(daemon_app: App) -> None:
    with running_daemon(daemon_app) as running:
        with smtplib.SMTP("127.0.0.1", running.smtp_port, timeout=30) as client:
            code, _ = client.ehlo()
            assert code == 250 and client.has_extn("size")
            client.sendmail("dana@example.com", ["support@example.com"], mail(body="Printer jams.\n"))
        wait_for(lambda: count_rows(daemon_app, Ticket) == 1, timeout=30)
        sink = daemon_app.settings.outgoing_maildir
        wait_for(lambda: (sink / "new").is_dir() and len(list((sink / "new").iterdir())) == 2, timeout=30)
    subjects = sorted(str(m["Subject"]) for m in mailbox.Maildir(sink, create=False))
    assert subjects[1] == "[HD #1] Printer on 3rd floor jams"


def test_swaks_mail_is_acknowledged_through_the_relay(tmp_path: Path, db_url: str, clock) -> None:
    if shutil.which("swaks") is None:
        from tests.conftest import server_missing

        server_missing("swaks is not installed (apt-get install swaks)")
    with relay() as (captured, relay_port):
        app = _app(tmp_path, db_url, clock, outgoing={"relay_host": "127.0.0.1", "relay_port": relay_port})
        with running_daemon(app) as running:
            result = subprocess.run(
                [
                    "swaks",
                    "--server",
                    f"127.0.0.1:{running.smtp_port}",
                    "--to",
                    "support@example.com",
                    "--from",
                    "erin@example.com",
                    "--header",
                    "Subject: VPN drops every hour",
                    "--body",
                    "Since Monday the VPN drops every hour.",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == 0, result.stdout + result.stderr
            assert "<-  250 2.0.0 Queued as 1" in result.stdout
            wait_for(lambda: len(captured.received) == 2, timeout=30)
        app.close()
    ack = next(e for e in captured.received if e.rcpt_tos == ["erin@example.com"])
    parsed = email.message_from_bytes(ack.content, policy=default)
    assert parsed["Subject"] == "[HD #1] VPN drops every hour" and parsed["Auto-Submitted"] == "auto-replied"


def test_unknown_recipients_are_refused_never_relayed(daemon_app: App) -> None:
    with running_daemon(daemon_app) as running, smtplib.SMTP("127.0.0.1", running.smtp_port) as client:
        client.ehlo()
        client.mail("dana@example.com")
        code, message = client.rcpt("someone@elsewhere.example")
        assert (code, message[:5]) == (550, b"5.1.1")
        code, _ = client.rcpt("support+1-1-aaaaaaaaaaaaaaaa@example.com")  # a token we never signed
        assert code == 550
        good = tokens.plus_address("support@example.com", tokens.make_token(daemon_app.secret, 1, 1))
        assert client.rcpt(good)[0] == 250
        assert client.rcpt("Dispatch@Example.com")[0] == 250


def test_a_sender_address_that_cannot_be_stored_is_refused_and_the_session_goes_on(daemon_app: App) -> None:
    with running_daemon(daemon_app) as running, smtplib.SMTP("127.0.0.1", running.smtp_port) as client:
        client.ehlo()
        for sender in (b"<\xff\xfeab@example.com>", b"<a\x00b@example.com>", b"<a\x1bb@example.com>"):
            client.send(b"MAIL FROM:" + sender + b" SMTPUTF8\r\n")
            code, message = client.getreply()
            assert (code, message[:5]) == (553, b"5.1.7"), sender
        raw = mail(message_id="<after-bad-sender@example.org>")
        assert client.sendmail("dana@example.com", ["support@example.com"], raw) == {}
        wait_for(lambda: count_rows(daemon_app, Message) == 1)


def test_mail_over_the_size_limit_is_refused_with_552(tmp_path: Path, db_url: str, clock) -> None:
    app = _app(tmp_path, db_url, clock, limits={"max_message_bytes": 20_000})
    with running_daemon(app) as running:
        with smtplib.SMTP("127.0.0.1", running.smtp_port) as client:
            client.ehlo()
            assert client.esmtp_features["size"] == "20000"
            code, message = client.mail("dana@example.com", ["SIZE=50000"])
            assert (code, message[:5]) == (552, b"5.3.4")
        with smtplib.SMTP("127.0.0.1", running.smtp_port) as client:  # a client that ignores SIZE
            client.ehlo()
            client.mail("dana@example.com")
            client.rcpt("support@example.com")
            code, message = client.data(mail(body="x" * 30_000))
            assert (code, message[:5]) == (552, b"5.3.4")
    assert count_rows(app, Message) == 0
    app.close()


def test_too_many_connections_get_421(tmp_path: Path, db_url: str, clock) -> None:
    app = _app(tmp_path, db_url, clock, smtp={"host": "127.0.0.1", "port": 0, "max_connections": 2})
    with running_daemon(app) as running:
        first, second = smtplib.SMTP("127.0.0.1", running.smtp_port), smtplib.SMTP("127.0.0.1", running.smtp_port)
        with pytest.raises(smtplib.SMTPConnectError) as info:
            smtplib.SMTP("127.0.0.1", running.smtp_port)
        assert info.value.smtp_code == 421
        first.quit()
        with smtplib.SMTP("127.0.0.1", running.smtp_port) as third:  # a slot is free again
            assert third.noop()[0] == 250
        second.quit()
    app.close()


def test_lmtp_answers_once_per_recipient_and_stores_once(tmp_path: Path, db_url: str, clock) -> None:
    app = _app(tmp_path, db_url, clock, smtp={"host": "127.0.0.1", "port": 0, "lmtp": True})
    with running_daemon(app) as running, smtplib.LMTP("127.0.0.1", running.smtp_port) as client:
        client.ehlo()  # LHLO
        client.mail("dana@example.com")
        assert client.rcpt("support@example.com")[0] == 250
        assert client.rcpt("dispatch@example.com")[0] == 250
        # smtplib reads one DATA reply; LMTP sends one per recipient (RFC 2033 4.2).
        first, second = client.data(mail()), client.getreply()
        assert first[0] == second[0] == 250
        wait_for(lambda: count_rows(app, Message) == 1, timeout=30)
    assert count_rows(app, Message) == 1
    app.close()


def test_mail_is_accepted_while_postgresql_refuses_connections_and_stored_once_it_is_back(
    pg_migrated: str, tmp_path: Path, clock
) -> None:
    """The spool is a directory: a database outage does not stop the listener saying 250."""
    from tests.conftest import _empty_pg

    _empty_pg(pg_migrated)
    name = make_url(pg_migrated).database
    admin = create_engine(make_url(pg_migrated).set(database="postgres"), isolation_level="AUTOCOMMIT")
    app = _app(tmp_path, pg_migrated, clock)
    mails = [mail(subject=f"outage {i}", sender=f"user{i}@example.com") for i in range(20)]
    try:
        with running_daemon(app) as running:
            with admin.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
                conn.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
            with ThreadPoolExecutor(max_workers=4) as pool:
                refused = list(pool.map(lambda raw: _send(running.smtp_port, raw), mails))
            assert refused == [{}] * 20  # every mail got its 250 while the database was away
            with admin.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
            # The spool file goes once its ticket is committed: wait for both, in that order.
            wait_for(lambda: count_rows(app, Ticket) == 20, timeout=60)
            wait_for(lambda: running.spool.count() == 0)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()
    assert count_rows(app, Message) == 20 and count_rows(app, Ticket) == 20
    app.close()


def test_a_full_disk_gives_451_and_the_client_keeps_the_mail(tmp_path: Path, db_url: str, clock) -> None:
    app = _app(tmp_path, db_url, clock)
    with running_daemon(app) as running:
        # As good as a full disk: the listener cannot write its journal (whoever runs the test).
        folder = journal_dir(running.spool)
        folder.rename(tmp_path / "journal-away")
        folder.write_text("not a directory")
        try:
            with pytest.raises(smtplib.SMTPDataError) as info:
                _send(running.smtp_port, mail())
            assert (info.value.smtp_code, info.value.smtp_error[:5]) == (451, b"4.3.0")
        finally:
            folder.unlink()
            (tmp_path / "journal-away").rename(folder)
        assert _send(running.smtp_port, mail()) == {}  # the sending MTA's retry
        wait_for(lambda: count_rows(app, Ticket) == 1, timeout=30)
    app.close()


def test_concurrent_clients_all_get_stored(daemon_app: App) -> None:
    mails = [mail(subject=f"problem {i}", sender=f"user{i}@example.com") for i in range(40)]
    with running_daemon(daemon_app) as running, ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda raw: _send(running.smtp_port, raw), mails))
        wait_for(lambda: _count_sent(daemon_app) == 80, timeout=60)  # no latency claimed: a loaded CI
    assert results == [{}] * 40
    assert count_rows(daemon_app, Ticket) == 40


def _count_sent(app: App) -> int:
    with app.read_sessions() as s:  # a reader: never waits for the daemon's writes
        return s.scalar(select(func.count()).select_from(Outbox).where(Outbox.state == OutboxState.SENT))


def _certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_starttls_sessions_free_their_connection_slot(tmp_path: Path, db_url: str, clock) -> None:
    # STARTTLS makes aiosmtpd announce the same connection a second time; it must count once.
    cert, key = _certificate(tmp_path)
    app = _app(tmp_path, db_url, clock, smtp={"tls_cert": str(cert), "tls_key": str(key), "max_connections": 2})
    context = __import__("ssl").create_default_context(cafile=str(cert))
    with running_daemon(app) as running:
        for n in range(5):
            with smtplib.SMTP("127.0.0.1", running.smtp_port) as client:
                client.starttls(context=context)
                client.sendmail("dana@example.com", ["support@example.com"], mail(message_id=f"<tls{n}@example.org>"))
        with smtplib.SMTP("127.0.0.1", running.smtp_port) as client:
            assert client.noop()[0] == 250  # greeted, not 421
        wait_for(lambda: count_rows(app, Message) == 5)
    app.close()


def test_starttls_and_auth_for_submission(tmp_path: Path, db_url: str, clock) -> None:
    cert, key = _certificate(tmp_path)
    smtp = {
        "tls_cert": str(cert),
        "tls_key": str(key),
        "auth_users": {"scanner": "scan-password-123"},
        "require_auth": True,
    }
    app = _app(tmp_path, db_url, clock, smtp=smtp)
    context = __import__("ssl").create_default_context(cafile=str(cert))
    with running_daemon(app) as running:
        with smtplib.SMTP("127.0.0.1", running.smtp_port) as client:
            client.ehlo()
            assert client.has_extn("starttls") and not client.has_extn("auth")  # no AUTH in the clear
            client.mail("scanner@example.com")
            assert client.rcpt("support@example.com")[0] == 530  # authentication required
        with smtplib.SMTP("127.0.0.1", running.smtp_port) as client:
            client.starttls(context=context)
            with pytest.raises(smtplib.SMTPAuthenticationError):
                client.login("scanner", "wrong")
        with smtplib.SMTP("127.0.0.1", running.smtp_port) as client:  # a few failures end a connection
            client.starttls(context=context)
            client.ehlo()
            credentials = base64.b64encode(b"\0\xff\xfescanner\0\xc3(").decode()  # not UTF-8
            assert client.docmd("AUTH", f"PLAIN {credentials}")[0] == 535  # refused, no 500
        with smtplib.SMTP("127.0.0.1", running.smtp_port) as client:
            client.starttls(context=context)
            client.login("scanner", "scan-password-123")
            assert (
                client.sendmail("scanner@example.com", ["support@example.com"], mail(sender="scanner@example.com"))
                == {}
            )
        wait_for(lambda: count_rows(app, Ticket) == 1, timeout=30)
    app.close()
