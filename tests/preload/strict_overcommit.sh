#!/bin/bash
# Under strict overcommit (vm.overcommit_memory = 2) the kernel charges every
# writable private mapping in full, MAP_NORESERVE or not. A process must then
# be charged for what it uses, not for its reservation: before smalloc
# committed on demand, one process took 10 GiB of this machine's 12 GiB
# commit limit at its first malloc and the next one got the 1.1 GiB left.
#
# Switches the machine to mode 2 for a few seconds (and back, whatever
# happens; ctest runs this test alone). Exits 77, which ctest reports as
# skipped, where it cannot: not root, or /proc/sys read-only.
#   strict_overcommit.sh LIB PYTHON
set -uo pipefail
lib=$1 python=$2
mode_file=/proc/sys/vm/overcommit_memory
fail() { echo "FAIL strict_overcommit: $*"; exit 1; }

# One run at a time on the machine: a second one would read mode 2 as the
# mode to restore.
exec 9> /tmp/smalloc-strict-overcommit.lock
flock 9 || fail "cannot lock /tmp/smalloc-strict-overcommit.lock"
old=$(cat "$mode_file") || fail "cannot read $mode_file"
if [[ $(id -u) != 0 ]] || ! echo "$old" 2>/dev/null > "$mode_file"; then
  echo "SKIP strict_overcommit: cannot write $mode_file here (not root, or read-only)"
  exit 77
fi
tmp=$(mktemp -d)
pids=()
cleanup() {
  echo "$old" > "$mode_file"
  touch "$tmp/go"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

committed_kb() { awk '/^Committed_AS:/ {print $2}' /proc/meminfo; }
largest_mapping_gib() {
  local range rest lo hi most=0
  while read -r range rest; do
    lo=$((16#${range%-*})) hi=$((16#${range#*-}))
    (( hi - lo > most )) && most=$(( hi - lo ))
  done < "/proc/$1/maps"
  echo $(( most >> 30 ))
}

# 64 MiB in blocks of 16 B to 256 KiB, all written; then it waits.
cat > "$tmp/hold.py" <<'EOF'
import os, sys, time
blocks, total, size = [], 0, 16
while total < 64 << 20:
    blocks.append(bytearray(b"x" * size))
    total += size
    size = size * 2 if size < 256 << 10 else 16
open(sys.argv[1], "w").write(str(len(blocks)))
while not os.path.exists(sys.argv[2]):
    time.sleep(0.02)
EOF

# Starts the holder ($1: label) with LD_PRELOAD=$2 and waits until it holds
# its blocks; sets grew_kb (how much Committed_AS grew meanwhile) and pid.
hold() {
  local label=$1 preload=$2 before
  before=$(committed_kb)
  LD_PRELOAD=$preload "$python" "$tmp/hold.py" "$tmp/ready.$label" "$tmp/go" > /dev/null 2> "$tmp/err.$label" &
  pid=$!
  pids+=("$pid")
  for _ in $(seq 500); do [[ -s $tmp/ready.$label ]] && break; sleep 0.02; done
  [[ -s $tmp/ready.$label ]] || fail "$label: the holder never got ready: $(head -c 300 "$tmp/err.$label")"
  grew_kb=$(( $(committed_kb) - before ))
}

echo 2 > "$mode_file" || fail "cannot switch to strict overcommit"
hold glibc ""
glibc_kb=$grew_kb
hold first "$lib"
first_kb=$grew_kb first_gib=$(largest_mapping_gib "$pid")
hold second "$lib"
second_kb=$grew_kb second_gib=$(largest_mapping_gib "$pid")
# A fork and a real program under the same limit.
out=$(LD_PRELOAD=$lib "$python" -c 'import subprocess; print(subprocess.run(["echo", "forked"], capture_output=True, text=True).stdout.strip())' 2>&1)
touch "$tmp/go"
echo "$old" > "$mode_file"

echo "Committed_AS grew by: glibc ${glibc_kb} kB, smalloc ${first_kb} kB, a second smalloc process ${second_kb} kB"
echo "reservations: ${first_gib} GiB and ${second_gib} GiB, read-only but where committed"
[[ $out == forked ]] || fail "python with fork under strict overcommit printed: $out"
# The native layout (31 TiB, or 17.5 TiB of it in one mapping), not a fallback squeezed into the limit.
(( first_gib >= 1024 && second_gib >= 1024 )) || fail "a fallback layout: ${first_gib} and ${second_gib} GiB"
# Charged about what glibc is for the same blocks (the slots' rounding, a
# slab's commit ahead and the counters' 8 MiB), not the reservation.
for kb in "$first_kb" "$second_kb"; do
  (( kb <= 2 * glibc_kb + 65536 )) || fail "charged ${kb} kB where glibc was charged ${glibc_kb} kB"
done
echo "ok strict_overcommit"
