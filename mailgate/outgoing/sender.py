"""The transports (an SMTP relay, or a local Maildir when none is set) and the daemon's sender,
which delivers queued mail as soon as it is queued and retries what is due.

It sleeps until woken (ingest() queued something) or until the next retry is due, so an
acknowledgement leaves within a second, not at the next minute.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import smtplib
import socket
import ssl
import time
from datetime import datetime
from pathlib import Path

from sqlalchemy import func, select

from mailgate.app import App
from mailgate.config import Outgoing as OutgoingSettings
from mailgate.models import Outbox, OutboxState
from mailgate.outgoing.outbox import FlushReport, PermanentFailure, Transport, deliver_due, release_claims
from mailgate.wakeup import Worker

log = logging.getLogger("mailgate.sender")

__all__ = ["IDLE_SECONDS", "MaildirSink", "PermanentFailure", "Sender", "SmtpRelay", "Transport", "transport_for"]


class MaildirSink:
    """Outgoing mail lands in a Maildir a person can open with any mail client.

    Delivered as maildir(5) says: written into tmp/ and synced, then renamed into new/, whose
    folder is synced too, so a mail the outbox records as sent survives a crash or a power cut.
    A crash mid-write leaves a part in tmp/ (the outbox sends that mail again); parts older than
    the Maildir convention's 36 hours are removed when the sink first delivers.
    """

    STALE_SECONDS = 36 * 3600

    def __init__(self, path: Path) -> None:
        self.path = path
        self._ready = False

    def deliver(self, mail_from: str, recipients: list[str], data: bytes) -> None:
        if not self._ready:
            for folder in ("tmp", "new", "cur"):
                (self.path / folder).mkdir(parents=True, exist_ok=True)
            self._remove_stale_parts()
            self._ready = True
        host = re.sub(r"\W", "_", socket.gethostname())
        name = f"{time.time_ns() // 1000}.{os.getpid()}_{os.urandom(4).hex()}.{host}"
        part = self.path / "tmp" / name
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            try:
                with os.fdopen(fd, "wb", closefd=False) as out:
                    out.write(data)
                os.fsync(fd)  # the contents first, then the name: a mail in new/ is whole
            finally:
                os.close(fd)
            os.rename(part, self.path / "new" / name)
        except BaseException:
            with contextlib.suppress(OSError):
                part.unlink()
            raise
        folder = os.open(self.path / "new", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(folder)  # the rename survives a power cut only once this is done
        finally:
            os.close(folder)

    def _remove_stale_parts(self) -> None:
        """What a crashed writer left in tmp/: never a whole mail (that was renamed into new/)."""
        cutoff = time.time() - self.STALE_SECONDS
        for entry in os.scandir(self.path / "tmp"):
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    log.info("removed %s, left in the outgoing Maildir's tmp/ by a crash", entry.name)

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


class SmtpRelay:
    """Delivers through the configured relay, keeping one connection open while there is mail
    to deliver; the caller closes it when the queue is empty."""

    def __init__(self, settings: OutgoingSettings, timeout: float = 30) -> None:
        self.settings = settings
        self.timeout = timeout
        self._client: smtplib.SMTP | None = None
        self._connecting: smtplib.SMTP | None = None
        self._tls: ssl.SSLContext | None = None

    def tls_context(self) -> ssl.SSLContext:
        # Made once: loading the system's CA certificates costs more than delivering a mail.
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    def connect(self) -> smtplib.SMTP:
        """A logged-in connection to the relay (also used by check-config)."""
        s = self.settings
        client: smtplib.SMTP
        if s.relay_security == "tls":
            client = smtplib.SMTP_SSL(timeout=self.timeout, context=self.tls_context())
        else:
            client = smtplib.SMTP(timeout=self.timeout)
        self._connecting = client  # abort() can cut a relay that accepts and never greets
        try:
            client.connect(s.relay_host, s.relay_port)
            client.ehlo()
            if s.relay_security == "starttls":
                client.starttls(context=self.tls_context())
                client.ehlo()
            if s.relay_user:
                client.login(s.relay_user, relay_password(s))
        except BaseException:
            client.close()
            raise
        finally:
            self._connecting = None
        return client

    def deliver(self, mail_from: str, recipients: list[str], data: bytes) -> None:
        for attempt in (1, 2):
            if self._client is None:
                self._client = self.connect()
            try:
                refused = self._client.sendmail(mail_from, recipients, data)
                break
            except smtplib.SMTPServerDisconnected:
                self.close()  # the relay dropped the idle connection: reconnect once
                if attempt == 2:
                    raise
            except smtplib.SMTPRecipientsRefused as exc:
                self._reset()
                codes = [code for code, _ in exc.recipients.values()]
                if all(code >= 500 for code in codes):
                    raise PermanentFailure(f"all recipients refused: {exc.recipients}") from exc
                raise
            except smtplib.SMTPResponseException as exc:
                self._reset()
                if exc.smtp_code >= 500:
                    raise PermanentFailure(f"{exc.smtp_code} {exc.smtp_error!r}") from exc
                raise
            except OSError:
                self.close()
                raise
        if refused:
            log.warning("relay refused some recipients: %s", refused)

    def _reset(self) -> None:
        try:
            if self._client is not None:
                self._client.rset()
        except (smtplib.SMTPException, OSError):
            self.close()

    def abort(self) -> None:
        # A relay that stopped answering mid-mail holds deliver() for its timeout; shutting the
        # socket down makes the blocked read return at once. The mail was not recorded as sent:
        # it goes out after the next start (at least once, never lost).
        for client in (self._client, self._connecting):
            if client is not None and client.sock is not None:
                with contextlib.suppress(OSError):
                    client.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.quit()
            except (smtplib.SMTPException, OSError):
                client.close()


def relay_password(settings: OutgoingSettings) -> str:
    """relay_password, or the content of relay_password_file read now: a changed password in the
    file needs no restart. An unreadable file fails this attempt like a relay that refuses."""
    if settings.relay_password_file is None:
        return settings.relay_password
    try:
        return settings.relay_password_file.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise smtplib.SMTPException(f"relay_password_file {settings.relay_password_file}: {exc.strerror}") from exc


def transport_for(settings: OutgoingSettings, maildir: Path) -> Transport:
    return SmtpRelay(settings) if settings.relay_host else MaildirSink(maildir)


IDLE_SECONDS = 30.0  # look again at least this often (another daemon may have queued mail)


class Sender:
    """Delivers the outbox on a thread of its own: woken when a transaction queued mail, and at
    least every IDLE_SECONDS."""

    def __init__(
        self, app: App, transport: Transport, claimer: str | None = None, previous_claimer: str | None = None
    ) -> None:
        self.app = app
        self.transport = transport
        self.claimer = claimer  # this run's name on the rows it claims (outbox.release_claims)
        # The run before, killed while delivering: its claims go out at once, not in ten minutes.
        self.previous_claimer = previous_claimer
        self.worker = Worker(
            "mailgate-sender", self._round, IDLE_SECONDS, app.clock.now, app.settings.background_niceness
        )
        # Deliver now: safe from any thread (the ingest worker and IMAP pollers run in their own).
        self.wake_up = self.worker.wake_up

    def stop(self, timeout: float) -> None:
        """Let the round in progress finish within `timeout`; a delivery still hanging on a
        silent relay then has its connection cut, so the round ends at once."""
        self.worker.stop()
        if not self.worker.join(timeout):
            self.transport.abort()
            if not self.worker.join(1.0):
                return  # left behind: its thread does not keep the process from exiting
        self.transport.close()

    def _round(self) -> tuple[bool, datetime | None]:
        try:
            report, next_due = self._deliver()
        except BaseException:
            self.transport.close()
            raise
        busy = bool(report.sent + report.retried + report.dead)
        if not busy:
            self.transport.close()  # nothing more for now: no idle connection for the relay to drop
        return busy, next_due

    def _deliver(self) -> tuple[FlushReport, datetime | None]:
        settings = self.app.settings
        with self.app.sessions() as session:
            if self.previous_claimer is not None:
                back = release_claims(session, self.previous_claimer, self.app.clock.now())
                if back:
                    log.warning("%d outgoing mails a stopped daemon was delivering are due again at once", back)
                self.previous_claimer = None
            report = deliver_due(
                session,
                self.transport,
                self.app.clock.now(),
                settings.outgoing.max_attempts,
                limit=50,
                claimer=self.claimer,
                store=self.app.store,
            )
            next_due = session.scalar(
                select(func.min(Outbox.next_attempt_at)).where(Outbox.state == OutboxState.QUEUED)
            )
        return report, next_due
