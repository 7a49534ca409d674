"""A From header proves nothing: command mail not authenticated as its sender changes nothing,
is recorded with the verdict, and the staff member's own address is told how to send commands."""

from __future__ import annotations

import email

import pytest

from mailgate.app import App
from mailgate.ingest.authentication import dkim_tags, signing_domains
from mailgate.ingest.pipeline import IngestResult, ingest
from mailgate.models import Status
from tests.desk import MX, command, desk, events, open_ticket, receipt, reply_address, rows, ticket
from tests.mails import mail


@pytest.fixture
def app(tmp_path, db_url, clock):
    application = desk(tmp_path, db_url, clock)
    yield application
    application.close()


def _unchanged(app: App, number: int) -> None:
    t = ticket(app, number)
    assert (t.assignee, t.priority, t.status) == (None, "normal", Status.NEW)


def _explained(app: App, to: str = "dispatch@example.com") -> None:
    row = receipt(app, to, "command_unproven")
    assert row.recipients == [to]
    assert "nothing shows that you sent" in " ".join(row.body.split())
    assert "reply to a mail" in row.body


FORGERIES = {
    "no token, no Authentication-Results": [],
    "dkim=fail": [f"{MX}; dkim=fail header.d=example.com"],
    "an untrusted authserv-id": ["mx.attacker.example; dmarc=pass header.from=example.com"],
    "dkim=pass for another domain": [f"{MX}; dkim=pass header.d=attacker.example"],
}


@pytest.mark.parametrize("results", FORGERIES.values(), ids=FORGERIES.keys())
def test_a_forged_command_mail_changes_nothing_and_the_staff_member_is_told(app: App, results: list[str]) -> None:
    number = open_ticket(app)
    result = command(app, number, "#assign alice\n#priority high", proof="none", authentication_results=results)

    assert result.outcome == "refused"
    _unchanged(app, number)
    _explained(app)
    (refused,) = events(app, number, "commands_refused")
    assert "not authenticated as dispatch@example.com" in refused.new
    assert not rows(app, "command_receipt")


def test_a_pass_the_sender_wrote_below_the_trusted_header_proves_nothing(app: App) -> None:
    number = open_ticket(app)
    raw = mail(sender="dispatch@example.com", subject=f"Re: [HD #{number}]", body="#assign alice\n")
    forged = (
        f"Authentication-Results: {MX}; dmarc=none\r\n"
        "Received: from outside.example (outside.example [192.0.2.1]) by mx.example.com\r\n"
        f"Authentication-Results: {MX}; dmarc=pass header.from=example.com\r\n"
    ).encode()
    assert ingest(app, forged + raw, "smtp").outcome == "refused"
    _unchanged(app, number)
    _explained(app)


def test_a_token_issued_to_alice_proves_nothing_from_bobs_address(app: App) -> None:
    number = open_ticket(app)
    command(app, number, "#help", sender="alice@example.com")  # the desk answers alice: her token
    alices = reply_address(receipt(app, "alice@example.com", "command_digest"))
    raw = mail(sender="bob@example.com", to=alices, subject=f"Re: [HD #{number}]", body="#assign bob\n")

    assert ingest(app, raw, "smtp").outcome == "refused"
    _unchanged(app, number)
    _explained(app, "bob@example.com")


def test_the_explanation_goes_to_the_directory_address_never_to_reply_to(app: App) -> None:
    number = open_ticket(app)
    raw = mail(
        sender="Dispatcher <dispatch@example.com>",
        subject=f"Re: [HD #{number}]",
        body="#assign alice\n",
        headers={"Reply-To": "attacker@evil.example"},
    )
    assert ingest(app, raw, "smtp").outcome == "refused"
    assert [r.recipients for r in rows(app, "command_unproven")] == [["dispatch@example.com"]]


def test_explanations_are_rate_limited_like_acknowledgements(app: App) -> None:
    number = open_ticket(app)
    for _ in range(5):
        assert command(app, number, "#priority high", proof="none").outcome == "refused"
    assert len(rows(app, "command_unproven")) == 3  # limits.acks_per_sender in the test settings
    assert len(events(app, number, "commands_refused")) == 5  # each one is on the record
    _unchanged(app, number)


def test_the_same_mail_with_a_trusted_pass_is_applied(app: App) -> None:
    number = open_ticket(app)
    result = command(app, number, "#assign alice\n#priority high", proof="dmarc")
    assert result.outcome == "reply"
    assert ticket(app, number).assignee.address == "alice@example.com"


