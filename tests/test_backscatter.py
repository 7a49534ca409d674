"""Backscatter: the acknowledgement goes to an unproven From, so the desk must not become a way to
mail anyone. Forged senders get at most the limit per mailbox, mail the receiving MTA marked as
spam or failed to authenticate gets none, and what an acknowledgement repeats is bounded. The
mail still becomes a ticket, and its trace says why nothing was sent."""

from __future__ import annotations

import email
import mailbox
import os
import shutil
import smtplib
from email.policy import default
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import column, func, select, table
from sqlalchemy.orm import Session

from mailgate.app import App
from mailgate.config import load_settings
from mailgate.config_file import ConfigError
from mailgate.ingest.pipeline import ingest
from mailgate.models import Message, Outbox, Quarantine, Ticket
from mailgate.quarantine import retry
from tests.conftest import START, make_settings
from tests.daemon_harness import count_rows, running_daemon, wait_for
from tests.mails import mail

MTA = "mx.example.com"
# What Postfix with OpenDKIM/OpenDMARC/SPF milters puts above the mail it received: its own
# verdicts, then its Received field; the sender's hops follow.
THEIR_HOP = b"Received: from [203.0.113.9] by relay.example.org; Mon, 23 Nov 2026 08:59:00 +0000\r\n"


def _app(tmp_path: Path, db_url: str, clock, **acknowledgements: object) -> App:
    # Three acknowledgements an hour per mailbox: the share these tests use up (the default is
    # higher, see test_ingest), and the breaker's limits on new tickets lie above it.
    settings = make_settings(tmp_path, db_url, acknowledgements=acknowledgements, limits={"acks_per_sender": 3})
    return App.build(settings, clock=clock)


@pytest.fixture
def desk(tmp_path: Path, db_url: str, clock):
    """A desk that believes the Authentication-Results of its receiving MTA, mx.example.com."""
    app = _app(tmp_path, db_url, clock, trusted_authserv_ids=[MTA])
    yield app
    app.close()


def _acks(app: App) -> list[Outbox]:
    with app.sessions() as s:
        return list(s.scalars(select(Outbox).where(Outbox.kind == "ack").order_by(Outbox.id)))


def _queued(app: App) -> int:
    with app.read_sessions() as s:
        return s.scalar(select(func.count()).select_from(Outbox).where(Outbox.state == "queued"))


def _trace(app: App, number: int) -> str:
    with app.sessions() as s:
        message = s.scalars(select(Message).join(Ticket).where(Ticket.number == number)).one()
        return "\n".join(f"{t['step']}: {t['decision']}" for t in message.trace)


def _received_by_mta(*results: str, below: bytes = b"") -> bytes:
    """Our MTA's Authentication-Results fields and Received field, then `below` (what came with the mail)."""
    fields = b"".join(f"Authentication-Results: {MTA};\r\n {r}\r\n".encode() for r in results)
    ours = f"Received: from relay.example.org ([203.0.113.9]) by {MTA}; Mon, 23 Nov 2026 09:00:00 +0000\r\n"
    return fields + ours.encode() + below


# -- forged senders ------------------------------------------------------------------------------


def test_twenty_forged_subaddresses_give_the_mailbox_at_most_the_limit(tmp_path: Path, db_url: str, clock) -> None:
    # The acknowledgement limit on its own: the circuit breaker (which would hold this flood of
    # new tickets after ten) is off here; the SMTP test below has both.
    settings = make_settings(tmp_path, db_url, breaker={"enabled": False}, limits={"acks_per_sender": 3})
    desk = App.build(settings, clock=clock)
    for n in range(1, 21):
        result = ingest(desk, mail(sender=f"victim+{n}@Example.NET", subject=f"Buy now {n}"), "smtp")
        assert result.outcome == "new_ticket"
    assert count_rows(desk, Ticket) == 20  # nothing is lost
    assert len(_acks(desk)) == desk.settings.limits.acks_per_sender == 3
    assert "no acknowledgement: rate limit reached" in _trace(desk, 20)
    desk.close()


