"""Which stored files a relayed mail carries: in order, each once, up to a total size; the rest
are named in its text so the recipient knows they exist and where to find them (the ticket)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from mailgate.models import Attachment
from mailgate.outgoing.outbox import Attached

# Files named in one mail's text; the rest are counted, so a mail of a thousand files still
# ends with how to reply.
LISTED = 50


@dataclass
class Files:
    attached: list[Attached] = field(default_factory=list)
    left_out: list[Attachment] = field(default_factory=list)  # over the bound, or never kept

    def context(self) -> dict[str, object]:
        return {
            "attached": self.attached[:LISTED],
            "more_attached": len(self.attached[LISTED:]),
            "left_out": self.left_out[:LISTED],
            "more_left_out": len(self.left_out[LISTED:]),
        }


def bounded(attachments: Iterable[Attachment], max_bytes: int) -> Files:
    """The files of `attachments` that fit in `max_bytes` together, first come first."""
    files, seen, total = Files(), set(), 0
    for attachment in attachments:
        if attachment.stored and attachment.sha256 in seen:
            continue  # the same file sent twice (a logo in every signature) travels once
        if not attachment.stored or total + attachment.size > max_bytes:
            files.left_out.append(attachment)
            continue
        seen.add(attachment.sha256)
        total += attachment.size
        files.attached.append(
            Attached(attachment.sha256, attachment.filename, attachment.content_type, attachment.size)
        )
    return files
