// The lock-free slab heap: one reservation, one free list per (class, slab),
// one compare-and-swap per malloc or free.
//
// The lists themselves: free_list.hpp; giving pages back: trim.hpp.
//
// Each thread allocates from its own slab (see thread_slab()); frees go back to
// the slab the pointer came from, whichever thread frees (another thread's
// free onto a second list, FreeListHead::remote). When a slab is full
// the allocation fails over to the other slabs of the class, then to larger
// classes, then (in a fallback layout, for a large block) to a mapping of its
// own, and only then returns NULL with errno = ENOMEM.
//
// Policy (release_policy.hpp, debug/) supplies compile-time hooks around the
// hot paths; the release policy's are empty and compile away.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>

#include "commit.hpp"
#include "free_list.hpp"
#include "huge.hpp"
#include "layout.hpp"
#include "pal.hpp"
#include "stats.hpp"
#include "trim.hpp"

namespace smalloc {

enum class Kind : uint8_t { Malloc, New, NewArray };

// Slots this large are discarded (given back to the OS) when freed; they are
// then zero but for the link, which calloc exploits.
inline constexpr unsigned kDiscardClass = 44;  // 4 MiB
// Except one per class up to kKeptMaxClass: the last freed slot of each is
// kept as it is (and the one kept before it discarded instead), so that a
// buffer of that size freed and allocated again in a loop does not fault all
// its pages in every time (a 6 MiB buffer was 33x slower than glibc, whose
// heap keeps freed blocks of up to 32 MiB). What that keeps resident is
// bounded by one slot per class: 28 MiB.
inline constexpr unsigned kKeptClass = kDiscardClass;
inline constexpr unsigned kKeptMaxClass = 48;  // 16 MiB
inline constexpr bool is_kept_class(unsigned cls) { return cls - kKeptClass <= kKeptMaxClass - kKeptClass; }
// Blocks that realloc moves past this size jump straight to kGrowerClass so
// that further growth stays in place; only touched pages cost memory. Just
// below kDiscardClass, so that a freed grower's pages are reused, not
// faulted in again (a buffer grown and dropped in a loop: calloc bench 2x).
inline constexpr size_t kGrowerMin = 64 * 1024;
inline constexpr unsigned kGrowerClass = kDiscardClass - 2;  // 2 MiB
// realloc moves a block from a slot this large (if the policy allows) by
// moving its pages to the new slot (mremap), not by copying them: no copy,
// and no fault on the new slot's pages. Only from slots whose pages free()
// gives back anyway: a grower or kept slot emptied so would fault its pages
// in again when next used (realloc-step 1.5x slower). (From 8 MiB on, a
// slot emptied so and then kept is empty: that costs the next user of its
// class the faults the move saved.)
inline constexpr unsigned kMovePagesClass = kKeptClass + 2;  // 8 MiB

// In a fallback layout, blocks from this size on that find no slot get a
// mapping of their own (Heap::fail_over).
inline constexpr size_t kMappedFallbackMin = 64 << 10;

inline constexpr unsigned kStagedMaxClass = 28;  // 16 KiB: 64 slots staged at least, one chain per 64 frees or fewer

// How many never-used slots a thread takes off its slab's head at once: a
// page's worth, at most 64 (and one from 4 KiB slots on). One CAS and one
// pass through allocate_untouched for them all: a growing heap took some 110
// instructions and a CAS per new slot.
inline constexpr uint32_t run_slots(unsigned cls) {
  return std::max<uint32_t>(1, std::min<uint32_t>(64, uint32_t(4096 / class_bytes(cls))));
}
// The largest class that has runs (of two slots or more): the thread state
// keeps run bounds for those alone.
inline constexpr unsigned kRunMaxClass = 22;  // 2 KiB
static_assert(run_slots(kRunMaxClass) > 1 && run_slots(kRunMaxClass + 1) == 1);

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
  // counts.listed[cls]. None for the classes discarded on free
  // (kOwnListLimit 0): the thread state is static TLS, which a dlopen of
  // the library must find room for (README, "Limits").
  char* own_head[kDiscardClass];
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
  char* run_next[kRunMaxClass + 1];
  char* run_end[kRunMaxClass + 1];
  // Bytes of never-used slots the thread has taken since it last trimmed:
  // see kAutoTrimBytes (trim.hpp).
  uint64_t fresh_bytes;
  // What the thread does to its own slab, counted here and published in its
  // owner row (stats.hpp).
  stats::OwnSlabCounters counts;
};
extern __thread ThreadState t_thread __attribute__((tls_model("initial-exec")));
// Static TLS: a Python process that dlopens the library with the README's
// optional_static_tls=4096 had room for some 5.2 KiB of it in all.
static_assert(sizeof(ThreadState) <= 4400, "the thread state outgrew the room dlopen has for it (README, Limits)");
inline constexpr uint64_t kOwnListBytes = 1 << 20;
// How many used free slots a thread takes off its own slab's shared list at
// once, when its private list is empty, and of which sizes: a batch of
// slots it staged (in address order) then lies on 32 lines at most, 8 if
// they are 16-byte slots side by side (Heap::take_used_own).
inline constexpr uint32_t kAdoptSlots = 32;
inline constexpr size_t kAdoptMaxBytes = 64;
// How many slots a class's list may hold: none for the classes discarded on free.
inline constexpr auto kOwnListLimit = [] {
  std::array<uint32_t, kNumClasses> limit{};
  for (unsigned cls = kMinClass; cls < kDiscardClass; ++cls)
    limit[cls] = uint32_t(std::max<uint64_t>(1, kOwnListBytes / class_bytes(cls)));
  return limit;
}();

