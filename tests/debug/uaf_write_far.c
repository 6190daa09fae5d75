/* Writes into the last byte of a freed 10000-byte block, past its last whole
   64 bytes: the poison check must find it, and say where.
   @native: write-after-free
   @native-block: 10000
   @native-says: freed block written at offset +9999 (found 0x58
   @func: write_far_after_free
   @valgrind: Invalid write of size 1
   @valgrind: 9,999 bytes inside a block of size 10,000 free'd
   @valgrind-errors: 1 */
#include "case.h"  /* first: it defines _GNU_SOURCE */
#include <malloc.h>
#include <stdlib.h>

void write_far_after_free(void) {
  char* volatile p = malloc(10000);
  memset(p, 'a', 10000);
  free(p);
  about_to_commit_bug();
  p[9999] = 'X'; /* BUG */
  malloc_trim(0);
}

int main(void) {
  write_far_after_free();
  return case_done();
}
