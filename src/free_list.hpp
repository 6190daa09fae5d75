// The free lists of one (class, slab): lock-free, one compare-and-swap per
// push or pop.
//
// A free list's head is a 64-bit word: the low half is a link (a slot number
// plus the "touched" bit), the high half counts pushes so that a pop whose
// view is stale can never succeed (ABA). A free slot's first 4 bytes hold the
// link to the next one. A link without the touched bit names a slot that was
// never handed out: its successor is simply the next slot number, so a new
// slab needs no initialisation and its memory is known to be zero. The link
// equal to the slab's slot count (untouched) means the slab is full.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "layout.hpp"

namespace smalloc {

struct alignas(kHeadBytes) FreeListHead {
  std::atomic<uint64_t> word;
  // The push count when this list was last trimmed: nothing freed since, no
  // pages to give back (written by trimmers only, read by them only).
  std::atomic<uint32_t> trimmed_at;
  // The same for malloc_trim's trims, which leave every free slot larger than
  // a page with one page: the next has nothing more to give back either.
  std::atomic<uint32_t> trimmed_thoroughly_at;
  // In a layout committed on demand: how many bytes from the start of the
  // slab's span are usable (commit.hpp). Grows as new slots are taken; a
  // trim that gives back the slab's top lowers it.
  std::atomic<uint64_t> committed;
  // How many slots at the front of `word` the slab's owner put there itself
  // (Heap::unstage), as far as it knows: slots whose lines it wrote, which
  // it takes back in batches (Heap::take_used_own). Other threads' frees
  // are a chain of cache misses to walk: taken 32 at a time, producer/
  // consumer pairs ran 1.5x as long. A hint, never trusted for correctness:
  // the owner adds to it, and it goes to 0 when other threads' frees are
  // put in front (take_remote) or none of the slots is left; pops by other
  // threads, trims and a thread's exit leave it too high, which costs at
  // most a walk of kAdoptSlots slots.
  std::atomic<uint32_t> owner_run;
  // What other threads free into the slab: a second list, on lines of its
  // own, so that their pushes and the owner's pops do not fight over one
  // line for every block (prodcons: 65% of malloc's time was that line and
  // the slot's). The low half links to the first slot (0: empty), the high
  // half is the last one's number: whoever takes the list, all of it with
  // one exchange (FreeLists::take_remote), puts it in front of `word` with one
  // push. Push-only and take-all, it needs no count against ABA.
  alignas(128) std::atomic<uint64_t> remote;
};
inline constexpr uint64_t kCountOne = uint64_t{1} << 32;
inline constexpr uint64_t kCountMask = ~uint64_t{0} << 32;

// Policy supplies read_link and write_link (the debug build's tell Valgrind).
template <class Policy>
struct FreeLists {
  using Where = Layout::Where;

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
    L.head<FreeListHead>(cls, slab).owner_run.store(0, std::memory_order_relaxed);  // others' frees in front
    return true;
  }

  // Never-used slots [first, first + count) of (cls, slab), taken off its
  // head, become never-used again if nothing was taken after them: the
  // head's first untouched slot moves back to `first`. (Not if they end the
  // slab: that link also means "full", which is what a trim leaves on the
  // head while it holds the list.) False if they could not go back.
  static bool untake(const Layout& L, unsigned cls, unsigned slab, uint32_t first, uint32_t count) {
    auto& head = L.head<FreeListHead>(cls, slab).word;
    uint64_t old = head.load(std::memory_order_relaxed);
    while (uint32_t(old) == first + count && first + count != L.slots_per_slab(cls))
      if (head.compare_exchange_weak(old, (old & kCountMask) | first, std::memory_order_release,
                                     std::memory_order_relaxed))
        return true;
    return false;
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
  // Up to `want` used free slots of (cls, slab) off the front of its list
  // with one CAS: the first, linked to the rest as on the list; n of them.
  // nullptr if its next free slot was never used (or it has none). Only
  // while each next slot lies at most kDenseBytes above the one before: the
  // walk reads each link before the CAS, one load after another, which
  // costs a miss a slot where they are spread out (a Python heap churned
  // for a few rounds spent 40% of its time in it) and next to nothing where
  // they follow each other in memory. The walk may read slots other threads
  // are taking and writing meanwhile, as pop does; then the CAS fails (the
  // head is as it was only if no slot left or joined the list). Garbage read
  // so must not lead outside the slab: a link past the slab's slots ends it.
  static constexpr size_t kDenseBytes = 256;
  static char* pop_used(const Layout& L, unsigned cls, unsigned slab, uint32_t want, uint32_t& n) {
    auto& head = L.head<FreeListHead>(cls, slab).word;
    const uint32_t slots = L.slots_per_slab(cls);
    const uint32_t max_step = uint32_t(std::max<size_t>(1, kDenseBytes / class_bytes(cls)));
    uint64_t old = head.load(std::memory_order_acquire);
    for (;;) {
      uint32_t link = uint32_t(old);
      if (!(link & kTouched)) return nullptr;
      char* const first = L.slot(cls, slab, link & kSlotMask);
      n = 0;
      uint32_t index;
      do {
        index = link & kSlotMask;
        link = Policy::read_link(L.slot(cls, slab, index));
        ++n;
      } while (n < want && (link & kTouched) && (link & kSlotMask) < slots &&
               (link & kSlotMask) - index - 1 < max_step);
      if (head.compare_exchange_weak(old, (old & kCountMask) | link, std::memory_order_acquire,
                                     std::memory_order_acquire)) {
        // As pop does: the next pop's miss, taken while the caller works.
        if (link & kTouched) __builtin_prefetch(L.slot(cls, slab, link & kSlotMask), 1);
        return first;
      }
    }
  }

  // One slot; a used one only if kTakeUntouched is false.
  template <bool kTakeUntouched = true>
  [[gnu::always_inline]] static char* pop(const Layout& L, unsigned cls, unsigned slab, bool& fresh) {
    uint32_t n;
    return pop(L, cls, slab, kTakeUntouched ? 1 : 0, fresh, n);
  }
};

}  // namespace smalloc
