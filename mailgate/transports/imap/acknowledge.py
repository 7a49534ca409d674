"""Telling the server a batch of mail is done: one command for the whole set of UIDs, however many.

`move()`: UID MOVE (RFC 6851) where the server has MOVE. Else UID COPY, UID STORE +FLAGS
(\\Deleted) and UID EXPUNGE of exactly that set (RFC 4315 UIDPLUS). A server with neither gets
the COPY and the \\Deleted flag and no EXPUNGE: a plain EXPUNGE removes every mail flagged
\\Deleted in the folder, also those a person or another client flagged and meant to keep until
they expunge it themselves, and no check beforehand can rule that out (they may flag one between
our SEARCH and the EXPUNGE). The poller never reads mail flagged \\Deleted, so what stays behind
is not read again; the first client that expunges the folder removes it.
"""

from __future__ import annotations

from collections.abc import Sequence

from imapclient import DELETED, SEEN, IMAPClient


def move(client: IMAPClient, uids: Sequence[int], folder: str) -> None:
    """Move `uids` of the selected folder to `folder` (the server's own name for it)."""
    if not uids:
        return
    if client.has_capability("MOVE"):
        client.move(uids, folder)
        return
    client.copy(uids, folder)
    client.add_flags(uids, [DELETED], silent=True)
    if client.has_capability("UIDPLUS"):
        client.uid_expunge(uids)


def flag_seen(client: IMAPClient, uids: Sequence[int]) -> None:
    if uids:
        client.add_flags(uids, [SEEN], silent=True)


def leaves_copies_behind(client: IMAPClient) -> bool:
    """Whether mail moved on this server stays in the folder, flagged \\Deleted (see `move`)."""
    return not client.has_capability("MOVE") and not client.has_capability("UIDPLUS")
