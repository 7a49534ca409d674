"""The one back-off policy: doubling from the first wait, never beyond the cap, however long it fails."""

from __future__ import annotations

from mailgate.retry import IMAP, OUTBOX, SPOOL, Backoff


def test_waits_double_up_to_the_cap_and_stay_there() -> None:
    policy = Backoff(first=0.5, cap=30)
    assert [policy.seconds(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert policy.seconds(100_000) == 30  # a week-long outage does not overflow


def test_jitter_only_shortens_a_wait_and_by_at_most_its_share() -> None:
    waits = [IMAP.seconds(3) for _ in range(200)]
    assert all(0.8 * 4 <= wait <= 4 for wait in waits) and len(set(waits)) > 1


def test_the_policies_in_use() -> None:
    assert SPOOL.seconds(1) == 1 and SPOOL.seconds(50) == 30  # a database outage costs seconds
    assert OUTBOX.delay(1).total_seconds() == 60 and OUTBOX.seconds(50) == 6 * 3600
