/* Writes into a freed block; malloc_trim(0) then flushes the debug build's
   quarantine, which checks the poison of every block leaving it.
   @native: write-after-free
   @native-block: 64
   @native-says: freed block written at offset +10 (found 0x58
   @func: write_after_free
   @valgrind: Invalid write of size 1
   @valgrind: 10 bytes inside a block of size 64 free'd
   @valgrind-errors: 1 */
#include "case.h"  /* first: it defines _GNU_SOURCE */
#include <malloc.h>
#include <stdlib.h>

void write_after_free(void) {
  char* volatile p = malloc(64);
  memset(p, 'a', 64);
  free(p);
  about_to_commit_bug();
  p[10] = 'X'; /* BUG */
  malloc_trim(0);
}

int main(void) {
  write_after_free();
  return case_done();
}
