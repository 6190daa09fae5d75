// Memory that is free gets used again before new memory is touched, whichever
// thread freed it: a thread's private free lists go back to its slab when it
// exits, and a thread whose slab has no used free slot takes one from another
// slab; a fork child takes over what the threads that did not follow it left;
// a freed 4 MiB buffer is allocated again without faulting its pages in
// anew, while no more than one such buffer stays resident; malloc_trim gives
// back the pages of free small slots at the top of a slab. Linked to the
// prefixed library, so only these calls use the heap.
//
// Each test expects a process of its own, as ctest gives it (one run per
// test, gtest_discover_tests): the figures it reads are the whole process
// heap's. Run directly, the file's order works; --gtest_shuffle does not
// (what one test leaves free, another finds).
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <barrier>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <string>
#include <mutex>
#include <memory>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "smalloc.h"

namespace {

constexpr size_t kSize = 200;  // 256-byte slots: no other test here uses them
constexpr int kBlocks = 3000;

// The size class whose slots hold `size` bytes (smalloc.h: class c has slots
// of 2^(c/2) bytes if c is even, 1.5 * 2^(c/2) if odd, the odd ones only
// from 48 bytes to 1.5 MiB).
constexpr unsigned ClassOfSize(size_t size) {
  for (unsigned c = 6;; ++c) {
    const size_t bytes = size_t(2 + (c & 1)) << (c / 2 - 1);
    if ((c % 2 == 0 || (c >= 11 && c <= 41)) && bytes >= size) return c;
  }
}
// A block's: it ends where its slot ends, and starts at most 64 bytes into it.
unsigned ClassOf(const void* p) { return ClassOfSize(smalloc_malloc_usable_size(const_cast<void*>(p))); }

smalloc_class_stats ClassStats(unsigned cls) {
  auto s = std::make_unique<smalloc_stats>();
  EXPECT_EQ(smalloc_stats_snapshot(s.get()), 0);
  return s->classes[cls];
}

unsigned long long Touched(unsigned cls) { return ClassStats(cls).touched; }

// Allocations minus frees of a class, as counted (not clamped to what was
// touched, as the snapshot's in_use is).
long long Outstanding(unsigned cls) {
  const smalloc_class_stats c = ClassStats(cls);
  return (long long)(c.allocations - c.frees);
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

// Pages of [p, p + n) in memory (a page the kernel maps to its shared zero
// page on a read counts too).
size_t ResidentPages(void* p, size_t n) {
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  // mincore takes a page-aligned start (blocks may start past one) and fills
  // one byte per page started.
  const uintptr_t start = reinterpret_cast<uintptr_t>(p) & -uintptr_t(page);
  n += reinterpret_cast<uintptr_t>(p) - start;
  std::vector<unsigned char> v((n + page - 1) / page);
  EXPECT_EQ(mincore(reinterpret_cast<void*>(start), n, v.data()), 0);
  return size_t(std::count_if(v.begin(), v.end(), [](unsigned char c) { return c & 1; }));
}

// A process that has only ever had one thread has free slots in no other
// slab, so its first allocation of a class looks at no other slab's head:
// the class's 64 heads fill 4 pages, and reading them was a page fault
// each. (First in the file: tests with threads take other slabs.)
TEST(Reuse, AProcessThatHadOneThreadReadsNoOtherSlabsHeads) {
  constexpr size_t kTwelveKiB = 12000;  // 12 KiB slots: no other test here uses them
  void* p = smalloc_malloc(kTwelveKiB);
  ASSERT_NE(p, nullptr);
  const unsigned cls = ClassOf(p);
  auto s = std::make_unique<smalloc_stats>();
  ASSERT_EQ(smalloc_stats_snapshot(s.get()), 0);
  unsigned slab = 0;
  while (slab < s->slabs_per_class && s->classes[cls].slabs[slab].in_use == 0) ++slab;
  ASSERT_LT(slab, s->slabs_per_class);
  // The layout (README): slab `slab` of class c spans 2^S bytes from base +
  // ((c - 5) * 64 + slab) * 2^S; the free-list heads are at base, 256 bytes
  // for each (class, slab), the 64 of a class together.
  const unsigned span = s->span_shift;
  const uintptr_t base = (reinterpret_cast<uintptr_t>(p) & -(uintptr_t{1} << span)) -
                         ((uintptr_t{cls - 5} * s->slabs_per_class + slab) << span);
  char* const heads = reinterpret_cast<char*>(base + uintptr_t{cls} * s->slabs_per_class * 256);
  EXPECT_EQ(ResidentPages(heads, s->slabs_per_class * 256), 1u) << "other slabs' heads were read";
  smalloc_free(p);
}

// The exit status of the fork child `pid`; -1 if it did not exit normally.
int ChildExitStatus(pid_t pid) {
  int status = 0;
  if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) return -1;
  return WEXITSTATUS(status);
}

TEST(Reuse, SlotsAThreadFreedItselfOutliveItAndAreReusedByTheNextThread) {
  smalloc_free(smalloc_malloc(1));  // the main thread takes its slab first
  std::vector<void*> first;
  std::thread([&] {
    first = AllocateBlocks(kSize, kBlocks);
    for (void* p : first) smalloc_free(p);  // onto the thread's private lists
  }).join();
  const unsigned cls = ClassOf(first[0]);
  const auto touched = Touched(cls);
  std::vector<void*> second;
  std::thread([&] { second = AllocateBlocks(kSize, kBlocks); }).join();
  EXPECT_EQ(std::set<void*>(first.begin(), first.end()), std::set<void*>(second.begin(), second.end()))
      << "the exited thread's free slots were not handed to the next thread";
  EXPECT_EQ(Touched(cls), touched) << "new memory was touched while freed slots were available";
  for (void* p : second) smalloc_free(p);
}

TEST(Reuse, AThreadTakesSlotsFreedInAnotherSlabBeforeTouchingNewMemory) {
  constexpr size_t kOther = 3000;  // 3 KiB slots
  // A producer allocates, the main thread frees: the slots are free in the
  // producer's slab, which stays alive (and so stays the producer's).
  std::vector<void*> produced;
  ParkedThread producer([&] { produced = AllocateBlocks(kOther, kBlocks); });
  for (void* p : produced) smalloc_free(p);
  const unsigned cls = ClassOf(produced[0]);
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

// Blocks another thread freed wait on the slab's second list
// (FreeListHead::remote) until the owner's own ones run out: then the owner
// takes them all, before any new slot.
TEST(Reuse, TheOwnerTakesWhatOtherThreadsFreedIntoItsSlabBeforeNewMemory) {
  constexpr size_t kSmall = 48;  // 48-byte slots: new slots come 64 at a time
  const unsigned cls = ClassOfSize(kSmall);
  smalloc_free(smalloc_malloc(kSize));  // the main thread has its slab (another class)
  std::vector<void*> first, second;
  std::barrier sync(2);
  unsigned long long touched = 0;
  std::thread owner([&] {
    first = AllocateBlocks(kSmall, kBlocks);
    sync.arrive_and_wait();  // the main thread frees them
    sync.arrive_and_wait();
    touched = Touched(cls);
    second = AllocateBlocks(kSmall, kBlocks);
    sync.arrive_and_wait();  // before the thread exits and hands anything back
  });
  sync.arrive_and_wait();
  for (void* p : first) smalloc_free(p);
  sync.arrive_and_wait();
  sync.arrive_and_wait();
  EXPECT_EQ(Touched(cls), touched) << "new slots were taken while other threads' frees waited";
  const std::set<void*> freed(first.begin(), first.end());
  const auto reused = std::count_if(second.begin(), second.end(), [&](void* p) { return freed.count(p) != 0; });
  // The rest: new slots the owner had taken ahead (at most a run of 64).
  EXPECT_GE(reused, kBlocks - 64);
  owner.join();
  for (void* p : second) smalloc_free(p);
}

// What other threads freed into a slab whose owner did not follow a fork is
// still there in the child, and taken before new memory.
TEST(Reuse, AForkChildTakesWhatOtherThreadsFreedIntoADeadThreadsSlab) {
  constexpr size_t kSmall = 40;  // 48-byte slots, as above; no other test here forks with them
  const unsigned cls = ClassOfSize(kSmall);
  smalloc_free(smalloc_malloc(kSize));  // the main thread has its slab (another class)
  std::vector<void*> produced;
  ParkedThread owner([&] { produced = AllocateBlocks(kSmall, kBlocks); });
  for (void* p : produced) smalloc_free(p);  // onto the owner's slab's list of other threads' frees
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const auto touched = Touched(cls);
    const std::vector<void*> again = AllocateBlocks(kSmall, kBlocks);
    const std::set<void*> freed(produced.begin(), produced.end());
    const auto reused = std::count_if(again.begin(), again.end(), [&](void* p) { return freed.count(p) != 0; });
    // The first allocation may take a run of new slots before it looks.
    // (The dead owner's unused run goes back untouched: the count may fall.)
    _exit(Touched(cls) <= touched + 64 && reused >= kBlocks - 64 ? 0 : 1);
  }
  const int status = ChildExitStatus(pid);
  ASSERT_GE(status, 0) << "the child did not exit normally";
  EXPECT_EQ(status, 0) << "the child touched new memory while freed slots waited";
}

// A live thread keeps at most 1 MiB of a class on its private list: the rest
// of what it frees is at once available to the other threads.
TEST(Reuse, ALiveThreadsPrivateListIsBounded) {
  constexpr size_t kKiB = 1000;  // 1 KiB slots
  constexpr int kMany = 4096;    // 4 MiB of slots
  std::vector<void*> freed;
  ParkedThread owner([&] {
    freed = AllocateBlocks(kKiB, kMany);
    for (void* p : freed) smalloc_free(p);  // its own slab: private list first
  });
  const unsigned cls = ClassOfSize(kKiB);
  const auto touched = Touched(cls);
  const int kept_private = (1 << 20) / 1024;
  std::vector<void*> other;
  std::thread([&] { other = AllocateBlocks(kKiB, kMany - kept_private); }).join();
  EXPECT_LE(Touched(cls) - touched, 1u) << "the owner's free slots beyond its private list were not shared";
  for (void* p : other) smalloc_free(p);
}

// What a thread frees of its own slab beyond its private list goes to the
// shared list in address order, as many as the list holds at a time, so that
// whoever takes them next takes them together in memory however they were
// freed.
constexpr size_t kSixteenKiB = 16000;  // 16 KiB slots: a private list of 64 slots
constexpr int kListed = 64;

TEST(Reuse, FreesBeyondTheThreadsListReachTheSharedListInAddressOrder) {
  constexpr int kMany = kListed + 2 * kListed + 10;
  std::vector<void*> again;
  std::thread([&] {
    std::vector<void*> v = AllocateBlocks(kSixteenKiB, kMany);
    std::shuffle(v.begin(), v.end(), std::mt19937(7));
    for (void* p : v) smalloc_free(p);  // 64 listed, then 64 and 64 to the shared list, 10 left staged
    again = AllocateBlocks(kSixteenKiB, kMany);  // the list, then the shared list: the last 64 first
    for (void* p : again) smalloc_free(p);
  }).join();
  EXPECT_TRUE(std::is_sorted(again.begin() + kListed, again.begin() + 2 * kListed))
      << "the second 64 reached the shared list in another order than their addresses";
  EXPECT_TRUE(std::is_sorted(again.begin() + 2 * kListed, again.begin() + 3 * kListed))
      << "the first 64 reached the shared list in another order than their addresses";
}

// Takes the free slots of `cls` that threads of earlier tests left in the
// calling thread's slab, until a new slot comes: then what the test frees
// is all the slab has.
std::vector<void*> TakeLeftovers(unsigned cls, size_t size) {
  std::vector<void*> taken{smalloc_malloc(size)};  // the heap exists before its counts are read
  for (auto before = Touched(cls); Touched(cls) == before && taken.size() < 100000;)
    taken.push_back(smalloc_malloc(size));
  return taken;
}

TEST(Reuse, StagedFreeSlotsAreTakenBeforeNewMemory) {
  constexpr int kMany = kListed + 10;  // 10 staged, too few to go to the shared list yet
  const unsigned cls = ClassOfSize(kSixteenKiB);
  std::thread([&] {
    const std::vector<void*> leftovers = TakeLeftovers(cls, kSixteenKiB);
    std::vector<void*> v = AllocateBlocks(kSixteenKiB, kMany);
    for (void* p : v) smalloc_free(p);
    const auto touched = Touched(cls);
    std::vector<void*> again = AllocateBlocks(kSixteenKiB, kMany);
    EXPECT_EQ(Touched(cls), touched) << "new slots were touched while the thread held staged free ones";
    EXPECT_EQ(std::set<void*>(again.begin(), again.end()), std::set<void*>(v.begin(), v.end()));
    for (void* p : again) smalloc_free(p);
    for (void* p : leftovers) smalloc_free(p);
  }).join();
}

// The next thread takes the exited one's slab, and with it what it staged.
TEST(Reuse, StagedFreeSlotsOutliveTheThread) {
  constexpr int kMany = kListed + 10;
  const unsigned cls = ClassOfSize(kSixteenKiB);
  std::vector<void*> first, leftovers, second;
  std::thread([&] {
    leftovers = TakeLeftovers(cls, kSixteenKiB);  // freed only at the end: the slab holds first's slots alone
    first = AllocateBlocks(kSixteenKiB, kMany);
    for (void* p : first) smalloc_free(p);
  }).join();
  std::thread([&] { second = AllocateBlocks(kSixteenKiB, kMany); }).join();
  EXPECT_EQ(std::set<void*>(second.begin(), second.end()), std::set<void*>(first.begin(), first.end()))
      << "slots staged by the exited thread were stranded";
  for (void* p : second) smalloc_free(p);
  for (void* p : leftovers) smalloc_free(p);
}

// What a thread frees of a small class beyond its private list, it takes
// back off its slab's shared list in batches, onto the list (heap.hpp,
// take_used_own): with no new slot touched, and with the counts exact, as
// if each batch had been freed onto the list.
TEST(Reuse, SmallSlotsFreedPastThePrivateListComeBackWithoutNewMemoryAndStayCounted) {
  constexpr size_t kSize = 64;
  constexpr int kMany = 3 * (1 << 20) / 64 + 100;  // the list, two chains of as many staged, 100 more
  const unsigned cls = ClassOfSize(kSize);
  std::thread([&] {
    const std::vector<void*> leftovers = TakeLeftovers(cls, kSize);
    const long long outstanding = Outstanding(cls);
    std::vector<void*> v = AllocateBlocks(kSize, kMany);
    std::shuffle(v.begin(), v.end(), std::mt19937(3));
    for (void* p : v) smalloc_free(p);
    EXPECT_EQ(Outstanding(cls), outstanding);
    const auto touched = Touched(cls);
    for (int round = 0; round < 2; ++round) {
      std::vector<void*> again = AllocateBlocks(kSize, kMany);
      EXPECT_EQ(Touched(cls), touched) << "new slots were touched while the thread's free ones were on the shared list";
      EXPECT_EQ(Outstanding(cls), outstanding + kMany) << "round " << round;
      // (Bar the rest of a run of never-used slots the thread took ahead,
      // counted as touched then: a page's worth at most.)
      const std::set<void*> before(v.begin(), v.end());
      EXPECT_LE(std::count_if(again.begin(), again.end(), [&](void* p) { return !before.count(p); }), 4096 / 64);
      for (void* p : again) smalloc_free(p);
      EXPECT_EQ(Outstanding(cls), outstanding) << "round " << round;
      v = again;
    }
    for (void* p : leftovers) smalloc_free(p);
  }).join();
}

// n blocks of `size` bytes, every byte written (so resident).
std::vector<void*> AllocateTouched(size_t size, int n, int byte) {
  std::vector<void*> v = AllocateBlocks(size, n);
  for (void* p : v) memset(p, byte, size);
  return v;
}

// From the lowest block to `tail` bytes past the start of the highest.
struct Range {
  char* start;
  size_t bytes;
};
Range Spanned(const std::vector<void*>& blocks, size_t tail) {
  const auto [lo, hi] = std::minmax_element(blocks.begin(), blocks.end());
  return {static_cast<char*>(*lo), size_t(static_cast<char*>(*hi) - static_cast<char*>(*lo)) + tail};
}

// Allocates n zeroed blocks of `size` bytes into `out` and returns how many
// of their bytes are not zero.
size_t CallocNonzeroBytes(size_t size, int n, std::vector<void*>& out) {
  size_t nonzero = 0;
  for (int i = 0; i < n; ++i) {
    auto* p = static_cast<char*>(smalloc_calloc(1, size));
    out.push_back(p);
    nonzero += size_t(std::count_if(p, p + size, [](char c) { return c != 0; }));
  }
  return nonzero;
}

// Slots of 4, 8 and 16 MiB: the last one freed of each class stays resident
// (a buffer freed and allocated again in a loop), and only that one.
void ExpectTheLastFreedBufferKeptAndOnlyThatOne(size_t big) {
  const size_t slot = size_t{1} << (64 - __builtin_clzll(big - 1));
  char* a = static_cast<char*>(smalloc_malloc(big));
  char* b = static_cast<char*>(smalloc_malloc(big));
  ASSERT_TRUE(a && b);
  memset(a, 1, big);
  memset(b, 2, big);
  smalloc_free(a);
  EXPECT_GE(ResidentPages(a, slot), big / size_t(sysconf(_SC_PAGESIZE))) << "the freed buffer is kept";
  smalloc_free(b);  // b is kept now, and a given back
  // All but the page that holds its free-list link:
  EXPECT_LE(ResidentPages(a, slot), 1u) << "only one freed buffer stays resident";
  char* again = static_cast<char*>(smalloc_malloc(big));
  EXPECT_EQ(again, b) << "the kept buffer is the next one handed out";
  smalloc_free(again);
  void* zeroed = smalloc_calloc(1, big);  // the kept buffer again: calloc must clear it
  ASSERT_EQ(zeroed, again);
  EXPECT_EQ(std::count(static_cast<char*>(zeroed), static_cast<char*>(zeroed) + big, 0), std::ptrdiff_t(big));
  smalloc_free(zeroed);
  smalloc_malloc_trim(0);  // gives the kept one back too
  EXPECT_LE(ResidentPages(again, slot), 1u);
}

// A thread takes never-used slots a run at a time (up to 64 of this class),
// and hands out the ones it did not use when it exits. Nothing was taken
// from its slab after them: they become never-used again, neither counted
// as touched nor written.
TEST(Reuse, NewSlotsAThreadTookAheadAreUntouchedAgainWhenItExits) {
  constexpr size_t kEight = 8;  // 8-byte slots
  const unsigned cls = ClassOfSize(kEight);
  smalloc_free(smalloc_malloc(kSize));  // the heap is set up (another class)
  // Slots this thread took ahead in earlier tests (its run of 8-byte slots)
  // count as touched but no other thread can take them: they go back first.
  smalloc_malloc_trim(0);
  const auto before = Touched(cls);
  std::vector<void*> first;
  std::thread([&] { first = AllocateBlocks(kEight, 100); }).join();
  EXPECT_EQ(Touched(cls), before + 100) << "the slots taken ahead and not handed out still count as touched";
  // The next thread takes over the slab and the same slots, and they are zero.
  std::vector<void*> second;
  std::thread([&] {
    std::vector<void*> zeroed;
    EXPECT_EQ(CallocNonzeroBytes(kEight, 100, zeroed), 0u);
    second = zeroed;
  }).join();
  std::set<void*> both(first.begin(), first.end());
  both.insert(second.begin(), second.end());
  EXPECT_EQ(both.size(), 200u);
  const auto [lo, hi] = std::minmax_element(both.begin(), both.end());
  EXPECT_EQ(static_cast<char*>(*hi) - static_cast<char*>(*lo), 199 * 8) << "the slots taken ahead were skipped";
  for (void* p : first) smalloc_free(p);
  for (void* p : second) smalloc_free(p);
}

// If the slab's list has changed since (here another thread freed two
// blocks of it, and a third took one of them), the unused slots of the run
// go onto that list instead, and the next allocations take them before any
// new slot.
TEST(Reuse, NewSlotsAThreadTookAheadGoBackOnItsListWhenItExits) {
  constexpr size_t kEight = 8;  // 8-byte slots
  const unsigned cls = ClassOfSize(kEight);
  smalloc_free(smalloc_malloc(kSize));  // the heap is set up (another class)
  // Slots this thread took ahead in earlier tests (its run of 8-byte slots)
  // count as touched but no other thread can take them: they go back first.
  smalloc_malloc_trim(0);
  std::vector<void*> first;
  void* looked = nullptr;
  {
    ParkedThread owner([&] { first = AllocateBlocks(kEight, 100); });
    for (int i = 0; i < 2; ++i) {  // from this thread: onto the owner's slab's list of other threads' frees
      smalloc_free(first.back());
      first.pop_back();
    }
    // A new thread looks at the other slabs before it takes new memory:
    // it moves those two onto the owner's list and takes one.
    std::thread([&] { looked = smalloc_malloc(kEight); }).join();
  }
  const auto touched = Touched(cls);
  EXPECT_GT(touched, 100u) << "no slots were taken ahead: this test proves nothing";
  std::vector<void*> second;
  std::thread([&] { second = AllocateBlocks(kEight, int(touched) - 99); }).join();
  EXPECT_EQ(Touched(cls), touched) << "new slots were taken while the exited thread's run was free";
  std::set<void*> both(first.begin(), first.end());
  both.insert(looked);
  both.insert(second.begin(), second.end());
  EXPECT_EQ(both.size(), size_t(touched)) << "a slot was handed out twice";
  for (void* p : first) smalloc_free(p);
  for (void* p : second) smalloc_free(p);
  smalloc_free(looked);
}

TEST(Reuse, TheLastFreedFourMiBBufferIsKeptResidentAndOnlyThatOne) {
  ExpectTheLastFreedBufferKeptAndOnlyThatOne(size_t{3} << 20);
}
TEST(Reuse, TheLastFreedEightMiBBufferIsKeptResidentAndOnlyThatOne) {
  ExpectTheLastFreedBufferKeptAndOnlyThatOne(size_t{6} << 20);
}
TEST(Reuse, TheLastFreedSixteenMiBBufferIsKeptResidentAndOnlyThatOne) {
  ExpectTheLastFreedBufferKeptAndOnlyThatOne(size_t{12} << 20);
}

// Past 16 MiB nothing is kept: what the kept slots hold resident is bounded.
TEST(Reuse, AFreedBufferOfMoreThanSixteenMiBGoesBack) {
  constexpr size_t kHuge = size_t{24} << 20;  // the 32 MiB class
  char* p = static_cast<char*>(smalloc_malloc(kHuge));
  ASSERT_NE(p, nullptr);
  memset(p, 3, kHuge);
  smalloc_free(p);
  EXPECT_LE(ResidentPages(p, size_t{32} << 20), 1u);
}

// A fork child inherits none of the parent's other threads: their slabs must
// be free for the child's threads, and the slots on their private lists found
// again before new memory is touched. The child reports by exit status.
TEST(Reuse, AForkChildTakesOverWhatThreadsThatDidNotFollowLeft) {
  constexpr size_t kListed = 3000;  // 3 KiB slots: no other test here uses them
  constexpr size_t kProbe = 100;    // 128-byte slots: idem
  constexpr int kThreads = 8, kEach = 200;  // 800 KiB each: all on the thread's private list
  smalloc_free(smalloc_malloc(kProbe));
  std::vector<std::unique_ptr<ParkedThread>> parked;
  for (int t = 0; t < kThreads; ++t)
    parked.push_back(std::make_unique<ParkedThread>([] {
      for (void* p : AllocateBlocks(kListed, kEach)) smalloc_free(p);
    }));
  void* probe = smalloc_malloc(kListed);
  const unsigned listed_cls = ClassOf(probe);
  smalloc_free(probe);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    auto s = std::make_unique<smalloc_stats>();
    auto touched = [&](unsigned cls) { return smalloc_stats_snapshot(s.get()) == 0 ? s->classes[cls].touched : 0; };
    int failures = 0;
    const unsigned long long before = touched(listed_cls);
    std::vector<void*> blocks;
    for (int i = 0; i < kThreads * kEach; ++i) blocks.push_back(smalloc_malloc(kListed));
    if (touched(listed_cls) - before > kThreads) failures |= 1;  // the stranded slots were not found
    // Every slab but this thread's is free again: 63 threads alive at once
    // each get one of their own.
    void* mine = smalloc_malloc(kProbe);
    const unsigned probe_cls = ClassOf(mine);
    std::barrier all_hold(SMALLOC_SLABS_PER_CLASS);
    std::barrier counted(SMALLOC_SLABS_PER_CLASS);
    std::vector<std::thread> threads;
    for (int t = 1; t < SMALLOC_SLABS_PER_CLASS; ++t)
      threads.emplace_back([&] {
        void* p = smalloc_malloc(kProbe);
        all_hold.arrive_and_wait();
        counted.arrive_and_wait();
        smalloc_free(p);
      });
    all_hold.arrive_and_wait();
    int slabs_used = 0;
    if (smalloc_stats_snapshot(s.get()) == 0)
      for (const smalloc_slab_stats& slab : s->classes[probe_cls].slabs) slabs_used += slab.in_use > 0;
    if (slabs_used != SMALLOC_SLABS_PER_CLASS) failures |= 2;  // some threads had to share a slab
    counted.arrive_and_wait();
    for (auto& t : threads) t.join();
    _exit(failures);
  }
  const int status = ChildExitStatus(pid);
  ASSERT_GE(status, 0) << "the child did not exit normally";
  EXPECT_EQ(status & 1, 0) << "the child touched new memory while the private lists of the threads "
                              "that did not follow it held free slots";
  EXPECT_EQ(status & 2, 0) << "the slabs of threads that did not follow were not free in the child";
}

