"""The SMTP (or LMTP) listener: aiosmtpd writes each mail into the spool directory and answers
250 once it is on stable storage.

A page, not a subsystem: the protocol stays in aiosmtpd. This module decides which recipients
we accept (our addresses and their signed plus addresses: never an open relay), how many
clients may talk at once (in all and from one address), how many passwords one connection may
try, and which reply code a spooled or failed mail gets. Refusals are logged once per client
and minute (refusal_log.py); the mail after DATA is read by smtp_data.py. The daemon's
spool worker ingests the mail (see listener_process.py for why the listener has a process of
its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import ssl
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from mailgate import spool as spooling
from mailgate import tokens
from mailgate.clock import Clock, SystemClock
from mailgate.config import Settings
from mailgate.config import Smtp as SmtpSettings
from mailgate.journal import Journal
from mailgate.transports.connection_slots import ConnectionSlots
from mailgate.transports.refusal_log import RefusalLog
from mailgate.transports.smtp_data import Refused, read_data

log = logging.getLogger("mailgate.smtp")

QUEUED = "250 2.0.0 Queued"
NO_SUCH_MAILBOX = "550 5.1.1 No such mailbox here"
TEMPORARY = "451 4.3.0 Temporary failure, please try again later"
BACKLOG = "452 4.3.1 Too much mail waiting to be stored, try again later"
BAD_SENDER = "553 5.1.7 Bad sender address syntax"
AUTH_FAILED_TOO_OFTEN = "421 4.7.0 Too many failed authentications, closing the connection"

# Password guesses per connection; then the client must connect again (and is logged each time).
AUTH_FAILURES_PER_CONNECTION = 3


class Listener:
    """State shared by all connections: settings, the spool, the connection slots, the log of
    refusals."""

    def __init__(
        self,
        settings: Settings,
        secret: bytes,
        journal: Journal,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.secret = secret
        self.spool = journal.spool
        # Writes and syncs run off the event loop, on the journal's thread.
        self.journal = journal
        self.slots = ConnectionSlots(settings.smtp.max_connections, settings.smtp.max_connections_per_client)
        self.refusals = RefusalLog(log, clock or SystemClock())
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
            self.refusals.refused(_client(session), "unstorable senders", f"refused sender {address!r}")
            return BAD_SENDER
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if not self.accepts(address):
            self.refusals.refused(_client(session), "refused recipients", f"refused recipient {address!r}")
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
            name = await asyncio.wrap_future(self.journal.submit(raw, spooled))
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
        while True:
            with contextlib.suppress(OSError):  # the spool unreadable: the next put will say so
                self.spooled = await asyncio.to_thread(self.spool.count)
                if self._deferring and self.spooled < self.settings.smtp.max_spooled:
                    self._deferring = False
                    log.warning("spool down to %d mails: accepting mail again", self.spooled)
            await asyncio.sleep(every)

    async def report_refusals(self, every: float = 5.0) -> None:
        """Log the counts of refusals repeated within a minute once the minute is over."""
        while True:
            await asyncio.sleep(every)
            self.refusals.report_due()

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
                return self._auth_failed(session, mechanism, repr(data.login))
            expected = users.get(user)
            if expected is not None and hmac.compare_digest(expected.encode(), password.encode()):
                return AuthResult(success=True, handled=False)
            return self._auth_failed(session, mechanism, repr(user))

        return check

    def _auth_failed(self, session: Session, mechanism: str, user: str) -> AuthResult:
        failures = getattr(session, "auth_failures", 0) + 1
        session.auth_failures = failures  # type: ignore[attr-defined]
        client = _client(session)
        self.refusals.refused(client, "failed authentications", f"failed AUTH {mechanism} as {user}", logging.WARNING)
        if failures >= AUTH_FAILURES_PER_CONNECTION:
            return AuthResult(success=False, handled=False, message=AUTH_FAILED_TOO_OFTEN)
        return AuthResult(success=False, handled=False)


def _client(session: Session) -> str:
    """The client's address, as limits and logs know it."""
    return str(session.peer[0]) if session.peer else "unknown"


def _protocol_class(lmtp: bool) -> type[SMTP]:
    base: type[SMTP] = LMTP if lmtp else SMTP

    class Protocol(base):  # type: ignore[valid-type, misc]
        """aiosmtpd with our connection limits, our DATA reading, a disconnect after too many
        failed AUTH attempts, and RFC 3463 codes on its size refusals."""

        listener: Listener
        _client_address: str | None = None  # set while the connection holds a slot

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            if self._original_transport is not None:  # STARTTLS: the same connection, now encrypted
                super().connection_made(transport)
                return
            peer = transport.get_extra_info("peername")
            client = str(peer[0]) if peer else "unknown"
            refusal = self.listener.slots.take(client)
            if refusal is not None:
                detail = f"refused connection ({refusal.removeprefix('421 4.7.0 ')})"
                self.listener.refusals.refused(client, "connections over the limit", detail)
                transport.write((refusal + "\r\n").encode())  # type: ignore[attr-defined]
                transport.close()
                return
            self._client_address = client
            super().connection_made(transport)

        def connection_lost(self, error: Exception | None) -> None:
            if self._client_address is None:  # refused in connection_made: aiosmtpd never knew it
                return
            self.listener.slots.give_back(self._client_address)
            self._client_address = None
            super().connection_lost(error)

        async def push(self, status: Any) -> None:
            if isinstance(status, str) and status.startswith("552 Error"):
                status = Refused.TOO_BIG.value  # aiosmtpd's own wording carries no enhanced status code
            await super().push(status)

        async def smtp_AUTH(self, arg: str) -> None:
            await super().smtp_AUTH(arg)
            if getattr(self.session, "auth_failures", 0) >= AUTH_FAILURES_PER_CONNECTION and self.transport:
                self.transport.close()

        async def smtp_DATA(self, arg: str) -> None:
            """aiosmtpd's DATA command (its checks, its replies) reading the mail with read_data
            (see smtp_data.py for why)."""
            if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
                return
            assert self.envelope is not None and self.session is not None
            if not self.envelope.rcpt_tos:
                await self.push("503 Error: need RCPT command")
                return
            if arg:
                await self.push("501 Syntax: DATA")
                return
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            content = await read_data(self._reader, self.data_size_limit, self.line_length_limit)
            if isinstance(content, Refused):
                status = content.value
            else:
                self.envelope.content = self.envelope.original_content = content
                status = await self.event_handler.handle_DATA(self, self.session, self.envelope)
            self.envelope = self._create_envelope()  # ready for the next mail
            await self.push(status)

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
    cls.listener = listener
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
        # Never a password in the clear, unless the configuration says the listener is on loopback.
        kwargs["auth_require_tls"] = not settings.auth_without_tls

    def make() -> SMTP:
        with warnings.catch_warnings():
            # aiosmtpd warns at each connection that AUTH without TLS is risky: here it was chosen.
            warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")
            return cls(listener, **kwargs)

    return make


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
