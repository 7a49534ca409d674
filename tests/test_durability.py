"""A yes (SMTP 250, exit 0 to the MTA) only once the mail is on stable storage.

A power cut cannot be staged here, so these tests watch the real processes' system calls with
strace: the file's contents are synced before it is renamed into new/, the folder is synced
after the rename, and only then does the process answer 250 or exit. Removing either sync,
or answering before it, fails them.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.daemon_harness import wait_listening
from tests.mails import mail
from tests.smtp_peers import free_port

STRACE = shutil.which("strace")
pytestmark = pytest.mark.skipif(STRACE is None, reason="strace is not installed (apt-get install strace)")

_CALL = re.compile(r"^(?P<pid>\d+) +(?P<call>\w+)\((?P<args>.*)\) += (?P<result>-?\d+)")
_UNFINISHED = re.compile(r"^(?P<pid>\d+) +(?P<call>\w+)\((?P<args>.*) <unfinished \.\.\.>$")
_RESUMED = re.compile(r"^(?P<pid>\d+) +<\.\.\. (?P<call>\w+) resumed>(?P<args>.*)\) += (?P<result>-?\d+)")


def _calls(trace: Path) -> list[tuple[str, str]]:
    """(call, arguments) of each successful system call, in the order they completed."""
    pending: dict[str, str] = {}
    done: list[tuple[str, str]] = []
    for line in trace.read_text(errors="replace").splitlines():
        if m := _UNFINISHED.match(line):
            pending[m["pid"]] = m["args"]
        elif m := _RESUMED.match(line):
            if int(m["result"]) >= 0:
                done.append((m["call"], pending.pop(m["pid"], "") + m["args"]))
        elif (m := _CALL.match(line)) and int(m["result"]) >= 0:
            done.append((m["call"], m["args"]))
    return done


def _order_of_durability(calls: list[tuple[str, str]], spool: Path) -> dict[str, int]:
    """Where in `calls` the mail's file was synced, renamed into new/, and new/ synced."""
    renames = [i for i, (call, args) in enumerate(calls) if call.startswith("rename") and f"{spool}/new/" in args]
    assert renames, "the mail was never renamed into new/"
    name = re.search(rf"{re.escape(str(spool))}/new/([\w.]+)", calls[renames[0]][1])
    assert name is not None
    synced_file = [
        i for i, (call, args) in enumerate(calls) if call in ("fsync", "fdatasync") and f"/tmp/{name[1]}>" in args
    ]
    synced_dir = [
        i for i, (call, args) in enumerate(calls) if call in ("fsync", "fdatasync") and f"{spool}/new>" in args
    ]
    return {
        "file synced": synced_file[0] if synced_file else -1,
        "renamed": renames[0],
        "folder synced": next((i for i in synced_dir if i > renames[0]), -1),
        "name": name[1],  # type: ignore[dict-item]
    }


def _config(tmp_path: Path, port: int = 0) -> Path:
    config = tmp_path / "mailgate.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\nsecret = "durability-test-secret"\n'
        f'[addresses]\nsupport = "support@example.com"\n[smtp]\nhost = "127.0.0.1"\nport = {port}\n'
    )
    return config


def _strace(output: Path, calls: str) -> list[str]:
    # -f: every thread and child; -y: file descriptors with their paths; -s: enough of a write.
    return [str(STRACE), "-f", "-qq", "-y", "-s", "40", "-o", str(output), "-e", f"trace={calls}"]


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
    calls = _calls(trace)
    order = _order_of_durability(calls, tmp_path / "data" / "spool")
    # The process exits after the last call traced: the folder sync came before its exit 0.
    assert 0 <= order["file synced"] < order["renamed"] < order["folder synced"]


def test_the_listener_answers_250_only_after_the_mail_and_its_name_are_synced(tmp_path: Path) -> None:
    port, trace = free_port(), tmp_path / "trace"
    config = _config(tmp_path, port)
    from mailgate.db import upgrade

    upgrade(f"sqlite:///{tmp_path / 'data' / 'mailgate.db'}")
    log = (tmp_path / "daemon.log").open("wb")
    calls_traced = "fsync,fdatasync,rename,renameat,renameat2,write,sendto,sendmsg"
    daemon = subprocess.Popen(
        [*_strace(trace, calls_traced), sys.executable, "-m", "mailgate", "--config", str(config), "run"],
        stderr=log,
        env=_env(),
    )
    try:
        wait_listening(port, daemon, timeout=60)
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail("dana@example.com", ["support@example.com"], mail())
    finally:
        # The daemon itself, not strace in front of it.
        for child in Path(f"/proc/{daemon.pid}/task/{daemon.pid}/children").read_text().split():
            os.kill(int(child), signal.SIGTERM)
        daemon.wait(timeout=60)
        log.close()
    calls = _calls(trace)
    order = _order_of_durability(calls, tmp_path / "data" / "spool")
    answered = [
        i
        for i, (call, args) in enumerate(calls)
        if call in ("write", "sendto", "sendmsg")
        and ("TCP:" in args or "<socket:" in args)
        and '"250 2.0.0 Queued' in args
    ]
    assert answered, "no 250 seen on the client's connection"
    assert 0 <= order["file synced"] < order["renamed"] < order["folder synced"] < answered[0]