// All free: every page of the slab goes back, and the slots come out again
// in the same places, zero-filled, without counting as newly touched.
// (Touched counts the never-used slots a thread takes in a run beyond the
// last one it handed out too: fewer than a run, 64 slots of this class.)
TEST(Trim, ASlabWhoseSlotsAreAllFreeGivesBackEveryPage) {
  constexpr size_t kSmall = 50;  // 64-byte slots: no other test here uses them
  constexpr int kMany = 1 << 18;  // 16 MiB of slots
  constexpr unsigned long long kRun = 64;
  const unsigned cls = ClassOfSize(kSmall);
  smalloc_free(smalloc_malloc(1));  // the heap is set up (another class)
  const auto before = Touched(cls);
  std::vector<void*> blocks = AllocateTouched(kSmall, kMany, 0xa5);
  const auto [start, span] = Spanned(blocks, 64);
  const size_t pages = span / size_t(sysconf(_SC_PAGESIZE));
  EXPECT_GE(ResidentPages(start, span), pages - 1);
  for (void* p : blocks) smalloc_free(p);  // 1 MiB on the private list, the rest shared
  EXPECT_EQ(smalloc_malloc_trim(0), 1);
  EXPECT_EQ(ResidentPages(start, span), 0u);
  EXPECT_EQ(Touched(cls), before) << "slots the trim gave back still count as touched";
  std::vector<void*> again;
  EXPECT_EQ(CallocNonzeroBytes(kSmall, kMany, again), 0u);
  EXPECT_EQ(std::set<void*>(again.begin(), again.end()), std::set<void*>(blocks.begin(), blocks.end()));
  EXPECT_GE(Touched(cls), before + kMany) << "slots handed out again were not counted as touched";
  EXPECT_LT(Touched(cls), before + kMany + kRun);
  for (void* p : again) smalloc_free(p);
}

