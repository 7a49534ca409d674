"""The listener's journal: what a power cut takes of the unsynced entries in new/, the next
start gives back; after a killed listener nothing already ingested comes back; and the journal
does not outgrow the spool."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import select

from mailgate import journal
from mailgate.app import App
from mailgate.ingest.spooled import drain
from mailgate.journal import Journal
from mailgate.models import Ticket
from mailgate.spool import EntryName, Envelope, Spool
from tests.mails import mail

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def _envelope() -> Envelope:
    return Envelope("smtp", "dana@example.com", ("support@example.com",), NOW)


def _journal(spool: Spool, mails: list[bytes], boot: str) -> list[str]:
    """Mails taken as the listener takes them (all submitted at once); their entries' names."""
    with Journal(spool, boot=boot) as writer:
        waiting = [writer.submit(raw, _envelope()) for raw in mails]
        return [done.result(10) for done in waiting]


def _subjects(app: App) -> list[str]:
    with app.sessions() as session:
        return sorted(session.scalars(select(Ticket.subject)))


def _segments(spool: Spool) -> list[str]:
    return sorted(os.listdir(journal.journal_dir(spool)))


def _now() -> datetime:
    return datetime.now(UTC)


def test_an_entry_is_its_mail_and_envelope_and_every_spool_command_reads_it(app: App, spool: Spool) -> None:
    mails = [mail(subject=f"printer {i}") for i in range(3)]
    names = _journal(spool, mails, boot="b")
    assert sorted(os.listdir(spool.new)) == sorted(names)
    assert [w.envelope for w in spool.waiting()] == [_envelope()] * 3  # `mailgate spool list`
    claims = [spool.claim(name) for name in spool.due(_now())]
    assert [(c.raw, c.envelope) for c in claims if c] == [(raw, _envelope()) for raw in mails]
    for claimed in claims:
        assert claimed is not None
        spool.retry(claimed.name, "database is locked", NOW)  # a retry keeps where its record is
    drain(app, spool)
    assert _subjects(app) == ["printer 0", "printer 1", "printer 2"]


def test_after_a_power_cut_every_mail_that_got_its_yes_comes_back(app: App, spool: Spool) -> None:
    names = _journal(spool, [mail(subject=f"printer {i}") for i in range(3)], boot="before")
    (spool.new / names[0]).unlink()  # what a power cut may do to a link never synced
    (spool.new / names[2]).unlink()
    assert journal.recover(spool, boot="after") == 2
    assert sorted(os.listdir(spool.new)) == sorted(names)
    drain(app, spool)
    assert _subjects(app) == ["printer 0", "printer 1", "printer 2"]
    # After it, the segment is an ordinary closed one: gone once its mail is.
    assert journal.retire(spool) == 1 and _segments(spool) == []


def test_after_a_power_cut_the_mail_comes_back_once_not_at_every_later_start(app: App, spool: Spool) -> None:
    """A mail dropped without a stored message (an auto-reply, a loop) would otherwise go
    through the pipeline again at every restart until its segment is gone."""
    names = _journal(spool, [mail(subject=f"printer {i}") for i in range(3)], boot="before")
    for name in names:
        (spool.new / name).unlink()
    assert journal.recover(spool, boot="after") == 3
    drain(app, spool, limit=2)  # the third still waits: the segment stays
    assert journal.recover(spool, boot="after") == 0 and spool.count() == 1
    drain(app, spool)
    assert journal.recover(spool, boot="after") == 0 and spool.count() == 0
    assert _subjects(app) == ["printer 0", "printer 1", "printer 2"]
    assert journal.retire(spool) == 1 and _segments(spool) == []


def test_a_record_cut_short_by_the_crash_ends_the_segment_and_the_records_before_it_come_back(
    app: App, spool: Spool
) -> None:
    names = _journal(spool, [mail(subject="monitor"), mail(subject="keyboard")], boot="before")
    [segment] = _segments(spool)
    with (journal.journal_dir(spool) / segment).open("ab") as fh:
        fh.write(b"MGJR\x00\x00\x00\x00\x00\x00\x10\x00\x12\x34\x56\x78" + b"half a mail")  # its client got no 250
    for name in names:
        (spool.new / name).unlink()
    assert journal.recover(spool, boot="after") == 2
    drain(app, spool)
    assert _subjects(app) == ["keyboard", "monitor"]


