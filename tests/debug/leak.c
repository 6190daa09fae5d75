/* Loses the only pointer to a 100-byte block. Nothing natively (leaks are
   memcheck's job); memcheck must call it definitely lost -- not "still
   reachable" through some pointer kept in the allocator -- at the malloc line.
   @native: none
   @func: leak_a_block
   @valgrind: 100 bytes in 1 blocks are definitely lost
   @valgrind-errors: 1 */
#include "case.h"  /* first: it defines _GNU_SOURCE */
#include <stdlib.h>

void leak_a_block(void) {
  about_to_commit_bug();
  char* volatile p = malloc(100); /* BUG */
  memset(p, 'a', 100);
  p = NULL;
}

/* Overwrites the dead stack frame that held the pointer, so that the leak
   check cannot find a stale copy there. */
void scrub_stack(void) {
  volatile char junk[4096];
  for (size_t i = 0; i < sizeof junk; ++i) junk[i] = 0;
}

int main(void) {
  leak_a_block();
  scrub_stack();
  return case_done();
}