// Only the free pages at the top go back; the blocks still in use below keep
// their contents, the free slots among them are handed out first, and no slot
// is handed out twice.
TEST(Trim, OnlyTheFreeTopOfASlabGoesBackAndLiveBlocksKeepTheirBytes) {
  constexpr size_t kMid = 400;  // 512-byte slots: no other test here uses them
  constexpr int kHalf = 20000;  // 10 MiB of slots in each half
  std::vector<void*> blocks = AllocateBlocks(kMid, 2 * kHalf);
  std::sort(blocks.begin(), blocks.end());
  for (size_t i = 0; i < blocks.size(); ++i) memset(blocks[i], int(i % 251), kMid);
  std::set<void*> freed;
  for (int i = 0; i < 2 * kHalf; ++i) {
    if (i >= kHalf || i % 2 == 1) {
      smalloc_free(blocks[i]);
      freed.insert(blocks[i]);
    }
  }
  EXPECT_EQ(smalloc_malloc_trim(0), 1);
  char* const top = static_cast<char*>(blocks[kHalf]) + size_t(sysconf(_SC_PAGESIZE));  // past the shared page
  EXPECT_EQ(ResidentPages(top, size_t(static_cast<char*>(blocks.back()) - top)), 0u);
  size_t damaged = 0;
  for (int i = 0; i < kHalf; i += 2)
    damaged += std::count_if(static_cast<char*>(blocks[i]), static_cast<char*>(blocks[i]) + kMid,
                             [&](char c) { return c != char(i % 251); });
  EXPECT_EQ(damaged, 0u);
  std::vector<void*> again;
  for (size_t i = 0; i < freed.size(); ++i) again.push_back(smalloc_malloc(kMid));
  EXPECT_EQ(std::set<void*>(again.begin(), again.end()), freed) << "a free slot was lost or a live one reused";
  EXPECT_TRUE(std::is_sorted(again.begin(), again.begin() + kHalf / 2)) << "the kept free slots go back in order";
  for (void* p : again) smalloc_free(p);
  for (int i = 0; i < kHalf; i += 2) smalloc_free(blocks[i]);
}

