"""What the upstream test scripts of the corpus' perl-BounceParser mails expect, for
tests/test_corpus.py and bench/corpus.py alike."""

# Corpus files that are not bounces (upstream's t/*.t): auto-replies,
# challenge/response and plain spam.
PERL_NOT_BOUNCES = {
    "aol-vacation",
    "polish-autoreply",
    "autoreply",
    "bluebottle",
    "boxbe-cr",
    "boxbe-cr2",
    "whitelist",
    "spam-with-image",
    "spam-bogus-email-in-report",
}
# Of those, plain spam.
PERL_SPAM = {"spam-with-image", "spam-bogus-email-in-report"}
# t/various-unknown.t and t/various-unknown-via-sendmail.t: the failed address is recipient@example.net.
PERL_USER_UNKNOWN = [
    "att-via-sendmail.unknown",
    "comcast-via-sendmail.unknown",
    "cox-via-sendmail.unknown",
    "generic-postfix-via-sendmail.unknown",
    "gmail-via-sendmail.unknown",
    "msn-via-sendmail.unknown",
    "yahoo-via-sendmail.unknown",
    "hotmail-via-sendmail.unknown",
    "domino.unknown",
    "aol.unknown",
    "qmail.unknown",
    "exchange.unknown",
    "novell-with-rhs",
    "yahoo-user-unknown",
    "me-user-unknown",
    "cam-unknown",
    "rcpt-dne",
    "mailbox-unknown",
    "deactivated-mailbox",
    "user-unknown-dne",
    "badrcptto",
    "nomailbox",
    "doesnotexist",
    "doesnotexist2",
    "user-unknown-not-active",
    "user-unknown-not",
    "user-unknown-polish",
    "user-unknown-bad",
]
