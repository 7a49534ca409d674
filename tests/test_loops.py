"""Mail loops: the circuit breaker, mail from our own addresses, auto-reply subjects, and a real
robot that answers every mail mailgate sends it (an aiosmtpd relay answering over SMTP)."""

from __future__ import annotations

import contextlib
import queue
import secrets
import shutil
import smtplib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from click.testing import CliRunner
from sqlalchemy import func, select

from mailgate.app import App
from mailgate.cli.root import cli
from mailgate.clock import SystemClock
from mailgate.ingest.pipeline import Outcome, ingest
from mailgate.models import BreakerTrip, Message, MessageKind, Ticket
from mailgate.outgoing.compose import render
from tests.conftest import make_settings
from tests.daemon_harness import running_daemon, wait_for
from tests.mails import mail
from tests.smtp_peers import free_port
from tests.test_ingest import outbox


def tickets_count(app: App) -> int:
    with app.sessions() as s:
        return s.scalar(select(func.count(Ticket.id))) or 0


def held_on(app: App, number: int) -> list[Message]:
    with app.sessions() as s:
        ticket = s.scalar(select(Ticket).where(Ticket.number == number))
        return list(s.scalars(select(Message).where(Message.ticket_id == ticket.id, Message.kind == MessageKind.HELD)))


def send(app: App, clock, sender: str, n: int, **kwargs: object):
    results = []
    for i in range(n):
        results.append(
            ingest(app, mail(sender=sender, subject=f"request {i} {secrets.token_hex(3)}", **kwargs), "smtp")
        )
        clock.advance(timedelta(seconds=5))
    return results


# -- the limits ------------------------------------------------------------------------------


def test_a_sender_over_its_limit_is_held_on_its_latest_ticket_and_the_dispatcher_warned_once(app: App, clock) -> None:
    limit = app.settings.breaker.per_sender.count
    opened = send(app, clock, "Dana <dana@customer.example>", limit)
    assert [r.outcome for r in opened] == [Outcome.NEW_TICKET] * limit
    before = len(outbox(app))
    held = send(app, clock, "Dana <dana@customer.example>", 5)
    assert [r.outcome for r in held] == [Outcome.HELD] * 5
    assert tickets_count(app) == limit  # no ticket of its own
    assert {r.ticket_number for r in held} == {opened[-1].ticket_number}  # on the latest open one
    assert len(held_on(app, opened[-1].ticket_number)) == 5  # nothing lost
    new = outbox(app)[before:]
    assert [(o.kind, o.rcpt_key) for o in new] == [("breaker_warning", "dispatch@example.com")]  # once
    body = render(new[0]).decode()
    assert "mailgate limits lift sender:dana@customer.example" in body
    assert "mailgate limits list" in body
    assert any(t["step"] == "breaker" for t in held[0].trace)


def test_plus_variants_of_one_mailbox_count_as_one(app: App, clock) -> None:
    # In our own domain, which is limited per address only: the folded address is what trips.
    limit = app.settings.breaker.per_address.count
    results = [
        ingest(app, mail(sender=f"Victim+{i}@Example.COM", subject=f"spam {i}"), "smtp") for i in range(limit + 3)
    ]
    assert [r.outcome for r in results].count(Outcome.NEW_TICKET) == limit
    assert [r.outcome for r in results[limit:]] == [Outcome.HELD] * 3
    assert len(outbox(app, "breaker_warning")) == 1


def test_a_robot_answering_from_a_new_address_each_time_is_held_by_its_domain(app: App, clock) -> None:
    limit = app.settings.breaker.per_domain.count
    senders = [f"bounce-{secrets.token_hex(4)}@robots.example.net" for _ in range(limit + 4)]
    results = [ingest(app, mail(sender=s, subject=f"Ticket {i} received"), "smtp") for i, s in enumerate(senders)]
    assert [r.outcome for r in results[:limit]] == [Outcome.NEW_TICKET] * limit
    assert [r.outcome for r in results[limit:]] == [Outcome.HELD] * 4
    # Their senders have no ticket: one ticket holds the trip's mail, and it sent no mail.
    (holding,) = {r.ticket_number for r in results[limit:]}
    assert len(held_on(app, holding)) == 4
    assert len(outbox(app, "ack")) == limit
    assert len(outbox(app, "dispatcher_new")) == limit
    assert len(outbox(app, "breaker_warning")) == 1


def test_the_company_domain_is_not_limited_but_a_robot_at_one_of_its_addresses_is(app: App, clock) -> None:
    # An internal help desk: every employee shares the domain of support@example.com.
    for i in range(30):
        assert ingest(app, mail(sender=f"employee{i}@example.com"), "smtp").outcome == Outcome.NEW_TICKET
    robot = send(app, clock, "monitor@example.com", app.settings.breaker.per_sender.count + 1)
    assert robot[-1].outcome == Outcome.HELD