unsigned assign_thread_slab();  // cold: takes a slab no live thread has, if any

// In a fork child, the free slots that threads which did not follow it held
// to themselves, by class: see heap.cpp. orphan_bit(c) is set while some may
// be of class c (or of the other class of its doubling).
extern std::atomic<uint64_t> g_orphan_classes;
inline constexpr uint64_t orphan_bit(unsigned cls) { return uint64_t{1} << (cls >> 1); }
void adopt_orphans(unsigned cls);  // cold: hands them (both classes of cls's doubling) to the shared lists
void adopt_all_orphans();

// Bit s is set once a thread has taken slab s (for itself or to share) or a
// fail-over has taken a slot of it: no other slab can hold a free slot, so
// a look at the other slabs reads only these heads. (Reading all 64 read
// the 4 pages of a class's heads, a page fault each, in every process that
// had only ever had one thread.)
extern std::atomic<uint64_t> g_used_slabs;
inline void mark_slab_used(unsigned slab) {
  const uint64_t bit = uint64_t{1} << slab;
  if (!(g_used_slabs.load(std::memory_order_relaxed) & bit)) g_used_slabs.fetch_or(bit, std::memory_order_relaxed);
}

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

// kProcessHeap: the process's one heap, the only one that may keep state in
// t_thread (which is per thread, not per heap); test heaps keep none.
template <class Policy, bool kProcessHeap = false>
class Heap {
 public:
  using Where = Layout::Where;
  using Lists = FreeLists<Policy>;

  // span_shift: the largest layout to try; tests pass a small one, and
  // choose how it is committed (commit.hpp).
  constexpr explicit Heap(unsigned span_shift = kMaxSpanShift, commit::Mode commit = commit::Mode::Auto)
      : preferred_span_shift_(span_shift), commit_mode_(commit) {}

  // ---- hot paths -----------------------------------------------------------
  // Written so that everything that calls out (first use, shared slabs, big
  // slots, exhaustion) is a tail call: the common path saves no registers.
  [[gnu::always_inline]] void* allocate(size_t size, size_t align, Kind kind, bool zero = false) {
    return allocate_in(class_for(size, align), size, align, kind, zero);
  }

  // The class of slot that serves `size` bytes at `align` (the policy's
  // slot_bytes may add room around the block).
  [[gnu::always_inline]] static unsigned class_for(size_t size, size_t align) {
    return size_class(Policy::slot_bytes(size, align), align);
  }

  [[gnu::always_inline]] void* allocate_in(unsigned cls, size_t size, size_t align, Kind kind, bool zero) {
    if (void* p = allocate_listed(cls, size, align, kind, zero)) return p;
    return allocate_rest(cls, size, align, kind, zero);
  }
  // Out of line: inlined, the rest made malloc's fast path save five
  // registers (GCC 12 no longer moved the pushes past it).
  [[gnu::noinline]] void* allocate_rest(unsigned cls, size_t size, size_t align, Kind kind, bool zero) {
    return allocate_unlisted(cls, size, align, kind, zero);
  }

