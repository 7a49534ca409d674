"""Step notify: the mail the change causes, queued in the outbox in the same transaction. A new
ticket gets the requester's acknowledgement (unless there is a reason not to answer) and the
dispatcher's notice; a reply causes no mail yet."""

from __future__ import annotations

from mailgate.addresses import domain_of, fold_address
from mailgate.ingest.authentication import authentication_failure, proves_from
from mailgate.ingest.incoming import Incoming
from mailgate.ingest.outcome import Outcome
from mailgate.ingest.spam import spam_verdict
from mailgate.languages import language_of
from mailgate.models import Message, MessageKind, Ticket
from mailgate.outgoing.compose import local_time
from mailgate.outgoing.outbox import AutoSubmitted, OutgoingMail, acks_recently
from mailgate.reasons import Reason


def notify(item: Incoming) -> Outcome:
    """Ends the pipeline: with a new ticket or a reply (automatic mail ended at apply)."""
    message, ticket = item.message, item.ticket
    assert message is not None and ticket is not None, "notify runs after apply stored the mail on a ticket"
    if message.kind != MessageKind.NEW_TICKET:
        return Outcome.REPLY
    no_ack = why_no_acknowledgement(item)
    if no_ack:
        item.note("notify", f"no acknowledgement: {no_ack}")
    else:
        queue_acknowledgement(item, ticket, message)
    queue_dispatcher_notice(item, ticket, message, no_ack)
    return Outcome.NEW_TICKET


def excerpt(text: str, *, lines: int, chars: int) -> str:
    """The start of a text for a notification, marked when cut."""
    kept = [line.rstrip() for line in text.strip().splitlines()[:lines]]
    short = "\n".join(kept)[:chars].rstrip()
    return short + (" […]" if short != text.strip() else "")


def why_no_acknowledgement(item: Incoming) -> Reason | None:
    """The reason not to acknowledge this new ticket, or None to acknowledge it (also asked
    before any other automatic answer to a mail, e.g. admission's refusal)."""
    sender, limits = item.requester, item.app.settings.limits
    if item.reasons:
        return Reason("automatic", "automatic mail")
    if sender.undeliverable_since is not None:
        english = f"{sender.address} is undeliverable ({sender.undeliverable_reason})"
        return Reason("undeliverable", english, address=sender.address, why=sender.undeliverable_reason)
    if not sender.address.isascii():
        english = f"{sender.address} needs SMTPUTF8, which outgoing mail does not use"
        return Reason("needs_smtputf8", english, address=sender.address)
    if unproven := why_not_answer_the_from(item):
        return unproven
    # It counts what earlier transactions queued, which nothing pending here changes: no flush.
    # By the mailbox the address reaches: victim+1 … victim+20 are one person's inbox. Mail
    # proven to come from it counts only its like: forgeries cannot use up a real sender's share.
    with item.session.no_autoflush:
        recent = acks_recently(
            item.session,
            fold_address(sender.address),
            item.now,
            limits.ack_window_minutes,
            proven_only=_proven(item),
        )
    if recent >= limits.acks_per_sender:
        english = f"rate limit reached ({limits.acks_per_sender} in {limits.ack_window_minutes} minutes)"
        return Reason("ack_rate_limit", english, count=limits.acks_per_sender, minutes=limits.ack_window_minutes)
    return None


def why_not_answer_the_from(item: Incoming) -> Reason | None:
    """Backscatter: the acknowledgement goes to a From nobody proved, so mail the receiving MTA
    judged spam or forged, and senders outside the acknowledged domains, get none. A proven
    staff member's forward (see forwarded) is answered at the original sender: the proof is the
    forwarder's, and the address is the one they forwarded for, not a From anyone could write."""
    config, message = item.app.settings.acknowledgements, item.mail.message
    domain = domain_of(item.requester.address)
    if config.domains and not any(domain == d or domain.endswith("." + d) for d in config.domains):
        english = f"the sender's domain {domain or '(none)'} is not among acknowledgements.domains"
        return Reason("domain_not_acknowledged", english, domain=domain or "(none)")
    if verdict := spam_verdict(message, config.spam_scl_threshold):
        return Reason("spam", f"marked as spam by the receiving MTA ({verdict})", verdict=verdict)
    if item.on_behalf is not None:
        return None
    if failure := authentication_failure(message, config.trusted_authserv_ids, domain):
        return Reason("failed_authentication", f"the sender failed authentication: {failure}", failure=failure)
    if item.mail.sender_header not in ("from", "envelope"):
        # The From was missing or unusable, so the address came from Reply-To, Sender or
        # Return-Path: fields nobody checked, which a forger fills with the victim. (A device
        # that writes no From at all is answered at the envelope sender the MTA accepted.)
        english = f"the address to answer is from {item.mail.sender_header}, not from the mail's From"
        return Reason("not_from_the_from", english, header=item.mail.sender_header)
    return None


