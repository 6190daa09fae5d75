/* Writes one byte past the end of a 24-byte block. The debug build finds
   the overwritten redzone when the block is freed.
   @native: heap-buffer-overflow
   @native-block: 24
   @func: overflow_by_one_byte
   @valgrind: Invalid write of size 1
   @valgrind: 0 bytes after a block of size 24 alloc'd
   @valgrind-errors: 1 */
#include "case.h"  /* first: it defines _GNU_SOURCE */
#include <stdlib.h>

void overflow_by_one_byte(void) {
  char* volatile p = malloc(24);
  memset(p, 'a', 24);
  about_to_commit_bug();
  p[24] = 'X'; /* BUG */
  free(p);
}

int main(void) {
  overflow_by_one_byte();
  return case_done();
}
