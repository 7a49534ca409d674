"""Mail that lies about its charset, or says none: what the help desk reads in `tickets show`.

Each mail is built as bytes with the fault real clients produce (issue 10, "Real-world mail that
is not in the corpus"), ingested on SQLite and PostgreSQL, and read back as the CLI shows it.
"""

from __future__ import annotations

import base64
import re

import pytest
from sqlalchemy import select

from mailgate import views
from mailgate.app import App
from mailgate.ingest.charsets import decode_bytes
from mailgate.ingest.pipeline import ingest
from mailgate.models import Message, Ticket

# GB2312 has no 镕 (Zhu Rongji's name): mail labelled gb2312 carries GBK bytes for it.
CHINESE = "朱镕基的报告已经收到，请查收附件。"
# 똠 is not in KS X 1001 (EUC-KR); Windows-949 (what ks_c_5601-1987 mail is) has it.
KOREAN = "똠방각하 보고서를 보내드립니다"
RUSSIAN = "Здравствуйте! Принтер на третьем этаже снова не печатает."
GERMAN = "Grüße aus Köln, der Drucker im 3. Stock ist kaputt."


def raw_mail(headers: str | bytes, body: bytes = b"See subject.\r\n", content_type: bytes = b"") -> bytes:
    head = (headers.encode() if isinstance(headers, str) else headers).rstrip(b"\r\n")
    if not content_type:
        content_type = b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit"
    return (
        b"From: Dana Smith <dana@example.com>\r\nTo: support@example.com\r\n"
        + head
        + b"\r\nMessage-ID: <charset-test@client.example.org>\r\nMIME-Version: 1.0\r\n"
        + content_type
        + b"\r\n\r\n"
        + body
    )


def text_part(label: str | None, cte: str = "8bit") -> bytes:
    charset = f"; charset={label}" if label else ""
    return f"Content-Type: text/plain{charset}\r\nContent-Transfer-Encoding: {cte}".encode()


def encoded_word(charset: str, text: bytes) -> str:
    return f"=?{charset}?B?{base64.b64encode(text).decode()}?="


def _percent(data: bytes) -> bytes:
    """RFC 2231's %XX for every byte."""
    return "".join(f"%{b:02X}" for b in data).encode()


def shown(app: App, raw: bytes) -> str:
    """`mailgate tickets show N` of the ticket the mail opened."""
    result = ingest(app, raw, "smtp")
    assert result.outcome == "new_ticket", result.trace
    with app.sessions() as s:
        return "\n".join(views.ticket_thread(views.ticket_detail(s, "HD", result.ticket_number)))


def stored(app: App) -> tuple[Ticket, Message]:
    with app.sessions() as s:
        return s.scalars(select(Ticket)).one(), s.scalars(select(Message)).one()


def test_gb2312_subject_with_gbk_bytes_is_read_as_gb18030(app: App) -> None:
    raw = raw_mail(f"Subject: {encoded_word('gb2312', CHINESE.encode('gbk'))}\r\n")
    assert f"HD #1: {CHINESE}" in shown(app, raw)


def test_gb2312_body_with_gbk_bytes_is_readable(app: App) -> None:
    raw = raw_mail("Subject: report\r\n", CHINESE.encode("gbk"), text_part("gb2312"))
    assert CHINESE in shown(app, raw)


def test_ks_c_5601_subject_is_read_as_windows_949(app: App) -> None:
    raw = raw_mail(f"Subject: {encoded_word('ks_c_5601-1987', KOREAN.encode('cp949'))}\r\n")
    assert f"HD #1: {KOREAN}" in shown(app, raw)


def test_utf8_body_labelled_iso_8859_1_is_repaired(app: App) -> None:
    raw = raw_mail("Subject: printer\r\n", GERMAN.encode(), text_part("iso-8859-1"))
    text = shown(app, raw)
    assert GERMAN in text and "Ã" not in text


def test_undeclared_windows_1251_body_and_subject_are_not_read_as_windows_1252(app: App) -> None:
    subject = "Принтер не печатает"
    raw = raw_mail(b"Subject: " + subject.encode("cp1251") + b"\r\n", RUSSIAN.encode("cp1251"), text_part(None))
    text = shown(app, raw)
    assert f"HD #1: {subject}" in text and RUSSIAN in text


def test_unknown_charset_name_falls_back_instead_of_giving_replacement_characters(app: App) -> None:
    raw = raw_mail("Subject: printer\r\n", GERMAN.encode("cp1252"), text_part("x-mac-nonsense-8"))
    text = shown(app, raw)
    assert GERMAN in text and "\ufffd" not in text


