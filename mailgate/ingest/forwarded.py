"""Step forwarded: a staff member forwards an employee's mail to the desk, and the ticket is the
employee's.

Only a proven staff member can do this (item.proof is theirs, see authenticate): a From header
proves nothing, and a forged staff From must not open tickets in someone else's name, so an
unproven sender's forward is an ordinary new ticket for that sender. Only a mail that opens a
new ticket: a forward on a ticket's thread is a message on it.

What the forward names (ingest/forwards.py reads it) decides the new ticket: its requester is
the original From, the original To and Cc (not our own addresses) take part, its title is the
original subject, the acknowledgement goes to the original sender, and the forwarder watches
the ticket. People are looked up here, before apply takes the ticket number (see identify).
The mail itself stays what it is: the forwarder sent it, and their command lines above the
forward are theirs (item.sender is still the forwarder).
"""

from __future__ import annotations

from dataclasses import dataclass

from mailgate import people
from mailgate.ingest.breaker import opens_ticket
from mailgate.ingest.classify import is_noreply_address
from mailgate.ingest.forwards import Forward, find_forward, is_reply_subject
from mailgate.ingest.incoming import Incoming
from mailgate.ingest.outcome import Outcome
from mailgate.models import Person


@dataclass(frozen=True)
class OnBehalf:
    requester: Person  # the original sender: the ticket is theirs
    forwarder: Person  # the proven staff member who forwarded it: a watcher
    forward: Forward
    participants: list[Person]  # the original's To and Cc, not us, not the requester or forwarder
    evidence: str  # what proved the forwarder, for the audit trail

    @property
    def subject(self) -> str:
        return self.forward.subject


def forwarded(item: Incoming) -> Outcome | None:
    sender, settings = item.sender, item.app.settings
    # Robots do not forward on anyone's behalf (a server-side forwarding rule is automatic mail).
    if not sender.is_staff or item.reasons or not opens_ticket(item):
        return None
    forward = find_forward(item.mail, settings.limits.max_message_bytes, settings.parsing)
    if forward is None:
        return None
    if not forward.explicit and is_reply_subject(item.mail.subject):
        # Outlook heads a reply's quote with the same "From: … Sent: …" block as a forward.
        item.note("forwarded", f"a quoted mail ({forward.shape}) under a reply's subject: not a forward")
        return None
    proof = item.proof
    if proof is None or proof.person_id != sender.id:
        item.note(
            "forwarded",
            f"a forward ({forward.shape}) from {sender.address}, who is not proven: "
            "an ordinary new ticket for the sender, on nobody's behalf",
        )
        return None
    address = forward.from_addr
    if not address:
        item.note("forwarded", f"the forward ({forward.shape}) names no address of its sender: a ticket for the sender")
        return None
    if people.is_own_address(settings, address):
        item.note("forwarded", f"the forwarded mail is from our own address {address}: a ticket for the sender")
        return None
    if is_noreply_address(address):
        item.note("forwarded", f"the forwarded mail is from a robot's address {address}: a ticket for the sender")
        return None
    requester = people.person_for(item.session, settings, address, forward.from_name, item.now)
    if requester.id == sender.id:
        item.note("forwarded", f"{sender.address} forwarded their own mail: a ticket for them")
        return None
    participants = _participants(item, forward, requester)
    item.on_behalf = OnBehalf(requester, sender, forward, participants, proof.evidence)
    item.note(
        "forwarded",
        f"forward ({forward.shape}) by proven staff {sender.address}: "
        f"the ticket is opened on behalf of {requester.address}",
    )
    return None


def _participants(item: Incoming, forward: Forward, requester: Person) -> list[Person]:
    """The people the original mail was to and copied, each once, at most
    limits.max_participants_per_mail of them (as apply bounds a new ticket's first mail)."""
    settings, forwarder = item.app.settings, item.sender
    named: dict[str, str] = {}
    for name, address in forward.to + forward.cc:
        if address not in named and not people.is_own_address(settings, address):
            named[address] = name
    limit = settings.limits.max_participants_per_mail
    if len(named) > limit:
        item.note(
            "forwarded",
            f"{len(named)} people in the forwarded mail's To/Cc: the first {limit} made participants "
            f"(limits.max_participants_per_mail)",
        )
    found: dict[int, Person] = {}
    for address, name in list(named.items())[:limit]:
        person = people.person_for(item.session, settings, address, name, item.now)
        if person.id not in (requester.id, forwarder.id):  # an alias is its staff member
            found.setdefault(person.id, person)
    return list(found.values())
