"""Reading the mail after DATA into one buffer, with turns for the other clients.

aiosmtpd's own DATA command keeps a list with a bytearray per line: a mail of 3-byte lines costs
the listener 20-60 times its size, enough to kill it by memory well within the size limit. Here
the lines go into one bytearray, so a mail costs about twice its size (the buffer and the bytes
handed on) whatever its lines. The replies are aiosmtpd's: 500 for a line longer than RFC 5321
allows, 552 over the size limit, each after the final dot (RFC 5321 4.2.5).

While a line is in the reader's buffer, reading it does not give the event loop a turn: a client
sending many short lines would hold the listener for as long as it keeps the buffer full. The
reader yields every YIELD_EVERY lines, so every other client is served in between.
"""

from __future__ import annotations

import asyncio
import enum

YIELD_EVERY = 256  # lines; a turn costs about as much as reading ten of them


class Refused(enum.Enum):
    LINE_TOO_LONG = "500 5.5.2 Line too long (see RFC 5321 4.5.3.1.6)"
    TOO_BIG = "552 5.3.4 Message too big for this system"


async def read_data(reader: asyncio.StreamReader, max_bytes: int | None, max_line: int) -> bytes | Refused:
    """The mail up to the lone dot, dot-unstuffed (RFC 5321 4.5.2); or why it is refused, once
    the client has sent all of it. A mail refused is not kept: what follows is only counted."""
    data = bytearray()
    received = 0
    refused: Refused | None = None
    at_line_start = True
    lines = 0
    while True:
        try:
            line = await reader.readuntil(b"\r\n")
            complete = True
        except asyncio.LimitOverrunError as overrun:  # a line longer than the reader's limit
            line = await reader.read(overrun.consumed)
            complete = False
            refused = refused or Refused.LINE_TOO_LONG
        if at_line_start and line == b".\r\n":
            break
        received += len(line)
        if refused is None and complete and len(line) > max_line:
            refused = Refused.LINE_TOO_LONG
        if refused is None and max_bytes and received > max_bytes:
            refused = Refused.TOO_BIG
        if refused is None:
            data += line[1:] if at_line_start and line.startswith(b".") else line
        elif data:
            data = bytearray()  # refused: let go of what was kept
        at_line_start = complete
        lines += 1
        if lines % YIELD_EVERY == 0:
            await asyncio.sleep(0)
    return refused if refused is not None else bytes(data)
