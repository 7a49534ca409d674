"""Mails per second through mailgate's SMTP listener, beside a do-nothing aiosmtpd server, and the
acknowledgement latency (from the client's 250 to the relay receiving the ack).

    python bench/smtp.py [--mails 1000] [--rounds 3] [--postgres postgresql+psycopg:///mailgate_bench]
                         [--listener in-process]

Both servers run as separate processes (`mailgate run`, and this file with --serve-null), the
clients are threads here, the capturing relay is an aiosmtpd server in a third process. Same
clients, same mails, same run.

`--listener in-process` runs the daemon with its SMTP listener on a thread of the daemon's own
process instead of a process of its own (mailgate has no such mode; the bench swaps it in): the
measurement behind keeping the listener in its own process.
"""

from __future__ import annotations

import argparse
import os
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.policy import SMTP
from pathlib import Path

from aiosmtpd.controller import Controller


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_mails(n: int, tag: str) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        msg = EmailMessage(policy=SMTP)
        # Employees of the desk's own company, each writing once: the circuit breaker limits a
        # sender's new tickets (and a foreign domain's), which a throughput test is not about.
        msg["From"] = f"User {i} <user{i}.{tag}@example.com>"
        msg["To"] = "support@example.com"
        msg["Subject"] = f"Laptop {i} does not boot after the update"
        msg["Message-ID"] = mid = f"<{tag}-{i}@corp.example>"
        msg["Date"] = "Mon, 23 Nov 2026 09:00:00 +0000"
        msg.set_content("Hello,\n\nmy laptop shows a blue screen after the update.\n" * 5)
        out.append((mid, msg.as_bytes()))
    return out


class NullHandler:
    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        return "250 OK"


def serve(handler: object, port: int) -> None:
    """Run an aiosmtpd server with `handler` until the parent closes our stdin."""
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        sys.stdin.read()
    finally:
        controller.stop()


