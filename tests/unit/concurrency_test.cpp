// Many threads allocating, resizing and freeing at once, with blocks freed by
// threads other than the one that allocated them. Every block is stamped with
// a unique 64-bit id, its size and an id-derived body, and checked before it
// is freed or resized, so a slot handed out twice, a block moved without its
// contents, or a free list that loses or corrupts a slot shows up as a stamp
// that does not match. At the end of a phase all live blocks are also checked
// for overlap.
//
// On a 2-core machine 16, 64 and 100 threads mean constant preemption, which
// is what exposes races in compare-and-swap loops; 100 threads is more than
// the 64 slabs per class, so slabs are shared and pops contend directly.
// Work is bounded by operation counts, never by time.
#include <gtest/gtest.h>
#include <malloc.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "smalloc.h"

namespace {

// The functions under test: the smalloc_ names, or (in the build linked to
// libsmalloc.so) libc's names too.
struct Allocator {
  const char* name;
  void* (*malloc)(size_t);
  void (*free)(void*);
  void* (*calloc)(size_t, size_t);
  void* (*realloc)(void*, size_t);
  size_t (*malloc_usable_size)(void*);
};

const Allocator kPrefixed{"prefixed", smalloc_malloc, smalloc_free, smalloc_calloc, smalloc_realloc,
                          smalloc_malloc_usable_size};
#ifdef SMALLOC_TEST_OVERRIDE
const Allocator kOverride{"override", ::malloc, ::free, ::calloc, ::realloc, ::malloc_usable_size};
#endif

constexpr size_t KiB = size_t{1} << 10;
constexpr size_t MiB = size_t{1} << 20;

// ---- stamps ----------------------------------------------------------------
// A block's content is a sequence of 64-bit words truncated to its size: word
// 0 is the id and word 1 the size (blocks of 16 bytes or more), the rest are
// derived from the id and position.

uint64_t content_word(uint64_t id, size_t size, size_t j) {
  if (size >= 16 && j == 0) return id;
  if (size >= 16 && j == 1) return size;
  return (id * 0x9e3779b97f4a7c15ull) ^ ((j + 1) * 0xd6e8feb86659fd93ull);
}

void stamp(void* p, uint64_t id, size_t size) {
  auto* b = static_cast<unsigned char*>(p);
  size_t words = size / 8;
  for (size_t j = 0; j < words; ++j) {
    uint64_t w = content_word(id, size, j);
    memcpy(b + 8 * j, &w, 8);
  }
  if (size % 8) {
    uint64_t w = content_word(id, size, words);
    memcpy(b + 8 * words, &w, size % 8);
  }
}

// The offset of the first of the first `len` bytes that differs from the stamp
// (id, size), or SIZE_MAX.
size_t first_bad_byte(const void* p, uint64_t id, size_t size, size_t len) {
  auto* b = static_cast<const unsigned char*>(p);
  for (size_t j = 0; j * 8 < len; ++j) {
    uint64_t want = content_word(id, size, j), got = 0;
    size_t n = std::min<size_t>(8, len - 8 * j);
    memcpy(&got, b + 8 * j, n);
    if (n < 8) want &= (uint64_t{1} << (8 * n)) - 1;
    if (got != want)
      for (size_t k = 0; k < n; ++k)
        if (((got ^ want) >> (8 * k)) & 0xff) return 8 * j + k;
  }
  return SIZE_MAX;
}

struct Block {
  void* p;
  size_t size;
  uint64_t id;
};

// Failures seen on worker threads; the test thread reports them. Only the
// first few messages are kept: one corruption tends to cause many.
class Errors {
 public:
  void add(const std::string& msg) {
    if (count_.fetch_add(1) < 8) {
      std::lock_guard<std::mutex> lock(mutex_);
      messages_ += msg + "\n";
    }
  }
  size_t count() const { return count_.load(); }
  std::string messages() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return messages_;
  }

 private:
  std::atomic<size_t> count_{0};
  mutable std::mutex mutex_;
  std::string messages_;
};

std::string describe(const Block& b) {
  char buf[160];
  snprintf(buf, sizeof buf, "block id %#llx (%zu bytes at %p)", static_cast<unsigned long long>(b.id), b.size, b.p);
  return buf;
}

// What one thread does to blocks it holds. Ids are (thread << 40 | counter) so
// they are unique across the whole test without a shared counter.
class Worker {
 public:
  Worker(const Allocator& a, Errors& errors, unsigned thread)
      : A(a), errors_(errors), rng_(thread * 7919u + 1), next_id_(uint64_t{thread + 1} << 40) {}

