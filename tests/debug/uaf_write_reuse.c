/* Writes into a freed block after 64 more blocks of its size were allocated,
   then keeps allocating and freeing blocks of that size (128 MiB in all, four
   times the default 32 MiB quarantine) until the slot must leave quarantine
   and its poison is checked. No malloc_trim here: this is the ordinary path.
   @native: write-after-free
   @native-block: 4096
   @func: write_after_free_then_reuse
   @valgrind: Invalid write of size 1
   @valgrind: 10 bytes inside a block of size 4,096 free'd
   @valgrind-errors: 1 */
#include "case.h"  /* first: it defines _GNU_SOURCE */
#include <stdlib.h>

enum { kSize = 4096, kOthers = 64, kChurn = 32768 };

void write_after_free_then_reuse(void) {
  char* volatile p = malloc(kSize);
  memset(p, 'a', kSize);
  free(p);
  char* others[kOthers];
  for (int i = 0; i < kOthers; ++i) memset(others[i] = malloc(kSize), 'B', kSize);
  about_to_commit_bug();
  p[10] = 'X'; /* BUG */
  for (int i = 0; i < kOthers; ++i) free(others[i]);
  for (int i = 0; i < kChurn; ++i) {
    char* volatile q = malloc(kSize);
    q[0] = 'c';
    free(q);
  }
}

int main(void) {
  write_after_free_then_reuse();
  return case_done();
}
