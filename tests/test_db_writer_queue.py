from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import event, text

from mailgate.db import make_engine


def test_a_writer_lets_go_of_the_sqlite_lock_only_after_its_commit(tmp_path: Path) -> None:
    """Writers of one process queue in Python and never meet SQLite's busy handler, which sleeps
    up to 100 ms: with busy_timeout 0, a second writer that found the lock taken would fail."""
    engine = make_engine(f"sqlite:///{tmp_path / 'queue.db'}")
    event.listen(engine, "connect", lambda conn, _record: conn.execute("PRAGMA busy_timeout=0"))
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (n INTEGER)"))
    failures: list[BaseException] = []

    def write(first: int) -> None:
        try:
            for n in range(first, first + 300):
                with engine.begin() as conn:
                    conn.execute(text("INSERT INTO t VALUES (:n)"), {"n": n})
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(k * 1000,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT count(*) FROM t")).scalar_one()
    engine.dispose()
    assert failures == []
    assert stored == 900
