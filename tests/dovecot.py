"""A private Dovecot IMAP server on 127.0.0.1 for the poller's tests (see ../shared/RECIPES.md).

Everything lives under one scratch folder of its own: config, a passwd-file user, the Maildir, the
log. Not under pytest's tmp_path: Dovecot's processes (users dovecot and 65534) must traverse the
path, which pytest creates private to root, and Unix socket paths must stay short. Dovecot runs in
the foreground as our child process, so stopping it is a plain terminate().
"""

from __future__ import annotations

import contextlib
import email
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

CONFIG = """\
protocols = imap
listen = 127.0.0.1
base_dir = {run}
state_dir = {state}
instance_name = mailgate-test-{port}
log_path = {log}
info_log_path = {log}
{ssl}
auth_failure_delay = 0
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:{mail}/%u/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {users}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {users}
}}
# No growing delay after failed logins (Dovecot's auth penalty): tests log in wrongly on purpose.
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {tls_port}
  }}
}}
"""


class Dovecot:
    """One running Dovecot with the user `support`/`secret`; `client()` logs in."""

    def __init__(self, tls: bool = False) -> None:
        self.root = root = Path(tempfile.mkdtemp(prefix="dovecot-"))
        root.chmod(0o755)
        self.port = free_port()
        # With tls: IMAPS on tls_port and STARTTLS on port, with a self-signed certificate for
        # 127.0.0.1 in `certificate` (clients trust it through SSL_CERT_FILE).
        self.tls_port = free_port() if tls else 0
        self.certificate = root / "cert.pem"
        ssl = "ssl = no"
        if tls:
            key = root / "key.pem"
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                 "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(self.certificate)],
                check=True, capture_output=True,
            )  # fmt: skip
            ssl = f"ssl = yes\nssl_cert = <{self.certificate}\nssl_key = <{key}"
        self.run_dir = root / "run"
        self.log = root / "dovecot.log"
        self.conf = root / "dovecot.conf"
        mail = root / "mail"
        for folder in (self.run_dir, root / "state"):
            folder.mkdir(mode=0o755)
        (mail / USER).mkdir(parents=True, exist_ok=True)
        users = root / "users"
        users.write_text(f"{USER}:{{PLAIN}}{PASSWORD}:{MAIL_UID}:{MAIL_UID}::{mail / USER}\n")
        for path in (mail, mail / USER):
            os.chown(path, MAIL_UID, MAIL_UID)
        self.conf.write_text(
            CONFIG.format(
                run=self.run_dir,
                state=root / "state",
                log=self.log,
                mail=mail,
                users=users,
                port=self.port,
                tls_port=self.tls_port,
                ssl=ssl,
            )
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        self.process = subprocess.Popen(["dovecot", "-F", "-c", str(self.conf)], stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dovecot exited with {self.process.returncode}: {self._log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(100).startswith(b"* OK"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"dovecot did not answer on port {self.port}: {self._log_tail()}")

    def _children(self) -> list[tuple[int, str]]:
        """(pid, name) of the processes our Dovecot master started."""
        if self.process is None:
            return []
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                pid, rest = stat.read_text().split(" ", 1)
            except OSError:  # gone meanwhile
                continue
            name, _, fields = rest.rpartition(") ")
            if int(fields.split()[1]) == self.process.pid:
                found.append((int(pid), name.removeprefix("(")))
        return found

    def _kill(self, pids: list[int], sig: signal.Signals = signal.SIGKILL) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def kill_connections(self) -> int:
        """End the imap processes serving clients: every connection drops at once, whatever it was
        doing. (A stopping Dovecot master lets busy ones finish.) SIGTERM, not SIGKILL: a killed
        process leaves its Maildir locks behind, and the next one waits for them for minutes."""
        pids = [pid for pid, name in self._children() if name == "imap"]
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
        """At the end of a test: kill everything at once (no restart follows), then clean up."""
        if self.process is not None:
            children = [pid for pid, _ in self._children()]
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

    # A second, independent client: what a person or an MTA would do to the mailbox. -------------

    @contextmanager
    def client(self) -> Iterator[IMAPClient]:
        client = IMAPClient("127.0.0.1", port=self.port, ssl=False, timeout=30)
        client.login(USER, PASSWORD)
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

    def message_ids(self, folder: str) -> list[str]:
        """The Message-ID of every mail in `folder` (one entry per copy)."""
        with self.client() as client:
            client.select_folder(folder, readonly=True)
            fetched = client.fetch(client.search("ALL"), ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
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
            "host": "127.0.0.1",
            "port": self.port,
            "security": "none",
            "user": USER,
            "password": PASSWORD,
            "poll_seconds": 30,
        }
        values.update(overrides)
        return ImapMailbox(**values)


@contextmanager
def running_dovecot(tls: bool = False) -> Iterator[Dovecot]:
    if shutil.which("dovecot") is None:
        server_missing("dovecot is not installed (apt-get install dovecot-imapd)")
    if tls and shutil.which("openssl") is None:
        server_missing("openssl is not installed (it makes the test certificate)")
    if os.geteuid() != 0:
        server_missing("the test Dovecot needs root (it switches to the mail user 65534)")
    server = Dovecot(tls)
    try:
        server.start()
        yield server
    finally:
        server.close()