def _proven(item: Incoming) -> bool:
    if item.on_behalf is not None:
        return True  # the forwarder was proven (see forwarded)
    config = item.app.settings.acknowledgements
    return proves_from(item.mail.message, config.trusted_authserv_ids, domain_of(item.sender.address))


# Files named in one notification; the rest are counted ("and 120 more"), so that a mail of a
# thousand files still gets a notice that ends with what to do.
LISTED_FILES = 50


def queue_acknowledgement(item: Incoming, ticket: Ticket, message: Message) -> None:
    settings = item.app.settings
    config = settings.acknowledgements
    # A forward on someone's behalf: they are told, of their own mail (never of the note the
    # forwarder wrote above it), in the language of their own mail where it was attached.
    on_behalf, requester = item.on_behalf, item.requester
    forward = on_behalf.forward if on_behalf is not None else None
    request = forward.original if forward is not None else item.mail
    # In the language the request asked for (Outlook's Content-Language …), else the desk's.
    language = language_of(settings, requester.address, request.message if request is not None else None)
    text = forward.text if forward is not None else item.mail.text
    over_limit = [a for a in message.attachments if not a.stored]
    context = {
        "due": local_time(settings, ticket.first_response_due, language),
        "over_limit": over_limit[:LISTED_FILES],
        "more_over_limit": len(over_limit[LISTED_FILES:]),
        # What the acknowledgement repeats of the request, bounded: text a forger chose reaches
        # whoever the From names.
        "summary": excerpt(text, lines=6, chars=config.summary_chars) if config.summary_chars else "",
        "quote_subject": config.quote_subject,
        "forwarded_by": _forwarder(item),
    }
    outgoing = OutgoingMail(
        "ack",
        f"ack:{ticket.number}",
        ticket,
        requester,
        "ack",
        context,
        auto_submitted=AutoSubmitted.REPLIED,
        in_reply_to=request.message_id if request is not None else None,
        rcpt_proven=_proven(item),
        language=language,
    )
    _queue(item, outgoing)


def queue_dispatcher_notice(item: Incoming, ticket: Ticket, message: Message, no_ack: str | None = None) -> None:
    """The dispatcher's copy of a new ticket; `no_ack`: why the requester was not told of it."""
    settings, sender = item.app.settings, item.requester
    language = language_of(settings, item.dispatcher.address)
    context = {
        "requester_line": ", ".join(
            p for p in (sender.name or sender.address, sender.department, sender.location) if p
        ),
        "requester_address": sender.address if sender.name else "",
        "received": local_time(settings, item.arrived, language),
        "channel": item.source,
        "due": local_time(settings, ticket.first_response_due, language),
        "excerpt": excerpt(message.text_new, lines=40, chars=3000) or "(no text)",
        "attachments": message.attachments[:LISTED_FILES],
        "more_attachments": len(message.attachments[LISTED_FILES:]),
        "linked": item.linked,
        "link_reason": item.link_reason,
        "automatic": item.reasons,
        # Automatic mail says so above; otherwise the dispatcher learns here that nobody was told.
        "no_acknowledgement": "" if item.reasons else (no_ack or ""),
        # What set the ticket's fields before the dispatcher saw it (step route).
        "alert": item.alert,
        "routed": item.route_rules,
        "forwarded_by": _forwarder(item),
    }
    outgoing = OutgoingMail(
        "dispatcher_new",
        f"dispatcher_new:{ticket.number}",
        ticket,
        item.dispatcher,
        "dispatcher_new",
        context,
        # A notification, not a reply: RFC 3834 keeps auto-replied for answers to one mail.
        auto_submitted=AutoSubmitted.GENERATED,
        language=language,
    )
    _queue(item, outgoing)


def _forwarder(item: Incoming) -> str:
    """Who forwarded the mail on the requester's behalf, as a mail names them ("" if nobody)."""
    if item.on_behalf is None:
        return ""
    forwarder = item.on_behalf.forwarder
    return f"{forwarder.name} <{forwarder.address}>" if forwarder.name else forwarder.address


def _queue(item: Incoming, outgoing: OutgoingMail) -> None:
    # The ticket was opened in this transaction, so nothing was queued for it yet.
    item.send("notify", outgoing, ticket_is_new=True)
