// The stats snapshot: exact at quiescence, never torn or impossible while
// threads allocate. Linked to the prefixed library, so only the smalloc_*
// calls below reach the heap being counted (GoogleTest uses libc's malloc),
// and every figure can be predicted exactly.
//
// Each test expects a process of its own, as ctest gives it (one run per
// test, gtest_discover_tests): the figures it reads are the whole process
// heap's. Run directly, the file's order works; --gtest_shuffle does not
// (what one test leaves free, another finds).
#include <gtest/gtest.h>

#include <atomic>
#include <barrier>
#include <bit>
#include <memory>
#include <thread>
#include <vector>

#include "smalloc.h"

namespace {

std::unique_ptr<smalloc_stats> Snapshot() {
  static const bool heap_exists = (smalloc_free(smalloc_malloc(1)), true);  // no heap, no snapshot
  (void)heap_exists;
  auto s = std::make_unique<smalloc_stats>();
  if (smalloc_stats_snapshot(s.get()) != 0) ADD_FAILURE() << "no snapshot";
  return s;
}

// The size class a block is in: the smallest whose slots hold its usable
// size (a block ends where its slot ends, and may start 64 bytes past the
// slot's start, less than the gap between two classes that large).
unsigned ClassOf(void* p) {
  auto s = Snapshot();
  const size_t usable = smalloc_malloc_usable_size(p);
  for (unsigned cls = s->min_class; cls <= s->max_class; ++cls)
    if (s->classes[cls].slot_size >= usable) return cls;
  ADD_FAILURE() << "no class holds " << usable << " bytes";
  return 0;
}

// Which slab of its class a block is in: the slab whose in_use moved.
struct Totals {
  unsigned long long in_use = 0, allocations = 0, frees = 0;
};

Totals ClassTotals(const smalloc_stats& s, unsigned cls) {
  const smalloc_class_stats& c = s.classes[cls];
  return {c.in_use, c.allocations, c.frees};
}

TEST(Stats, NoSnapshotBeforeTheHeapExistsThenOne) {
  smalloc_stats s;
  EXPECT_EQ(smalloc_stats_snapshot(&s), -1);  // each test runs in a process of its own under CTest
  smalloc_free(smalloc_malloc(1));
  EXPECT_EQ(smalloc_stats_snapshot(&s), 0);
}

TEST(Stats, SnapshotDescribesTheLayout) {
  auto s = Snapshot();
  EXPECT_EQ(s->schema_version, unsigned(SMALLOC_STATS_SCHEMA_VERSION));
  EXPECT_EQ(s->counters_enabled, 1);
  EXPECT_STREQ(s->build, "release");
  EXPECT_EQ(s->slabs_per_class, unsigned(SMALLOC_SLABS_PER_CLASS));
  EXPECT_GT(s->max_class, s->min_class);
  EXPECT_LT(s->max_class, unsigned(SMALLOC_MAX_CLASSES));
  EXPECT_GT(s->reserved_bytes, 0ull);
  EXPECT_GT(s->resident_bytes, 0ull);
  unsigned long long previous = 0;
  for (unsigned cls = s->min_class; cls <= s->max_class; ++cls) {
    const smalloc_class_stats& c = s->classes[cls];
    // Class c: 2^(c/2) bytes if even, 1.5 * 2^(c/2) if odd, where it exists.
    const unsigned long long bytes = (2ull + (cls & 1)) << (cls / 2 - 1);
    if (c.slot_size == 0) {
      EXPECT_EQ(cls % 2, 1u) << "every even class exists";
      continue;
    }
    EXPECT_EQ(c.size_class, cls);
    EXPECT_EQ(c.slot_size, bytes);
    EXPECT_GT(c.slot_size, previous);
    previous = c.slot_size;
    EXPECT_EQ(c.capacity, c.slots_per_slab * SMALLOC_SLABS_PER_CLASS);
    for (const smalloc_slab_stats& b : c.slabs) EXPECT_EQ(b.capacity, c.slots_per_slab);
  }
}

TEST(Stats, KnownAllocationsShowUpExactlyAndVanishWhenFreed) {
  struct Request {
    size_t size, count;
  };
  const Request requests[] = {{100, 1000}, {5000, 37}, {300 * 1024, 5}};
  std::vector<std::vector<void*>> blocks(std::size(requests));
  std::vector<unsigned> classes;
  for (const Request& r : requests) {
    void* probe = smalloc_malloc(r.size);
    classes.push_back(ClassOf(probe));
    smalloc_free(probe);
  }
  auto before = Snapshot();
  for (size_t i = 0; i < std::size(requests); ++i)
    for (size_t k = 0; k < requests[i].count; ++k) blocks[i].push_back(smalloc_malloc(requests[i].size));

  auto during = Snapshot();
  for (size_t i = 0; i < std::size(requests); ++i) {
    const unsigned cls = classes[i];
    Totals b = ClassTotals(*before, cls), d = ClassTotals(*during, cls);
    EXPECT_EQ(d.in_use - b.in_use, requests[i].count) << "class " << cls;
    EXPECT_EQ(d.allocations - b.allocations, requests[i].count) << "class " << cls;
    EXPECT_EQ(d.frees, b.frees) << "class " << cls;
    EXPECT_EQ(during->classes[cls].bytes_requested_total - before->classes[cls].bytes_requested_total,
              requests[i].size * requests[i].count);
    // One thread, no contention: every block is in this thread's slab.
    unsigned slabs_that_moved = 0;
    for (unsigned s = 0; s < SMALLOC_SLABS_PER_CLASS; ++s) {
      const auto& bs = before->classes[cls].slabs[s];
      const auto& ds = during->classes[cls].slabs[s];
      if (ds.in_use != bs.in_use) {
        ++slabs_that_moved;
        EXPECT_EQ(ds.in_use - bs.in_use, requests[i].count);
        EXPECT_GE(ds.touched, ds.in_use);
      }
    }
    EXPECT_EQ(slabs_that_moved, 1u) << "class " << cls;
    EXPECT_EQ(during->classes[cls].failovers, before->classes[cls].failovers);
  }

  for (auto& list : blocks)
    for (void* p : list) smalloc_free(p);
  auto after = Snapshot();
  for (size_t i = 0; i < std::size(requests); ++i) {
    const unsigned cls = classes[i];
    Totals b = ClassTotals(*before, cls), a = ClassTotals(*after, cls);
    EXPECT_EQ(a.in_use, b.in_use) << "class " << cls;
    EXPECT_EQ(a.frees - b.frees, requests[i].count) << "class " << cls;
    // High-water mark: freeing does not lower it.
    EXPECT_EQ(after->classes[cls].touched, during->classes[cls].touched);
  }
}

TEST(Stats, AFullSlabCountsFailovers) {
  // Class 20's slabs (1 MiB slots) are small enough to fill quickly.
  void* probe = smalloc_malloc(600 * 1024);
  const unsigned cls = ClassOf(probe);
  smalloc_free(probe);
  auto before = Snapshot();
  const unsigned long long per_slab = before->classes[cls].slots_per_slab;
  std::vector<void*> blocks;
  for (unsigned long long i = 0; i < per_slab + 3; ++i) blocks.push_back(smalloc_malloc(600 * 1024));
  auto after = Snapshot();
  // The home slab held the first per_slab (it may already have had some in use).
  EXPECT_GE(after->classes[cls].failovers - before->classes[cls].failovers, 3u);
  EXPECT_EQ(after->classes[cls].in_use - before->classes[cls].in_use, per_slab + 3);
  for (void* p : blocks) smalloc_free(p);
}

TEST(Stats, AFullClassCountsOverflows) {
  // The next-to-largest class: few slots, and never touched by the release
  // build, so filling it costs address space only.
  auto before = Snapshot();
  const unsigned cls = before->max_class - 2;  // (max_class - 1 is an odd class that does not exist)
  const size_t size = before->classes[cls].slot_size;
  const unsigned long long capacity = before->classes[cls].capacity - before->classes[cls].in_use;
  std::vector<void*> blocks;
  for (unsigned long long i = 0; i < capacity + 2; ++i) {
    blocks.push_back(smalloc_malloc(size));
    ASSERT_NE(blocks.back(), nullptr) << i;
  }
  auto after = Snapshot();
  EXPECT_EQ(after->classes[cls].in_use, after->classes[cls].capacity);
  EXPECT_EQ(after->classes[cls].overflows - before->classes[cls].overflows, 2u);
  EXPECT_EQ(after->classes[cls + 2].in_use - before->classes[cls + 2].in_use, 2u);
  for (void* p : blocks) smalloc_free(p);
}

// A thread counts what it does to its own slab in its own thread state; at
// exit that must reach the row, not vanish with the thread.
TEST(Stats, CountsOfThreadsThatExitedStay) {
  constexpr int kThreads = 6, kBlocks = 300, kKept = 100;
  void* probe = smalloc_malloc(200);
  const unsigned cls = ClassOf(probe);
  smalloc_free(probe);
  auto before = Snapshot();
  std::vector<std::vector<void*>> kept(kThreads);
  for (int round = 0; round < 2; ++round) {  // the second round's threads take the same slabs
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t)
      threads.emplace_back([&, t] {
        std::vector<void*> blocks;
        for (int i = 0; i < kBlocks; ++i) blocks.push_back(smalloc_malloc(200));
        for (int i = kKept; i < kBlocks; ++i) smalloc_free(blocks[i]);
        kept[t].insert(kept[t].end(), blocks.begin(), blocks.begin() + kKept);
      });
    for (auto& t : threads) t.join();
  }
  auto after = Snapshot();
  const Totals b = ClassTotals(*before, cls), a = ClassTotals(*after, cls);
  EXPECT_EQ(a.allocations - b.allocations, 2ull * kThreads * kBlocks);
  EXPECT_EQ(a.frees - b.frees, 2ull * kThreads * (kBlocks - kKept));
  EXPECT_EQ(a.in_use - b.in_use, 2ull * kThreads * kKept);
  for (auto& blocks : kept)
    for (void* p : blocks) smalloc_free(p);  // by the main thread: counted against their slabs
  auto freed = Snapshot();
  EXPECT_EQ(ClassTotals(*freed, cls).in_use, b.in_use);
  EXPECT_EQ(ClassTotals(*freed, cls).frees - b.frees, 2ull * kThreads * kBlocks);
}

