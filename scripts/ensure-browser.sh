#!/usr/bin/env bash
# The browser the browser tests drive: Debian's chromium (Playwright's own browser downloads are never used).
# Installs it when missing and run as root with apt; otherwise says what to install (the browser tests then skip).
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium for the browser tests ..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq chromium fonts-noto-cjk >/dev/null 2>&1 || {
    apt-get update -qq >/dev/null 2>&1
    apt-get install -y -qq chromium fonts-noto-cjk >/dev/null
  }
else
  echo "Please install chromium (e.g. sudo apt-get install chromium fonts-noto-cjk); browser tests skip without it" >&2
fi
