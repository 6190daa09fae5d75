// The lock-free slab heap: one reservation, one free list per (class, slab),
// one compare-and-swap per malloc or free.
//
// A free list's head is a 64-bit word: the low half is a link (a slot number
// plus the "touched" bit), the high half counts pushes so that a pop whose
// view is stale can never succeed (ABA). A free slot's first 4 bytes hold the
// link to the next one. A link without the touched bit names a slot that was
// never handed out: its successor is simply the next slot number, so a new
// slab needs no initialisation and its memory is known to be zero. The link
// equal to the slab's slot count (untouched) means the slab is full.
//
// Each thread allocates from its own slab (see thread_slab()); frees go back to
// the slab the pointer came from, whichever thread frees. When a slab is full
// the allocation fails over to the other slabs of the class, then to larger
// classes, and only then returns NULL with errno = ENOMEM.
//
// Policy (release_policy.hpp, debug/) supplies compile-time hooks around the
// hot paths; the release policy's are empty and compile away.
#pragma once

#include <atomic>
#include <cerrno>
#include <cstring>

#include "layout.hpp"
#include "pal.hpp"
#include "stats.hpp"

namespace smalloc {

enum class Kind : uint8_t { Malloc, New, NewArray };

// Slots this large are discarded (given back to the OS) when freed; they are
// then zero but for the link, which calloc exploits.
inline constexpr unsigned kDiscardClass = 22;  // 4 MiB
// Blocks that realloc moves past this size jump straight to kGrowerClass so
// that further growth stays in place; only touched pages cost memory.
inline constexpr size_t kGrowerMin = 64 * 1024;
inline constexpr unsigned kGrowerClass = 22;

// The thread's slab number plus one (plus kNumSlabs more if the thread shares
// the slab with others); 0 until its first allocation.
extern __thread unsigned t_slab_plus_one __attribute__((tls_model("initial-exec")));
unsigned assign_thread_slab();  // cold: takes a slab no live thread has, if any

inline unsigned thread_slab() {
  unsigned s = t_slab_plus_one;
  return __builtin_expect(s != 0, 1) ? (s - 1) % kNumSlabs : assign_thread_slab();
}
inline bool thread_shares_slab() { return t_slab_plus_one > kNumSlabs; }

// What a policy's on_free decided: whether the free was valid (and counts),
// and the slot to put back on its free list now, if any.
struct Released {
  bool valid;
  char* slot;
};

struct alignas(kHeadBytes) FreeListHead {
  std::atomic<uint64_t> word;
};
inline constexpr uint64_t kCountOne = uint64_t{1} << 32;
inline constexpr uint64_t kCountMask = ~uint64_t{0} << 32;

template <class Policy>
class Heap {
 public:
  using Where = Layout::Where;

  // span_shift: the largest layout to try; tests pass a small one.
  constexpr explicit Heap(unsigned span_shift = kMaxSpanShift) : preferred_span_shift_(span_shift) {}

  // ---- hot paths -----------------------------------------------------------
  [[gnu::always_inline]] void* allocate(size_t size, size_t align, Kind kind, bool zero = false) {
    unsigned cls = size_class(Policy::slot_bytes(size, align), align);
    Layout L = layout();
    if (__builtin_expect(cls <= L.max_class(), 1)) {
      bool fresh;
      unsigned slab = thread_slab();
      if (char* slot = pop(L, cls, slab, fresh); __builtin_expect(slot != nullptr, 1)) {
        count_allocation(L, slab, cls, slab, size, fresh);
        return finish(slot, cls, size, align, kind, zero, fresh);
      }
    }
    return allocate_slow(size, align, kind, zero, cls);
  }

  [[gnu::always_inline]] void deallocate(void* p, Kind kind) {
    Layout L = layout();
    Where w;
    if (__builtin_expect(!L.locate(p, w), 0)) return Policy::free_foreign(p, kind);
    Released r = Policy::on_free(*this, L, w, p, kind);
    if constexpr (Policy::kStats) {
      if (r.valid)
        stats::add(stats::area(L).owner[thread_slab()].slab[w.cls][w.slab].frees, 1, thread_shares_slab());
    }
    if (r.slot) recycle(L, w, r.slot);
  }

  // ---- the rest of the API -------------------------------------------------
  void* reallocate(void* p, size_t size) {
    if (!p) return allocate(size, 1, Kind::Malloc);
    Layout L = layout();
    Where w;
    if (!L.locate(p, w)) return reallocate_foreign(p, size);
    if (size == 0) {  // glibc frees and returns NULL
      deallocate(p, Kind::Malloc);
      return nullptr;
    }
    if (Policy::resize_in_place(L, w, p, size)) return p;
    unsigned cls = size_class(Policy::slot_bytes(size, 1));
    if (size > kGrowerMin && cls < kGrowerClass) cls = kGrowerClass;
    void* q = allocate_slow(size, 1, Kind::Malloc, false, cls);
    if (!q) return nullptr;
    size_t old = Policy::usable_size(L, w, p);
    std::memcpy(q, p, old < size ? old : size);
    deallocate(p, Kind::Malloc);
    return q;
  }

  size_t usable_size(const void* p) const {
    Layout L = layout();
    Where w;
    return L.locate(p, w) ? Policy::usable_size(L, w, p) : 0;
  }

  bool owns(const void* p) const {
    Where w;
    return layout().locate(p, w);
  }

  Layout layout() const { return Layout::decode(layout_.load(std::memory_order_acquire)); }