// Without malloc_trim: a thread that frees much of one size and then touches
// more than 32 MiB of new memory in another gives the first back on the way.
TEST(Trim, GrowingInOneClassGivesBackWhatAnotherFreed) {
  constexpr size_t kTiny = 24;     // 32-byte slots: no other test here uses them
  constexpr int kMany = 1 << 15;   // 1 MiB of slots: a list within the automatic trim's budget
  constexpr size_t kPage6 = 6000;  // 6 KiB slots, a page and a half: idem
  constexpr int kGrow = 12000;     // 72 MiB of new slots
  std::vector<void*> tiny = AllocateTouched(kTiny, kMany, 0x3c);
  const auto [start, span] = Spanned(tiny, 32);
  for (void* p : tiny) smalloc_free(p);
  EXPECT_GE(ResidentPages(start, span), span / size_t(sysconf(_SC_PAGESIZE)) - 1) << "nothing given back yet";
  std::vector<void*> grown = AllocateTouched(kPage6, kGrow, 0x5d);
  EXPECT_EQ(ResidentPages(start, span), 0u) << "the freed slots' pages were not given back while the heap grew";
  for (void* p : grown) smalloc_free(p);
}

// The same when the growth is in blocks of the classes whose last freed slot
// is kept (4 to 16 MiB), which allocate off the fast path: their new slots
// count towards the automatic trim too.
TEST(Trim, GrowingInLargeBlocksGivesBackWhatAnotherClassFreed) {
  constexpr size_t kTiny = 24;  // 32-byte slots
  constexpr int kMany = 1 << 15;
  std::vector<void*> tiny = AllocateTouched(kTiny, kMany, 0x3c);
  const auto [start, span] = Spanned(tiny, 32);
  for (void* p : tiny) smalloc_free(p);
  std::vector<void*> grown = AllocateBlocks(size_t{6} << 20, 6);  // 48 MiB of new 8 MiB slots
  EXPECT_EQ(ResidentPages(start, span), 0u) << "growth in 8 MiB slots did not run the automatic trim";
  for (void* p : grown) smalloc_free(p);
}

// The walk is a cache miss per slot: an automatic trim walks at most its
// budget (2^16 slots) rather than stall one malloc for a long list, and the
// next one goes on from where it stopped. Here the list has two budgets'
// worth, and the thread takes 32 MiB of new slots (one automatic trim) at a
// time.
TEST(Trim, AListLongerThanTheBudgetIsTrimmedABudgetAtATime) {
  constexpr size_t kSixteen = 16;  // 16-byte slots: no other test here uses them
  // A list of two budgets' worth, with the never-used slots the thread took
  // beyond the last block it allocated (fewer than 64), which go back to the
  // list with its private list when the first trim begins.
  constexpr int kMany = (1 << 17) - 64;
  constexpr size_t kBig = 16000;   // 16 KiB slots: idem
  constexpr int kGrow = 2048;      // 32 MiB of new slots
  std::vector<void*> small = AllocateTouched(kSixteen, kMany, 0x11);
  const auto [start, span] = Spanned(small, 16);
  const size_t pages = span / size_t(sysconf(_SC_PAGESIZE));
  for (void* p : small) smalloc_free(p);
  std::vector<void*> grown = AllocateTouched(kBig, kGrow, 0x22);
  EXPECT_GE(ResidentPages(start, span), pages - 1) << "one automatic trim walked more than its budget";
  std::vector<void*> more = AllocateTouched(kBig, kGrow, 0x33);
  EXPECT_EQ(ResidentPages(start, span), 0u) << "the second automatic trim did not finish what the first began";
  for (void* p : grown) smalloc_free(p);
  for (void* p : more) smalloc_free(p);
}

