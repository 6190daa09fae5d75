#!/bin/bash
# run_debug_case.sh native|valgrind LIB SOURCE COMMAND [ARGS...]
#
# Runs COMMAND (built from SOURCE) with the debug build LIB preloaded, natively
# or under memcheck, and checks the reports against what SOURCE declares:
#   @native: KIND | none     the debug build's error kind, or no report at all
#   @native-block: N         the report names a block of N bytes
#   @native-stdout: TEXT     stdout of the native run contains TEXT
#   @native-says: TEXT       the native report contains TEXT
#   @func: NAME              native backtrace names the program's function NAME
#   @valgrind: TEXT          (repeatable) valgrind's stderr contains TEXT
#   @valgrind-errors: N      memcheck's ERROR SUMMARY counts exactly N errors
#   @valgrind-option: OPT    (repeatable) extra valgrind option
#   @env: NAME=VALUE         (repeatable) set for the program in both modes
# and the line marked /* BUG */, which memcheck must name as FILE:LINE.
# Every run must end with the program's "done" line on stdout and the name of
# LIB there too (case.h prints who serves malloc), so a preload that failed
# cannot pass. Exits 0 on PASS, 1 on FAIL; the last line says which and why.
set -u
if [[ $# -lt 4 ]]; then
  echo "usage: $0 native|valgrind LIB SOURCE COMMAND [ARGS...]" >&2
  exit 2
fi
mode=$1 lib=$2 src=$3
shift 3
cmd=("$@")
name=$(basename "$src")

tmp=$(mktemp -d "${TMPDIR:-/tmp}/smalloc-debugcase.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT

fail() {
  for f in out err; do
    [[ -f $tmp/$f ]] || continue
    echo "--- std$f of the last run (last 60 lines):"
    tail -n 60 "$tmp/$f"
  done
  echo "FAIL $mode $name: $*"
  exit 1
}

# marker KEY: the values of "@KEY:" in SOURCE, one a line, comment closers cut.
marker() { sed -n "s/.*@$1: *\(.*\)$/\1/p" "$src" | sed 's/ *\*\/.*$//; s/ *$//'; }
[[ -r $src ]] || fail "cannot read $src"
kind=$(marker native) block=$(marker native-block) func=$(marker func)
want_stdout=$(marker native-stdout) want_errors=$(marker valgrind-errors) want_says=$(marker native-says)
[[ -n $kind ]] || fail "$src declares no @native: line (test is broken)"
bug_lines=$(grep -n '/\* BUG \*/' "$src" | cut -d: -f1)
[[ $(wc -w <<<"$bug_lines") -le 1 ]] || fail "more than one /* BUG */ line in $src"
[[ $kind == none || -n $bug_lines ]] || fail "$src has a bug kind but no /* BUG */ line (test is broken)"
envs=()
while IFS= read -r e; do [[ -n $e ]] && envs+=("$e"); done < <(marker env)

[[ -f $lib ]] || fail "no library at $lib"
ulimit -c 0  # an abort must not leave core or vgcore files behind
cd "$tmp" || exit 1

# run [ENV...]: the command with stdin from /dev/null; sets $status.
run() {
  local limit=${DEBUG_CASE_TIMEOUT:-25}
  [[ $mode == valgrind ]] && limit=${DEBUG_CASE_TIMEOUT:-280}
  # The subshell keeps bash's own "Aborted" notice out of the test log.
  (timeout -k 5 "$limit" env "${envs[@]}" "$@" </dev/null >"$tmp/out" 2>"$tmp/err") 2>/dev/null
  status=$?
  # timeout(1) exits 124 when it had to stop the command, 137 if it then killed it.
  [[ $status == 124 || $status == 137 ]] && fail "HUNG: killed after ${limit}s"
}

# The stderr line number of the first line matching a fixed string, or 0.
line_of() { grep -n -m1 -F -- "$1" "$tmp/err" | cut -d: -f1 | grep . || echo 0; }

check_finished() {
  [[ $status == 0 ]] || fail "exit status $status, expected 0 ($1)"
  grep -qx done "$tmp/out" || fail "the program did not print its final 'done' line ($1)"
  grep -qF -- "$(basename "$lib")" "$tmp/out" || fail "$(basename "$lib") did not serve malloc ($1)"
}

# check_report WHAT: the first debug-build report is of the declared kind and
# came after the program announced its bug (anything earlier is a false report).
check_report() {
  local mark first
  mark=$(line_of "==case== about to commit the bug") first=$(line_of "==smalloc== ERROR")
  [[ $first != 0 ]] || fail "no ==smalloc== ERROR report, expected $kind ($1)"
  [[ $mark != 0 && $mark -lt $first ]] || fail "a report came before the bug was committed: $(sed -n "${first}p" "$tmp/err") ($1)"
  sed -n "${first}p" "$tmp/err" | grep -qF -- "==smalloc== ERROR: $kind at 0x" ||
    fail "first report is not '$kind': $(sed -n "${first}p" "$tmp/err") ($1)"
  if [[ -n $block ]]; then
    sed -n "${first}p" "$tmp/err" | grep -qF -- "block of $block bytes" || fail "report does not say 'block of $block bytes' ($1)"
  fi
}

if [[ $mode == native ]]; then
  if [[ $kind == none ]]; then
    run LD_PRELOAD="$lib" "${cmd[@]}"
    grep -q "==smalloc== ERROR" "$tmp/err" && fail "false report: $(grep -m1 "==smalloc== ERROR" "$tmp/err")"
    check_finished "no error to report"
  else
    # Default settings: report, then abort.
    run LD_PRELOAD="$lib" "${cmd[@]}"
    [[ $status == 134 ]] || fail "exit status $status, expected 134 (SIGABRT after the report)"
    check_report "default settings"
    grep -q "^==smalloc== backtrace:" "$tmp/err" || fail "report has no backtrace"
    # C++ names come mangled: _Z21delete_malloced_blockv for delete_malloced_block().
    grep -qE -- "\((_Z[0-9]+)?$func[^+()]*\+0x" "$tmp/err" || fail "backtrace does not name the program's function $func"
    grep -q "^==smalloc== aborting" "$tmp/err" || fail "no 'aborting' line before the abort"
    grep -qx done "$tmp/out" && fail "the program ran on after the report"
    # SMALLOC_DEBUG_ABORT=0: same report, then the program runs to its end.
    run SMALLOC_DEBUG_ABORT=0 LD_PRELOAD="$lib" "${cmd[@]}"
    check_report "SMALLOC_DEBUG_ABORT=0"
    grep -q "^==smalloc== aborting" "$tmp/err" && fail "said 'aborting' with SMALLOC_DEBUG_ABORT=0"
    check_finished "SMALLOC_DEBUG_ABORT=0"
  fi
  if [[ -n $want_stdout ]]; then grep -qF -- "$want_stdout" "$tmp/out" || fail "stdout lacks '$want_stdout'"; fi
  if [[ -n $want_says ]]; then grep -qF -- "$want_says" "$tmp/err" || fail "report lacks '$want_says'"; fi
  echo "PASS native $name"
  exit 0
fi

[[ $mode == valgrind ]] || fail "unknown mode '$mode'"
command -v valgrind >/dev/null || fail "valgrind is not installed"
opts=()
while IFS= read -r o; do [[ -n $o ]] && opts+=("$o"); done < <(marker valgrind-option)
# The command from DESIGN.md/README: LD_PRELOAD in valgrind's own environment
# (Debian's valgrind is a shell script; the preload reaches the client), and
# the synonym so that memcheck does not replace our malloc with its own.
# SMALLOC_DEBUG_ABORT=0 lets the program finish, so the leak check and the
# ERROR SUMMARY always come; memcheck is the reporter checked here.
run SMALLOC_DEBUG_ABORT=0 LD_PRELOAD="$lib" valgrind --soname-synonyms=somalloc=nouserintercepts \
  --leak-check=full "${opts[@]}" "${cmd[@]}"
summary=$(grep -E "^==[0-9]+== ERROR SUMMARY: [0-9]+ errors" "$tmp/err" | tail -n 1)
[[ -n $summary ]] || fail "valgrind printed no ERROR SUMMARY (status $status)"
check_finished "under valgrind"
while IFS= read -r text; do
  [[ -z $text ]] || grep -qF -- "$text" "$tmp/err" || fail "valgrind output lacks '$text'"
done < <(marker valgrind)
if [[ -n $bug_lines ]]; then
  grep -qF -- "($name:$bug_lines)" "$tmp/err" || fail "valgrind output never names the bug's line $name:$bug_lines"
fi
if [[ -n $want_errors ]]; then
  got=$(sed -E 's/.*ERROR SUMMARY: ([0-9]+) errors.*/\1/' <<<"$summary")
  [[ $got == "$want_errors" ]] || fail "memcheck counted $got errors, expected $want_errors: $summary"
fi
if [[ $kind == none ]]; then
  grep -q "==smalloc== ERROR" "$tmp/err" && fail "false report under valgrind: $(grep -m1 "==smalloc== ERROR" "$tmp/err")"
else
  # The debug build's own check still fires: proof that it, not memcheck's
  # replacement malloc, served the program.
  check_report "under valgrind"
fi
echo "PASS valgrind $name"
