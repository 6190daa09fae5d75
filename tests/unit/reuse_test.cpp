// Memory that is free gets used again before new memory is touched, whichever
// thread freed it: a thread's private free lists go back to its slab when it
// exits, and a thread whose slab has no used free slot takes one from another
// slab; a freed 4 MiB buffer is allocated again without faulting its pages in
// anew, while no more than one such buffer stays resident. Linked to the prefixed library, so only these calls use the heap.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <memory>
#include <set>
#include <thread>
#include <vector>

#include "smalloc.h"

namespace {

constexpr size_t kSize = 200;  // class 8: no other test here uses it
constexpr int kBlocks = 3000;

unsigned long long Touched(unsigned cls) {
  auto s = std::make_unique<smalloc_stats>();
  EXPECT_EQ(smalloc_stats_snapshot(s.get()), 0);
  return s->classes[cls].touched;
}

std::vector<void*> AllocateBlocks(size_t size, int n) {
  std::vector<void*> v;
  for (int i = 0; i < n; ++i) {
    v.push_back(smalloc_malloc(size));
    EXPECT_NE(v.back(), nullptr);
  }
  return v;
}

// Runs `work` on a thread of its own, which then stays alive (and so keeps
// its slab) until this object is destroyed.
class ParkedThread {
 public:
  template <class Work>
  explicit ParkedThread(Work work)
      : thread_([this, work] {
          work();
          std::unique_lock lk(m_);
          ready_ = true;
          cv_.notify_all();
          cv_.wait(lk, [&] { return stop_; });
        }) {
    std::unique_lock lk(m_);
    cv_.wait(lk, [&] { return ready_; });
  }
  ~ParkedThread() {
    {
      std::lock_guard lk(m_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  bool ready_ = false, stop_ = false;
  std::thread thread_;  // last: starts once the members it uses exist
};

TEST(Reuse, SlotsAThreadFreedItselfOutliveItAndAreReusedByTheNextThread) {
  smalloc_free(smalloc_malloc(1));  // the main thread takes its slab first
  std::vector<void*> first;
  std::thread([&] {
    first = AllocateBlocks(kSize, kBlocks);
    for (void* p : first) smalloc_free(p);  // onto the thread's private lists
  }).join();
  const unsigned cls = unsigned(__builtin_ctzll(smalloc_malloc_usable_size(first[0])));
  const auto touched = Touched(cls);
  std::vector<void*> second;
  std::thread([&] { second = AllocateBlocks(kSize, kBlocks); }).join();
  EXPECT_EQ(std::set<void*>(first.begin(), first.end()), std::set<void*>(second.begin(), second.end()))
      << "the exited thread's free slots were not handed to the next thread";
  EXPECT_EQ(Touched(cls), touched) << "new memory was touched while freed slots were available";
  for (void* p : second) smalloc_free(p);
}

TEST(Reuse, AThreadTakesSlotsFreedInAnotherSlabBeforeTouchingNewMemory) {
  constexpr size_t kOther = 3000;  // class 12
  // A producer allocates, the main thread frees: the slots are free in the
  // producer's slab, which stays alive (and so stays the producer's).
  std::vector<void*> produced;
  ParkedThread producer([&] { produced = AllocateBlocks(kOther, kBlocks); });
  for (void* p : produced) smalloc_free(p);
  const unsigned cls = unsigned(__builtin_ctzll(smalloc_malloc_usable_size(produced[0])));
  const auto touched = Touched(cls);

  std::vector<void*> consumer_blocks;
  std::thread([&] { consumer_blocks = AllocateBlocks(kOther, kBlocks); }).join();
  // The first allocation may touch a new slot (the look is throttled after a
  // miss); after that every slot must come from the producer's free ones.
  EXPECT_LE(Touched(cls) - touched, 1u);
  std::set<void*> reused(produced.begin(), produced.end());
  const auto taken = std::count_if(consumer_blocks.begin(), consumer_blocks.end(),
                                   [&](void* p) { return reused.count(p) != 0; });
  EXPECT_GE(taken, kBlocks - 1);
  for (void* p : consumer_blocks) smalloc_free(p);
}

// A live thread keeps at most 1 MiB of a class on its private list: the rest
// of what it frees is at once available to the other threads.
TEST(Reuse, ALiveThreadsPrivateListIsBounded) {
  constexpr size_t kKiB = 1000;  // class 10: 1 KiB slots
  constexpr int kMany = 4096;    // 4 MiB of slots
  std::vector<void*> freed;
  ParkedThread owner([&] {
    freed = AllocateBlocks(kKiB, kMany);
    for (void* p : freed) smalloc_free(p);  // its own slab: private list first
  });
  const unsigned cls = 10;
  const auto touched = Touched(cls);
  const int kept_private = (1 << 20) / 1024;
  std::vector<void*> other;
  std::thread([&] { other = AllocateBlocks(kKiB, kMany - kept_private); }).join();
  EXPECT_LE(Touched(cls) - touched, 1u) << "the owner's free slots beyond its private list were not shared";
  for (void* p : other) smalloc_free(p);
}

// Pages of [p, p + n) that are resident.
size_t ResidentPages(void* p, size_t n) {
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> v(n / page);
  EXPECT_EQ(mincore(p, n, v.data()), 0);
  return size_t(std::count_if(v.begin(), v.end(), [](unsigned char c) { return c & 1; }));
}

TEST(Reuse, TheLastFreedFourMiBBufferIsKeptResidentAndOnlyThatOne) {
  constexpr size_t kBig = size_t{3} << 20;  // the 4 MiB class
  char* a = static_cast<char*>(smalloc_malloc(kBig));
  char* b = static_cast<char*>(smalloc_malloc(kBig));
  ASSERT_TRUE(a && b);
  memset(a, 1, kBig);
  memset(b, 2, kBig);
  smalloc_free(a);
  EXPECT_GE(ResidentPages(a, size_t{4} << 20), kBig / size_t(sysconf(_SC_PAGESIZE))) << "the freed buffer is kept";
  smalloc_free(b);  // b is kept now, and a given back
  // All but the page that holds its free-list link:
  EXPECT_LE(ResidentPages(a, size_t{4} << 20), 1u) << "only one freed buffer stays resident";
  char* again = static_cast<char*>(smalloc_malloc(kBig));
  EXPECT_EQ(again, b) << "the kept buffer is the next one handed out";
  smalloc_free(again);
  void* zeroed = smalloc_calloc(1, kBig);  // the kept buffer again: calloc must clear it
  ASSERT_EQ(zeroed, again);
  EXPECT_EQ(std::count(static_cast<char*>(zeroed), static_cast<char*>(zeroed) + kBig, 0), std::ptrdiff_t(kBig));
  smalloc_free(zeroed);
  smalloc_malloc_trim(0);  // gives the kept one back too
  EXPECT_LE(ResidentPages(again, size_t{4} << 20), 1u);
}

}  // namespace
