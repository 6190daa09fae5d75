#!/bin/bash
# run_dashboard_test.sh LIB SCREENSHOT
# Starts a real program (tests/introspect/app.py, allocating steadily) with LIB
# preloaded and the endpoint on a free port, then runs the browser test
# (dashboard_test.py, headless Chromium) against its dashboard.
set -u
lib=$1 shot=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/smalloc-browser.XXXXXX") || exit 1
app_pid=""
cleanup() {
  [[ -n $app_pid ]] && kill "$app_pid" 2>/dev/null && wait "$app_pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

LD_PRELOAD=$lib SMALLOC_STATS_ADDR=127.0.0.1:0 /usr/bin/python3 "$here/../introspect/app.py" 100000 \
  </dev/null >"$tmp/out" 2>"$tmp/err" &
app_pid=$!
port=""
for _ in $(seq 200); do
  port=$(sed -n 's|.*serving allocator stats on http://127.0.0.1:\([0-9]*\)/stats.*|\1|p' "$tmp/err")
  [[ -n $port ]] && break
  kill -0 "$app_pid" 2>/dev/null || break
  sleep 0.05
done
if [[ -z $port ]]; then
  echo "FAIL: the program never announced its endpoint; its stderr:"
  cat "$tmp/err"
  exit 1
fi
/usr/bin/python3 "$here/dashboard_test.py" --url "http://127.0.0.1:$port/" --screenshot "$shot"
status=$?
kill -0 "$app_pid" 2>/dev/null || { echo "FAIL: the program died while the dashboard was open"; exit 1; }
exit $status
