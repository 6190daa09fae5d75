/* Grows a 100-byte block to 120 bytes (it fits its slot, so the debug build
   resizes in place), uses all 120 bytes, then writes one past them. Anything
   reported before the last write is a false report.
   @native: heap-buffer-overflow
   @native-block: 120
   @func: grow_in_place_then_overflow
   @valgrind: Invalid write of size 1
   @valgrind: 0 bytes after a block of size 120
   @valgrind-errors: 1 */
#include "case.h"  /* first: it defines _GNU_SOURCE */
#include <stdlib.h>

void grow_in_place_then_overflow(void) {
  char* volatile p = malloc(100);
  memset(p, 'a', 100);
  char* volatile q = realloc(p, 120);
  printf("grew %s\n", q == p ? "in place" : "by moving");
  for (int i = 0; i < 100; ++i)
    if (q[i] != 'a') { printf("realloc lost byte %d\n", i); exit(3); }
  memset(q + 100, 'b', 20);
  if (q[119] != 'b') exit(3);
  about_to_commit_bug();
  q[120] = 'X'; /* BUG */
  free(q);
}

int main(void) {
  grow_in_place_then_overflow();
  return case_done();
}
