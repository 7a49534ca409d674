"""The service install as the README gives it: systemd/install.sh, run as root into a scratch root.

What a new admin hit before: the config could not be read by the service's (dynamic) user, the
unit's environment pointed the daemon at another data directory than the admin's commands, and
the Postfix pipe's user did not exist. Each test here checks the installed files for one of those.
"""

from __future__ import annotations

import configparser
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, server_missing

INSTALL = REPO / "systemd" / "install.sh"
pytestmark = pytest.mark.xdist_group("service_install")  # the install once (see pyproject)


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    if os.geteuid() != 0:
        server_missing("the service install needs root (it creates a user)")
    for tool in ("useradd", "systemd-analyze", "setpriv"):
        if shutil.which(tool) is None:
            server_missing(f"{tool} is not installed")
    # Not under pytest's 0700 tmp: the service's user must be able to walk down to its files.
    scratch = Path(tempfile.mkdtemp(prefix="mailgate-root-"))
    scratch.chmod(0o755)
    (scratch / "etc").mkdir()
    for name in ("passwd", "group", "shadow", "gshadow", "login.defs"):
        shutil.copy2(Path("/etc") / name, scratch / "etc" / name)
    # systemd-analyze verify resolves the unit's dependencies (sysinit.target …) inside the root.
    shutil.copytree("/usr/lib/systemd/system", scratch / "usr/lib/systemd/system", symlinks=True)
    result = subprocess.run(
        ["bash", str(INSTALL), "--root", str(scratch)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    yield scratch
    shutil.rmtree(scratch, ignore_errors=True)


def _account(root: Path, name: str) -> list[str]:
    for line in (root / "etc/passwd").read_text().splitlines():
        if line.split(":")[0] == name:
            return line.split(":")
    raise AssertionError(f"no user {name} in {root}/etc/passwd")


def _unit(root: Path) -> configparser.RawConfigParser:
    unit = configparser.RawConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    unit.read(root / "etc/systemd/system/mailgate.service")
    return unit


def test_the_unit_verifies_clean_inside_the_installed_root(root: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", "/etc/systemd/system/mailgate.service"],
        capture_output=True,
        text=True,
    )
    # verify also checks that ExecStart's program exists and that Documentation= resolves.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_the_unit_keeps_its_hardening(root: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", f"--root={root}", "/etc/systemd/system/mailgate.service"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    exposure = float(result.stdout.split("Overall exposure level for mailgate.service:")[1].split()[0])
    assert exposure <= 2.5, result.stdout[-300:]


def test_a_system_user_that_unit_and_pipe_share(root: Path) -> None:
    _, _, uid, _, _, home, shell = _account(root, "mailgate")
    assert int(uid) < 1000 and shell == "/usr/sbin/nologin" and home == "/var/lib/mailgate"
    service = _unit(root)["Service"]
    assert service["User"] == "mailgate" and "DynamicUser" not in service
    # The README's Postfix pipe runs as that same user.
    assert "user=mailgate argv=/usr/local/bin/mailgate ingest" in (REPO / "README.md").read_text()


def test_one_data_directory_for_the_daemon_and_the_admin(root: Path) -> None:
    """The unit sets no data directory of its own: the config file says where it is, and the
    admin's `sudo -u mailgate mailgate …` reads the same file from its default place."""
    service = _unit(root)["Service"]
    environment = service.get("Environment", "")
    assert "MAILGATE_DATA_DIR" not in environment
    assert "MAILGATE_CONFIG=/etc/mailgate/mailgate.toml" in environment
    config = (root / "etc/mailgate/mailgate.toml").read_text()
    assert 'data_dir = "/var/lib/mailgate"' in config.splitlines()
    assert service["StateDirectory"] == "mailgate"  # systemd's /var/lib/mailgate, owned by User=
    from mailgate.config_file import DEFAULT_CONFIG_PATHS

    assert Path("/etc/mailgate/mailgate.toml") in DEFAULT_CONFIG_PATHS


def test_the_config_is_readable_by_the_service_and_nobody_else(root: Path) -> None:
    config = root / "etc/mailgate/mailgate.toml"
    _, _, uid, gid, *_ = _account(root, "mailgate")
    mode = config.stat()
    assert (mode.st_uid, mode.st_gid, stat.S_IMODE(mode.st_mode)) == (0, int(gid), 0o640)
    read = [sys.executable, "-c", f"open({str(config)!r}).read()"]
    as_service = subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *read], capture_output=True, text=True
    )
    assert as_service.returncode == 0, as_service.stderr
    as_other = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *read], capture_output=True, text=True
    )
    assert "PermissionError" in as_other.stderr


def test_the_data_directory_belongs_to_the_service(root: Path) -> None:
    _, _, uid, gid, *_ = _account(root, "mailgate")
    data = (root / "var/lib/mailgate").stat()
    assert (data.st_uid, data.st_gid, stat.S_IMODE(data.st_mode)) == (int(uid), int(gid), 0o750)


def test_the_program_is_a_venv_of_its_own_that_the_service_can_run(root: Path) -> None:
    """Not the system Python (Debian refuses `pip install` there, PEP 668), and runnable by the
    service's user (a Python under /root would not be)."""
    assert os.readlink(root / "usr/local/bin/mailgate") == "/opt/mailgate/bin/mailgate"
    _, _, uid, gid, *_ = _account(root, "mailgate")
    program = root / "opt/mailgate/bin/mailgate"
    as_service = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", str(program), "--help"]
    result = subprocess.run(as_service, capture_output=True, text=True)
    assert result.returncode == 0 and "ingest" in result.stdout, result.stderr


def test_a_second_run_keeps_the_config(root: Path) -> None:
    config = root / "etc/mailgate/mailgate.toml"
    config.write_text(config.read_text() + "\n# edited by the admin\n")
    result = subprocess.run(["bash", str(INSTALL), "--root", str(root)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert config.read_text().endswith("# edited by the admin\n")
    assert [line.split(":")[0] for line in (root / "etc/passwd").read_text().splitlines()].count("mailgate") == 1


def test_a_python_the_service_cannot_reach_is_refused_before_the_venv_is_touched(root: Path, tmp_path: Path) -> None:
    private = tmp_path / "private"  # 0700, as /root is for a pyenv Python
    private.mkdir(mode=0o700)
    (private / "python3").symlink_to(sys.executable)
    result = subprocess.run(
        ["bash", str(INSTALL), "--root", str(root)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": str(private / "python3")},
        timeout=600,
    )
    assert result.returncode == 70 and "user mailgate cannot run" in result.stderr
    assert (root / "opt/mailgate/bin/mailgate").exists()  # the working install is still there


def test_an_upgrade_that_cannot_install_leaves_the_previous_install(root: Path) -> None:
    result = subprocess.run(
        ["bash", str(INSTALL), "--root", str(root), "--pip-args", "--no-index --find-links /nonexistent"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 70 and "the previous install is back" in result.stderr
    program = root / "opt/mailgate/bin/mailgate"
    assert subprocess.run([program, "--help"], capture_output=True).returncode == 0