// What a trim cut short holds off the list goes back as soon as a thread
// would otherwise take a never-used slot of that class: it is free memory.
TEST(Trim, SlotsAWalkCutShortHoldsGoBackBeforeNewMemory) {
  constexpr size_t kSixteen = 16;  // 16-byte slots
  constexpr int kMany = 1 << 17;
  constexpr size_t kBig = 16000;  // 16 KiB slots
  constexpr int kGrow = 2048;
  for (void* p : AllocateTouched(kSixteen, kMany, 0x11)) smalloc_free(p);
  std::vector<void*> grown = AllocateTouched(kBig, kGrow, 0x22);  // the first half walked, and held
  const auto touched = Touched(ClassOfSize(kSixteen));
  std::vector<void*> again = AllocateBlocks(kSixteen, kMany);
  EXPECT_EQ(Touched(ClassOfSize(kSixteen)), touched) << "new slots were taken while a trim held free ones";
  EXPECT_EQ(std::set<void*>(again.begin(), again.end()).size(), again.size());
  for (void* p : again) smalloc_free(p);
  for (void* p : grown) smalloc_free(p);
}

// Automatic trims cut short and taken up again while other threads take
// and free slots of that very list, and take new ones of its class (which
// puts the held part back): every block keeps its bytes, no slot is handed
// out twice, and none is lost: once all are free, the slab trims to nothing.
TEST(Trim, AWalkCutShortWhileThreadsAllocateLosesNothing) {
  constexpr size_t kSmall = 24;  // 32-byte slots
  const unsigned cls = ClassOfSize(kSmall);
  constexpr size_t kBig = 16000;  // 16 KiB slots: new slots, never touched
  std::thread([&] {
    for (void* p : AllocateBlocks(kSmall, 300000)) smalloc_free(p);  // shared once the thread exits
  }).join();
  std::atomic<bool> stop{false};
  std::atomic<long> damaged{0}, rounds{0};
  std::mutex swap_lock;
  std::vector<void*> swapped;  // each batch is freed by another thread: onto the shared lists
  auto work = [&](unsigned seed) {
    std::vector<void*> batch;
    while (!stop.load()) {
      batch = AllocateBlocks(kSmall, 3000 + int(seed % 7) * 500);
      for (size_t i = 0; i < batch.size(); ++i) memset(batch[i], int((seed + i) % 251), kSmall);
      for (size_t i = 0; i < batch.size(); ++i)
        damaged += std::count_if(static_cast<char*>(batch[i]), static_cast<char*>(batch[i]) + kSmall,
                                 [&](char c) { return c != char((seed + i) % 251); });
      damaged += long(batch.size() - std::set<void*>(batch.begin(), batch.end()).size());
      {
        std::lock_guard<std::mutex> hold(swap_lock);
        swapped.swap(batch);
      }
      for (void* p : batch) smalloc_free(p);
      ++rounds;
    }
  };
  std::vector<std::thread> workers;
  for (unsigned t = 0; t < 3; ++t) workers.emplace_back(work, t * 37);
  std::vector<std::vector<void*>> grown;
  for (int chunk = 0; chunk < 12; ++chunk) {
    grown.push_back(AllocateBlocks(kBig, 2048));  // 32 MiB of new slots: an automatic trim
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  stop = true;
  for (auto& t : workers) t.join();
  for (void* p : swapped) smalloc_free(p);
  EXPECT_EQ(damaged.load(), 0);
  EXPECT_GT(rounds.load(), 3);
  for (auto& g : grown)
    for (void* p : g) smalloc_free(p);
  smalloc_malloc_trim(0);
  EXPECT_EQ(Outstanding(cls), 0);
  EXPECT_EQ(Touched(cls), 0u) << "a free slot went missing: the top of its slab could not be given back";
}

// malloc_trim gives back more than the free top of a slab: every free slot
// larger than a page below it keeps only the page that holds its link (and
// that even when nothing was freed since an automatic trim walked the list,
// but not again when nothing was freed since malloc_trim did). Live blocks keep
// their bytes, and the freed slots come back zero-filled by calloc.
TEST(Trim, MallocTrimGivesBackAllButTheFirstPageOfEveryFreeSlot) {
  constexpr size_t kBlock = 40000;  // 48 KiB slots, 12 pages each: no other test here uses them
  constexpr int kCount = 200;
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  std::vector<void*> blocks = AllocateTouched(kBlock, kCount, 0x6b);
  std::vector<void*> freed;
  for (int i = 0; i < kCount; ++i)
    if (i % 10 != 9) {  // the last one stays: none of these is at the top
      smalloc_free(blocks[i]);
      freed.push_back(blocks[i]);
    }
  // 32 MiB of new slots: an automatic trim walks the list first, and gives
  // back no such pages (one call per slot would stall that malloc).
  std::vector<void*> grown = AllocateBlocks(16000, 2048);
  size_t resident = 0;
  for (void* p : freed) resident += ResidentPages(p, kBlock);
  EXPECT_GT(resident, freed.size());
  smalloc_malloc_trim(0);  // no news since: walked again all the same
  resident = 0;
  for (void* p : freed) resident += ResidentPages(p, kBlock);
  EXPECT_LE(resident, freed.size()) << "free slots kept more than their first page";
  // Nothing freed since: nothing more to give back, and no walk again (a
  // program calling malloc_trim every second paid 13 ms a call for this heap).
  EXPECT_EQ(smalloc_malloc_trim(0), 0);
  size_t damaged = 0;
  for (int i = 9; i < kCount; i += 10) {
    EXPECT_EQ(ResidentPages(blocks[i], kBlock), (kBlock + page - 1) / page);
    damaged += size_t(std::count_if(static_cast<char*>(blocks[i]), static_cast<char*>(blocks[i]) + kBlock,
                                    [](char c) { return c != char(0x6b); }));
  }
  EXPECT_EQ(damaged, 0u);
  std::vector<void*> again;
  EXPECT_EQ(CallocNonzeroBytes(kBlock, int(freed.size()), again), 0u);
  EXPECT_EQ(std::set<void*>(again.begin(), again.end()), std::set<void*>(freed.begin(), freed.end()));
  for (void* p : again) smalloc_free(p);
  for (int i = 9; i < kCount; i += 10) smalloc_free(blocks[i]);
  for (void* p : grown) smalloc_free(p);
}

// Locked pages cannot be discarded: trimming must then keep the slots as
// used ones, which calloc clears, not call them untouched (and so zero).
TEST(Trim, LockedPagesAreKeptAndCallocStillClears) {
  constexpr size_t kLarge = 20000;  // 24 KiB slots: no other test here uses them
  constexpr int kCount = 40;
  std::vector<void*> blocks = AllocateTouched(kLarge, kCount, 0xee);
  const auto [start, span] = Spanned(blocks, kLarge);
  if (mlock(start, span) != 0) GTEST_SKIP() << "mlock of " << span << " bytes refused: " << strerror(errno);
  for (void* p : blocks) smalloc_free(p);
  smalloc_malloc_trim(0);
  std::vector<void*> again;
  EXPECT_EQ(CallocNonzeroBytes(kLarge, kCount, again), 0u);
  munlock(start, span);
  for (void* p : again) smalloc_free(p);
}

// Pages the kernel kept (locked) when malloc_trim asked go on the next call
// once unlocked: a trim that could not give everything back is not taken as
// done (which would skip the list until something more is freed into it).
TEST(Trim, PagesTheKernelKeptGoBackOnTheNextMallocTrim) {
  constexpr size_t kBlock = 70000;  // 96 KiB slots: no other test here uses them
  constexpr int kCount = 40;
  std::vector<void*> blocks = AllocateTouched(kBlock, kCount, 0x3c);
  const auto [start, span] = Spanned(blocks, kBlock);
  if (mlock(start, span) != 0) GTEST_SKIP() << "mlock of " << span << " bytes refused: " << strerror(errno);
  std::vector<void*> freed;
  for (int i = 0; i < kCount; ++i)
    if (i % 10 != 9) {
      smalloc_free(blocks[i]);
      freed.push_back(blocks[i]);
    }
  smalloc_malloc_trim(0);  // the kernel keeps every page
  munlock(start, span);
  EXPECT_EQ(smalloc_malloc_trim(0), 1);
  size_t resident = 0;
  for (void* p : freed) resident += ResidentPages(p, kBlock);
  EXPECT_LE(resident, freed.size()) << "free slots kept more than their first page";
  for (int i = 9; i < kCount; i += 10) smalloc_free(blocks[i]);
}

// Slots freed while a malloc_trim holds their list go back in front of it
// unwalked: the next malloc_trim must walk them, not take the list as trimmed.
TEST(Trim, SlotsFreedDuringAMallocTrimAreTrimmedByTheNext) {
  constexpr size_t kBlock = 200000;  // 256 KiB slots: no other test here uses them
  constexpr int kCount = 1000, kLate = 200;
  std::atomic<int> phase{0};
  std::vector<void*> late;
  std::thread freer([&] {
    std::vector<void*> blocks = AllocateTouched(kBlock, kCount, 0x77);
    std::vector<int> order;  // every tenth stays live: no free top to give back whole
    for (int i = 0; i < kCount; ++i)
      if (i % 10 != 9) order.push_back(i);
    std::shuffle(order.begin(), order.end(), std::mt19937(5));
    const size_t early = order.size() - kLate;
    for (size_t k = 0; k < early; ++k) smalloc_free(blocks[order[k]]);
    phase = 1;
    while (phase.load() != 2) std::this_thread::yield();
    for (size_t k = early; k < order.size(); ++k) {  // one by one, while the main thread trims
      smalloc_free(blocks[order[k]]);
      late.push_back(blocks[order[k]]);
      std::this_thread::sleep_for(std::chrono::microseconds(300));
    }
    phase = 3;
    while (phase.load() != 4) std::this_thread::yield();
    for (int i = 9; i < kCount; i += 10) smalloc_free(blocks[i]);
  });
  while (phase.load() != 1) std::this_thread::yield();
  smalloc_malloc_trim(0);
  phase = 2;
  int trims = 0;
  do {
    smalloc_malloc_trim(0);
    ++trims;
  } while (phase.load() != 3);
  smalloc_malloc_trim(0);
  size_t kept = 0;
  for (void* p : late) kept += ResidentPages(p, kBlock) > 1;
  EXPECT_EQ(kept, 0u) << "of " << late.size() << " slots freed during " << trims << " trims";
  phase = 4;
  freer.join();
}

// Allocates `count` blocks of `size`, fills each with a byte of its own,
// runs `meanwhile`, frees them and returns how many bytes changed plus how
// many blocks were handed out twice.
template <class Fn>
long FillRunAndCheck(size_t size, int count, unsigned seed, Fn meanwhile) {
  std::vector<void*> batch = AllocateBlocks(size, count);
  for (int i = 0; i < count; ++i) memset(batch[i], int((seed + i) % 251), size);
  meanwhile();
  long damaged = long(batch.size() - std::set<void*>(batch.begin(), batch.end()).size());
  for (int i = 0; i < count; ++i)
    damaged += std::count_if(static_cast<char*>(batch[i]), static_cast<char*>(batch[i]) + size,
                             [&](char c) { return c != char((seed + i) % 251); });
  for (void* p : batch) smalloc_free(p);
  return damaged;
}

// Trimming while other threads allocate, free and fail over into the slab
// being trimmed: every block keeps its bytes and no slot is handed out twice.
TEST(Trim, TrimmingWhileThreadsAllocateLosesNothing) {
  constexpr size_t kMid = 400;
  constexpr int kWorkers = 4, kBatch = 4000;
  std::atomic<bool> stop{false};
  std::atomic<long> damaged{0}, rounds{0};
  auto work = [&](unsigned seed) {
    while (!stop.load()) {
      damaged += FillRunAndCheck(kMid, kBatch, seed, [] {});
      ++rounds;
    }
  };
  std::vector<std::thread> workers;
  for (unsigned t = 0; t < kWorkers; ++t) workers.emplace_back(work, t * 37);
  int released = 0;
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(1500);
  while (std::chrono::steady_clock::now() < until) {
    std::vector<void*> mine = AllocateBlocks(kMid, kBatch);  // the main thread's own slab fills, empties, is trimmed
    for (void* p : mine) smalloc_free(p);
    released += smalloc_malloc_trim(0);
  }
  stop = true;
  for (auto& t : workers) t.join();
  EXPECT_EQ(damaged.load(), 0);
  EXPECT_GT(rounds.load(), kWorkers);
  EXPECT_GT(released, 0);
  // Everything of the class is free now (the workers' private lists went back
  // when they exited): a slot lost while the lists were taken apart would
  // keep the top of its slab from being given back.
  smalloc_malloc_trim(0);
  EXPECT_EQ(Touched(ClassOfSize(kMid)), 0u);
  EXPECT_EQ(Outstanding(ClassOfSize(kMid)), 0) << "the counts missed slots handed from a private list back to the shared ones";
}

// malloc_trim from several threads at once: one trims, the others wait
// asleep for it (and wake when it is done: a lost wake-up hangs here), and
// no block is damaged or handed out twice meanwhile.
TEST(Trim, ThreadsCallingMallocTrimAtOnceAllReturnAndLoseNothing) {
  constexpr size_t kMid = 400;
  constexpr int kWorkers = 4, kBatch = 2000, kRounds = 200;
  std::atomic<long> damaged{0};
  auto work = [&](unsigned seed) {
    for (int r = 0; r < kRounds; ++r)
      damaged += FillRunAndCheck(kMid, kBatch, seed, [] { smalloc_malloc_trim(0); });
  };
  std::vector<std::thread> workers;
  for (unsigned t = 0; t < kWorkers; ++t) workers.emplace_back(work, t * 41);
  for (auto& t : workers) t.join();  // (a lost wake-up never gets past here)
  EXPECT_EQ(damaged.load(), 0);
}

// With every slab owned, a new thread shares one. It too must take free
// slots that other slabs hold before touching new memory in its own: a
// server of 128 threads otherwise grew to 4x the memory of one of 64.
TEST(Reuse, AThreadThatSharesASlabTakesFreeSlotsOfOthersBeforeNewMemory) {
  smalloc_free(smalloc_malloc(1));  // the main thread takes its slab first
  std::vector<std::unique_ptr<ParkedThread>> owners;
  for (int t = 1; t < SMALLOC_SLABS_PER_CLASS; ++t)
    owners.push_back(std::make_unique<ParkedThread>([] { smalloc_free(smalloc_malloc(1)); }));
  std::vector<void*> blocks = AllocateBlocks(kSize, kBlocks);
  const unsigned cls = ClassOf(blocks[0]);
  // The first sharer frees them: onto the main thread's slab's shared list.
  std::thread([&] {
    for (void* p : blocks) smalloc_free(p);
  }).join();
  const auto touched = Touched(cls);
  std::vector<void*> again;
  std::thread([&] { again = AllocateBlocks(kSize, kBlocks); }).join();  // the second shares another slab
  EXPECT_EQ(Touched(cls), touched) << "a thread sharing a slab took new slots while others' free ones waited";
  EXPECT_EQ(std::set<void*>(again.begin(), again.end()), std::set<void*>(blocks.begin(), blocks.end()));
  for (void* p : again) smalloc_free(p);
}

// In a fork child, the slots that threads which did not follow it took
// ahead go back as their other slots do: here, untouched again.
TEST(Reuse, AForkChildGetsBackTheNewSlotsItsDeadThreadsTookAhead) {
  constexpr size_t kEight = 8;  // 8-byte slots
  const unsigned cls = ClassOfSize(kEight);
  smalloc_free(smalloc_malloc(kSize));  // the heap is set up (another class)
  // Slots this thread took ahead in earlier tests (its run of 8-byte slots)
  // count as touched but no other thread can take them: they go back first.
  smalloc_malloc_trim(0);
  ParkedThread parked([] { AllocateBlocks(kEight, 100); });  // kept: never freed
  ASSERT_GT(Touched(cls), 100u) << "no slots were taken ahead: this test proves nothing";
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    void* p = smalloc_malloc(kEight);  // the first of the class in the child: one new slot
    _exit(p != nullptr && Touched(cls) == 101 ? 0 : 1);
  }
  const int status = ChildExitStatus(pid);
  ASSERT_GE(status, 0) << "the child did not exit normally";
  EXPECT_EQ(status, 0) << "the slots a dead thread took ahead were stranded in the fork child";
}