def test_forgeries_do_not_use_up_the_real_requesters_acknowledgements(desk: App) -> None:
    """Three forged mails an hour used to silence the victim's own request. Mail whose From the
    receiving MTA proved (DMARC pass for that domain) counts only acknowledgements of its like."""
    for n in range(1, 4):
        ingest(desk, mail(sender=f"victim+{n}@example.net", subject=f"Forged {n}"), "smtp")
    assert len(_acks(desk)) == 3
    proven = _received_by_mta("spf=pass smtp.mailfrom=example.net; dmarc=pass header.from=example.net")
    result = ingest(desk, proven + mail(sender="Victim <victim@example.net>", subject="My laptop"), "smtp")
    assert _acks(desk)[-1].recipients == ["victim@example.net"] and len(_acks(desk)) == 4
    # A robot that passes DMARC is still limited: by its own acknowledgements.
    for n in range(2):
        ingest(desk, proven + mail(sender="victim@example.net", subject=f"Again {n}"), "smtp")
    assert len(_acks(desk)) == 6
    last = ingest(desk, proven + mail(sender="victim@example.net", subject="Once more"), "smtp")
    assert len(_acks(desk)) == 6 and "rate limit reached" in _trace(desk, last.ticket_number)
    assert result.outcome == last.outcome == "new_ticket"


def test_a_forged_dmarc_pass_beside_the_mtas_own_verdict_does_not_use_up_the_proven_share(desk: App) -> None:
    """Where a milter writes below our Received, a forger's field follows the MTA's with nothing
    between: his dmarc=pass beside its dmarc=none counted as proven, and three of them an hour
    silenced the victim's real, proven request."""
    ours = f"Received: from relay.example.org ([203.0.113.9]) by {MTA}; Mon, 23 Nov 2026 09:00:00 +0000\r\n"
    for n in range(1, 4):
        verdicts = [f"{MTA}; dmarc=none header.from=example.net", f"{MTA}; dmarc=pass header.from=example.net"]
        forged = ours + "".join(f"Authentication-Results: {v}\r\n" for v in verdicts)
        ingest(desk, forged.encode() + mail(sender=f"victim+{n}@example.net", subject=f"Forged {n}"), "smtp")
    assert len(_acks(desk)) == 3
    proven = _received_by_mta("dmarc=pass header.from=example.net")
    ingest(desk, proven + mail(sender="Victim <victim@example.net>", subject="My laptop"), "smtp")
    assert _acks(desk)[-1].recipients == ["victim@example.net"] and len(_acks(desk)) == 4


def test_a_dmarc_pass_for_another_domain_proves_nothing(desk: App) -> None:
    for n in range(1, 4):
        ingest(desk, mail(sender=f"victim+{n}@example.net"), "smtp")
    other = _received_by_mta("dmarc=pass header.from=attacker.example")  # it judged another From
    ingest(desk, other + mail(sender="victim@example.net"), "smtp")
    assert len(_acks(desk)) == 3


# -- spam marked by the receiving MTA ------------------------------------------------------------

SPAM_HEADERS = [
    {"X-Spam-Flag": "YES"},
    {"X-Spam-Status": "Yes, score=12.4 required=5.0 tests=BAYES_99,URIBL_BLACK autolearn=no"},
    {"X-Spam": "Yes"},
    {"X-Rspamd-Action": "add header"},
    {"X-Spamd-Result": "default: True [16.20 / 15.00]; BAYES_SPAM(5.10)[99.99%]"},
    {"X-MS-Exchange-Organization-SCL": "5"},
    {"X-Forefront-Antispam-Report": "CIP:203.0.113.9;CTRY:;LANG:en;SCL:9;SRV:;IPV:NLI;SFV:SPM;H:x;PTR:;CAT:SPM"},
    {"X-Forefront-Antispam-Report": "CIP:203.0.113.9;CTRY:;LANG:en;SCL:6;SRV:;IPV:NLI;SFV:NSPM;H:x"},
]
HAM_HEADERS = [
    {"X-Spam-Flag": "NO", "X-Spam-Status": "No, score=-0.1 required=5.0 tests=DKIM_SIGNED"},
    {"X-Spam": "No", "X-Rspamd-Action": "no action", "X-Spamd-Result": "default: False [0.40 / 15.00]"},
    {"X-MS-Exchange-Organization-SCL": "-1"},
    {"X-Forefront-Antispam-Report": "CIP:198.51.100.7;CTRY:;LANG:de;SCL:1;SRV:;IPV:NLI;SFV:NSPM;H:x"},
]


@pytest.mark.parametrize("headers", SPAM_HEADERS, ids=lambda h: next(iter(h)))
def test_mail_marked_as_spam_becomes_a_ticket_without_acknowledgement(desk: App, headers: dict[str, str]) -> None:
    result = ingest(desk, mail(headers=headers), "smtp")
    assert result.outcome == "new_ticket" and _acks(desk) == []
    with desk.sessions() as s:  # the dispatcher is told, and told that the sender was not
        notice = s.scalars(select(Outbox).where(Outbox.kind == "dispatcher_new")).one()
    assert "The sender got no acknowledgement: marked as spam by the receiving MTA" in notice.body
    assert "no acknowledgement: marked as spam" in _trace(desk, result.ticket_number)


