"""A private Dovecot IMAP server on 127.0.0.1 for the poller's tests (see ../shared/RECIPES.md).

One server serves a whole test session; each test gets a mailbox of its own (`Dovecot.account()`:
any user name logs in with PASSWORD, and its Maildir is created at the first login), so tests stay
independent without a server each. Everything lives under one scratch folder: config, certificate,
Maildirs, log. Not under pytest's tmp_path: Dovecot's processes (users dovecot and 65534) must
traverse the path, which pytest creates private to root, and Unix socket paths must stay short.
Dovecot runs in the foreground as our child process, so stopping it is a plain terminate().

What the server saw: every session of a user writes its commands to a rawlog in the user's home
(`Account.commands()`). Servers without MOVE, and without MOVE and UIDPLUS, are the same server
reached on 127.0.0.2 and 127.0.0.3 (`LACKS_MOVE`, `LACKS_MOVE_AND_UIDPLUS`): Dovecot announces
fewer capabilities by local address.
"""

from __future__ import annotations

import contextlib
import email
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from imapclient import IMAPClient

from mailgate.config import ImapMailbox
from tests.conftest import server_missing
from tests.smtp_peers import free_port

USER = "support"
PASSWORD = "secret"
MAIL_UID = 65534  # Dovecot refuses system uids for mail; "nobody" is fine
HOST = "127.0.0.1"
LACKS_MOVE = "127.0.0.2"
LACKS_MOVE_AND_UIDPLUS = "127.0.0.3"
# Dovecot's own list, less what the address is meant to lack.
_CAPABILITIES = "IMAP4rev1 LITERAL+ SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT MULTIAPPEND UNSELECT NAMESPACE ESEARCH"

CONFIG = """\
protocols = imap
listen = {host}, {lacks_move}, {lacks_move_and_uidplus}
base_dir = {run}
state_dir = {state}
instance_name = mailgate-test-{port}
log_path = {log}
info_log_path = {log}
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
auth_failure_delay = 0
disable_plaintext_auth = no
auth_mechanisms = plain login
# The user shows in the imap processes' command lines: kill_connections() finds a test's own.
verbose_proctitle = yes
mail_location = maildir:~/Maildir
passdb {{
  driver = static
  args = password={password}
}}
userdb {{
  driver = static
  args = uid={mail_uid} gid={mail_uid} home={mail}/%u
}}
protocol imap {{
  rawlog_dir = %h/rawlog
}}
local {lacks_move} {{
  protocol imap {{
    imap_capability = {capabilities} UIDPLUS
  }}
}}
local {lacks_move_and_uidplus} {{
  protocol imap {{
    imap_capability = {capabilities}
  }}
}}
# No growing delay after failed logins (Dovecot's auth penalty): tests log in wrongly on purpose.
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service imap-login {{
  inet_listener imap {{
    port = {port}
  }}
  inet_listener imaps {{
    port = {tls_port}
  }}
}}
"""

_accounts = itertools.count(1)


