"""The spool directory: accepted mail waits here, on stable storage, until ingest() has taken it.

Maildir-style, the way an MTA's queue and Mailman's switchboard work, and the same on SQLite and
PostgreSQL, so mail is accepted while the database is down:

    tmp/     a mail being written; never read
    new/     waiting. The writer synced the file, renamed it here and synced the folder; only
             then does the transport say yes (SMTP 250, exit 0 to the MTA).
    cur/     claimed by the worker, which renamed it here and counted the attempt in its name
             *before* trying: a mail whose ingest kills the process still reaches its limit.
    notes/   the last error of a mail that failed, for `mailgate spool list`
    journal/ the SMTP listener's journal: its entries in new/ are hard links into it (journal.py)
    lock     held by the daemon working this spool: one worker per spool (one per host)

A file is one line of JSON (the envelope) followed by the raw mail, byte for byte. Its name is
`<arrival in µs>.<pid>.<random>`, so names sort by arrival; a mail that was tried carries
`.a<attempts>.d<due, ms since the epoch>` after it.

Only the standard library is imported here, and of it only what is cheap to import (named
tuples rather than dataclasses, which bring in `inspect`): `mailgate ingest`, run by an MTA once
per mail, writes into the spool and must start fast.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, NamedTuple

# Leftovers in tmp/ are writers that died before their rename (their client never got a yes).
# A writer may still be busy with a big mail: only this old a file is taken for dead.
STALE_TMP_SECONDS = 36 * 3600
ENVELOPE_MAX_BYTES = 1024 * 1024  # an envelope line longer than this is not ours
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC

_NAME = re.compile(r"^(?P<base>\d+\.\d+\.[0-9a-f]+)(?:\.j(?P<at>\d+))?(?:\.a(?P<attempts>\d+)\.d(?P<due>\d+))?$")


def spool_dir(data_dir: Path) -> Path:
    return data_dir / "spool"


class SpoolBusy(Exception):
    """Another running daemon works this spool."""


class BrokenEntry(Exception):
    """A spool file without a readable envelope line."""


class Unreadable(OSError):
    """A spool file this process may not read (another user wrote it): moved to unreadable/."""


class Envelope(NamedTuple):
    source: str  # "smtp", "pipe", "lmtp", …
    sender: str | None  # MAIL FROM; "" is the null sender (bounces); None: not known
    recipients: tuple[str, ...]
    received_at: datetime  # aware; the ticket's clock starts here even if the mail waited

    def to_line(self) -> bytes:
        fields = {
            "source": self.source,
            "sender": self.sender,
            "recipients": list(self.recipients),
            "received_at": self.received_at.astimezone(UTC).isoformat(),
        }
        # ensure_ascii: an address the listener kept as surrogates still makes a valid line.
        return json.dumps(fields, ensure_ascii=True).encode("ascii") + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> Envelope:
        try:
            fields = json.loads(line)
            return cls(
                source=str(fields["source"]),
                sender=None if fields["sender"] is None else str(fields["sender"]),
                recipients=tuple(str(r) for r in fields["recipients"]),
                received_at=_aware(datetime.fromisoformat(fields["received_at"])),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise BrokenEntry(f"no envelope line: {exc}") from None


class EntryName(NamedTuple):
    base: str
    attempts: int = 0
    due_ms: int = 0  # not before this; 0 = at once
    # An entry the listener made is a hard link to its journal segment (journal.py): the
    # mail is the record at this offset. None: the file is the mail.
    at: int | None = None

    @classmethod
    def parse(cls, name: str) -> EntryName | None:
        match = _NAME.match(name)
        if match is None:
            return None
        at = None if match["at"] is None else int(match["at"])
        return cls(match["base"], int(match["attempts"] or 0), int(match["due"] or 0), at)

    def __str__(self) -> str:
        name = self.base if self.at is None else f"{self.base}.j{self.at}"
        if not self.attempts and not self.due_ms:
            return name
        return f"{name}.a{self.attempts}.d{self.due_ms}"


class Claimed(NamedTuple):
    """A mail the worker took: renamed into cur/ with the attempt counted."""

    name: EntryName
    envelope: Envelope | None  # None: not a file a writer of ours made; `raw` is the whole file
    raw: bytes


class Waiting(NamedTuple):
    """One line of `mailgate spool list`."""

    name: str
    envelope: Envelope | None  # None: the file has no readable envelope
    attempts: int
    due: datetime | None
    last_error: str
    claimed: bool


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp, self.new, self.cur, self.notes = (root / part for part in ("tmp", "new", "cur", "notes"))
        # put() runs once per mail: plain strings spare it pathlib's work.
        self._tmp, self._new = str(self.tmp), str(self.new)
        self._wakeup: str | None = None
        self._lock_fd: int | None = None

    def make_dirs(self) -> None:
        for folder in (self.tmp, self.new, self.cur, self.notes):
            folder.mkdir(parents=True, exist_ok=True)

    # -- writing: any process, any number at once ------------------------------------------------

    def put(self, raw: bytes, envelope: Envelope) -> str:
        """Keep the mail; its name. When this returns it is on stable storage: a crash, a kill -9
        or a power cut after this cannot lose it. OSError (disk full, read-only) if it could not.

        Any number of threads and processes may put at once; each waits for syncs of its own.
        The SMTP listener, which may take many mails a second, writes into its journal instead
        (journal.py), whose entries in new/ point into the journal. If the last sync fails,
        the mail may still be ingested although its writer was told to try again: the second
        copy is a duplicate, a no-op."""
        base = f"{time.time_ns() // 1000}.{os.getpid()}.{os.urandom(4).hex()}"
        tmp = f"{self._tmp}/{base}"
        try:
            fd = os.open(tmp, _CREATE, 0o600)
        except FileNotFoundError:  # a spool never written to
            self.make_dirs()
            fd = os.open(tmp, _CREATE, 0o600)
        try:
            try:
                _write_all(fd, envelope.to_line())
                _write_all(fd, raw)
                # The contents first, then the name: after a crash a file in new/ is whole.
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, f"{self._new}/{base}")
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        sync_folder(self._new)  # the rename survives a power cut only once this is done
        return base

    def wake_daemon(self) -> None:
        """Tell the daemon working this spool, if one runs, to look now. Never raises: without
        a daemon the mail waits for the next start (or its next scan)."""
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as poke:
            poke.setblocking(False)
            poke.sendto(b"!", self.wakeup_address)

    @property
    def wakeup_address(self) -> str:
        # Linux's abstract socket namespace: no file to leave behind after a crash and no limit
        # of 108 bytes on the path; the name is derived from the spool's real path. (Two spools
        # whose names collide only wake each other's daemon for nothing.)
        if self._wakeup is None:
            path = str(self.root.resolve()).encode()
            self._wakeup = f"\0mailgate-spool-{zlib.crc32(path):08x}-{len(path)}"
        return self._wakeup

    # -- the worker: one per spool, holding the lock -----------------------------------------------

    def lock(self) -> None:
        """Become this spool's worker, or SpoolBusy naming the daemon that is."""
        self.make_dirs()
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise SpoolBusy(f"another mailgate daemon (pid {holder}) works the spool {self.root}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def new_run(self) -> tuple[str | None, str]:
        """With the lock held: a fresh name for this run of the daemon (it marks the outbox rows
        it claims), and the name of the run before it, whose claims are now nobody's. Random and
        kept here, so no two daemons share one, whatever their host names and paths."""
        path = self.root / "run-id"
        try:
            previous: str | None = path.read_text().strip() or None
        except FileNotFoundError:
            previous = None
        current = os.urandom(16).hex()
        (self.root / "run-id.new").write_text(current + "\n")
        os.replace(self.root / "run-id.new", path)
        return previous, current

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def listen_for_wakeups(self) -> socket.socket:
        """The socket writers poke (see wake_daemon); non-blocking, bound while the lock is held."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind(self.wakeup_address)
        except OSError:
            sock.close()
            raise
        return sock

    def recover(self) -> int:
        """At start, with the lock held: every claim in cur/ is a worker that died while
        ingesting (the lock says no other runs). Give them back at once, their attempt counted;
        remove writes that died before their rename. Returns how many claims came back."""
        self.make_dirs()
        back = 0
        for name in os.listdir(self.cur):
            parsed = EntryName.parse(name)
            if parsed is None:
                continue
            with contextlib.suppress(FileNotFoundError):
                os.rename(self.cur / name, self.new / str(parsed._replace(due_ms=0)))
                back += 1
        cutoff = time.time() - STALE_TMP_SECONDS
        for leftover in self.tmp.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if leftover.stat().st_mtime < cutoff:
                    leftover.unlink()
        return back

    def due(self, now: datetime) -> list[EntryName]:
        """Waiting mail that may be tried now, oldest first. A file someone put into new/ by
        hand under a name of their own is taken in too (renamed), never passed over."""
        now_ms = int(now.timestamp() * 1000)
        names = [EntryName.parse(n) or self._adopt(n) for n in os.listdir(self.new)]
        return sorted((n for n in names if n is not None and n.due_ms <= now_ms), key=lambda n: n.base)

    def _adopt(self, foreign: str) -> EntryName | None:
        if foreign.startswith("."):  # a tool's hidden temporary file
            return None
        name = EntryName(f"{time.time_ns() // 1000}.0.{os.urandom(4).hex()}")
        try:
            os.rename(self.new / foreign, self.new / str(name))
        except OSError:
            return None
        return name

    def next_due(self) -> datetime | None:
        """When the earliest waiting mail that is not due yet will be."""
        names = [n for n in (EntryName.parse(n) for n in os.listdir(self.new)) if n is not None]
        if not names:
            return None
        return datetime.fromtimestamp(min(n.due_ms for n in names) / 1000, UTC)

    def claim(self, name: EntryName) -> Claimed | None:
        """Take `name` for one attempt: renamed into cur/ with the attempt counted first. None
        if it is gone (another claim won)."""
        taken = name._replace(attempts=name.attempts + 1)
        try:
            os.rename(self.new / str(name), self.cur / str(taken))
        except FileNotFoundError:
            return None
        try:
            data = read_entry(self.cur / str(taken), taken)
        except (OSError, BrokenEntry) as exc:
            # Kept for a person to look at, out of the way of the mail behind it.
            (self.root / "unreadable").mkdir(exist_ok=True)
            os.rename(self.cur / str(taken), self.root / "unreadable" / str(taken))
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise Unreadable(f"{self.root / 'unreadable' / str(taken)}: {reason}") from exc
        line, newline, raw = data.partition(b"\n")
        try:
            if not newline or len(line) > ENVELOPE_MAX_BYTES:
                raise BrokenEntry("no envelope line")
            return Claimed(taken, Envelope.from_line(line), raw)
        except BrokenEntry:
            return Claimed(taken, None, data)

    def done(self, name: EntryName) -> None:
        """ingest() committed the mail (or quarantine took it): it leaves the spool. Not synced:
        should a power cut bring the file back, ingesting it again is a duplicate, a no-op."""
        with contextlib.suppress(FileNotFoundError):
            (self.cur / str(name)).unlink()
        with contextlib.suppress(FileNotFoundError):
            (self.notes / name.base).unlink()

    def retry(self, name: EntryName, error: str, due: datetime, *, count: bool = True) -> None:
        """Back into new/, due again at `due`. count=False gives the attempt back: the failure
        was the database's (down, locked), not this mail's."""
        attempts = name.attempts if count else max(name.attempts - 1, 0)
        with contextlib.suppress(OSError):  # only a note for the admin
            (self.notes / name.base).write_text(error[:2000], encoding="utf-8", errors="replace")
        back = name._replace(attempts=attempts, due_ms=int(due.timestamp() * 1000))
        os.rename(self.cur / str(name), self.new / str(back))

    # -- looking -------------------------------------------------------------------------------

    def count(self) -> int:
        return sum(len(os.listdir(folder)) for folder in (self.new, self.cur) if folder.is_dir())

    def waiting(self) -> list[Waiting]:
        """What the spool holds, oldest first (for `mailgate spool list`)."""
        found: list[Waiting] = []
        for claimed, folder in ((False, self.new), (True, self.cur)):
            for name, path in _entries(folder):
                due = datetime.fromtimestamp(name.due_ms / 1000, UTC) if name.due_ms else None
                found.append(
                    Waiting(str(name), _read_envelope(path, name), name.attempts, due, self._note(name.base), claimed)
                )
        return sorted(found, key=lambda w: w.name)

    def notes_for(self, name: EntryName) -> str:
        """The last error noted for this mail ("" if none)."""
        return self._note(name.base)

    def _note(self, base: str) -> str:
        try:
            return (self.notes / base).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""


def _entries(folder: Path) -> Iterator[tuple[EntryName, Path]]:
    if not folder.is_dir():
        return
    for name in os.listdir(folder):
        parsed = EntryName.parse(name)
        if parsed is not None:
            yield parsed, folder / name


def _read_envelope(path: Path, name: EntryName) -> Envelope | None:
    try:
        if name.at is not None:
            return Envelope.from_line(read_entry(path, name).partition(b"\n")[0])
        with path.open("rb") as fh:
            return Envelope.from_line(fh.readline(ENVELOPE_MAX_BYTES))
    except (OSError, BrokenEntry):
        return None


RECORD = struct.Struct(">4sQI")  # a journal record's header: magic, payload length, CRC-32 of the payload
RECORD_MAGIC = b"MGJR"


def read_entry(path: Path, name: EntryName) -> bytes:
    """A spool file's contents (envelope line, raw mail): the whole file, or for an entry of the
    listener's the payload of its journal record after the name line (BrokenEntry if that
    is not a whole record, which a synced record always is)."""
    if name.at is None:
        return path.read_bytes()
    with path.open("rb") as fh:
        fh.seek(name.at)
        payload = read_record(fh)
    if payload is None:
        raise BrokenEntry(f"no journal record at {name.at} of {path}")
    line, _, data = payload.partition(b"\n")
    if line != name.base.encode():  # a whole record, but another mail's
        raise BrokenEntry(f"the journal record at {name.at} of {path} is {line[:64]!r}'s")
    return data


def read_record(fh: BinaryIO) -> bytes | None:
    """The payload of the journal record at fh's position, or None where there is no whole
    record (a torn tail, or an offset that is not a record's start)."""
    head = fh.read(RECORD.size)
    if len(head) != RECORD.size:
        return None
    magic, length, crc = RECORD.unpack(head)
    # The length is outside the checksum: a damaged one must not ask for more than the file has.
    if magic != RECORD_MAGIC or length > os.fstat(fh.fileno()).st_size - fh.tell():
        return None
    payload = fh.read(length)
    if not payload or len(payload) != length or zlib.crc32(payload) != crc:
        return None
    return payload


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def sync_folder(folder: str | Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