@pytest.mark.parametrize("headers", HAM_HEADERS, ids=lambda h: next(iter(h)))
def test_a_header_saying_not_spam_is_acknowledged(desk: App, headers: dict[str, str]) -> None:
    ingest(desk, mail(headers=headers), "smtp")
    assert len(_acks(desk)) == 1


def test_the_microsoft_spam_level_threshold_is_a_setting(tmp_path: Path, db_url: str, clock) -> None:
    scl3 = {"X-MS-Exchange-Organization-SCL": "3"}
    default_desk = _app(tmp_path / "a", db_url, clock)
    ingest(default_desk, mail(headers=scl3), "smtp")
    assert len(_acks(default_desk)) == 1  # below Microsoft's own threshold of 5
    default_desk.close()
    strict = _app(tmp_path / "b", db_url, clock, spam_scl_threshold=3)
    ingest(strict, mail(headers=scl3), "smtp")
    assert len(_acks(strict)) == 1  # the first desk's ack, in the same database
    strict.close()


def test_spam_can_go_to_quarantine_and_a_retry_makes_it_a_ticket_without_ack(
    tmp_path: Path, db_url: str, clock
) -> None:
    app = _app(tmp_path, db_url, clock, spam="quarantine")
    result = ingest(app, mail(headers={"X-Spam-Flag": "YES"}), "smtp")
    assert result.outcome == "quarantined" and count_rows(app, Ticket) == 0 and _acks(app) == []
    with app.sessions() as s:
        row = s.scalars(select(Quarantine)).one()
        assert "spam" in row.reason and row.raw.startswith(b"From:")
    assert retry(app, row.id) == "new_ticket 1"  # a person looked and let it in: nothing is lost
    assert count_rows(app, Ticket) == 1 and _acks(app) == []
    app.close()


# -- Authentication-Results of the receiving MTA -------------------------------------------------


@pytest.mark.parametrize(
    "results",
    [
        ("dmarc=fail (p=reject dis=none) header.from=example.com",),
        ("spf=fail smtp.mailfrom=dana@example.com",),
        ("dkim=fail (bad signature) header.d=example.com header.i=@example.com",),
        ("spf=pass smtp.mailfrom=example.org", "dmarc=fail header.from=example.com"),
    ],
)
def test_mail_failing_the_trusted_mtas_authentication_gets_no_acknowledgement(
    desk: App, results: tuple[str, ...]
) -> None:
    result = ingest(desk, _received_by_mta(*results) + mail(), "smtp")
    assert result.outcome == "new_ticket" and _acks(desk) == []
    assert "no acknowledgement: the sender failed authentication" in _trace(desk, result.ticket_number)


@pytest.mark.parametrize(
    "results",
    [
        ("spf=pass smtp.mailfrom=example.com; dkim=pass header.d=example.com; dmarc=pass header.from=example.com",),
        # One valid signature is enough: a mailing list broke the other one.
        ("dkim=fail header.d=lists.example.org; dkim=pass header.d=example.com",),
        ("spf=softfail smtp.mailfrom=example.com; dkim=none; dmarc=none",),
        # Forwarded: the forwarder broke SPF, the aligned signature still proves the From.
        ("spf=fail smtp.mailfrom=example.com; dkim=pass header.d=example.com; dmarc=pass header.from=example.com",),
    ],
)
def test_mail_passing_or_unproven_is_acknowledged(desk: App, results: tuple[str, ...]) -> None:
    ingest(desk, _received_by_mta(*results) + mail(), "smtp")
    assert len(_acks(desk)) == 1


@pytest.mark.parametrize("real", ["dkim=fail header.d=example.com", "spf=fail smtp.mailfrom=example.com"])
def test_a_forged_pass_below_the_mtas_fail_changes_nothing(desk: App, real: str) -> None:
    forged = f"Authentication-Results: {MTA}; dkim=pass header.d=example.com; dmarc=pass header.from=example.com\r\n"
    raw = _received_by_mta(real, below=THEIR_HOP + forged.encode()) + mail()
    ingest(desk, raw, "smtp")
    assert _acks(desk) == []


