/* probe: preloaded after libsmalloc (LD_PRELOAD=libsmalloc.so:libprobe.so) to
 * prove that the program's malloc really is smalloc's.
 *
 * At load and at exit it does one deliberate malloc(24), asks smalloc_owns()
 * (looked up with dlsym, so the probe also loads without smalloc) whether the
 * pointer is ours, and reads from /proc/self/smaps the Rss of the mapping
 * holding that pointer and of every other mapping that starts in smalloc's
 * region (committed on demand, the region is many mappings). At exit it appends one line to $SMALLOC_PROBE_OUT:
 *
 *   pid=123 comm=python3 owned=1 rss_start_kb=8 rss_kb=5120
 *
 * rss_kb > rss_start_kb means the program's own allocations landed in our
 * region. Everything after the probe malloc uses only open/read/write and
 * snprintf into stack buffers: the report must not disturb the heap it
 * measures. Processes that exec or _exit write nothing, by design. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Rss (kB) of the smaps entry whose range holds addr and of those that
 * start at an address owns() says is smalloc's, or -1 if none does. */
static long rss_of_mappings(unsigned long addr, int (*owns)(const void*)) {
  int fd = open("/proc/self/smaps", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  char buf[8192], line[512];
  size_t len = 0;
  int inside = 0;
  long rss = -1;
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) {
    for (ssize_t i = 0; i < n; i++) {
      if (buf[i] != '\n') {
        if (len < sizeof line - 1) line[len++] = buf[i];
        continue;
      }
      line[len] = '\0';
      len = 0;
      unsigned long lo, hi;
      char dash;
      /* A mapping header is "lo-hi perms ..."; field lines are "Name: value". */
      if (sscanf(line, "%lx%c%lx", &lo, &dash, &hi) == 3 && dash == '-')
        inside = (addr >= lo && addr < hi) || (owns && owns((const void*)lo));
      else if (inside && strncmp(line, "Rss:", 4) == 0)
        rss = (rss < 0 ? 0 : rss) + strtol(line + 4, NULL, 10);
    }
  }
  close(fd);
  return rss;
}

struct measure {
  int owned; /* 1 ours, 0 not ours, -1 smalloc_owns not found (smalloc not loaded) */
  long rss_kb;
};

static struct measure measure_now(void) {
  struct measure m = {-1, -1};
  int (*owns)(const void*) = (int (*)(const void*))dlsym(RTLD_DEFAULT, "smalloc_owns");
  void* p = malloc(24); /* the one deliberate allocation */
  if (owns) m.owned = owns(p) ? 1 : 0;
  m.rss_kb = rss_of_mappings((unsigned long)p, owns);
  free(p);
  return m;
}

static struct measure at_start;

__attribute__((constructor)) static void probe_start(void) { at_start = measure_now(); }

__attribute__((destructor)) static void probe_report(void) {
  const char* path = getenv("SMALLOC_PROBE_OUT");
  if (!path || !*path) return;
  struct measure m = measure_now();

  char comm[64] = "?";
  int cfd = open("/proc/self/comm", O_RDONLY | O_CLOEXEC);
  if (cfd >= 0) {
    ssize_t k = read(cfd, comm, sizeof comm - 1);
    comm[k > 0 ? k : 0] = '\0';
    comm[strcspn(comm, "\n ")] = '\0'; /* keep the line one whitespace-separated record */
    close(cfd);
  }
  char out[256];
  int len = snprintf(out, sizeof out, "pid=%d comm=%s owned=%d rss_start_kb=%ld rss_kb=%ld\n", (int)getpid(), comm,
                     m.owned, at_start.rss_kb, m.rss_kb);
  /* O_APPEND: every process of a pipeline or script reports to the same file. */
  int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return;
  if (len > 0) (void)!write(fd, out, (size_t)len < sizeof out ? (size_t)len : sizeof out - 1);
  close(fd);
}
