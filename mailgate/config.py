"""Settings: a TOML file, overridden by MAILGATE_* environment variables, validated in one place.

pydantic-settings does the layering and validation; this module turns its errors into one line
per bad key ("key = value: what was expected") so a typo never surfaces as a traceback.
"""

from __future__ import annotations

import contextlib
import difflib
import ipaddress
import os
import re
import secrets
import tempfile
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from sqlalchemy.engine import make_url

from mailgate.config_file import ConfigError, find_data_dir, read_config_file
from mailgate.routing.alerts import AlertSource
from mailgate.routing.rules import Route
from mailgate.sla.settings import Sla

MIN_SECRET_CHARS = 16  # the reply tokens are only as unguessable as this key


def _check_address(value: str) -> str:
    if not re.fullmatch(r"[^@\s<>()\[\],;:\"]+@[A-Za-z0-9.-]+", value):
        raise ValueError("an address like support@example.com (no display name)")
    return value.lower()


EmailStr = Annotated[str, AfterValidator(_check_address)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Addresses(_Section):
    support: EmailStr = "support@localhost"
    dispatcher: EmailStr = "dispatch@localhost"
    # Other addresses that deliver into this gateway (aliases, the IMAP mailbox's own address).
    own: list[EmailStr] = Field(default_factory=list)
    display_name: str = "IT Help Desk"
    # List-Id values of our own groups (support@ as a Google Group or Microsoft 365 group):
    # mail that only passed through them is from people, not a list robot.
    own_list_ids: list[str] = Field(default_factory=list)

    def all_own(self) -> set[str]:
        return {a.lower() for a in (self.support, self.dispatcher, *self.own)}

    def our_senders(self) -> set[str]:
        """Addresses mailgate's own mail comes from. Not the dispatcher: a person writes from it."""
        return {a.lower() for a in (self.support, *self.own)}


class Tickets(_Section):
    tag_prefix: str = "HD"
    default_priority: Literal["low", "normal", "high", "urgent"] = "normal"
    # A reply to a ticket closed longer ago than this opens a new ticket linked to the old one.
    reopen_window_days: int = Field(default=14, ge=0)
    # Business hours until the first answer is due, per priority (shown in the acknowledgement),
    # where [sla.targets] gives none; counted in the [sla] calendar (Mon-Fri 09:00-17:00 unless set).
    first_response_hours: dict[Literal["low", "normal", "high", "urgent"], float] = Field(
        default_factory=lambda: {"low": 24.0, "normal": 8.0, "high": 4.0, "urgent": 1.0}
    )
    timezone: str = "UTC"
    # Language of outgoing mail to whoever has none of their own: "en", "de" (shipped), or one
    # with a folder of templates in templates_path. See mailgate/languages.py.
    language: str = "en"

    @field_validator("tag_prefix")
    @classmethod
    def _prefix_is_a_word(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,15}", value):
            raise ValueError("1-16 letters, digits, '-' or '_', starting with a letter")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("an IANA time zone name such as 'Europe/Berlin'") from None
        return value


class Outgoing(_Section):
    # With no relay_host, outgoing mail is written to a local Maildir (default <data_dir>/outgoing).
    relay_host: str = ""
    relay_port: int = Field(default=25, ge=1, le=65535)
    relay_security: Literal["none", "starttls", "tls"] = "none"
    relay_user: str = ""
    relay_password: str = ""
    # A file holding the relay password (root:mailgate 0640, or a LoadCredential= path), read at
    # every connect: the password stays out of the config, and a new one needs no restart.
    relay_password_file: Path | None = None
    maildir: Path | None = None
    max_attempts: int = Field(default=10, ge=1)
    # Our own loop-detection header value; mail carrying it came from this installation.
    loop_id: str = "mailgate"
    # The ticket title in an outgoing Subject is cut to this many characters ("…" marks the cut).
    max_subject_chars: int = Field(default=200, ge=20, le=2000)
    # No outgoing mail is larger than this, encoded as sent: a longer body is cut and says so.
    max_mail_bytes: int = Field(default=200 * 1024, ge=16 * 1024)

    @field_validator("relay_password_file", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @model_validator(mode="after")
    def _one_relay_password(self) -> Outgoing:
        if self.relay_password and self.relay_password_file is not None:
            raise ValueError("relay_password or relay_password_file, not both")
        return self


class Smtp(_Section):
    """The SMTP (or LMTP) listener that MTAs and mail clients deliver to."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=2525, ge=0, le=65535)
    # LMTP instead of SMTP, for sitting behind Postfix (lmtp:inet:127.0.0.1:2525).
    lmtp: bool = False
    max_connections: int = Field(default=100, ge=1)
    # Connections from one client address at once, so that one client cannot hold every slot.
    # Postfix delivers to one destination over at most 20 connections by default
    # (default_destination_concurrency_limit): an MTA in front of mailgate fits.
    max_connections_per_client: int = Field(default=20, ge=1)
    # Seconds a client may stay silent before it is disconnected.
    timeout_seconds: int = Field(default=300, ge=5)
    # STARTTLS when both are set (PEM files).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # AUTH is offered only after STARTTLS: a password in the clear is anyone's on the way. A
    # listener on a loopback address (nothing on the way) may offer it without TLS.
    auth_without_tls: bool = False
    # For a submission port: AUTH PLAIN/LOGIN against these users (require_auth refuses others).
    auth_users: dict[str, str] = Field(default_factory=dict)
    require_auth: bool = False
    # Mails accepted and not yet stored. Beyond this, recipients get 452 4.3.1 (the sender's MTA
    # retries later) until ingest catches up: a flood cannot fill the disk with spooled mail.
    # A soft limit: mails already past RCPT when it is reached are still taken.
    max_spooled: int = Field(default=10_000, ge=1)

    @field_validator("auth_without_tls")
    @classmethod
    def _only_on_loopback(cls, value: bool, info: ValidationInfo) -> bool:
        host = info.data.get("host")
        if value and host is not None and not _is_loopback(host):
            raise ValueError(f"false while smtp.host is {host!r}: AUTH without TLS only on a loopback address")
        return value

    @field_validator("auth_users")
    @classmethod
    def _auth_needs_tls(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        has_tls = info.data.get("tls_cert") and info.data.get("tls_key")
        if value and not has_tls and not info.data.get("auth_without_tls"):
            raise ValueError(
                "no users without smtp.tls_cert and smtp.tls_key: AUTH is offered only over TLS "
                "(or set smtp.auth_without_tls = true on a loopback address)"
            )
        return value


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


class ImapMailbox(_Section):
    """One mailbox the IMAP poller reads new mail from."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    host: str
    port: int = Field(default=993, ge=1, le=65535)
    security: Literal["tls", "starttls", "none"] = "tls"
    user: str
    password: str = ""
    password_file: Path | None = None
    # A command printing an OAuth2 access token (XOAUTH2: Microsoft 365 and Gmail need it).
    oauth2_command: str = ""
    folder: str = "INBOX"
    # After a mail is stored: move it to `move_to`, or just flag it \Seen.
    after: Literal["move", "flag"] = "move"
    move_to: str = "mailgate/done"
    # A mail that fails this many times is moved here and reported, never deleted.
    failure_folder: str = "mailgate/failed"
    max_failures: int = Field(default=5, ge=1)
    poll_seconds: int = Field(default=60, ge=1)
    idle: bool = True


class Spool(_Section):
    """The spool directory (<data_dir>/spool) where accepted mail waits for ingest."""

    # Tries of one mail before it goes to quarantine. A try that fails because the database is
    # down or locked does not count; one that ends with the process (an OOM kill) does.
    max_attempts: int = Field(default=5, ge=1)


class Limits(_Section):
    max_message_bytes: int = Field(default=50 * 1024 * 1024, ge=1024)
    max_attachment_bytes: int = Field(default=25 * 1024 * 1024, ge=0)
    # Acknowledgements per sender address within ack_window_minutes (robots ping-pong otherwise).
    acks_per_sender: int = Field(default=5, ge=0)
    ack_window_minutes: int = Field(default=60, ge=1)
    # People a new ticket's first mail can make participants (To and Cc): each costs a person
    # and a participant row in the mail's one transaction. The rest stay in the stored mail.
    max_participants_per_mail: int = Field(default=50, ge=0)


class Relay(_Section):
    """Mail the desk passes on between requesters and staff (mailgate/relay/)."""

    # Files a relayed mail carries, in all: what does not fit is named in its text, not attached.
    max_attachment_bytes: int = Field(default=10 * 1024 * 1024, ge=0)


_DOMAIN = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


class Acknowledgements(_Section):
    """Who gets an acknowledgement, and how much of their request it repeats. An acknowledgement
    goes to an address nobody proved (the From of the mail): whatever it echoes, anyone can have
    the desk send to anyone. These settings narrow who gets one and what it carries; the mail
    itself always becomes a ticket."""

    # Sender domains that are acknowledged (a subdomain counts as its domain); empty: all.
    # An internal help desk names its own company's domains.
    domains: list[str] = Field(default_factory=list)
    # The request's subject in the acknowledgement's subject and text.
    quote_subject: bool = True
    # Characters of the request's text quoted back (at most 6 lines); 0: none.
    summary_chars: int = Field(default=500, ge=0, le=2000)
    # Microsoft's spam confidence level (X-MS-Exchange-Organization-SCL, SCL in
    # X-Forefront-Antispam-Report) from which a mail counts as spam; 5 is Microsoft's own default.
    spam_scl_threshold: int = Field(default=5, ge=1, le=9)
    # authserv-ids (RFC 8601) of the receiving MTAs whose Authentication-Results are believed;
    # empty: none, so no mail is judged by them.
    trusted_authserv_ids: list[str] = Field(default_factory=list)
    # Mail marked as spam by the receiving MTA: a ticket (without an acknowledgement), or
    # quarantine until a person retries it.
    spam: Literal["ticket", "quarantine"] = "ticket"

    @field_validator("domains")
    @classmethod
    def _domain_names(cls, value: list[str]) -> list[str]:
        names = [v.strip().lower().rstrip(".") for v in value]
        for name in names:
            if not _DOMAIN.fullmatch(name):
                raise ValueError(f"domain names like 'example.com' ({name!r} is not one)")
        return names

    @field_validator("trusted_authserv_ids")
    @classmethod
    def _authserv_ids(cls, value: list[str]) -> list[str]:
        # RFC 8601 compares them case-insensitively; most are the MTA's host name.
        ids = [v.strip().lower() for v in value]
        for authserv_id in ids:
            if not re.fullmatch(r"[^\s;()\"\\]+", authserv_id):
                raise ValueError(f"authserv-ids as the MTA writes them, e.g. 'mx.example.com' ({authserv_id!r})")
        return ids


class Intake(_Section):
    """Who may open a ticket by mail (ingest/admission.py). Known senders always may: staff, the
    requesters' directory, and whoever already takes part in a ticket; a reply to a ticket one
    takes part in is never refused. Others, by `unknown_senders`: "accept" them, accept only
    those of `domains` (a subdomain counts as its domain), or "refuse" them: their mail is kept
    on no ticket and they get a reply that says why (rate-limited like acknowledgements)."""

    unknown_senders: Literal["accept", "domains", "refuse"] = "accept"
    domains: list[str] = Field(default_factory=list)

    @field_validator("domains")
    @classmethod
    def _domain_names(cls, value: list[str]) -> list[str]:
        names = [v.strip().lower().rstrip(".").removeprefix("@") for v in value]
        for name in names:
            if not _DOMAIN.fullmatch(name):
                raise ValueError(f"domain names like 'example.com' ({name!r} is not one)")
        return names


class Rate(_Section):
    """At most `count` within `window_minutes`."""

    count: int = Field(ge=1)
    window_minutes: int = Field(ge=1)


# Webmail domains that countless unrelated people share: their senders are limited by address
# only. A robot at one of them is still caught by its address.
SHARED_DOMAINS = (
    "gmail.com",
    "googlemail.com",
    "outlook.com",
    "hotmail.com",
    "live.com",
    "msn.com",
    "yahoo.com",
    "icloud.com",
    "me.com",
    "aol.com",
    "proton.me",
    "protonmail.com",
    "gmx.de",
    "gmx.net",
    "web.de",
    "t-online.de",
    "mail.ru",
    "yandex.ru",
    "qq.com",
    "163.com",
)


class Breaker(_Section):
    """The circuit breaker: how many new tickets (each an acknowledgement and a dispatcher
    notice) one source may open before its mail is only stored, without any outgoing mail.

    A source is the sender's exact address, its folded address (case and +suffix do not count)
    and its domain. Only new tickets count: a person writing many replies never trips it.
    """

    enabled: bool = True
    per_sender: Rate = Rate(count=8, window_minutes=60)
    per_address: Rate = Rate(count=10, window_minutes=60)
    # Short, so that a robot answering from a new address each time is caught within seconds
    # while a company whose people open a ticket now and then is not.
    per_domain: Rate = Rate(count=8, window_minutes=10)
    # Domains limited by address only. The domains of our own addresses always are (an internal
    # help desk's employees all share one).
    exempt_domains: list[str] = Field(default_factory=lambda: list(SHARED_DOMAINS))

    @field_validator("exempt_domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        for domain in value:
            if not re.fullmatch(r"[A-Za-z0-9.-]+\.[A-Za-z0-9-]+", domain):
                raise ValueError(f"domain names like example.com (not {domain!r})")
        return [d.lower() for d in value]


class Parsing(_Section):
    """What reading one mail may cost. The raw mail is always stored whole; beyond these
    bounds only the parsed view (text, headers, attachments) is cut, and the trace says so."""

    # MIME parts read; the rest of a mail with more stays in the raw mail only.
    max_mime_parts: int = Field(default=1000, ge=1)
    # The longest header value read (address headers aside); a longer one is cut at a space.
    max_header_bytes: int = Field(default=32 * 1024, ge=1024)
    # All header values of one mail together, address headers (To, Cc …) included.
    max_header_total_bytes: int = Field(default=4 * 1024 * 1024, ge=64 * 1024)
    # HTML converted to text when a mail has no plain text; the text shows the first this many.
    max_html_bytes: int = Field(default=1024 * 1024, ge=1024)
    # The text of a mail kept for its ticket (and searched for quotes) is cut to this many characters.
    max_text_chars: int = Field(default=1_000_000, ge=10_000)
    # A stored subject (and the ticket title) is cut to this many characters.
    max_subject_chars: int = Field(default=1000, ge=80)


class StaffMember(_Section):
    """A person who works the desk. Mail from any of their addresses is theirs, but a From header
    proves nothing: what staff may do by mail needs the mail authenticated (ingest/authenticate.py)."""

    address: EmailStr  # where mailgate writes to them
    # Further addresses they send from (an alias, a second domain): the same person.
    aliases: list[EmailStr] = Field(default_factory=list)
    name: str = ""
    # "agent" works tickets of their teams and those assigned to them; "dispatcher" and "admin"
    # may do everything. "staff" is the older name of "agent".
    role: Literal["agent", "dispatcher", "admin", "staff"] = "agent"
    team: str = ""  # the older single team; counts as the first of `teams`
    teams: list[str] = Field(default_factory=list)
    manager: str = ""  # the manager's address, for escalations
    # The language of mail to this person; empty: tickets.language.
    language: str = ""

    @field_validator("role")
    @classmethod
    def _staff_is_agent(cls, value: str) -> str:
        return "agent" if value == "staff" else value

    @property
    def all_teams(self) -> list[str]:
        return list(dict.fromkeys([t for t in (self.team, *self.teams) if t]))

    @property
    def addresses(self) -> list[str]:
        return [self.address, *self.aliases]


class Requester(_Section):
    """A person who writes to the desk, as the company's directory knows them: a ticket carries
    their name, department and location, and mail to them is in their language."""

    address: EmailStr
    name: str = ""
    department: str = ""
    location: str = ""
    manager: str = ""  # the manager's address, for escalations (issue 13)
    language: str = ""


class Directory(_Section):
    # A CSV file of requesters (a header row naming address and any of name, department,
    # location, manager, language), e.g. exported from the HR system; relative to this file.
    # [[requesters]] tables in the config add to it and win for the same address.
    csv: Path | None = None

    @field_validator("csv", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value


class Commands(_Section):
    """Reply commands of the dispatcher desk (#assign, #priority …, see ingest/commands.py)."""

    # Whom an agent may assign a ticket of theirs to: "team" a member of one of their teams,
    # "anyone" any staff member, "no" only themselves (#take). Dispatchers and admins anyone.
    agents_may_reassign: Literal["team", "anyone", "no"] = "team"
    # #undo reverts the sender's last command mail on the ticket if it is at most this old.
    undo_window_minutes: int = Field(default=30, ge=1)
    # Tickets one query reply (#mine, #queue) lists; it says how many more there are.
    digest_tickets: int = Field(default=50, ge=1, le=500)


class Log(_Section):
    """What the daemon logs (commands log only warnings unless -v), and how."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    # "text": one line per event, for journald (which adds the time). "json": one JSON object
    # per line with time, level, logger and message, for ELK, Loki and journald's JSON fields.
    format: Literal["text", "json"] = "text"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MAILGATE_", env_nested_delimiter="__", extra="forbid", frozen=True)

    data_dir: Path = Path("data")
    # Attachment files; empty: <data_dir>/attachments. Daemons on several hosts sharing one
    # PostgreSQL database must share this folder (one network mount) while each keeps its own
    # data_dir, whose spool must be on a local disk.
    attachments_path: Path | None = None
    # A folder of templates that reword outgoing mail: the same layout as the shipped templates/
    # (<occasion>/subject.txt, body.txt); what it lacks comes from the shipped ones.
    templates_path: Path | None = None
    database_url: str = ""
    # HMAC key for reply tokens. Empty: generated once and kept in <data_dir>/secret.
    secret: str = ""
    # The Linux niceness of the daemon's ingest and sender threads, never below the daemon's own:
    # under a flood the SMTP listener, whose clients wait for each answer, gets the CPU first.
    # 0: the daemon's own niceness (on a busy shared host, other work would otherwise hold
    # ingest back).
    background_niceness: int = Field(default=19, ge=0, le=19)
    addresses: Addresses = Addresses()
    tickets: Tickets = Tickets()
    outgoing: Outgoing = Outgoing()
    limits: Limits = Limits()
    acknowledgements: Acknowledgements = Acknowledgements()
    relay: Relay = Relay()
    breaker: Breaker = Breaker()
    intake: Intake = Intake()
    sla: Sla = Sla()
    parsing: Parsing = Parsing()
    smtp: Smtp = Smtp()
    spool: Spool = Spool()
    imap: list[ImapMailbox] = Field(default_factory=list)
    staff: list[StaffMember] = Field(default_factory=list)
    requesters: list[Requester] = Field(default_factory=list)
    directory: Directory = Directory()
    # Routing rules, tried in order on each new ticket (routing/rules.py), and monitoring
    # systems whose mail opens one incident ticket per alert (routing/alerts.py).
    routes: list[Route] = Field(default_factory=list)
    alerts: list[AlertSource] = Field(default_factory=list)
    commands: Commands = Commands()
    log: Log = Log()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = settings_cls.model_config.get("toml_file")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    @field_validator("attachments_path", "templates_path", mode="before")
    @classmethod
    def _empty_means_the_default(cls, value: Any) -> Any:
        return None if value == "" else value

    @model_validator(mode="after")
    def _languages_have_templates(self) -> Settings:
        from mailgate.languages import available

        choices = available(self.templates_path)
        wanted = [("tickets.language", self.tickets.language)]
        wanted += [(f"staff.{n}.language", m.language) for n, m in enumerate(self.staff) if m.language]
        wanted += [(f"requesters.{n}.language", r.language) for n, r in enumerate(self.requesters) if r.language]
        for key, language in wanted:
            if language not in choices:
                raise ValueError(
                    f"{key} = {language!r}: expected one of {', '.join(sorted(choices))} "
                    f"(or a folder {language}/ of templates in templates_path)"
                )
        return self

    @model_validator(mode="after")
    def _staff_addresses_are_unique(self) -> Settings:
        # One address, one person: an alias listed for two people would let either act as both.
        owner: dict[str, int] = {}
        for n, member in enumerate(self.staff):
            for address in member.addresses:
                if address in owner and owner[address] != n:
                    raise ValueError(
                        f"staff.{n} lists {address!r}, which staff.{owner[address]} lists already: "
                        "expected each address under one staff member"
                    )
                owner[address] = n
        return self

    @model_validator(mode="after")
    def _routes_name_what_exists(self) -> Settings:
        from mailgate.routing.rules import problems

        if lines := problems(self):
            raise ValueError("\n  ".join(lines))
        return self

    @model_validator(mode="after")
    def _intake_domains_given(self) -> Settings:
        if self.intake.unknown_senders == "domains" and not self.intake.domains:
            raise ValueError(
                "intake.domains = []: expected at least one domain while intake.unknown_senders = 'domains' "
                "(or unknown_senders = 'refuse' to accept known senders only)"
            )
        return self

    def staff_member(self, address: str) -> StaffMember | None:
        """The staff member who sends from `address` (their address or an alias), if any."""
        address = address.lower()
        return next((m for m in self.staff if address in m.addresses), None)

    @field_validator("secret")
    @classmethod
    def _secret_is_long_enough(cls, value: str) -> str:
        if value and len(value) < MIN_SECRET_CHARS:
            raise ValueError(f"at least {MIN_SECRET_CHARS} random characters (e.g. from `openssl rand -hex 32`)")
        return value

    @field_validator("database_url")
    @classmethod
    def _url_has_a_scheme(cls, value: str) -> str:
        if value and not re.match(r"^(sqlite|postgresql)(\+\w+)?://", value):
            raise ValueError("a sqlite:/// or postgresql+psycopg:// URL")
        return value

    # Derived values -------------------------------------------------------------------------

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'mailgate.db').resolve()}"

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def legacy_spool_url(self) -> str:
        """Where releases before the spool directory queued accepted mail: a table of the
        database on PostgreSQL, a file of its own beside it on SQLite (see legacy_spool.py)."""
        url = make_url(self.effective_database_url)
        if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
            return url.render_as_string(hide_password=False)
        path = Path(url.database)
        return url.set(database=str(path.with_name(path.stem + "-spool" + path.suffix))).render_as_string(
            hide_password=False
        )

    @property
    def outgoing_maildir(self) -> Path:
        return self.outgoing.maildir or self.data_dir / "outgoing"

    @property
    def attachments_dir(self) -> Path:
        return self.attachments_path or self.data_dir / "attachments"

    def secret_bytes(self) -> bytes:
        """The token key; an empty setting means one generated once and kept in the data dir."""
        if self.secret:
            return self.secret.encode()
        path = self.data_dir / "secret"
        if not path.exists():
            # Many pipe processes may start at once on a fresh install: write the key completely
            # under a private name, then link it into place; whoever links first wins, and no
            # process can ever read a half-written (empty) key.
            self.data_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.data_dir, prefix=".secret-")
            try:
                with os.fdopen(fd, "w") as fh:
                    fh.write(secrets.token_hex(32))
                    fh.flush()
                    os.fsync(fh.fileno())
                with contextlib.suppress(FileExistsError):
                    os.link(tmp, path)
            finally:
                os.unlink(tmp)
        key = path.read_text().strip()
        if len(key) < MIN_SECRET_CHARS:
            raise ConfigError(f"{path} holds no usable key ({len(key)} characters); delete it to have one generated")
        return key.encode()


def _describe(error: dict[str, Any]) -> str:
    loc = error["loc"]
    if not loc:  # a check across sections names its keys itself
        return str(error["msg"]).removeprefix("Value error, ")
    key = ".".join(str(part) for part in loc)
    value = error.get("input")
    shown = repr(value) if not isinstance(value, dict) else "(a table)"
    if error["type"] == "extra_forbidden":
        # A misspelt key has no variable of its own to name: say which key was meant instead.
        near = difflib.get_close_matches(str(loc[-1]), _keys_beside(loc), n=1)
        where = ".".join(str(part) for part in loc[:-1] if not isinstance(part, int))
        meant = f"did you mean {where + '.' if where else ''}{near[0]}?" if near else "no such key"
        return f"{key} = {shown}: unknown key, {meant} (every key is in config/mailgate.example.toml)"
    env = "MAILGATE_" + "__".join(str(p).upper() for p in loc if not isinstance(p, int))
    expected = error["msg"]
    if expected.startswith("Value error, "):
        expected = "expected " + expected.removeprefix("Value error, ")
    return f"{key} = {shown}: {expected} (set in the config file or {env})"


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The settings model whose keys sit at `loc` (a path of keys and list indexes)."""
    model: type[BaseModel] = Settings
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        annotation = field.annotation
        candidates = (annotation, *typing.get_args(annotation))
        inner = [a for a in candidates if isinstance(a, type) and issubclass(a, BaseModel)]
        if not inner:
            return None
        model = inner[0]
    return model


def _keys_beside(loc: tuple[Any, ...]) -> list[str]:
    model = _model_at(loc[:-1])
    return list(model.model_fields) if model is not None else []


# Variables mailgate reads that are not settings, and those of its test suite.
_OTHER_VARIABLES = ("MAILGATE_CONFIG", "MAILGATE_DATA_DIR", "MAILGATE_CORPUS")
_OTHER_PREFIXES = ("MAILGATE_TEST_",)


def unknown_variables(environ: Mapping[str, str] = os.environ) -> list[str]:
    """A line for each MAILGATE_* variable that sets nothing (pydantic-settings ignores them),
    with the variable that was probably meant."""
    known = set(_OTHER_VARIABLES)
    for name in Settings.model_fields:
        known.add(f"MAILGATE_{name.upper()}")
        section = _model_at((name,))
        if section is not None:
            known.update(f"MAILGATE_{name.upper()}__{key.upper()}" for key in section.model_fields)
    lines = []
    for variable in sorted(environ):
        if not variable.startswith("MAILGATE_") or variable in known or variable.startswith(_OTHER_PREFIXES):
            continue
        near = difflib.get_close_matches(variable, sorted(known), n=1)
        meant = f"did you mean {near[0]}?" if near else "see config/mailgate.example.toml"
        lines.append(f"environment variable {variable} sets nothing and is ignored: {meant}")
    return lines


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Read settings from `path` (or MAILGATE_CONFIG, or a default location), then environment."""
    config = read_config_file(path)

    class _FromFile(Settings):
        model_config = SettingsConfigDict(toml_file=config.path)

    try:
        loaded = _FromFile(**overrides)
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors()]
        where = f" in {config.path}" if config.path else ""
        raise ConfigError(f"invalid configuration{where}:\n  " + "\n  ".join(lines)) from None
    values = {k: getattr(loaded, k) for k in Settings.model_fields}
    # The data directory as `mailgate ingest` finds it without pydantic: the two never disagree.
    values["data_dir"] = config.beside(loaded.data_dir) if "data_dir" in overrides else find_data_dir(config)
    for key in ("attachments_path", "templates_path"):
        if values[key] is not None:
            values[key] = config.beside(values[key])
    outgoing = values["outgoing"]
    paths = {k: config.beside(getattr(outgoing, k)) for k in ("maildir", "relay_password_file") if getattr(outgoing, k)}
    if paths:
        values["outgoing"] = outgoing.model_copy(update=paths)
    if loaded.directory.csv is not None:
        from mailgate.directory import read_requesters

        listed = {r.address: r for r in read_requesters(config.beside(loaded.directory.csv))}
        listed.update({r.address: r for r in loaded.requesters})  # the config's own tables win
        values["requesters"] = list(listed.values())
    return Settings.model_construct(**values)
