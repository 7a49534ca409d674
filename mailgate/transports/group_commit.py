"""Group commit: mails that arrive while the spool is committing are written in the next single
transaction. With eight clients sending at once, one commit (and, on SQLite, one turn of the
write lock) then serves several mails instead of one; a lone client waits for no one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any

from mailgate.spool import Spool

Pending = list[tuple[dict[str, Any], asyncio.Future[int]]]


class GroupCommit:
    def __init__(
        self,
        spool: Spool,
        executor: Executor,
        on_written: Callable[[int], None] = lambda count: None,
        max_batch: int = 64,
    ) -> None:
        self.spool = spool
        self.executor = executor
        # Called with the number of mails, once per batch, in the order the batches were written.
        self.on_written = on_written
        self.max_batch = max_batch
        self._waiting: Pending = []
        self._writing = False

    async def put(self, raw: bytes, source: str, envelope_sender: str, envelope_recipients: Sequence[str]) -> int:
        """The spool id once the mail is committed; the exception of the batch if it failed."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        row = {"raw": raw, "source": source, "sender": envelope_sender, "recipients": list(envelope_recipients)}
        self._waiting.append((row, future))
        if not self._writing:
            self._write_next()
        return await future

    def _write_next(self) -> None:
        batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch :]
        self._writing = True
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(self.executor, self._write, [row for row, _ in batch])
        job.add_done_callback(lambda done: self._written(batch, done))

    def _write(self, rows: list[dict[str, Any]]) -> list[int | Exception]:
        """The spool ids in order. A batch the database refuses for one mail's values is written
        again mail by mail, so that mail's client alone gets the 451; an outage fails them all."""
        try:
            return list(self.spool.put_many(rows))
        except Exception as exc:
            if len(rows) == 1 or not self.spool.refused_a_value(exc):
                raise
        results: list[int | Exception] = []
        for row in rows:
            try:
                results.append(self.spool.put_many([row])[0])
            except Exception as exc:
                results.append(exc)
        return results

    def _written(
        self, batch: list[tuple[dict[str, Any], asyncio.Future[int]]], done: asyncio.Future[list[int | Exception]]
    ) -> None:
        self._writing = False
        error = done.exception()
        results: list[int | BaseException] = [error] * len(batch) if error is not None else list(done.result())
        stored = sum(1 for result in results if not isinstance(result, BaseException))
        if stored:
            self.on_written(stored)
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():  # the client went away meanwhile
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
        if self._waiting:
            self._write_next()