// What a thread that did not follow a fork had staged (freed beyond its
// private list, not yet on the shared list) is bits in its slab's part of
// the staged bitmap: the child gets those slots back, with the ones the
// thread had handed to the shared list, before it touches new memory.
TEST(Reuse, AForkChildLosesNoneOfTheSlotsItsDeadThreadsHadStaged) {
  const unsigned cls = ClassOfSize(kSixteenKiB);
  constexpr int kMany = 3 * kListed + kListed / 2;
  std::vector<void*> blocks;
  ParkedThread parked([&] {
    const std::vector<void*> leftovers = TakeLeftovers(cls, kSixteenKiB);  // kept: the slab holds only these then
    blocks = AllocateBlocks(kSixteenKiB, kMany);
    // 64 listed, 64 and 64 to the shared list, and last every 7th block
    // staged: the 32 staged ones spread over the words the others use.
    std::vector<void*> order;
    for (int i = 0; i < kMany; ++i)
      if (i % 7 != 3 || i / 7 >= kListed / 2) order.push_back(blocks[i]);
    for (int i = 0; i < kListed / 2; ++i) order.push_back(blocks[7 * i + 3]);
    for (void* p : order) smalloc_free(p);
  });
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    int failures = 0;
    // The child's first new thread: the dead thread's slab, if it is free.
    std::thread([&] {
      std::vector<void*> mine = AllocateBlocks(kSixteenKiB, 2 * kListed);  // the two chains
      for (void* p : mine) smalloc_free(p);  // 64 listed, 64 staged and handed off
    }).join();  // its list goes back to the shared list
    // The next one takes the same slab, its free slots, and then (for the
    // first slot it would otherwise take new) the dead thread's.
    std::thread([&] {
      const auto touched = Touched(cls);
      std::vector<void*> again = AllocateBlocks(kSixteenKiB, kMany);
      if (Touched(cls) != touched) failures |= 1;
      if (std::set<void*>(again.begin(), again.end()) != std::set<void*>(blocks.begin(), blocks.end())) failures |= 2;
    }).join();
    _exit(failures);
  }
  const int status = ChildExitStatus(pid);
  ASSERT_GE(status, 0) << "the child did not exit normally";
  EXPECT_EQ(status, 0) << "free slots were lost in the fork child (1: new ones touched, 2: not the same slots)";
}

