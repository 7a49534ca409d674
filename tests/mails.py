"""Build test mails the way clients send them (stdlib email, CRLF on the wire)."""

from __future__ import annotations

import itertools
from email.message import EmailMessage
from email.policy import SMTP

_counter = itertools.count(1)


def mail(
    *,
    sender: str = "Dana Smith <dana@example.com>",
    to: str = "support@example.com",
    subject: str = "Printer on 3rd floor jams",
    body: str = "The printer on the 3rd floor jams on every second page.\n",
    message_id: str | None = "auto",
    headers: dict[str, str] | None = None,
    attachments: list[tuple[str, str, bytes]] = (),
    html: str | None = None,
) -> bytes:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = "Mon, 23 Nov 2026 09:00:00 +0000"
    if message_id == "auto":
        message_id = f"<test-{next(_counter)}@client.example.org>"
    if message_id:
        msg["Message-ID"] = message_id
    for name, value in (headers or {}).items():
        msg[name] = value
    if html is not None and body is None:
        msg.set_content(html, subtype="html")
    else:
        msg.set_content(body)
        if html is not None:
            msg.add_alternative(html, subtype="html")
    for filename, ctype, data in attachments:
        maintype, subtype = ctype.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes()
