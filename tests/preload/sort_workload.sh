#!/bin/bash
# sort(1) on 2 million generated lines. GNU sort allocates one large buffer,
# sorts with several threads, and with a small -S spills runs to temporary files
# and merges them, so it mixes huge blocks, threads and many small allocations.
# The input comes from a fixed Park-Miller generator in awk (exact in doubles),
# so it is the same on every run; only checksums and counts are printed.
set -eu
export LC_ALL=C  # byte order: fast, and independent of the user's locale
work=$(mktemp -d "${TMPDIR:-/tmp}/smalloc-sort.XXXXXX")
trap 'rm -rf "$work"' EXIT
in=$work/input

awk 'BEGIN {
  x = 20240601
  for (i = 0; i < 2000000; i++) {
    x = (x * 48271) % 2147483647
    printf "k%08x %d w%d\n", x, x % 100000, i % 977
  }
}' >"$in"
echo "input: $(wc -l <"$in") lines, md5 $(md5sum <"$in" | cut -d' ' -f1)"
echo "sort:         $(sort "$in" | md5sum)"
echo "sort -n -k2:  $(sort -s -n -k2,2 "$in" | md5sum)"
echo "sort -u -k3:  $(sort -u -k3,3 "$in" | wc -l)"
echo "sort -r -S:   $(sort -r -S 8M --parallel=2 -T "$work" "$in" | md5sum)"
echo "sort|uniq -c: $(cut -d' ' -f2 "$in" | sort | uniq -c | sort -rn -k1,1 -k2,2 | head -n 3 | tr -s ' ' | tr '\n' ';')"
