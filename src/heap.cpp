// The process-wide heap and the per-thread slab numbers.
#include <pthread.h>

#include <bit>

#include "heap.hpp"
#include SMALLOC_POLICY_HEADER

namespace smalloc {

// constinit: the heap must work before any constructor has run.
constinit Heap<Policy, /*kProcessHeap=*/true> g_heap{kMaxSpanShift};

__thread ThreadState t_thread __attribute__((tls_model("initial-exec")));

namespace {

// Bit s is set while a live thread holds slab s. Giving each live thread a slab
// of its own (up to 64 threads) means allocating threads never contend, and a
// new thread inherits the free slots an exited one left behind instead of
// touching fresh memory.
constinit std::atomic<uint64_t> g_live_slabs{0};
constinit std::atomic<unsigned> g_next_shared{0};

// The state of the thread holding each slab for itself: a fork child finds
// there what the threads that did not follow it left behind.
constinit std::atomic<ThreadState*> g_slab_thread[kNumSlabs]{};

enum : int { kNoKey, kCreatingKey, kKeyReady, kKeyFailed };
constinit std::atomic<int> g_key_state{kNoKey};
pthread_key_t g_key;

// Runs in the exiting thread. Destructors that run after this one may still
// allocate and free: they do so as a thread sharing its slab, with CAS and
// atomic counters and no thread list, so nothing is stranded.
void release_slab(void* value) {
  unsigned slab = unsigned(reinterpret_cast<uintptr_t>(value)) - 1;
  t_thread.slab_plus_one = slab + 1 + kNumSlabs;
  g_heap.return_thread_lists(t_thread);
  if constexpr (Policy::kStats) stats::retire_own(g_heap.layout(), slab, t_thread.counts);
  g_slab_thread[slab].store(nullptr, std::memory_order_relaxed);
  g_live_slabs.fetch_and(~(uint64_t{1} << slab), std::memory_order_release);
}

// A fork child's copies of what the threads that did not follow it held to
// themselves: their private lists and staged slots. They go back to the
// shared lists class by class, when a thread of the child first needs a new
// slot of the class (or trims), not in the fork handler: giving a slot back
// writes into it, a copy-on-write fault per page, and four busy threads'
// lists made every fork cost some 75 ms (5 ms without), in a child that may
// only exec. Copies, because the dead threads' TLS is reused by the child's
// next threads.
constinit ThreadState g_orphans[kNumSlabs]{};
constinit std::atomic<uint64_t> g_orphan_slabs{0};

// An orphan's staged slots are bits in its slab's words of the staged
// bitmaps, which the slab's owner writes without atomics (Heap::stage). A
// thread of the child that took the slab would stage into the same words
// while another thread adopting the orphan's clears them: a slot lost, or
// handed back twice. So the slab stays taken until they are adopted.
constinit std::atomic<uint64_t> g_held_for_orphans{0};

// By the counts alone, which unstage zeroes after it has cleared the bits
// (its first step empties staged_from: a slab freed on that would be
// staged into while the bits are still being cleared). seq_cst, as is
// that store: two threads that each finish a class, then look at the
// other's, cannot both miss the other's and leave the slab held.
bool holds_staged(ThreadState& t) {
  for (unsigned cls = 0; cls <= kStagedMaxClass; ++cls)
    if (std::atomic_ref<uint32_t>(t.staged[cls]).load(std::memory_order_seq_cst) != 0) return true;
  return false;
}

// The held slabs whose orphans' staged slots have all been adopted go free.
void release_held_slabs() {
  for (uint64_t m = g_held_for_orphans.load(std::memory_order_acquire); m != 0; m &= m - 1) {
    const unsigned slab = unsigned(__builtin_ctzll(m));
    const uint64_t bit = uint64_t{1} << slab;
    if (!holds_staged(g_orphans[slab]) && (g_held_for_orphans.fetch_and(~bit, std::memory_order_acq_rel) & bit))
      g_live_slabs.fetch_and(~bit, std::memory_order_release);
  }
}

// A fork waits for the slab trims under way (Trimmer::begin_fork).
void before_fork() { g_heap.trimmer().begin_fork(); }
void after_fork_in_parent() { g_heap.trimmer().end_fork(false); }

// In a fork child only the forking thread lives on. The others' slabs would
// stay taken, and the slots they held to themselves stranded: the slabs are
// freed (those with staged slots once these are adopted), and the slots
// recorded in g_orphans for the child's threads to take back as they need
// them. (A thread interrupted inside free() may lose the one slot it was
// freeing, one inside malloc's batch pop (Heap::take_batch_own) up to 32; one
// inside a stats read has its count reset.)
void after_fork_in_child() {
  g_heap.trimmer().end_fork(true);
  const Layout L = g_heap.layout();
  if (L.max_class() < kMinClass) return;
  if constexpr (Policy::kStats) stats::forget_readers(L);
  const unsigned mine = t_thread.slab_plus_one != 0 && !thread_shares_slab() ? t_thread.slab_plus_one - 1 : kNumSlabs;
  for (unsigned slab = 0; slab < kNumSlabs; ++slab) {
    ThreadState* t = g_slab_thread[slab].load(std::memory_order_relaxed);
    if (slab == mine || !t) continue;
    // One left by an earlier fork of an ancestor, not yet adopted: it goes
    // back now (rare: a fork from a forked child's threads).
    if (g_orphan_slabs.load(std::memory_order_relaxed) & (uint64_t{1} << slab))
      g_heap.return_thread_lists(g_orphans[slab]);
    if constexpr (Policy::kStats) stats::retire_own(L, slab, t->counts);
    ThreadState& orphan = g_orphans[slab] = *t;
    // A count with no bits to find (the thread stopped inside unstage): nothing to adopt.
    for (unsigned cls = 0; cls <= kStagedMaxClass; ++cls)
      if (orphan.staged_from[cls] == nullptr) orphan.staged[cls] = 0;
    for (unsigned cls = 0; cls < kNumClasses; ++cls)
      if ((cls < kDiscardClass && orphan.own_head[cls] != nullptr) ||
          (cls <= kStagedMaxClass && orphan.staged[cls] != 0) ||
          (cls <= kRunMaxClass && orphan.run_next[cls] != orphan.run_end[cls]))
        g_orphan_classes.fetch_or(orphan_bit(cls), std::memory_order_relaxed);
    g_orphan_slabs.fetch_or(uint64_t{1} << slab, std::memory_order_release);
    g_slab_thread[slab].store(nullptr, std::memory_order_relaxed);
    if (holds_staged(orphan)) g_held_for_orphans.fetch_or(uint64_t{1} << slab, std::memory_order_relaxed);
    else g_live_slabs.fetch_and(~(uint64_t{1} << slab), std::memory_order_relaxed);
  }
}

// pthread_atfork may allocate, so it is called here, never from malloc.
[[gnu::constructor]] void handle_fork_children() {
  pthread_atfork(before_fork, after_fork_in_parent, after_fork_in_child);
}

// A pthread key's destructor tells us when the thread exits. Neither creating
// the key nor setting a low-numbered key's value allocates; if the value does
// allocate (key >= 32), the nested malloc finds the slab already assigned.
void release_at_thread_exit(unsigned slab) {
  int state = g_key_state.load(std::memory_order_acquire);
  if (state == kNoKey && g_key_state.compare_exchange_strong(state, kCreatingKey)) {
    state = pthread_key_create(&g_key, release_slab) == 0 ? kKeyReady : kKeyFailed;
    g_key_state.store(state, std::memory_order_release);
  }
  // Without the destructor the thread must not keep a list of its own, which
  // would be stranded at exit: it uses its slab as if shared (and keeps it).
  if (state != kKeyReady || pthread_setspecific(g_key, reinterpret_cast<void*>(uintptr_t{slab} + 1)) != 0)
    t_thread.slab_plus_one = slab + 1 + kNumSlabs;
}

}  // namespace

constinit std::atomic<uint64_t> g_orphan_classes{0};
constinit std::atomic<uint64_t> g_used_slabs{0};

void adopt_orphans(unsigned cls) {
  // The lists are off their records while they go back: a fork meanwhile
  // waits, as for a trim; one already waiting leaves this for later.
  if (!g_heap.trimmer().enter_trim()) return;
  const Layout L = g_heap.layout();
  for (uint64_t m = g_orphan_slabs.load(std::memory_order_acquire); m != 0; m &= m - 1)
    for (unsigned c = cls & ~1u; c <= (cls | 1u) && c < kNumClasses; ++c)
      g_heap.return_thread_list(L, g_orphans[__builtin_ctzll(m)], c);
  g_orphan_classes.fetch_and(~orphan_bit(cls), std::memory_order_relaxed);
  release_held_slabs();
  g_heap.trimmer().leave_trim();
}

void adopt_all_orphans() {
  for (uint64_t m = g_orphan_classes.load(std::memory_order_relaxed); m != 0; m &= m - 1)
    adopt_orphans(2 * unsigned(__builtin_ctzll(m)));
}

unsigned assign_thread_slab() {
  for (bool adopted = false;; adopted = true) {
    uint64_t live = g_live_slabs.load(std::memory_order_relaxed);
    while (~live != 0) {
      unsigned slab = unsigned(std::countr_one(live));
      if (g_live_slabs.compare_exchange_weak(live, live | (uint64_t{1} << slab), std::memory_order_acquire)) {
        mark_slab_used(slab);
        t_thread.slab_plus_one = slab + 1;
        release_at_thread_exit(slab);
        if (!thread_shares_slab()) {
          g_slab_thread[slab].store(&t_thread, std::memory_order_relaxed);
          // The process heap has its memory by now (only a test heap could come
          // first: then the thread's counts stay unpublished, and go uncounted).
          const Layout L = g_heap.layout();
          if (Policy::kStats && L.max_class() >= kMinClass) stats::publish_own(L, slab, &t_thread.counts);
        }
        return slab;
      }
    }
    // No slab free, but some held for a fork's orphans: adopt them all, once.
    if (adopted || g_held_for_orphans.load(std::memory_order_relaxed) == 0) break;
    adopt_all_orphans();
  }
  // More than 64 live threads: share slabs round-robin (the CAS keeps it safe).
  unsigned slab = g_next_shared.fetch_add(1, std::memory_order_relaxed) % kNumSlabs;
  mark_slab_used(slab);
  t_thread.slab_plus_one = slab + 1 + kNumSlabs;
  return slab;
}

}  // namespace smalloc
