"""The requesters' directory (config [[requesters]] and directory.csv): a ticket carries the
requester's name, department and location, the dispatcher sees them, and mail to the requester
is in their language. A bad row names its file, line and column."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from mailgate.app import App
from mailgate.config import ConfigError, load_settings
from mailgate.ingest.pipeline import ingest
from mailgate.models import Outbox, Ticket
from tests.conftest import make_settings
from tests.mails import mail

CSV = """address;name;department;location;language
dana@example.com;Dana Smith;Finance;Berlin, 3rd floor;de
erik@example.com;Erik Berg;Sales;Hamburg;
"""


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mailgate.toml"
    path.write_text(text)
    return path


def test_a_csv_directory_and_config_tables_load_together(tmp_path: Path) -> None:
    (tmp_path / "people.csv").write_text("\ufeff" + CSV, encoding="utf-8")  # as a spreadsheet saves it
    config = _config(
        tmp_path,
        '[directory]\ncsv = "people.csv"\n[[requesters]]\naddress = "erik@example.com"\ndepartment = "Support"\n',
    )
    settings = load_settings(config)
    by_address = {r.address: r for r in settings.requesters}
    assert by_address["dana@example.com"].location == "Berlin, 3rd floor"
    assert by_address["erik@example.com"].department == "Support"  # the config's table wins


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ("address,name\nnot-an-address,X\n", "line 2: address = 'not-an-address'"),
        ("name,department\nX,Y\n", "must name an 'address' column"),
        ("address,shoe_size\na@x.org,44\n", "unknown columns ['shoe_size']"),
    ],
)
def test_a_bad_directory_row_names_file_line_and_column(tmp_path: Path, rows: str, expected: str) -> None:
    (tmp_path / "people.csv").write_text(rows)
    with pytest.raises(ConfigError) as info:
        load_settings(_config(tmp_path, '[directory]\ncsv = "people.csv"\n'))
    assert expected in str(info.value) and "people.csv" in str(info.value)


def test_a_new_ticket_carries_what_the_directory_knows(tmp_path: Path, db_url: str, clock) -> None:
    requesters = [{"address": "dana@example.com", "name": "Dana Smith", "department": "Finance", "location": "Berlin"}]
    app = App.build(make_settings(tmp_path, db_url, requesters=requesters), clock=clock)
    try:
        ingest(app, mail(sender="dana@example.com"), "smtp")  # the mail itself gives no name
        with app.sessions() as session:
            ticket = session.scalars(select(Ticket)).one()
            notice = session.scalars(select(Outbox).where(Outbox.kind == "dispatcher_new")).one()
            ack = session.scalars(select(Outbox).where(Outbox.kind == "ack")).one()
            assert (ticket.department, ticket.location) == ("Finance", "Berlin")
    finally:
        app.close()
    assert notice.body.startswith("From Dana Smith, Finance, Berlin <dana@example.com>")
    assert ack.body.startswith("Hello Dana Smith,")


def test_a_requester_is_written_to_in_their_directory_language(tmp_path: Path, db_url: str, clock) -> None:
    requesters = [{"address": "dana@example.com", "language": "de"}]
    app = App.build(make_settings(tmp_path, db_url, requesters=requesters), clock=clock)
    try:
        ingest(app, mail(), "smtp")
        with app.sessions() as session:
            ack = session.scalars(select(Outbox).where(Outbox.kind == "ack")).one()
    finally:
        app.close()
    assert ack.body.startswith("Guten Tag")


def test_a_directory_of_addresses_only_is_read_and_a_bad_one_named(tmp_path: Path) -> None:
    (tmp_path / "people.csv").write_text("address\ndana@example.com\n")
    settings = load_settings(_config(tmp_path, '[directory]\ncsv = "people.csv"\n'))
    assert [r.address for r in settings.requesters] == ["dana@example.com"]
    (tmp_path / "people.csv").write_text("address\nbad\n")
    with pytest.raises(ConfigError, match="line 2: address = 'bad'"):
        load_settings(_config(tmp_path, '[directory]\ncsv = "people.csv"\n'))