def test_a_forged_fail_below_the_mtas_pass_is_not_believed(desk: App) -> None:
    """The boundary holds both ways: only the receiving MTA's own fields are read."""
    forged = f"Authentication-Results: {MTA}; dmarc=fail header.from=example.com\r\n"
    raw = _received_by_mta("dmarc=pass header.from=example.com", below=THEIR_HOP + forged.encode()) + mail()
    ingest(desk, raw, "smtp")
    assert len(_acks(desk)) == 1


def test_results_of_an_untrusted_authserv_id_or_without_config_are_ignored(tmp_path: Path, db_url: str, clock) -> None:
    other = b"Authentication-Results: mx.elsewhere.example; dmarc=fail header.from=example.com\r\n" + mail()
    ours = _received_by_mta("dmarc=fail header.from=example.com") + mail()
    trusting = _app(tmp_path / "a", db_url, clock, trusted_authserv_ids=[MTA])
    ingest(trusting, other, "smtp")
    assert len(_acks(trusting)) == 1
    trusting.close()
    unconfigured = _app(tmp_path / "b", db_url, clock)  # the default trusts no one
    ingest(unconfigured, ours, "smtp")
    assert len(_acks(unconfigured)) == 2
    unconfigured.close()


# -- who is acknowledged, and what it repeats ----------------------------------------------------


def test_only_the_configured_domains_are_acknowledged(tmp_path: Path, db_url: str, clock) -> None:
    app = _app(tmp_path, db_url, clock, domains=["example.com"])
    for sender in ("dana@example.com", "erin@eu.Example.com", "eve@example.net", "mallory@badexample.com"):
        assert ingest(app, mail(sender=sender), "smtp").outcome == "new_ticket"
    assert [a.recipients for a in _acks(app)] == [["dana@example.com"], ["erin@eu.example.com"]]
    assert "not among acknowledgements.domains" in _trace(app, 3)
    app.close()


def test_the_echo_of_the_request_is_bounded_and_can_be_turned_off(tmp_path: Path, db_url: str, clock) -> None:
    body = "Click http://spam.example/win to claim your prize. " * 40
    short = _app(tmp_path / "a", db_url, clock, summary_chars=60)
    ingest(short, mail(subject="You won!", body=body), "smtp")
    [ack] = _acks(short)
    assert "Click http://spam.example/win" in ack.body and body[:200] not in ack.body
    assert ack.headers["Subject"] == "[HD #1] You won!"
    short.close()
    silent = _app(tmp_path / "b", db_url, clock, summary_chars=0, quote_subject=False)
    ingest(silent, mail(subject="You won! Visit spam.example", body=body), "smtp")
    ack = _acks(silent)[-1]
    assert "spam.example" not in ack.body and "You won" not in ack.body
    assert ack.headers["Subject"] == "[HD #2] Your request to IT Help Desk"
    with silent.sessions() as s:  # the ticket keeps what was asked
        assert s.scalars(select(Ticket).where(Ticket.number == 2)).one().subject == "You won! Visit spam.example"
    silent.close()


