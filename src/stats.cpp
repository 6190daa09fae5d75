// The snapshot C API, and loading the HTTP endpoint on demand: the HTTP, JSON
// and logging code lives in libsmalloc-introspect.so, which only a process
// that asks for the endpoint ever loads.
#include <dlfcn.h>
#include <fcntl.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "heap.hpp"
#include "smalloc.h"
#include SMALLOC_POLICY_HEADER

namespace smalloc {
extern Heap<Policy, true> g_heap;
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

// Owner `slab`'s own-slab counters: what its earlier owners folded into the
// row, plus the live owner's, all frees before any allocation. A fold under
// way or finished meanwhile makes it read again.
void add_own(stats::RowSync& sync, const stats::OwnerRow& row, stats::OwnSlabCounters& sum) {
  for (;;) {
    const uint32_t folds = sync.folds.load(std::memory_order_acquire);
    if (folds & 1) {
      sched_yield();
      continue;
    }
    stats::OwnSlabCounters got;
    sync.readers.fetch_add(1, std::memory_order_seq_cst);
    const stats::OwnSlabCounters* live = sync.live.load(std::memory_order_seq_cst);
    // The live owner's allocations from its private list, derived as
    // stats.hpp says, in the order it says.
    uint64_t not_from_list[kNumClasses] = {};  // frees_not_listed + returned + listed
    if (live) {
      for (unsigned c = 0; c < kNumClasses; ++c) {
        const uint64_t returned = stats::read(live->returned[c]);
        const uint64_t listed = std::atomic_ref<const uint32_t>(live->listed[c]).load(std::memory_order_acquire);
        not_from_list[c] = returned + listed + stats::read(live->frees_not_listed[c]);
      }
    }
    uint64_t live_frees[kNumClasses] = {};
    for (unsigned c = 0; c < kNumClasses; ++c) {
      live_frees[c] = live ? stats::read(live->frees[c]) : 0;
      got.frees[c] = stats::read(row.retired.frees[c]) + live_frees[c];
    }
    for (unsigned c = 0; c < kNumClasses; ++c) {
      got.allocations[c] = stats::read(row.retired.allocations[c]) +
                           (live ? stats::read(live->allocations[c]) + live_frees[c] - not_from_list[c] : 0);
      got.bytes_requested[c] =
          stats::read(row.retired.bytes_requested[c]) + (live ? stats::read(live->bytes_requested[c]) : 0);
    }
    sync.readers.fetch_sub(1, std::memory_order_acq_rel);
    if (sync.folds.load(std::memory_order_acquire) != folds) continue;
    for (unsigned c = 0; c < kNumClasses; ++c) {
      sum.frees[c] += got.frees[c];
      sum.allocations[c] += got.allocations[c];
      sum.bytes_requested[c] += got.bytes_requested[c];
    }
    return;
  }
}

void fill_layout(const Layout& L, unsigned cls, smalloc_class_stats& out) {
  out.size_class = cls;
  out.slot_size = class_bytes(cls);
  out.slots_per_slab = L.slots_per_slab(cls);
  out.capacity = out.slots_per_slab * kNumSlabs;
  for (smalloc_slab_stats& s : out.slabs) s.capacity = out.slots_per_slab;
}

// Frees are read before allocations, wherever either was counted: every free
// read had its allocation counted before it, so in use never goes negative.
void fill_counters(const Layout& L, smalloc_stats& out) {
  stats::Area& area = stats::area(L);
  const unsigned max = L.max_class();
  for (unsigned cls = kMinClass; cls <= max; ++cls)
    for (unsigned slab = 0; slab < kNumSlabs; ++slab)
      for (const auto& row : area.rows) out.classes[cls].slabs[slab].frees += stats::read(row.at(cls, slab).frees);
  for (unsigned slab = 0; slab < kNumSlabs; ++slab) {
    stats::OwnSlabCounters own{};
    add_own(area.sync[slab], area.rows[slab], own);
    for (unsigned cls = kMinClass; cls <= max; ++cls) {
      out.classes[cls].slabs[slab].frees += own.frees[cls];
      out.classes[cls].slabs[slab].allocations += own.allocations[cls];
      out.classes[cls].bytes_requested_total += own.bytes_requested[cls];
    }
  }
  for (unsigned cls = kMinClass; cls <= max; ++cls) {
    smalloc_class_stats& c = out.classes[cls];
    for (unsigned slab = 0; slab < kNumSlabs; ++slab) {
      smalloc_slab_stats& s = c.slabs[slab];
      uint64_t fresh = 0;
      for (const auto& row : area.rows) {
        const stats::SlabCounters& counters = row.at(cls, slab);
        s.allocations += stats::read(counters.allocations);
        c.bytes_requested_total += stats::read(counters.bytes_requested);
        fresh += stats::read(counters.fresh);
      }
      s.touched = std::min<uint64_t>(fresh, s.capacity);
      // A block freed and reallocated between the reads above is counted in
      // allocations but not yet in frees; no more can be in use than touched.
      s.in_use = std::min<uint64_t>(s.allocations - s.frees, s.touched);
      c.in_use += s.in_use;
      c.touched += s.touched;
      c.allocations += s.allocations;
      c.frees += s.frees;
    }
    for (const auto& row : area.rows) {
      c.failovers += stats::read(row.events(cls).failovers);
      c.overflows += stats::read(row.events(cls).overflows);
    }
  }
}

[[gnu::constructor]] void start_endpoint_if_asked() {
  g_start_seconds = now_seconds();
  const char* address = getenv("SMALLOC_STATS_ADDR");
  if (address && *address) smalloc_stats_serve(address);
}

}  // namespace

