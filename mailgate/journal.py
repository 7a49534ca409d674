"""The SMTP listener's journal: a mail is on stable storage after one disk flush, shared by
every mail that arrived at the same moment, and no file is created for it.

Spool.put makes a mail durable with a file of its own: create, write, sync, rename, sync the
folder. Where the filesystem does not merge the syncs of concurrent writers (ext4 without a
journal, for one), or creating a file is slow (an inode allocated: 0.4-1 ms of CPU on the
disk the bench runs on), clients wait for that in turn. The listener instead appends the mails
that arrive together to one journal segment and syncs it once (fdatasync, about 0.2 ms). Each
mail's entry in the spool's new/ is then a hard link to the segment, named with the offset of
its record (`<name>.j<offset>`: spool.read_entry reads just that record), and only then is
the 250 sent. A link is a name, not a file: no inode is allocated, the worker claims and
retries it by renaming like any other entry, and once every entry of a segment is done the
kernel frees its blocks.

The links are not synced:

- The kernel keeps what a process did, whatever becomes of the process: after a kill -9 or an
  OOM kill every link is there. Each segment names the boot it was written in (the kernel's
  boot_id); a start in the same boot only closes what a dead listener left open.
- After a power cut or a kernel crash, links made since the last sync of new/ may be gone. At
  the next start every record of a segment from an earlier boot gets its link back (unless it
  has one) and new/ is synced; then the segment's header takes this boot's id, so later starts
  leave it alone. A mail that was ingested already comes back as a copy, which ingest's dedupe
  step takes as a no-op (as it does for a spool file whose removal was not synced).
- So a segment keeps its own name in journal/ until no entry links to it any more: the
  worker removes closed segments whose link count is down to one, not counting the entries set
  aside in unreadable/, which keep their bytes by their own link (see `retire`). A segment is
  begun per listener run and every SEGMENT_BYTES or SEGMENT_SECONDS; `open.<pid>.<µs>` is
  being written, `<pid>.<µs>` is closed.

A segment begins with a line naming the boot. A record is a header (spool.RECORD: magic,
length, CRC-32 of the payload), then the payload: the mail's spool name, a newline, and what
a spool file holds (the envelope line and the raw mail). A record cut short by a crash (its
writer was never told yes) fails its CRC; the segment ends there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import NamedTuple

from mailgate.spool import RECORD, RECORD_MAGIC, EntryName, Envelope, Spool, read_record, sync_folder

SEGMENT_BYTES = 8 * 1024 * 1024
SEGMENT_SECONDS = 60.0
_HEADER = b"mailgate-journal 1 boot="
_OPEN = "open."
# The most pieces one writev takes (Linux: 1024); more is EINVAL.
IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
_BOOT_ID = "/proc/sys/kernel/random/boot_id"
# The header gives the boot this many bytes (a kernel boot id has 36), so that a recovery can
# write its own boot over it in place.
_BOOT_BYTES = 64

log = logging.getLogger("mailgate.spool")


def boot_id() -> str:
    """This boot of the machine; "" where the kernel does not say (every start then relinks)."""
    try:
        return Path(_BOOT_ID).read_text().strip()
    except OSError:
        return ""


def journal_dir(spool: Spool) -> Path:
    return spool.root / "journal"


class _Pending(NamedTuple):
    raw: bytes
    envelope: Envelope
    done: Future[str]


class _Segment:
    def __init__(self, folder: Path, boot: str) -> None:
        self.name = f"{os.getpid()}.{time.time_ns() // 1000}"
        self.path = folder / f"{_OPEN}{self.name}"
        self.started = time.monotonic()
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            header = _header(boot, _BOOT_BYTES)
            os.write(self.fd, header)
            os.fsync(self.fd)
            sync_folder(folder)  # its name must survive too: it is what a restart relinks from
        except BaseException:
            os.close(self.fd)
            with contextlib.suppress(OSError):
                self.path.unlink()
            raise
        self.size = len(header)

    def full(self) -> bool:
        return self.size >= SEGMENT_BYTES or time.monotonic() - self.started >= SEGMENT_SECONDS

    def append(self, pieces: list[bytes]) -> None:
        """Append and sync: when this returns, the records survive a power cut."""
        total = sum(len(piece) for piece in pieces)
        left = [memoryview(piece) for piece in pieces]
        while left:
            # Short when the disk fills (the next write says ENOSPC) or past 2 GiB in one call.
            written = os.writev(self.fd, left[:IOV_MAX])
            while left and written >= len(left[0]):
                written -= len(left.pop(0))
            if written:
                left[0] = left[0][written:]
        os.fdatasync(self.fd)
        self.size += total

    def close(self) -> None:
        os.close(self.fd)
        # Not synced: after a power cut it may keep its open name, which a start handles alike.
        os.rename(self.path, self.path.with_name(self.name))


class Journal:
    """The listener's writer: submit() from any thread; one thread writes, syncs, links and
    answers, so the mails that arrive while a sync runs are written together by the next."""

    def __init__(self, spool: Spool, boot: str | None = None) -> None:
        self.spool = spool
        self.folder = journal_dir(spool)
        self.boot = boot_id() if boot is None else boot
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._segment: _Segment | None = None
        self._thread = threading.Thread(target=self._run, name="spool-journal", daemon=True)

    def start(self) -> Journal:
        self.spool.make_dirs()
        self.folder.mkdir(exist_ok=True)
        self._thread.start()
        return self

    def __enter__(self) -> Journal:
        if not self._thread.is_alive():
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def submit(self, raw: bytes, envelope: Envelope) -> Future[str]:
        """The mail's spool name once it is durable and in new/; OSError if it could not be kept."""
        done: Future[str] = Future()
        self._queue.put(_Pending(raw, envelope, done))
        return done

    def close(self) -> None:
        """Write what was submitted, then stop; the segment is closed for the worker to retire."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            batch = [first] if first is not None else []
            while first is not None:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    first = None
                    break
                batch.append(item)
            if batch:
                self._write(batch)
            if first is None:
                self._close_segment()
                return

    def _write(self, batch: list[_Pending]) -> None:
        # A client that hung up has its wait cancelled (asyncio.wrap_future): it heard no 250,
        # so its mail is not kept, and the others may no longer be cancelled from here on.
        batch = [item for item in batch if item.done.set_running_or_notify_cancel()]
        if not batch:
            return
        try:
            segment = self._current()
            offset, pieces, names = segment.size, [], []
            for item in batch:
                base = f"{time.time_ns() // 1000}.{os.getpid()}.{os.urandom(4).hex()}"
                payload = (base.encode() + b"\n", item.envelope.to_line(), item.raw)
                crc = zlib.crc32(payload[2], zlib.crc32(payload[1], zlib.crc32(payload[0])))
                pieces += [RECORD.pack(RECORD_MAGIC, sum(map(len, payload)), crc), *payload]
                names.append(str(EntryName(base, at=offset)))
                offset += RECORD.size + sum(map(len, payload))
            segment.append(pieces)
        except OSError as exc:
            # A failed write may have left half a record: no later one may follow it.
            self._close_segment()
            for item in batch:
                item.done.set_exception(exc)
            return
        for name, item in zip(names, batch, strict=True):
            try:
                os.link(segment.path, self.spool.new / name)
            except OSError as exc:  # the client keeps the mail; the journal's copy goes with the segment
                item.done.set_exception(exc)
            else:
                item.done.set_result(name)
        self.spool.wake_daemon()

    def _current(self) -> _Segment:
        if self._segment is not None and self._segment.full():
            self._close_segment()
        if self._segment is None:
            self._segment = _Segment(self.folder, self.boot)
        return self._segment

    def _close_segment(self) -> None:
        if self._segment is not None:
            with contextlib.suppress(OSError):
                self._segment.close()
            self._segment = None


# -- in the daemon, holding the spool's lock: at start, and in the worker's rounds ----------------


def _label(boot: str, width: int = _BOOT_BYTES) -> bytes:
    return boot.encode("ascii", "replace")[:width]


def _header(boot: str, width: int) -> bytes:
    return _HEADER + _label(boot, width).ljust(width) + b"\n"


class _Record(NamedTuple):
    name: EntryName
    at: int


def _segments(folder: Path) -> Iterator[Path]:
    """The regular files in journal/: a directory, a link or a FIFO put there by hand is not a
    segment (a FIFO would hang the open)."""
    for entry in sorted(os.scandir(folder), key=lambda entry: entry.name):
        if entry.is_file(follow_symlinks=False):
            yield Path(entry.path)


def _boot_of(path: Path) -> str | None:
    """The boot a segment was written in; None if it is not a segment of ours."""
    with path.open("rb") as fh:
        line = fh.readline(256)
    return line[len(_HEADER) :].strip().decode("ascii", "replace") if line.startswith(_HEADER) else None


def _records(path: Path) -> Iterator[_Record]:
    """A segment's whole records, up to the first torn one."""
    with path.open("rb") as fh:
        fh.readline(256)
        while True:
            at = fh.tell()
            if (payload := read_record(fh)) is None:
                return
            name = EntryName.parse(payload.partition(b"\n")[0].decode("ascii", "replace"))
            if name is not None:
                yield _Record(name._replace(at=at), at)


