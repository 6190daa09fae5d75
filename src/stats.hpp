// Occupancy counters, kept by the heap when the policy asks for them.
//
// Every live thread owns a slab number (heap.cpp), so counters are kept per
// *owner*: a thread adds to its own row only, with a plain load and store to
// lines no other thread writes. A reader sums the 64 rows. Frees are counted
// by the freeing thread, in its row, against the slab the block came from.
// Threads beyond the 64th share rows and use atomic adds instead.
//
// The rows live in area 0 after the free-list heads: zero pages until used.
#pragma once

#include <atomic>
#include <cstdint>

#include "layout.hpp"

namespace smalloc::stats {

// One allocation touches one of these (two per cache line), one free too.
struct SlabCounters {
  uint64_t allocations, frees;
  uint64_t fresh;            // pops of never-touched slots: the slab's high-water mark
  uint64_t bytes_requested;  // what callers asked for, against slot bytes handed out
};

// Requests of a class served by another slab than the thread's, or by a
// larger class: counted by the requesting thread in its own row too.
struct ClassEvents {
  uint64_t failovers, overflows;
};

struct alignas(64) OwnerRow {
  SlabCounters slab[kNumClasses][kNumSlabs];
  ClassEvents events[kNumClasses];
};

struct Area {
  OwnerRow owner[kNumSlabs];
};

inline constexpr size_t kHeadsBytes = size_t{kNumClasses} * kNumSlabs * kHeadBytes;
static_assert(kHeadsBytes % 64 == 0);
static_assert(kHeadsBytes + sizeof(Area) <= Layout::area_bytes(kMinSpanShift),
              "the counters must fit in area 0 of the smallest layout");

inline Area& area(const Layout& L) { return *reinterpret_cast<Area*>(L.base + kHeadsBytes); }

// Release stores: a reader that sees a free (acquire) also sees the
// allocation that preceded it, wherever that was counted.
inline void add(uint64_t& counter, uint64_t n, bool shared_row) {
  std::atomic_ref<uint64_t> c(counter);
  if (__builtin_expect(shared_row, 0))
    c.fetch_add(n, std::memory_order_release);
  else
    c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_release);
}

inline uint64_t read(const uint64_t& counter) {
  return std::atomic_ref<const uint64_t>(counter).load(std::memory_order_acquire);
}

}  // namespace smalloc::stats
