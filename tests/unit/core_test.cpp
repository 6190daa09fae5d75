// The core's own promises: the layout arithmetic, fail-over and exhaustion on
// a small test layout, the fallback layout, per-thread slabs, and pointers
// that are not ours.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include <algorithm>
#include <barrier>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <thread>
#include <vector>

#include "release_policy.hpp"

namespace smalloc {
namespace {

using TestHeap = Heap<ReleasePolicy>;
constexpr unsigned kTestSpan = kMinSpanShift;  // 256 KiB slabs: every class fills quickly

Layout::Where where(const Layout& L, const void* p) {
  Layout::Where w{};
  EXPECT_TRUE(L.locate(p, w)) << p;
  return w;
}

size_t resident_pages(const void* p, size_t bytes) {
  std::vector<unsigned char> v((bytes + pal::kPageSize - 1) / pal::kPageSize);
  EXPECT_EQ(mincore(const_cast<void*>(p), bytes, v.data()), 0);
  return size_t(std::count_if(v.begin(), v.end(), [](unsigned char c) { return c & 1; }));
}

TEST(Layout, SizeClassIsTheSmallestClassThatHoldsTheRequestAlignedEnough) {
  EXPECT_EQ(size_class(0), kMinClass);
  EXPECT_EQ(size_class(1), kMinClass);
  EXPECT_EQ(size_class(8), 6u);    // 8 B
  EXPECT_EQ(size_class(9), 8u);    // 16 B: no 12-byte class
  EXPECT_EQ(size_class(16), 8u);
  EXPECT_EQ(size_class(17), 10u);  // 32 B: no 24-byte class
  EXPECT_EQ(size_class(33), 11u);  // 48 B
  EXPECT_EQ(size_class(48), 11u);
  EXPECT_EQ(size_class(49), 12u);   // 64 B
  EXPECT_EQ(size_class(300), 17u);  // 384 B
  EXPECT_EQ(size_class(4104), 25u);  // 6 KiB
  EXPECT_EQ(size_class((size_t{3} << 19) + 1), 42u);  // past 1.5 MiB: 2 MiB
  EXPECT_EQ(size_class((size_t{1} << 21) + 1), 44u);  // no 3 MiB class: 4 MiB
  EXPECT_EQ(size_class(size_t{1} << 33), 66u);
  EXPECT_EQ(size_class((size_t{1} << 33) + 1), 68u);
  EXPECT_EQ(size_class(SIZE_MAX), 128u);
  EXPECT_EQ(size_class(1, 64), 12u);
  EXPECT_EQ(size_class(100, 4096), 24u);
  EXPECT_EQ(size_class(3000, 1024), 23u);  // 3 KiB slots are 1 KiB-aligned
  EXPECT_EQ(size_class(5000, 4096), 26u);  // 6 KiB slots are only 2 KiB-aligned: 8 KiB
  // Every size up to 64 KiB, at every alignment up to its own: the class
  // exists, holds it, is aligned enough, and no smaller class would do.
  for (size_t size = 0; size <= 65536; ++size)
    for (size_t align = 1; align <= std::max<size_t>(size, 1); align <<= 1) {
      const unsigned c = size_class(size, align);
      ASSERT_TRUE(class_exists(c)) << size << " " << align;
      ASSERT_GE(class_bytes(c), size) << size;
      ASSERT_GE(size_t{1} << class_align_shift(c), align) << size << " " << align;
      for (unsigned smaller = kMinClass; smaller < c; ++smaller)
        ASSERT_FALSE(class_exists(smaller) && class_bytes(smaller) >= size &&
                     (size_t{1} << class_align_shift(smaller)) >= align)
            << size << " " << align << ": class " << smaller << " would do, not " << c;
      if (align == 1) ASSERT_EQ(c, size_class_computed(size, 1)) << size;  // malloc's table
    }
}

// Pure arithmetic on the full-size layout and on fallback ones (no
// reservation needed): every class's first, second, middle and last slot in
// the first, second and last slab decodes back to itself, from its first
// byte and from its last; the slots fill the slab after its skew.
TEST(Layout, EverySlotEdgeRoundTripsThroughItsAddress) {
  for (unsigned s : {kMinSpanShift, 21u, kMaxSpanShift})
  for (unsigned cls = kMinClass; cls <= 2 * s; ++cls) {
    const Layout L = Layout::decode(Layout::encode(uintptr_t{1} << 45, s));
    if (!class_exists(cls)) continue;
    const uint32_t n = L.slots_per_slab(cls);
    const size_t span = size_t{1} << s;
    ASSERT_LT(L.skew(cls), span / 16) << cls;
    ASSERT_EQ(n, (span - L.skew(cls)) / class_bytes(cls)) << cls;
    ASSERT_LE(L.slot(cls, 0, n - 1) + class_bytes(cls), L.slot(cls, 0, 0) - L.skew(cls) + span) << cls;
    for (unsigned slab : {0u, 1u, kNumSlabs - 1}) {
      for (uint32_t index : {0u, 1u % n, n / 2, n - 1}) {
        char* p = L.slot(cls, slab, index);
        ASSERT_EQ(reinterpret_cast<uintptr_t>(p) % (uintptr_t{1} << class_align_shift(cls)), 0u) << cls;
        for (char* q : {p, p + class_bytes(cls) - 1}) {
          Layout::Where w = where(L, q);
          ASSERT_EQ(w.cls, cls);
          ASSERT_EQ(w.slab, slab);
          ASSERT_EQ(w.index, index);
        }
      }
    }
  }
}

// Every span starts on a 2^S boundary: without a skew the first slots of
// every class, where a small heap lives, shared their cache sets.
TEST(Layout, TheFirstSlotsOfTheSmallClassesFallInDifferentCacheSets) {
  const Layout L = Layout::decode(Layout::encode(uintptr_t{1} << 45, kMaxSpanShift));
  std::set<uintptr_t> offsets;  // modulo 64 KiB: as spread over an L2 cache's sets
  size_t classes = 0;
  for (unsigned cls = kMinClass; class_bytes(cls) <= 4096; ++cls) {
    if (!class_exists(cls)) continue;
    ++classes;
    offsets.insert(reinterpret_cast<uintptr_t>(L.slot(cls, 0, 0)) % 65536);
  }
  EXPECT_EQ(offsets.size(), classes) << "two small classes' slabs start at the same offset modulo 64 KiB";
}

TEST(Layout, AddressesOutsideTheSlotAreasAreNotOurs) {
  const Layout L = Layout::decode(Layout::encode(uintptr_t{1} << 45, kMaxSpanShift));
  Layout::Where w;
  EXPECT_FALSE(L.locate(nullptr, w));
  EXPECT_FALSE(L.locate(reinterpret_cast<void*>(L.base - 1), w));
  EXPECT_FALSE(L.locate(reinterpret_cast<void*>(L.base), w));  // the free-list heads
  EXPECT_FALSE(L.locate(reinterpret_cast<void*>(L.base + Layout::area_bytes(L.span_shift) - 1), w));
  EXPECT_TRUE(L.locate(reinterpret_cast<void*>(L.base + Layout::area_bytes(L.span_shift)), w));
  EXPECT_TRUE(L.locate(reinterpret_cast<void*>(L.base + L.size() - 1), w));
  EXPECT_FALSE(L.locate(reinterpret_cast<void*>(L.base + L.size()), w));
  const Layout none = Layout::decode(Layout::kUninitialised);
  EXPECT_LT(none.max_class(), kMinClass);
  EXPECT_FALSE(none.locate(reinterpret_cast<void*>(uintptr_t{1} << 40), w));
  EXPECT_FALSE(none.locate(nullptr, w));
}

TEST(Heap, FirstAllocationReservesTheLayout) {
  TestHeap heap(kTestSpan);
  EXPECT_LT(heap.layout().max_class(), kMinClass);
  void* p = heap.allocate(10, 1, Kind::Malloc);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(heap.layout().span_shift, kTestSpan);
  EXPECT_EQ(heap.layout().base % (uintptr_t{1} << kTestSpan), 0u);
  EXPECT_TRUE(heap.owns(p));
  EXPECT_EQ(heap.usable_size(p), 16u);
}

TEST(Heap, EveryPointerIsAlignedToItsSlotAndToTheRequest) {
  TestHeap heap(kTestSpan);
  for (size_t align = 1; align <= (size_t{1} << kTestSpan); align <<= 1) {
    for (size_t size : {size_t{0}, size_t{1}, size_t{7}, size_t{24}, size_t{1000}, size_t{40000}}) {
      void* p = heap.allocate(size, align, Kind::Malloc);
      if (size_class(size, align) > 2 * kTestSpan) {
        EXPECT_EQ(p, nullptr);
        continue;
      }
      ASSERT_NE(p, nullptr) << size << " " << align;
      uintptr_t a = reinterpret_cast<uintptr_t>(p);
      EXPECT_EQ(a % align, 0u);
      // At the slot's start, or coloured (ReleasePolicy::on_alloc) kColour in.
      const Layout::Where w = where(heap.layout(), p);
      EXPECT_EQ(w.cls, size_class(size, align));
      const uintptr_t into = a - reinterpret_cast<uintptr_t>(heap.layout().slot(w.cls, w.slab, w.index));
      EXPECT_TRUE(into == 0 || into == ReleasePolicy::kColour) << size << " " << align << ": " << into;
      EXPECT_GE(heap.usable_size(p), size);
      heap.deallocate(p, Kind::Malloc);
    }
  }
}

// For every class: fill the thread's slab, watch the next allocation move to
// the next slab, fill all 64, watch it move to the next class; then free all
// and find the slots again.
TEST(Heap, AFullSlabFailsOverToTheOtherSlabsThenToTheNextClass) {
  for (unsigned cls = kMinClass; cls <= 2 * kTestSpan; ++cls) {
    if (!class_exists(cls)) continue;
    TestHeap heap(kTestSpan);
    const size_t size = class_bytes(cls);
    void* first = heap.allocate(size, 1, Kind::Malloc);
    ASSERT_NE(first, nullptr);
    const Layout L = heap.layout();
    const unsigned home = where(L, first).slab;
    const uint32_t per_slab = L.slots_per_slab(cls);
    std::vector<void*> blocks{first};
    for (uint32_t i = 1; i < per_slab; ++i) blocks.push_back(heap.allocate(size, 1, Kind::Malloc));
    for (void* p : blocks) ASSERT_EQ(where(L, p).slab, home);
    void* spill = heap.allocate(size, 1, Kind::Malloc);
    ASSERT_NE(spill, nullptr);
    EXPECT_EQ(where(L, spill).cls, cls);
    EXPECT_EQ(where(L, spill).slab, (home + 1) % kNumSlabs);
    blocks.push_back(spill);
    while (blocks.size() < size_t{per_slab} * kNumSlabs) {
      void* p = heap.allocate(size, 1, Kind::Malloc);
      ASSERT_NE(p, nullptr);
      ASSERT_EQ(where(L, p).cls, cls);
      blocks.push_back(p);
    }
    std::set<void*> distinct(blocks.begin(), blocks.end());
    EXPECT_EQ(distinct.size(), blocks.size()) << "a slot was handed out twice";
    void* overflow = heap.allocate(size, 1, Kind::Malloc);
    if (cls < L.max_class()) {
      ASSERT_NE(overflow, nullptr);
      EXPECT_EQ(where(L, overflow).cls, class_exists(cls + 1) ? cls + 1 : cls + 2);
      heap.deallocate(overflow, Kind::Malloc);
    } else {
      // This fallback layout's largest slots are all taken: a mapping of its own.
      Layout::Where w{};
      ASSERT_NE(overflow, nullptr);
      EXPECT_FALSE(L.locate(overflow, w));
      EXPECT_TRUE(heap.owns(overflow));
      EXPECT_GE(heap.usable_size(overflow), size);
      std::memset(overflow, 7, size);
      heap.deallocate(overflow, Kind::Malloc);
      EXPECT_FALSE(heap.owns(overflow));
    }
    for (void* p : blocks) heap.deallocate(p, Kind::Malloc);
    // Every slot is free again: a whole class's worth fits without overflow.
    for (size_t i = 0; i < blocks.size(); ++i) {
      void* p = heap.allocate(size, 1, Kind::Malloc);
      ASSERT_NE(p, nullptr);
      ASSERT_EQ(where(L, p).cls, cls);
      ASSERT_TRUE(distinct.count(p));
    }
  }
}

// The trim's bitmap of marked slots holds exactly a full slab of the
// smallest class: trimming that slab must clear the bitmap and nothing after
// it. The bitmap (one page at this span) is reserved by the first trim, when
// the only one-page gap around is the hole left below `data`.
TEST(Heap, TrimmingAFullSlabOfTheSmallestSlotsTouchesNoOtherMapping) {
  TestHeap heap(kTestSpan);
  void* first = heap.allocate(8, 1, Kind::Malloc);
  ASSERT_NE(first, nullptr);
  const uint32_t per_slab = heap.layout().slots_per_slab(size_class(8));
  for (uint32_t i = 1; i < per_slab; ++i) ASSERT_NE(heap.allocate(8, 1, Kind::Malloc), nullptr);
  heap.deallocate(first, Kind::Malloc);
  auto* data = static_cast<unsigned char*>(
      mmap(nullptr, 3 * pal::kPageSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(data, MAP_FAILED);
  std::memset(data, 0x5a, 3 * pal::kPageSize);
  munmap(data, pal::kPageSize);
  heap.trim();
  EXPECT_EQ(std::count(data + pal::kPageSize, data + 3 * pal::kPageSize, 0x5a), std::ptrdiff_t(2 * pal::kPageSize))
      << "the trim cleared memory past its bitmap";
  munmap(data + pal::kPageSize, 2 * pal::kPageSize);
}

// How many slots of `size` bytes a layout has, in its class and the larger ones.
size_t SlotsFor(const Layout& L, size_t size) {
  size_t slots = 0;
  for (unsigned c = size_class(size); c <= L.max_class(); ++c)
    if (class_exists(c)) slots += size_t{L.slots_per_slab(c)} * kNumSlabs;
  return slots;
}

TEST(Heap, ExhaustionReturnsNullWithEnomem) {
  TestHeap heap(kTestSpan);
  // Below kMappedFallbackMin: once every slot that can hold it is taken (its
  // class's, then the larger ones'), NULL with ENOMEM.
  const size_t size = kMappedFallbackMin - 1;
  ASSERT_NE(heap.allocate(size, 1, Kind::Malloc), nullptr);
  const size_t slots = SlotsFor(heap.layout(), size);
  for (size_t i = 1; i < slots; ++i) ASSERT_NE(heap.allocate(size, 1, Kind::Malloc), nullptr);
  errno = 0;
  EXPECT_EQ(heap.allocate(size, 1, Kind::Malloc), nullptr);
  EXPECT_EQ(errno, ENOMEM);
  // From kMappedFallbackMin on, a block with no slot left gets a mapping of
  // its own in a fallback layout.
  void* mapped = heap.allocate(kMappedFallbackMin, 1, Kind::Malloc);
  ASSERT_NE(mapped, nullptr);
  EXPECT_FALSE(heap.owns(static_cast<char*>(mapped) - 1)) << "not in the reservation";
  EXPECT_EQ(heap.usable_size(mapped), kMappedFallbackMin);
  heap.deallocate(mapped, Kind::Malloc);
  EXPECT_EQ(heap.usable_size(mapped), 0u) << "given back";
  // Larger than any slot of this (small) layout: a mapping of its own.
  const size_t largest = size_t{1} << kTestSpan;
  void* beyond = heap.allocate(largest + 1, 1, Kind::Malloc);
  ASSERT_NE(beyond, nullptr);
  EXPECT_FALSE(heap.owns(static_cast<char*>(beyond) - 1)) << "not in the reservation";
  EXPECT_EQ(heap.usable_size(beyond), largest + 1);
  heap.deallocate(beyond, Kind::Malloc);
  EXPECT_EQ(heap.usable_size(beyond), 0u) << "given back";
  errno = 0;
  EXPECT_EQ(heap.allocate(SIZE_MAX, 1, Kind::Malloc), nullptr);
  EXPECT_EQ(errno, ENOMEM);
  errno = 0;
  EXPECT_EQ(heap.allocate(1, size_t{1} << 63, Kind::Malloc), nullptr);
  EXPECT_EQ(errno, ENOMEM);
  EXPECT_NE(heap.allocate(8, 1, Kind::Malloc), nullptr) << "small classes still work";
}

// A shrink that finds every smaller slot, and every larger one, taken moves
// into a mapping of its own (a fallback layout, from kMappedFallbackMin):
// it still gives its slot back and keeps the contents.
TEST(Heap, AShrinkWithNoSlotLeftMovesIntoAMapping) {
  TestHeap heap(kTestSpan);
  const size_t largest = size_t{1} << kTestSpan, smaller = class_bytes(2 * kTestSpan - 1);
  char* p = static_cast<char*>(heap.allocate(largest, 1, Kind::Malloc));
  ASSERT_NE(p, nullptr);
  const Layout L = heap.layout();
  std::memset(p, 'p', largest);
  std::vector<void*> fill;
  for (size_t i = 1; i < SlotsFor(L, largest); ++i) fill.push_back(heap.allocate(largest, 1, Kind::Malloc));
  for (size_t i = 0; i < size_t{L.slots_per_slab(2 * kTestSpan - 1)} * kNumSlabs; ++i)
    fill.push_back(heap.allocate(smaller, 1, Kind::Malloc));
  for (void* f : fill) ASSERT_NE(f, nullptr);
  const size_t shrunk = kMappedFallbackMin + 100;  // into the smaller class, which is full
  ASSERT_LT(size_class(shrunk), 2 * kTestSpan);
  char* q = static_cast<char*>(heap.reallocate(p, shrunk));
  ASSERT_NE(q, nullptr);
  Layout::Where w{};
  EXPECT_FALSE(L.locate(q, w)) << "not a mapping of its own";
  EXPECT_EQ(std::count(q, q + shrunk, 'p'), std::ptrdiff_t(shrunk));
  EXPECT_EQ(heap.allocate(largest, 1, Kind::Malloc), p) << "the slot was not given back";
  heap.deallocate(q, Kind::Malloc);
  heap.deallocate(p, Kind::Malloc);
  for (void* f : fill) heap.deallocate(f, Kind::Malloc);
}

TEST(Heap, TheLastFreedSlotIsReusedFirst) {
  TestHeap heap(kTestSpan);
  void* a = heap.allocate(100, 1, Kind::Malloc);
  void* b = heap.allocate(100, 1, Kind::Malloc);
  heap.deallocate(a, Kind::Malloc);
  heap.deallocate(b, Kind::Malloc);
  EXPECT_EQ(heap.allocate(100, 1, Kind::Malloc), b);
  EXPECT_EQ(heap.allocate(100, 1, Kind::Malloc), a);
}

TEST(Heap, ZeroedAllocationLeavesNeverTouchedPagesAlone) {
  TestHeap heap;  // full layout: 32 MiB slots
  const size_t size = 32u << 20;
  char* p = static_cast<char*>(heap.allocate(size, 1, Kind::Malloc, true));
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(resident_pages(p, size), 0u) << "calloc touched a fresh slot";
  EXPECT_EQ(p[0] | p[size / 2] | p[size - 1], 0);
}

TEST(Heap, ZeroedAllocationClearsReusedSlots) {
  TestHeap heap(kTestSpan);
  for (size_t size : {size_t{8}, size_t{100}, size_t{4096}, size_t{60000}}) {
    char* p = static_cast<char*>(heap.allocate(size, 1, Kind::Malloc));
    std::memset(p, 0xab, size);
    heap.deallocate(p, Kind::Malloc);
    char* q = static_cast<char*>(heap.allocate(size, 1, Kind::Malloc, true));
    ASSERT_EQ(q, p);
    EXPECT_EQ(std::count(q, q + size, 0), std::ptrdiff_t(size));
  }
}

TEST(Heap, LargeSlotsAreGivenBackToTheSystemWhenFreed) {
  TestHeap heap;
  const size_t size = 32u << 20;  // past the classes whose last freed slot is kept
  char* p = static_cast<char*>(heap.allocate(size, 1, Kind::Malloc));
  std::memset(p, 1, size);
  EXPECT_EQ(resident_pages(p, size), size / pal::kPageSize);
  heap.deallocate(p, Kind::Malloc);
  EXPECT_LE(resident_pages(p, size), 1u);  // the link of the free slot
  char* q = static_cast<char*>(heap.allocate(size, 1, Kind::Malloc, true));
  ASSERT_EQ(q, p);
  EXPECT_EQ(std::count(q, q + size, 0), std::ptrdiff_t(size)) << "calloc of a discarded slot";
}

TEST(Heap, ReallocStaysInPlaceWhileTheSlotFits) {
  TestHeap heap(kTestSpan);
  char* p = static_cast<char*>(heap.allocate(20, 1, Kind::Malloc));
  std::memcpy(p, "0123456789abcdefghi", 20);
  EXPECT_EQ(heap.reallocate(p, 32), p);
  EXPECT_EQ(heap.reallocate(p, 17), p);
  char* q = static_cast<char*>(heap.reallocate(p, 33));
  ASSERT_NE(q, p);
  EXPECT_STREQ(q, "0123456789abcdefghi");
  EXPECT_EQ(heap.reallocate(q, 0), nullptr);
}

// Shrunk into a smaller class, a block moves, and its slot serves the next
// block of its class; shrunk within its class, it stays.
TEST(Heap, ReallocIntoASmallerClassMovesAndFreesTheSlot) {
  TestHeap heap(kTestSpan);
  char* p = static_cast<char*>(heap.allocate(1000, 1, Kind::Malloc));
  for (int i = 0; i < 1000; ++i) p[i] = char(i % 251);
  EXPECT_EQ(heap.reallocate(p, 769), p) << "still more than the class below holds";
  char* q = static_cast<char*>(heap.reallocate(p, 300));
  ASSERT_NE(q, nullptr);
  EXPECT_NE(q, p);
  EXPECT_EQ(where(heap.layout(), q).cls, size_class(300));
  int wrong = 0;
  for (int i = 0; i < 300; ++i) wrong += q[i] != char(i % 251);
  EXPECT_EQ(wrong, 0);
  EXPECT_EQ(heap.allocate(1000, 1, Kind::Malloc), p) << "the slot it left was not free again";
  EXPECT_EQ(heap.reallocate(q, 257), q);
  EXPECT_EQ(heap.reallocate(q, 384), q);
}

// Past where growers start too, a shrink takes the smaller class: a grower
// (which a block leaves only below kGrowerMin) is for growth.
TEST(Heap, ALargeBlockShrunkIntoASmallerClassDoesNotBecomeAGrower) {
  TestHeap heap;
  char* big = static_cast<char*>(heap.allocate(200 * 1024, 1, Kind::Malloc));
  ASSERT_NE(big, nullptr);
  char* smaller = static_cast<char*>(heap.reallocate(big, 100 * 1024));
  ASSERT_NE(smaller, nullptr);
  EXPECT_EQ(where(heap.layout(), smaller).cls, size_class(100 * 1024));
}

// A grower may hold anything past kGrowerMin: only a shrink to kGrowerMin
// or less is sure to be one, and moves.
TEST(Heap, AGrowerMovesOnlyWhenShrunkToWhereGrowersStart) {
  TestHeap heap;
  char* p = static_cast<char*>(heap.allocate(1000, 1, Kind::Malloc));
  char* g = static_cast<char*>(heap.reallocate(p, kGrowerMin * 8));
  ASSERT_NE(g, nullptr);
  ASSERT_EQ(where(heap.layout(), g).cls, kGrowerClass);
  std::memset(g, 'g', kGrowerMin * 8);
  EXPECT_EQ(heap.reallocate(g, kGrowerMin * 2), g);
  EXPECT_EQ(heap.reallocate(g, kGrowerMin + 1), g);
  char* q = static_cast<char*>(heap.reallocate(g, kGrowerMin));
  ASSERT_NE(q, nullptr);
  EXPECT_NE(q, g);
  EXPECT_LT(where(heap.layout(), q).cls, kGrowerClass);
  EXPECT_EQ(std::count(q, q + kGrowerMin, 'g'), std::ptrdiff_t(kGrowerMin));
  heap.deallocate(q, Kind::Malloc);
}

TEST(Heap, ABlockThatKeepsGrowingJumpsToTheGrowerClass) {
  TestHeap heap;
  char* p = static_cast<char*>(heap.allocate(1000, 1, Kind::Malloc));
  p[999] = 'x';
  char* q = static_cast<char*>(heap.reallocate(p, kGrowerMin + 1));
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q[999], 'x');
  EXPECT_EQ(where(heap.layout(), q).cls, kGrowerClass);
  for (size_t size = kGrowerMin * 2; size <= class_bytes(kGrowerClass); size *= 2)
    EXPECT_EQ(heap.reallocate(q, size), q) << size;
}

// Runs in a child: reserve under a 6 GiB address-space limit, far below the
// full 16 TiB layout; the exit code is the span shift that was chosen.
[[noreturn]] void reserve_under_address_space_limit() {
  rlimit limit{size_t{6} << 30, size_t{6} << 30};
  if (setrlimit(RLIMIT_AS, &limit) != 0) _exit(100);
  TestHeap heap;
  char* p = static_cast<char*>(heap.allocate(1000, 1, Kind::Malloc));
  if (!p) _exit(101);
  std::memset(p, 1, 1000);
  const Layout L = heap.layout();
  void* largest = heap.allocate(class_bytes(L.max_class()), 1, Kind::Malloc);
  if (!largest || !heap.owns(largest)) _exit(102);
  heap.deallocate(largest, Kind::Malloc);
  _exit(L.span_shift < kMaxSpanShift && L.size() < (size_t{6} << 30) ? int(L.span_shift) : 103);
}

bool exited_with_a_fallback_span(int status) {
  return WIFEXITED(status) && WEXITSTATUS(status) >= int(kMinSpanShift) && WEXITSTATUS(status) < int(kMaxSpanShift);
}

TEST(Heap, ReservationFallsBackToASmallerLayoutUnderAnAddressSpaceLimit) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(reserve_under_address_space_limit(), exited_with_a_fallback_span, "");
}

// Runs in a child: with 280 MiB of address space left, the smallest layout
// (240 MiB) must still fit, and serve; the exit code is its span shift.
[[noreturn]] void reserve_the_smallest_layout() {
  size_t pages = 0;
  if (FILE* f = fopen("/proc/self/statm", "r")) {
    if (fscanf(f, "%zu", &pages) != 1) pages = 0;
    fclose(f);
  }
  if (pages == 0) _exit(100);
  const size_t limit = pages * pal::kPageSize + (size_t{280} << 20);
  rlimit rl{limit, limit};
  if (setrlimit(RLIMIT_AS, &rl) != 0) _exit(100);
  TestHeap heap;
  std::vector<char*> blocks;
  for (size_t size : {size_t{8}, size_t{48}, size_t{1000}, size_t{6000}, size_t{100000}}) {
    char* p = static_cast<char*>(heap.allocate(size, 1, Kind::Malloc));
    if (!p) _exit(101);
    std::memset(p, 1, size);
    blocks.push_back(p);
  }
  for (char* p : blocks) heap.deallocate(p, Kind::Malloc);
  _exit(int(heap.layout().span_shift));
}

TEST(Heap, TheSmallestLayoutFitsIn280MiBOfAddressSpace) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(reserve_the_smallest_layout(), testing::ExitedWithCode(int(kMinSpanShift)), "");
}

TEST(Threads, LiveThreadsHaveDistinctSlabsAndNewThreadsReuseFreedOnes) {
  constexpr int kThreads = 8;
  const unsigned main_slab = thread_slab();
  auto run_round = [&] {
    std::vector<unsigned> slabs(kThreads);
    std::barrier all_assigned(kThreads);
    std::vector<std::thread> threads;
    for (int i = 0; i < kThreads; ++i)
      threads.emplace_back([&, i] {
        slabs[i] = thread_slab();
        all_assigned.arrive_and_wait();  // nobody exits before everyone has a slab
      });
    for (auto& t : threads) t.join();
    return std::set<unsigned>(slabs.begin(), slabs.end());
  };
  std::set<unsigned> first = run_round();
  EXPECT_EQ(first.size(), size_t{kThreads}) << "two live threads share a slab";
  EXPECT_EQ(first.count(main_slab), 0u) << "a thread shares the main thread's slab";
  std::set<unsigned> second = run_round();
  EXPECT_EQ(second, first) << "new threads should take the slabs exited threads gave back";
}

// Committed on demand too: threads failing over commit the same slabs at once.
void exhaust_concurrently(commit::Mode mode) {
  TestHeap heap(kTestSpan, mode);
  // Below kMappedFallbackMin, so that exhaustion is NULL: 256 slots in all,
  // of three classes.
  const size_t size = kMappedFallbackMin - 1;
  heap.deallocate(heap.allocate(size, 1, Kind::Malloc), Kind::Malloc);
  const size_t slots = SlotsFor(heap.layout(), size);
  constexpr int kThreads = 16, kRounds = 50;
  for (int round = 0; round < kRounds; ++round) {
    std::vector<std::vector<void*>> got(kThreads);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t)
      threads.emplace_back([&, t] {
        while (void* p = heap.allocate(size, 1, Kind::Malloc)) got[t].push_back(p);
      });
    for (auto& t : threads) t.join();
    std::set<void*> all;
    size_t total = 0;
    for (auto& v : got) {
      total += v.size();
      all.insert(v.begin(), v.end());
    }
    ASSERT_EQ(total, slots) << "round " << round;
    ASSERT_EQ(all.size(), total) << "a slot was handed out twice in round " << round;
    threads.clear();
    for (int t = 0; t < kThreads; ++t)  // free from other threads than allocated
      threads.emplace_back([&, t] {
        for (void* p : got[(t + 1) % kThreads]) heap.deallocate(p, Kind::Malloc);
      });
    for (auto& t : threads) t.join();
  }
}

