#!/bin/bash
# smalloc-run's --lib: a relative path still serves malloc in a child that
# changed directory, and a path with no library behind it is an error.
#   launcher_test.sh SMALLOC_RUN LIB PYTHON
set -uo pipefail
run=$1 lib=$2 python=$3
fail() { echo "FAIL launcher: $*"; exit 1; }

# The library named relative to the current directory (from its parent).
cd "$(dirname "$lib")/.." || fail "cannot cd next to $lib"
rel="$(basename "$(dirname "$lib")")/$(basename "$lib")"
out=$("$run" --lib "$rel" -- bash -c "cd / && exec $python -c 'import ctypes; print(ctypes.CDLL(None).smalloc_owns is not None)'" 2>&1)
[[ $out == True ]] || fail "with --lib $rel, a child in / printed: $out"

out=$("$run" --lib /nonexistent/libsmalloc.so -- true 2>&1) && fail "a missing library was accepted"
[[ $out == *"no library at /nonexistent/libsmalloc.so"* ]] || fail "no clear error for a missing library: $out"
echo "ok launcher"
