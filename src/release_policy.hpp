// The release policy: no redzones, no tracking, nothing between the caller and
// the slot. Every hook is empty or the identity and compiles away.
#pragma once

#include <array>

#include "heap.hpp"

namespace smalloc {

struct ReleasePolicy {
  // Occupancy counters (stats.hpp); CMake's SMALLOC_STATS=OFF builds without.
  static constexpr bool kStats = SMALLOC_STATS_ENABLED;
  static constexpr const char* kBuildName = "release";
  // calloc may skip zeroing a discarded slot but for its link.
  static constexpr bool kDiscardedSlotsStayZero = true;
  // malloc_trim gives back the free pages at the top of every slab.
  static constexpr bool kTrimSlabs = true;
  // Slots taken off a shared list go onto the private list, linked by
  // address (heap.hpp, take_used_own).
  static constexpr bool kAdoptInBatches = true;
  // realloc moves large blocks' pages instead of copying them (heap.hpp).
  static constexpr bool kMovePages = true;

  static constexpr size_t slot_bytes(size_t size, size_t /*align*/) { return size; }

  static void on_reserve(void*, size_t, size_t) {}

  // Blocks of 4 KiB to 1 MiB slots start kColour bytes into the slot when
  // they fit so, instead of on the page grid, as glibc's and jemalloc's do.
  // A program that reads a file into such a block a few bytes in (sqlite's
  // page buffers follow an 8-byte header) otherwise has the kernel copy from
  // a page-aligned source to a destination a few bytes past the same page
  // offset: every load waits on the store just before it (4K aliasing), and
  // sqlite's reads took twice the system time. Not the grower class
  // (realloc's 2 MiB growth would not fit) nor alignments above kColour,
  // which the slot gives for free. A block still ends where its slot ends,
  // and free() finds the slot by masking (kColour is below the alignment of
  // every coloured class).
  static constexpr size_t kColour = 64;
  static constexpr unsigned kColourMinClass = 24, kColourMaxClass = 40;  // 4 KiB, 1 MiB
  // Per class, the sizes below this are coloured (0: none). A table, not a
  // test of the class: programs mix classes, and that branch mispredicted
  // (batch-random 7% slower).
  static constexpr auto kColourBelow = [] {
    std::array<size_t, kNumClasses> below{};
    for (unsigned cls = kColourMinClass; cls <= kColourMaxClass; ++cls)
      below[cls] = class_bytes(cls) - kColour + 1;
    return below;
  }();
  static void* on_alloc(char* slot, unsigned cls, size_t size, size_t align, Kind, bool, bool) {
    const bool colour = size < kColourBelow[cls] && align <= kColour;
    return slot + (colour ? kColour : 0);
  }

  // Per class, the mask that rounds a pointer down to its slot's alignment:
  // one load, where computing it took six instructions of free().
  static constexpr auto kSlotAlignMask = [] {
    std::array<uintptr_t, kNumClasses> mask{};
    for (unsigned cls = kMinClass; cls < kNumClasses; ++cls) mask[cls] = -(uintptr_t{1} << class_align_shift(cls));
    return mask;
  }();
  template <class Heap>
  static Released on_free(Heap&, const Layout&, const Layout::Where& w, void* p, Kind) {
    // Every block we hand out starts less than its slot's alignment into
    // the slot (kColour < 2 KiB, the least of a coloured class).
    char* const slot = reinterpret_cast<char*>(reinterpret_cast<uintptr_t>(p) & kSlotAlignMask[w.cls]);
    if (slot == nullptr) __builtin_unreachable();  // never in the reservation: free() need not test it
    return {true, slot};
  }

  template <class Heap>
  static int trim(Heap&) {
    return 0;
  }

  // Blocks with a mapping of their own (huge.hpp): nothing to record.
  static void on_huge_alloc(void*, size_t, bool) {}
  static void on_huge_free(void*) {}

  // Not ours (or NULL): leaking is the only safe thing to do with it.
  static void free_foreign(void*, Kind) {}

  static size_t usable_size(const Layout& L, const Layout::Where& w, const void* p) {
    return size_t(L.slot(w.cls, w.slab, w.index) + class_bytes(w.cls) - static_cast<const char*>(p));
  }

  static bool resize_in_place(const Layout& L, const Layout::Where& w, void* p, size_t size) {
    return size <= usable_size(L, w, p);
  }

  // Free-list links live in free slots; another thread may be reusing the slot
  // as we read it, which the head's CAS then rejects.
  static uint32_t read_link(const char* slot) {
    return std::atomic_ref<const uint32_t>(*reinterpret_cast<const uint32_t*>(slot)).load(std::memory_order_relaxed);
  }
  static void write_link(char* slot, uint32_t link) {
    std::atomic_ref<uint32_t>(*reinterpret_cast<uint32_t*>(slot)).store(link, std::memory_order_relaxed);
  }
};

using Policy = ReleasePolicy;

}  // namespace smalloc