  // allocate() in two steps: a slot of the thread's private list (or
  // nullptr), in a path that calls nothing, then the rest. For a caller that
  // must test the result (operator new): with both inlined, its fast path
  // saved and restored two registers.
  [[gnu::always_inline]] static void* allocate_listed(unsigned cls, size_t size, size_t align, Kind kind, bool zero) {
    if constexpr (kProcessHeap) {
      // Only slots of a class the layout has, of the thread's own slab, are
      // ever on its list: nothing else to check (cls may be up to 128).
      if (char* slot = cls < kDiscardClass ? t_thread.own_head[cls] : nullptr; slot != nullptr) {
        // (Not prefetching the next one, as FreeLists::pop does: its line is
        // most often this thread's and cached, and binary-trees ran 5% slower.)
        std::memcpy(&t_thread.own_head[cls], slot, sizeof(char*));
        --t_thread.counts.listed[cls];
        // Counted by the list's length alone (OwnSlabCounters): one add less.
        if constexpr (Policy::kStats) stats::add(t_thread.counts.bytes_requested[cls], size, false);
        return finish(slot, cls, size, align, kind, zero, false);
      }
    }
    return nullptr;
  }
  [[gnu::always_inline]] void* allocate_unlisted(unsigned cls, size_t size, size_t align, Kind kind, bool zero) {
    const Layout L = layout();
    const unsigned slab = t_thread.slab_plus_one - 1;  // >= kNumSlabs if not assigned yet, or shared
    if (__builtin_expect(cls <= L.max_class() && slab < kNumSlabs && !is_kept_class(cls), 1)) {
      bool fresh;
      if (char* slot = take_used_own(L, cls, slab, fresh); __builtin_expect(slot != nullptr, 1)) {
        count_allocation(L, slab, cls, slab, size, false, false);
        return finish(slot, cls, size, align, kind, zero, false);
      }
      if constexpr (kProcessHeap) {
        // No used slot left: the run of new ones taken before (counted as
        // touched then).
        if (cls <= kRunMaxClass) {
          if (char* slot = t_thread.run_next[cls]; slot != t_thread.run_end[cls]) {
            t_thread.run_next[cls] = slot + class_bytes(cls);
            count_own_allocation(cls, size);
            return finish(slot, cls, size, align, kind, zero, true);
          }
        }
      }
      return allocate_untouched(size, align, kind, zero, cls);
    }
    return allocate_slow(size, align, kind, zero, cls);
  }