def wait_listening(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def send_all(
    port: int, mails: list[tuple[str, bytes]], connections: int, per_mail: bool = False, pace: float = 0.0
) -> tuple[float, dict[str, float]]:
    """Send `mails` from `connections` client threads; return seconds and each mail's 250 time.

    per_mail: a new SMTP connection for every mail (as an MTA delivers single messages);
    otherwise one connection per thread for all its mails. pace: seconds between the starts of a
    thread's mails, kept to a schedule (a mail that took longer does not slow the ones after it),
    so the rate achieved is the rate asked for as long as the server keeps up.
    """
    accepted: dict[str, float] = {}
    chunks = [mails[i::connections] for i in range(connections)]
    start = time.monotonic()

    def on_time(k: int) -> None:
        if pace:
            time.sleep(max(0.0, start + k * pace - time.monotonic()))

    def one(smtp: smtplib.SMTP, mid: str, raw: bytes) -> None:
        smtp.sendmail("bench@example.com", ["support@example.com"], raw)
        accepted[mid] = time.monotonic()

    def client(chunk: list[tuple[str, bytes]]) -> None:
        if per_mail:
            for k, (mid, raw) in enumerate(chunk):
                on_time(k)
                with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
                    one(smtp, mid, raw)
            return
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
            for k, (mid, raw) in enumerate(chunk):
                on_time(k)
                one(smtp, mid, raw)

    threads = [threading.Thread(target=client, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - start, accepted


MODES = (("persistent", False), ("conn/mail", True))


class RelayHandler:
    """The capturing relay, in a process of its own like a real relay: it writes a line per
    mail to stdout, "ack <In-Reply-To> <monotonic time>" or "notice" (a dispatcher's copy)."""

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        if envelope.rcpt_tos == ["dispatch@example.com"]:  # type: ignore[attr-defined]
            line = "notice"
        else:
            head = BytesHeaderParser().parsebytes(envelope.content)  # type: ignore[attr-defined]
            line = f"ack {head['In-Reply-To']} {time.monotonic()}" if head["Auto-Submitted"] else "other"
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        return "250 OK"


class Relay:
    """The parent's view of the relay process: when each acknowledgement arrived, by the mail it
    answers (CLOCK_MONOTONIC is one clock for all processes of this machine)."""

    def __init__(self, port: int) -> None:
        self.arrived: dict[str, float] = {}
        self.notices = 0  # the dispatcher's copies, which leave after the acknowledgements
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve-relay", str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        wait_listening(port)

    def _read(self) -> None:
        for line in self.process.stdout:  # type: ignore[union-attr]
            kind, *rest = line.split()
            if kind == "notice":
                self.notices += 1
            elif kind == "ack":
                self.arrived[rest[0]] = float(rest[1])

    def stop(self) -> None:
        self.process.stdin.close()  # type: ignore[union-attr]
        self.process.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mails", type=int, default=1000, help="mails per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per mode and server (median shown)")
    parser.add_argument("--postgres", help="database URL for mailgate (default: SQLite in a temp dir)")
    parser.add_argument("--listener", choices=["process", "in-process"], default="process")
    parser.add_argument("--serve-daemon-in-process", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-null", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-relay", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_daemon_in_process:
        serve_daemon_in_process()
        return
    if args.serve_null:
        serve(NullHandler(), args.serve_null)
        return
    if args.serve_relay:
        serve(RelayHandler(), args.serve_relay)
        return

    print(f"{args.mails} mails per measurement, median of {args.rounds} rounds, {os.cpu_count()} cores")
    relay_port = free_port()
    relay = Relay(relay_port)
    null_port = free_port()
    null = subprocess.Popen([sys.executable, __file__, "--serve-null", str(null_port)], stdin=subprocess.PIPE)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        port = free_port()
        url = args.postgres or f"sqlite:///{folder / 'mailgate.db'}"
        env = configure(folder, url, port, relay_port)
        backend = url.split(":")[0].split("+")[0]
        with (folder / "daemon.log").open("wb") as log:
            command = [sys.executable, "-m", "mailgate", "run"]
            if args.listener == "in-process":
                command = [sys.executable, __file__, "--serve-daemon-in-process"]
            daemon = subprocess.Popen(command, env=env, stderr=log)
            try:
                wait_listening(null_port)
                wait_listening(port)
                burst: list[float] = []
                for mode, per_mail in MODES:
                    for conns in (1, 8):
                        # The two servers take turns, so a slow moment of the machine hits both.
                        null_rates, rates = [], []
                        for round_ in range(args.rounds):
                            tag = f"{mode}{conns}r{round_}"
                            seconds, _ = send_all(null_port, make_mails(args.mails, "null" + tag), conns, per_mail)
                            null_rates.append(args.mails / seconds)
                            seconds, accepted = send_all(port, make_mails(args.mails, "mg" + tag), conns, per_mail)
                            rates.append(args.mails / seconds)
                            burst += latencies(relay, accepted)  # and the daemon is idle again
                        null_rate, rate = statistics.median(null_rates), statistics.median(rates)
                        print(f"{mode:<10} {conns} client(s): do-nothing aiosmtpd {null_rate:6.0f} mails/s, ", end="")
                        print(f"mailgate ({backend}, {args.listener}) {rate:6.0f} mails/s = {rate / null_rate:.0%}")
                # Latency when mail arrives at a steady pace instead of in a flood.
                steady = [paced_latencies(port, relay, pace) for pace in (20, 100)]
            finally:
                daemon.terminate()
                daemon.wait(15)
                null.stdin.close()  # type: ignore[union-attr]
                null.wait(10)
    relay.stop()
    print(summary("acknowledgement latency, 250 -> relay, during the bursts above", burst))
    for achieved, values in steady:
        print(summary(f"acknowledgement latency, 250 -> relay, {achieved:.0f} mails/s steady", values))


class ThreadListener:
    """mailgate's listener on a thread of the daemon's process, in place of ListenerProcess."""

    def __init__(self, settings: object, secret: bytes) -> None:
        import asyncio
        import multiprocessing

        self._conn, child = multiprocessing.Pipe()
        self.port = 0
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve(settings, secret, child)), daemon=True)
        self._thread.start()

    @staticmethod
    async def _serve(settings: object, secret: bytes, conn: object) -> None:
        import asyncio

        from mailgate.journal import Journal
        from mailgate.spool import Spool
        from mailgate.transports import smtp

        with Journal(Spool(settings.spool_dir)) as journal:  # type: ignore[attr-defined]
            listener = smtp.Listener(settings, secret, journal)  # type: ignore[arg-type]
            server = await smtp.start(listener, settings.smtp, settings.limits.max_message_bytes)  # type: ignore[attr-defined]
            conn.send(("ready", server.sockets[0].getsockname()[1]))  # type: ignore[attr-defined]
            stop = asyncio.Event()
            asyncio.get_running_loop().add_reader(conn.fileno(), stop.set)  # type: ignore[attr-defined]
            await stop.wait()
            server.close()

    def wait_ready(self) -> int:
        self.port = int(self._conn.recv()[1])
        return self.port

    def watch(self, on_exit: object) -> None:
        pass

    def stop(self) -> int:
        self._conn.close()
        self._thread.join(5)
        return 0


def serve_daemon_in_process() -> None:
    import mailgate.daemon
    from mailgate.cli import main as mailgate_main

    mailgate.daemon.ListenerProcess = ThreadListener  # type: ignore[assignment, misc]
    sys.argv = ["mailgate", "run"]
    mailgate_main()


def configure(folder: Path, url: str, port: int, relay_port: int) -> dict[str, str]:
    """A config file and a migrated database for the daemon; the environment to run it with."""
    (folder / "mailgate.toml").write_text(
        f'data_dir = "{folder / "data"}"\ndatabase_url = "{url}"\nsecret = "bench-secret-0123456789"\n'
        '[addresses]\nsupport = "support@example.com"\ndispatcher = "dispatch@example.com"\n'
        f'[smtp]\nhost = "127.0.0.1"\nport = {port}\n'
        f'[outgoing]\nrelay_host = "127.0.0.1"\nrelay_port = {relay_port}\n'
        "[limits]\nacks_per_sender = 100000\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILGATE_")}
    env["MAILGATE_CONFIG"] = str(folder / "mailgate.toml")
    if not url.startswith("sqlite"):
        from sqlalchemy import create_engine, text

        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        engine.dispose()
    subprocess.run([sys.executable, "-m", "mailgate", "db", "upgrade"], env=env, check=True, capture_output=True)
    return env


def paced_latencies(port: int, relay: Relay, per_second: int, seconds: float = 5) -> tuple[float, list[float]]:
    """Mails at about `per_second` for `seconds`, a connection each, from enough clients; returns
    the rate achieved and each mail's acknowledgement latency."""
    clients = max(1, per_second // 20)
    mails = make_mails(int(per_second * seconds), f"paced{per_second}")
    took, accepted = send_all(port, mails, clients, per_mail=True, pace=clients / per_second)
    return len(mails) / took, latencies(relay, accepted)


def latencies(relay: Relay, accepted: dict[str, float], timeout: float = 120) -> list[float]:
    """Each accepted mail's acknowledgement latency, once the daemon has sent everything it
    owes (the dispatcher's notices too), so the next measurement finds it idle."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (
        not all(m in relay.arrived for m in accepted) or relay.notices < len(relay.arrived)
    ):
        time.sleep(0.05)
    missing = [m for m in accepted if m not in relay.arrived]
    if missing:
        print(f"  {len(missing)} acknowledgements did not arrive within {timeout:.0f} s")
    return [relay.arrived[m] - t for m, t in accepted.items() if m in relay.arrived]


def summary(title: str, values: list[float]) -> str:
    values = sorted(values)
    p50 = statistics.median(values)
    p95 = values[max(int(len(values) * 0.95) - 1, 0)]
    return f"{title}: p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, max {values[-1] * 1000:.0f} ms ({len(values)})"


if __name__ == "__main__":
    main()
