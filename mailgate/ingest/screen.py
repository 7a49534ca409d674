"""Step screen: with `acknowledgements.spam = "quarantine"`, mail the receiving MTA marked as spam
waits in quarantine (raw bytes, envelope and the verdict) instead of becoming a ticket; a person
who retries it lets it in. By default spam becomes a ticket without an acknowledgement (notify)."""

from __future__ import annotations

from mailgate.ingest.incoming import Incoming
from mailgate.ingest.outcome import Outcome
from mailgate.ingest.spam import spam_verdict
from mailgate.quarantine import RETRY_SUFFIX, add


def screen(item: Incoming) -> Outcome | None:
    config = item.app.settings.acknowledgements
    if config.spam != "quarantine" or item.source.endswith(RETRY_SUFFIX):
        return None
    verdict = spam_verdict(item.mail.message, config.spam_scl_threshold)
    if verdict is None:
        return None
    reason = f"marked as spam by the receiving MTA ({verdict})"
    mail = item.mail
    item.quarantine_id = add(
        item.session, mail.raw, item.source, reason, item.arrived, mail.envelope_sender, item.envelope_recipients
    )
    item.note("screen", f"quarantined: {reason}")
    return Outcome.QUARANTINED