def test_eight_bit_text_under_a_us_ascii_label_is_readable(app: App) -> None:
    raw = raw_mail("Subject: printer\r\n", GERMAN.encode("cp1252"), text_part("us-ascii"))
    text = shown(app, raw)
    assert GERMAN in text and "\ufffd" not in text


def test_iso_2022_jp_seven_bit_body_is_decoded(app: App) -> None:
    japanese = "お世話になっております。請求書を添付いたします。"
    raw = raw_mail("Subject: invoice\r\n", japanese.encode("iso2022_jp"), text_part("iso-2022-jp", "7bit"))
    assert japanese in shown(app, raw)


def test_raw_8bit_sender_name_and_subject_are_read_utf8_first_then_as_the_body_declares(app: App) -> None:
    raw = (
        "From: Jürgen Müller <jm@example.com>\r\nTo: support@example.com\r\nSubject: Drucker im 3. Stock\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=windows-1252\r\n\r\nKaputt.\r\n"
    ).encode("cp1252")
    text = shown(app, raw)
    assert "Jürgen Müller <jm@example.com>" in text
    _, message = stored(app)
    assert message.from_name == "Jürgen Müller"


def test_raw_utf8_subject_beside_an_encoded_word_keeps_its_letters(app: App) -> None:
    raw = raw_mail("Subject: Принтер =?utf-8?q?HP_4050?=\r\n".encode())
    assert "HD #1: Принтер HP 4050" in shown(app, raw)


def test_raw_koi8_subject_is_read_in_the_charset_the_body_declares(app: App) -> None:
    subject = "Отчёт"  # too short for any detector: the body's label decides
    raw = raw_mail(b"Subject: " + subject.encode("koi8-r") + b"\r\n", RUSSIAN.encode("koi8-r"), text_part("koi8-r"))
    assert f"HD #1: {subject}" in shown(app, raw)


@pytest.mark.parametrize(
    ("disposition", "expected"),
    [
        ('attachment; filename="Prüfbericht März.pdf"'.encode(), "Prüfbericht März.pdf"),
        ('attachment; filename="Отчёт за квартал.pdf"'.encode(), "Отчёт за квартал.pdf"),
        (
            b"attachment; filename*=gb2312''" + "".join(f"%{b:02X}" for b in "报告镕.pdf".encode("gbk")).encode(),
            "报告镕.pdf",
        ),
    ],
    ids=["raw-utf8-latin", "raw-utf8-cyrillic", "rfc2231-gb2312-with-gbk"],
)
def test_attachment_file_names_are_decoded(app: App, disposition: bytes, expected: str) -> None:
    body = (
        b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nThe report.\r\n"
        b"--b\r\nContent-Type: application/pdf\r\nContent-Disposition: " + disposition + b"\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQ=\r\n--b--\r\n"
    )
    raw = raw_mail("Subject: report\r\n", body, b'Content-Type: multipart/mixed; boundary="b"')
    assert re.search(rf"\[attachment \d+\] {re.escape(expected)} \(application/pdf", shown(app, raw))


@pytest.mark.parametrize(
    ("text", "charset"),
    [
        ("Réunion à 10h", "cp1252"),
        ("déjà vu", "cp1252"),
        ("Zażółć gęślą jaźń, proszę o pomoc", "cp1250"),
        ("Отчёт", "cp1251"),
        ("Καλημέρα σας, ευχαριστώ", "cp1253"),
        ("Günaydın, teşekkür ederim", "cp1254"),
        ("お世話になっております。", "shift_jis"),
        ("您好，附件是本月的報告", "big5"),
        ("안녕하세요 감사합니다", "cp949"),
    ],
)
def test_undeclared_short_texts_are_read_in_their_own_charset(text: str, charset: str) -> None:
    """The detector's guess is checked: French is not read as Cyrillic nor Hebrew, Chinese not as KOI8."""
    assert decode_bytes(text.encode(charset), None) == text


def test_utf8_with_a_stray_latin1_byte_stays_utf8() -> None:
    data = "Grüße, Jörg — ".encode() + "signé".encode("cp1252")
    assert decode_bytes(data, "utf-8") == "Grüße, Jörg — signé"


def test_iso_8859_1_label_over_windows_1252_quotes_and_euro_is_read_as_windows_1252(app: App) -> None:
    text = "“Der Toner” kostet 45 € – bitte bestellen."
    raw = raw_mail("Subject: toner\r\n", text.encode("cp1252"), text_part("iso-8859-1"))
    assert text in shown(app, raw)