TEST(Threads, ConcurrentExhaustionHandsEverySlotOutExactlyOnce) { exhaust_concurrently(commit::Mode::Upfront); }
TEST(Threads, ConcurrentExhaustionCommittedOnDemandHandsEverySlotOutExactlyOnce) {
  exhaust_concurrently(commit::Mode::OnDemand);
}

// ---- commit on demand (commit.hpp) ---------------------------------------------
struct Mapped {
  size_t bytes = 0, writable = 0;
};
// How much of [from, from + n) /proc/self/maps shows mapped, and writable.
Mapped mapped_in(uintptr_t from, size_t n) {
  Mapped m;
  FILE* maps = fopen("/proc/self/maps", "r");
  if (!maps) return m;
  char line[512];
  while (fgets(line, sizeof line, maps)) {
    unsigned long lo, hi;
    char perms[5];
    if (sscanf(line, "%lx-%lx %4s", &lo, &hi, perms) != 3) continue;
    const uintptr_t a = std::max<uintptr_t>(lo, from), b = std::min<uintptr_t>(hi, from + n);
    if (a >= b) continue;
    m.bytes += b - a;
    if (perms[1] == 'w') m.writable += b - a;
  }
  fclose(maps);
  return m;
}

// What strict overcommit charges is what is writable: on demand, the heads,
// the counters and about what slots were taken from, never the reservation.
TEST(Commit, OnDemandOnlyWhatSlotsWereTakenFromIsWritable) {
  TestHeap heap(kMaxSpanShift, commit::Mode::OnDemand);
  std::vector<std::pair<void*, size_t>> blocks;
  size_t taken = 0;  // slot bytes
  const auto take = [&](size_t size, size_t slot_bytes, int count) {
    for (int i = 0; i < count; ++i) {
      void* p = heap.allocate(size, 1, Kind::Malloc);
      ASSERT_NE(p, nullptr);
      std::memset(p, 0x5a, size);
      blocks.emplace_back(p, size);
      taken += slot_bytes;
    }
  };
  take(100, 128, 20000);
  take(100 << 10, 128 << 10, 100);
  take(5 << 20, 8 << 20, 1);
  const Layout L = heap.layout();
  ASSERT_TRUE(L.on_demand);
  const Mapped m = mapped_in(L.base, L.size());
  EXPECT_EQ(m.bytes, L.size()) << "the reservation is mapped whole, read-only where not committed";
  EXPECT_GE(m.writable, taken);
  EXPECT_LE(m.writable, 2 * taken + (16 << 20)) << "committed " << m.writable << " for " << taken;
  // Freed and taken again, the same slots: nothing more to commit.
  for (auto& [p, size] : blocks) heap.deallocate(p, Kind::Malloc);
  for (auto& [p, size] : blocks) {
    p = heap.allocate(size, 1, Kind::Malloc);
    ASSERT_NE(p, nullptr);
    std::memset(p, 0xa5, size);
  }
  EXPECT_EQ(mapped_in(L.base, L.size()).writable, m.writable);
  for (auto& [p, size] : blocks) heap.deallocate(p, Kind::Malloc);
}

