"""What one heavy mail costs ingest(): time, peak memory, the largest outgoing mail, the trace.

    PYTHONPATH=$PWD python bench/bounds.py [--postgres URL] [--timeout 600] [--only 'MB Subject']

Each mail of tests/heavy_mails.py is ingested on a fresh SQLite database (and PostgreSQL, if
given) in a child process of its own (tests/ingest_child.py), so that the peak RSS printed is
that ingest's. The goal: under 15 s and 4x the mail's size + 200 MB; outgoing mail under 200 KB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from sqlalchemy import create_engine, text

from mailgate.db import upgrade
from tests.heavy_mails import HEAVY

REPO = Path(__file__).resolve().parent.parent


def run(url: str, folder: Path, raw: bytes, timeout: float) -> dict | None:
    path = folder / "mail.eml"
    path.write_bytes(raw)
    command = [sys.executable, "-m", "tests.ingest_child", url, str(folder / "data"), str(path)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        return json.loads(out.splitlines()[0]) if out.strip() else None  # ingested; rendering stopped
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.splitlines()[-1])


def fresh_postgres(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()
    upgrade(url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", help="also ingest on this PostgreSQL database (emptied first)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds before a child is stopped")
    parser.add_argument("--only", action="append", help="only the mails whose name contains this")
    args = parser.parse_args()
    print(f"{'mail':34} {'db':8} {'MB':>6} {'seconds':>8} {'peak MB':>8} {'goal MB':>8} {'max out KB':>10}  cut")
    for name, (make, _bound) in HEAVY.items():
        if args.only and not any(part in name for part in args.only):
            continue
        raw = make()
        goal = (4 * len(raw) + 200 * 2**20) / 2**20
        databases = ["sqlite"] + (["postgres"] if args.postgres else [])
        for db in databases:
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp)
                if db == "sqlite":
                    url = f"sqlite:///{folder / 'mailgate.db'}"
                    upgrade(url)
                else:
                    url = args.postgres
                    fresh_postgres(url)
                got = run(url, folder, raw, args.timeout)
            head = f"{name:34} {db:8} {len(raw) / 2**20:6.1f}"
            if got is None:
                print(f"{head} {'>' + str(int(args.timeout)):>8}  (stopped)")
                continue
            if "error" in got:
                print(f"{head}  failed: {got['error']}")
                continue
            out = max(got["outgoing_bytes"].values(), default=0) / 1024 if "outgoing_bytes" in got else None
            cut = [line for line in got["trace"] if line.startswith("parse:") or "left out" in line]
            print(
                f"{head} {got['seconds']:8.1f} {got['peak_rss'] / 2**20:8.0f} {goal:8.0f} "
                + (f"{out:10.0f}  " if out is not None else f"{'(>' + str(int(args.timeout)) + ' s)':>10}  ")
                + ("; ".join(cut)[:200] or "-")
            )


if __name__ == "__main__":
    main()