class Dovecot:
    """One running Dovecot: IMAP (STARTTLS offered) on `port`, IMAPS on `tls_port`, with a self-signed
    certificate for 127.0.0.1 in `certificate` (clients trust it through SSL_CERT_FILE)."""

    def __init__(self) -> None:
        self.root = root = Path(tempfile.mkdtemp(prefix="dovecot-"))
        root.chmod(0o755)
        self.port = free_port()
        self.tls_port = free_port()
        self.certificate = root / "cert.pem"
        key = root / "key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(self.certificate)],
            check=True, capture_output=True,
        )  # fmt: skip
        self.log = root / "dovecot.log"
        self.mail = root / "mail"
        run_dir, state = root / "run", root / "state"
        for folder in (run_dir, state, self.mail):
            folder.mkdir(mode=0o755)
        os.chown(self.mail, MAIL_UID, MAIL_UID)
        self.conf = root / "dovecot.conf"
        self.conf.write_text(
            CONFIG.format(
                run=run_dir,
                state=state,
                log=self.log,
                mail=self.mail,
                cert=self.certificate,
                key=key,
                port=self.port,
                tls_port=self.tls_port,
                host=HOST,
                lacks_move=LACKS_MOVE,
                lacks_move_and_uidplus=LACKS_MOVE_AND_UIDPLUS,
                password=PASSWORD,
                mail_uid=MAIL_UID,
                capabilities=_CAPABILITIES,
            )
        )
        self.process: subprocess.Popen[bytes] | None = None

    def account(self, user: str | None = None) -> Account:
        """A mailbox of its own on this server (a new user unless `user` is given)."""
        return Account(self, user or f"user{next(_accounts)}")

    def start(self, timeout: float = 10.0) -> None:
        self.process = subprocess.Popen(["dovecot", "-F", "-c", str(self.conf)], stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dovecot exited with {self.process.returncode}: {self._log_tail()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=1) as s:
                    if s.recv(100).startswith(b"* OK"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"dovecot did not answer on port {self.port}: {self._log_tail()}")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _children(self) -> list[tuple[int, str, str]]:
        """(pid, name, command line) of the processes our Dovecot master started."""
        if self.process is None:
            return []
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                pid, rest = stat.read_text().split(" ", 1)
                cmdline = stat.with_name("cmdline").read_bytes().decode(errors="replace")
            except OSError:  # gone meanwhile
                continue
            name, _, fields = rest.rpartition(") ")
            if int(fields.split()[1]) == self.process.pid:
                found.append((int(pid), name.removeprefix("("), cmdline))
        return found

    def sessions(self, user: str | None = None) -> list[int]:
        """The imap processes serving clients (of `user` only, when given)."""
        return [
            pid
            for pid, name, cmdline in self._children()
            if name == "imap" and (user is None or f"[{user} " in cmdline)
        ]

    def _kill(self, pids: list[int], sig: signal.Signals = signal.SIGKILL) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def kill_connections(self, user: str | None = None) -> int:
        """End the imap processes serving clients (of `user` only, when given): those connections
        drop at once, whatever they were doing. (A stopping Dovecot master lets busy ones finish.)
        SIGTERM, not SIGKILL: a killed process leaves its Maildir locks behind, and the next one
        waits for them for minutes."""
        pids = self.sessions(user)
        self._kill(pids, signal.SIGTERM)
        return len(pids)

    def stop(self) -> None:
        """Stop the server; the connections it serves drop at once."""
        if self.process is None:
            return
        self.kill_connections()
        self.process.terminate()  # the master waits about a second for its other processes
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """At the end of the session: kill everything at once (no restart follows), then clean up."""
        if self.process is not None:
            children = [pid for pid, _, _ in self._children()]
            self._kill(children)
            self.process.kill()
            self.process.wait()
            self.process = None
            deadline = time.monotonic() + 10
            while any(Path(f"/proc/{pid}").exists() for pid in children) and time.monotonic() < deadline:
                time.sleep(0.01)
        shutil.rmtree(self.root, ignore_errors=True)

    def _log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else "(no log)"


class Account:
    """One user's mailbox on a Dovecot, and what a person or an MTA would do to it: a second,
    independent client."""

    def __init__(self, server: Dovecot, user: str) -> None:
        self.server, self.user = server, user
        home = server.mail / user
        self.rawlog = home / "rawlog"
        for folder in (home, self.rawlog):  # the rawlog folder must be there before the first login
            folder.mkdir(mode=0o700, exist_ok=True)
            os.chown(folder, MAIL_UID, MAIL_UID)

    @property
    def port(self) -> int:
        return self.server.port

    @contextmanager
    def client(self) -> Iterator[IMAPClient]:
        client = IMAPClient(HOST, port=self.server.port, ssl=False, timeout=30)
        client.login(self.user, PASSWORD)
        try:
            yield client
        finally:
            client.logout()

    def append(self, folder: str, mails: Iterable[bytes], flags: Sequence[bytes] = ()) -> None:
        """APPEND mails in order (MULTIAPPEND, 100 per command, where the server has it)."""
        batch = list(mails)
        with self.client() as client:
            if not client.folder_exists(folder):
                client.create_folder(folder)
            if client.has_capability("MULTIAPPEND"):
                for start in range(0, len(batch), 100):
                    chunk = batch[start : start + 100]
                    client.multiappend(folder, [{"msg": m, "flags": flags} for m in chunk])
            else:
                for m in batch:
                    client.append(folder, m, flags=flags)

    def uids(self, folder: str, criteria: str | list[str] = "ALL") -> list[int]:
        with self.client() as client:
            if not client.folder_exists(folder):
                return []
            client.select_folder(folder, readonly=True)
            return sorted(client.search(criteria))

    def message_ids(self, folder: str, criteria: str | list[str] = "ALL") -> list[str]:
        """The Message-ID of every mail in `folder` matching `criteria` (one entry per copy)."""
        with self.client() as client:
            client.select_folder(folder, readonly=True)
            fetched = client.fetch(client.search(criteria), ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
        return [
            email.message_from_bytes(data[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"])["Message-ID"]
            for data in fetched.values()
        ]

    def folder_name(self, name: str) -> str:
        """`name` written with '/' as mailgate's config does, in this server's own delimiter."""
        with self.client() as client:
            delimiter = client.list_folders("", "")[0][1] or b"/"
        return name.replace("/", delimiter.decode())

    def mailbox(self, **overrides: object) -> ImapMailbox:
        values: dict[str, object] = {
            "name": "support",
            "host": HOST,
            "port": self.server.port,
            "security": "none",
            "user": self.user,
            "password": PASSWORD,
            "poll_seconds": 30,
        }
        values.update(overrides)
        return ImapMailbox(**values)

    def kill_connections(self) -> int:
        return self.server.kill_connections(self.user)

    def commands(self, timeout: float = 10.0) -> list[str]:
        """Every command this user's sessions sent the server, as the server read them (tag and
        arguments, e.g. 'UID MOVE 1:3 "mailgate/done"' without the tag), once every session of the
        user has ended: a session still open may not have written all of its log yet."""
        deadline = time.monotonic() + timeout
        while self.server.sessions(self.user):
            if time.monotonic() > deadline:
                raise AssertionError(f"sessions of {self.user} still open after {timeout}s")
            time.sleep(0.01)
        lines = []
        for log in sorted(self.rawlog.glob("*.in")):
            for line in log.read_text(errors="replace").splitlines():
                _timestamp, _, rest = line.partition(" ")
                _tag, _, command = rest.partition(" ")
                lines.append(command)
        return lines


@contextmanager
def running_server() -> Iterator[Dovecot]:
    """A Dovecot of its own, stopped at the end."""
    if shutil.which("dovecot") is None:
        server_missing("dovecot is not installed (apt-get install dovecot-imapd)")
    if shutil.which("openssl") is None:
        server_missing("openssl is not installed (it makes the test certificate)")
    if os.geteuid() != 0:
        server_missing("the test Dovecot needs root (it switches to the mail user 65534)")
    server = Dovecot()
    try:
        server.start()
        yield server
    finally:
        server.close()


@contextmanager
def running_dovecot() -> Iterator[Account]:
    """The mailbox of the user `support` on a Dovecot of its own."""
    with running_server() as server:
        yield server.account(USER)