def test_an_unproven_requester_close_changes_nothing_and_the_requester_is_told(app: App) -> None:
    from tests.desk import REQUESTER

    number = open_ticket(app)
    assert command(app, number, "#close", sender=REQUESTER, proof="none").outcome == "refused"
    assert ticket(app, number).status == Status.NEW
    _explained(app, REQUESTER)


def test_a_forgery_from_an_alias_is_explained_at_the_staff_members_address(tmp_path, db_url, clock) -> None:
    from tests.desk import STAFF

    alias = "a.jones@corp.example.net"
    staff = [{**m, "aliases": [alias]} if m["address"] == "alice@example.com" else m for m in STAFF]
    app = desk(tmp_path, db_url, clock, staff=staff)
    try:
        number = open_ticket(app)
        assert command(app, number, "#priority high", sender=alias, proof="none").outcome == "refused"
        _explained(app, "alice@example.com")
        # Proven by its own domain, the alias is alice, and her command is applied.
        command(app, number, "#help", sender=alias)
        assert receipt(app, "alice@example.com", "command_digest")
    finally:
        app.close()


# -- a DKIM verdict is about a signature in the mail ----------------------------------------------


def _signature(domain: str) -> str:
    """A DKIM-Signature field as a signer writes it: folded, the d= tag in the middle."""
    return (
        f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={domain};\r\n"
        " s=s1; t=1795424400; h=from:to:subject:date:message-id;\r\n"
        " bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\r\n"
        " b=dGVzdCBzaWduYXR1cmUgb2YgYSB0ZXN0IG1haWwgdGhhdCB3ZSBkbyBub3QgdmVyaWZ5\r\n"
    )


def _signed_command(
    app: App, number: int, results: list[str], signed_by: list[str], fields: tuple[str, ...] = ()
) -> IngestResult:
    """#assign from the dispatcher through our MX: its Received, then its verdicts (a milter
    writes them below that Received), then the signer's DKIM-Signature fields (and `fields`,
    as written) and the mail."""
    raw = mail(sender="dispatch@example.com", subject=f"Re: [HD #{number}] Printer", body="#assign alice\n")
    head = f"Received: from sender.example (sender.example [192.0.2.66]) by {MX}\r\n"
    head += "".join(f"Authentication-Results: {r}\r\n" for r in results)
    head += "".join(_signature(d) for d in signed_by) + "".join(f"{f}\r\n" for f in fields)
    return ingest(app, head.encode() + raw, "smtp")


DKIM_FORGERIES = {
    # The attacker signed with his own domain; the MTA passed that, and he wrote a pass of
    # the staff domain (no DMARC record, so no DMARC verdict says otherwise) right below it.
    "a pass of the staff domain beside the MTA's pass of the signer's": (
        [f"{MX}; dkim=pass header.d=attacker.example", f"{MX}; dkim=pass header.d=example.com"],
        ["attacker.example"],
    ),
    "a pass of the staff domain in the MTA's own field": (
        [f"{MX}; dkim=pass header.d=attacker.example; dkim=pass header.d=Example.COM"],
        ["attacker.example"],
    ),
    "a pass of the staff domain and no signature of it": ([f"{MX}; dkim=pass header.d=example.com"], []),
    # One signature of example.com (a copy of a real one, or garbage), two verdicts about it.
    "a second pass for the one signature": (
        [f"{MX}; dkim=fail header.d=example.com", f"{MX}; dkim=pass header.d=example.com"],
        ["example.com"],
    ),
    # Gmail names a signature by header.i alone: its fail of the copied signature is about
    # example.com's one signature as much as a verdict with header.d would be.
    "a pass beside the MTA's fail naming the signature by header.i": (
        [
            f"{MX}; dkim=fail header.i=@example.com header.s=s1 header.b=dGVzdCBz",
            f"{MX}; dkim=pass header.d=example.com",
        ],
        ["example.com"],
    ),
}


@pytest.mark.parametrize(("results", "signed_by"), DKIM_FORGERIES.values(), ids=DKIM_FORGERIES.keys())
def test_a_dkim_pass_no_signature_in_the_mail_accounts_for_proves_nothing(
    app: App, results: list[str], signed_by: list[str]
) -> None:
    number = open_ticket(app)
    result = _signed_command(app, number, results, signed_by)

    assert result.outcome == "refused"
    _unchanged(app, number)
    _explained(app)


