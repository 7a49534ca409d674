"""What one MTA pipe process costs per mail, beside Roundup's mail gateway, in the same run.

    python bench/pipe.py [--runs 10] [--scratch DIR]

An MTA (Postfix's `pipe`, procmail) starts one process per mail. This starts, for each of the
same generated mails in turn, (a) `mailgate ingest` (the spool drop), (b) `mailgate ingest --now`
(parse and store in the process), (c) Roundup 2.6's `roundup-mailgw` in pipe mode (classic
tracker, SQLite) on mails from new senders and (c') on the same mails from a sender it knows.
It prints per mail the child's CPU seconds (user + sys, from wait4) and its wall time as
min / median / max, the ratios to Roundup, and the goal for (a): at most 0.3x Roundup's CPU
and 250 ms wall. Two floors show what starting each interpreter alone costs.

Roundup is installed by this script into a venv of its own under the scratch directory
(default: <tmp>/mailgate-bench-pipe, kept for the next run); its outgoing mail goes to a file.
Nothing of it belongs in this repository.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

ROUNDUP = "roundup==2.6.0"
GOAL_CPU_RATIO = 0.3
GOAL_WALL_SECONDS = 0.25
SENDER = "<the mail's envelope sender>"
WORDS = ["printer", "jams", "vpn", "drops", "laptop", "screen", "flickers", "password", "outlook", "wifi", "slow"]


def generate(n: int, seed: int = 1, sender: int | None = None) -> list[bytes]:
    """New requests, each from someone who never wrote before (sender=None) or all from user<sender>."""
    rng = random.Random(seed)
    mails = []
    for i in range(n):
        msg = EmailMessage(policy=SMTP)
        person = i if sender is None else sender
        msg["From"] = f"User {person} <user{person}@corp.example>"
        msg["To"] = "support@example.com"
        msg["Subject"] = " ".join(rng.sample(WORDS, 4))
        msg["Message-ID"] = f"<pipe-bench-{i}-{time.time_ns()}@corp.example>"
        msg["Date"] = "Mon, 23 Nov 2026 09:00:00 +0000"
        msg.set_content(" ".join(rng.choice(WORDS) for _ in range(rng.randrange(40, 300))) + "\n")
        mails.append(msg.as_bytes())
    return mails


@dataclass
class Command:
    label: str
    argv: list[str]
    mails: list[Path] | None = None  # None: the shared mails
    cpu: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)


def run_once(argv: Sequence[str], stdin_file: Path | None, log: Path) -> tuple[float, float]:
    """Start argv as an MTA would (the mail on stdin) and return its (CPU, wall) seconds."""
    with open(stdin_file or os.devnull, "rb") as stdin, log.open("ab") as err:
        start = time.perf_counter()
        child = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, for its rusage
    if child.returncode != 0:
        sys.exit(f"{' '.join(argv)} exited {child.returncode}; its stderr is in {log}")
    return usage.ru_utime + usage.ru_stime, wall


def spread(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    low, mid, high = min(values), statistics.median(values), max(values)
    return " / ".join(f"{v * scale:.{digits}f}" for v in (low, mid, high))


def write_mails(folder: Path, mails: list[bytes]) -> list[Path]:
    folder.mkdir()
    for i, raw in enumerate(mails):
        (folder / f"{i}.eml").write_bytes(raw)
    return sorted(folder.iterdir(), key=lambda p: int(p.stem))


# -- setup -------------------------------------------------------------------------------------


def mailgate_command() -> list[str]:
    """The console script an MTA runs, beside this interpreter; `python -m mailgate` without it."""
    script = Path(sys.executable).parent / "mailgate"
    return [str(script)] if script.exists() else [sys.executable, "-m", "mailgate"]


def setup_mailgate(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "mailgate.toml"
    config.write_text(
        'data_dir = "data"\nsecret = "pipe-bench-secret-0123456789"\n'
        '[addresses]\nsupport = "support@example.com"\ndispatcher = "dispatch@example.com"\n'
    )
    subprocess.run([*mailgate_command(), "--config", str(config), "db", "upgrade"], check=True, capture_output=True)
    return config


def setup_roundup(scratch: Path, tracker: Path) -> Path:
    """A venv with Roundup (made once, kept) and a freshly initialised classic tracker."""
    venv = scratch / "venv-roundup"
    bin_dir = venv / "bin"
    if not (bin_dir / "roundup-mailgw").exists():
        print(f"installing {ROUNDUP} into {venv} …", flush=True)
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
        subprocess.run([str(bin_dir / "pip"), "install", "-q", ROUNDUP], check=True)
    settings = (
        "web_http_auth=no,tracker_web=http://localhost:8917/tracker/,mail_domain=support.example,"
        f"mail_host=localhost,tracker_name=Bench,mail_debug={tracker.parent / 'roundup-outmail.log'}"
    )
    admin = str(bin_dir / "roundup-admin")
    quiet = {"stdin": subprocess.DEVNULL, "check": True, "capture_output": True}
    subprocess.run([admin, "-i", str(tracker), "install", "classic", "sqlite", settings], **quiet)
    schema = tracker / "schema.py"
    # The classic schema ships this line commented out: without it mail from unknown senders is refused.
    grant = "db.security.addPermissionToRole('Anonymous', 'Email Access')"
    schema.write_text(schema.read_text().replace("#" + grant, grant))
    subprocess.run([admin, "-i", str(tracker), "initialise", "admin"], **quiet)
    return bin_dir


# -- main --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="counted mails; each command runs once per mail")
    parser.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "mailgate-bench-pipe")
    args = parser.parse_args()

    args.scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
        work = Path(tmp)
        config = setup_mailgate(work / "mailgate")
        roundup_bin = setup_roundup(args.scratch, work / "tracker")
        mails = generate(args.runs + 1)  # the first is a warm-up, not counted
        files = write_mails(work / "new-senders", mails)
        # Roundup creates a user for a sender it does not know, which costs it about as much
        # again: the same mails from user0, whom the warm-up mail made known, show the other case.
        known = write_mails(work / "known-sender", generate(args.runs + 1, sender=0))

        # As Postfix's master.cf in the README passes them; SENDER becomes each mail's sender.
        pipe = [*mailgate_command(), "--config", str(config), "ingest", "--source", "postfix"]
        envelope = ["--sender", SENDER, "--recipient", "support@example.com"]
        commands = [
            Command("(a) mailgate ingest (spool drop)", [*pipe, *envelope]),
            Command("(b) mailgate ingest --now", [*pipe, "--now", *envelope]),
            Command("(c) roundup-mailgw, new senders", [str(roundup_bin / "roundup-mailgw"), str(work / "tracker")]),
            Command(
                "(c') roundup-mailgw, a known sender",
                [str(roundup_bin / "roundup-mailgw"), str(work / "tracker")],
                known,
            ),
            Command("floor: mailgate's python -c pass", [sys.executable, "-c", "pass"]),
            Command("floor: Roundup's python -c pass", [str(roundup_bin / "python"), "-c", "pass"]),
        ]
        log = work / "stderr.log"
        # In turn, mail by mail, so a machine that slows down or speeds up affects all alike.
        for i, path in enumerate(files):
            for command in commands:
                argv = [f"user{i}@corp.example" if arg is SENDER else arg for arg in command.argv]
                cpu, wall = run_once(argv, path if command.mails is None else command.mails[i], log)
                if i > 0:
                    command.cpu.append(cpu)
                    command.wall.append(wall)

    size = statistics.median(len(m) for m in mails)
    print(f"{args.runs} mails (median {size:.0f} bytes), one process per mail, on {os.cpu_count()} cores")
    print(f"{'per mail, min / median / max':38} {'CPU s (user+sys)':>24}   {'wall ms':>20}")
    for command in commands:
        print(f"{command.label:38} {spread(command.cpu):>24}   {spread(command.wall, 1000, 0):>20}")
    drop, now, roundup, roundup_known = commands[:4]
    for command in (drop, now):
        for peer in (roundup, roundup_known):
            pairs = [a / b for a, b in zip(command.cpu, peer.cpu, strict=True)]
            ratio = statistics.median(command.cpu) / statistics.median(peer.cpu)
            name = f"{command.label.split()[0]} / {peer.label.split()[0]}"
            print(f"{name:10} CPU: {ratio:.2f}x of the medians; mail by mail {spread(pairs, digits=2)}")
    verdicts = []
    for peer in (roundup, roundup_known):
        ratio = statistics.median(drop.cpu) / statistics.median(peer.cpu)
        verdicts.append(f"{'met' if ratio <= GOAL_CPU_RATIO else 'NOT met'} vs {peer.label.split()[0]} ({ratio:.2f}x)")
    wall = statistics.median(drop.wall)
    print(f"goal (a) <= {GOAL_CPU_RATIO}x Roundup's CPU: {', '.join(verdicts)}")
    print(
        f"goal (a) <= {GOAL_WALL_SECONDS * 1000:.0f} ms wall: "
        f"{'met' if wall <= GOAL_WALL_SECONDS else 'NOT met'} ({wall * 1000:.0f} ms median)"
    )


if __name__ == "__main__":
    main()