def test_exempt_domains_are_limited_per_address_only(tmp_path: Path, db_url: str, clock) -> None:
    settings = make_settings(tmp_path, db_url, breaker={"exempt_domains": ["partner.example"]})
    app = App.build(settings, clock=clock)
    try:
        for i in range(20):
            assert ingest(app, mail(sender=f"p{i}@partner.example"), "smtp").outcome == Outcome.NEW_TICKET
    finally:
        app.close()


def test_a_person_replying_all_day_never_trips_it(app: App, clock) -> None:
    first = ingest(app, mail(sender="dana@customer.example"), "smtp")
    for i in range(30):
        reply = ingest(
            app, mail(sender="dana@customer.example", subject=f"Re: [HD #{first.ticket_number}] x {i}"), "smtp"
        )
        assert reply.outcome == Outcome.REPLY
        clock.advance(timedelta(minutes=2))


def test_the_hold_ends_a_window_after_the_last_held_mail_and_warns_again_next_time(app: App, clock) -> None:
    rate = app.settings.breaker.per_sender
    send(app, clock, "dana@customer.example", rate.count + 2)
    clock.advance(timedelta(minutes=rate.window_minutes - 1))
    assert send(app, clock, "dana@customer.example", 1)[0].outcome == Outcome.HELD  # still sending: still held
    clock.advance(timedelta(minutes=rate.window_minutes + 1))
    assert send(app, clock, "dana@customer.example", 1)[0].outcome == Outcome.NEW_TICKET
    send(app, clock, "dana@customer.example", rate.count)
    assert len(outbox(app, "breaker_warning")) == 2


# -- our own addresses -------------------------------------------------------------------------


@pytest.mark.parametrize("sender", ["dispatch@example.com", "Dispatch+x@example.com", "helpdesk@example.com"])
def test_mail_from_our_own_address_on_no_ticket_opens_none_and_sends_nothing(app: App, sender: str) -> None:
    result = ingest(app, mail(sender=sender, subject=f"Thank you {secrets.token_hex(4)}"), "smtp")
    assert result.outcome == Outcome.AUTO
    assert tickets_count(app) == 0 and outbox(app) == []
    with app.sessions() as s:
        (stored,) = s.scalars(select(Message))
        assert stored.ticket_id is None  # kept, on no ticket


# -- auto-reply subjects -----------------------------------------------------------------------

AUTO_REPLY_SUBJECTS = [
    "Automatic reply: Printer jams",
    "Re: Automatic reply: Printer jams",
    "RE: Out of Office: Printer jams",
    "AW: Abwesenheitsnotiz: Drucker",
    "AW: AW: Automatische Antwort: Drucker",
    "Re[2]: [HD #77] Out of office",
    "Re: Réponse automatique : imprimante",
    "Respuesta automática: impresora",
    "R: Risposta automatica: stampante",
    "Antw: Automatisch antwoord: printer",
    "Resposta automática: impressora",
    "Odp: Odpowiedź automatyczna: drukarka",
    "SV: Automatiskt svar: skrivare",
    "Autosvar: printer",
    "Re: Автоматический ответ: принтер",
    "自動応答: プリンター",
    "回复：自动回复：打印机",
    "AUTO: Jane Doe is out of the office (returning 12/03/2026)",
]


@pytest.mark.parametrize("subject", AUTO_REPLY_SUBJECTS)
def test_auto_reply_subjects_behind_reply_prefixes_open_no_ticket(app: App, subject: str) -> None:
    result = ingest(app, mail(sender="dana@customer.example", subject=subject), "smtp")
    assert result.outcome == Outcome.AUTO, result.trace
    assert outbox(app) == []


@pytest.mark.parametrize("subject", ["Re: my printer", "Out of office assistant will not turn off", "Fwd: invoice"])
def test_requests_are_not_taken_for_auto_replies(app: App, subject: str) -> None:
    assert ingest(app, mail(subject=subject), "smtp").outcome == Outcome.NEW_TICKET


def test_precedence_auto_reply_is_a_reaction(app: App) -> None:
    result = ingest(app, mail(subject="Thanks", headers={"Precedence": "auto_reply"}), "smtp")
    assert result.outcome == Outcome.AUTO
    assert outbox(app) == []


# -- mailgate limits list|lift -----------------------------------------------------------------


def _cli_config(app: App, tmp_path: Path) -> Path:
    settings = app.settings
    config = tmp_path / "mailgate.toml"
    config.write_text(
        f'data_dir = "{settings.data_dir}"\ndatabase_url = "{settings.database_url}"\n'
        f'secret = "{settings.secret}"\n[addresses]\nsupport = "support@example.com"\n'
        'dispatcher = "dispatch@example.com"\n'
    )
    return config