// The slab of a thread that did not follow a fork, and had staged slots, is
// not given to a thread of the child until they are adopted: the new owner
// would stage into the same words of the bitmap as a thread adopting them
// clears. Unless every other slab is taken: then they are adopted at once.
TEST(Reuse, AForkChildKeepsADeadThreadsSlabWithStagedSlotsUntilTheyAreAdopted) {
  constexpr size_t kProbe = 100;  // 128-byte slots
  const unsigned probe_cls = ClassOfSize(kProbe);
  smalloc_free(smalloc_malloc(kSize));  // this thread has a slab, which its child keeps
  void* kept = nullptr;
  ParkedThread parked([&] {
    kept = smalloc_malloc(kProbe);  // marks the slab as this thread's
    for (void* p : AllocateBlocks(kSixteenKiB, kListed + 10)) smalloc_free(p);  // 64 listed, 10 staged
  });
  const smalloc_class_stats before = ClassStats(probe_cls);
  int dead_slab = -1;
  for (int s = 0; s < SMALLOC_SLABS_PER_CLASS; ++s)
    if (before.slabs[s].in_use == 1) dead_slab = s;
  ASSERT_GE(dead_slab, 0);
  ASSERT_EQ(before.in_use, 1u) << "this test needs the only 128-byte block";
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    int failures = 0;
    // 63 new threads: 62 slabs free, and the held one.
    std::barrier first_holds(2), all_hold(SMALLOC_SLABS_PER_CLASS), counted(SMALLOC_SLABS_PER_CLASS);
    std::vector<std::thread> threads;
    auto holder = [&](bool first) {
      void* p = smalloc_malloc(kProbe);
      if (first) first_holds.arrive_and_wait();
      all_hold.arrive_and_wait();
      counted.arrive_and_wait();
      smalloc_free(p);
    };
    threads.emplace_back(holder, true);
    first_holds.arrive_and_wait();
    smalloc_class_stats c = ClassStats(probe_cls);
    if (c.slabs[dead_slab].in_use != 1 || c.in_use != 2) failures |= 1;  // the first new thread took the dead one's slab
    // 62 more: one more than the free slabs.
    for (int t = 2; t < SMALLOC_SLABS_PER_CLASS; ++t) threads.emplace_back(holder, false);
    all_hold.arrive_and_wait();
    c = ClassStats(probe_cls);
    // One slab per thread, the held one's beside its dead thread's block,
    // and none in this thread's (where one sharing would land, or elsewhere).
    int alone = 0;
    for (int s = 0; s < SMALLOC_SLABS_PER_CLASS; ++s) alone += c.slabs[s].in_use == 1;
    if (c.slabs[dead_slab].in_use != 2 || alone != SMALLOC_SLABS_PER_CLASS - 2) failures |= 2;
    counted.arrive_and_wait();
    for (auto& t : threads) t.join();
    _exit(failures);
  }
  const int status = ChildExitStatus(pid);
  ASSERT_GE(status, 0) << "the child did not exit normally";
  EXPECT_EQ(status & 1, 0) << "a new thread took the slab whose dead thread's staged slots were not adopted";
  EXPECT_EQ(status & 2, 0) << "with every other slab taken, the held one was not given out";
  smalloc_free(kept);
}

// A fork child gets the free slots of the threads that did not follow it
// when it needs them, not in the fork handler: handing a slot back writes
// into it, a copy-on-write fault per page, which a child that only execs
// should not pay. Four threads hold 1 MiB each on their private lists here:
// 1024 pages.
TEST(Reuse, AForkChildWritesIntoNoneOfTheSlotsItsDeadThreadsHeld) {
  std::vector<std::unique_ptr<ParkedThread>> parked;
  for (int t = 0; t < 4; ++t)
    parked.push_back(std::make_unique<ParkedThread>([] {
      for (void* p : AllocateBlocks(kSize, (1 << 20) / 256)) smalloc_free(p);
    }));
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);  // the child's count starts at the fork, before the handlers ran
    _exit(u.ru_minflt < 256 ? 0 : 1);
  }
  const int status = ChildExitStatus(pid);
  ASSERT_GE(status, 0) << "the child did not exit normally";
  EXPECT_EQ(status, 0) << "the fork handler faulted in pages of the dead threads' free slots";
}

// The fork handler of a child with nothing to take over writes next to
// nothing: a shell forks for every subshell, and most children only exec.
// It reset a word in each of the 65 statistics rows, a page apart: 65 page
// faults in every child (a bash loop of subshells ran 1.9x glibc's time).
TEST(Reuse, AForkChildThatOnlyExitsTouchesFewPages) {
  smalloc_free(smalloc_malloc(kSize));
  ClassStats(ClassOfSize(kSize));  // a snapshot: every row has been read
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);  // counted from the fork, the handlers included
    // Some 20 alone, 40 after this binary's other tests (glibc's own: 16);
    // the rows' 65 came on top.
    _exit(u.ru_minflt < 60 ? 0 : 1);
  }
  const int status = ChildExitStatus(pid);
  ASSERT_GE(status, 0) << "the child did not exit normally";
  EXPECT_EQ(status, 0) << "the fork handler touched a page per statistics row, or more";
}

// A fork taken while another thread trims a slab, whose free list is off its
// head meanwhile, must leave the child every free slot: fork waits for the
// trim. Here a thread trims over and over a list of 200,000 slots (each trim
// takes milliseconds), and the main thread forks into it. Not into its
// free(): a fork there may lose the slot being freed in the child (a limit
// heap.cpp documents), which is not what this tests; `freeing` keeps the
// fork out of it.
TEST(Trim, AForkDuringATrimLeavesTheChildEveryFreeSlot) {
  constexpr size_t kSmall = 24;  // 32-byte slots
  const unsigned cls = ClassOfSize(kSmall);
  std::vector<void*> pool;
  std::thread([&] {
    std::vector<void*> v = AllocateBlocks(kSmall, 200000);
    pool = AllocateBlocks(kSmall, 20000);
    for (void* p : v) smalloc_free(p);  // all on its slab's shared list once it exits
  }).join();
  std::atomic<bool> stop{false};
  std::mutex freeing;
  std::thread trimmer([&] {
    for (size_t i = 0; !stop.load() && i < pool.size(); ++i) {
      {
        std::lock_guard<std::mutex> hold(freeing);
        smalloc_free(pool[i]);  // news for that slab's list, so the trim takes it again
        pool[i] = nullptr;
      }
      smalloc_malloc_trim(0);
    }
  });
  int failures = 0;
  for (int round = 0; round < 20; ++round) {
    std::this_thread::sleep_for(std::chrono::microseconds(500 + 250 * round));
    std::unique_lock<std::mutex> no_free(freeing);
    const pid_t pid = fork();
    no_free.unlock();  // in the child too: this thread holds it there
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      alarm(20);
      smalloc_malloc_trim(0);  // this thread's own slots go to the shared lists too
      const long long free_slots = (long long)Touched(cls) - Outstanding(cls);
      const auto touched = Touched(cls);
      // A new thread: no private list, and it looks in other slabs at once.
      std::thread([&] { AllocateBlocks(kSmall, int(free_slots)); }).join();
      _exit(Touched(cls) == touched ? 0 : 1);
    }
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status)) << "status " << status;
    failures += WEXITSTATUS(status);
  }
  stop = true;
  trimmer.join();
  for (void* p : pool) smalloc_free(p);
  EXPECT_EQ(failures, 0) << "children that found free slots missing and touched new memory instead";
}