// Beyond 64 live threads, threads share slabs: their counts must add up
// exactly too, however they interleave with the slabs' owners.
TEST(Stats, ThreadsBeyondTheSixtyFourthAreCountedExactly) {
  constexpr int kThreads = 96, kPairs = 2000;
  void* probe = smalloc_malloc(40);
  const unsigned cls = ClassOf(probe);
  smalloc_free(probe);
  auto before = Snapshot();
  std::barrier all_alive(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&] {
      all_alive.arrive_and_wait();  // none exits before all have run: 32 of them share slabs
      for (int i = 0; i < kPairs; ++i) smalloc_free(smalloc_malloc(40));
      all_alive.arrive_and_wait();
    });
  for (auto& t : threads) t.join();
  auto after = Snapshot();
  const Totals b = ClassTotals(*before, cls), a = ClassTotals(*after, cls);
  EXPECT_EQ(a.allocations - b.allocations, 1ull * kThreads * kPairs);
  EXPECT_EQ(a.frees - b.frees, 1ull * kThreads * kPairs);
  EXPECT_EQ(a.in_use, b.in_use);
}

// Readers must never see an impossible snapshot while writers run.
TEST(Stats, ConcurrentReadersSeeNoTornOrImpossibleValues) {
  std::atomic<bool> stop{false};
  std::vector<std::thread> writers;
  for (int t = 0; t < 4; ++t) {
    writers.emplace_back([&, t] {
      std::vector<void*> live;
      unsigned x = 12345u + unsigned(t);
      while (!stop.load(std::memory_order_relaxed)) {
        x = x * 1103515245u + 12345u;
        size_t size = size_t(8) << ((x >> 16) % 12);
        if (live.size() < 2000 && (x & 0x100)) {
          live.push_back(smalloc_malloc(size));
        } else if (!live.empty()) {
          size_t i = (x >> 8) % live.size();
          smalloc_free(live[i]);
          live[i] = live.back();
          live.pop_back();
        }
      }
      for (void* p : live) smalloc_free(p);
    });
  }
  // Threads that come and go: each exit folds the thread's counts into its
  // row while the readers below look at them.
  writers.emplace_back([&] {
    while (!stop.load(std::memory_order_relaxed)) {
      std::thread([] {
        for (int i = 0; i < 200; ++i) smalloc_free(smalloc_malloc(size_t(16) << (i % 8)));
      }).join();
    }
  });
  auto previous = Snapshot();
  auto current = std::make_unique<smalloc_stats>();
  for (int round = 0; round < 300; ++round) {
    ASSERT_EQ(smalloc_stats_snapshot(current.get()), 0);
    for (unsigned cls = current->min_class; cls <= current->max_class; ++cls) {
      const smalloc_class_stats& c = current->classes[cls];
      const smalloc_class_stats& p = previous->classes[cls];
      ASSERT_LE(c.in_use, c.touched) << "class " << cls;
      ASSERT_LE(c.touched, c.capacity) << "class " << cls;
      ASSERT_LE(c.frees, c.allocations) << "class " << cls;
      ASSERT_GE(c.allocations, p.allocations) << "cumulative counts never go back";
      ASSERT_GE(c.frees, p.frees);
      ASSERT_GE(c.touched, p.touched);
      for (const smalloc_slab_stats& s : c.slabs) {
        ASSERT_LE(s.in_use, s.touched);
        ASSERT_LE(s.touched, s.capacity);
        ASSERT_LE(s.frees, s.allocations);
      }
    }
    std::swap(previous, current);
  }
  stop = true;
  for (auto& w : writers) w.join();
}

}  // namespace
