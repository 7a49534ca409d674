"""Attachment file names fit to store, show and save: one rule for every way a file arrives
(a MIME part, a forwarded mail, a file inside a winmail.dat).

A name comes from the sender and reaches terminals, the acknowledgement and the notice, and
perhaps a disk: RFC 2183 2.3 says to take it as a base name only. What is left has no controls
or line breaks, no directory, does not start with a dot, and fits a file system's 255 bytes. A
mail that names no file gets `part-N` with an extension from its type, so it opens when saved.
"""

from __future__ import annotations

import mimetypes
import re
import unicodedata

MAX_NAME_BYTES = 255  # a file name on the common file systems
# Without the system's mime.types: the same extension on every machine.
_TYPES = mimetypes.MimeTypes(filenames=())
_EXTENSIONS = {
    "text/calendar": ".ics",
    "application/ms-tnef": ".dat",
    "application/vnd.ms-tnef": ".dat",
    "message/delivery-status": ".txt",
    "message/disposition-notification": ".txt",
    "text/rfc822-headers": ".txt",
    "message/rfc822-headers": ".txt",
}
# C0/C1 controls, line and paragraph separators, and format characters (bidi overrides that
# make "exe.pdf" out of "fdp.exe", zero-width characters).
_INVISIBLE_CATEGORIES = ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn")


def safe_filename(name: str, content_type: str, number: int) -> str:
    """`name` as a harmless base name; `part-<number>.<ext>` when nothing of it is left."""
    name = "".join(" " if unicodedata.category(c) in _INVISIBLE_CATEGORIES else c for c in name)
    name = re.split(r"[/\\]", name)[-1]  # "C:\Users\ann\report.pdf", "../../etc/passwd"
    name = " ".join(name.split()).lstrip(". ").rstrip(". ")
    if not name:
        return f"part-{number}{extension_for(content_type)}"
    return _bounded(name)


def extension_for(content_type: str) -> str:
    """The usual extension of a MIME type; .bin for types without one."""
    ctype = content_type.lower()
    return _EXTENSIONS.get(ctype) or _TYPES.guess_extension(ctype) or ".bin"


def _bounded(name: str) -> str:
    """At most MAX_NAME_BYTES of UTF-8, keeping the extension (and whole characters)."""
    if len(name.encode()) <= MAX_NAME_BYTES:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or len(ext.encode()) > 16:
        stem, ext = name, ""
    suffix = f".{ext}" if ext else ""
    room = MAX_NAME_BYTES - len(suffix.encode())
    stem = stem.encode()[:room].decode("utf-8", "ignore").rstrip(". ")
    return f"{stem}{suffix}"
