#!/usr/bin/env bash
# Install the Debian packages the build needs when they are missing.
# mysqlclient compiles against libmariadb-dev and finds it with pkg-config; the dashboard's
# browser test drives Debian's chromium; the `pooltender top` test drives tmux; `make bench`
# drives the service with wrk; promtool (package prometheus) checks the shipped alert rules
# (tests/test_contrib.py); the PgBouncer tests start Debian's pgbouncer.
# Usage: scripts/ensure-system-deps.sh [extra-package ...]
set -euo pipefail
want=(libmariadb-dev pkg-config chromium tmux wrk prometheus pgbouncer "$@")
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "error: missing system packages: ${missing[*]}" >&2
  echo "install them with: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
