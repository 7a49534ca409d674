"""Connecting to an IMAP mailbox: TLS or STARTTLS, password, password file or XOAUTH2 token;
and the two places where the poller looks into imaplib's buffers.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import subprocess
from collections.abc import Callable

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError
from imapclient.imapclient import SocketTimeout

from mailgate.config import ImapMailbox

log = logging.getLogger("mailgate.imap")

CONNECT_TIMEOUT = 10.0  # also for the greeting; nothing is in flight then, so stop may wait for it
READ_TIMEOUT = 120.0  # per read: a slow link may take long for a batch, but must not go silent
TOKEN_COMMAND_TIMEOUT = 60.0


class LoginFailed(Exception):
    """No credentials could be obtained (password file unreadable, token command failed)."""


def connect(box: ImapMailbox, on_open: Callable[[IMAPClient], None] | None = None) -> tuple[IMAPClient, str | None]:
    """A logged-in client for `box` and the server's hierarchy delimiter (None: a flat namespace).

    `on_open` gets the client as soon as the server greeted, before the login."""
    context = ssl.create_default_context() if box.security != "none" else None
    client = IMAPClient(
        box.host,
        port=box.port,
        ssl=box.security == "tls",
        ssl_context=context,
        timeout=SocketTimeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT),
    )
    if on_open is not None:
        on_open(client)
    try:
        if box.security == "starttls":
            client.starttls(context)
        if box.oauth2_command:
            client.oauth2_login(box.user, oauth2_token(box.oauth2_command))
        else:
            client.login(box.user, password(box))
        folders = client.list_folders("", "")
    except BaseException:
        with contextlib.suppress(Exception):
            client.shutdown()
        raise
    delimiter = text(folders[0][1]) if folders and folders[0][1] else None
    log.debug("imap mailbox=%s: connected to %s:%d", box.name, box.host, box.port)
    return client, delimiter


def check_mailbox(box: ImapMailbox) -> str | None:
    """For `mailgate check-config`: log in and open the folder; None when OK, else what is wrong."""
    try:
        client, delimiter = connect(box)
    except (IMAPClientError, OSError, LoginFailed) as exc:
        return reason(exc)
    try:
        client.select_folder(folder_name(box.folder, delimiter), readonly=True)
        return None
    except (IMAPClientError, OSError) as exc:
        return reason(exc)
    finally:
        with contextlib.suppress(Exception):
            client.logout()


def password(box: ImapMailbox) -> str:
    if box.password_file is None:
        return box.password
    try:  # read at every connect: a changed password needs no restart
        return box.password_file.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise LoginFailed(f"password_file {box.password_file}: {exc.strerror}") from exc


def oauth2_token(command: str) -> str:
    """Run the configured command; its output is the XOAUTH2 access token (never logged)."""
    try:
        done = subprocess.run(
            ["/bin/sh", "-c", command], capture_output=True, text=True, timeout=TOKEN_COMMAND_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise LoginFailed(f"oauth2_command did not finish within {TOKEN_COMMAND_TIMEOUT:.0f}s") from exc
    token = done.stdout.strip()
    if done.returncode != 0 or not token:
        why = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise LoginFailed(f"oauth2_command exited with {done.returncode}: {why}")
    return token


def folder_name(name: str, delimiter: str | None) -> str:
    """A configured folder name ('/' between levels) in the server's own delimiter."""
    return name.replace("/", delimiter) if delimiter else name


def reason(exc: BaseException) -> str:
    """One line about a failure; imaplib's messages often come as bytes."""
    if type(exc).__module__.startswith("mailgate."):  # ours are written for people already
        return str(exc)
    detail = exc.args[0] if len(exc.args) == 1 else str(exc)
    return f"{type(exc).__name__}: {text(detail) if isinstance(detail, bytes | str) else detail}"


def text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def new_mail_reported(client: IMAPClient) -> bool:
    """Did the server announce new mail (EXISTS) after this round's SELECT?

    Such an announcement rides on the answer to some command of the round and is not repeated
    when IDLE starts; without this look, that mail would wait for the next `poll_seconds`.
    imaplib keeps untagged responses since the last SELECT (which answered with one EXISTS).
    """
    responses = getattr(getattr(client, "_imap", None), "untagged_responses", None) or {}
    return len(responses.get("EXISTS", ())) > 1


def input_already_buffered(client: IMAPClient) -> bool:
    """Whether the server sent more right behind its "+ idling" (imaplib read it into its buffer).

    Waiting on the socket would not see those bytes; treat them as "something happened".
    """
    reader = getattr(getattr(client, "_imap", None), "file", None)
    if reader is None or not hasattr(reader, "peek"):
        return False
    sock = client.socket()
    sock.setblocking(False)
    try:
        return bool(reader.peek(1))
    except OSError:  # nothing there (EAGAIN, SSL want-read)
        return False
    finally:
        sock.settimeout(READ_TIMEOUT)
