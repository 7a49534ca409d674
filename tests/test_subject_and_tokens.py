"""Pure logic: subject tags and signed reply tokens."""

from __future__ import annotations

import pytest

from mailgate import subject, tokens


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("[HD #12] printer", 12),
        ("Re: [HD #12] printer", 12),
        ("AW: WG: [hd#12]  printer", 12),
        ("Re[2]: [ HD # 12 ] printer", 12),
        ("SV: Fwd:[HD 7]y", 7),
        ("RE: Réf. [HD #99999] x", 99999),
        ("printer #12", None),
        ("[OTHER #3] x", None),
        ("[HDX #3] x", None),
        ("", None),
    ],
)
def test_find_tag(text: str, number: int | None) -> None:
    assert subject.find_tag("HD", text) == number


@pytest.mark.parametrize(
    ("text", "title"),
    [
        ("Re: AW: [HD #1] Printer jams", "Printer jams"),
        ("Fwd: Re[3]: VPN", "VPN"),
        ("Réponse: plain", "Réponse: plain"),
        ("   spaced    out  ", "spaced out"),
    ],
)
def test_clean_subject(text: str, title: str) -> None:
    assert subject.clean_subject("HD", text) == title


def test_token_round_trip_and_tamper() -> None:
    secret = b"k"
    token = tokens.make_token(secret, 42, 7)
    assert tokens.verify(secret, token) == tokens.ReplyToken(42, 7)
    assert tokens.verify(secret, token.upper()) == tokens.ReplyToken(42, 7)  # case-folding MTAs
    assert tokens.verify(secret, token.replace("42-", "43-", 1)) is None
    assert tokens.verify(b"other", token) is None
    assert tokens.verify(secret, "42-7-" + "a" * 16) is None


def test_tokens_are_found_in_addresses_and_message_ids() -> None:
    token = tokens.make_token(b"k", 5, 1)
    mid = tokens.message_id(token, "ack", "example.com")
    assert tokens.find_tokens(mid) == [token]
    assert tokens.find_tokens(tokens.plus_address("support@example.com", token)) == [token]
