"""`mailgate check-config`: try every outside party once and say, per item, OK or what is wrong."""

from __future__ import annotations

import smtplib
from collections.abc import Callable

from sqlalchemy import text

from mailgate.config import ImapMailbox, Settings
from mailgate.db import make_engine, reader, schema_problem
from mailgate.outgoing.sender import SmtpRelay

Check = tuple[str, str | None]  # (what, None when OK else what is wrong)


def _database(settings: Settings) -> str | None:
    engine = make_engine(settings.effective_database_url)
    try:
        with reader(engine).connect() as conn:
            conn.execute(text("SELECT 1"))
            problem = schema_problem(conn)
            if problem is not None:
                return f"reachable, but {problem}"
    except Exception as exc:
        return f"{type(exc).__name__}: {getattr(exc, 'orig', exc)}"
    finally:
        engine.dispose()
    return None


def _relay(settings: Settings) -> str | None:
    out = settings.outgoing
    try:
        # The sender's own way of connecting (TLS, STARTTLS, login), so the check proves it.
        with SmtpRelay(out, timeout=15).connect() as client:
            client.noop()
    except (OSError, smtplib.SMTPException) as exc:
        return f"{out.relay_host}:{out.relay_port}: {type(exc).__name__}: {exc}"
    return None


def _maildir(settings: Settings) -> str | None:
    path = settings.outgoing_maildir
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".mailgate-check"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    return None


def _imap(mailbox: ImapMailbox) -> str | None:
    from mailgate.transports.imap import check_mailbox

    return check_mailbox(mailbox)


def run_checks(settings: Settings) -> list[Check]:
    checks: list[tuple[str, Callable[[], str | None]]] = [("database", lambda: _database(settings))]
    if settings.outgoing.relay_host:
        checks.append(
            (f"relay {settings.outgoing.relay_host}:{settings.outgoing.relay_port}", lambda: _relay(settings))
        )
    else:
        checks.append((f"outgoing Maildir {settings.outgoing_maildir}", lambda: _maildir(settings)))
    for mailbox in settings.imap:
        checks.append(
            (f"imap {mailbox.name} ({mailbox.user}@{mailbox.host}:{mailbox.port})", lambda m=mailbox: _imap(m))
        )
    results = []
    for name, check in checks:
        try:
            results.append((name, check()))
        except Exception as exc:  # a check must report, never crash the report
            results.append((name, f"{type(exc).__name__}: {exc}"))
    return results
