"""What proves a mail comes from the person its From names: a token issued to them, or the
trusted MTA's DMARC pass / DKIM signature of the From's own domain. Everything else proves nothing."""

from __future__ import annotations

import pytest

from mailgate.app import App
from mailgate.ingest.pipeline import ingest
from tests.conftest import make_settings
from tests.mails import mail
from tests.test_ingest import new_ticket, outbox
from tests.test_threading_rules import says

MX = "mx.example.com"


@pytest.fixture
def app(tmp_path, db_url, clock):
    settings = make_settings(
        tmp_path,
        db_url,
        acknowledgements={"trusted_authserv_ids": [MX]},
        staff=[
            {
                "address": "alice@example.com",
                "aliases": ["a.jones@corp.example.net"],
                "name": "Alice",
                "teams": ["network"],
            },
            {"address": "dispatch@example.com", "name": "Dispatcher", "role": "dispatcher"},
        ],
    )
    application = App.build(settings, clock=clock)
    yield application
    application.close()


def proven(result) -> bool:
    return says(result, "proven:")


def from_alice(
    app: App, authentication_results: list[str], sender: str = "Alice <alice@example.com>", signed_by: str = ""
) -> object:
    headers = {"DKIM-Signature": f"v=1; a=rsa-sha256; d={signed_by}; s=s1; h=from; bh=AA; b=BB"} if signed_by else {}
    raw = mail(sender=sender, subject="VPN down", headers=headers)
    above = "".join(f"Authentication-Results: {v}\r\n" for v in authentication_results)
    return ingest(app, above.encode() + raw, "smtp")


def test_a_from_header_alone_proves_nothing(app: App) -> None:
    assert not proven(from_alice(app, []))


def test_dmarc_pass_of_the_trusted_mta_for_the_from_domain_proves_it(app: App) -> None:
    assert proven(from_alice(app, [f"{MX}; dmarc=pass header.from=example.com"]))


def test_dkim_pass_of_the_from_domain_proves_it_but_of_another_domain_does_not(app: App) -> None:
    assert proven(from_alice(app, [f"{MX}; dkim=pass header.d=example.com"], signed_by="example.com"))
    assert not proven(from_alice(app, [f"{MX}; dkim=pass header.d=attacker.example"], signed_by="attacker.example"))
    # A verdict is about a signature in the mail: without one of example.com, someone else wrote it.
    assert not proven(from_alice(app, [f"{MX}; dkim=pass header.d=example.com"]))


def test_an_untrusted_authserv_id_or_a_dmarc_fail_proves_nothing(app: App) -> None:
    assert not proven(from_alice(app, ["mx.attacker.example; dmarc=pass header.from=example.com"]))
    assert not proven(
        from_alice(app, [f"{MX}; dmarc=fail header.from=example.com", f"{MX}; dkim=pass header.d=example.com"])
    )


def test_a_pass_the_sender_wrote_below_the_trusted_mtas_received_proves_nothing(app: App) -> None:
    raw = mail(sender="Alice <alice@example.com>", subject="VPN down")
    forged = (
        f"Authentication-Results: {MX}; dmarc=none\r\n"
        "Received: from outside.example (outside.example [192.0.2.1]) by mx.example.com\r\n"
        f"Authentication-Results: {MX}; dmarc=pass header.from=example.com\r\n"
    ).encode()
    assert not proven(ingest(app, forged + raw, "smtp"))


def test_a_token_proves_only_the_person_it_was_issued_to(app: App) -> None:
    number = new_ticket(app)
    notice = outbox(app, "dispatcher_new")[0]
    reply_to = notice.headers["Reply-To"].split("<")[1].rstrip(">")
    tag = f"[HD #{number}]"
    by_dispatcher = ingest(app, mail(sender="dispatch@example.com", to=reply_to, subject=f"Re: {tag}"), "smtp")
    assert says(by_dispatcher, "proven: reply token issued to dispatch@example.com")
    by_alice = ingest(app, mail(sender="alice@example.com", to=reply_to, subject=f"Re: {tag}"), "smtp")
    assert not proven(by_alice)


def test_an_alias_is_the_staff_member_and_is_proven_by_its_own_domain(app: App) -> None:
    result = from_alice(
        app, [f"{MX}; dmarc=pass header.from=corp.example.net"], sender="Alice <a.jones@corp.example.net>"
    )
    assert says(result, "from alice@example.com (agent)")
    assert proven(result)
