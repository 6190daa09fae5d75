/* Frees the same block twice.
   @native: double-free
   @native-block: 40
   @func: free_twice
   @valgrind: Invalid free() / delete / delete[] / realloc()
   @valgrind-errors: 1 */
#include "case.h"  /* first: it defines _GNU_SOURCE */
#include <stdlib.h>

void free_twice(void) {
  char* volatile p = malloc(40);
  memset(p, 'a', 40);
  free(p);
  about_to_commit_bug();
  free(p); /* BUG */
}

int main(void) {
  free_twice();
  return case_done();
}