  // 8 B .. 64 KiB, log-uniform so small classes see most traffic, and one in
  // 512 a large block of 1 .. 8 MiB.
  size_t random_size() {
    if (rng_() % 512 == 0) return 1 * MiB + rng_() % (7 * MiB + 1);
    unsigned shift = 3 + unsigned(rng_() % 13);  // 2^3 .. 2^15
    return (size_t{1} << shift) + rng_() % ((size_t{1} << shift) + 1);
  }
  uint64_t random(uint64_t n) { return rng_() % n; }

  bool allocate(Block& out) {
    size_t size = random_size();
    bool zeroed = rng_() % 4 == 0;
    void* p = zeroed ? (size % 8 == 0 ? A.calloc(size / 8, 8) : A.calloc(1, size)) : A.malloc(size);
    if (!p) return fail("%s(%zu) returned NULL", zeroed ? "calloc" : "malloc", size);
    if (!smalloc_owns(p)) return fail("%p from %s(%zu) is not smalloc's", p, zeroed ? "calloc" : "malloc", size);
    if (A.malloc_usable_size(p) < size) return fail("usable size of %p < %zu", p, size);
    if (zeroed) {
      auto* b = static_cast<const unsigned char*>(p);
      for (size_t i = 0; i < size; ++i)
        if (b[i]) return fail("calloc(%zu) = %p: byte %zu is %#x, not zero", size, p, i, b[i]);
    }
    out = {p, size, next_id_++};
    stamp(p, out.id, size);
    return true;
  }

  bool verify(const Block& b, const char* when) {
    size_t bad = first_bad_byte(b.p, b.id, b.size, b.size);
    if (bad == SIZE_MAX) return true;
    uint64_t found = 0;
    if (b.size >= 8) memcpy(&found, b.p, 8);
    return fail("%s: %s: byte %zu is wrong (word 0 now %#llx)", when, describe(b).c_str(), bad,
                static_cast<unsigned long long>(found));
  }

  void release(const Block& b) {
    verify(b, "before free");
    A.free(b.p);
  }

  // Moves or resizes the block; the common prefix must come along intact.
  bool resize(Block& b) {
    if (!verify(b, "before realloc")) return false;
    size_t size = random_size();
    void* q = A.realloc(b.p, size);
    if (!q) return fail("realloc(%p, %zu) returned NULL", b.p, size);
    if (!smalloc_owns(q)) return fail("%p from realloc is not smalloc's", q);
    size_t bad = first_bad_byte(q, b.id, b.size, std::min(b.size, size));
    if (bad != SIZE_MAX)
      fail("realloc %s -> %zu bytes at %p: byte %zu of the old contents is wrong", describe(b).c_str(), size, q,
           bad);
    b = {q, size, next_id_++};  // the old block is gone either way
    stamp(q, b.id, size);
    return bad == SIZE_MAX;
  }

 private:
  template <class... Args>
  bool fail(const char* format, Args... args) {
    char buf[512];
    snprintf(buf, sizeof buf, format, args...);
    errors_.add(buf);
    return false;
  }

  const Allocator& A;
  Errors& errors_;
  std::mt19937_64 rng_;
  uint64_t next_id_;
};

// Sorts the blocks by address and reports any whose usable extent runs into
// the next one (a slot given to two owners starts at the same address).
void expect_no_overlap(const Allocator& A, std::vector<Block> blocks, Errors& errors) {
  std::sort(blocks.begin(), blocks.end(), [](const Block& x, const Block& y) { return x.p < y.p; });
  for (size_t i = 0; i + 1 < blocks.size(); ++i) {
    auto start = reinterpret_cast<uintptr_t>(blocks[i].p);
    size_t usable = A.malloc_usable_size(blocks[i].p);
    if (start + usable > reinterpret_cast<uintptr_t>(blocks[i + 1].p))
      errors.add(describe(blocks[i]) + " with " + std::to_string(usable) + " usable bytes overlaps " +
                 describe(blocks[i + 1]));
  }
}

void run_threads(unsigned n, const std::function<void(unsigned)>& body) {
  std::vector<std::thread> threads;
  threads.reserve(n);
  for (unsigned t = 0; t < n; ++t) threads.emplace_back(body, t);
  for (auto& t : threads) t.join();
}

struct Case {
  Allocator allocator;
  unsigned threads;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.allocator.name << " x" << c.threads; }

std::string CaseName(const testing::TestParamInfo<Case>& info) {
  return std::string(info.param.allocator.name) + "_" + std::to_string(info.param.threads) + "threads";
}

class ConcurrencyTest : public testing::TestWithParam<Case> {
 protected:
  const Allocator& A = GetParam().allocator;
  const unsigned kThreads = GetParam().threads;
  Errors errors;

