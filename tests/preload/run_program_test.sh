#!/bin/bash
# run_program_test.sh LIB PROBE NAME COMMAND [ARGS...]
#
# Runs COMMAND twice, once plainly and once with LD_PRELOAD="LIB:PROBE", both
# with stdin from /dev/null, and passes only if
#   - the plain run exits 0 and prints something (otherwise the test itself is
#     broken and would prove nothing),
#   - both runs print byte-identical stdout and exit with the same status,
#   - the probe (probe.c) reported from at least one process, every reporting
#     process found its malloc owned by smalloc with a non-zero Rss in our
#     region, and in at least one process that Rss grew while the program ran.
# The expected output always comes from the plain run, never from this file.
# Exits 0 on PASS, 1 on FAIL; the last line says which, and why.
set -u

if [[ $# -lt 4 ]]; then
  echo "usage: $0 LIB PROBE NAME COMMAND [ARGS...]" >&2
  exit 2
fi
lib=$1 probe=$2 name=$3
shift 3
unset LD_PRELOAD  # the plain run must really be plain (glibc malloc)
limit=${SMALLOC_RUN_TIMEOUT:-55}  # seconds per run; below the ctest TIMEOUT so a hang is named

tmp=$(mktemp -d "${TMPDIR:-/tmp}/smalloc-preload.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT

fail() {
  echo "--- stderr, plain run (last 20 lines):"; tail -n 20 "$tmp/plain.err"
  echo "--- stderr, preloaded run (last 20 lines):"; tail -n 20 "$tmp/pre.err"
  [[ -s $tmp/probe ]] && { echo "--- probe report (first 20 lines):"; head -n 20 "$tmp/probe"; }
  echo "FAIL $name: $*"
  exit 1
}

# Where every thread of every process in group $1 is: a hang that CI meets
# once in hundreds of runs must say where it was when it is killed.
# At most 30 s in all, so that the test's own TIMEOUT does not cut it off.
stacks() {
  local p end=$((SECONDS + 30))
  for p in $(pgrep -g "$1"); do
    ((SECONDS < end)) || { echo "=== (no time left for the rest)"; return; }
    echo "=== pid $p: $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null)"
    # gdb's own complaints (ptrace refused, say) are kept; wchan too.
    command -v gdb >/dev/null &&
      timeout 10 gdb -batch -nx -p "$p" -ex "thread apply all bt 25" 2>&1 | grep -E '^(Thread|#)|ptrace|attach|denied'
    grep -H . /proc/"$p"/task/*/wchan 2>/dev/null
  done
}

# run TAG [ENV...]: runs the command with stdin from /dev/null, in a process
# group of its own; sets status_TAG (124 if it had to be stopped after
# $limit seconds, its stacks then in $tmp/TAG.stacks), secs_TAG.
run() {
  local tag=$1 start=$EPOCHREALTIME status tenths=0
  shift
  setsid env "$@" "${cmd[@]}" </dev/null >"$tmp/$tag.out" 2>"$tmp/$tag.err" &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null && ((tenths < limit * 10)); do
    sleep 0.1
    tenths=$((tenths + 1))
  done
  if kill -0 "$pid" 2>/dev/null; then
    stacks "$pid" >"$tmp/$tag.stacks" 2>&1
    kill -KILL -- -"$pid" 2>/dev/null
    { wait "$pid"; } 2>/dev/null  # (bash's "Killed" notice is not the program's)
    status=124
  else
    wait "$pid"
    status=$?
    kill -KILL -- -"$pid" 2>/dev/null  # whatever it left running in its group
  fi
  printf -v "status_$tag" %d "$status"
  printf -v "secs_$tag" %.2f "$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { print b - a }')"
}
cmd=("$@")

run plain
run pre LD_PRELOAD="$lib:$probe" SMALLOC_PROBE_OUT="$tmp/probe"

[[ $status_plain == 124 ]] && fail "plain run timed out after ${limit}s (test is broken)"
[[ $status_plain == 0 ]] || fail "plain run exited $status_plain (test is broken, not the allocator)"
[[ -s $tmp/plain.out ]] || fail "plain run printed nothing, so comparing outputs would prove nothing"
if [[ $status_pre == 124 ]]; then
  echo "--- where the preloaded run's threads were (first 150 lines):"
  head -n 150 "$tmp/pre.stacks"
  fail "preloaded run HUNG: killed after ${limit}s"
fi
((status_pre > 128)) && fail "preloaded run killed by signal $((status_pre - 128)) ($(kill -l $((status_pre - 128)) 2>/dev/null))"
[[ $status_pre == "$status_plain" ]] || fail "exit status differs: plain $status_plain, preloaded $status_pre"
if ! cmp -s "$tmp/plain.out" "$tmp/pre.out"; then
  echo "--- diff plain preloaded (first 30 lines):"
  diff "$tmp/plain.out" "$tmp/pre.out" | head -n 30
  fail "stdout differs ($(wc -c <"$tmp/plain.out") bytes plain, $(wc -c <"$tmp/pre.out") bytes preloaded)"
fi

# The probe: one line per process that exited normally with the probe loaded.
[[ -s $tmp/probe ]] || fail "probe wrote no report (was $probe loaded? did any process exit normally?)"
procs=$(wc -l <"$tmp/probe")
bad=$(grep -v ' owned=1 ' "$tmp/probe" | head -n 1)
if [[ -n $bad ]]; then
  case $bad in
    *owned=-1*) fail "smalloc_owns not found: libsmalloc is not loaded in this process: $bad" ;;
    *) fail "malloc is NOT served by smalloc (owned=0: another allocator wins): $bad" ;;
  esac
fi
bad=$(grep -E ' rss_kb=(0|-1)$' "$tmp/probe" | head -n 1)
[[ -z $bad ]] || fail "our region has no resident pages (rss_kb=0 or not found in smaps): $bad"
grew=$(awk '{ split($4, a, "="); split($5, b, "="); if (b[2] + 0 > a[2] + 0) n++ } END { print n + 0 }' "$tmp/probe")
((grew > 0)) || fail "no process's Rss in our region grew while it ran: the program's allocations did not land there"
maxrss=$(awk '{ split($5, b, "="); if (b[2] + 0 > m) m = b[2] + 0 } END { print m + 0 }' "$tmp/probe")

echo "PASS $name: identical stdout ($(wc -c <"$tmp/plain.out") bytes) and status $status_plain;" \
  "plain ${secs_plain}s, preloaded ${secs_pre}s; probe: $procs process(es) all owned=1, $grew grew, max rss ${maxrss} kB"
