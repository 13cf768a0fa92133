#!/usr/bin/env bash
# Creates .venv from a world-readable interpreter. The sandbox runs student code as an unprivileged uid that
# must read this environment (torch), so neither the interpreter nor the venv may sit below a directory that
# uid cannot enter (pyenv's interpreters live in /root, mode 700). When the checkout itself is not reachable
# by that uid, the venv is created under /opt/autograder and .venv links to it.
set -euo pipefail
venv=.venv
sandbox_uid=${AUTOGRADER_SANDBOX__UID:-65534}

python=""
for candidate in /usr/bin/python3 /usr/local/bin/python3 "$(command -v python3 || true)"; do
  [ -n "$candidate" ] && [ -x "$candidate" ] || continue
  if "$candidate" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    python=$candidate
    break
  fi
done
if [ -z "$python" ]; then
  echo "Python >= 3.11 with the venv module is needed (Debian: apt-get install python3 python3-venv)." >&2
  exit 1
fi

if [ -e "$venv/bin/python" ]; then
  exit 0
fi
target=$venv
if [ "$(id -u)" -eq 0 ] && ! setpriv --reuid="$sandbox_uid" --regid="$sandbox_uid" --clear-groups test -x "$PWD" 2>/dev/null; then
  target=/opt/autograder/venv-$(printf '%s' "$PWD" | sha256sum | cut -c1-12)
  mkdir -p /opt/autograder
  chmod 755 /opt/autograder
  echo "$PWD is not reachable by the sandbox uid; creating the venv in $target"
fi
"$python" -m venv "$target"
if [ "$target" != "$venv" ]; then
  rm -rf "$venv"
  ln -s "$target" "$venv"
fi