_KILLED_LISTENER = """
import os, signal, sys
from datetime import UTC, datetime
from pathlib import Path
from mailgate.journal import Journal
from mailgate.spool import EntryName, Envelope, Spool

writer = Journal(Spool(Path(sys.argv[1]))).start()
envelope = Envelope("smtp", "dana@example.com", ("support@example.com",), datetime.now(UTC))
for i in range(3):
    head = f"From: dana@example.com\\nTo: support@example.com\\nMessage-ID: <scanner-{i}@example.com>\\n"
    writer.submit(f"{head}Subject: scanner {i}\\n\\nhello\\n".encode(), envelope).result(10)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_after_a_kill_of_the_listener_every_answered_mail_is_ingested_once(app: App, spool: Spool) -> None:
    killed = subprocess.run([sys.executable, "-c", _KILLED_LISTENER, str(spool.root)], capture_output=True, timeout=60)
    assert killed.returncode == -9, killed.stderr
    [segment] = _segments(spool)
    assert segment.startswith("open.")  # it died writing
    drain(app, spool, limit=2)
    # The machine did not go down: the entries are all there, and none is made again.
    assert journal.recover(spool) == 0
    assert spool.count() == 1 and _segments(spool) == [segment.removeprefix("open.")]
    drain(app, spool)
    assert _subjects(app) == ["scanner 0", "scanner 1", "scanner 2"]
    assert journal.retire(spool) == 1 and _segments(spool) == []


def test_a_segment_is_removed_once_no_entry_of_the_spool_needs_it(spool: Spool) -> None:
    _journal(spool, [mail(subject="first"), mail(subject="second")], boot="b")
    assert journal.retire(spool) == 0 and len(_segments(spool)) == 1  # both waiting
    first, second = (spool.claim(name) for name in spool.due(_now()))
    assert first is not None and second is not None
    spool.done(first.name)
    assert journal.retire(spool) == 0  # the second is being ingested (cur/)
    spool.retry(second.name, "database is locked", _now())
    assert journal.retire(spool) == 0  # waiting for its retry (new/)
    again = spool.claim(spool.due(_now())[0])
    assert again is not None
    spool.done(again.name)
    assert journal.retire(spool) == 1 and _segments(spool) == []


def test_the_segment_being_written_is_never_removed(spool: Spool) -> None:
    with Journal(spool, boot="b") as writer:
        name = writer.submit(mail(), _envelope()).result(10)
        claimed = spool.claim(spool.due(_now())[0])
        assert claimed is not None and claimed.name.base == name.split(".j")[0]
        spool.done(claimed.name)
        assert journal.retire(spool) == 0  # nothing links to it, but more mail goes into it
        later = writer.submit(mail(subject="later"), _envelope()).result(10)
    assert (spool.new / later).exists()


def test_mail_keeps_arriving_while_segments_come_and_go(spool: Spool, monkeypatch) -> None:
    monkeypatch.setattr(journal, "SEGMENT_BYTES", 4096)  # a new segment every few mails
    with Journal(spool, boot="b") as writer:
        for i in range(10):  # one at a time: a segment is closed between two writes
            writer.submit(mail(subject=f"mail {i}", body="x" * 1500), _envelope()).result(10)
    before = len(_segments(spool))
    assert before >= 3
    for name in spool.due(_now())[:4]:
        claimed = spool.claim(name)
        assert claimed is not None
        spool.done(claimed.name)
    assert 0 < journal.retire(spool) < before
    # What is left is what the waiting mail needs, and all of it is readable.
    assert all((journal.journal_dir(spool) / segment).stat().st_nlink > 1 for segment in _segments(spool))
    left = [spool.claim(name) for name in spool.due(_now())]
    assert [c.raw.count(b"Subject: mail") for c in left if c] == [1] * 6


def test_an_entry_that_does_not_name_a_whole_record_is_set_aside_and_the_rest_still_go_in(
    app: App, spool: Spool, caplog
) -> None:
    """A name edited by hand, or a link to where no synced record is: kept in unreadable/ for a
    person, with the reason logged, never ingested as garbage and never blocking the mail behind."""
    bad, _printer = _journal(spool, [mail(subject="scanner"), mail(subject="printer")], boot="b")
    name = EntryName.parse(bad)
    assert name is not None and name.at is not None
    shifted = name._replace(at=name.at + 1)  # one byte into its record: no header that checks
    os.rename(spool.new / bad, spool.new / str(shifted))
    drain(app, spool)
    assert _subjects(app) == ["printer"]
    assert os.listdir(spool.root / "unreadable") == [str(shifted._replace(attempts=1))]
    assert f"no journal record at {shifted.at}" in caplog.text
    assert os.listdir(spool.new) == [] and os.listdir(spool.cur) == []


def test_a_record_damaged_on_disk_is_set_aside_not_ingested_as_a_different_mail(app: App, spool: Spool) -> None:
    (entry,) = _journal(spool, [mail(subject="printer on floor 3")], boot="b")
    with (spool.new / entry).open("r+b") as fh:  # the entry is a link: this is the segment
        data = fh.read()
        at = data.rindex(b"floor 3")
        fh.seek(at)
        fh.write(b"floor 4")  # same length, so only the checksum can tell
    drain(app, spool)
    assert _subjects(app) == []
    [set_aside] = (spool.root / "unreadable").iterdir()
    # It keeps the bytes for a person by its own link: the segment's name in journal/ goes, and
    # a power cut does not bring the entry back into new/.
    assert journal.recover(spool, boot="after") == 0 and spool.count() == 0
    assert journal.retire(spool) == 1 and _segments(spool) == []
    assert b"floor 4" in set_aside.read_bytes()


def test_more_mails_at_once_than_one_write_can_take_are_all_kept(spool: Spool) -> None:
    """Hundreds of connections may hand over a mail during one sync; the kernel takes at most
    IOV_MAX (1024) pieces per write, four per mail."""
    writer = Journal(spool, boot="b")
    waiting = [writer.submit(mail(subject=f"printer {i}"), _envelope()) for i in range(600)]
    with writer:  # started with all 600 waiting: its first write sees every one of them
        names = [done.result(30) for done in waiting]
    assert len(set(names)) == 600 and sorted(os.listdir(spool.new)) == sorted(names)


def test_a_client_that_hangs_up_while_waiting_neither_gets_its_mail_kept_nor_stops_the_others(spool: Spool) -> None:
    writer = Journal(spool, boot="b")
    gone = writer.submit(mail(subject="hung up"), _envelope())
    assert gone.cancel()  # what asyncio.wrap_future does when aiosmtpd cancels the handler
    kept = writer.submit(mail(subject="printer"), _envelope())
    with writer:
        first = kept.result(10)
        later = writer.submit(mail(subject="scanner"), _envelope()).result(10)
    assert sorted(os.listdir(spool.new)) == sorted([first, later])


def test_an_entry_naming_another_mails_record_or_a_damaged_length_is_set_aside(app: App, spool: Spool) -> None:
    first, second, third = _journal(spool, [mail(subject=s) for s in ("one", "two", "three")], boot="b")
    one, two = EntryName.parse(first), EntryName.parse(second)
    assert one is not None and two is not None and one.at is not None
    os.rename(spool.new / second, spool.new / str(two._replace(at=one.at)))  # points at "one"
    with (spool.new / third).open("r+b") as fh:  # a length far past the end of the segment
        fh.seek(EntryName.parse(third).at + 4)  # type: ignore[union-attr, operator]
        fh.write((2**40).to_bytes(8, "big"))
    drain(app, spool)
    assert _subjects(app) == ["one"]
    assert len(os.listdir(spool.root / "unreadable")) == 2


def test_what_a_person_put_in_the_journal_folder_neither_stops_a_start_nor_the_worker(
    app: App, spool: Spool, caplog
) -> None:
    names = _journal(spool, [mail(subject="printer")], boot="before")
    (spool.new / names[0]).unlink()  # the power cut
    folder = journal.journal_dir(spool)
    (folder / "old").mkdir()
    (folder / "dangling").symlink_to(folder / "nowhere")
    os.mkfifo(folder / "fifo")  # opening it to read waits for a writer that never comes
    (folder / "notes.txt").write_text("copied here by hand\n")
    assert _within_10_s(lambda: journal.recover(spool, boot="after")) == 1
    assert "notes.txt is not a journal segment" in caplog.text
    drain(app, spool)
    assert _subjects(app) == ["printer"]
    assert _within_10_s(lambda: journal.retire(spool)) == 1
    assert _segments(spool) == ["dangling", "fifo", "notes.txt", "old"]


def _within_10_s(call: Callable[[], int]) -> int:
    """What call returns; fails the test, rather than hanging it, if call does not return."""
    result: list[int] = []
    running = threading.Thread(target=lambda: result.append(call()), daemon=True)
    running.start()
    running.join(10)
    assert result, "it hangs or raised"
    return result[0]
