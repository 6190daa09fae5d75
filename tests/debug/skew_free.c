/* Frees a pointer in the gap before a slab's first slot: a small class's
   slabs start some way into their span (layout.hpp, kSlabSkew), and such a
   pointer decodes to a slot number past the slab's slots. It must be
   reported as an invalid free. In a fallback layout the debug build read a
   header at an address that was not mapped, and crashed: natively the
   program runs itself again under ulimit -v 8 GiB (not under Valgrind,
   whose own layout is a fallback one already).
   @native: invalid-free
   @func: free_before_first_slot
   @valgrind: Invalid free() / delete / delete[] / realloc()
   @valgrind-errors: 1 */
#include "case.h" /* first: it defines _GNU_SOURCE */
#include <stdint.h>
#include <stdlib.h>
#include <sys/resource.h>

void free_before_first_slot(void) {
  char* volatile p = malloc(64); /* the first slot of its slab, 58 KiB into the span */
  memset(p, 'a', 64);
  /* Every span starts on a boundary of 128 KiB or more. */
  char* volatile gap = (char*)(((uintptr_t)p & ~(uintptr_t)0x1FFFF) + 24);
  about_to_commit_bug();
  free(gap); /* BUG */
  free(p);
}

int main(int argc, char** argv) {
  (void)argc;
  const char* preload = getenv("LD_PRELOAD");
  if (!getenv("CASE_UNDER_LIMIT") && !(preload && strstr(preload, "vgpreload"))) {
    const struct rlimit limit = {(rlim_t)8 << 30, (rlim_t)8 << 30};
    if (setenv("CASE_UNDER_LIMIT", "1", 1) != 0 || setrlimit(RLIMIT_AS, &limit) != 0) return 6;
    execv("/proc/self/exe", argv);
    return 7;
  }
  free_before_first_slot();
  return case_done();
}
