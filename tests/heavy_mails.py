"""Mails within the default size limit that each cost a parser something else: many addresses,
many encoded words, many MIME parts, a huge subject, a lot of HTML. Shared by
tests/test_bounds.py and bench/bounds.py."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable


def _head(tag: str, subject: str, extra: str = "") -> str:
    return (
        "From: Dana Smith <dana@example.com>\r\nTo: support@example.com\r\n"
        f"{extra}Subject: {subject}\r\nMessage-ID: <heavy-{tag}@client.example.org>\r\n"
        "Date: Mon, 23 Nov 2026 09:00:00 +0000\r\nMIME-Version: 1.0\r\n"
    )


def many_cc(count: int = 60_000) -> bytes:
    cc = ",\r\n ".join(f"Person {i} <person{i}@example.org>" for i in range(count))
    return (_head("cc", "Meeting room projector", f"Cc: {cc}\r\n") + "\r\nThe projector is dead.\r\n").encode()


def encoded_subject(size: int = 800_000) -> bytes:
    """Short RFC 2047 words on one line, in a charset nobody knows (the fallback path)."""
    subject = " ".join(["=?x?q?a?="] * (size // 10))
    return (_head("words", subject) + "Content-Type: text/plain\r\n\r\nThe printer jams.\r\n").encode()


def mime_parts(count: int = 100_000) -> bytes:
    """Tiny files, each of its own content (a part of text would be body, not a file)."""
    boundary = "b0undary"
    parts = "".join(f"--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\np{i}\r\n" for i in range(count))
    return (
        _head("parts", "Many parts")
        + f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'
        + parts
        + f"--{boundary}--\r\n"
    ).encode()


def long_subject(size: int = 10_000_000) -> bytes:
    subject = ("printer jams " * (size // 13 + 1))[:size]
    return (_head("subject", subject) + "Content-Type: text/plain\r\n\r\nThe printer jams.\r\n").encode()


def much_html(size: int = 12_000_000) -> bytes:
    chunk = "<p>The <b>printer</b> on the <i>3rd floor</i> jams, <a href='http://x.example/'>see</a>.</p>\r\n"
    html = "<html><body>" + chunk * (size // len(chunk)) + "</body></html>\r\n"
    return (_head("html", "Printer") + "Content-Type: text/html; charset=utf-8\r\n\r\n" + html).encode()


def many_files(count: int = 900, name_chars: int = 28_000) -> bytes:
    """Files with long names: each is listed in the acknowledgement when over the size limit."""
    boundary = "b0undary"
    parts = "".join(
        f"--{boundary}\r\nContent-Type: application/pdf\r\n"
        f'Content-Disposition: attachment; filename="{i:04d}-{"report " * (name_chars // 7)}.pdf"\r\n'
        f"Content-Transfer-Encoding: base64\r\n\r\nJQ==\r\n"
        for i in range(count)
    )
    return (
        _head("files", "Reports")
        + f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'
        + f"--{boundary}\r\nContent-Type: text/plain\r\n\r\nThe reports.\r\n"
        + parts
        + f"--{boundary}--\r\n"
    ).encode()


def much_text(size: int = 45_000_000) -> bytes:
    line = "The printer on the third floor jams on every second page, please help.\r\n"
    body = line * (size // len(line))
    return (_head("text", "Printer") + "Content-Type: text/plain; charset=utf-8\r\n\r\n" + body).encode()


def large_file(size: int = 34_000_000) -> bytes:
    data = base64.encodebytes(os.urandom(size)).decode().replace("\n", "\r\n")
    return (
        _head("file", "Log file")
        + 'Content-Type: multipart/mixed; boundary="b0undary"\r\n\r\n'
        + "--b0undary\r\nContent-Type: text/plain\r\n\r\nThe log is attached.\r\n"
        + '--b0undary\r\nContent-Type: application/octet-stream; name="log.bin"\r\n'
        + "Content-Transfer-Encoding: base64\r\n\r\n"
        + data
        + "--b0undary--\r\n"
    ).encode()


def many_headers(count: int = 2_000_000) -> bytes:
    fields = "".join(f"X-H{i}: v\r\n" for i in range(count))
    return (_head("fields", "Many fields", fields) + "Content-Type: text/plain\r\n\r\nThe printer jams.\r\n").encode()


def many_part_headers(count: int = 6_000_000) -> bytes:
    """One MIME part with millions of short header fields: the stdlib holds them all until the
    part's blank line (10,000,000 of them cost 29 s and 1.5 GB)."""
    fields = b"X: y\r\n" * count
    return (
        _head("partfields", "Many part fields", 'Content-Type: multipart/mixed; boundary="b0undary"\r\n').encode()
        + b"\r\n--b0undary\r\nContent-Type: text/plain\r\n"
        + fields
        + b"\r\nThe printer jams.\r\n--b0undary--\r\n"
    )


# Each mail, and the bound that cuts it (named in its trace), if any.
HEAVY: dict[str, tuple[Callable[[], bytes], str | None]] = {
    "60,000 addresses in Cc": (many_cc, "limits.max_participants_per_mail"),
    "0.8 MB Subject of RFC 2047 words": (encoded_subject, "parsing.max_header_bytes"),
    "100,000 tiny MIME parts": (mime_parts, "parsing.max_mime_parts"),
    "10 MB Subject": (long_subject, "parsing.max_header_bytes"),
    "12 MB of HTML": (much_html, "parsing.max_html_bytes"),
    "900 files with 28 KB names": (many_files, "parsing.max_header_total_bytes"),
    "2,000,000 header fields (29 MB)": (many_headers, "parsing.max_header_total_bytes"),
    "6,000,000 header fields in one part (36 MB)": (many_part_headers, "parsing.max_header_total_bytes"),
    "45 MB of plain text": (much_text, "parsing.max_text_chars"),
    "34 MB file (46 MB in base64)": (large_file, None),
}
