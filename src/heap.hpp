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
// the slab the pointer came from, whichever thread frees (another thread's
// free onto a second list, FreeListHead::remote). When a slab is full
// the allocation fails over to the other slabs of the class, then to larger
// classes, and only then returns NULL with errno = ENOMEM.
//
// Policy (release_policy.hpp, debug/) supplies compile-time hooks around the
// hot paths; the release policy's are empty and compile away.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <ctime>

#include <sched.h>

#include "huge.hpp"
#include "layout.hpp"
#include "pal.hpp"
#include "stats.hpp"

namespace smalloc {

enum class Kind : uint8_t { Malloc, New, NewArray };

// Slots this large are discarded (given back to the OS) when freed; they are
// then zero but for the link, which calloc exploits.
inline constexpr unsigned kDiscardClass = 22;  // 4 MiB
// Except one per class up to kKeptMaxClass: the last freed slot of each is
// kept as it is (and the one kept before it discarded instead), so that a
// buffer of that size freed and allocated again in a loop does not fault all
// its pages in every time (a 6 MiB buffer was 33x slower than glibc, whose
// heap keeps freed blocks of up to 32 MiB). What that keeps resident is
// bounded by one slot per class: 28 MiB.
inline constexpr unsigned kKeptClass = kDiscardClass;
inline constexpr unsigned kKeptMaxClass = 24;  // 16 MiB
inline constexpr bool is_kept_class(unsigned cls) { return cls - kKeptClass <= kKeptMaxClass - kKeptClass; }
// Blocks that realloc moves past this size jump straight to kGrowerClass so
// that further growth stays in place; only touched pages cost memory. Just
// below kDiscardClass, so that a freed grower's pages are reused, not
// faulted in again (a buffer grown and dropped in a loop: calloc bench 2x).
inline constexpr size_t kGrowerMin = 64 * 1024;
inline constexpr unsigned kGrowerClass = kDiscardClass - 1;  // 2 MiB
// realloc moves a block from a slot this large (if the policy allows) by
// moving its pages to the new slot (mremap), not by copying them: no copy,
// and no fault on the new slot's pages. Only from slots whose pages free()
// gives back anyway: a grower or kept slot emptied so would fault its pages
// in again when next used (realloc-step 1.5x slower). (From 8 MiB on, a
// slot emptied so and then kept is empty: that costs the next user of its
// class the faults the move saved.)
inline constexpr unsigned kMovePagesClass = kKeptClass + 1;

inline constexpr unsigned kStagedMaxClass = 14;  // 64 slots staged at least: one chain per 64 frees or fewer

// How many never-used slots a thread takes off its slab's head at once: a
// page's worth, at most 64 (and one from 4 KiB slots on). One CAS and one
// pass through allocate_untouched for them all: a growing heap took some 110
// instructions and a CAS per new slot.
inline constexpr uint32_t run_slots(unsigned cls) {
  return cls >= 12 ? 1 : std::min<uint32_t>(64, uint32_t{4096} >> cls);
}

// Everything a thread keeps for the process heap, in one block of initial-exec
// TLS: the hot paths find all of it from one thread-pointer offset.
struct ThreadState {
  // The thread's slab number plus one (plus kNumSlabs more if the thread
  // shares the slab with others); 0 until its first allocation.
  unsigned slab_plus_one;
  // When the thread next looks in other slabs for used free slots (see
  // Heap::allocate_untouched): after look_wait more new slots of the class.
  uint16_t look_wait[kNumClasses];
  uint16_t look_gap[kNumClasses];
  uint8_t look_from[kNumClasses];  // the slab where the last look found one: look there first
  // Slots of the thread's own slab that the thread itself freed, per class: a
  // LIFO only this thread can see, so it is pushed and popped with plain loads
  // and stores instead of a CAS on the shared head, and linked by address
  // (the first 8 bytes of a free slot point to the next; null ends it), so
  // that malloc takes one without even looking at the layout. Only a thread
  // that owns its slab alone keeps one, and it hands the slots back to the
  // shared lists when it exits. A list holds at most kOwnListBytes (one slot
  // if larger); the rest of the thread's frees go to the shared list (by
  // way of `staged`), where other threads can take them too. Its length is
  // counts.listed[cls].
  char* own_head[kNumClasses];
  // What the thread frees of its own slab beyond its list, per class, up to
  // kStagedMaxClass: staged in a bitmap (Layout::staged_bits0), and handed
  // to the shared list as one chain in address order (one CAS) once as many
  // as the list holds are staged, or when the thread would otherwise take a
  // never-used slot of the class. Whoever takes them then takes them
  // together in memory, however they were freed: pushed one by one, a tree
  // or a batch freed in random order came back scattered over the slab, and
  // every reuse scattered it further. staged_from is the lowest word that
  // may have a bit (null if none).
  uint64_t* staged_from[kStagedMaxClass + 1];
  uint32_t staged[kStagedMaxClass + 1];
  // Never-used slots of the thread's own slab taken off its head together
  // (Heap::take_new), per class: [run_next, run_end). malloc hands them out
  // with no CAS, once the slab's list has no used slot for it; the rest go
  // back with the thread's lists.
  char* run_next[kNumClasses];
  char* run_end[kNumClasses];
  // Bytes of never-used slots the thread has taken since it last trimmed:
  // see Heap::kAutoTrimBytes.
  uint64_t fresh_bytes;
  // What the thread does to its own slab, counted here and published in its
  // owner row (stats.hpp).
  stats::OwnSlabCounters counts;
};
extern __thread ThreadState t_thread __attribute__((tls_model("initial-exec")));
inline constexpr uint64_t kOwnListBytes = 1 << 20;
// How many slots a class's list may hold: none for the classes discarded on free.
inline constexpr auto kOwnListLimit = [] {
  std::array<uint32_t, kNumClasses> limit{};
  for (unsigned cls = 0; cls < kDiscardClass; ++cls) limit[cls] = uint32_t(std::max<uint64_t>(1, kOwnListBytes >> cls));
  return limit;
}();

unsigned assign_thread_slab();  // cold: takes a slab no live thread has, if any

// In a fork child, the free slots that threads which did not follow it held
// to themselves, by class: see heap.cpp. Bit c is set while some may be of
// class c.
extern std::atomic<uint64_t> g_orphan_classes;
void adopt_orphans(unsigned cls);  // cold: hands them to the shared lists

inline unsigned thread_slab() {
  unsigned s = t_thread.slab_plus_one;
  return __builtin_expect(s != 0, 1) ? (s - 1) % kNumSlabs : assign_thread_slab();
}
inline bool thread_shares_slab() { return t_thread.slab_plus_one > kNumSlabs; }

// What a policy's on_free decided: whether the free was valid (and counts),
// and the slot to put back on its free list now, if any.
struct Released {
  bool valid;
  char* slot;
};

struct alignas(kHeadBytes) FreeListHead {
  std::atomic<uint64_t> word;
  // The push count when this list was last trimmed: nothing freed since, no
  // pages to give back (written by trimmers only, read by them only).
  std::atomic<uint32_t> trimmed_at;
  // What other threads free into the slab: a second list, on lines of its
  // own, so that their pushes and the owner's pops do not fight over one
  // line for every block (prodcons: 65% of malloc's time was that line and
  // the slot's). The low half links to the first slot (0: empty), the high
  // half is the last one's number: whoever takes the list, all of it with
  // one exchange (Heap::take_remote), puts it in front of `word` with one
  // push. Push-only and take-all, it needs no count against ABA.
  alignas(128) std::atomic<uint64_t> remote;
};
inline constexpr uint64_t kCountOne = uint64_t{1} << 32;
inline constexpr uint64_t kCountMask = ~uint64_t{0} << 32;

// kProcessHeap: the process's one heap, the only one that may keep state in
// t_thread (which is per thread, not per heap); test heaps keep none.
template <class Policy, bool kProcessHeap = false>
class Heap {
 public:
  using Where = Layout::Where;