TEST(Commit, UpfrontTheWholeReservationIsWritable) {
  TestHeap heap(kMaxSpanShift, commit::Mode::Upfront);
  heap.deallocate(heap.allocate(100, 1, Kind::Malloc), Kind::Malloc);
  const Layout L = heap.layout();
  EXPECT_FALSE(L.on_demand);
  EXPECT_EQ(mapped_in(L.base, L.size()).writable, L.size());
}

// Runs in a child: under a data size limit (which counts every writable
// private mapping, MAP_NORESERVE or not) the heap commits on demand by
// itself, serves until the limit, fails with ENOMEM, and goes on where it
// stopped once there is room again. The exit code says what went wrong.
[[noreturn]] void allocate_under_a_data_limit() {
  size_t data_kb = 0;
  if (FILE* f = fopen("/proc/self/status", "r")) {
    char line[256];
    while (fgets(line, sizeof line, f))
      if (sscanf(line, "VmData: %zu kB", &data_kb) == 1) break;
    fclose(f);
  }
  if (data_kb == 0) _exit(100);
  constexpr size_t kMiB = size_t{1} << 20, kLimit = 256 * kMiB;
  std::vector<char*> blocks;
  blocks.reserve(1024);  // libc's, not the heap's: before the limit
  rlimit rl{data_kb * 1024 + kLimit, RLIM_INFINITY};
  if (setrlimit(RLIMIT_DATA, &rl) != 0) _exit(100);
  TestHeap heap;  // commit::Mode::Auto
  errno = 0;
  while (char* p = static_cast<char*>(heap.allocate(kMiB, 1, Kind::Malloc))) {
    p[0] = p[kMiB - 1] = 1;
    blocks.push_back(p);
    if (blocks.size() == 1024) _exit(101);  // four times the limit
  }
  if (errno != ENOMEM) _exit(102);
  if (!heap.layout().on_demand || heap.layout().span_shift != kMaxSpanShift) _exit(103);
  if (blocks.size() < 128) _exit(104);  // at least half the limit served
  rl.rlim_cur = RLIM_INFINITY;
  if (setrlimit(RLIMIT_DATA, &rl) != 0) _exit(100);
  // The slot whose commit failed went back: the next block is the one after the last.
  char* next = static_cast<char*>(heap.allocate(kMiB, 1, Kind::Malloc));
  if (next != blocks.back() + kMiB) _exit(105);
  next[kMiB - 1] = 1;
  heap.deallocate(next, Kind::Malloc);
  for (char* p : blocks) heap.deallocate(p, Kind::Malloc);
  _exit(0);
}

