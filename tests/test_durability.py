"""A yes (SMTP 250, exit 0 to the MTA) only once the mail is on stable storage.

A power cut cannot be staged here, so these tests watch the real processes' system calls with
strace: the file's contents are synced before it is renamed into new/, a sync of the folder
begins after the rename and ends before the process answers 250 or exits. Removing either
sync, answering before it, or counting a folder sync that was already under way at the rename
(it may not cover it), fails them.
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
            answered.setdefault(queued[1], c.began)
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
    calls_traced = "fsync,fdatasync,rename,renameat,renameat2,write,sendto,sendmsg"
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


def test_the_listener_answers_250_only_after_the_mail_and_its_name_are_synced(tmp_path: Path) -> None:
    calls = _traced_daemon_taking(tmp_path, mails=1, clients=1)
    [(name, (file_synced, renamed, folder_synced))] = _durability(calls, tmp_path / "data" / "spool").items()
    answered = _answers(calls)
    assert name in answered, "no 250 seen on the client's connection"
    assert 0 <= file_synced < renamed < folder_synced < answered[name]


def _overlapping_file_syncs(trace: Path, spool: Path) -> int:
    """How often a mail's file was synced while another mail's sync was still under way."""
    in_flight: set[str] = set()
    overlaps = 0
    for line in trace.read_text(errors="replace").splitlines():
        if m := _UNFINISHED.match(line):
            if m["call"] in ("fsync", "fdatasync") and f"{spool}/tmp/" in m["args"]:
                overlaps += bool(in_flight)
                in_flight.add(m["pid"])
        elif m := _RESUMED.match(line):
            in_flight.discard(m["pid"])
        elif (m := _CALL.match(line)) and m["call"] in ("fsync", "fdatasync") and f"{spool}/tmp/" in m["args"]:
            overlaps += bool(in_flight - {m["pid"]})
    return overlaps


def test_concurrent_clients_are_written_at_once_and_each_250_still_follows_its_own_syncs(tmp_path: Path) -> None:
    """Eight clients at once: their mails are written side by side (one client's wait for the
    disk does not hold back the others, and the filesystem commits overlapping syncs
    together), and no client hears 250 before its own mail and its name are synced."""
    calls = _traced_daemon_taking(tmp_path, mails=80, clients=8)
    spool = tmp_path / "data" / "spool"
    durable, answered = _durability(calls, spool), _answers(calls)
    assert len(durable) == 80 and set(answered) == set(durable)
    for name, (file_synced, renamed, folder_synced) in durable.items():
        assert 0 <= file_synced < renamed < folder_synced < answered[name], name
    assert _overlapping_file_syncs(tmp_path / "trace", spool) > 0