// A double free (undefined, and not detected by the release build) makes a
// free list repeat a slot: trimming must leave such a list alone, not loop.
TEST(Trim, AListThatRepeatsASlotIsLeftAlone) {
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    alarm(20);
    constexpr size_t kOdd = 1500;  // 1.5 KiB slots: no other test here uses them
    std::vector<void*> v = AllocateBlocks(kOdd, 2000);
    for (void* p : v) smalloc_free(p);
    smalloc_free(v[1500]);  // beyond the private list: onto the shared one again
    smalloc_malloc_trim(0);
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
}

long MinorFaults() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_minflt;
}

// True if the reservation is committed on demand: then it is mapped
// read-only but where committed, and its largest part is a read-only
// anonymous mapping (the smallest layout is 240 MiB).
bool CommittedOnDemand() {
  std::ifstream maps("/proc/self/maps");
  for (std::string line; std::getline(maps, line);) {
    unsigned long lo = 0, hi = 0;
    char perms[5] = {};
    int path_at = 0;
    if (sscanf(line.c_str(), "%lx-%lx %4s %*s %*s %*s %n", &lo, &hi, perms, &path_at) >= 3 &&
        std::string(perms) == "r--p" && line.size() <= size_t(path_at) && hi - lo >= (size_t{200} << 20))
      return true;
  }
  return false;
}

size_t Mappings() {
  std::ifstream maps("/proc/self/maps");
  size_t n = 0;
  for (std::string line; std::getline(maps, line);) ++n;
  return n;
}

// A large block shrunk to a quarter of its slot or less moves to a smaller
// slot, and its old one goes back to the system; shrunk less, it stays.
TEST(Realloc, ALargeBlockShrunkToAQuarterMovesAndItsPagesGoBack) {
  constexpr size_t kBig = size_t{24} << 20;  // the 32 MiB class: nothing kept there
  char* p = static_cast<char*>(smalloc_malloc(kBig));
  ASSERT_NE(p, nullptr);
  for (size_t i = 0; i < kBig; ++i) p[i] = char(i % 251);
  EXPECT_EQ(smalloc_realloc(p, size_t{20} << 20), p) << "shrunk to 5/8 of its slot: stays";
  char* q = static_cast<char*>(smalloc_realloc(p, 100));
  ASSERT_NE(q, nullptr);
  EXPECT_NE(q, p);
  size_t wrong = 0;
  for (size_t i = 0; i < 100; ++i) wrong += q[i] != char(i % 251);
  EXPECT_EQ(wrong, 0u);
  EXPECT_LE(ResidentPages(p, kBig), 1u) << "the old slot kept its pages";
  EXPECT_LT(smalloc_malloc_usable_size(q), size_t{4096});
  // The bytes moved, not the old slot's pages (which would land on q's
  // neighbours: the new slots after q must still be zero).
  std::vector<void*> after;
  EXPECT_EQ(CallocNonzeroBytes(100, 2000, after), 0u);
  for (void* b : after) smalloc_free(b);
  smalloc_free(q);
}

// Buffers grown by realloc and then shrunk to what they hold (a file read
// into a growing buffer, say) each leave their grower slot, and its pages,
// to the next: in place, 500 of 1 MiB shrunk to 1 KiB held 500 MiB.
TEST(Realloc, BuffersGrownThenShrunkReuseOneGrowerSlot) {
  constexpr int kBuffers = 100;
  constexpr size_t kPeak = size_t{1} << 20, kKeep = 1000;
  std::set<char*> peaks;
  std::vector<char*> kept;
  for (int b = 0; b < kBuffers; ++b) {
    char* p = nullptr;
    for (size_t size = 64; size <= kPeak; size *= 2) {
      p = static_cast<char*>(smalloc_realloc(p, size));
      ASSERT_NE(p, nullptr);
      memset(p + size / 2, b, size / 2);
    }
    peaks.insert(p);
    char* q = static_cast<char*>(smalloc_realloc(p, kKeep));
    ASSERT_NE(q, nullptr);
    ASSERT_EQ(q[kKeep - 1], char(b));
    EXPECT_LT(smalloc_malloc_usable_size(q), 4096u);
    kept.push_back(q);
  }
  EXPECT_LE(peaks.size(), 2u) << "the grower slots the shrunk buffers left were not used again";
  for (int b = 0; b < kBuffers; ++b) EXPECT_EQ(kept[b][kKeep - 1], char(b));
  for (char* q : kept) smalloc_free(q);
}

// realloc moves a large block by moving its pages to the new slot, not by
// copying them: the bytes arrive, and the new slot's pages are not faulted in.
TEST(Realloc, ALargeBlockMovesItsPagesInsteadOfCopyingThem) {
  constexpr size_t kFrom = size_t{6} << 20, kTo = size_t{12} << 20;  // the 8 MiB class, then the 16 MiB one
  char* p = static_cast<char*>(smalloc_malloc(kFrom));
  ASSERT_NE(p, nullptr);
  for (size_t i = 0; i < kFrom; ++i) p[i] = char(i % 251);
  const long faults = MinorFaults();
  char* q = static_cast<char*>(smalloc_realloc(p, kTo));
  const long moved_faults = MinorFaults() - faults;
  ASSERT_NE(q, nullptr);
  ASSERT_NE(q, p) << "12 MiB cannot stay in an 8 MiB slot";
  // Committed on demand the block is copied: there the kernel may free the
  // destination and then refuse the move's charge (heap.hpp, reallocate).
  if (CommittedOnDemand())
    EXPECT_GE(moved_faults, 1536) << "committed on demand, a move copies: it faults in the new slot's pages";
  else
    EXPECT_LT(moved_faults, 64) << "copying would fault in the new slot's 1536 pages";
  size_t wrong = 0;
  for (size_t i = 0; i < kFrom; ++i) wrong += q[i] != char(i % 251);
  EXPECT_EQ(wrong, 0u);
  memset(q + kFrom, 7, kTo - kFrom);  // the rest of the block is there to use
  smalloc_free(q);
}

// A buffer that realloc grows holds the pages it touched, not a slot's
// worth: not even right after a 4 MiB buffer was freed, whose slot (kept
// resident for the next 4 MiB buffer) would hold all 4 MiB for a block a
// quarter that size. A program alternating the two ran at 4.0x its live
// bytes so (glibc: 1.03x).
TEST(Realloc, ABufferGrownAfterAFourMiBOneWasFreedHoldsOnlyItsOwnPages) {
  constexpr size_t kBig = size_t{4} << 20, kGrown = (size_t{1} << 20) + 4096;
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  std::vector<char*> grown;
  char* big = static_cast<char*>(smalloc_malloc(kBig));
  ASSERT_NE(big, nullptr);
  memset(big, 1, kBig);
  for (int round = 0; round < 8; ++round) {
    smalloc_free(big);
    char* p = nullptr;
    for (size_t n = size_t{64} << 10;; n = std::min(n + (size_t{64} << 10), kGrown)) {
      p = static_cast<char*>(smalloc_realloc(p, n));
      ASSERT_NE(p, nullptr);
      memset(p, 2, n);
      if (n == kGrown) break;
    }
    grown.push_back(p);
    big = static_cast<char*>(smalloc_malloc(kBig));
    ASSERT_NE(big, nullptr);
    memset(big, 1, kBig);
  }
  for (char* p : grown) {
    EXPECT_LE(ResidentPages(p, smalloc_malloc_usable_size(p)), kGrown / page + 2) << "a grown buffer's slot";
    smalloc_free(p);
  }
  smalloc_free(big);
}

// Each move splits a mapping off the reservation; freeing the block merges
// it back, so growing buffers over and over leaves no mappings behind.
// (Committed on demand, counted from the end of the second round: each slab
// becomes a mapping of its own as it first takes a slot, and the second
// round takes new slots where the first left its kept ones.)
TEST(Realloc, MovesLeaveNoMappingsBehindOnceTheBlocksAreFreed) {
  smalloc_free(smalloc_malloc(1));  // the reservation exists
  const int settled = CommittedOnDemand() ? 2 : 0;
  size_t before = 0;
  for (int round = 0; round < 100; ++round) {
    if (round == settled) before = Mappings();
    char* p = nullptr;
    for (size_t n = 1; n <= (size_t{32} << 20); n *= 2) {
      p = static_cast<char*>(smalloc_realloc(p, n));
      ASSERT_NE(p, nullptr);
      p[n - 1] = 1;
    }
    smalloc_free(p);
  }
  EXPECT_LE(Mappings(), before + 4);
}

}  // namespace