TEST(Commit, UnderADataLimitTheHeapCommitsOnDemandAndFailsWithEnomem) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(allocate_under_a_data_limit(), testing::ExitedWithCode(0), "");
}

TEST(Foreign, PointersThatAreNotOursAreNeverFreedOrMeasured) {
  TestHeap heap(kTestSpan);
  heap.allocate(1, 1, Kind::Malloc);
  int on_stack = 42;
  char* from_libc = static_cast<char*>(std::malloc(64));
  std::strcpy(from_libc, "made by libc");
  heap.deallocate(&on_stack, Kind::Malloc);
  heap.deallocate(from_libc, Kind::Malloc);
  heap.deallocate(nullptr, Kind::Malloc);
  EXPECT_EQ(on_stack, 42);
  EXPECT_EQ(heap.usable_size(from_libc), 0u);
  EXPECT_EQ(heap.usable_size(nullptr), 0u);
  char* moved = static_cast<char*>(heap.reallocate(from_libc, 100));
  ASSERT_NE(moved, nullptr);
  EXPECT_TRUE(heap.owns(moved));
  EXPECT_STREQ(moved, "made by libc");
  EXPECT_STREQ(from_libc, "made by libc") << "a foreign block must be left alone";
  std::free(from_libc);
}

TEST(Foreign, ReallocOfAForeignBlockNearTheEndOfItsMappingDoesNotFault) {
  TestHeap heap(kTestSpan);
  char* page = static_cast<char*>(mmap(nullptr, 2 * pal::kPageSize, PROT_READ | PROT_WRITE,
                                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(page, MAP_FAILED);
  munmap(page + pal::kPageSize, pal::kPageSize);  // nothing readable after the block
  char* block = page + pal::kPageSize - 16;
  std::memcpy(block, "end of the page", 16);
  char* moved = static_cast<char*>(heap.reallocate(block, 32 << 10));
  ASSERT_NE(moved, nullptr);
  EXPECT_STREQ(moved, "end of the page");
  munmap(page, pal::kPageSize);
}

}  // namespace
}  // namespace smalloc
