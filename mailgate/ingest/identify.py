"""Step identify: who sent the mail, as its From claims (proof comes later, from a signed token
or the receiving MTA's verdict), looked up or created before anything else is written.

People come first in the transaction: on PostgreSQL the ticket counter stays locked from the
moment a new ticket takes its number until commit, and two transactions each waiting for a
person the other inserted would deadlock. (apply looks up the other people a new ticket
involves just before it takes the number.)
"""

from __future__ import annotations

from mailgate import people
from mailgate.ingest.incoming import Incoming
from mailgate.ingest.outcome import Outcome


def identify(item: Incoming) -> Outcome | None:
    session, settings, mail = item.session, item.app.settings, item.mail
    item.sender = people.person_for(session, settings, mail.from_addr, mail.from_name, item.now)
    item.note("identify", f"from {item.sender.address} ({item.sender.role})")
    return None