  // span_shift: the largest layout to try; tests pass a small one.
  constexpr explicit Heap(unsigned span_shift = kMaxSpanShift) : preferred_span_shift_(span_shift) {}

  // ---- hot paths -----------------------------------------------------------
  // Written so that everything that calls out (first use, shared slabs, big
  // slots, exhaustion) is a tail call: the common path saves no registers.
  [[gnu::always_inline]] void* allocate(size_t size, size_t align, Kind kind, bool zero = false) {
    return allocate_in(size_class(Policy::slot_bytes(size, align), align), size, align, kind, zero);
  }

  [[gnu::always_inline]] void* allocate_in(unsigned cls, size_t size, size_t align, Kind kind, bool zero) {
    if constexpr (kProcessHeap) {
      // Only slots of a class the layout has, of the thread's own slab, are
      // ever on its list: nothing else to check (cls may be up to 64).
      if (char* slot = cls < kDiscardClass ? t_thread.own_head[cls] : nullptr; slot != nullptr) {
        char* next;
        std::memcpy(&next, slot, sizeof next);
        t_thread.own_head[cls] = next;
        __builtin_prefetch(next, 1);  // as pop() does
        --t_thread.counts.listed[cls];
        // Counted by the list's length alone (OwnSlabCounters): one add less.
        if constexpr (Policy::kStats) stats::add(t_thread.counts.bytes_requested[cls], size, false);
        return finish(slot, cls, size, align, kind, zero, false);
      }
    }
    const Layout L = layout();
    const unsigned slab = t_thread.slab_plus_one - 1;  // >= kNumSlabs if not assigned yet, or shared
    if (__builtin_expect(cls <= L.max_class() && slab < kNumSlabs && !is_kept_class(cls), 1)) {
      bool fresh;
      if (char* slot = pop<false>(L, cls, slab, fresh); __builtin_expect(slot != nullptr, 1)) {
        count_allocation(L, slab, cls, slab, size, false, false);
        return finish(slot, cls, size, align, kind, zero, false);
      }
      if constexpr (kProcessHeap) {
        // No used slot left: the run of new ones taken before (counted as
        // touched then).
        if (char* slot = t_thread.run_next[cls]; slot != t_thread.run_end[cls]) {
          t_thread.run_next[cls] = slot + (size_t{1} << cls);
          count_own_allocation(cls, size);
          return finish(slot, cls, size, align, kind, zero, true);
        }
      }
      return allocate_untouched(size, align, kind, zero, cls);
    }
    return allocate_slow(size, align, kind, zero, cls);
  }

  [[gnu::always_inline]] void deallocate(void* p, Kind kind) {
    const Layout L = layout();
    Where w;
    if (__builtin_expect(!L.locate(p, w), 0)) return free_outside(p, kind);
    const Released r = Policy::on_free(*this, L, w, p, kind);
    if constexpr (kProcessHeap) {
      // A slot of the thread's own slab (never true for a thread that shares
      // one or has none: w.slab < kNumSlabs) onto its private list. All else
      // is one tail call, so that this path saves no registers.
      const uint32_t length = t_thread.counts.listed[w.cls];
      if (__builtin_expect(w.slab + 1 == t_thread.slab_plus_one && r.slot && length < kOwnListLimit[w.cls], 1)) {
        if constexpr (Policy::kStats) {
          if (r.valid) stats::add(t_thread.counts.frees[w.cls], 1, false);
        }
        char* const head = t_thread.own_head[w.cls];
        std::memcpy(r.slot, &head, sizeof head);
        t_thread.own_head[w.cls] = r.slot;
        t_thread.counts.listed[w.cls] = length + 1;
        return;
      }
    }
    return free_elsewhere(w.cls, w.slab, r);
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
    unsigned cls = size_class(Policy::slot_bytes(size, 1));
    // A block of a slot that free() gives back, shrunk to a quarter of it or
    // less, moves: in place it kept every page (200 blocks of 8 MiB shrunk
    // to 1 byte held 1.6 GB). A block gets such a slot by needing more than
    // half of it (or by an alignment, which realloc does not keep anyway),
    // so growth never comes here.
    const bool shrunk = w.cls >= kDiscardClass && cls + 2 <= w.cls;
    if (!shrunk && Policy::resize_in_place(L, w, p, size)) return p;
    if (size > kGrowerMin && cls < kGrowerClass) cls = kGrowerClass;
    void* q = allocate_in(cls, size, 1, Kind::Malloc, false);
    if (!q) return nullptr;
    size_t old = Policy::usable_size(L, w, p);
    if (!(Policy::kMovePages && !shrunk && w.cls >= kMovePagesClass && pal::move_pages(p, q, old)))
      std::memcpy(q, p, old < size ? old : size);
    deallocate(p, Kind::Malloc);
    return q;
  }

