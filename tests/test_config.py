"""Configuration: defaults, file, environment; a bad value names key, value and expectation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailgate.config import ConfigError, load_settings

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mailgate.toml"
    path.write_text(text)
    return path


def test_the_example_config_loads_and_equals_the_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAILGATE_BACKGROUND_NICENESS", raising=False)  # conftest's, for the test daemons
    copy = tmp_path / "example.toml"
    copy.write_text((REPO / "config" / "mailgate.example.toml").read_text())
    example = load_settings(copy)
    defaults = load_settings(write(tmp_path, ""))  # beside it: relative paths resolve alike
    assert example == defaults
    assert example.tickets.tag_prefix == "HD"
    assert example.effective_database_url.startswith("sqlite:///")


def test_file_values_and_environment_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, '[tickets]\ntag_prefix = "IT"\n[outgoing]\nrelay_host = "a.example"\n')
    monkeypatch.setenv("MAILGATE_OUTGOING__RELAY_HOST", "b.example")
    monkeypatch.setenv("MAILGATE_DATABASE_URL", "postgresql+psycopg:///x")
    settings = load_settings(path)
    assert settings.tickets.tag_prefix == "IT"
    assert settings.outgoing.relay_host == "b.example"
    assert settings.effective_database_url == "postgresql+psycopg:///x"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[limits]\nacks_per_sender = "many"\n', ["limits.acks_per_sender", "'many'", "integer"]),
        ('[tickets]\ntag_prefix = "H D"\n', ["tickets.tag_prefix", "'H D'", "letters"]),
        ('[tickets]\ntimezone = "Mars/Olympus"\n', ["tickets.timezone", "IANA"]),
        ('[outgoing]\nrelay_security = "ssl"\n', ["outgoing.relay_security", "'ssl'", "'starttls'"]),
        ('[outgoing]\nrely_host = "x"\n', ["outgoing.rely_host", "unknown key"]),
        ('[addresses]\nsupport = "Help <help@x.org>"\n', ["addresses.support", "support@example.com"]),
        ('database_url = "mysql://x"\n', ["database_url", "'mysql://x'", "postgresql"]),
    ],
)
def test_bad_value_is_reported_with_key_value_and_expectation(tmp_path: Path, text: str, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    message = str(info.value)
    for part in expected:
        assert part in message


def test_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MAILGATE_LIMITS__ACK_WINDOW_MINUTES", "soon")
    with pytest.raises(ConfigError, match="MAILGATE_LIMITS__ACK_WINDOW_MINUTES"):
        load_settings(write(tmp_path, ""))


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "etc").mkdir()
    path = tmp_path / "etc" / "mailgate.toml"
    path.write_text('data_dir = "var"\nattachments_path = "shared/files"\n[outgoing]\nmaildir = "out"\n')
    monkeypatch.chdir(tmp_path)
    settings = load_settings(Path("etc/mailgate.toml"))
    assert settings.data_dir == tmp_path / "etc" / "var"
    assert settings.outgoing_maildir == tmp_path / "etc" / "out"
    assert settings.attachments_dir == tmp_path / "etc" / "shared" / "files"
    assert settings.spool_dir == tmp_path / "etc" / "var" / "spool"  # the spool stays local


def test_attachments_are_stored_where_attachments_path_says(tmp_path: Path, sqlite_template: Path) -> None:
    """Daemons on several hosts share one attachment folder: a mail's file lands there."""
    import shutil

    from mailgate.app import App
    from mailgate.ingest.pipeline import ingest
    from tests.mails import mail

    shutil.copy(sqlite_template, tmp_path / "mailgate.db")
    (tmp_path / "mailgate.toml").write_text(
        f'data_dir = "local"\ndatabase_url = "sqlite:///{tmp_path / "mailgate.db"}"\nattachments_path = "shared"\n'
    )
    app = App.build(load_settings(tmp_path / "mailgate.toml"))
    try:
        ingest(app, mail(attachments=[("log.txt", "text/plain", b"disk full")]), "test")
    finally:
        app.close()
    assert [p.read_bytes() for p in (tmp_path / "shared").rglob("*") if p.is_file()] == [b"disk full"]
    assert not (tmp_path / "local" / "attachments").exists()


