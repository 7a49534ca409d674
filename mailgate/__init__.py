"""mailgate: an email-to-ticket gateway daemon."""

__version__ = "0.1.0"
