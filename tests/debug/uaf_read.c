/* Reads a freed block after 64 more blocks of the same size were allocated.
   A read changes nothing, so natively there is no report; instead the debug
   build's FIFO quarantine must keep the slot out of reuse and its poison must
   hide the old contents ("stale": old data visible; "reused": the slot went
   to one of the new blocks).
   @native: none
   @native-stdout: dangling read saw: poisoned
   @func: read_after_free
   @valgrind: Invalid read of size 1
   @valgrind: 40 bytes inside a block of size 64 free'd
   @valgrind-errors: 1 */
#include "case.h"  /* first: it defines _GNU_SOURCE */
#include <stdlib.h>

enum { kSize = 64, kOthers = 64 };

const char* read_after_free(void) {
  char* volatile p = malloc(kSize);
  memset(p, 'A', kSize);
  free(p);
  char* others[kOthers];
  for (int i = 0; i < kOthers; ++i) memset(others[i] = malloc(kSize), 'B', kSize);
  about_to_commit_bug();
  char c = p[40]; /* BUG */
  for (int i = 0; i < kOthers; ++i) free(others[i]);
  /* Printing the name of the value, not the value: no uninitialised branch. */
  return c == 'A' ? "stale" : c == 'B' ? "reused" : "poisoned";
}

int main(void) {
  printf("dangling read saw: %s\n", read_after_free());
  return case_done();
}