def test_a_short_secret_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="secret = 'x': expected at least 16"):
        load_settings(write(tmp_path, 'secret = "x"\n'))


def test_broken_toml_and_missing_file_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[limits\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_cli_reports_a_bad_config_without_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "[limits]\nacks_per_sender = -1\n")
    run = subprocess.run(
        [sys.executable, "-m", "mailgate", "--config", str(path), "tickets", "list"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert run.returncode == 78
    assert "limits.acks_per_sender = -1" in run.stderr and "greater than or equal to 0" in run.stderr
    assert "Traceback" not in run.stderr


def test_generated_secret_is_written_once_even_when_many_processes_start(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    settings = load_settings(write(tmp_path, f'data_dir = "{tmp_path / "race"}"\n'))
    with ThreadPoolExecutor(max_workers=8) as pool:
        keys = set(pool.map(lambda _: settings.secret_bytes(), range(64)))
    assert len(keys) == 1 and len(next(iter(keys))) == 64
    assert [p.name for p in (tmp_path / "race").iterdir()] == ["secret"]  # no temporary files left


def test_generated_secret_is_kept_and_private(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, f'data_dir = "{tmp_path / "d"}"\n'))
    first = settings.secret_bytes()
    assert first == settings.secret_bytes() and len(first) == 64
    assert (tmp_path / "d" / "secret").stat().st_mode & 0o077 == 0


# -- what a misspelling gets -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "meant"),
    [
        ("[smtp]\nprot = 2525\n", "did you mean smtp.port?"),
        ('[outgoing]\nrely_host = "x"\n', "did you mean outgoing.relay_host?"),
        ('[[imap]]\nname = "a"\nhost = "h"\nuser = "u"\npasword = "x"\n', "did you mean imap.password?"),
        ('secrett = "x"\n', "did you mean secret?"),
    ],
)
def test_a_misspelt_key_names_the_key_that_was_meant(tmp_path: Path, text: str, meant: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    message = str(info.value)
    assert meant in message
    assert "MAILGATE_" not in message  # no variable to set for a key that does not exist


def _env(**extra: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MAILGATE_")} | extra


def _mailgate(config: Path, *args: str, **environment: str) -> subprocess.CompletedProcess[str]:
    """The real `mailgate --config CONFIG ARGS`, with only `environment` of MAILGATE_* set."""
    command = [sys.executable, "-m", "mailgate", "--config", str(config), *args]
    return subprocess.run(command, capture_output=True, text=True, env=_env(**environment), timeout=60)


def test_a_misspelt_variable_is_warned_with_the_one_meant(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    checked = _mailgate(path, "check-config", MAILGATE_SMPT__PORT="2526", MAILGATE_TICKETS__TIMEZONE="UTC")
    said = checked.stdout + checked.stderr
    assert "MAILGATE_SMPT__PORT sets nothing and is ignored: did you mean MAILGATE_SMTP__PORT?" in said
    assert "MAILGATE_TICKETS__TIMEZONE" not in said  # a real setting is not warned about


def test_log_format_json_writes_one_object_per_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[log]\nformat = "json"\n')
    done = _mailgate(path, "tickets", "list", MAILGATE_SMPT__PORT="1")
    line = json.loads(done.stderr.splitlines()[0])
    assert (line["level"], line["logger"]) == ("WARNING", "mailgate.config")
    assert "MAILGATE_SMPT__PORT" in line["message"] and "time" in line


def test_relay_password_and_its_file_are_not_both_set(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="relay_password or relay_password_file, not both"):
        load_settings(write(tmp_path, '[outgoing]\nrelay_password = "a"\nrelay_password_file = "pw"\n'))
    settings = load_settings(write(tmp_path, '[outgoing]\nrelay_password_file = "pw"\n'))
    assert settings.outgoing.relay_password_file == tmp_path / "pw"  # relative to the config file
