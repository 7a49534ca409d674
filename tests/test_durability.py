"""A yes (SMTP 250, exit 0 to the MTA) only once the mail is on stable storage.

A power cut cannot be staged here, so these tests watch the real processes' system calls with
strace. `mailgate ingest`: the file's contents are synced before it is renamed into new/, a
sync of the folder begins after the rename and ends before the process exits. The listener:
the mail is written into its journal, a sync of the journal that began after that write ends,
its entry is linked into new/, and then the 250 goes out (journal.py says why the link needs
no sync of its own).
Removing a sync, answering before it, or counting a sync that was already under way at the
write (it may not cover it), fails them. What the journal is for after a power cut is in
test_journal.py.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import smtplib
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.daemon_harness import wait_listening
from tests.mails import mail
from tests.smtp_peers import free_port

STRACE = shutil.which("strace")
pytestmark = pytest.mark.skipif(STRACE is None, reason="strace is not installed (apt-get install strace)")

_CALL = re.compile(r"^(?P<pid>\d+) +(?P<call>\w+)\((?P<args>.*)\) += (?P<result>-?\d+)")
_UNFINISHED = re.compile(r"^(?P<pid>\d+) +(?P<call>\w+)\((?P<args>.*) <unfinished \.\.\.>$")
_RESUMED = re.compile(r"^(?P<pid>\d+) +<\.\.\. (?P<call>\w+) resumed>(?P<args>.*)\) += (?P<result>-?\d+)")


class Call(NamedTuple):
    """A successful system call; `began` and `ended` are lines of the trace. strace writes a
    call's line when it returns, or marks it <unfinished ...> when another thread's call comes
    in between: where a call first appears, it began; where its result is, it ended."""

    call: str
    args: str
    began: int
    ended: int


def _calls(trace: Path) -> list[Call]:
    """Each successful system call, in the order they ended."""
    pending: dict[str, tuple[str, int]] = {}
    done: list[Call] = []
    for line_no, line in enumerate(trace.read_text(errors="replace").splitlines()):
        if m := _UNFINISHED.match(line):
            pending[m["pid"]] = (m["args"], line_no)
        elif m := _RESUMED.match(line):
            args, began = pending.pop(m["pid"], ("", line_no))
            if int(m["result"]) >= 0:
                done.append(Call(m["call"], args + m["args"], began, line_no))
        elif (m := _CALL.match(line)) and int(m["result"]) >= 0:
            done.append(Call(m["call"], m["args"], line_no, line_no))
    return done


def _durability(calls: list[Call], spool: Path) -> dict[str, tuple[int, int, int]]:
    """For each mail renamed into new/: when its file's sync ended, its rename ended, and the
    first sync of new/ that began after the rename ended (-1: never)."""
    found: dict[str, tuple[int, int, int]] = {}
    syncs = [c for c in calls if c.call in ("fsync", "fdatasync")]
    for c in calls:
        # Into new/ (the destination); the worker's claim later renames it out of new/.
        renamed = (
            re.search(rf'", "{re.escape(str(spool))}/new/([\w.]+)"', c.args) if c.call.startswith("rename") else None
        )
        if renamed is None:
            continue
        name = renamed[1]
        file_synced = next((s.ended for s in syncs if f"/tmp/{name}>" in s.args), -1)
        folder_synced = next((s.ended for s in syncs if s.began > c.ended and f"{spool}/new>" in s.args), -1)
        found.setdefault(name, (file_synced, c.ended, folder_synced))
    return found


def _answers(calls: list[Call]) -> dict[str, int]:
    """When each "250 … Queued as NAME" began to go out on a client's connection."""
    answered: dict[str, int] = {}
    for c in calls:
        queued = re.search(r'"250 2\.0\.0 Queued as ([\w.]+)', c.args)
        if c.call in ("write", "sendto", "sendmsg") and re.search(r"<(socket|TCP):", c.args) and queued:
            answered.setdefault(queued[1].split(".j")[0], c.began)  # a journal entry's name: see journal.py
    return answered


def _config(tmp_path: Path, port: int = 0) -> Path:
    config = tmp_path / "mailgate.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\nsecret = "durability-test-secret"\n'
        f'[addresses]\nsupport = "support@example.com"\n[smtp]\nhost = "127.0.0.1"\nport = {port}\n'
    )
    return config


def _strace(output: Path, calls: str) -> list[str]:
    # -f: every thread and child; -y: file descriptors with their paths; -s: enough of a write.
    return [str(STRACE), "-f", "-qq", "-y", "-s", "80", "-o", str(output), "-e", f"trace={calls}"]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MAILGATE_")}


