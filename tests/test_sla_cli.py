"""`mailgate sla show|check|scan --dry-run` as an operator runs them (in-process, real SQLite)."""

from __future__ import annotations

import shutil

from click.testing import CliRunner

from mailgate import tickets
from mailgate.cli.root import cli
from tests.sla_desk import at, change, desk, mails, new_ticket, scan
from tests.test_sla_concurrency import _config


def _desk(tmp_path, sqlite_template):
    db = tmp_path / "mailgate.db"
    shutil.copy(sqlite_template, db)
    app = desk(tmp_path, f"sqlite:///{db}", when=at(30, 9), unassigned_after_hours=2)
    return app, _config(tmp_path / "mailgate.toml", app)


def run(config, *args: str):
    return CliRunner().invoke(cli, ["--config", str(config), *args], env={"MAILGATE_CONFIG": ""})


def test_sla_show_explains_deadlines_pauses_and_what_fired(tmp_path, sqlite_template) -> None:
    app, config = _desk(tmp_path, sqlite_template)
    number = new_ticket(app)
    scan(app, at(30, 13))  # the first answer breached: escalated
    change(app, number, lambda s, t, now: tickets.set_pending(s, t, None, actor="alice@example.com",
                                                               channel="test", now=now))  # fmt: skip
    result = run(config, "sla", "show", str(number), "--at", "2026-11-30T14:00")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "first response:  4h -> due Mon 2026-11-30 13:00" in out and "in breach" in out
    assert "paused:          1 time(s), 1:00:00 of business time" in out
    assert "escalation:first_response level 1 (for Mon 2026-11-30 13:00) to boss@example.com" in out
    assert run(config, "sla", "show", "99").exit_code != 0
    app.close()


def test_sla_check_lists_breaches_and_risks_and_dry_run_sends_nothing(tmp_path, sqlite_template) -> None:
    app, config = _desk(tmp_path, sqlite_template)
    late = new_ticket(app, subject="late one")
    app.clock.set(at(30, 10).astimezone(app.clock.now().tzinfo))
    soon = new_ticket(app, subject="soon one", sender="erin@example.com")
    result = run(config, "sla", "check", "--at", "2026-11-30T13:30")
    assert result.exit_code == 0, result.output
    breach, risk = result.output.split("at risk:")
    assert f"HD #{late}" in breach and "late one" in breach and "soon one" not in breach
    assert f"HD #{soon}" in risk  # due 14:00, warned from 13:00
    dry = run(config, "sla", "scan", "--at", "2026-11-30T13:30", "--dry-run")
    assert dry.exit_code == 0 and "would fire" in dry.output and "escalate 1" in dry.output
    assert mails(app, "sla_escalation") == []
    real = run(config, "sla", "scan", "--at", "2026-11-30T13:30")
    assert "escalate 1" in real.output and len(mails(app, "sla_escalation")) == 1
    assert "expected a time" in run(config, "sla", "scan", "--at", "tomorrow").output
    app.close()
