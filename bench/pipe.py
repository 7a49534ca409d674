"""What one MTA pipe process costs per mail, beside Roundup's mail gateway, in the same run.

    python bench/pipe.py [--runs 10] [--scratch DIR] [--imports 10]

An MTA (Postfix's `pipe`, procmail) starts one process per mail. This starts, mail by mail in
turn, (a) `mailgate ingest` (the spool drop) and (c) Roundup 2.6's `roundup-mailgw` in pipe mode
(classic tracker, SQLite, a fresh tracker per run) on the same generated mails from new senders,
then (a') and (c') on the same mails from one sender Roundup already knows (creating a user costs
Roundup about as much again), and (b) `mailgate ingest --now` (parse and store in the process).
It prints per mail the child's CPU seconds (user + sys, from wait4) and its wall time as
min / median / max, each mailgate row's ratio to Roundup on the same mails, and the goal:
(a) at most 0.3x Roundup's CPU on both kinds of mail, and 250 ms wall.

Both programs run from a virtualenv of their own under the scratch directory (default
<tmp>/mailgate-bench-pipe): Roundup installed once from PyPI, mailgate installed again at each
run from this working tree with `pip install`, as an admin installs it. A venv starts a clean
interpreter: no site-wide `.pth` file imports anything, and every module has its compiled
bytecode. The interpreter this script runs under may add both (a `.pth` that imports a package
into every process; an editable install compiled from source at each start when
PYTHONDONTWRITEBYTECODE is set), which Roundup's venv would not pay; so its `mailgate` is
timed too, as row (a*), with each interpreter's `python -c pass` as a floor, and nobody has to
take the venv's word for it. Roundup's outgoing mail goes to a file; nothing of it belongs in
this repository.

--imports N prints the N most expensive imports of one spool drop (`python -X importtime`,
the module's own time), what is left of its cost.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import re
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
MAILGATE = Path(__file__).resolve().parents[1]  # this working tree
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


@dataclass(frozen=True)
class Mail:
    file: Path
    sender: str  # its envelope sender, as the MTA passes it


@dataclass
class Command:
    label: str
    argv: list[str]
    mails: list[Mail]  # one per run, the same list for the rows compared with each other
    peer: Command | None = None  # the Roundup row on the same mails, for the ratio
    cpu: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)

    @property
    def tag(self) -> str:
        return self.label.split()[0]


def run_once(argv: Sequence[str], stdin_file: Path, log: Path) -> tuple[float, float]:
    """Start argv as an MTA would (the mail on stdin) and return its (CPU, wall) seconds."""
    with stdin_file.open("rb") as stdin, log.open("ab") as err:
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


def ratio(command: Command, peer: Command) -> float:
    return statistics.median(command.cpu) / statistics.median(peer.cpu)


def write_mails(folder: Path, mails: list[bytes], sender: int | None = None) -> list[Mail]:
    """The mails of generate(…, sender) as files, in order."""
    folder.mkdir()
    written = []
    for i, raw in enumerate(mails):
        (folder / f"{i}.eml").write_bytes(raw)
        written.append(Mail(folder / f"{i}.eml", f"user{i if sender is None else sender}@corp.example"))
    return written


# -- setup -------------------------------------------------------------------------------------


def venv_with(venv: Path, requirement: str, script: str, *, reinstall: bool) -> Path:
    """A venv whose bin/ has `script` from `requirement`: made once and kept, installed again when
    `reinstall`; pip gets the dependencies from the package index."""
    bin_dir = venv / "bin"
    if not (bin_dir / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    if reinstall or not (bin_dir / script).exists():
        print(f"installing {requirement} into {venv} …", flush=True)
        pip = subprocess.run([str(bin_dir / "pip"), "install", "-q", requirement], capture_output=True, text=True)
        if pip.returncode != 0:
            sys.exit(f"pip install {requirement} failed:\n{pip.stdout}{pip.stderr}")
    return bin_dir


def this_environments_mailgate() -> list[str] | None:
    """The console script beside this interpreter, else `python -m mailgate`; None without mailgate."""
    if importlib.util.find_spec("mailgate") is None:
        return None
    script = Path(sys.executable).parent / "mailgate"
    return [str(script)] if script.exists() else [sys.executable, "-m", "mailgate"]


def setup_mailgate(mailgate: list[str], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "mailgate.toml"
    config.write_text(
        'data_dir = "data"\nsecret = "pipe-bench-secret-0123456789"\n'
        '[addresses]\nsupport = "support@example.com"\ndispatcher = "dispatch@example.com"\n'
    )
    subprocess.run([*mailgate, "--config", str(config), "db", "upgrade"], check=True, capture_output=True)
    return config


def setup_tracker(bin_dir: Path, tracker: Path) -> None:
    """A freshly initialised classic tracker (Roundup's per-mail cost grows with its size)."""
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


def pipe_argv(mailgate: list[str], config: Path, *extra: str) -> list[str]:
    """As Postfix's master.cf in the README passes them; SENDER becomes each mail's sender."""
    envelope = ["--sender", SENDER, "--recipient", "support@example.com"]
    return [*mailgate, "ingest", "--config", str(config), "--source", "postfix", *extra, *envelope]


# -- report ------------------------------------------------------------------------------------


def print_report(commands: list[Command], runs: int, size: float) -> None:
    print(f"{runs} mails (median {size:.0f} bytes), one process per mail, on {os.cpu_count()} cores")
    print(f"{'per mail, min / median / max':44} {'CPU s (user+sys)':>24}   {'wall ms':>20}")
    for command in commands:
        print(f"{command.label:44} {spread(command.cpu):>24}   {spread(command.wall, 1000, 0):>20}")
    for command in commands:
        if command.peer is not None:
            pairs = [a / b for a, b in zip(command.cpu, command.peer.cpu, strict=True)]
            name = f"{command.tag} / {command.peer.tag}"
            medians = ratio(command, command.peer)
            print(f"{name:11} CPU: {medians:.2f}x of the medians; mail by mail {spread(pairs, digits=2)}")


def print_goal(drops: list[Command]) -> None:
    verdicts = []
    for drop in drops:
        assert drop.peer is not None
        r = ratio(drop, drop.peer)
        kind = drop.peer.label.split(", ", 1)[1]
        verdicts.append(f"{kind} {drop.tag}/{drop.peer.tag} {r:.2f}x {'met' if r <= GOAL_CPU_RATIO else 'NOT met'}")
    print(f"goal: the spool drop <= {GOAL_CPU_RATIO}x Roundup's CPU on the same mails: {'; '.join(verdicts)}")
    wall = statistics.median(drops[0].wall)
    verdict = "met" if wall <= GOAL_WALL_SECONDS else "NOT met"
    print(f"goal: (a) <= {GOAL_WALL_SECONDS * 1000:.0f} ms wall: {verdict} ({wall * 1000:.0f} ms median)")


def print_imports(drop: Command, top: int) -> None:
    """The `top` most expensive imports of one more spool drop, by each module's own time."""
    python = Path(drop.argv[0]).parent / "python"
    mail = drop.mails[0]
    argv = [str(python), "-X", "importtime", *(mail.sender if arg is SENDER else arg for arg in drop.argv)]
    with mail.file.open("rb") as stdin:
        stderr = subprocess.run(argv, stdin=stdin, capture_output=True, check=True).stderr.decode()
    rows = [
        (int(own), int(total), name)
        for own, total, name in re.findall(r"^import time:\s+(\d+) \|\s+(\d+) \| (.*)$", stderr, re.M)
    ]
    total = sum(own for own, _, _ in rows) / 1000
    print(f"(a) imports {len(rows)} modules in {total:.1f} ms (importtime's overhead included); the {top} largest:")
    print(f"{'own µs':>8} {'with imports':>12}  module")
    for own, cumulative, name in sorted(rows, reverse=True)[:top]:
        print(f"{own:8} {cumulative:12}  {name.strip()}")


# -- main --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="counted mails; each command runs once per mail")
    parser.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "mailgate-bench-pipe")
    parser.add_argument("--imports", type=int, default=0, metavar="N", help="print the N costliest imports of (a)")
    args = parser.parse_args()

    args.scratch.mkdir(parents=True, exist_ok=True)
    roundup_bin = venv_with(args.scratch / "venv-roundup", ROUNDUP, "roundup-mailgw", reinstall=False)
    mailgate_bin = venv_with(args.scratch / "venv-mailgate", str(MAILGATE), "mailgate", reinstall=True)
    here = this_environments_mailgate()
    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
        work = Path(tmp)
        mailgate = [str(mailgate_bin / "mailgate")]
        config = setup_mailgate(mailgate, work / "mailgate")
        setup_tracker(roundup_bin, work / "tracker")
        mails = generate(args.runs + 1)  # the first is a warm-up, not counted
        new = write_mails(work / "new-senders", mails)
        # user0 is known to Roundup after the first mail (a warm-up) of the new senders.
        known = write_mails(work / "known-sender", generate(args.runs + 1, sender=0), sender=0)

        roundup = [str(roundup_bin / "roundup-mailgw"), str(work / "tracker")]
        roundup_new = Command("(c) roundup-mailgw, new senders", roundup, new)
        roundup_known = Command("(c') roundup-mailgw, a known sender", roundup, known)
        drop_new = Command("(a) mailgate ingest (spool drop)", pipe_argv(mailgate, config), new, roundup_new)
        drop_known = Command("(a') mailgate ingest (spool drop)", pipe_argv(mailgate, config), known, roundup_known)
        commands = [drop_new, roundup_new, drop_known, roundup_known]
        commands.append(Command("(b) mailgate ingest --now", pipe_argv(mailgate, config, "--now"), new, roundup_new))
        if here is not None:
            label = "(a*) spool drop, this script's environment"
            commands.append(Command(label, pipe_argv(here, setup_mailgate(here, work / "here")), new, roundup_new))
        floors = [("bench venv", mailgate_bin / "python"), ("Roundup's venv", roundup_bin / "python")]
        if here is not None:
            floors.append(("this environment", Path(sys.executable)))
        commands += [
            Command(f"floor: python -c pass, {name}", [str(python), "-c", "pass"], new) for name, python in floors
        ]

        log = work / "stderr.log"
        # In turn, mail by mail, so a machine that slows down or speeds up affects all alike.
        for i in range(args.runs + 1):
            for command in commands:
                mail = command.mails[i]
                argv = [mail.sender if arg is SENDER else arg for arg in command.argv]
                cpu, wall = run_once(argv, mail.file, log)
                if i > 0:
                    command.cpu.append(cpu)
                    command.wall.append(wall)

        print_report(commands, args.runs, statistics.median(len(m) for m in mails))
        print_goal([drop_new, drop_known])
        if args.imports:
            print_imports(drop_new, args.imports)


if __name__ == "__main__":
    main()
