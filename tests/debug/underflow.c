/* Writes the byte just before a 24-byte block.
   @native: heap-buffer-underflow
   @native-block: 24
   @func: underflow_by_one_byte
   @valgrind: Invalid write of size 1
   @valgrind: 1 bytes before a block of size 24 alloc'd
   @valgrind-errors: 1 */
#include "case.h"  /* first: it defines _GNU_SOURCE */
#include <stdlib.h>

void underflow_by_one_byte(void) {
  char* volatile p = malloc(24);
  memset(p, 'a', 24);
  about_to_commit_bug();
  p[-1] = 'X'; /* BUG */
  free(p);
}

int main(void) {
  underflow_by_one_byte();
  return case_done();
}