def test_limits_list_shows_the_hold_and_lift_ends_it(app: App, clock, tmp_path: Path) -> None:
    settings, config = app.settings, _cli_config(app, tmp_path)
    runner = CliRunner()
    assert "no mail is held" in runner.invoke(cli, ["-c", str(config), "limits", "list"]).output
    # The command runs on the real clock: this test's mail arrived a minute before it.
    clock.set(datetime.now(UTC) - timedelta(minutes=1))
    for _ in range(settings.breaker.per_domain.count + 1):
        ingest(app, mail(sender=f"bounce-{secrets.token_hex(4)}@robots.example.net"), "smtp")
    listed = runner.invoke(cli, ["-c", str(config), "limits", "list"])
    assert listed.exit_code == 0 and "domain:robots.example.net" in listed.output
    lifted = runner.invoke(cli, ["-c", str(config), "limits", "lift", "robots.example.net"])
    assert lifted.exit_code == 0, lifted.output
    assert "lifted domain:robots.example.net" in lifted.output
    again = runner.invoke(cli, ["-c", str(config), "limits", "lift", "robots.example.net"])
    assert again.exit_code != 0 and "no mail is held" in again.output
    clock.set(datetime.now(UTC))
    result = ingest(app, mail(sender="bounce-new@robots.example.net"), "smtp")
    assert result.outcome == Outcome.NEW_TICKET, result.trace
    with app.sessions() as s:
        assert s.scalar(select(BreakerTrip.lifted_by)).startswith("cli:")


def test_lifting_an_address_of_a_tripped_domain_lets_that_address_through_and_holds_the_rest(
    app: App, clock, tmp_path: Path
) -> None:
    # A robot at robots.example.net tripped the domain; a real person there calls the desk.
    config, runner = _cli_config(app, tmp_path), CliRunner()
    clock.set(datetime.now(UTC) - timedelta(minutes=1))  # the command runs on the real clock
    for _ in range(app.settings.breaker.per_domain.count + 1):
        ingest(app, mail(sender=f"bounce-{secrets.token_hex(4)}@robots.example.net"), "smtp")
    assert ingest(app, mail(sender="Erik.Meyer@robots.example.net"), "smtp").outcome == Outcome.HELD
    lifted = runner.invoke(cli, ["-c", str(config), "limits", "lift", "Erik.Meyer@robots.example.net"])
    assert lifted.exit_code == 0, lifted.output
    # It says exactly what was lifted, what still holds, and how to lift that too.
    assert "lifted domain:robots.example.net for erik.meyer@robots.example.net" in lifted.output
    assert "mailgate limits lift domain:robots.example.net" in lifted.output
    listed = runner.invoke(cli, ["-c", str(config), "limits", "list"]).output
    assert "domain:robots.example.net" in listed and "lifted for (not held): erik.meyer@robots.example.net" in listed
    clock.set(datetime.now(UTC))
    for i in range(3):  # more than once: its mail does not trip the domain anew
        result = ingest(app, mail(sender="erik.meyer@robots.example.net", subject=f"printer {i}"), "smtp")
        assert result.outcome == Outcome.NEW_TICKET, result.trace
    assert ingest(app, mail(sender="bounce-x@robots.example.net"), "smtp").outcome == Outcome.HELD
    again = runner.invoke(cli, ["-c", str(config), "limits", "lift", "erik.meyer@robots.example.net"])
    assert again.exit_code != 0 and "no mail is held from" in again.output
    assert "already lifted for it" in again.output


# -- a real robot answering everything ---------------------------------------------------------

RUN_SECONDS = 40.0
# The loop must be dead well before the end: no mail reaches a robot in the last part.
QUIET_SECONDS = 15.0


@dataclass
class Autoresponder:
    """mailgate's outgoing relay, behind which a robot answers every mail sent to `address`
    (or to any address `answers` accepts) over SMTP to mailgate's listener: from the address
    the mail went to, or from a new VERP-style address each time; a fresh subject, and none
    of RFC 3834's headers or references that would tell mailgate what it is."""

    name: str
    answers: object  # Callable[[str], bool]: is this recipient the robot?
    listener_port: int
    new_address_each_time: bool = False
    received: list[float] = field(default_factory=list)  # monotonic times of mail to the robot
    sent: int = 0
    jobs: queue.Queue[str | None] = field(default_factory=queue.Queue)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        for rcpt in envelope.rcpt_tos:
            if self.answers(rcpt.lower()):  # type: ignore[operator]
                self.received.append(time.monotonic())
                self.jobs.put(rcpt.lower())
        return "250 OK"

    def answer_all(self) -> None:
        """The robot's outbox: answers leave from a thread, as a mail server's would."""
        while (rcpt := self.jobs.get()) is not None:
            sender = f"bounce-{secrets.token_hex(6)}@robots.example.net" if self.new_address_each_time else rcpt
            raw = mail(
                sender=sender,
                subject=f"Thank you for your message (ref {secrets.token_hex(4)})",
                body="We have received your message and will get back to you.\n",
            )
            try:
                with smtplib.SMTP("127.0.0.1", self.listener_port, timeout=15) as smtp:
                    smtp.sendmail(sender, ["support@example.com"], raw)
                self.sent += 1
            except (OSError, smtplib.SMTPException):
                pass  # a robot does not care


