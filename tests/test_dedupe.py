"""Step dedupe with Message-IDs as monitoring scripts and ticket systems make them."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from mailgate.app import App
from mailgate.ingest.pipeline import ingest
from mailgate.models import Message
from tests.mails import mail


@pytest.mark.parametrize("message_id", ["<fixed@monitor.example>", "<alert#42@monitor.example>", "<a#b#c@x.example>"])
def test_a_different_mail_reusing_a_message_id_is_kept_whatever_the_id_holds(app: App, message_id: str) -> None:
    first = mail(message_id=message_id, subject="disk full on srv1")
    other = mail(message_id=message_id, sender="ops@example.com", subject="disk full on srv2")
    third = mail(message_id=message_id, sender="ops@example.com", subject="disk full on srv3")
    assert [ingest(app, raw, "smtp").outcome for raw in (first, other, third)] == ["new_ticket"] * 3
    # Each one's own redelivery is still a copy.
    assert [ingest(app, raw, "smtp").outcome for raw in (first, other, third)] == ["duplicate"] * 3
    with app.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Message)) == 3
