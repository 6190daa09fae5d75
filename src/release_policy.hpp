// The release policy: no redzones, no tracking, nothing between the caller and
// the slot. Every hook is empty or the identity and compiles away.
#pragma once

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
  // realloc moves large blocks' pages instead of copying them (heap.hpp).
  static constexpr bool kMovePages = true;

  static constexpr size_t slot_bytes(size_t size, size_t /*align*/) { return size; }

  static void on_reserve(void*, size_t, size_t) {}

  static void* on_alloc(char* slot, unsigned, size_t, size_t, Kind, bool, bool) { return slot; }

  template <class Heap>
  static Released on_free(Heap&, const Layout&, const Layout::Where& w, void* p, Kind) {
    // Slots are aligned to their size, so an interior pointer frees its slot too.
    char* const slot = reinterpret_cast<char*>(reinterpret_cast<uintptr_t>(p) & -(uintptr_t{1} << w.cls));
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
    return size_t(L.slot(w.cls, w.slab, w.index) + (size_t{1} << w.cls) - static_cast<const char*>(p));
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
