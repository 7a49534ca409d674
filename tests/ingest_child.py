"""Ingest one mail in a process of its own and print what it cost, as one JSON line.

    python -m tests.ingest_child DATABASE_URL DATA_DIR MAIL_FILE

A process of its own, so that its peak memory (VmHWM) is the ingest's and not that of the test
run or bench that started it. Then the outgoing mail it queued is rendered as it would be sent.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from sqlalchemy import select


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main(url: str, data_dir: str, mail_file: str) -> None:
    from mailgate.app import App
    from mailgate.clock import SystemClock
    from mailgate.config import Settings
    from mailgate.ingest.pipeline import ingest
    from mailgate.models import Message, Outbox, Ticket
    from mailgate.outgoing.compose import render

    settings = Settings(
        data_dir=Path(data_dir),
        database_url=url,
        secret="test-secret-not-for-production",
        addresses={"support": "support@example.com", "dispatcher": "dispatch@example.com"},
    )
    app = App.build(settings, clock=SystemClock())
    raw = Path(mail_file).read_bytes()
    started = time.perf_counter()
    result = ingest(app, raw, "smtp")
    seconds = time.perf_counter() - started
    peak = peak_rss_bytes()
    with app.sessions() as session:
        message = session.scalar(select(Message).where(Message.message_id == result.message_id))
        ticket = session.scalar(select(Ticket).where(Ticket.number == result.ticket_number))
        report = {
            "seconds": seconds,
            "peak_rss": peak,
            "outcome": str(result.outcome),
            "trace": [f"{t['step']}: {t['decision']}" for t in result.trace],
            "raw_kept": message is not None and message.raw == raw,
            "stored_subject": len(message.subject) if message else None,
            "ticket_subject": len(ticket.subject) if ticket else None,
        }
        # A line before the rendering, which took minutes for some mails: a caller that stops
        # waiting still has the ingest's figures.
        print(json.dumps(report), flush=True)
        report["outgoing_bytes"] = {row.kind: len(render(row)) for row in session.scalars(select(Outbox))}
    app.close()
    print(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:4])