  size_t usable_size(const void* p) const {
    Layout L = layout();
    Where w;
    if (L.locate(p, w)) return Policy::usable_size(L, w, p);
    const huge::Entry* e = huge::find(p);
    return e ? huge::size_of(*e) : 0;
  }

  bool owns(const void* p) const {
    Where w;
    return layout().locate(p, w) || huge::find(p);
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

  // malloc_trim: the calling thread's private free slots go back to the
  // shared lists; then (release build) every slab gives back the pages at its
  // top that hold only free slots, and the kept slots go back too. free()
  // has given back the larger slots already. Returns 1 if memory was released.
  int trim() {
    const Layout L = layout();
    int released = 0;
    if constexpr (Policy::kTrimSlabs) {
      if (L.max_class() >= kMinClass) released = trim_slabs(L);
    }
    for (unsigned cls = kKeptClass; cls <= kKeptMaxClass; ++cls) {
      Where w{};
      if (char* slot = swap_kept(L, cls, nullptr, w)) {
        give_back(L, w, slot);
        released = 1;
      }
    }
    return Policy::trim(*this) | released;
  }

  // At thread exit (or in a fork child, for the threads that did not follow):
  // the thread's own free slots go back to the shared lists, where the slab's
  // next owner (or any thread failing over) finds them.
  void return_thread_lists(ThreadState& t) {
    const Layout L = layout();
    for (unsigned cls = 0; cls < kNumClasses; ++cls) return_thread_list(L, t, cls);
  }

  // One class of them. Each list is taken with an atomic exchange, so that
  // threads of a fork child adopting the same orphan's (adopt_orphans) never
  // both walk one.
  static void return_thread_list(const Layout& L, ThreadState& t, unsigned cls) {
    if (cls <= kStagedMaxClass) unstage(L, t, cls);
    return_run(L, t, cls);
    char* slot = std::atomic_ref<char*>(t.own_head[cls]).exchange(nullptr, std::memory_order_acquire);
    if (slot == nullptr) return;
    // Counted, not followed to its end: a double free may have made it a loop.
    const uint32_t length = t.counts.listed[cls];
    for (uint32_t left = length; slot != nullptr && left-- > 0;) {
      char* next;
      std::memcpy(&next, slot, sizeof next);
      Where w;
      if (L.locate(slot, w)) push(L, w, slot);
      slot = next;
    }
    // The list's length first: a reader that sees the slots returned sees
    // them gone from the list (OwnSlabCounters).
    std::atomic_ref<uint32_t>(t.counts.listed[cls]).store(0, std::memory_order_relaxed);
    std::atomic_ref<uint64_t>(t.counts.returned[cls]).store(t.counts.returned[cls] + length, std::memory_order_release);
  }

  // Puts a slot back on its slab's free list. The debug policy calls it when a
  // slot leaves quarantine.
  [[gnu::always_inline]] void recycle(const Layout& L, const Where& w, char* slot) {
    if (__builtin_expect(w.cls >= kDiscardClass, 0)) return discard_and_push(L, w, slot);
    push(L, w, slot);
  }

 private:
  static void push(const Layout& L, const Where& w, char* slot) {
    push_chain(L, w.cls, w.slab, kTouched | w.index, slot);
  }

  // Puts a chain of free slots, linked already from `first` (a link) to
  // `last` (a slot), in front of (cls, slab)'s list: one push.
  static void push_chain(const Layout& L, unsigned cls, unsigned slab, uint32_t first, char* last) {
    auto& head = L.head<FreeListHead>(cls, slab).word;
    uint64_t old = head.load(std::memory_order_relaxed);
    for (;;) {
      Policy::write_link(last, uint32_t(old));
      if (head.compare_exchange_weak(old, ((old & kCountMask) + kCountOne) | first, std::memory_order_release,
                                     std::memory_order_relaxed))
        return;
    }
  }

  // See FreeListHead::remote. The last slot's link is set when the list is
  // taken.
  static void push_remote(const Layout& L, const Where& w, char* slot) {
    auto& remote = L.head<FreeListHead>(w.cls, w.slab).remote;
    uint64_t old = remote.load(std::memory_order_relaxed);
    for (;;) {
      Policy::write_link(slot, uint32_t(old));
      const uint64_t last = uint32_t(old) != 0 ? old & kCountMask : uint64_t{w.index} << 32;
      if (remote.compare_exchange_weak(old, last | kTouched | w.index, std::memory_order_release,
                                       std::memory_order_relaxed))
        return;
    }
  }

  // Moves (cls, slab)'s remote list, if any, in front of its free list.
  // False if it had none.
  static bool take_remote(const Layout& L, unsigned cls, unsigned slab) {
    auto& remote = L.head<FreeListHead>(cls, slab).remote;
    if (remote.load(std::memory_order_relaxed) == 0) return false;
    const uint64_t list = remote.exchange(0, std::memory_order_acquire);
    if (list == 0) return false;
    push_chain(L, cls, slab, uint32_t(list), L.slot(cls, slab, uint32_t(list >> 32)));
    return true;
  }

  // Hands t's run of never-used slots of `cls` back (ThreadState::run_next).
  // If nothing was taken from the slab after it, the head's first untouched
  // slot moves back to the run's start: the slots stay untouched (zero, and
  // uncounted again). Otherwise they go on the list as used slots.
  static void return_run(const Layout& L, ThreadState& t, unsigned cls) {
    char* const next = std::atomic_ref<char*>(t.run_next[cls]).exchange(nullptr, std::memory_order_acquire);
    char* const end = t.run_end[cls];
    t.run_end[cls] = nullptr;
    Where w;
    if (next == end || !L.locate(next, w)) return;
    const uint32_t first = w.index, count = uint32_t((end - next) >> cls);
    auto& head = L.head<FreeListHead>(cls, w.slab).word;
    uint64_t old = head.load(std::memory_order_relaxed);
    // Untouched from the run's end on. (Not if the run ends the slab: that
    // link also means "full", which is what a trim leaves on the head while
    // it holds the list.)
    while (uint32_t(old) == first + count && first + count != L.slots_per_slab(cls)) {
      if (head.compare_exchange_weak(old, (old & kCountMask) | first, std::memory_order_release,
                                     std::memory_order_relaxed)) {
        if constexpr (Policy::kStats) stats::add(stats::row(L, 0, true).slab[cls][w.slab].fresh, 0 - uint64_t(count), true);
        return;
      }
    }
    for (uint32_t i = first; i + 1 < first + count; ++i) Policy::write_link(L.slot(cls, w.slab, i), kTouched | (i + 1));
    push_chain(L, cls, w.slab, kTouched | first, L.slot(cls, w.slab, first + count - 1));
  }

  // Takes the first free slot of (cls, slab), and if it was never used, up to
  // `want` - 1 more never-used ones after it: `n` in all. Returns nullptr if
  // the slab is full, or (want 0) if its next free slot was never used.
  [[gnu::always_inline]] static char* pop(const Layout& L, unsigned cls, unsigned slab, uint32_t want, bool& fresh,
                                          uint32_t& n) {
    auto& head = L.head<FreeListHead>(cls, slab).word;
    uint64_t old = head.load(std::memory_order_acquire);
    for (;;) {
      const uint32_t link = uint32_t(old), index = link & kSlotMask;
      char* const slot = L.slot(cls, slab, index);
      uint32_t next;
      if (link & kTouched) {
        // May read a slot another thread just took; the CAS then fails.
        next = Policy::read_link(slot);
        n = 1;
      } else {
        const uint32_t left = L.slots_per_slab(cls) - index;
        if (want == 0 || left == 0) return nullptr;
        n = std::min(want, left);
        next = index + n;
      }
      if (head.compare_exchange_weak(old, (old & kCountMask) | next, std::memory_order_acquire,
                                     std::memory_order_acquire)) {
        fresh = !(link & kTouched);
        // The next pop reads that slot's link, most likely written by
        // another core (a free), and the caller then writes into it: fetch it
        // now, while the caller works on this one, not then.
        if (next & kTouched) __builtin_prefetch(L.slot(cls, slab, next & kSlotMask), 1);
        return slot;
      }
    }
  }
  // One slot; a used one only if kTakeUntouched is false.
  template <bool kTakeUntouched = true>
  [[gnu::always_inline]] static char* pop(const Layout& L, unsigned cls, unsigned slab, bool& fresh) {
    uint32_t n;
    return pop(L, cls, slab, kTakeUntouched ? 1 : 0, fresh, n);
  }

  // See ThreadState::staged. Inlined into free_elsewhere: one frame for both.
  [[gnu::always_inline]] static void stage(const Layout& L, unsigned cls, const char* slot) {
    const uintptr_t pos = L.staged_pos(cls, slot);
    uint64_t* const word = reinterpret_cast<uint64_t*>(L.staged_bits0(cls)) + (pos >> 6);
    const uint64_t bit = uint64_t{1} << (pos & 63), bits = *word;
    if (bits & bit) return;  // staged already (a double free): once is enough
    *word = bits | bit;
    if (bits == 0) {
      reinterpret_cast<uint64_t*>(L.staged_bits1(cls))[pos >> 12] |= uint64_t{1} << ((pos >> 6) & 63);
      if (uintptr_t(word) - 1 < uintptr_t(t_thread.staged_from[cls]) - 1) t_thread.staged_from[cls] = word;
    }
    if (++t_thread.staged[cls] == kOwnListLimit[cls]) unstage(L, t_thread, cls);
  }

  // Hands t's staged slots of `cls` to the shared list, lowest first.
  [[gnu::noinline, gnu::cold]] static void unstage(const Layout& L, ThreadState& t, unsigned cls) {
    uint64_t* const lowest = std::atomic_ref<uint64_t*>(t.staged_from[cls]).exchange(nullptr, std::memory_order_acquire);
    uint32_t left = t.staged[cls];
    if (left == 0 || lowest == nullptr) return;
    auto* const bits0 = reinterpret_cast<uint64_t*>(L.staged_bits0(cls));
    auto* const bits1 = reinterpret_cast<uint64_t*>(L.staged_bits1(cls));
    const uintptr_t from = uintptr_t(lowest - bits0);  // the lowest level-0 word with a bit
    const uint32_t slots = L.slots_per_slab(cls);
    const unsigned slab = unsigned((from * 64) >> (L.span_shift - cls));
    const uintptr_t end = (L.staged_pos(cls, slab, 0) + slots) >> 12;  // the slab's last level-1 word, plus one
    uint32_t first = 0;
    char* last = nullptr;
    for (uintptr_t i1 = from / 64; i1 < end && left != 0; ++i1) {
      for (uint64_t m = bits1[i1]; m != 0 && left != 0; m &= m - 1) {
        const uintptr_t i0 = i1 * 64 + uintptr_t(__builtin_ctzll(m));
        for (uint64_t b = bits0[i0]; b != 0 && left != 0; b &= b - 1, --left) {
          const uint32_t index = uint32_t((i0 * 64 + uintptr_t(__builtin_ctzll(b))) & (slots - 1));
          if (last) Policy::write_link(last, kTouched | index);
          else first = kTouched | index;
          last = L.slot(cls, slab, index);
        }
        bits0[i0] = 0;
      }
      bits1[i1] = 0;
    }
    t.staged[cls] = 0;
    if (last) push_chain(L, cls, slab, first, last);
  }

  // Takes the slab's whole free list, marks its slots in trim_marks_ (zero
  // on entry and on return but for a pending walk's, below), and if the
  // slots just below the first untouched one are free for whole pages,
  // discards those pages and makes the slots untouched again (zero, as
  // untouched slots are); the other free slots go back in address order.
  // Meanwhile the slab looks full: its allocations go elsewhere, and what is
  // freed into it waits on the head, to be put back in front of the rest.
  // `budget` is how many more slots may be walked. A walk that spends it
  // keeps what it walked off the list, still marked (pending_), puts the
  // rest back, and the next trim goes on from there: a list longer than one
  // budget is trimmed a budget at a time, not walked again from its start
  // every time (that made no progress at all).
  // `thorough` (malloc_trim): also walks the lists of slots larger than a
  // page that were not freed into since their last trim, and gives back all
  // but the first page (the link's) of every free slot below that top: a
  // heap of 40 KB blocks 90% freed at random went from 394 MiB to 77.
  [[gnu::cold]] bool trim_slab(const Layout& L, unsigned cls, unsigned slab, uint64_t& budget, bool thorough) {
    FreeListHead& list = L.head<FreeListHead>(cls, slab);
    auto& head = list.word;
    uint64_t* const marks = trim_marks_;
    const uint32_t full = L.slots_per_slab(cls);
    PendingTrim walked = pending_.last && pending_.cls == cls && pending_.slab == slab ? pending_ : PendingTrim{};
    take_remote(L, cls, slab);
    uint64_t old = head.load(std::memory_order_acquire);
    do {
      if (walked.last) continue;  // the walk goes on, news or not
      if (!(uint32_t(old) & kTouched)) return false;  // no used slot is free
      if (!(thorough && cls > pal::kPageShift) && uint32_t(old >> 32) == list.trimmed_at.load(std::memory_order_relaxed))
        return false;  // no news
    } while (!head.compare_exchange_weak(old, ((old & kCountMask) + kCountOne) | full, std::memory_order_acq_rel,
                                         std::memory_order_acquire));
    const auto marked = [marks](uint32_t i) { return (marks[i / 64] >> (i % 64)) & 1; };
    // fn(index) for every marked slot below `end`, highest first.
    const auto each_marked_below = [marks](uint32_t end, auto fn) {
      for (uint32_t word = end / 64 + 1; word-- > 0;)
        for (uint64_t bits = marks[word]; bits != 0;) {
          const unsigned bit = 63 - unsigned(__builtin_clzll(bits));
          bits &= ~(uint64_t{1} << bit);
          if (word * 64 + bit < end) fn(word * 64 + bit);
        }
    };
    uint32_t link = uint32_t(old), top = full;
    char* last = nullptr;  // the last slot walked this time
    // whole: walked to its end; false too if the list repeats a slot (a
    // double free): then leave it as it was
    bool whole = true, cut = false;
    while (link & kTouched) {
      const uint32_t index = link & kSlotMask;
      if (index >= full || marked(index)) {
        whole = false;
        break;
      }
      if (budget == 0) {
        whole = false;
        cut = true;
        break;
      }
      --budget;
      marks[index / 64] |= uint64_t{1} << (index % 64);
      last = L.slot(cls, slab, index);
      link = Policy::read_link(last);
    }
    uint32_t first = uint32_t(old);
    bool released = false;
    if (cut) {
      if (last) {  // this walk's part goes in front of the part walked before
        if (walked.last) Policy::write_link(last, walked.first);
        else walked = {cls, slab, 0, last};
        walked.first = first;
        set_pending(walked);
      }
      first = link;
    } else {
      if (whole) top = link & kSlotMask;
      uint32_t keep = top;
      while (whole && keep > 0 && marked(keep - 1)) --keep;
      const uint32_t slots_per_page = cls < pal::kPageShift ? uint32_t(pal::kPageSize >> cls) : 1;
      keep = (keep + slots_per_page - 1) / slots_per_page * slots_per_page;
      if (whole && keep < top && !pal::discard(L.slot(cls, slab, keep), size_t(top - keep) << cls))
        keep = top;  // the kernel kept the pages: so do we
      if (whole && keep < top) {
        first = keep;
        each_marked_below(keep, [&](uint32_t index) {
          Policy::write_link(L.slot(cls, slab, index), first);
          first = kTouched | index;
        });
        // Those slots will be counted as touched again when next handed out.
        if constexpr (Policy::kStats) stats::add(stats::row(L, 0, true).slab[cls][slab].fresh, 0 - uint64_t(top - keep), true);
        released = true;
      } else if (walked.last) {  // the part walked before goes back in front
        Policy::write_link(walked.last, first);
        first = walked.first;
      }
      if (thorough && whole && cls > pal::kPageShift)
        each_marked_below(keep, [&](uint32_t index) {
          released |= pal::discard(L.slot(cls, slab, index) + pal::kPageSize, (size_t{1} << cls) - pal::kPageSize);
        });
      clear_marks(top);
      if (walked.last) set_pending({});
    }
    // Put the list back behind whatever was freed meanwhile.
    uint64_t now = head.load(std::memory_order_acquire);
    for (;;) {
      if (uint32_t(now) == full) {
        if (head.compare_exchange_weak(now, ((now & kCountMask) + kCountOne) | first, std::memory_order_release,
                                       std::memory_order_acquire)) {
          if (whole) list.trimmed_at.store(uint32_t(now >> 32) + 1, std::memory_order_relaxed);
          return released;
        }
        continue;
      }
      if (!head.compare_exchange_weak(now, ((now & kCountMask) + kCountOne) | full, std::memory_order_acq_rel,
                                      std::memory_order_acquire))
        continue;
      char* tail = L.slot(cls, slab, uint32_t(now) & kSlotMask);  // those frees end at `full`
      for (uint32_t next; (next = Policy::read_link(tail)) != full;) tail = L.slot(cls, slab, next & kSlotMask);
      Policy::write_link(tail, first);
      first = uint32_t(now);
      now = head.load(std::memory_order_acquire);
    }
  }

  // Every slab that was freed into since it was last trimmed: see trim_slab.
  // Also done, without being asked, by a thread that has taken kAutoTrimBytes
  // of never-used slots since it last did: a program that frees much of one
  // size and then grows in another gives the first back before it peaks.
  // The walk covers only the lists freed into since their last trim, at most
  // once per kAutoTrimBytes of new slots the thread takes.
  // That walk is a cache miss per slot, so the automatic one stops after
  // kAutoTrimSlots (some 15 ms at worst here), largest classes first, where
  // each slot walked may give back the most, and the next one goes on where
  // it stopped.
  static constexpr uint64_t kAutoTrimBytes = uint64_t{32} << 20;
  static constexpr uint64_t kAutoTrimSlots = uint64_t{1} << 16;
  [[gnu::cold, gnu::noinline]] bool trim_slabs(const Layout& L, uint64_t budget = UINT64_MAX) {
    if constexpr (kProcessHeap) {
      return_thread_lists(t_thread);
      for (uint64_t m = g_orphan_classes.load(std::memory_order_relaxed); m != 0; m &= m - 1)
        adopt_orphans(unsigned(__builtin_ctzll(m)));
    }
    // One trimmer at a time: the marks and the pending walk are the heap's.
    // An automatic trim leaves it to the one at work; malloc_trim waits.
    while (trim_held_.exchange(true, std::memory_order_acquire)) {
      if (budget != UINT64_MAX) return false;
      sched_yield();
    }
    // One bit per slot of the largest slab, zero-filled on first touch.
    if (!trim_marks_)
      trim_marks_ = static_cast<uint64_t*>(pal::reserve(std::max<size_t>(L.slots_per_slab(kMinClass) / 8, pal::kPageSize)));
    bool released = false;
    const bool thorough = budget == UINT64_MAX;
    const auto step = [&](unsigned cls, unsigned slab) {
      if (!enter_trim()) return false;  // a fork is waiting: stop
      released |= trim_slab(L, cls, slab, budget, thorough);
      leave_trim();
      return budget != 0;
    };
    if (trim_marks_ && (!pending_.last || step(pending_.cls, pending_.slab)))
      for (unsigned cls = L.max_class(); cls >= kMinClass; --cls)
        for (unsigned slab = 0; slab < kNumSlabs; ++slab)
          if (!step(cls, slab)) goto done;
  done:
    trim_held_.store(false, std::memory_order_release);
    return released;
  }

  // The part of a list that a trim walked before its budget ran out: off the
  // list, its slots marked in trim_marks_ (trim_slab). `first` is the link
  // to its first slot, `last` its last slot (null: none).
  struct PendingTrim {
    unsigned cls, slab;
    uint32_t first;
    char* last;
  };
  void set_pending(const PendingTrim& p) {
    pending_ = p;
    pending_where_.store(p.last ? p.cls * kNumSlabs + p.slab : ~0u, std::memory_order_relaxed);
  }
  void clear_marks(uint32_t slots) {
    const size_t bytes = (size_t(slots) / 64 + 1) * sizeof(uint64_t);
    if (!pal::discard(trim_marks_, bytes)) std::memset(trim_marks_, 0, bytes);
  }

  // Puts pending_'s slots back on their list (see allocate_untouched). Not if
  // a trim is at work: it will finish soon, or stop and leave them to the
  // next one.
  [[gnu::cold, gnu::noinline]] void put_back_pending(const Layout& L) {
    if (trim_held_.exchange(true, std::memory_order_acquire)) return;
    if (pending_.last && enter_trim()) {  // a fork must not copy the heap halfway through
      push_chain(L, pending_.cls, pending_.slab, pending_.first, pending_.last);
      clear_marks(L.slots_per_slab(pending_.cls));
      set_pending({});
      leave_trim();
    }
    trim_held_.store(false, std::memory_order_release);
  }

 public:
  // A slab being trimmed has its free list off the head (trim_slab): a fork
  // child, where the trimming thread does not exist, would never get it
  // back. So fork() waits for the trims under way (begin_fork), and no new
  // one starts until it is done. seq_cst on both sides: either the trimmer
  // sees the fork coming or the fork sees the trim. Also around
  // adopt_orphans, which takes lists off their records too.
  bool enter_trim() {
    trims_.fetch_add(1, std::memory_order_seq_cst);
    if (!forking_.load(std::memory_order_seq_cst)) return true;
    leave_trim();
    return false;
  }
  void leave_trim() { trims_.fetch_sub(1, std::memory_order_release); }

  // From pthread_atfork's handlers. The wait is bounded (a trimmer that
  // never runs again, stopped or in the signal handler that forks, must not
  // hang the fork): after it the child may find one slab's free slots gone.
  void begin_fork() {
    forking_.store(true, std::memory_order_seq_cst);
    timespec start{}, now{};
    clock_gettime(CLOCK_MONOTONIC, &start);
    while (trims_.load(std::memory_order_seq_cst) != 0) {
      sched_yield();
      clock_gettime(CLOCK_MONOTONIC, &now);
      if (now.tv_sec - start.tv_sec >= kForkWaitSeconds) break;
    }
  }
  void end_fork(bool child) {
    if (child) {  // the threads that counted there, or held the trim, are gone
      trims_.store(0, std::memory_order_relaxed);
      trim_held_.store(false, std::memory_order_relaxed);
    }
    forking_.store(false, std::memory_order_release);
  }
  static constexpr long kForkWaitSeconds = 2;

 private:
  // By value, so that the hot path's Layout and Where stay in registers.
  [[gnu::noinline, gnu::cold]] void discard_and_push(const Layout L, Where w, char* slot) {
    if (is_kept_class(w.cls) && !(slot = swap_kept(L, w.cls, slot, w))) return;
    give_back(L, w, slot);
  }

  // Puts `slot` (or nothing) in the class's kept place; returns the slot kept
  // there before, if any, with w saying where it is.
  char* swap_kept(const Layout& L, unsigned cls, char* slot, Where& w) {
    char* before = kept_[cls - kKeptClass].exchange(slot, std::memory_order_acq_rel);
    return before && L.locate(before, w) ? before : nullptr;
  }

  static void give_back(const Layout& L, const Where& w, char* slot) {
    const size_t bytes = size_t{1} << w.cls;
    const bool zero = Policy::kMovePages ? pal::renew(slot, bytes) : pal::discard(slot, bytes);
    // Locked pages stay: calloc counts on discarded slots being zero.
    if (!zero && Policy::kDiscardedSlotsStayZero) std::memset(slot, 0, bytes);
    push(L, w, slot);
  }

  // Every free but a push onto the thread's private list: to the staged
  // bits or the shared list. Takes no Layout, which it loads again, nor the
  // slot number, which it works out again from the slot (none without one),
  // so that every argument travels in a register and free() computes nothing
  // it does not need.
  [[gnu::noinline]] void free_elsewhere(unsigned cls, unsigned slab, const Released r) {
    const Layout L = layout();
    const unsigned me = t_thread.slab_plus_one - 1;  // >= kNumSlabs if not assigned yet, or shared
    if (__builtin_expect(me >= kNumSlabs, 0)) return free_from_shared_row(L, cls, slab, r);
    if (kProcessHeap && slab == me) {  // the private list is full (or the policy keeps the slot)
      if constexpr (Policy::kStats) {
        if (r.valid) {
          stats::add(t_thread.counts.frees[cls], 1, false);
          stats::add(t_thread.counts.frees_not_listed[cls], 1, false);
        }
      }
      if (r.slot && cls <= kStagedMaxClass && Layout::has_staged_bits(cls, L.span_shift)) return stage(L, cls, r.slot);
      if (r.slot) recycle(L, {cls, slab, L.index_of(r.slot, cls)}, r.slot);
      return;
    }
    if constexpr (Policy::kStats) {
      if (r.valid) stats::add(stats::area(L).rows[me].slab[cls][slab].frees, 1, false);
    }
    if (r.slot) recycle_remote(L, {cls, slab, L.index_of(r.slot, cls)}, r.slot);
  }

  // A slot freed by a thread that does not own its slab.
  [[gnu::always_inline]] void recycle_remote(const Layout& L, const Where& w, char* slot) {
    if (__builtin_expect(w.cls >= kDiscardClass, 0)) return discard_and_push(L, w, slot);
    push_remote(L, w, slot);
  }

  // A thread that never allocated, or one of more than 64 sharing slabs.
  [[gnu::noinline, gnu::cold]] void free_from_shared_row(const Layout L, unsigned cls, unsigned slab, const Released r) {
    const Where w{cls, slab, r.slot ? L.index_of(r.slot, cls) : 0};
    if constexpr (Policy::kStats) {
      if (r.valid) {
        const unsigned home = thread_slab();  // assigns one to a thread that never allocated
        stats::add(stats::row(L, home, thread_shares_slab()).slab[w.cls][w.slab].frees, 1, thread_shares_slab());
      }
    }
    if (r.slot) recycle_remote(L, w, r.slot);
  }

  // Counted by the allocating thread: what it takes from its own slab in its
  // thread state, the rest in its owner row.
  // `fresh`: how many never-used slots the allocation took (a run's too).
  [[gnu::always_inline]] static void count_allocation(const Layout& L, unsigned owner, unsigned cls, unsigned slab,
                                                      size_t size, uint32_t fresh, bool shared) {
    if constexpr (Policy::kStats) {
      stats::SlabCounters& c = stats::row(L, owner, shared).slab[cls][slab];
      if (fresh) stats::add(c.fresh, fresh, shared);
      if (kProcessHeap && slab == owner && !shared) {
        count_own_allocation(cls, size);
      } else {
        stats::add(c.allocations, 1, shared);
        stats::add(c.bytes_requested, size, shared);
      }
    }
  }

  [[gnu::always_inline]] static void count_own_allocation(unsigned cls, size_t size) {
    if constexpr (Policy::kStats) {
      stats::add(t_thread.counts.allocations[cls], 1, false);
      stats::add(t_thread.counts.bytes_requested[cls], size, false);
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
  // The thread's slab has no used free slot left. Before touching new memory,
  // take a used free slot from another slab of the class: otherwise each slab
  // grows to its own owner's peak while free memory sits in the others (the
  // producer/consumer and server patterns). Looking costs a read of 63 heads,
  // so a thread that found nothing looks again only after twice as many new
  // slots as last time (up to kMaxLookGap); finding something resets that,
  // and the next look starts where this one found it. A thread that shares
  // its slab (one of more than 64) comes here for every allocation, and
  // takes a used free slot of its slab first.
  //
  // Most calls come from a thread that owns its slab, with nothing to look
  // at first: a growing heap. Those take the new slot at once, in a
  // function that saves no registers; the rest go to allocate_looking.
  static constexpr uint16_t kMaxLookGap = 1024;
  [[gnu::noinline]] void* allocate_untouched(size_t size, size_t align, Kind kind, bool zero, unsigned cls) {
    if constexpr (kProcessHeap) {
      const unsigned home = t_thread.slab_plus_one - 1;  // >= kNumSlabs if shared (or none yet)
      const Layout L = layout();
      if (__builtin_expect(home < kNumSlabs && t_thread.look_wait[cls] != 0 &&
                               (cls > kStagedMaxClass || t_thread.staged[cls] == 0) &&
                               !((g_orphan_classes.load(std::memory_order_relaxed) >> cls) & 1) &&
                               pending_where_.load(std::memory_order_relaxed) / kNumSlabs != cls &&
                               L.head<FreeListHead>(cls, home).remote.load(std::memory_order_relaxed) == 0,
                           1)) {
        // As many new slots as the next look is away, up to a run: looks
        // come as often, counted in slots, as when slots came one by one.
        const uint32_t want = std::min<uint32_t>(run_slots(cls), t_thread.look_wait[cls]);
        t_thread.look_wait[cls] = uint16_t(t_thread.look_wait[cls] - want);
        return take_new(L, home, false, size, align, kind, zero, cls, want);
      }
    }
    return allocate_looking(size, align, kind, zero, cls);
  }

  [[gnu::noinline]] void* allocate_looking(size_t size, size_t align, Kind kind, bool zero, unsigned cls) {
    const Layout L = layout();
    const unsigned home = thread_slab();
    const bool shared = thread_shares_slab();
    bool fresh;
    // A used free slot of `slab`, if it has one, handed out.
    const auto take_used = [&](unsigned slab) -> void* {
      char* slot = pop<false>(L, cls, slab, fresh);
      if (!slot) return nullptr;
      count_allocation(L, home, cls, slab, size, false, shared);
      return finish(slot, cls, size, align, kind, zero, false);
    };
    if constexpr (kProcessHeap) {
      if ((g_orphan_classes.load(std::memory_order_relaxed) >> cls) & 1) adopt_orphans(cls);
    }
    if (take_remote(L, cls, home)) {
      if (void* p = take_used(home)) return p;
    }
    if (shared) {
      if (void* p = take_used(home)) return p;
    } else if constexpr (kProcessHeap) {
      if (cls <= kStagedMaxClass && t_thread.staged[cls] != 0) {
        unstage(L, t_thread, cls);
        if (void* p = take_used(home)) return p;
      }
    }
    bool looked = false;
    if (t_thread.look_wait[cls] == 0) {
      looked = true;
      const unsigned start = t_thread.look_from[cls];
      for (unsigned k = 0; k < kNumSlabs; ++k) {
        const unsigned slab = (start + k) % kNumSlabs;
        const uint64_t word = L.head<FreeListHead>(cls, slab).word.load(std::memory_order_relaxed);
        if (slab == home || (!(uint32_t(word) & kTouched) && !take_remote(L, cls, slab))) continue;
        if (void* p = take_used(slab)) {
          t_thread.look_gap[cls] = 0;
          t_thread.look_from[cls] = uint8_t(slab);
          if constexpr (Policy::kStats) stats::add(stats::row(L, home, shared).events[cls].failovers, 1, shared);
          return p;
        }
      }
      const uint16_t gap = t_thread.look_gap[cls];
      t_thread.look_gap[cls] = gap == 0 ? 1 : gap < kMaxLookGap ? uint16_t(2 * gap) : kMaxLookGap;
      t_thread.look_wait[cls] = t_thread.look_gap[cls];
    } else {
      --t_thread.look_wait[cls];
    }
    // Free slots of the class that a trim cut short holds off their list go
    // back before new memory is taken in the slab they came from, or after a
    // look found nothing elsewhere.
    if (const unsigned where = pending_where_.load(std::memory_order_relaxed);
        __builtin_expect(where / kNumSlabs == cls, 0) && (looked || where % kNumSlabs == home)) {
      put_back_pending(L);
      if (void* p = take_used(where % kNumSlabs)) return p;
    }
    return take_new(L, home, shared, size, align, kind, zero, cls, 1);
  }

  // The next slot of the thread's own slab, most likely never used, and (if
  // want > 1, only from the thread that owns the slab) the never-used ones
  // after it, up to want in all, as the thread's run; if the slab is full,
  // the fail-over. Every call out of it is a tail call.
  [[gnu::always_inline]] void* take_new(const Layout& L, unsigned home, bool shared, size_t size, size_t align,
                                        Kind kind, bool zero, unsigned cls, uint32_t want) {
    bool fresh;
    uint32_t n;
    char* const slot = pop(L, cls, home, want, fresh, n);
    if (__builtin_expect(slot == nullptr, 0)) return fail_over(L, size, align, kind, zero, cls);
    count_allocation(L, home, cls, home, size, fresh ? n : 0, shared);  // the run counts as touched now
    if constexpr (kProcessHeap) {
      if (n > 1) {
        t_thread.run_next[cls] = slot + (size_t{1} << cls);
        t_thread.run_end[cls] = slot + (size_t{n} << cls);
      }
      if constexpr (Policy::kTrimSlabs) {
        if (fresh && (t_thread.fresh_bytes += size_t{n} << cls) >= kAutoTrimBytes)
          return trim_then_finish(L, slot, cls, size, align, kind, zero);
      }
    }
    return finish(slot, cls, size, align, kind, zero, fresh);
  }

  [[gnu::noinline, gnu::cold]] void* trim_then_finish(const Layout L, char* slot, unsigned cls, size_t size,
                                                      size_t align, Kind kind, bool zero) {
    t_thread.fresh_bytes = 0;
    trim_slabs(L, kAutoTrimSlots);
    return finish(slot, cls, size, align, kind, zero, true);
  }

  [[gnu::noinline, gnu::cold]] void* allocate_slow(size_t size, size_t align, Kind kind, bool zero,
                                                   unsigned cls) {
    Layout L = layout();
    if (L.max_class() < kMinClass) L = initialise();
    if (L.max_class() < kMinClass) {  // no address space: and no slab for the thread yet
      errno = ENOMEM;
      return nullptr;
    }
    const unsigned home = thread_slab();
    if (is_kept_class(cls)) {
      Where w{};
      if (char* slot = swap_kept(L, cls, nullptr, w)) {
        count_allocation(L, home, cls, w.slab, size, false, thread_shares_slab());
        void* p = Policy::on_alloc(slot, cls, size, align, kind, false, zero);
        if (zero) std::memset(p, 0, size);  // not discarded: not zero
        return p;
      }
    }
    // (Kept classes too: their new slots count towards the automatic trim.)
    if (cls <= L.max_class()) return allocate_untouched(size, align, kind, zero, cls);
    return fail_over(L, size, align, kind, zero, cls);
  }

  [[gnu::noinline, gnu::cold]] void* fail_over(const Layout L, size_t size, size_t align, Kind kind, bool zero,
                                               unsigned cls) {
    const unsigned home = thread_slab();
    for (unsigned c = cls; c <= L.max_class(); ++c) {
      for (unsigned k = 0; k < kNumSlabs; ++k) {
        bool fresh;
        const unsigned slab = (home + k) % kNumSlabs;
        take_remote(L, c, slab);
        if (char* slot = pop(L, c, slab, fresh)) {
          count_allocation(L, home, c, slab, size, fresh, thread_shares_slab());
          if constexpr (Policy::kStats) {
            if (c != cls)
              stats::add(stats::row(L, home, thread_shares_slab()).events[cls].overflows, 1, thread_shares_slab());
            else if (k != 0)
              stats::add(stats::row(L, home, thread_shares_slab()).events[cls].failovers, 1, thread_shares_slab());
          }
          return finish(slot, c, size, align, kind, zero, fresh);
        }
      }
    }
    // Larger than any slot of a fallback layout: a mapping of its own. (The
    // native layout's largest slot, 8 GiB, stays the limit there.)
    if (cls > L.max_class() && L.span_shift < kMaxSpanShift) {
      void* p = huge::allocate(size, align);
      if (p) Policy::on_huge_alloc(p, size, zero);
      return p;
    }
    errno = ENOMEM;
    return nullptr;
  }

  // Not in the reservation: one of the huge blocks, or not ours at all.
  [[gnu::noinline, gnu::cold]] static void free_outside(void* p, Kind kind) {
    if (huge::Entry* e = huge::find(p)) {
      Policy::on_huge_free(p);
      return huge::release(*e);
    }
    Policy::free_foreign(p, kind);
  }

  // A block we did not allocate (the dynamic loader's, or libc's from before we
  // were loaded): copy what we can safely read, and never free it.
  [[gnu::noinline, gnu::cold]] void* reallocate_foreign(void* p, size_t size) {
    if (const huge::Entry* e = huge::find(p)) {  // always moved: rare, and exact for Valgrind
      if (size == 0) {
        free_outside(p, Kind::Malloc);
        return nullptr;
      }
      void* q = allocate(size, 1, Kind::Malloc);
      if (q) {
        const size_t old = huge::size_of(*e);
        std::memcpy(q, p, old < size ? old : size);
        free_outside(p, Kind::Malloc);
      }
      return q;
    }
    if (size == 0) return nullptr;
    void* q = allocate(size, 1, Kind::Malloc);
    if (q) std::memcpy(q, p, pal::mapped_prefix(p, size));
    return q;
  }

  std::atomic<uintptr_t> layout_{Layout::kUninitialised};
  // Per kept class: a free slot not discarded, on no list.
  std::array<std::atomic<char*>, kKeptMaxClass - kKeptClass + 1> kept_{};
  std::atomic<uint32_t> trims_{0};     // trim_slab and adopt_orphans calls under way
  std::atomic<bool> forking_{false};   // a fork() is waiting for them
  std::atomic<bool> trim_held_{false};  // a thread is trimming slabs
  uint64_t* trim_marks_ = nullptr;      // trim_slab's bitmap: reserved once, kept
  PendingTrim pending_{};
  std::atomic<unsigned> pending_where_{~0u};  // pending_'s class * kNumSlabs + slab while it has slots
  unsigned preferred_span_shift_;
};

}  // namespace smalloc
