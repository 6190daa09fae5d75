/* Frees the address of a local array.
   @native: invalid-free
   @func: free_stack_pointer
   @valgrind: Invalid free() / delete / delete[] / realloc()
   @valgrind-errors: 1 */
#include "case.h"  /* first: it defines _GNU_SOURCE */
#include <stdlib.h>

void free_stack_pointer(void) {
  char buf[64];
  char* volatile p = buf; /* volatile: the compiler cannot see it is the stack */
  memset(p, 'a', sizeof buf);
  about_to_commit_bug();
  free(p); /* BUG */
}

int main(void) {
  free_stack_pointer();
  return case_done();
}