namespace smalloc::stats {

void publish_own(const Layout& L, unsigned slab, const OwnSlabCounters* own) {
  area(L).sync[slab].live.store(own, std::memory_order_release);
}

void forget_readers(const Layout& L) {
  for (RowSync& sync : area(L).sync) {
    sync.readers.store(0, std::memory_order_relaxed);
    if (sync.folds.load(std::memory_order_relaxed) & 1) sync.folds.fetch_add(1, std::memory_order_relaxed);
  }
}

void retire_own(const Layout& L, unsigned slab, const OwnSlabCounters& own) {
  if (L.max_class() < kMinClass) return;  // no heap, nothing published
  OwnerRow& row = area(L).rows[slab];
  RowSync& sync = area(L).sync[slab];
  if (sync.live.load(std::memory_order_relaxed) != &own) return;  // never published
  sync.folds.fetch_add(1, std::memory_order_acq_rel);               // odd: readers wait
  for (unsigned c = 0; c < kNumClasses; ++c) {
    add(row.retired.frees[c], own.frees[c], false);
    add(row.retired.allocations[c],
        own.allocations[c] + own.frees[c] - own.frees_not_listed[c] - own.returned[c] - own.listed[c], false);
    add(row.retired.bytes_requested[c], own.bytes_requested[c], false);
  }
  sync.live.store(nullptr, std::memory_order_seq_cst);
  sync.folds.fetch_add(1, std::memory_order_release);
  // A reader that saw the pointer holds `readers` up while it reads: the
  // thread's TLS must outlive that.
  while (sync.readers.load(std::memory_order_seq_cst) != 0) sched_yield();
}

HeapTotals heap_totals() noexcept {
  HeapTotals t{};
  huge::totals(t.mapped_blocks, t.mapped_bytes);
  // A snapshot is some 180 KiB: too much for a small thread stack.
  auto* snapshot = static_cast<smalloc_stats*>(pal::map(sizeof(smalloc_stats)));
  if (!snapshot) return t;
  if (smalloc_stats_snapshot(snapshot) == 0) {
    t.counted = snapshot->counters_enabled;
    t.reserved_bytes = snapshot->reserved_bytes;
    for (unsigned cls = snapshot->min_class; cls <= snapshot->max_class; ++cls) {
      const smalloc_class_stats& c = snapshot->classes[cls];
      t.slot_bytes_touched += c.touched * c.slot_size;
      t.slot_bytes_in_use += c.in_use * c.slot_size;
      t.free_slots_of_class[cls] = c.touched - c.in_use;
      t.free_slots += c.touched - c.in_use;
    }
  }
  t.resident_bytes = snapshot->resident_bytes;
  pal::unmap(snapshot, sizeof(smalloc_stats));
  return t;
}

}  // namespace smalloc::stats

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
  // (The classes that do not exist stay zero: slot_size 0.)
  for (unsigned cls = kMinClass; cls <= L.max_class(); ++cls)
    if (class_exists(cls)) fill_layout(L, cls, out->classes[cls]);
  if constexpr (Policy::kStats) fill_counters(L, *out);
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
