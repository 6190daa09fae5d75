// Occupancy counters, kept by the heap when the policy asks for them.
//
// Every live thread owns a slab number (heap.cpp), so counters are kept per
// *owner*, and each has one writer. What a thread does to its own slab (nearly
// everything) it counts in its thread state (t_thread.counts), one add at a
// fixed offset from the thread pointer; the owner row publishes where that
// is, and an exiting owner folds it into the row. Everything else (blocks of
// other slabs, slots never touched before, fail-overs) is counted in the
// row's tables, against the slab concerned. Threads without a slab of their
// own (beyond the 64th, or exiting) count in one more row, the shared row,
// with atomic adds: never in a row whose owner adds without them. A reader
// sums the 65 rows.
//
// The rows live in an area of their own (kCountersArea): zero pages until
// used.
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

// What a slab's owner does to its own slab: indexed by class alone, so that
// the hot path reaches a counter with one add to thread-local memory.
// Touched slots are counted on the cold path, in SlabCounters::fresh.
//
// An allocation from the thread's private list is not counted: every slot on
// the list got there by a counted free and leaves it by an allocation or by
// being returned to the shared lists, so those allocations number
//   frees - frees_not_listed - returned - listed,
// and `listed` is the list's length, which the hot path keeps anyway. Slots
// the owner takes off its slab's shared list onto its private list (Heap::
// adopt) count as if freed onto it: frees_not_listed goes down by as many
// as listed goes up. A reader reads returned, listed and frees_not_listed,
// in that order, before frees (the owner updates listed before returned,
// and frees_not_listed before listed): the difference never goes negative.
// In `retired`, allocations are all of them and the last three stay zero.
struct OwnSlabCounters {
  uint64_t allocations[kNumClasses], frees[kNumClasses], bytes_requested[kNumClasses];
  uint64_t frees_not_listed[kNumClasses];  // valid frees that did not go onto the private list, less slots adopted
  uint64_t returned[kNumClasses];          // slots handed from the list back to the shared lists
  uint32_t listed[kNumClasses];            // slots on the private list now
};

// Requests of a class served by another slab than the thread's, or by a
// larger class: counted by the requesting thread in its own row too.
struct ClassEvents {
  uint64_t failovers, overflows;
};

// Per owner row: the live owner's OwnSlabCounters (in its TLS), or null.
// Readers of it are counted so that an exiting owner can wait until its TLS
// is no longer read; `folds` is odd while the owner adds it to `retired`.
// All rows' together on one page, apart from the rows: a fork child resets
// them (forget_readers), and one per row was a page fault per row, 65 in
// every child, even one that only execs (a shell's subshell: 1.9x slower).
struct RowSync {
  std::atomic<const OwnSlabCounters*> live;
  std::atomic<uint32_t> readers, folds;
};

struct alignas(64) OwnerRow {
  OwnSlabCounters retired;  // what the row's earlier owners counted in theirs
  // Every slab, by the other paths; from kMinClass on (no slot is smaller).
  // Slab-major: an owner counts mostly against its own slab, so that the
  // counters of all the classes it touches share a page or two (class-major,
  // a page per two classes: a one-thread server touched 26 pages of rows).
  SlabCounters slabs[kNumSlabs][kNumClasses - kMinClass];
  ClassEvents class_events[kNumClasses - kMinClass];

  SlabCounters& at(unsigned cls, unsigned slab) { return slabs[slab][cls - kMinClass]; }
  const SlabCounters& at(unsigned cls, unsigned slab) const { return slabs[slab][cls - kMinClass]; }
  ClassEvents& events(unsigned cls) { return class_events[cls - kMinClass]; }
  const ClassEvents& events(unsigned cls) const { return class_events[cls - kMinClass]; }
};

struct Area {
  RowSync sync[kNumSlabs + 1];
  OwnerRow rows[kNumSlabs + 1];  // one per slab's owner, then the shared row
};

// The rows fill the area of class 7, whose 12-byte slots do not exist (in
// area 0, after the heads, they did not fit at the smallest span).
inline constexpr unsigned kCountersArea = 7 - kMinClass + 1;
static_assert(!class_exists(7));
static_assert(sizeof(Area) <= Layout::area_bytes(kMinSpanShift),
              "the counters must fit in one area of the smallest layout");
static_assert(size_t{kNumClasses} * kNumSlabs * kHeadBytes <=
                  Layout::area_bytes(kMinSpanShift) - Layout::staged_bits_bytes(kMinSpanShift),
              "the heads must fit in area 0 of the smallest layout, before the staged bits at its end");

inline Area& area(const Layout& L) {
  return *reinterpret_cast<Area*>(L.base + kCountersArea * Layout::area_bytes(L.span_shift));
}

// The row a thread counts in: its slab's, or the shared row if it shares.
inline OwnerRow& row(const Layout& L, unsigned owner, bool shared) {
  return area(L).rows[shared ? kNumSlabs : owner];
}

// A counter of a row that is not shared has one writer, who adds with a plain
// load-add-store: one instruction (x86-64: `addq` to memory, even at an
// offset from the thread pointer, where an atomic_ref makes three). Readers
// load it atomically while it may change, which C++ calls a race; what they
// rely on is what every 64-bit target gives an aligned word: a store is never
// seen torn, and (x86-64, AArch64 with the reader's acquire) a reader that
// sees a free also sees the allocation counted before it.
inline void add(uint64_t& counter, uint64_t n, bool shared_row) {
  if (__builtin_expect(shared_row, 0))
    std::atomic_ref<uint64_t>(counter).fetch_add(n, std::memory_order_release);
  else
    counter += n;
}

inline uint64_t read(const uint64_t& counter) {
  return std::atomic_ref<const uint64_t>(counter).load(std::memory_order_acquire);
}

// A thread that takes slab `slab` for itself publishes its counters; at exit
// it folds them into the row and waits until no reader is looking at them.
void publish_own(const Layout& L, unsigned slab, const OwnSlabCounters* own);
void retire_own(const Layout& L, unsigned slab, const OwnSlabCounters& own);
// In a fork child: the threads that were reading rows, or folding into them,
// are gone; left as they were, the row's next owner would wait for them.
void forget_readers(const Layout& L);

// The whole heap in a few figures, for mallinfo2(), malloc_stats() and
// malloc_info(). The slot figures are zero if the counters are compiled out.
struct HeapTotals {
  bool counted;
  uint64_t slot_bytes_touched, slot_bytes_in_use, free_slots;
  uint64_t mapped_blocks, mapped_bytes;  // blocks with a mapping of their own
  uint64_t reserved_bytes, resident_bytes;
  uint64_t free_slots_of_class[kNumClasses];
};
HeapTotals heap_totals() noexcept;

}  // namespace smalloc::stats
