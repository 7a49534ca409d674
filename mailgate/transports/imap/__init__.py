"""The IMAP poller: new mail in a mailbox -> ingest(), then moved or flagged, only after the commit.

poller.py       the loop of one mailbox as long as the daemon runs: IDLE, lease, outages, back-off
reader.py       one round over the folder: candidates, ingest() a batch, acknowledge it, position
acknowledge.py  moving or flagging a batch of mail with one command
connect.py      TLS or STARTTLS, password or XOAUTH2; check_mailbox() for `mailgate check-config`
lease.py        one poller per mailbox among daemons sharing a database
"""

from mailgate.transports.imap.connect import check_mailbox
from mailgate.transports.imap.poller import ImapPoller
from mailgate.transports.imap.reader import PollReport

__all__ = ["ImapPoller", "PollReport", "check_mailbox"]
