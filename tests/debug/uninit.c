/* Branches on a byte of a fresh malloc block that was never written. The
   debug build fills fresh blocks with a pattern natively; memcheck must still
   see those bytes as undefined.
   @native: none
   @func: branch_on_uninitialised
   @valgrind: Conditional jump or move depends on uninitialised value(s)
   @valgrind-errors: 1 */
#include "case.h"  /* first: it defines _GNU_SOURCE */
#include <stdlib.h>

int branch_on_uninitialised(void) {
  char* volatile p = malloc(16);
  p[0] = 1;
  int taken = 0;
  about_to_commit_bug();
  if (p[3] == 42) /* BUG */
    taken = 1;
  free(p);
  return taken;
}

int main(void) {
  branch_on_uninitialised();
  return case_done();
}
