/* Writes an 8-byte word just past the end of a 24-byte block.
   @native: heap-buffer-overflow
   @native-block: 24
   @func: overflow_by_a_word
   @valgrind: Invalid write of size 8
   @valgrind: 0 bytes after a block of size 24 alloc'd
   @valgrind-errors: 1 */
#include "case.h"  /* first: it defines _GNU_SOURCE */
#include <stdint.h>
#include <stdlib.h>

void overflow_by_a_word(void) {
  char* volatile p = malloc(24);
  memset(p, 'a', 24);
  about_to_commit_bug();
  *(volatile uint64_t*)(p + 24) = 0x0123456789abcdefULL; /* BUG */
  free(p);
}

int main(void) {
  overflow_by_a_word();
  return case_done();
}