def recover(spool: Spool, boot: str | None = None) -> int:
    """At start, after spool.recover() gave back the claims: close the segments a dead listener
    left open, and after a restart of the machine give every record of an earlier boot its
    entry in new/ back. Returns how many entries were made."""
    folder = journal_dir(spool)
    if not folder.is_dir():
        return 0
    boot = boot_id() if boot is None else boot
    linked = 0
    relinked: list[Path] = []
    for path in _segments(folder):
        try:
            written_in = _boot_of(path)
            if written_in is None:  # not ours: left for a person to look at
                log.warning("%s is not a journal segment; left alone", path)
                continue
            if path.name.startswith(_OPEN):
                path = path.rename(path.with_name(path.name.removeprefix(_OPEN)))
            if not boot or written_in != _label(boot).decode():
                linked += _relink(spool, path)
                relinked.append(path)
        except OSError as exc:  # one unreadable file must not keep the daemon from starting
            log.error("journal segment %s: %s; left alone", path, exc.strerror or exc)
    if linked:
        sync_folder(spool.new)
    if boot:
        # Its entries are synced now: a later start in this boot must not make them again
        # (the ones already ingested would come back, start after start).
        for path in relinked:
            _mark_recovered(path, boot)
    return linked


def _relink(spool: Spool, path: Path) -> int:
    """Link every whole record that has no entry in new/ (cur/ was given back)."""
    there = {name.base for name in map(EntryName.parse, os.listdir(spool.new)) if name}
    count = 0
    for record in _records(path):
        if record.name.base not in there:
            os.link(path, spool.new / str(record.name))
            count += 1
    return count


