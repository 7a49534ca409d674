"""The text a reply adds to its ticket: what the person wrote, without the history their client
quoted below it, in whatever language the client writes its attribution or header block."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from mailgate.app import App
from mailgate.ingest.pipeline import ingest
from mailgate.ingest.quotes import extract_reply
from mailgate.models import Message
from tests.mails import mail
from tests.test_ingest import new_ticket

ANSWER = "The printer works again, thank you."
QUOTE = "> Please restart the printer and tell us.\n> \n> IT Help Desk\n"

HISTORIES = {
    "russian": "15.03.2026, 10:12, Иван Петров <ivan@example.com> написал:\n" + QUOTE,
    "russian_female": "Пн, 15 мар. 2026 г. в 10:12, Мария <maria@example.com> написала:\n" + QUOTE,
    "german_outlook_without_separator": (
        "Von: IT Help Desk <support@example.com>\nGesendet: Montag, 16. März 2026 10:12\n"
        "An: Dana Smith <dana@example.com>\nBetreff: [HD #1] Drucker\n\nBitte starten Sie den Drucker neu.\n"
    ),
    "french": "Le lun. 16 mars 2026 à 10:12, IT Help Desk <support@example.com> a écrit :\n" + QUOTE,
    "french_outlook": (
        "De : IT Help Desk <support@example.com>\nEnvoyé : lundi 16 mars 2026 10:12\nÀ : Dana\n"
        "Objet : [HD #1] Imprimante\n\nVeuillez redémarrer l'imprimante.\n"
    ),
    "spanish": "El lun, 16 mar 2026 a las 10:12, IT Help Desk (<support@example.com>) escribió:\n" + QUOTE,
    "dutch": "Op ma 16 mrt. 2026 om 10:12 schreef IT Help Desk <support@example.com>:\n" + QUOTE,
    "polish": "W dniu 16.03.2026 o 10:12, IT Help Desk pisze:\n" + QUOTE.replace(">", ">"),
    "polish_napisal": "W dniu pon., 16 mar 2026 o 10:12 IT Help Desk <support@example.com> napisał(a):\n" + QUOTE,
    "wrapped_attribution": "Am Mo., 16. März 2026 um 10:12 Uhr schrieb IT Help Desk\n<support@example.com>:\n" + QUOTE,
    "original_message_german": (
        "-----Ursprüngliche Nachricht-----\nVon: IT Help Desk\nGesendet: Montag, 16. März 2026 10:12\n"
        "Betreff: Drucker\n\nBitte neu starten.\n"
    ),
}


@pytest.mark.parametrize("history", sorted(HISTORIES), ids=str)
def test_history_below_the_answer_is_removed(history: str) -> None:
    text = f"{ANSWER}\n\nDana\n\n{HISTORIES[history]}"
    assert extract_reply(text).split() == f"{ANSWER}\n\nDana".split()


def test_html_reply_converted_to_text_loses_the_rule_and_the_header_block(app: App) -> None:
    number = new_ticket(app)
    html = (
        "<div>The printer works again, thank you.</div><div>Dana</div><hr>"
        "<div><b>From:</b> IT Help Desk &lt;support@example.com&gt;<br><b>Sent:</b> Monday, March 16, 2026 10:12"
        "<br><b>To:</b> Dana Smith<br><b>Subject:</b> [HD #1] Printer</div><p>Please restart the printer.</p>"
    )
    reply = mail(subject=f"Re: [HD #{number}] Printer on 3rd floor jams", body=None, html=html)
    result = ingest(app, reply, "smtp")
    assert result.outcome == "reply", result.trace
    with app.sessions() as s:
        stored = s.scalars(select(Message.text_new).order_by(Message.id)).all()[-1]
    assert "Please restart" not in stored and "* * *" not in stored and "From:" not in stored
    assert "The printer works again" in stored


def test_an_answer_below_the_quote_keeps_the_quote_it_answers() -> None:
    text = "> Is the printer on the 3rd floor?\n\nYes, next to the kitchen.\n"
    assert "Is the printer on the 3rd floor?" in extract_reply(text)
    assert "Yes, next to the kitchen." in extract_reply(text)


@pytest.mark.parametrize(
    "marker",
    [
        "---------- Forwarded message ---------",
        "\\---------- Forwarded message ----------",  # as html2text escapes it
        "-------- Пересылаемое сообщение --------",
        "> Begin forwarded message:",
    ],
)
def test_a_forward_is_kept_whole(marker: str) -> None:
    text = f"See below.\n\n{marker}\nFrom: Boss <boss@example.com>\nSubject: VPN\n\nThe VPN drops every hour.\n"
    assert "The VPN drops every hour." in extract_reply(text)


def test_a_line_that_merely_mentions_a_sender_is_kept() -> None:
    text = "From: the 3rd floor, the printer says 'Error 42'.\nSubject: is it the toner?\n"
    assert extract_reply(text).split() == text.split()
