"""The requesters' directory from a CSV file (directory.csv): one row per person, as an HR or
identity system exports it. Every row is checked like a [[requesters]] table; a bad row stops
mailgate with the file, the line, the column and what was expected."""

from __future__ import annotations

import csv
from pathlib import Path

from pydantic import ValidationError

from mailgate.config import Requester
from mailgate.config_file import ConfigError

COLUMNS = tuple(Requester.model_fields)


def read_requesters(path: Path) -> list[Requester]:
    try:
        # utf-8-sig: the byte-order mark that spreadsheet programs write in front of a CSV.
        with open(path, newline="", encoding="utf-8-sig") as handle:
            sample = handle.read(4096)
            handle.seek(0)
            try:
                dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
            except csv.Error:  # one column, or too little to tell: plain comma-separated
                dialect = csv.excel
            rows = csv.DictReader(handle, dialect=dialect)
            header = [c.strip().lower() for c in rows.fieldnames or []]
            if "address" not in header:
                raise ConfigError(f"directory.csv {path}: the header row must name an 'address' column (got {header})")
            unknown = [c for c in header if c not in COLUMNS]
            if unknown:
                raise ConfigError(f"directory.csv {path}: unknown columns {unknown}; expected some of {list(COLUMNS)}")
            rows.fieldnames = header
            return [_requester(path, rows.line_num, row) for row in rows]
    except OSError as exc:
        raise ConfigError(f"directory.csv {path} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"directory.csv {path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except csv.Error as exc:
        raise ConfigError(f"directory.csv {path}: {exc}") from None


def _requester(path: Path, line: int, row: dict[str, str | None]) -> Requester:
    values = {k: (v or "").strip() for k, v in row.items() if k in COLUMNS}
    try:
        return Requester(**values)
    except ValidationError as exc:
        problem = exc.errors()[0]
        column = ".".join(str(p) for p in problem["loc"])
        raise ConfigError(
            f"directory.csv {path} line {line}: {column} = {values.get(column, '')!r}: "
            f"{problem['msg'].removeprefix('Value error, ')}"
        ) from None
