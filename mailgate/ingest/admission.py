"""Step admission: may this sender open a ticket? ([intake] unknown_senders)

Known senders always may: staff, a requester of the directory ([directory], [[requesters]]),
and whoever already takes part in a ticket. Others by the policy: "accept" (the default), only
those of intake.domains (a subdomain counts as its domain), or "refuse". Only mail that would
open a ticket is asked: a reply to a ticket the sender takes part in never is (thread put it
there), nor a proven staff member's forward (forwarded: they open the ticket, for whomever),
nor history being imported.

A refused mail is kept, on no ticket (`mailgate messages list --no-ticket --kind
refused`), and its sender is told why and whom to ask, only when an acknowledgement would be
allowed (notify.why_no_acknowledgement: the rate limit per mailbox, spam, failed
authentication, automatic mail): a refusal is backscatter as much as an acknowledgement is.
The dispatcher is not told of each: refusing is what the policy asked for.
"""

from __future__ import annotations

from sqlalchemy import select

from mailgate import tickets
from mailgate.addresses import domain_of
from mailgate.ingest.authentication import proves_from
from mailgate.ingest.breaker import opens_ticket
from mailgate.ingest.incoming import Incoming
from mailgate.ingest.notify import why_no_acknowledgement
from mailgate.ingest.outcome import Outcome
from mailgate.ingest.store import store_message
from mailgate.languages import language_of
from mailgate.models import MessageKind, Participant
from mailgate.outgoing.outbox import AutoSubmitted, OutgoingMail


def admission(item: Incoming) -> Outcome | None:
    intake = item.app.settings.intake
    if intake.unknown_senders == "accept" or item.history is not None or not opens_ticket(item):
        return None
    sender = item.sender
    if item.on_behalf is not None:
        item.note("admission", f"a forward by proven staff {sender.address}: admitted")
        return None
    if known := why_known(item):
        item.note("admission", f"{sender.address} {known}: admitted")
        return None
    domain = domain_of(sender.address)
    if intake.unknown_senders == "domains" and in_domains(domain, intake.domains):
        item.note("admission", f"{sender.address} is of {domain}, among intake.domains: admitted")
        return None
    return _refuse(item)


def why_known(item: Incoming) -> str | None:
    """How the sender is known to the desk, in words, or None."""
    sender, settings = item.sender, item.app.settings
    if sender.is_staff or settings.staff_member(sender.address) is not None:
        return "is staff"
    if any(r.address == sender.address for r in settings.requesters):
        return "is in the requesters' directory"
    with item.session.no_autoflush:  # what earlier mail made them: nothing pending here counts
        taking_part = item.session.scalar(select(Participant.id).where(Participant.person_id == sender.id).limit(1))
    return "takes part in a ticket" if taking_part is not None else None


def in_domains(domain: str, domains: list[str]) -> bool:
    return any(domain == d or domain.endswith("." + d) for d in domains)


def _refuse(item: Incoming) -> Outcome:
    session, settings, sender, mail = item.session, item.app.settings, item.sender, item.mail
    policy = settings.intake.unknown_senders
    item.note(
        "admission",
        f"{sender.address} is unknown and intake.unknown_senders = {policy!r}: refused, kept on no ticket",
    )
    item.message = message = store_message(item, None, MessageKind.REFUSED)
    session.flush()  # the event and the reply name the message by its id
    tickets.record(
        session,
        None,
        actor=sender.address,
        action="refused",
        channel=item.source,
        at=item.now,
        message_id=message.id,
        new=f"intake.unknown_senders = {policy}",
    )
    if no_reply := why_no_acknowledgement(item):
        item.note("admission", f"no reply: {no_reply}")
        return Outcome.REFUSED
    config = settings.acknowledgements
    context = {
        "policy": policy,
        "domains": settings.intake.domains if policy == "domains" else [],
        "subject": mail.subject[:200] if config.quote_subject else "",
    }
    outgoing = OutgoingMail(
        "refused",
        f"refused:{message.id}",
        None,
        sender,
        "refused",
        context,
        auto_submitted=AutoSubmitted.REPLIED,
        in_reply_to=mail.message_id,
        # Counted like an acknowledgement to the same mailbox (see notify.why_no_acknowledgement).
        rcpt_proven=proves_from(mail.message, config.trusted_authserv_ids, domain_of(sender.address)),
        language=language_of(settings, sender.address, mail.message),
    )
    item.send("admission", outgoing, what="refusal")
    return Outcome.REFUSED
