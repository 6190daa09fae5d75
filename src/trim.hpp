// Giving back the pages of free slots (malloc_trim, and the automatic trim
// of a growing heap), and the fork's wait for the trims under way: the
// heap's cold side.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstring>
#include <ctime>

#include <sched.h>

#include "commit.hpp"
#include "free_list.hpp"
#include "layout.hpp"
#include "pal.hpp"
#include "stats.hpp"

namespace smalloc {

// The automatic trim: a thread that has taken kAutoTrimBytes of never-used
// slots since it last trimmed trims (Heap::take_new), so that a program
// that frees much of one size and then grows in another gives the first
// back before it peaks. It walks only the lists freed into since their last
// trim; that walk is a cache miss per slot, so it stops after
// kAutoTrimSlots (some 15 ms at worst here), largest classes first, where
// each slot walked may give back the most, and the next one goes on where
// it stopped.
inline constexpr uint64_t kAutoTrimBytes = uint64_t{32} << 20;
inline constexpr uint64_t kAutoTrimSlots = uint64_t{1} << 16;

template <class Policy>
class Trimmer {
  using Lists = FreeLists<Policy>;

 public:
  // Every slab that was freed into since it was last trimmed (see
  // trim_slab), walking at most `budget` slots (UINT64_MAX: malloc_trim,
  // thorough). True if pages were given back.
  [[gnu::cold, gnu::noinline]] bool trim_slabs(const Layout& L, uint64_t budget, bool may_wait) {
    // One trimmer at a time: the marks and the pending walk are shared.
    // An automatic trim, or one inside malloc, leaves it to the one at
    // work; malloc_trim waits.
    if (may_wait) hold();
    else if (!try_hold()) return false;
    // One bit per slot of the largest slab, zero-filled on first touch.
    // Committed on demand, as far as the slab being trimmed needs
    // (usable_marks); read-only beyond, as the reservation is (pal::reserve).
    if (!trim_marks_) {
      trim_marks_ = static_cast<uint64_t*>(
          pal::reserve(std::max<size_t>((size_t{1} << L.slot_bits(kMinClass)) / 8, pal::kPageSize), !L.on_demand));
      if (!L.on_demand) marks_usable_ = SIZE_MAX;
    }
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
    let_go();
    return released;
  }

  // The class * kNumSlabs + slab of the list a cut-short walk holds slots
  // of, or ~0u.
  unsigned pending_where() const { return pending_where_.load(std::memory_order_relaxed); }

