"""outgoing.relay_password_file: the relay's password from a file, read at every connect, so the
password stays out of the config and a changed one needs no restart (real AUTH over loopback)."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from mailgate.config import Outgoing
from mailgate.outgoing.sender import SmtpRelay
from tests.smtp_peers import CapturingRelay, free_port

MAIL = b"From: support@example.com\r\nTo: dana@example.com\r\nSubject: t\r\n\r\nhello\r\n"


@contextmanager
def relay_with_login(password: list[str]) -> Iterator[tuple[CapturingRelay, int]]:
    """A relay that takes AUTH PLAIN/LOGIN for user `mailgate` with the password password[0]."""

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"mailgate", password[0].encode())
        return AuthResult(success=ok)

    handler, port = CapturingRelay(), free_port()
    controller = Controller(
        handler, hostname="127.0.0.1", port=port, authenticator=authenticate, auth_require_tls=False
    )
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


def test_the_password_comes_from_the_file_at_every_connect(tmp_path: Path) -> None:
    secret = tmp_path / "relay-password"
    secret.write_text("first-password\n")
    current = ["first-password"]
    with relay_with_login(current) as (handler, port):
        settings = Outgoing(relay_host="127.0.0.1", relay_port=port, relay_user="mailgate", relay_password_file=secret)
        relay = SmtpRelay(settings, timeout=10)
        relay.deliver("support@example.com", ["dana@example.com"], MAIL)
        relay.close()
        # The admin rotates the password on the relay and in the file: no restart needed.
        current[0] = "second-password"
        secret.write_text("second-password\n")
        relay.deliver("support@example.com", ["dana@example.com"], MAIL)
        relay.close()
        assert len(handler.received) == 2


def test_an_unreadable_password_file_fails_the_attempt_and_says_which_file(tmp_path: Path) -> None:
    with relay_with_login(["x"]) as (_, port):
        missing = tmp_path / "nope"
        settings = Outgoing(relay_host="127.0.0.1", relay_port=port, relay_user="mailgate", relay_password_file=missing)
        with pytest.raises(smtplib.SMTPException, match=f"relay_password_file {missing}: No such file"):
            SmtpRelay(settings, timeout=10).deliver("support@example.com", ["dana@example.com"], MAIL)
