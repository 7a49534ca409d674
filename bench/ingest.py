"""Throughput of ingest() beside its two floors, measured in the same run on the same mails.

    python bench/ingest.py [--mails 3000] [--postgres postgresql+psycopg:///mailgate_bench]

Prints mails per second for: mail-parser alone (parse_from_bytes), a bare SQLite insert+commit
per mail (WAL, synchronous=FULL, the same settings mailgate uses), and ingest() end to end.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import tempfile
import time
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import mailparser

from mailgate.app import App
from mailgate.clock import SystemClock
from mailgate.config import Settings
from mailgate.db import upgrade
from mailgate.ingest.pipeline import ingest

WORDS = [
    "printer",
    "jams",
    "vpn",
    "drops",
    "laptop",
    "screen",
    "flickers",
    "password",
    "expired",
    "outlook",
    "crashes",
    "badge",
    "reader",
    "office",
    "cold",
    "wifi",
    "slow",
    "monitor",
    "license",
    "excel",
    "macro",
    "update",
    "failed",
]


def generate(n: int, seed: int = 1) -> list[bytes]:
    """A help desk's day: new requests, replies by tag, HTML mail, attachments, auto-replies, repeats."""
    rng = random.Random(seed)
    mails: list[bytes] = []
    requesters: list[str] = []  # requesters[n - 1] opened ticket n
    for i in range(n):
        msg = EmailMessage(policy=SMTP)
        sender = f"user{rng.randrange(400)}@corp.example"
        msg["From"] = f"User {sender.split('@')[0]} <{sender}>"
        msg["To"] = "support@example.com"
        msg["Message-ID"] = f"<bench-{i}@corp.example>"
        msg["Date"] = "Mon, 23 Nov 2026 09:00:00 +0000"
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(20, 200)))
        kind = rng.random()
        if kind < 0.05 and mails:
            mails.append(rng.choice(mails))  # redelivery of an earlier mail
            continue
        if kind < 0.35 and requesters:
            number = rng.randrange(1, len(requesters) + 1)
            msg.replace_header("From", requesters[number - 1])  # the requester answers
            msg["Subject"] = f"Re: [HD #{number}] " + " ".join(rng.sample(WORDS, 3))
            text += "\n\nOn Mon, IT Help Desk wrote:\n> we received your request\n> and opened a ticket\n"
        else:
            msg["Subject"] = " ".join(rng.sample(WORDS, 4))
            if not 0.90 < kind < 0.95:
                requesters.append(msg["From"])
        if 0.90 < kind < 0.95:
            msg["Auto-Submitted"] = "auto-replied"
        if kind > 0.8:
            msg.set_content(text)
            msg.add_alternative(f"<html><body><p>{text}</p></body></html>", subtype="html")
        else:
            msg.set_content(text + "\n")
        if kind > 0.95:
            msg.add_attachment(
                os.urandom(rng.randrange(1000, 200_000)),
                maintype="application",
                subtype="octet-stream",
                filename="log.bin",
            )
        mails.append(msg.as_bytes())
    return mails


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:8.0f} mails/s  ({count} mails in {seconds:.2f} s)"


def bench_parse(mails: list[bytes]) -> float:
    start = time.perf_counter()
    for raw in mails:
        mailparser.parse_from_bytes(raw)
    return time.perf_counter() - start


def bench_sqlite_commit(mails: list[bytes], folder: Path) -> float:
    conn = sqlite3.connect(folder / "raw.db")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE m (id INTEGER PRIMARY KEY, raw BLOB)")
    conn.commit()
    start = time.perf_counter()
    for raw in mails:
        conn.execute("INSERT INTO m (raw) VALUES (?)", (raw,))
        conn.commit()
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


def bench_ingest(mails: list[bytes], folder: Path, url: str) -> tuple[float, dict[str, int]]:
    upgrade(url)
    settings = Settings(
        data_dir=folder / "data",
        database_url=url,
        secret="bench-secret-0123456789",
        addresses={"support": "support@example.com", "dispatcher": "dispatch@example.com"},
        limits={"acks_per_sender": 1000},
        # 400 employees of one company: its domain is not one robot (as on an internal desk).
        breaker={"exempt_domains": ["corp.example"]},
    )
    app = App.build(settings, clock=SystemClock())
    outcomes: dict[str, int] = {}
    start = time.perf_counter()
    for raw in mails:
        outcome = ingest(app, raw, "bench").outcome
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    elapsed = time.perf_counter() - start
    app.close()
    return elapsed, outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mails", type=int, default=3000)
    parser.add_argument("--postgres", help="also measure ingest() on this (emptied) PostgreSQL database")
    args = parser.parse_args()
    mails = generate(args.mails)
    size = sum(map(len, mails))
    print(f"{len(mails)} generated mails, {size / 1e6:.1f} MB, on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(f"mail-parser parse_from_bytes    {rate(len(mails), bench_parse(mails))}")
        print(f"SQLite insert+commit (WAL)      {rate(len(mails), bench_sqlite_commit(mails, folder))}")
        elapsed, outcomes = bench_ingest(mails, folder, f"sqlite:///{folder / 'mailgate.db'}")
        print(f"ingest() on SQLite              {rate(len(mails), elapsed)}  {outcomes}")
        if args.postgres:
            from sqlalchemy import create_engine, text

            engine = create_engine(args.postgres)
            with engine.begin() as conn:
                conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
            engine.dispose()
            elapsed, outcomes = bench_ingest(mails, folder / "pg", args.postgres)
            print(f"ingest() on PostgreSQL          {rate(len(mails), elapsed)}  {outcomes}")


if __name__ == "__main__":
    main()
