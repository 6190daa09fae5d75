// fork_program fork|spawn: starting processes while other threads allocate.
//
// Background threads hammer malloc/realloc/free (and check that every block
// keeps its contents) for the whole run. Meanwhile the main thread
//   fork:  forks repeatedly; each child inherits a heap that other threads
//          were using mid-operation, allocates heavily on its own thread and
//          on new threads, forks a grandchild too, and exits 0 only if every
//          block checked out;
//   spawn: runs children through system(), posix_spawn() and popen(),
//          checking their exit statuses and output.
// Only counts and statuses are printed, so the output is deterministic.
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

extern char** environ;

namespace {

std::atomic<bool> g_stop{false};
std::atomic<uint64_t> g_errors{0};

uint64_t next(uint64_t& s) {  // xorshift64
  s ^= s << 13, s ^= s >> 7, s ^= s << 17;
  return s;
}

// Random malloc/realloc/free over a table of blocks, each filled with a byte
// derived from its size so that corruption is caught when it is freed.
// Runs `ops` operations, or until g_stop when ops == 0.
void churn(uint64_t seed, uint64_t ops) {
  struct Block {
    unsigned char* p;
    size_t n;
  };
  std::vector<Block> table(256, Block{nullptr, 0});
  auto ok = [](const Block& b) {
    unsigned char want = static_cast<unsigned char>(b.n * 31 + 7);
    return b.p[0] == want && b.p[b.n - 1] == want && b.p[b.n / 2] == want;
  };
  for (uint64_t i = 0; ops ? i < ops : !g_stop.load(std::memory_order_relaxed); i++) {
    uint64_t r = next(seed);
    Block& b = table[r % table.size()];
    if (b.p && !ok(b)) g_errors++;
    size_t n = (r >> 20) % 1024 == 0 ? 1 + (r >> 32) % (6 << 20) : 1 + (r >> 32) % 4096;  // some > 4 MiB
    if (b.p && (r >> 8) % 4 == 0) {
      b.p = static_cast<unsigned char*>(std::realloc(b.p, n));  // keeps min(old, new) bytes
      size_t keep = b.n < n ? b.n : n;
      if (!b.p || b.p[0] != static_cast<unsigned char>(b.n * 31 + 7) || b.p[keep - 1] != b.p[0]) g_errors++;
    } else {
      std::free(b.p);
      b.p = static_cast<unsigned char*>(std::malloc(n));
      if (!b.p) g_errors++;
    }
    b.n = n;
    if (b.p) std::memset(b.p, static_cast<unsigned char>(n * 31 + 7), n);
  }
  for (Block& b : table) {
    if (b.p && !ok(b)) g_errors++;
    std::free(b.p);
  }
}

// The child of a fork: allocate on this thread, on new threads, and in a
// grandchild; exit 0 only if every check passed.
[[noreturn]] void child_work(uint64_t seed) {
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; t++) threads.emplace_back(churn, seed * 7 + uint64_t(t) + 1, 20000);
  pid_t grandchild = fork();
  if (grandchild == 0) {
    churn(seed * 13 + 5, 10000);
    std::_Exit(g_errors.load() == 0 ? 0 : 3);  // _Exit: the inherited threads' state is not ours to clean up
  }
  churn(seed * 11 + 3, 20000);
  for (auto& t : threads) t.join();
  int status = 0;
  if (grandchild < 0 || waitpid(grandchild, &status, 0) != grandchild || !WIFEXITED(status) ||
      WEXITSTATUS(status) != 0)
    g_errors++;
  std::exit(g_errors.load() == 0 ? 0 : 4);
}

int run_forks() {
  int bad = 0;
  for (int i = 0; i < 16; i++) {
    std::fflush(stdout);  // the child must not inherit (and re-print) buffered output
    pid_t pid = fork();
    if (pid < 0) { std::perror("fork"); return 1; }
    if (pid == 0) child_work(uint64_t(i) + 100);
    int status = 0;
    waitpid(pid, &status, 0);
    bool good = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    bad += !good;
    if (WIFSIGNALED(status)) std::fprintf(stderr, "child %d killed by signal %d\n", i, WTERMSIG(status));
    std::printf("fork %d: child %s\n", i, good ? "ok" : "FAILED");
  }
  return bad;
}

int run_spawns() {
  int bad = 0;
  for (int i = 0; i < 12; i++) {
    char cmd[128];
    std::snprintf(cmd, sizeof cmd, "echo system %d; exit %d", i, i % 3);
    std::fflush(stdout);
    int status = std::system(cmd);
    std::printf("system %d: exit %d\n", i, WIFEXITED(status) ? WEXITSTATUS(status) : -1);

    std::snprintf(cmd, sizeof cmd, "seq 1 %d | sort -rn | head -n 1; exit %d", 1000 * (i + 1), i % 5);
    char sh[] = "/bin/sh", dash_c[] = "-c";
    char* argv[] = {sh, dash_c, cmd, nullptr};
    pid_t pid;
    std::fflush(stdout);
    if (posix_spawn(&pid, "/bin/sh", nullptr, nullptr, argv, environ) != 0) { bad++; continue; }
    waitpid(pid, &status, 0);
    std::printf("posix_spawn %d: exit %d\n", i, WIFEXITED(status) ? WEXITSTATUS(status) : -1);

    std::snprintf(cmd, sizeof cmd, "seq 1 %d", 500 * (i + 1));
    FILE* in = popen(cmd, "r");
    if (!in) { bad++; continue; }
    long sum = 0, v;
    while (std::fscanf(in, "%ld", &v) == 1) sum += v;
    std::printf("popen %d: sum %ld, exit %d\n", i, sum, WEXITSTATUS(pclose(in)));
  }
  return bad;
}

}  // namespace

int main(int argc, char** argv) {
  bool fork_mode = argc == 2 && std::strcmp(argv[1], "fork") == 0;
  if (!fork_mode && !(argc == 2 && std::strcmp(argv[1], "spawn") == 0)) {
    std::fprintf(stderr, "usage: %s fork|spawn\n", argv[0]);
    return 2;
  }
  std::vector<std::thread> hammers;
  for (int t = 0; t < 4; t++) hammers.emplace_back(churn, uint64_t(t) * 977 + 1, 0);
  int bad = fork_mode ? run_forks() : run_spawns();
  g_stop = true;
  for (auto& t : hammers) t.join();
  std::printf("failed children: %d\nblock errors in parent: %llu\n", bad, (unsigned long long)g_errors.load());
  return bad == 0 && g_errors.load() == 0 ? 0 : 1;
}
