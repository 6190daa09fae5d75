// Memory footprint: allocate a total of MIB mebibytes in small blocks
// (64 B .. 4 KiB), touch every byte, free it all in random order; then the
// same with large blocks (64 KiB .. 16 MiB). Prints the resident set size
// before each phase, at its peak and after the frees: does the allocator give
// memory back to the system, and how much does it waste at the peak? Last, the
// RSS after malloc_trim(0).
//
//   bench_memory MIB
#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#include "common.hpp"

using namespace bench;

static double rss_mib() {
  long pages_total = 0, pages_resident = 0;
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f || std::fscanf(f, "%ld %ld", &pages_total, &pages_resident) != 2) fail("cannot read statm");
  std::fclose(f);
  return pages_resident * (double)sysconf(_SC_PAGESIZE) / (1 << 20);
}

static uint64_t phase(const char* name, size_t total, size_t lo, size_t hi, uint64_t seed) {
  Rng rng(seed);
  struct Block { void* p; size_t size; };
  std::vector<Block> blocks;
  blocks.reserve(total / lo + 1);  // reserved before the first reading: not part of the phase
  std::vector<size_t> order;
  order.reserve(total / lo + 1);
  char key[64];
  std::snprintf(key, sizeof key, "%s_rss_before_mib", name);
  print_metric(key, rss_mib());

  uint64_t sum = 0;
  for (size_t used = 0; used < total;) {
    size_t size = rng.log_size(lo, hi);
    void* p = std::malloc(size);
    if (!p) fail("malloc returned NULL", size);
    std::memset(p, (int)(size & 0xff), size);  // resident for real
    stamp(p, size, mix(blocks.size()));
    blocks.push_back({p, size});
    used += size;
    sum += size;
  }
  std::snprintf(key, sizeof key, "%s_rss_peak_mib", name);
  print_metric(key, rss_mib());

  for (size_t i = 0; i < blocks.size(); ++i) order.push_back(i);
  for (size_t i = order.size() - 1; i > 0; --i) std::swap(order[i], order[rng.below(i + 1)]);
  for (size_t i : order) {
    verify(blocks[i].p, blocks[i].size, mix(i));
    std::free(blocks[i].p);
  }
  std::snprintf(key, sizeof key, "%s_rss_after_mib", name);
  print_metric(key, rss_mib());
  return sum + blocks.size();
}

int main(int argc, char** argv) {
  size_t total = (size_t)arg_or(argc, argv, 1, 1024) << 20;
  uint64_t sum = phase("small", total, 64, 4096, 1);
  sum += phase("large", total, 64 << 10, 16 << 20, 2);
  // And when asked: glibc's call, which the preloaded allocator may replace
  // (jemalloc, mimalloc and tcmalloc do not: it then trims glibc's own heap).
  malloc_trim(0);
  print_metric("trimmed_rss_mib", rss_mib());
  print_checksum(sum);
  return 0;
}
