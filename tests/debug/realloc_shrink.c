/* Shrinks a 100-byte block to 40 bytes in place, uses all 40, then writes
   the byte that was in bounds before the shrink: it is past the end now.
   @native: heap-buffer-overflow
   @native-block: 40
   @func: shrink_in_place_then_overflow
   @valgrind: Invalid write of size 1
   @valgrind: 0 bytes after a block of size 40
   @valgrind-errors: 1 */
#include "case.h"  /* first: it defines _GNU_SOURCE */
#include <stdlib.h>

void shrink_in_place_then_overflow(void) {
  char* volatile p = malloc(100);
  memset(p, 'a', 100);
  char* volatile q = realloc(p, 40);
  printf("shrank %s\n", q == p ? "in place" : "by moving");
  for (int i = 0; i < 40; ++i)
    if (q[i] != 'a') { printf("realloc lost byte %d\n", i); exit(3); }
  memset(q, 'b', 40);
  about_to_commit_bug();
  q[40] = 'X'; /* BUG */
  free(q);
}

int main(void) {
  shrink_in_place_then_overflow();
  return case_done();
}