  // Puts pending_'s slots back on their list (Heap::allocate_looking). Not if
  // a trim is at work: it will finish soon, or stop and leave them to the
  // next one.
  [[gnu::cold, gnu::noinline]] void put_back_pending(const Layout& L) {
    if (!try_hold()) return;
    if (pending_.last && enter_trim()) {  // a fork must not copy the heap halfway through
      return_pending(L);
      leave_trim();
    }
    let_go();
  }

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
      trim_held_.store(0, std::memory_order_relaxed);
    }
    forking_.store(false, std::memory_order_release);
  }
  static constexpr long kForkWaitSeconds = 2;

 private:
  // trim_held_, a lock: 0 free, 1 held, 2 held and a malloc_trim may be
  // asleep waiting for it. Asleep, not spinning on sched_yield: six threads
  // calling malloc_trim in a loop left so little CPU to the rest of the
  // program (a forked child: 4x slower than under glibc).
  bool try_hold() {
    uint32_t unheld = 0;
    return trim_held_.compare_exchange_strong(unheld, 1, std::memory_order_acquire, std::memory_order_relaxed);
  }
  void hold() {
    if (try_hold()) return;
    while (trim_held_.exchange(2, std::memory_order_acquire) != 0) pal::wait_while(trim_held_, 2);
  }
  void let_go() {
    if (trim_held_.exchange(0, std::memory_order_release) == 2) pal::wake_one(trim_held_);
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
    if (!usable_marks(L, cls, slab)) {
      // A walk of this slab cut short keeps its slots marked (pending_):
      // left so, the marks would be taken for the next slabs' slots, and
      // live blocks there given back. Its slots go back to the list.
      if (pending_.last && pending_.cls == cls && pending_.slab == slab) return_pending(L);
      return false;
    }
    PendingTrim walked = pending_.last && pending_.cls == cls && pending_.slab == slab ? pending_ : PendingTrim{};
    Lists::take_remote(L, cls, slab);
    // malloc_trim gives back the pages of each free slot larger than a page.
    const size_t slot_bytes = class_bytes(cls);
    const bool slot_by_slot = thorough && slot_bytes > pal::kPageSize;
    uint64_t old = head.load(std::memory_order_acquire);
    do {
      if (walked.last) continue;  // the walk goes on, news or not
      if (!(uint32_t(old) & kTouched)) return false;  // no used slot is free
      if (uint32_t(old >> 32) == (slot_by_slot ? list.trimmed_thoroughly_at : list.trimmed_at).load(std::memory_order_relaxed))
        return false;  // no news
    } while (!head.compare_exchange_weak(old, ((old & kCountMask) + kCountOne) | full, std::memory_order_acq_rel,
                                         std::memory_order_acquire));
    const uint32_t taken_at = uint32_t(old >> 32) + 1;  // the push count while the list is off its head
    const auto marked = [marks](uint32_t i) { return (marks[i / 64] >> (i % 64)) & 1; };
    // fn(index) for every marked slot below `end`, highest first. (Words
    // below `end` only: the bitmap ends where a full slab of the smallest
    // class ends.)
    const auto each_marked_below = [marks](uint32_t end, auto fn) {
      for (uint32_t word = (end + 63) / 64; word-- > 0;)
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
    bool all_given = true;  // false if the kernel kept pages it was asked for (locked)
    while (link & kTouched) {
      const uint32_t index = link & kSlotMask;
      // (A slot past the marks committed, handed out since usable_marks
      // looked: the walk stops, and the list goes back as it was.)
      if (index >= full || (size_t(index) / 64 + 1) * sizeof(uint64_t) > marks_usable_ || marked(index)) {
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
      // From a slot that starts a page (every slot of a class aligned to
      // 4 KiB or more; one in 4096 >> class_align_shift below), or from the
      // slab's first page: the slab starts kSlabSkew into its span, and
      // what precedes its first slot is no slot's.
      while (keep > 0 && keep < top && (reinterpret_cast<uintptr_t>(L.slot(cls, slab, keep)) & (pal::kPageSize - 1)) != 0)
        ++keep;
      char* const from = reinterpret_cast<char*>(reinterpret_cast<uintptr_t>(L.slot(cls, slab, keep)) & ~(pal::kPageSize - 1));
      if (whole && keep < top && !pal::discard(from, size_t(L.slot(cls, slab, top) - from))) {
        keep = top;  // the kernel kept the pages: so do we
        all_given = false;
      }
      if (whole && keep < top) {
        if (L.on_demand) commit::shrink(L, cls, slab, from);
        first = keep;
        each_marked_below(keep, [&](uint32_t index) {
          Policy::write_link(L.slot(cls, slab, index), first);
          first = kTouched | index;
        });
        // Those slots will be counted as touched again when next handed out.
        if constexpr (Policy::kStats) stats::add(stats::row(L, 0, true).at(cls, slab).fresh, 0 - uint64_t(top - keep), true);
        released = true;
      } else if (walked.last) {  // the part walked before goes back in front
        Policy::write_link(walked.last, first);
        first = walked.first;
      }
      if (slot_by_slot && whole)
        each_marked_below(keep, [&](uint32_t index) {
          // The whole pages in the slot after the one of its link.
          const uintptr_t slot = reinterpret_cast<uintptr_t>(L.slot(cls, slab, index));
          const uintptr_t from = (slot + pal::kPageSize) & ~(pal::kPageSize - 1);
          const uintptr_t to = (slot + slot_bytes) & ~(pal::kPageSize - 1);
          if (to <= from) return;
          const bool given = pal::discard(reinterpret_cast<char*>(from), to - from);
          released |= given;
          all_given &= given;
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
          // No news only if it was all walked and nothing freed meanwhile
          // (those slots, put in front, were not), and malloc_trim's only if
          // the kernel took every page it was asked for (locked ones, later
          // unlocked, go on the next call).
          if (whole && uint32_t(now >> 32) == taken_at) {
            list.trimmed_at.store(taken_at + 1, std::memory_order_relaxed);
            if (thorough && all_given) list.trimmed_thoroughly_at.store(taken_at + 1, std::memory_order_relaxed);
          }
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

  // The part of a list that a trim walked before its budget ran out: off the
  // list, its slots marked in trim_marks_ (trim_slab). `first` is the link
  // to its first slot, `last` its last slot (null: none).
  struct PendingTrim {
    unsigned cls, slab;
    uint32_t first;
    char* last;
  };
  // pending_'s slots back on their list, their marks cleared.
  void return_pending(const Layout& L) {
    Lists::push_chain(L, pending_.cls, pending_.slab, pending_.first, pending_.last);
    clear_marks(L.slots_per_slab(pending_.cls));
    set_pending({});
  }
  void set_pending(const PendingTrim& p) {
    pending_ = p;
    pending_where_.store(p.last ? p.cls * kNumSlabs + p.slab : ~0u, std::memory_order_relaxed);
  }
  // The words of the first `slots` bits, and no more: a word past the end
  // of the bitmap was a page of whatever mapping followed it, which discard
  // zeroed (the trim of a full slab of 8-byte slots).
  void clear_marks(uint32_t slots) {
    const size_t bytes = (size_t(slots) + 63) / 64 * sizeof(uint64_t);
    if (!pal::discard(trim_marks_, bytes)) std::memset(trim_marks_, 0, std::min(bytes, marks_usable_));
  }
  // True if the marks of every slot (cls, slab) ever handed out are usable,
  // or made so (in a layout committed on demand, commit.hpp): the slots of
  // its committed bytes.
  bool usable_marks(const Layout& L, unsigned cls, unsigned slab) {
    const uint64_t slots = L.slots_starting_below(cls, commit::usable(L, cls, slab));
    const size_t bytes = commit::page_up((slots + 63) / 64 * sizeof(uint64_t));
    if (bytes <= marks_usable_) return true;
    if (!pal::commit(reinterpret_cast<char*>(trim_marks_) + marks_usable_, bytes - marks_usable_)) return false;
    marks_usable_ = bytes;
    return true;
  }

  std::atomic<uint32_t> trims_{0};     // trim_slab and adopt_orphans calls under way
  std::atomic<bool> forking_{false};   // a fork() is waiting for them
  std::atomic<uint32_t> trim_held_{0};  // a thread is trimming slabs (see hold)
  uint64_t* trim_marks_ = nullptr;      // trim_slab's bitmap: reserved once, kept
  size_t marks_usable_ = 0;             // its bytes that are committed
  PendingTrim pending_{};
  std::atomic<unsigned> pending_where_{~0u};  // pending_'s class * kNumSlabs + slab while it has slots
};

}  // namespace smalloc