def test_bad_acknowledgement_settings_name_the_key_and_what_was_expected(tmp_path: Path) -> None:
    config = tmp_path / "mailgate.toml"
    config.write_text(
        '[acknowledgements]\ndomains = ["example.com", "not a domain"]\nspam = "drop"\nsummary_chars = -1\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    text = str(caught.value)
    assert "acknowledgements.domains = ['example.com', 'not a domain']" in text and "domain names" in text
    assert "acknowledgements.spam = 'drop'" in text and "'ticket' or 'quarantine'" in text
    assert "acknowledgements.summary_chars = -1" in text


# -- what an admin and a victim see --------------------------------------------------------------


def test_messages_show_says_why_no_acknowledgement_went_out(
    tmp_path: Path, sqlite_template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("MAILGATE_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    shutil.copy(sqlite_template, tmp_path / "data" / "mailgate.db")
    (tmp_path / "mailgate.toml").write_text(
        f'data_dir = "{tmp_path / "data"}"\nsecret = "cli-test-secret-0123"\n'
        '[addresses]\nsupport = "support@example.com"\ndispatcher = "dispatch@example.com"\n'
        f'[acknowledgements]\ntrusted_authserv_ids = ["{MTA}"]\n'
    )
    runner = CliRunner()
    from mailgate.cli.root import cli

    spam = mail(headers={"X-Spam-Status": "Yes, score=9.1 required=5.0"})
    forged = _received_by_mta("dmarc=fail header.from=example.com") + mail()
    for raw in (spam, forged):
        assert runner.invoke(cli, ["ingest", "--now", "-"], input=raw).exit_code == 0
    spam_shown = runner.invoke(cli, ["messages", "show", "1"]).stdout
    assert "no acknowledgement: marked as spam by the receiving MTA (X-Spam-Status: Yes" in spam_shown
    forged_shown = runner.invoke(cli, ["messages", "show", "2"]).stdout
    assert f"no acknowledgement: the sender failed authentication: dmarc=fail ({MTA})" in forged_shown


def test_over_smtp_a_forger_gets_the_victim_at_most_the_limit_and_spam_nothing(
    tmp_path: Path, db_url: str, clock
) -> None:
    settings = make_settings(tmp_path, db_url, smtp={"host": "127.0.0.1", "port": 0})
    app = App.build(settings, clock=clock)
    try:
        with running_daemon(app) as running:
            with smtplib.SMTP("127.0.0.1", running.smtp_port, timeout=30) as client:
                for n in range(1, 21):
                    raw = mail(sender=f"victim+{n}@example.net", subject=f"Cheap pills {n}")
                    client.sendmail(f"victim+{n}@example.net", ["support@example.com"], raw)
                client.sendmail("dana@example.com", ["support@example.com"], mail(headers={"X-Spam-Flag": "YES"}))
            wait_for(lambda: count_rows(app, Message) == 21, timeout=30)  # every mail stored
            sink = settings.outgoing_maildir
            # Whatever was queued (notices, acknowledgements, the breaker's warning) is delivered.
            wait_for(lambda: _queued(app) == 0 and (sink / "new").is_dir(), timeout=30)
    finally:
        app.close()
    to = [email.message_from_bytes(m.as_bytes(), policy=default)["To"] for m in mailbox.Maildir(sink, create=False)]
    victim = [t for t in to if "victim" in str(t)]
    assert len(victim) == settings.limits.acks_per_sender and not any("dana@" in str(t) for t in to)


def test_acknowledgements_queued_before_the_upgrade_count_for_their_mailbox(tmp_path: Path) -> None:
    """Migration 0006 folds the keys of rows written by earlier releases: the hour after an
    upgrade does not start the limit afresh for a victim's +addresses."""
    from mailgate.db import make_engine, upgrade
    from mailgate.outgoing.outbox import acks_recently

    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0004")
    engine = make_engine(url)
    # The outbox as the release before wrote it (without the columns 0006 adds): exact addresses.
    old = [c for c in Outbox.__table__.columns if c.name not in ("id", "rcpt_proven")]
    with engine.begin() as conn:
        for n, key in enumerate(("victim+1@example.net", "Victim+2@Example.NET", "victim@example.net")):
            values = {
                "kind": "ack",
                "occasion": f"ack:{n}",
                "message_id": f"<{n}@example.com>",
                "mail_from": "support@example.com",
                "rcpt_key": key,
                "recipients": [key],
                "headers": {},
                "body": "",
                "state": "sent",
                "attempts": 1,
                "last_error": "",
                "next_attempt_at": START,
                "created_at": START,
            }
            conn.execute(table("outbox", *[column(c.name, c.type) for c in old]).insert().values(**values))
    upgrade(url)
    with Session(engine) as session:
        assert acks_recently(session, "victim@example.net", START, 60) == 3
    engine.dispose()


def test_corpus_mail_marked_as_spam_is_stored_and_never_acknowledged(corpus: Path, desk: App) -> None:
    """Real filters' headers (SpamAssassin in OTRS's and imap_tools' samples): each such mail is
    kept, and none gets an acknowledgement."""
    from mailgate.ingest.parse import Unparseable, parse
    from mailgate.ingest.spam import spam_verdict

    marked, outcomes = [], []
    for path in sorted(p for p in corpus.rglob("*") if p.is_file()):
        raw = path.read_bytes()
        if b"x-spam" not in raw.lower() and b"scl" not in raw.lower():
            continue
        try:
            parsed = parse(raw, desk.settings.limits.max_message_bytes)
        except Unparseable:
            continue
        if spam_verdict(parsed.message, 5):
            marked.append(path)
            outcomes.append(ingest(desk, raw, "smtp").outcome)
    assert len(marked) >= 5 and "quarantined" not in outcomes, list(zip(marked, outcomes, strict=True))
    # OTRS ships each sample twice (LF and CRLF): the copy is a duplicate of the stored mail.
    assert count_rows(desk, Message) == len([o for o in outcomes if o != "duplicate"]) and _acks(desk) == []