def _mark_recovered(path: Path, boot: str) -> None:
    """Write this boot over the segment's, in place (the header keeps its length)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            line = os.pread(fd, 256, 0).partition(b"\n")[0]
            os.pwrite(fd, _header(boot, len(line) - len(_HEADER)), 0)
            os.fdatasync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        log.error("journal segment %s: %s; its mail comes back at every start", path, exc.strerror or exc)


def retire(spool: Spool) -> int:
    """Remove the closed segments no entry links to any more (an entry set aside in
    unreadable/ keeps the mail's bytes by its own link). Returns how many."""
    folder = journal_dir(spool)
    if not folder.is_dir():
        return 0
    set_aside = _links_in(spool.root / "unreadable")
    gone = 0
    for path in _segments(folder):
        if path.name.startswith(_OPEN):
            continue
        try:
            info = path.stat(follow_symlinks=False)
            if info.st_nlink - set_aside[info.st_ino] == 1 and _boot_of(path) is not None:
                path.unlink()
                gone += 1
        except OSError:  # gone meanwhile, or not ours to read: recover logs it at start
            continue
    return gone


def _links_in(folder: Path) -> Counter[int]:
    """How many names in `folder` each inode has."""
    try:
        with os.scandir(folder) as entries:
            return Counter(entry.inode() for entry in entries if entry.is_file(follow_symlinks=False))
    except FileNotFoundError:
        return Counter()
