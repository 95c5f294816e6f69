#!/usr/bin/env bash
# Runs the Autobahn|Testsuite fuzzing client (cases 1-7, 10, 12 and 13; 12.*
# and 13.* are permessage-deflate) against node/examples/ws_echo.rs, an echo
# server built from the node's own WebSocket layers, and prints the count of
# each outcome. Exits 1 when a case FAILED or was UNCLEAN.
#
# Needs Python 2.7 (pyenv's 2.7.18 on the project's machines); the suite is
# installed on first use into $AUTOBAHN_DIR (default target/autobahn), with
# one fix: zope needs an __init__.py to import from a --target folder.
# Reports: $AUTOBAHN_DIR/reports/index.html.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${AUTOBAHN_DIR:-target/autobahn}
port=${AUTOBAHN_PORT:-9001}
export PYENV_VERSION=${PYENV_VERSION:-2.7.18}
mkdir -p "$dir"
if [ ! -x "$dir/lib/bin/wstest" ]; then
  echo "== installing autobahntestsuite into $dir/lib (log: $dir/pip.log)"
  python2 -m pip install --target "$dir/lib" autobahntestsuite > "$dir/pip.log" 2>&1
  touch "$dir/lib/zope/__init__.py"
fi
cargo build -q -p palaver-node --example ws_echo
target/debug/examples/ws_echo "127.0.0.1:$port" > "$dir/echo.log" 2>&1 &
echo_pid=$!
trap 'kill $echo_pid 2>/dev/null || true' EXIT
cat > "$dir/spec.json" <<JSON
{"outdir": "./reports", "servers": [{"agent": "palaver", "url": "ws://127.0.0.1:$port"}],
 "cases": ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*", "12.*", "13.*"],
 "exclude-cases": [], "exclude-agent-cases": {}}
JSON
echo "== wstest -m fuzzingclient (log: $dir/wstest.log)"
(cd "$dir" && PYTHONPATH=lib python2 lib/bin/wstest -m fuzzingclient -s spec.json > wstest.log 2>&1)
python3 - "$dir/reports/index.json" <<'PY'
import collections, json, sys
cases = json.load(open(sys.argv[1]))["palaver"]
outcomes = collections.Counter(c["behavior"] for c in cases.values())
deflate = collections.Counter(c["behavior"] for k, c in cases.items() if k.split(".")[0] in ("12", "13"))
print(f"{len(cases)} cases: {dict(outcomes)}; permessage-deflate (12.*, 13.*): {dict(deflate)}")
bad = sorted(k for k, c in cases.items() if c["behavior"] in ("FAILED", "UNCLEAN"))
if bad:
    print("failed:", " ".join(bad))
    sys.exit(1)
PY
