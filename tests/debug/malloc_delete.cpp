/* Releases a malloc'ed block with delete. Memcheck cannot see this mismatch
   when our allocator serves (DESIGN.md), so under Valgrind the debug build's
   own report, with Valgrind's backtrace, must name it.
   @native: alloc-dealloc-mismatch
   @native-block: 16
   @func: delete_malloced_block
   @valgrind: ==smalloc== ERROR: alloc-dealloc-mismatch */
#include "case.h"  /* first: it defines _GNU_SOURCE */
#include <cstdlib>
#include <cstring>

void delete_malloced_block() {
  char* volatile p = static_cast<char*>(std::malloc(16));
  std::memset(p, 'a', 16);
  about_to_commit_bug();
  delete p; /* BUG */
}

int main() {
  delete_malloced_block();
  return case_done();
}