  void TearDown() override {
    EXPECT_EQ(errors.count(), 0u) << errors.messages();
  }
};

// The total work of each test, shared out among the threads.
constexpr unsigned kTotalOps = 480'000;

// Each thread mallocs, callocs, reallocs and frees blocks of its own; a slot
// given to two threads, or contents lost by realloc, breaks a stamp.
TEST_P(ConcurrencyTest, MixedOperationsOnPrivateBlocksNeverCorruptABlock) {
  const unsigned ops = kTotalOps / kThreads;
  run_threads(kThreads, [&](unsigned t) {
    Worker w(A, errors, t);
    std::vector<Block> live;
    for (unsigned i = 0; i < ops && errors.count() == 0; ++i) {
      uint64_t op = live.empty() ? 0 : live.size() >= 64 ? 4 : w.random(8);
      if (op < 4) {
        Block b;
        if (w.allocate(b)) live.push_back(b);
      } else if (op < 6) {
        size_t k = w.random(live.size());
        w.release(live[k]);
        live[k] = live.back();
        live.pop_back();
      } else {
        w.resize(live[w.random(live.size())]);
      }
    }
    for (const Block& b : live) w.release(b);
  });
}

// Producers allocate and stamp blocks and hand them through a shared queue to
// consumers, which check them and free them (some after a realloc). Every free
// is cross-thread: it pushes onto a free list that its owner is popping from.
TEST_P(ConcurrencyTest, BlocksFreedByOtherThreadsAreNeverHandedOutTwice) {
  const unsigned producers = kThreads / 2;  // the rest consume
  const unsigned per_producer = kTotalOps / 2 / producers;
  const size_t total = size_t{per_producer} * producers;
  constexpr size_t kQueueCap = 2048;

  std::mutex mutex;
  std::deque<Block> queue;
  std::atomic<size_t> consumed{0};

  run_threads(kThreads, [&](unsigned t) {
    Worker w(A, errors, t);
    if (t < producers) {
      for (unsigned i = 0; i < per_producer; ++i) {
        Block b;
        if (!w.allocate(b)) {
          consumed.fetch_add(1);  // keep the consumers' count reachable
          continue;
        }
        for (;;) {
          {
            std::lock_guard<std::mutex> lock(mutex);
            if (queue.size() < kQueueCap) {
              queue.push_back(b);
              break;
            }
          }
          std::this_thread::yield();
        }
      }
    } else {
      while (consumed.load() < total) {
        Block b;
        {
          std::lock_guard<std::mutex> lock(mutex);
          if (queue.empty()) b.p = nullptr;
          else {
            b = queue.front();
            queue.pop_front();
          }
        }
        if (!b.p) {
          std::this_thread::yield();
          continue;
        }
        if (w.random(4) == 0) w.resize(b);  // frees the producer's block, allocates here
        w.release(b);
        consumed.fetch_add(1);
      }
    }
  });
  EXPECT_TRUE(queue.empty());
  EXPECT_EQ(consumed.load(), total);
}

// Threads build up many live blocks while recycling others; at the end of the
// phase every live block of every thread must be intact and no two may
// overlap. A second phase frees half of each thread's blocks from another
// thread and allocates new ones into the freed slots, then checks again.
TEST_P(ConcurrencyTest, LiveBlocksOfAllThreadsNeverOverlap) {
  const unsigned ops = kTotalOps / 4 / kThreads;
  std::vector<std::vector<Block>> live(kThreads);

  run_threads(kThreads, [&](unsigned t) {
    Worker w(A, errors, t);
    for (unsigned i = 0; i < ops; ++i) {
      // Mostly allocations, so the live set grows to the cap and then churns.
      uint64_t op = live[t].empty() ? 0 : live[t].size() >= 256 ? 2 : w.random(4);
      if (op < 2) {
        Block b;
        if (w.allocate(b)) live[t].push_back(b);
      } else if (op == 2) {
        size_t k = w.random(live[t].size());
        w.release(live[t][k]);
        live[t][k] = live[t].back();
        live[t].pop_back();
      } else {
        w.resize(live[t][w.random(live[t].size())]);
      }
    }
  });

  auto check_phase = [&](const char* phase) {
    std::vector<Block> all;
    Worker w(A, errors, kThreads + 1);
    for (auto& v : live)
      for (const Block& b : v) {
        w.verify(b, phase);
        all.push_back(b);
      }
    expect_no_overlap(A, all, errors);
    return all.size();
  };
  EXPECT_GT(check_phase("after phase 1"), kThreads);

  // Phase 2: thread t frees every other block of thread t+1, then allocates.
  std::vector<std::vector<Block>> survivors(kThreads), fresh(kThreads);
  run_threads(kThreads, [&](unsigned t) {
    Worker w(A, errors, kThreads + 2 + t);
    const auto& victim = live[(t + 1) % kThreads];
    for (size_t i = 0; i < victim.size(); ++i) {
      if (i % 2) w.release(victim[i]);
      else survivors[(t + 1) % kThreads].push_back(victim[i]);
    }
    for (size_t i = 0; i < victim.size() / 2 + 1; ++i) {
      Block b;
      if (w.allocate(b)) fresh[t].push_back(b);
    }
  });
  for (unsigned t = 0; t < kThreads; ++t) {
    live[t] = survivors[t];
    live[t].insert(live[t].end(), fresh[t].begin(), fresh[t].end());
  }
  EXPECT_GT(check_phase("after phase 2"), kThreads);

  Worker w(A, errors, 2 * kThreads + 3);
  for (auto& v : live)
    for (const Block& b : v) w.release(b);
}

