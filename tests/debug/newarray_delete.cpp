/* Releases a new[]'ed array with scalar delete.
   @native: alloc-dealloc-mismatch
   @native-block: 32
   @func: delete_array_as_scalar
   @valgrind: ==smalloc== ERROR: alloc-dealloc-mismatch */
#include "case.h"

// The warning is the bug this program exists to commit.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"

void delete_array_as_scalar() {
  // int, not a class with a destructor: new[] then stores no cookie, so the
  // block is exactly 8 * 4 bytes and starts where delete is handed it.
  int* volatile p = new int[8];
  for (int i = 0; i < 8; ++i) p[i] = i;
  about_to_commit_bug();
  delete p; /* BUG */
}

int main() {
  delete_array_as_scalar();
  return case_done();
}
