"""The listener's writes into the spool: mails that arrive while a write is under way go into
the next one, which syncs the spool folder once for all of them.

Why: a write is two syncs (the file, then the folder) on a thread, and in the listener's
process that thread competes with the event loop for the interpreter lock at every step. Mail
by mail, eight busy clients got a quarter of what a do-nothing server takes; written together
they get about half (bench/smtp.py prints both sides). A lone client waits for no one: its mail
is written at once.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor

from mailgate.spool import Envelope, Spool

MAX_BATCH = 64  # mails held in memory by one write (each is in memory already, as DATA)


class SpoolWrites:
    def __init__(self, spool: Spool, executor: Executor) -> None:
        self.spool = spool
        self.executor = executor  # one thread: a write waits for the one before it
        self._waiting: list[tuple[bytes, Envelope, asyncio.Future[str]]] = []
        self._writing = False

    async def put(self, raw: bytes, envelope: Envelope) -> str:
        """The mail's name in the spool once it is on stable storage; OSError if it could not be
        written (the whole write it was part of failed)."""
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting.append((raw, envelope, done))
        if not self._writing:
            self._write_next()
        return await done

    def _write_next(self) -> None:
        batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
        self._writing = True
        job = asyncio.get_running_loop().run_in_executor(self.executor, self._write, [(r, e) for r, e, _ in batch])
        job.add_done_callback(lambda finished: self._written(batch, finished))

    def _write(self, mails: list[tuple[bytes, Envelope]]) -> list[str]:
        names = self.spool.put_many(mails)
        self.spool.wake_daemon()
        return names

    def _written(
        self, batch: list[tuple[bytes, Envelope, asyncio.Future[str]]], finished: asyncio.Future[list[str]]
    ) -> None:
        self._writing = False
        error = finished.exception()
        names = [] if error is not None else finished.result()
        for index, (_, _, done) in enumerate(batch):
            if done.done():  # the client went away meanwhile
                continue
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(names[index])
        if self._waiting:
            self._write_next()