def test_the_mta_pipe_exits_0_only_after_the_mail_and_its_name_are_synced(tmp_path: Path) -> None:
    config, trace = _config(tmp_path), tmp_path / "trace"
    command = [sys.executable, "-m", "mailgate", "--config", str(config), "ingest", "-"]
    done = subprocess.run(
        [*_strace(trace, "fsync,fdatasync,rename,renameat,renameat2"), *command],
        input=mail(),
        capture_output=True,
        env=_env(),
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    [(file_synced, renamed, folder_synced)] = _durability(_calls(trace), tmp_path / "data" / "spool").values()
    # The process exits after the last call traced: the folder sync came before its exit 0.
    assert 0 <= file_synced < renamed < folder_synced


def _traced_daemon_taking(tmp_path: Path, mails: int, clients: int) -> list[Call]:
    """`mailgate run` under strace; `clients` send `mails` mails at once; its system calls."""
    port, trace = free_port(), tmp_path / "trace"
    config = _config(tmp_path, port)
    from mailgate.db import upgrade

    upgrade(f"sqlite:///{tmp_path / 'data' / 'mailgate.db'}")
    log = (tmp_path / "daemon.log").open("wb")
    calls_traced = "fsync,fdatasync,rename,renameat,renameat2,link,linkat,write,writev,sendto,sendmsg"
    command = [sys.executable, "-m", "mailgate", "--config", str(config), "run"]
    daemon = subprocess.Popen(
        [*_strace(trace, calls_traced), *command],
        stderr=log,
        env=_env(),
    )

    def send(chunk: list[bytes]) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
            for raw in chunk:
                client.sendmail("dana@example.com", ["support@example.com"], raw)

    try:
        wait_listening(port, daemon, timeout=60)
        all_mails = [mail(subject=f"mail {i}") for i in range(mails)]
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(send, [all_mails[i::clients] for i in range(clients)]))
    finally:
        # The daemon itself, not strace in front of it.
        for child in Path(f"/proc/{daemon.pid}/task/{daemon.pid}/children").read_text().split():
            os.kill(int(child), signal.SIGTERM)
        daemon.wait(timeout=60)
        log.close()
    return _calls(trace)


def _journalled(calls: list[Call], spool: Path) -> dict[str, tuple[int, int, int]]:
    """For each mail the listener wrote into its journal: when that write ended, when the first
    sync of the journal that began after it ended (-1: never), and when its entry was linked
    into new/ (-1: never). Its entry's name is `<name>.j<offset>`."""
    found: dict[str, tuple[int, int, int]] = {}
    journal = f"{spool}/journal/"
    syncs = [c for c in calls if c.call in ("fsync", "fdatasync") and journal in c.args]
    linked = {
        m[1]: c.ended
        for c in calls
        if c.call.startswith("link") and (m := re.search(rf'"{re.escape(str(spool))}/new/([\d.a-f]+)\.j\d+"', c.args))
    }
    for c in calls:
        if c.call != "writev" or journal not in c.args:
            continue
        for name in re.findall(r'iov_base="(\d+\.\d+\.[0-9a-f]+)\\n"', c.args):
            synced = next((s.ended for s in syncs if s.began > c.ended), -1)
            found[name] = (c.ended, synced, linked.get(name, -1))
    return found


def test_the_listener_answers_250_only_after_the_mail_is_synced_in_its_journal(tmp_path: Path) -> None:
    calls = _traced_daemon_taking(tmp_path, mails=1, clients=1)
    [(name, (written, synced, linked))] = _journalled(calls, tmp_path / "data" / "spool").items()
    answered = _answers(calls)
    assert name in answered, "no 250 seen on the client's connection"
    # Synced, then in new/ for the worker (the link needs no sync: journal.py), then the 250.
    assert 0 <= written < synced < linked < answered[name]


def test_clients_sending_at_once_share_a_sync_and_none_hears_250_before_its_own(tmp_path: Path) -> None:
    """Eight clients at once: mails that arrive while the journal is being synced go into the
    next write together (one flush of the disk for all of them, where a file per mail costs
    two flushes each), and no client hears 250 before its own mail was synced."""
    calls = _traced_daemon_taking(tmp_path, mails=80, clients=8)
    spool = tmp_path / "data" / "spool"
    journalled, answered = _journalled(calls, spool), _answers(calls)
    assert len(journalled) == 80 and set(answered) == set(journalled)
    for name, (written, synced, linked) in journalled.items():
        assert 0 <= written < synced < linked < answered[name], name
    writes = {written for written, _, _ in journalled.values()}
    assert len(writes) < 80, "every mail waited for a flush of its own"
