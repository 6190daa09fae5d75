#!/bin/bash
# library_test.sh LIB: the library depends on nothing beyond libc (not even
# the C++ runtime, which a C program then does not load), exports only the
# API, and a process that does not ask for the stats endpoint never loads the
# HTTP, JSON or logging code.
set -u
lib=$1
fail() { echo "FAIL: $*"; exit 1; }

needed=$(readelf -d "$lib" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
[[ -n $needed ]] || fail "readelf found no NEEDED entries in $lib (test is broken)"
for n in $needed; do
  case $n in
    libc.so.6 | ld-linux-x86-64.so.2) ;;
    *) fail "$lib needs $n" ;;
  esac
done

# No dynamic initialisers: malloc and free run before the library's
# constructors (from the dynamic loader, from other libraries' constructors),
# and a constructor that set up state would wipe what they did.
inits=$(nm "$lib" | grep -c '_GLOBAL__sub_I')
[[ $inits -eq 0 ]] || fail "$lib has $inits dynamic initialiser(s): $(nm -C "$lib" | grep '_GLOBAL__sub_I' | awk '{print $3}' | tr '\n' ' ')"

# Exported functions: the API (libc's names, smalloc_*, operator new/delete).
bad=$(nm -D --defined-only "$lib" | awk '$2 ~ /[TW]/ {print $3}' |
      grep -Ev '^(smalloc_|_Zn[wa]|_Zd[la]|malloc|free|calloc|realloc|reallocarray|posix_memalign|aligned_alloc|memalign|valloc|pvalloc|malloc_usable_size|malloc_trim|mallinfo|mallinfo2|mallopt|malloc_stats|malloc_info|free_sized|free_aligned_sized|__libc_(malloc|free|calloc|realloc|memalign|valloc|pvalloc)|_init|_fini)')
[[ -z $bad ]] || fail "unexpected exported symbols: $bad"

maps=$(env -u SMALLOC_STATS_ADDR LD_PRELOAD="$lib" /bin/cat /proc/self/maps)
grep -q "$(basename "$lib")" <<<"$maps" || fail "the library was not loaded into cat (test is broken)"
! grep -q 'libstdc++' <<<"$maps" || fail "a C program with the library preloaded loaded libstdc++"
maps=$(env -u SMALLOC_STATS_ADDR LD_PRELOAD="$lib" /usr/bin/python3 -c 'print(open("/proc/self/maps").read())')
grep -q "$(basename "$lib")" <<<"$maps" || fail "the library was not loaded (test is broken)"
if grep -Eq 'introspect|spdlog|httplib|fmt' <<<"$maps"; then
  fail "a process without SMALLOC_STATS_ADDR loaded: $(grep -Eo '[^/]*(introspect|spdlog|httplib|fmt)[^ ]*' <<<"$maps" | sort -u | tr '\n' ' ')"
fi
maps=$(SMALLOC_STATS_ADDR=127.0.0.1:0 LD_PRELOAD="$lib" /usr/bin/python3 -c 'print(open("/proc/self/maps").read())' 2>/dev/null)
grep -q 'smalloc-introspect' <<<"$maps" || fail "with SMALLOC_STATS_ADDR set, libsmalloc-introspect.so was not loaded (so the check above proves nothing)"
echo "PASS: $(basename "$lib") needs only: $(echo $needed)"
