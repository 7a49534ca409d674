#!/usr/bin/env bash
# Install mailgate as a service (Debian 12 and the like), as root:
#   sudo systemd/install.sh            then edit /etc/mailgate/mailgate.toml and start it
#
# What it sets up, so the daemon, an admin's commands and the MTA pipe share one data directory
# and one database:
#   - a system user and group `mailgate` (no login, home /var/lib/mailgate);
#   - a venv in /opt/mailgate with this checkout installed (Debian's Python refuses `pip install`
#     into the system: PEP 668), and /usr/local/bin/mailgate pointing at it;
#   - /etc/mailgate/mailgate.toml (root:mailgate 0640: readable by the service, not by others),
#     with data_dir = "/var/lib/mailgate"; an existing file is left alone;
#   - /var/lib/mailgate (mailgate:mailgate 0750);
#   - the unit in /etc/systemd/system and this README in /usr/share/doc/mailgate.
# Run it again to upgrade: the venv is reinstalled, the config and the data are kept.
#
# Options: --root DIR installs into DIR instead of / (a scratch root, for a package or a test;
# DIR/etc must hold passwd, group, shadow and gshadow). --pip-args "ARGS" are passed to pip
# install (e.g. "--no-index --find-links /srv/wheels" on a machine without network).
set -euo pipefail

root=/
pip_args=""
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root="$2"; shift 2 ;;
    --pip-args) pip_args="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 64 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "install.sh: run as root (it creates a user and writes /etc)" >&2; exit 77; }
src="$(cd "$(dirname "$0")/.." && pwd)"
in_root() { printf '%s%s' "${root%/}" "$1"; }
# The system's Python (Debian: python3 with python3-venv), which every user can run; a Python
# under /root or a home directory (pyenv …) would leave the service unable to start its own venv.
python="${PYTHON:-$( [ -x /usr/bin/python3 ] && echo /usr/bin/python3 || command -v python3 )}"

# The user: the unit, the admin (`sudo -u mailgate mailgate …`) and Postfix's pipe (user=mailgate).
if ! grep -q '^mailgate:' "$(in_root /etc/passwd)"; then
  useradd --root "$root" --system --user-group --home-dir /var/lib/mailgate --no-create-home \
    --shell /usr/sbin/nologin --comment "mailgate email-to-ticket gateway" mailgate
fi
uid="$(awk -F: '$1 == "mailgate" {print $3}' "$(in_root /etc/passwd)")"
gid="$(awk -F: '$1 == "mailgate" {print $4}' "$(in_root /etc/passwd)")"

# The service's user must be able to run the venv, which links to its Python's files: every
# folder above them must let other users through. Checked before the old venv is replaced.
cannot_run() {
  echo "install.sh: user mailgate cannot run $1: $python (or its library) is not readable by other" \
       "users; use the system Python (apt install python3-venv) or PYTHON=/path/to/python3" >&2
  exit 70
}
"$python" - <<'CHECK' || cannot_run "$python"
import os, sys

for path in {sys.executable, os.path.realpath(sys.executable), os.path.realpath(sys.prefix), os.path.realpath(os.__file__)}:
    while path != "/":
        path = os.path.dirname(path)
        if not os.stat(path).st_mode & 0o001:  # "others" may not pass through this folder
            sys.exit(1)
CHECK

# The program: a venv of its own. The venv's paths are those inside the root.
venv="$(in_root /opt/mailgate)"
# The venv's scripts name its path, so it is built in place: the old one waits beside it and
# comes back if the new one cannot be built (an upgrade that fails leaves the service as it was).
rm -rf "$venv.old"
[ -e "$venv" ] && mv "$venv" "$venv.old"
restore() { rm -rf "$venv"; [ -e "$venv.old" ] && mv "$venv.old" "$venv"; echo "install.sh: $1; the previous install is back" >&2; exit 70; }
"$python" -m venv "$venv" || restore "cannot make a venv with $python"
# shellcheck disable=SC2086  # pip_args is a list of words on purpose
"$venv/bin/pip" install --quiet --disable-pip-version-check $pip_args "$src" || restore "pip could not install $src"
rm -rf "$venv.old"
if [ "$root" = / ]; then
  runuser -u mailgate -- "$venv/bin/mailgate" --version >/dev/null 2>&1 || cannot_run "$venv/bin/mailgate"
fi
install -d -m 0755 "$(in_root /usr/local/bin)"
ln -sfn /opt/mailgate/bin/mailgate "$(in_root /usr/local/bin/mailgate)"

# The config: root writes it, the service reads it, nobody else (it may hold passwords).
install -d -m 0755 "$(in_root /etc/mailgate)"
config="$(in_root /etc/mailgate/mailgate.toml)"
if [ ! -e "$config" ]; then
  sed 's|^data_dir = "data"$|data_dir = "/var/lib/mailgate"|' "$src/config/mailgate.example.toml" >"$config"
  grep -q '^data_dir = "/var/lib/mailgate"$' "$config" \
    || { echo "install.sh: the example config has no data_dir line to set" >&2; exit 70; }
fi
chown "0:$gid" "$config"
chmod 0640 "$config"

# The data: the database, the spool, attachments, the secret. Owned by the service's user.
install -d -m 0750 -o "$uid" -g "$gid" "$(in_root /var/lib/mailgate)"

install -D -m 0644 "$src/systemd/mailgate.service" "$(in_root /etc/systemd/system/mailgate.service)"
install -D -m 0644 "$src/README.md" "$(in_root /usr/share/doc/mailgate/README.md)"

if [ "$root" = / ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi
cat <<DONE
mailgate installed (venv /opt/mailgate, user mailgate, data /var/lib/mailgate).
Next: edit /etc/mailgate/mailgate.toml, then
  sudo -u mailgate mailgate db upgrade
  sudo -u mailgate mailgate check-config
  systemctl enable --now mailgate
DONE
