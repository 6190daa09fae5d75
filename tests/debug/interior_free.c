/* Frees a pointer 8 bytes into a live block. With SMALLOC_DEBUG_ABORT=0 the
   block must stay allocated, so the correct free afterwards is clean.
   @native: invalid-free
   @func: free_interior_pointer
   @valgrind: Invalid free() / delete / delete[] / realloc()
   @valgrind-errors: 1 */
#include "case.h"  /* first: it defines _GNU_SOURCE */
#include <stdlib.h>

void free_interior_pointer(void) {
  char* volatile p = malloc(40);
  memset(p, 'a', 40);
  about_to_commit_bug();
  free(p + 8); /* BUG */
  free(p);
}

int main(void) {
  free_interior_pointer();
  return case_done();
}
