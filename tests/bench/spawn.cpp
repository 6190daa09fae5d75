// bench_spawn RESULT_FILE PRELOAD PROGRAM [ARGS...]
//
// Runs PROGRAM with LD_PRELOAD=PRELOAD (or without it if PRELOAD is "-"),
// waits for it and writes its wall time and rusage to RESULT_FILE.
//
// Why not let the Python harness wait for the workload itself: Linux keeps the
// peak RSS of the address space a process had before exec(), and a child of
// the harness starts as a copy of (or, with vfork, inside) the harness's own
// ~15+ MiB. Every small workload would then report the harness's size as its
// peak. Forked from this tiny program instead, the floor is a few hundred KiB.
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s RESULT_FILE PRELOAD|- PROGRAM [ARGS...]\n", argv[0]);
    return 2;
  }
  FILE* out = std::fopen(argv[1], "we");
  if (!out) {
    std::perror(argv[1]);
    return 2;
  }
  timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  pid_t pid = fork();
  if (pid < 0) {
    std::perror("fork");
    return 2;
  }
  if (pid == 0) {
    if (std::strcmp(argv[2], "-") != 0) setenv("LD_PRELOAD", argv[2], 1);
    else unsetenv("LD_PRELOAD");
    execv(argv[3], argv + 3);
    std::perror(argv[3]);
    _exit(127);
  }
  int status = 0;
  rusage ru{};
  if (wait4(pid, &status, 0, &ru) < 0) {
    std::perror("wait4");
    return 2;
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double wall = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
  std::fprintf(out, "wall=%.6f user=%.6f sys=%.6f maxrss_kib=%ld wstatus=%d\n", wall,
               ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6,
               ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6, ru.ru_maxrss, status);
  std::fclose(out);
  return 0;
}
