// Commit on demand, for where the kernel would charge the whole reservation
// (pal::commit_is_charged: strict overcommit, or a data size limit). There
// one process took 10 GiB of a 12 GiB commit limit at its first malloc, and
// the next one the 1.1 GiB left. So the reservation is mapped read-only,
// which nothing charges, and made writable as it is used:
//  - before the layout is published: the free-list heads (about 1 MiB) and,
//    if kept, the counters (8 MiB);
//  - each slab from the start of its span, when a new slot is taken past
//    what the slab has (FreeListHead::committed), with the staged bits of its
//    slots, a little ahead (kMinStep);
//  - a trim's marks, as far as the slab being trimmed needs (trim.hpp).
// Only the taking of new slots checks, against the head's line its pop has
// just written. A trim that gives back the free slots at a slab's top
// uncommits them (shrink); one runs when a commit fails, before malloc
// gives up. Otherwise a slab stays charged up to the most it held, as
// glibc's heap does below its top.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "free_list.hpp"
#include "layout.hpp"
#include "pal.hpp"

namespace smalloc::commit {

// Auto: on demand if the kernel would charge the reservation, or if the
// environment says SMALLOC_COMMIT=on-demand. Tests choose.
enum class Mode : uint8_t { Auto, Upfront, OnDemand };

inline bool on_demand(Mode mode) {
  if (mode != Mode::Auto) return mode == Mode::OnDemand;
  const char* v = getenv("SMALLOC_COMMIT");  // no allocation: safe in the first malloc
  return (v && std::strcmp(v, "on-demand") == 0) || pal::commit_is_charged();
}

// A slab commits past the slot it needs an eighth of what it has, from
// 64 KiB to 8 MiB: what is charged ahead stays small (a doubling charged
// python holding 64 MiB 2.9x glibc's charge), and a slab growing to 1 GiB
// calls mprotect some 170 times, where its pages fault 262,144 times.
inline constexpr uint64_t kMinStep = 64 << 10, kMaxStep = 8 << 20;

inline uint64_t page_up(uint64_t x) { return (x + pal::kPageSize - 1) & ~uint64_t{pal::kPageSize - 1}; }

// The pages that hold the bytes [from, to).
inline bool commit_bytes(uintptr_t from, uintptr_t to) {
  from &= ~uintptr_t{pal::kPageSize - 1};
  return pal::commit(reinterpret_cast<void*>(from), page_up(to) - from);
}

// The heads, and the counters' `counter_bytes` at the start of `area`.
inline bool commit_fixed(uintptr_t base, uintptr_t counters, size_t counter_bytes) {
  return commit_bytes(base, base + size_t{kNumClasses} * kNumSlabs * kHeadBytes) &&
         (counter_bytes == 0 || commit_bytes(counters, counters + counter_bytes));
}

// Bytes of (cls, slab)'s span that are usable: all of it unless on demand.
inline uint64_t usable(const Layout& L, unsigned cls, unsigned slab) {
  return L.on_demand ? L.head<FreeListHead>(cls, slab).committed.load(std::memory_order_acquire)
                     : uint64_t{1} << L.span_shift;
}

// Makes the first `end` bytes of (cls, slab)'s span usable, and the staged
// bits (if `staged`) of the slots that start in them. False if the kernel
// refused (errno: ENOMEM): then at least what was usable still is.
[[gnu::cold, gnu::noinline]] inline bool grow(const Layout& L, unsigned cls, unsigned slab, uint64_t end,
                                               bool staged) {
  auto& committed = L.head<FreeListHead>(cls, slab).committed;
  const uint64_t span = uint64_t{1} << L.span_shift;
  const uintptr_t start = reinterpret_cast<uintptr_t>(L.span_start(cls, slab));
  for (;;) {
    uint64_t have = committed.load(std::memory_order_acquire);
    if (end <= have) return true;
    uint64_t want = std::min(std::max(page_up(end), have + std::clamp(have / 8, kMinStep, kMaxStep)), span);
    if (!commit_bytes(start + have, start + want)) {
      want = page_up(end);  // short of memory: no more than needed
      if (!commit_bytes(start + have, start + want)) return false;
    }
    if (staged) {
      // (The bits of a slot that straddles `have` came with the slots before.)
      const uint32_t lo = L.slots_starting_below(cls, have), hi = L.slots_starting_below(cls, want);
      if (lo < hi) {
        const uintptr_t first = L.staged_pos(cls, slab, lo), last = L.staged_pos(cls, slab, hi - 1);
        if (!commit_bytes(L.staged_bits0(cls) + first / 64 * 8, L.staged_bits0(cls) + (last / 64 + 1) * 8) ||
            !commit_bytes(L.staged_bits1(cls) + first / 4096 * 8, L.staged_bits1(cls) + (last / 4096 + 1) * 8))
          return false;
      }
    }
    // Published only over the figure it grew from: then [0, want) is
    // usable. If the figure changed meanwhile (another grower, or a shrink
    // that may have taken pages back), look again.
    if (committed.compare_exchange_strong(have, want, std::memory_order_release, std::memory_order_acquire))
      return true;
  }
}

// Gives back the pages, and their charge, of (cls, slab)'s span from `from`
// (page-aligned) on: for a trim that made those slots untouched again while it holds
// the slab's list, so that no new slot is taken meanwhile (and any grower
// at work grows for a slot below `from`). The figure goes down before the
// pages go: a grower that read the old one fails its exchange (grow).
inline void shrink(const Layout& L, unsigned cls, unsigned slab, char* from) {
  const uint64_t at = uint64_t(from - L.span_start(cls, slab));
  auto& committed = L.head<FreeListHead>(cls, slab).committed;
  uint64_t have = committed.load(std::memory_order_acquire);
  while (have > at && !committed.compare_exchange_weak(have, at, std::memory_order_acq_rel, std::memory_order_acquire)) {
  }
  if (have > at) pal::decommit(from, have - at);
}

// True if the n slots from `slot` of (cls, slab) are usable, or made so.
inline bool cover(const Layout& L, unsigned cls, unsigned slab, const char* slot, uint32_t n, bool staged) {
  const uint64_t end = L.span_offset(slot) + uint64_t{n} * class_bytes(cls);
  return end <= L.head<FreeListHead>(cls, slab).committed.load(std::memory_order_acquire) ||
         grow(L, cls, slab, end, staged);
}

}  // namespace smalloc::commit
