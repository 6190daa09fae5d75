// The snapshot C API, and loading the HTTP endpoint on demand: the HTTP, JSON
// and logging code lives in libsmalloc-introspect.so, which only a process
// that asks for the endpoint ever loads.
#include <dlfcn.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "heap.hpp"
#include "smalloc.h"
#include SMALLOC_POLICY_HEADER

namespace smalloc {
extern Heap<Policy> g_heap;
}

using namespace smalloc;

namespace {

double now_seconds() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return double(t.tv_sec) + double(t.tv_nsec) * 1e-9;
}

double g_start_seconds = 0;

// /proc/self/statm's second field, read without stdio (which allocates).
unsigned long long resident_bytes() {
  int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char text[128];
  ssize_t n = read(fd, text, sizeof text - 1);
  close(fd);
  if (n <= 0) return 0;
  text[n] = 0;
  char* field = strchr(text, ' ');
  return field ? strtoull(field + 1, nullptr, 10) * uint64_t(sysconf(_SC_PAGESIZE)) : 0;
}

void fill_class(const Layout& L, unsigned cls, smalloc_class_stats& out) {
  out.size_class = cls;
  out.slot_size = 1ull << cls;
  out.slots_per_slab = L.slots_per_slab(cls);
  out.capacity = out.slots_per_slab * kNumSlabs;
  if constexpr (!Policy::kStats) return;
  const stats::Area& area = stats::area(L);
  for (unsigned slab = 0; slab < kNumSlabs; ++slab) {
    // Frees first: every free read here had its allocation counted before it.
    uint64_t frees = 0, allocations = 0, fresh = 0, requested = 0;
    for (const auto& row : area.owner) frees += stats::read(row.slab[cls][slab].frees);
    for (const auto& row : area.owner) {
      const stats::SlabCounters& c = row.slab[cls][slab];
      allocations += stats::read(c.allocations);
      requested += stats::read(c.bytes_requested);
    }
    for (const auto& row : area.owner) fresh += stats::read(row.slab[cls][slab].fresh);
    smalloc_slab_stats& s = out.slabs[slab];
    s.capacity = out.slots_per_slab;
    s.allocations = allocations;
    s.frees = frees;
    s.touched = std::min<uint64_t>(fresh, s.capacity);
    // A block freed and reallocated between the reads above is counted in
    // allocations but not yet in frees; no more can be in use than touched.
    s.in_use = std::min<uint64_t>(allocations - frees, s.touched);
    out.in_use += s.in_use;
    out.touched += s.touched;
    out.allocations += allocations;
    out.frees += frees;
    out.bytes_requested_total += requested;
  }
  for (const auto& row : area.owner) {
    out.failovers += stats::read(row.events[cls].failovers);
    out.overflows += stats::read(row.events[cls].overflows);
  }
}

[[gnu::constructor]] void start_endpoint_if_asked() {
  g_start_seconds = now_seconds();
  const char* address = getenv("SMALLOC_STATS_ADDR");
  if (address && *address) smalloc_stats_serve(address);
}

}  // namespace

extern "C" __attribute__((visibility("default"))) int smalloc_stats_snapshot(smalloc_stats* out) noexcept {
  std::memset(out, 0, sizeof *out);
  out->schema_version = SMALLOC_STATS_SCHEMA_VERSION;
  out->counters_enabled = Policy::kStats;
  out->build = Policy::kBuildName;
  out->slabs_per_class = kNumSlabs;
  out->min_class = kMinClass;
  out->uptime_seconds = now_seconds() - g_start_seconds;
  out->resident_bytes = resident_bytes();
  const Layout L = g_heap.layout();
  if (L.max_class() < kMinClass) return -1;
  out->span_shift = L.span_shift;
  out->max_class = L.max_class();
  out->reserved_bytes = L.size();
  for (unsigned cls = kMinClass; cls <= L.max_class(); ++cls) fill_class(L, cls, out->classes[cls]);
  return 0;
}

extern "C" __attribute__((visibility("default"))) int smalloc_stats_serve(const char* address) noexcept {
  constexpr const char kName[] = "libsmalloc-introspect.so";
  // Beside this library first, then wherever the dynamic loader looks.
  char path[4096] = "";
  Dl_info self;
  if (dladdr(reinterpret_cast<void*>(&smalloc_stats_serve), &self) && self.dli_fname) {
    const char* slash = strrchr(self.dli_fname, '/');
    size_t dir = slash ? size_t(slash - self.dli_fname + 1) : 0;
    if (dir + sizeof kName <= sizeof path) {
      std::memcpy(path, self.dli_fname, dir);
      std::memcpy(path + dir, kName, sizeof kName);
    }
  }
  void* lib = *path ? dlopen(path, RTLD_NOW | RTLD_GLOBAL) : nullptr;
  if (!lib) lib = dlopen(kName, RTLD_NOW | RTLD_GLOBAL);
  auto start = lib ? reinterpret_cast<int (*)(const char*)>(dlsym(lib, "smalloc_introspect_start")) : nullptr;
  if (!start) {
    static constexpr const char kMessage[] = "smalloc: cannot load libsmalloc-introspect.so; stats endpoint not started\n";
    if (write(STDERR_FILENO, kMessage, sizeof kMessage - 1) < 0) return -1;
    return -1;
  }
  return start(address);
}
