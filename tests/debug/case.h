/* Shared by the test programs (C and C++). The runner reads the marker on
   stderr to check that no report came before the bug, and the last stdout
   lines to check that the program ran to its end with smalloc's malloc. */
#ifndef SMALLOC_DEBUG_CASE_H
#define SMALLOC_DEBUG_CASE_H
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* write(2), not stdio: the line must be out before the bug can abort us. */
static inline void about_to_commit_bug(void) {
  static const char m[] = "==case== about to commit the bug\n";
  if (write(2, m, sizeof m - 1) < 0) _exit(5);
}

/* Names the object that serves malloc, so a preload that silently failed
   cannot make a "no report" test pass. */
static inline int case_done(void) {
  Dl_info info;
  void* sym = dlsym(RTLD_DEFAULT, "malloc");
  printf("malloc from: %s\n", sym && dladdr(sym, &info) && info.dli_fname ? info.dli_fname : "?");
  printf("done\n");
  return 0;
}
#endif
