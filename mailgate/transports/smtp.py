"""The SMTP (or LMTP) listener: aiosmtpd writes each mail into the spool directory and answers
250 once it is on stable storage.

A page, not a subsystem: the protocol stays in aiosmtpd. This module decides which recipients
we accept (our addresses and their signed plus addresses: never an open relay), how many
clients may talk at once, and which reply code a spooled or failed mail gets. The daemon's
spool worker ingests the mail (see listener_process.py for why the listener has a process of
its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import ssl
from collections.abc import Callable
from concurrent.futures import Executor
from datetime import UTC, datetime
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from mailgate import spool as spooling
from mailgate import tokens
from mailgate.config import Settings
from mailgate.config import Smtp as SmtpSettings
from mailgate.transports.spool_writes import SpoolWrites

log = logging.getLogger("mailgate.smtp")

QUEUED = "250 2.0.0 Queued"
NO_SUCH_MAILBOX = "550 5.1.1 No such mailbox here"
TEMPORARY = "451 4.3.0 Temporary failure, please try again later"
TOO_BIG = "552 5.3.4 Message too big for this system"
BUSY = "421 4.7.0 Too many connections, try again later"
BACKLOG = "452 4.3.1 Too much mail waiting to be stored, try again later"
BAD_SENDER = "553 5.1.7 Bad sender address syntax"


class Listener:
    """State shared by all connections: settings, the spool, the connection count."""

    def __init__(self, settings: Settings, secret: bytes, spool: spooling.Spool, executor: Executor) -> None:
        self.settings = settings
        self.secret = secret
        self.spool = spool
        # Writes and syncs run on this one thread, off the event loop, several mails at once.
        self.executor = executor
        self.writes = SpoolWrites(spool, executor)
        self.connections = 0
        self.in_flight = 0
        # Mails in the spool, as last counted plus those written since.
        self.spooled = 0
        self._deferring = False

    def accepts(self, address: str) -> bool:
        """One of our addresses, or one with a plus part that is a token we signed."""
        local, _, domain = address.lower().partition("@")
        base, plus, tag = local.partition("+")
        if f"{base}@{domain}" not in self.settings.addresses.all_own():
            return False
        return not plus or tokens.verify(self.secret, tag) is not None

    # aiosmtpd handler hooks ---------------------------------------------------------------

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        # With SMTPUTF8 on, aiosmtpd keeps bytes that are not UTF-8 as lone surrogates, and the
        # address parser lets control characters through: neither is an address anyone can
        # answer or the database can store. Refused at the door, where the client learns it.
        if not address.isprintable():
            log.info("refused sender %r from %s: not a storable address", address, session.peer)
            return BAD_SENDER
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if not self.accepts(address):
            log.info("refused recipient %s from %s", address, session.peer)
            return f"{NO_SUCH_MAILBOX}: {address}"
        if self.spooled >= self.settings.smtp.max_spooled:
            if not self._deferring:
                self._deferring = True
                log.warning(
                    "spool holds %d mails (smtp.max_spooled): answering 452 until ingest catches up", self.spooled
                )
            return BACKLOG
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        assert isinstance(raw, bytes)
        spooled = spooling.Envelope(
            source="lmtp" if isinstance(server, LMTP) else "smtp",
            sender=envelope.mail_from or "",
            recipients=tuple(envelope.rcpt_tos),
            received_at=datetime.now(UTC),
        )
        self.in_flight += 1
        try:
            name = await self.writes.put(raw, spooled)
        except OSError as exc:  # disk full, spool not writable: the client keeps the mail
            log.warning("451 to %s: cannot write the spool: %s", session.peer, exc)
            return self._per_recipient(server, envelope, TEMPORARY)
        finally:
            self.in_flight -= 1
        self.spooled += 1
        # One line per mail comes from ingest(), with its Message-ID and ticket.
        log.debug("spooled %s from %s <%s> for %s", name, session.peer[0], envelope.mail_from, envelope.rcpt_tos)
        return self._per_recipient(server, envelope, f"{QUEUED} as {name}")

    async def watch_backlog(self, every: float = 1.0) -> None:
        """Recount the spool every `every` seconds (the daemon's worker empties it)."""
        loop = asyncio.get_running_loop()
        while True:
            with contextlib.suppress(OSError):  # the spool unreadable: the next put will say so
                self.spooled = await loop.run_in_executor(self.executor, self.spool.count)
                if self._deferring and self.spooled < self.settings.smtp.max_spooled:
                    self._deferring = False
                    log.warning("spool down to %d mails: accepting mail again", self.spooled)
            await asyncio.sleep(every)

    @staticmethod
    def _per_recipient(server: SMTP, envelope: Envelope, reply: str) -> str:
        # LMTP answers DATA once per recipient; the mail is stored once for all of them.
        return "\r\n".join([reply] * len(envelope.rcpt_tos)) if isinstance(server, LMTP) else reply

    def authenticator(self, users: dict[str, str]) -> Callable[..., AuthResult]:
        def check(server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
            if not isinstance(data, LoginPassword):
                return AuthResult(success=False, handled=False)
            try:
                user, password = data.login.decode(), data.password.decode()
            except UnicodeDecodeError:  # not a user of ours; aiosmtpd would log a traceback
                return AuthResult(success=False, handled=False)
            expected = users.get(user)
            ok = expected is not None and hmac.compare_digest(expected.encode(), password.encode())
            return AuthResult(success=ok, handled=False)

        return check


def _protocol_class(lmtp: bool) -> type[SMTP]:
    base: type[SMTP] = LMTP if lmtp else SMTP

    class Protocol(base):  # type: ignore[valid-type, misc]
        """aiosmtpd with our connection limit and RFC 3463 codes on its size refusals."""

        listener: Listener
        max_connections: int

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            if self._original_transport is not None:  # STARTTLS: the same connection, now encrypted
                super().connection_made(transport)
                return
            if self.listener.connections >= self.max_connections:
                transport.write((BUSY + "\r\n").encode())  # type: ignore[attr-defined]
                transport.close()
                self._refused = True
                return
            self._refused = False
            self.listener.connections += 1
            super().connection_made(transport)

        def connection_lost(self, error: Exception | None) -> None:
            if getattr(self, "_refused", True):
                return
            self.listener.connections -= 1
            super().connection_lost(error)

        async def push(self, status: Any) -> None:
            if isinstance(status, str) and status.startswith("552 Error"):
                status = TOO_BIG  # aiosmtpd's own wording carries no enhanced status code
            await super().push(status)

    return Protocol


def tls_context(settings: SmtpSettings) -> ssl.SSLContext | None:
    if not (settings.tls_cert and settings.tls_key):
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


def protocol_factory(listener: Listener, settings: SmtpSettings, max_message_bytes: int) -> Callable[[], SMTP]:
    """A factory for loop.create_server: one protocol object per client connection."""
    cls = _protocol_class(settings.lmtp)
    cls.listener, cls.max_connections = listener, settings.max_connections
    context = tls_context(settings)
    kwargs: dict[str, Any] = {
        "data_size_limit": max_message_bytes,
        "decode_data": False,
        "enable_SMTPUTF8": True,
        "timeout": settings.timeout_seconds,
        "ident": "mailgate ESMTP",
    }
    if context is not None:
        kwargs["tls_context"] = context
    if settings.auth_users:
        kwargs["authenticator"] = listener.authenticator(settings.auth_users)
        kwargs["auth_required"] = settings.require_auth
        kwargs["auth_require_tls"] = context is not None
    return lambda: cls(listener, **kwargs)


async def start(
    listener: Listener, settings: SmtpSettings, max_message_bytes: int, host: str | None = None, port: int | None = None
) -> asyncio.AbstractServer:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        protocol_factory(listener, settings, max_message_bytes),
        host if host is not None else settings.host,
        port if port is not None else settings.port,
    )
    where = ", ".join(str(s.getsockname()) for s in server.sockets)
    log.info("%s listener on %s", "LMTP" if settings.lmtp else "SMTP", where)
    return server
