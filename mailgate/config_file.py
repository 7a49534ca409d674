"""Which config file is in use and where the data directory is, with the standard library only.

`mailgate ingest`, run by an MTA once per mail, needs nothing of the configuration but the data
directory (the spool is in it), and must not pay for pydantic to find it. `load_settings` asks
this module too, so the daemon and the pipe can never disagree about where the spool is.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

DEFAULT_CONFIG_PATHS = (Path("mailgate.toml"), Path("/etc/mailgate/mailgate.toml"))
DEFAULT_DATA_DIR = Path("data")
DATA_DIR_VARIABLE = "MAILGATE_DATA_DIR"


class ConfigError(Exception):
    """A configuration problem a person must fix; the message says which key and why."""


class ConfigFile(NamedTuple):
    """The config file in use (None: none, mailgate runs on its defaults) and its parsed table.

    A NamedTuple, not a dataclass: a dataclass compiles its methods at import, a cost every
    process of the MTA pipe would pay for nothing."""

    path: Path | None
    table: Mapping[str, Any] = {}  # one dict shared by every ConfigFile(None): nobody writes to it

    def beside(self, value: Path) -> Path:
        """Relative paths mean "beside the config file", whatever directory mailgate runs in:
        an MTA pipe and a systemd unit start in different places."""
        if self.path is None or value.is_absolute():
            return value
        return self.path.resolve().parent / value


def find_config_file(path: Path | None = None, environ: Mapping[str, str] = os.environ) -> Path | None:
    """`path` (--config), else $MAILGATE_CONFIG, else the first default location that exists."""
    if path is None and environ.get("MAILGATE_CONFIG"):
        path = Path(environ["MAILGATE_CONFIG"])
    if path is None:
        return next((p for p in DEFAULT_CONFIG_PATHS if p.exists()), None)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    return path


def read_config_file(path: Path | None = None, environ: Mapping[str, str] = os.environ) -> ConfigFile:
    found = find_config_file(path, environ)
    if found is None:
        return ConfigFile(None)
    try:
        return ConfigFile(found, tomllib.loads(found.read_text(encoding="utf-8")))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {found} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"config file {found} cannot be read: {exc.strerror}") from None


def find_data_dir(config: ConfigFile, environ: Mapping[str, str] = os.environ) -> Path:
    """$MAILGATE_DATA_DIR, else the file's `data_dir`, else `data`; relative to the config file."""
    if DATA_DIR_VARIABLE in environ:
        value: object = environ[DATA_DIR_VARIABLE]
    else:
        value = config.table.get("data_dir", DEFAULT_DATA_DIR)
    if not isinstance(value, str | Path):
        raise ConfigError(f"data_dir = {value!r}: expected a path (set in the config file or {DATA_DIR_VARIABLE})")
    return config.beside(Path(value))
