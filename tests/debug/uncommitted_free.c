/* Frees a pointer into a slot its slab never handed out, well past those it
   did. Committed on demand (this case's tests set SMALLOC_COMMIT=on-demand,
   as strict overcommit would), that slot is not even readable: the debug
   build must report an invalid free, not crash reading its header.
   @native: invalid-free
   @func: free_uncommitted_slot
   @valgrind: Invalid free() / delete / delete[] / realloc()
   @valgrind-errors: 1 */
#include "case.h" /* first: it defines _GNU_SOURCE */
#include <stdlib.h>

void free_uncommitted_slot(void) {
  char* volatile p = malloc(64);
  memset(p, 'a', 64);
  /* 1 MiB on: a slot of the same slab (2 MiB or more even in Valgrind's
     fallback layout), past the 64 KiB it committed first. */
  char* volatile far = p + ((size_t)1 << 20);
  about_to_commit_bug();
  free(far); /* BUG */
  free(p);
}

int main(void) {
  free_uncommitted_slot();
  return case_done();
}
