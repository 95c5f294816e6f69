#!/usr/bin/env bash
# Installs what the load harness's peers need (benches/README.md):
#  - the npm packages of benches/peers (ws, socket.io; exact versions from
#    package-lock.json), with `npm ci`;
#  - HAProxy from Debian's packages (as root; skipped with a note otherwise).
# Safe to run again. Needs node (v18+) and npm on the PATH.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v npm >/dev/null 2>&1; then
  echo "setup.sh: npm is missing (install Node.js 18+ with npm first)" >&2
  exit 1
fi
echo "== npm ci in benches/peers"
npm ci --no-audit --no-fund --loglevel=error

if command -v haproxy >/dev/null 2>&1; then
  echo "== haproxy present: $(haproxy -v 2>/dev/null | head -1)"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "== apt-get install haproxy"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq haproxy >/dev/null; then
    apt-get update -qq >/dev/null
    apt-get install -y -qq haproxy >/dev/null
  fi
  echo "== haproxy installed: $(haproxy -v 2>/dev/null | head -1)"
else
  echo "setup.sh: haproxy is missing and this is not root with apt-get: install Debian's haproxy package by hand" >&2
  exit 1
fi