  // A used free slot of the thread's own slab (which it owns alone), off the
  // slab's shared list. A thread whose frees outgrew its private list (a
  // tree of 2^19 16-byte nodes built and dropped in a loop) allocated most
  // of them again from there, a CAS each: binary-trees ran 1.8x as long as
  // with mimalloc (1.05x with no bound on the private list). So where the
  // front of the list is slots the thread staged itself (owner_run), and
  // small ones, up to kAdoptSlots are taken with one CAS and the rest go
  // onto the private list (adopt). Small: taking a batch walks its links
  // before the CAS, one miss after another where slots are cold and a line
  // each (batch-random ran 1.5x as long so), where a single pop's miss is
  // overlapped with the caller's work.
  [[gnu::always_inline]] char* take_used_own(const Layout& L, unsigned cls, unsigned slab, bool& fresh) {
    if constexpr (kProcessHeap && Policy::kAdoptInBatches) {
      if (class_bytes(cls) <= kAdoptMaxBytes &&
          L.head<FreeListHead>(cls, slab).owner_run.load(std::memory_order_relaxed) != 0) {
        fresh = false;
        return take_batch_own(cls, slab);
      }
    }
    return Lists::template pop<false>(L, cls, slab, fresh);
  }
  // Out of line, and loading the layout again: inlined, or passed the
  // layout, it made every call of allocate_rest do more (batch-random: 13
  // to 24 instructions more a call).
  [[gnu::noinline]] char* take_batch_own(unsigned cls, unsigned slab) {
    const Layout L = layout();
    auto& run = L.head<FreeListHead>(cls, slab).owner_run;
    const uint32_t own = run.load(std::memory_order_relaxed);
    uint32_t n;
    char* const slot = Lists::pop_used(L, cls, slab, std::min({kAdoptSlots, kOwnListLimit[cls], own}), n);
    if (!slot) {
      // None of them is left: otherwise every new slot of the class came
      // here first (new-slot mallocs 1.5x as long, found in review).
      run.store(0, std::memory_order_relaxed);
      return slot;
    }
    run.store(own - std::min(own, n), std::memory_order_relaxed);
    if (n > 1) adopt(L, cls, slab, slot, n - 1);
    return slot;
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
    // A block shrunk into a smaller class moves, so that its slot, and the
    // pages it touched, serve others again: in place, 500 buffers grown to
    // 1 MiB and shrunk to 1 KiB held 500 MiB (glibc, jemalloc, mimalloc and
    // tcmalloc 4-10 MiB), 200 blocks of 8 MiB shrunk to 1 byte 1.6 GB.
    // A block has its slot by needing more than two thirds of it (or by an
    // alignment, which realloc does not keep anyway), so growth never moves;
    // but for a grower, which took its slot at any size past kGrowerMin and
    // may have grown since, only a shrink to kGrowerMin or less is sure to be
    // one. A slot that free() gives back moves from a quarter of it down.
    const bool shrunk = w.cls >= kDiscardClass   ? cls + 4 <= w.cls
                        : w.cls == kGrowerClass ? size <= kGrowerMin
                                                : cls < w.cls;
    if (!shrunk && Policy::resize_in_place(L, w, p, size)) return p;
    if (!shrunk && size > kGrowerMin && cls < kGrowerClass) cls = kGrowerClass;
    void* q = allocate_in(cls, size, 1, Kind::Malloc, false);
    if (shrunk) {
      // A shrink never fails, and moves only into a smaller slot (its class
      // full, the allocation failed over to larger ones), or, in a fallback
      // layout whose slots that would do are all taken, a mapping.
      Where to;
      if (q && L.locate(q, to) && to.cls >= w.cls) {
        deallocate(q, Kind::Malloc);
        q = nullptr;
      }
      if (!q && Policy::resize_in_place(L, w, p, size)) return p;
    }
    if (!q) return nullptr;
    size_t old = Policy::usable_size(L, w, p);
    // (Not committed on demand: under strict overcommit the kernel may free
    // the destination and then refuse the move's charge, leaving a hole.)
    if (!(Policy::kMovePages && !shrunk && !L.on_demand && w.cls >= kMovePagesClass && pal::move_pages(p, q, old)))
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
    const bool on_demand = word == Layout::kUninitialised && commit::on_demand(commit_mode_);
    for (unsigned s = preferred_span_shift_; word == Layout::kUninitialised && s >= kMinSpanShift; --s) {
      void* base = pal::reserve_aligned(Layout::bytes(s), size_t{1} << s, !on_demand);
      if (!base) continue;  // not that much address space: try a smaller layout
      if (on_demand && !commit::commit_fixed(reinterpret_cast<uintptr_t>(base),
                                             reinterpret_cast<uintptr_t>(base) + stats::kCountersArea * Layout::area_bytes(s),
                                             Policy::kStats ? sizeof(stats::Area) : 0)) {
        pal::unmap(base, Layout::bytes(s));
        break;  // no memory for the heads: every allocation fails (ENOMEM)
      }
      // Racing threads each reserve; the first to publish wins, the rest unmap.
      Policy::on_reserve(base, Layout::bytes(s), Layout::area_bytes(s));
      if (!layout_.compare_exchange_strong(word, Layout::encode(reinterpret_cast<uintptr_t>(base), s, on_demand),
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
      if (L.max_class() >= kMinClass) released = trim_slabs(L, UINT64_MAX, true);
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
    if (cls >= kDiscardClass) return;
    char* slot = std::atomic_ref<char*>(t.own_head[cls]).exchange(nullptr, std::memory_order_acquire);
    if (slot == nullptr) return;
    // Counted, not followed to its end: a double free may have made it a loop.
    const uint32_t length = t.counts.listed[cls];
    for (uint32_t left = length; slot != nullptr && left-- > 0;) {
      char* next;
      std::memcpy(&next, slot, sizeof next);
      Where w;
      if (L.locate(slot, w)) Lists::push(L, w, slot);
      slot = next;
    }
    // The list's length first: a reader that sees the slots returned sees
    // them gone from the list (OwnSlabCounters).
    std::atomic_ref<uint32_t>(t.counts.listed[cls]).store(0, std::memory_order_relaxed);
    std::atomic_ref<uint64_t>(t.counts.returned[cls]).store(t.counts.returned[cls] + length, std::memory_order_release);
  }

  // For fork's handlers, and for whatever else takes lists off their records
  // (adopt_orphans).
  Trimmer<Policy>& trimmer() { return trimmer_; }

  // Puts a slot back on its slab's free list.
  [[gnu::always_inline]] void recycle(const Layout& L, const Where& w, char* slot) {
    if (__builtin_expect(w.cls >= kDiscardClass, 0)) return discard_and_push(L, w, slot);
    Lists::push(L, w, slot);
  }
  // The same, or onto the slab's second list if the thread does not own it,
  // as free() does. The debug policy calls it when a slot leaves quarantine:
  // so the debug build runs the second lists too.
  void recycle_freed(const Layout& L, const Where& w, char* slot) {
    if (kProcessHeap && w.slab + 1 == t_thread.slab_plus_one) return recycle(L, w, slot);
    recycle_remote(L, w, slot);
  }

 private:
  // Hands t's run of never-used slots of `cls` back (ThreadState::run_next).
  // If nothing was taken from the slab after it, the head's first untouched
  // slot moves back to the run's start: the slots stay untouched (zero, and
  // uncounted again). Otherwise they go on the list as used slots.
  static void return_run(const Layout& L, ThreadState& t, unsigned cls) {
    if (cls > kRunMaxClass) return;
    // Only the thread whose exchange took the run touches its end: two
    // threads of a fork child adopting the same orphan (adopt_orphans) both
    // come here, and the other's store of null lost the run.
    char* const next = std::atomic_ref<char*>(t.run_next[cls]).exchange(nullptr, std::memory_order_acquire);
    if (next == nullptr) return;
    char* const end = t.run_end[cls];
    t.run_end[cls] = nullptr;
    Where w;
    if (next >= end || size_t(end - next) > size_t{run_slots(cls)} * class_bytes(cls) || !L.locate(next, w)) return;
    const uint32_t first = w.index, count = uint32_t(size_t(end - next) / class_bytes(cls));
    if (Lists::untake(L, cls, w.slab, first, count)) {
      if constexpr (Policy::kStats) stats::add(stats::row(L, 0, true).at(cls, w.slab).fresh, 0 - uint64_t(count), true);
      return;
    }
    for (uint32_t i = first; i + 1 < first + count; ++i) Policy::write_link(L.slot(cls, w.slab, i), kTouched | (i + 1));
    Lists::push_chain(L, cls, w.slab, kTouched | first, L.slot(cls, w.slab, first + count - 1));
  }

  // Onto the thread's private list: the `count` slots that `after`'s link
  // leads to, taken off the slab's shared list with it (take_used_own).
  [[gnu::noinline]] static void adopt(const Layout& L, unsigned cls, unsigned slab, const char* after, uint32_t count) {
    char* const first = L.slot(cls, slab, Policy::read_link(after) & kSlotMask);
    char* slot = first;
    for (uint32_t i = 1; i <= count; ++i) {
      char* const next = i < count ? L.slot(cls, slab, Policy::read_link(slot) & kSlotMask) : t_thread.own_head[cls];
      std::memcpy(slot, &next, sizeof next);
      slot = next;
    }
    // As if freed onto the list (stats.hpp): listed grows after the figure
    // that balances it, frees_not_listed, shrinks.
    if constexpr (Policy::kStats)
      std::atomic_ref<uint64_t>(t_thread.counts.frees_not_listed[cls])
          .store(t_thread.counts.frees_not_listed[cls] - count, std::memory_order_release);
    std::atomic_ref<uint32_t>(t_thread.counts.listed[cls]).store(t_thread.counts.listed[cls] + count,
                                                                 std::memory_order_release);
    t_thread.own_head[cls] = first;
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
    if (lowest == nullptr) return;  // none, or another thread adopting the same orphan has them
    const uint32_t staged = t.staged[cls];
    uint32_t left = staged;
    if (left == 0) return;
    auto* const bits0 = reinterpret_cast<uint64_t*>(L.staged_bits0(cls));
    auto* const bits1 = reinterpret_cast<uint64_t*>(L.staged_bits1(cls));
    const uintptr_t from = uintptr_t(lowest - bits0);  // the lowest level-0 word with a bit
    const unsigned slab = unsigned((from * 64) >> L.slot_bits(cls));
    // The slab's last level-1 word, plus one; committed on demand, the last
    // one committed: the walk stops at the count, and a fork child's count
    // may be too large (an orphan's, copied mid-update).
    uintptr_t end = L.staged_pos(cls, slab + 1, 0) >> 12;
    if (L.on_demand)
      end = std::min(end, (L.staged_pos(cls, slab, L.slots_starting_below(cls, commit::usable(L, cls, slab))) + 4095) >> 12);
    uint32_t first = 0;
    char* last = nullptr;
    for (uintptr_t i1 = from / 64; i1 < end && left != 0; ++i1) {
      for (uint64_t m = bits1[i1]; m != 0 && left != 0; m &= m - 1) {
        const uintptr_t i0 = i1 * 64 + uintptr_t(__builtin_ctzll(m));
        for (uint64_t b = bits0[i0]; b != 0 && left != 0; b &= b - 1, --left) {
          const uint32_t index = uint32_t((i0 * 64 + uintptr_t(__builtin_ctzll(b))) & ((uintptr_t{1} << L.slot_bits(cls)) - 1));
          if (last) Policy::write_link(last, kTouched | index);
          else first = kTouched | index;
          last = L.slot(cls, slab, index);
        }
        bits0[i0] = 0;
      }
      bits1[i1] = 0;
    }
    // After the bits: a fork child's thread that sees the count gone
    // (heap.cpp, holds_staged) sees the bits gone too.
    std::atomic_ref<uint32_t>(t.staged[cls]).store(0, std::memory_order_seq_cst);
    if (last) {
      Lists::push_chain(L, cls, slab, first, last);
      if constexpr (Policy::kAdoptInBatches) {
        auto& run = L.head<FreeListHead>(cls, slab).owner_run;
        run.store(run.load(std::memory_order_relaxed) + (staged - left), std::memory_order_relaxed);
      }
    }
  }

  // Trimmer::trim_slabs, after the calling thread's private lists and those
  // the threads a fork left behind held go back where a trim can see them.
  [[gnu::cold, gnu::noinline]] bool trim_slabs(const Layout& L, uint64_t budget, bool may_wait) {
    if constexpr (kProcessHeap) {
      return_thread_lists(t_thread);
      adopt_all_orphans();
    }
    return trimmer_.trim_slabs(L, budget, may_wait);
  }

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
    const size_t bytes = class_bytes(w.cls);
    // (renew only undoes move_pages, which a layout committed on demand does
    // not use; and a new mapping there could be refused its charge.)
    const bool zero = Policy::kMovePages && !L.on_demand ? pal::renew(slot, bytes) : pal::discard(slot, bytes);
    // Locked pages stay: calloc counts on discarded slots being zero.
    if (!zero && Policy::kDiscardedSlotsStayZero) std::memset(slot, 0, bytes);
    Lists::push(L, w, slot);
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
      if (r.valid) stats::add(stats::area(L).rows[me].at(cls, slab).frees, 1, false);
    }
    if (r.slot) recycle_remote(L, {cls, slab, L.index_of(r.slot, cls)}, r.slot);
  }

  // A slot freed by a thread that does not own its slab.
  [[gnu::always_inline]] void recycle_remote(const Layout& L, const Where& w, char* slot) {
    if (__builtin_expect(w.cls >= kDiscardClass, 0)) return discard_and_push(L, w, slot);
    Lists::push_remote(L, w, slot);
  }

  // A thread that never allocated, or one of more than 64 sharing slabs.
  [[gnu::noinline, gnu::cold]] void free_from_shared_row(const Layout L, unsigned cls, unsigned slab, const Released r) {
    const Where w{cls, slab, r.slot ? L.index_of(r.slot, cls) : 0};
    if constexpr (Policy::kStats) {
      if (r.valid) {
        const unsigned home = thread_slab();  // assigns one to a thread that never allocated
        stats::add(stats::row(L, home, thread_shares_slab()).at(w.cls, w.slab).frees, 1, thread_shares_slab());
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
      stats::SlabCounters& c = stats::row(L, owner, shared).at(cls, slab);
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
  // producer/consumer and server patterns). Looking costs a read of up to 63
  // heads (those of g_used_slabs), so a thread that found nothing looks
  // again only after twice as many new slots as last time (up to
  // kMaxLookGap); finding something resets that, and the next look starts
  // where this one found it. A thread that shares its slab (one of more
  // than 64) comes here for every allocation, and takes a used free slot of
  // its slab first.
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
                               !(g_orphan_classes.load(std::memory_order_relaxed) & orphan_bit(cls)) &&
                               trimmer_.pending_where() / kNumSlabs != cls &&
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
      char* slot = Lists::template pop<false>(L, cls, slab, fresh);
      if (!slot) return nullptr;
      count_allocation(L, home, cls, slab, size, false, shared);
      return finish(slot, cls, size, align, kind, zero, false);
    };
    if constexpr (kProcessHeap) {
      if (g_orphan_classes.load(std::memory_order_relaxed) & orphan_bit(cls)) adopt_orphans(cls);
    }
    // (A thread that shares its slab takes its used slots first in any case.)
    if (Lists::take_remote(L, cls, home) || shared) {
      if (void* p = take_used(home)) return p;
    }
    if constexpr (kProcessHeap) {
      if (!shared && cls <= kStagedMaxClass && t_thread.staged[cls] != 0) {
        unstage(L, t_thread, cls);
        if (void* p = take_used(home)) return p;
      }
    }
    bool looked = false;
    if (t_thread.look_wait[cls] == 0) {
      looked = true;
      const unsigned start = t_thread.look_from[cls];
      const uint64_t used = kProcessHeap ? g_used_slabs.load(std::memory_order_relaxed) : ~uint64_t{0};
      for (unsigned k = 0; k < kNumSlabs; ++k) {
        const unsigned slab = (start + k) % kNumSlabs;
        if (!((used >> slab) & 1)) continue;
        const uint64_t word = L.head<FreeListHead>(cls, slab).word.load(std::memory_order_relaxed);
        if (slab == home || (!(uint32_t(word) & kTouched) && !Lists::take_remote(L, cls, slab))) continue;
        if (void* p = take_used(slab)) {
          t_thread.look_gap[cls] = 0;
          t_thread.look_from[cls] = uint8_t(slab);
          if constexpr (Policy::kStats) stats::add(stats::row(L, home, shared).events(cls).failovers, 1, shared);
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
    if (const unsigned where = trimmer_.pending_where();
        __builtin_expect(where / kNumSlabs == cls, 0) && (looked || where % kNumSlabs == home)) {
      trimmer_.put_back_pending(L);
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
    char* const slot = Lists::pop(L, cls, home, want, fresh, n);
    if (__builtin_expect(slot == nullptr, 0) || (L.on_demand && fresh && !commit_new(L, cls, home, slot, n, true)))
      return fail_over(L, size, align, kind, zero, cls);
    count_allocation(L, home, cls, home, size, fresh ? n : 0, shared);  // the run counts as touched now
    if constexpr (kProcessHeap) {
      if (n > 1 && cls <= kRunMaxClass) {  // (n > 1 only there)
        // A fork child copies this state from a thread that stopped anywhere
        // (return_run, in g_orphans): between these stores it must find no
        // run, not the new run's start and the old one's end. (It found
        // one: a count of 4 billion slots, links written for minutes.)
        std::atomic_ref<char*>(t_thread.run_next[cls]).store(nullptr, std::memory_order_relaxed);
        std::atomic_ref<char*>(t_thread.run_end[cls]).store(slot + n * class_bytes(cls), std::memory_order_release);
        std::atomic_ref<char*>(t_thread.run_next[cls]).store(slot + class_bytes(cls), std::memory_order_release);
      }
      if constexpr (Policy::kTrimSlabs) {
        if (fresh && (t_thread.fresh_bytes += n * class_bytes(cls)) >= kAutoTrimBytes)
          return trim_then_finish(L, slot, cls, size, align, kind, zero);
      }
    }
    return finish(slot, cls, size, align, kind, zero, fresh);
  }

  // The n new slots from `slot` of (cls, slab), just taken off its head, in
  // a layout committed on demand: true if they are usable. If the kernel
  // refuses (out of memory), a trim may give back enough of what is free
  // (`may_trim`: once per allocation, not for each slab of a fail-over).
  // Otherwise they go back where they were if nothing was taken after them,
  // and are lost if something was: address space, not memory.
  [[gnu::noinline, gnu::cold]] bool commit_new(const Layout& L, unsigned cls, unsigned slab, char* slot, uint32_t n,
                                               bool may_trim) {
    const bool staged = cls <= kStagedMaxClass && Layout::has_staged_bits(cls, L.span_shift);
    if (commit::cover(L, cls, slab, slot, n, staged)) return true;
    if constexpr (Policy::kTrimSlabs) {
      // Thorough, and after any trim under way (which allocates nothing, so
      // this never waits for itself): not waiting, malloc returned ENOMEM
      // while another thread's malloc_trim was giving the memory back. And
      // tried again whatever this trim found: that one may have found it.
      if (may_trim) {
        trim_slabs(L, UINT64_MAX, true);
        if (commit::cover(L, cls, slab, slot, n, staged)) return true;
      }
    }
    Lists::untake(L, cls, slab, L.index_of(slot, cls), n);
    return false;
  }

  [[gnu::noinline, gnu::cold]] void* trim_then_finish(const Layout L, char* slot, unsigned cls, size_t size,
                                                      size_t align, Kind kind, bool zero) {
    t_thread.fresh_bytes = 0;
    trim_slabs(L, kAutoTrimSlots, false);
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
    // Once a commit is refused (out of memory), only used free slots: a
    // failing malloc tried one commit in every slab of every larger class
    // (1,794 mprotect calls, 0.7 ms).
    bool refused = false;
    for (unsigned c = cls; c <= L.max_class(); ++c) {
      if (!class_exists(c) || (size_t{1} << class_align_shift(c)) < align) continue;
      for (unsigned k = 0; k < kNumSlabs; ++k) {
        bool fresh;
        const unsigned slab = (home + k) % kNumSlabs;
        Lists::take_remote(L, c, slab);
        char* slot = refused ? Lists::template pop<false>(L, c, slab, fresh) : Lists::pop(L, c, slab, fresh);
        if (slot && L.on_demand && fresh && !commit_new(L, c, slab, slot, 1, false)) {
          refused = true;
          slot = nullptr;
        }
        if (slot) {
          if constexpr (kProcessHeap) mark_slab_used(slab);
          count_allocation(L, home, c, slab, size, fresh, thread_shares_slab());
          if constexpr (Policy::kStats) {
            if (c != cls)
              stats::add(stats::row(L, home, thread_shares_slab()).events(cls).overflows, 1, thread_shares_slab());
            else if (k != 0)
              stats::add(stats::row(L, home, thread_shares_slab()).events(cls).failovers, 1, thread_shares_slab());
          }
          return finish(slot, c, size, align, kind, zero, fresh);
        }
      }
    }
    // Larger than any slot of a fallback layout, or a large block for which
    // every slot that would do is taken: a mapping of its own. A fallback
    // layout has 64 slots of its largest class: under ulimit -v 8 GiB, the
    // 65th 2 MiB block was NULL while any larger one got a mapping. (The
    // native layout's largest slot, 8 GiB, stays the limit there; and small
    // blocks, a page each, would soon fill huge.hpp's table.)
    if (L.span_shift < kMaxSpanShift && (cls > L.max_class() || std::max(size, align) >= kMappedFallbackMin)) {
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
    if (const huge::Entry* e = huge::find(p)) {  // always moved: only in fallback layouts, and exact for Valgrind
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
  Trimmer<Policy> trimmer_;
  unsigned preferred_span_shift_;
  commit::Mode commit_mode_;
};

}  // namespace smalloc
