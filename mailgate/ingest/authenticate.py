"""Step authenticate: is the mail proven to come from the person its From names?

A From header proves nothing; what does (issue: the dispatcher desk):
- a reply token we issued to that very person (in the reply address or in one of our
  Message-IDs quoted back): only their mailbox received it, and From is one of their addresses,
  since identify resolved the sender from it. Only its current generation: a token that was
  shown to others was replaced (ingest/exposure.py), and the older one proves nothing;
- the trusted receiving MTA's Authentication-Results: DMARC pass for the From's domain, or a
  DKIM signature of that domain (see authentication.from_verdict).
The proof, with its evidence in words, goes on item.proof for the steps after: commands and
every staff effect need it, and the audit trail records it. A proven staff member who may work
on the ticket the evidence named is let onto it (thread let them on only as its assignee).
"""

from __future__ import annotations

from dataclasses import dataclass

from mailgate import permissions, reply_tokens
from mailgate import subject as subjects
from mailgate.addresses import domain_of
from mailgate.ingest.authentication import from_verdict
from mailgate.ingest.incoming import Incoming
from mailgate.ingest.outcome import Outcome
from mailgate.reasons import Reason
from mailgate.tokens import ReplyToken


@dataclass(frozen=True)
class Proof:
    person_id: int
    how: str  # "token", "dmarc" or "dkim"
    evidence: str  # in words, for the audit trail and receipts


def authenticate(item: Incoming) -> Outcome | None:
    item.proof = prove(item)
    if item.proof is None:
        item.note("authenticate", f"{item.sender.address} not proven (no token of theirs, no trusted pass)")
        return None
    item.note("authenticate", f"{item.sender.address} proven: {item.proof.evidence}")
    decision, sender = item.thread, item.sender
    linked = decision.linked
    if linked is not None and sender.is_staff and permissions.may_work_on(item.app.settings, sender, linked):
        decision.ticket, decision.linked, decision.link_kind, decision.link_reason = linked, None, "", ""
        item.note("authenticate", f"ticket {linked.number}: {sender.address} is proven staff working on it")
    return None


def prove(item: Incoming) -> Proof | None:
    mail, sender, settings = item.mail, item.sender, item.app.settings
    if mail.sender_header != "from" or item.reasons:
        return None  # the address is not the From's, or a robot wrote it: nobody to prove
    token = item.thread.token
    if token is not None and token.person_id == sender.id and item.thread.ticket is not None:
        tag = subjects.format_tag(settings.tickets.tag_prefix, token.ticket_number)
        if _holds_current(item, token):
            english = f"reply token issued to {sender.address} ({tag})"
            return Proof(sender.id, "token", Reason("token_proof", english, address=sender.address, tag=tag))
        item.token_replaced = True
        item.note("authenticate", f"reply token of {sender.address} ({tag}) was replaced: it proves nothing")
    ids = settings.acknowledgements.trusted_authserv_ids
    verdict = from_verdict(mail.message, ids, domain_of(mail.from_addr))
    if verdict is not None:
        return Proof(sender.id, verdict.partition("=")[0], verdict)
    return None


def _holds_current(item: Incoming, token: ReplyToken) -> bool:
    """Whether the mail carries the current generation of the sender's token for the ticket
    `token` names (a reply may quote the replaced one beside the new one)."""
    own = {t for t, _ in item.thread.held if t.person_id == token.person_id and t.ticket_number == token.ticket_number}
    return any(reply_tokens.is_current(item.session, t) for t in own | {token})