// Tight loops on one size class: each thread takes a batch of 16-byte slots,
// stamps them, checks them and gives them back, as fast as it can. With more
// threads than slabs, several threads pop and push the same free list, which
// is where a lost ABA race would hand one slot to two threads.
TEST_P(ConcurrencyTest, TightLoopsOnOneSizeClassNeverHandOutASlotTwice) {
  const unsigned rounds = 4'000'000 / kThreads;  // 32 million allocations in all
  run_threads(kThreads, [&](unsigned t) {
    uint64_t id = uint64_t{t + 1} << 40;
    void* batch[8];
    for (unsigned r = 0; r < rounds && errors.count() == 0; ++r) {
      for (void*& p : batch) {
        p = A.malloc(16);
        if (!p) return errors.add("malloc(16) returned NULL");
        stamp(p, ++id, 16);
      }
      // Now and then let other threads run while we hold the slots; otherwise
      // keep the pops and pushes back to back, where races are likeliest.
      if (r % 64 == 0) std::this_thread::yield();
      for (unsigned i = 0; i < 8; ++i) {
        uint64_t mine = id - 7 + i;
        if (first_bad_byte(batch[i], mine, 16, 16) != SIZE_MAX) {
          uint64_t found;
          memcpy(&found, batch[i], 8);
          errors.add(describe({batch[i], 16, mine}) + ": now holds id " + std::to_string(found));
        }
      }
      for (void* p : batch) A.free(p);
    }
  });
}

// Each thread holds more small blocks at once than its private list takes
// (1 MiB of a class), so that freeing them stages the rest onto its slab's
// shared list, from which it takes them back in batches (heap.hpp,
// take_used_own) while threads whose slabs ran dry take from the same lists.
// A batch taken twice, or cut at the wrong link, breaks a stamp. (Threads
// beyond the 64th share slabs, keep no private list and take no batches.)
TEST_P(ConcurrencyTest, SlotsTakenBackInBatchesAreNeverHandedOutTwice) {
  constexpr size_t kSizes[] = {48, 64};
  constexpr unsigned kHeld = 24'000;  // 1.1 and 1.5 MiB
  const unsigned rounds = kThreads > 16 ? 2 : 4;
  run_threads(kThreads, [&](unsigned t) {
    std::mt19937_64 rng(t + 11);
    uint64_t id = uint64_t{t + 1} << 40;
    std::vector<Block> held(kHeld);
    for (unsigned r = 0; r < rounds && errors.count() == 0; ++r) {
      const size_t size = kSizes[(t + r) % 2];
      for (Block& b : held) {
        b = {A.malloc(size), size, ++id};
        if (!b.p) return errors.add("malloc(" + std::to_string(size) + ") returned NULL");
        stamp(b.p, b.id, size);
      }
      if (r % 2 == 0) std::this_thread::yield();
      for (const Block& b : held)
        if (first_bad_byte(b.p, b.id, b.size, b.size) != SIZE_MAX) errors.add(describe(b) + " was overwritten");
      std::shuffle(held.begin(), held.end(), rng);
      for (const Block& b : held) A.free(b.p);
    }
  });
}

std::vector<Case> cases() {
  std::vector<Allocator> tables{kPrefixed};
#ifdef SMALLOC_TEST_OVERRIDE
  tables.push_back(kOverride);
#endif
  std::vector<Case> v;
  for (const Allocator& a : tables)
    for (unsigned n : {16u, 64u, 100u}) v.push_back({a, n});
  return v;
}

INSTANTIATE_TEST_SUITE_P(Threads, ConcurrencyTest, testing::ValuesIn(cases()), CaseName);

}  // namespace
