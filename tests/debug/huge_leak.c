/* Blocks larger than the largest slot Valgrind leaves room for (32 MiB): a
   64 MiB block used, grown and freed cleanly, then a 48 MiB block leaked.
   Under memcheck they must work, and the leak must be reported like any
   other, at the malloc line. Whether memcheck says "definitely" or "possibly"
   lost is its own guess: under Valgrind mappings sit low, so a 48 MiB block
   spans addresses that some unrelated numbers in memory happen to fall in.
   Natively (8 GiB slots) nothing is reported.
   @native: none
   @func: leak_a_huge_block
   @valgrind: 50,331,648 bytes in 1 blocks are
   @valgrind-errors: 1 */
#include "case.h"  /* first: it defines _GNU_SOURCE */
#include <stdlib.h>

#define MIB ((size_t)1 << 20)

void use_a_huge_block(void) {
  char* volatile p = malloc(64 * MIB);
  if (!p) { printf("malloc(64 MiB) failed\n"); exit(3); }
  memset(p, 'a', 64 * MIB);
  char* volatile q = realloc(p, 96 * MIB);
  if (!q || q[64 * MIB - 1] != 'a') { printf("realloc lost the block\n"); exit(3); }
  memset(q + 64 * MIB, 'b', 32 * MIB);
  free(q);
}

void leak_a_huge_block(void) {
  about_to_commit_bug();
  char* volatile p = malloc(48 * MIB); /* BUG */
  if (!p) { printf("malloc(48 MiB) failed\n"); exit(3); }
  memset(p, 'a', 4096);
  p = NULL;
}

/* Overwrites the dead stack frame that held the pointer, so that the leak
   check cannot find a stale copy there. */
void scrub_stack(void) {
  volatile char junk[4096];
  for (size_t i = 0; i < sizeof junk; ++i) junk[i] = 0;
}

int main(void) {
  use_a_huge_block();
  leak_a_huge_block();
  scrub_stack();
  return case_done();
}