  // Makes the reservation (if no thread has yet) and returns the layout; a
  // layout with max_class() < kMinClass means no memory could be reserved.
  [[gnu::noinline, gnu::cold]] Layout initialise() {
    uintptr_t word = layout_.load(std::memory_order_acquire);
    for (unsigned s = preferred_span_shift_; word == Layout::kUninitialised && s >= kMinSpanShift; --s) {
      void* base = pal::reserve_aligned(Layout::bytes(s), size_t{1} << s);
      if (!base) continue;  // not that much address space: try a smaller layout
      // Racing threads each reserve; the first to publish wins, the rest unmap.
      Policy::on_reserve(base, Layout::bytes(s), Layout::area_bytes(s));
      if (!layout_.compare_exchange_strong(word, Layout::encode(reinterpret_cast<uintptr_t>(base), s),
                                           std::memory_order_acq_rel))
        pal::unmap(base, Layout::bytes(s));
      else
        word = layout_.load(std::memory_order_acquire);
    }
    return Layout::decode(word);
  }

  // malloc_trim: the release build has nothing to give back that free() has
  // not already; the debug build empties its quarantine.
  int trim() { return Policy::trim(*this); }

  // Puts a slot back on its slab's free list. The debug policy calls it when a
  // slot leaves quarantine.
  void recycle(const Layout& L, const Where& w, char* slot) {
    if (w.cls >= kDiscardClass) pal::discard(slot, size_t{1} << w.cls);
    push(L, w, slot);
  }

 private:
  // Takes the first free slot of (cls, slab), or returns nullptr if it is full.
  [[gnu::always_inline]] static char* pop(const Layout& L, unsigned cls, unsigned slab, bool& fresh) {
    auto& head = L.head<FreeListHead>(cls, slab).word;
    uint64_t old = head.load(std::memory_order_acquire);
    for (;;) {
      uint32_t link = uint32_t(old);
      uint32_t index = link & kSlotMask;
      char* slot = L.slot(cls, slab, index);
      uint32_t next;
      if (link & kTouched) {
        // May read a slot another thread just took; the CAS then fails.
        next = Policy::read_link(slot);
      } else {
        if (index == L.slots_per_slab(cls)) return nullptr;
        next = index + 1;
      }
      if (head.compare_exchange_weak(old, (old & kCountMask) | next, std::memory_order_acquire,
                                     std::memory_order_acquire)) {
        fresh = !(link & kTouched);
        return slot;
      }
    }
  }

  static void push(const Layout& L, const Where& w, char* slot) {
    auto& head = L.head<FreeListHead>(w.cls, w.slab).word;
    uint64_t old = head.load(std::memory_order_relaxed);
    for (;;) {
      Policy::write_link(slot, uint32_t(old));
      if (head.compare_exchange_weak(old, ((old & kCountMask) + kCountOne) | kTouched | w.index,
                                     std::memory_order_release, std::memory_order_relaxed))
        return;
    }
  }

  [[gnu::always_inline]] static void count_allocation(const Layout& L, unsigned owner, unsigned cls, unsigned slab,
                                                      size_t size, bool fresh) {
    if constexpr (Policy::kStats) {
      const bool shared = thread_shares_slab();
      stats::SlabCounters& c = stats::area(L).owner[owner].slab[cls][slab];
      stats::add(c.allocations, 1, shared);
      stats::add(c.fresh, fresh, shared);
      stats::add(c.bytes_requested, size, shared);
    }
  }

  [[gnu::always_inline]] static void* finish(char* slot, unsigned cls, size_t size, size_t align, Kind kind,
                                             bool zero, bool fresh) {
    void* p = Policy::on_alloc(slot, cls, size, align, kind, fresh, zero);
    if (zero && !fresh) {
      // A discarded slot is zero but for the link it held while free.
      std::memset(p, 0, cls >= kDiscardClass && Policy::kDiscardedSlotsStayZero ? sizeof(uint32_t) : size);
    }
    return p;
  }

  // Initialisation, fail-over to the other slabs and then to larger classes,
  // and exhaustion.
  [[gnu::noinline, gnu::cold]] void* allocate_slow(size_t size, size_t align, Kind kind, bool zero,
                                                   unsigned cls) {
    Layout L = layout();
    if (L.max_class() < kMinClass) L = initialise();
    const unsigned home = thread_slab();
    for (unsigned c = cls; c <= L.max_class(); ++c) {
      for (unsigned k = 0; k < kNumSlabs; ++k) {
        bool fresh;
        const unsigned slab = (home + k) % kNumSlabs;
        if (char* slot = pop(L, c, slab, fresh)) {
          count_allocation(L, home, c, slab, size, fresh);
          if constexpr (Policy::kStats) {
            if (c != cls)
              stats::area(L).events[cls].overflows.fetch_add(1, std::memory_order_relaxed);
            else if (k != 0)
              stats::area(L).events[cls].failovers.fetch_add(1, std::memory_order_relaxed);
          }
          return finish(slot, c, size, align, kind, zero, fresh);
        }
      }
    }
    errno = ENOMEM;
    return nullptr;
  }

  // A block we did not allocate (the dynamic loader's, or libc's from before we
  // were loaded): copy what we can safely read, and never free it.
  [[gnu::noinline, gnu::cold]] void* reallocate_foreign(void* p, size_t size) {
    if (size == 0) return nullptr;
    void* q = allocate(size, 1, Kind::Malloc);
    if (q) std::memcpy(q, p, pal::mapped_prefix(p, size));
    return q;
  }

  std::atomic<uintptr_t> layout_{Layout::kUninitialised};
  unsigned preferred_span_shift_;
};

}  // namespace smalloc
