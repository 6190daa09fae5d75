/* A correct program that rebuilds its environment with setenv, as redis'
   setproctitle does: glibc reallocs its environ array on the way, and the
   free of the old array comes before environ points to the new one. The
   debug build read its settings with getenv at its first free, from that
   freed (and poisoned) array, and crashed.
   @native: none
   @native-stdout: environment rebuilt
   @valgrind-errors: 0 */
#include "case.h" /* first: it defines _GNU_SOURCE */

extern char** environ;

int main(void) {
  char** old = environ;
  char** mine = calloc(1, sizeof(char*));
  environ = mine;
  int n = 0;
  for (int i = 0; old[i] && n < 200; ++i) {
    const char* eq = strchr(old[i], '=');
    if (!eq || eq == old[i] || eq - old[i] >= 255) continue;
    char name[256];
    memcpy(name, old[i], (size_t)(eq - old[i]));
    name[eq - old[i]] = 0;
    if (setenv(name, eq + 1, 1) != 0) return 3;
    ++n;
  }
  for (int i = 0; i < 50; ++i) {  /* more growth: more reallocs of environ */
    char name[32];
    snprintf(name, sizeof name, "CLEAN_SETENV_%d", i);
    if (setenv(name, "x", 1) != 0) return 3;
  }
  if (!getenv("CLEAN_SETENV_49")) return 4;
  if (environ != mine) free(mine);
  printf("environment rebuilt\n");
  return case_done();
}