def _scenario(tmp_path: Path, sqlite_template: Path, name: str, first_sender: str, **robot: object):
    home = tmp_path / name
    home.mkdir()
    shutil.copy(sqlite_template, home / "mailgate.db")
    listener_port, relay_port = free_port(), free_port()
    bot = Autoresponder(name, listener_port=listener_port, **robot)  # type: ignore[arg-type]
    settings = make_settings(
        home,
        f"sqlite:///{home / 'mailgate.db'}",
        smtp={"host": "127.0.0.1", "port": listener_port},
        outgoing={"relay_host": "127.0.0.1", "relay_port": relay_port},
    )
    return bot, relay_port, App.build(settings, clock=SystemClock()), first_sender


def test_a_robot_answering_everything_for_40_s_gets_at_most_10_mails_and_the_loop_dies(
    tmp_path: Path, sqlite_template: Path
) -> None:
    scenarios = [
        # Behind the dispatcher's address: it answers every notice. A person opened the first ticket.
        _scenario(
            tmp_path,
            sqlite_template,
            "as the dispatcher",
            "Dana <dana@customer.example>",
            answers=lambda rcpt: rcpt == "dispatch@example.com",
        ),
        # Behind a requester's address: it answers every acknowledgement.
        _scenario(
            tmp_path,
            sqlite_template,
            "as a requester",
            "robot@customer.example",
            answers=lambda rcpt: rcpt == "robot@customer.example",
        ),
        # Another help desk answering from a new address each time.
        _scenario(
            tmp_path,
            sqlite_template,
            "from a new address each time",
            "bounce-first@robots.example.net",
            answers=lambda rcpt: rcpt.endswith("@robots.example.net"),
            new_address_each_time=True,
        ),
    ]
    with contextlib.ExitStack() as stack:
        for bot, relay_port, app, _ in scenarios:
            controller = Controller(bot, hostname="127.0.0.1", port=relay_port)
            controller.start()
            stack.callback(controller.stop)
            worker = threading.Thread(target=bot.answer_all, name=f"robot {bot.name}")
            worker.start()
            stack.callback(worker.join, 20)
            stack.callback(bot.jobs.put, None)
            stack.callback(app.close)
            stack.enter_context(running_daemon(app))
        start = time.monotonic()
        for bot, _, _, first_sender in scenarios:
            with smtplib.SMTP("127.0.0.1", bot.listener_port, timeout=15) as smtp:
                smtp.sendmail(first_sender, ["support@example.com"], mail(sender=first_sender, subject="Printer jams"))
        wait_for(lambda: all(bot.received for bot, *_ in scenarios))  # every robot is started
        threading.Event().wait(max(0.0, start + RUN_SECONDS - time.monotonic()))  # the robots' run
        end = time.monotonic()
    for bot, *_ in scenarios:
        print(
            f"robot {bot.name}: received {len(bot.received)} mails from mailgate in {end - start:.0f} s, "
            f"sent {bot.sent}, last at {bot.received[-1] - start:.1f} s"
        )
    for bot, *_ in scenarios:
        assert len(bot.received) <= 10, f"robot {bot.name} received {len(bot.received)} mails"
        assert bot.received[-1] < end - QUIET_SECONDS, f"robot {bot.name} still got mail at the end: the loop lives"


def test_mails_from_a_source_at_its_limit_at_once_warn_the_dispatcher_once(app: App, clock) -> None:
    limit = app.settings.breaker.per_domain.count
    for i in range(limit):
        ingest(app, mail(sender=f"first-{i}@robots.example.net"), "smtp")
    raws = [mail(sender=f"bounce-{secrets.token_hex(4)}@robots.example.net") for _ in range(16)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(lambda raw: ingest(app, raw, "smtp").outcome, raws))
    assert outcomes == [Outcome.HELD] * 16
    assert len(outbox(app, "breaker_warning")) == 1
    with app.sessions() as s:
        assert s.scalar(select(func.count(BreakerTrip.id))) == 1