@pytest.mark.parametrize(
    "field",
    [
        "DKIM-Signature: d=example.com",
        "DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=s1; h=from; bh=47DEQpj8HBSa; b=",
        "DKIM-Signature: v=2; a=rsa-sha256; d=example.com; s=s1; h=from; bh=47DEQpj8HBSa; b=dGVzdA==",
    ],
    ids=["only d=", "an empty b=", "version 2"],
)
def test_a_field_no_verifier_takes_for_a_signature_accounts_for_no_pass(app: App, field: str) -> None:
    """The forger adds a DKIM-Signature field of the staff domain that lacks what RFC 6376
    section 3.5 requires: a verifier skips it (rspamd reports nothing for a signature it cannot
    parse), so the pass the forger wrote of that domain is the only verdict about it."""
    number = open_ticket(app)
    results = [f"{MX}; dkim=pass header.d=attacker.example", f"{MX}; dkim=pass header.d=example.com"]
    result = _signed_command(app, number, results, ["attacker.example"], (field,))

    assert result.outcome == "refused"
    _unchanged(app, number)


GENUINE = {
    "signed by the staff domain": ([f"{MX}; dkim=pass header.d=example.com"], ["example.com"]),
    "signed by the staff domain and its mail provider": (
        [f"{MX}; dkim=pass header.d=example.com; dkim=pass header.d=mcsv.example"],
        ["example.com", "mcsv.example"],
    ),
    # Microsoft writes the From's domain as header.d of dkim=none: no signature to account for.
    "unsigned, passed by DMARC through SPF (Microsoft 365)": (
        [
            f"{MX}; spf=pass (sender IP is 192.0.2.66) smtp.mailfrom=example.com; dkim=none (message not signed)"
            " header.d=example.com;dmarc=pass action=none header.from=example.com;compauth=pass reason=100"
        ],
        [],
    ),
    # Gmail names the signature by header.i alone, here a subdomain of its d=.
    "named by header.i": (
        [f"{MX}; dkim=pass header.i=@mail.example.com header.s=s1; dmarc=pass header.from=example.com"],
        ["example.com"],
    ),
    "one verdict per field, the provider's first": (
        [f"{MX}; dkim=pass header.d=mcsv.example", f"{MX}; dkim=pass header.d=example.com"],
        ["mcsv.example", "example.com"],
    ),
}


@pytest.mark.parametrize(("results", "signed_by"), GENUINE.values(), ids=GENUINE.keys())
def test_genuine_verdicts_on_the_mails_own_signatures_prove_the_staff_member(
    app: App, results: list[str], signed_by: list[str]
) -> None:
    number = open_ticket(app)
    result = _signed_command(app, number, results, signed_by)

    assert result.outcome == "reply", result.trace
    assert ticket(app, number).assignee.address == "alice@example.com"


def test_the_dkim_tag_list_is_read_as_rfc_6376_writes_it() -> None:
    folded = "v=1; a=rsa-sha256;\r\n\td = Example.COM. ;\r\n s=s1; b=abc\r\n def;"
    assert dkim_tags(folded) == {"v": "1", "a": "rsa-sha256", "d": "Example.COM.", "s": "s1", "b": "abc\r\n def"}
    assert dkim_tags("v=1; d=example.com; d=attacker.example") is None  # a tag twice: no tag list
    assert dkim_tags("v=1;; d=example.com") is None  # an empty tag-spec
    assert dkim_tags("v=1; d example.com") is None  # no "="
    assert dkim_tags("v=1; 1d=example.com") is None  # not a tag name
    assert dkim_tags("") == {}


def test_only_a_readable_signature_with_a_domain_is_a_signature_of_it() -> None:
    def domains(*fields: str) -> dict[str, int]:
        raw = "".join(f"DKIM-Signature: {f}\r\n" for f in fields) + "From: a@example.com\r\n\r\nbody\r\n"
        return dict(signing_domains(email.message_from_string(raw)))

    tags = "a=rsa-sha256; h=from; bh=aGFzaA==; b=c2lnbg=="
    assert domains(f"v=1; {tags};\r\n d = Example.COM. ; s=s1") == {"example.com": 1}
    assert domains(f"v=1; {tags}; s=s1") == {}  # no d=
    assert domains(f"v=1; {tags}; d=; s=s1") == {}  # an empty d=
    assert domains(f"v=1; {tags}; D=example.com; s=s1") == {}  # tag names are case-sensitive
    assert domains(f"v=1; {tags}; s=s1; d=example.com; d=attacker.example") == {}  # unreadable
    assert domains(f"v=1; {tags}; s=s1; d=exa mple.com") == {}  # no domain
    assert domains("v=1; d=example.com; s=s1; b=abc") == {}  # no a=, h=, bh=: no verifier checks it
    signed = [
        f"v=1; {tags}; d=example.com; s=s1",
        f"v=1; {tags}; d=EXAMPLE.com; s=s2",
        f"v=1; {tags}; d=mcsv.example; s=s",
    ]
    assert domains(*signed) == {"example.com": 2, "mcsv.example": 1}
