// The C allocation API's conventions, checked through a table of function
// pointers so that one source tests both the smalloc_-prefixed functions and
// (in the build linked to libsmalloc.so) the ones that replace libc's.
//
// Where a convention is ambiguous we follow glibc 2.36 and say so; where the
// brief deliberately departs from glibc 2.36 (aligned_alloc, pvalloc(0)) the
// test says that too.
#include <gtest/gtest.h>
#include <malloc.h>
#include <stdio.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "smalloc.h"

#ifdef SMALLOC_TEST_OVERRIDE
// C23's sized frees; glibc 2.36 does not declare them, libsmalloc exports them.
extern "C" void free_sized(void* ptr, size_t size) noexcept;
extern "C" void free_aligned_sized(void* ptr, size_t alignment, size_t size) noexcept;
// glibc's other names for its allocator, which libsmalloc exports too.
extern "C" void* __libc_malloc(size_t);
extern "C" void __libc_free(void*);
extern "C" void* __libc_calloc(size_t, size_t);
extern "C" void* __libc_realloc(void*, size_t);
extern "C" void* __libc_memalign(size_t, size_t);
extern "C" void* __libc_valloc(size_t);
extern "C" void* __libc_pvalloc(size_t);
#endif

namespace {

struct Allocator {
  const char* name;
  void* (*malloc)(size_t);
  void (*free)(void*);
  void* (*calloc)(size_t, size_t);
  void* (*realloc)(void*, size_t);
  void* (*reallocarray)(void*, size_t, size_t);
  int (*posix_memalign)(void**, size_t, size_t);
  void* (*aligned_alloc)(size_t, size_t);
  void* (*memalign)(size_t, size_t);
  void* (*valloc)(size_t);
  void* (*pvalloc)(size_t);
  size_t (*malloc_usable_size)(void*);
  void (*free_sized)(void*, size_t);
  void (*free_aligned_sized)(void*, size_t, size_t);
  int (*malloc_trim)(size_t);
  struct mallinfo2 (*mallinfo2)();
  struct mallinfo (*mallinfo)();
  int (*mallopt)(int, int);
  void (*malloc_stats)();
  int (*malloc_info)(int, FILE*);
};

void PrintTo(const Allocator& a, std::ostream* os) { *os << a.name; }

const Allocator kPrefixed{
    "prefixed",          smalloc_malloc,         smalloc_free,       smalloc_calloc,
    smalloc_realloc,     smalloc_reallocarray,   smalloc_posix_memalign,
    smalloc_aligned_alloc, smalloc_memalign,     smalloc_valloc,     smalloc_pvalloc,
    smalloc_malloc_usable_size, smalloc_free_sized, smalloc_free_aligned_sized,
    smalloc_malloc_trim, smalloc_mallinfo2, smalloc_mallinfo, smalloc_mallopt,
    smalloc_malloc_stats, smalloc_malloc_info,
};

#ifdef SMALLOC_TEST_OVERRIDE
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"  // mallinfo: glibc's old call, still ours to serve
const Allocator kOverride{
    "override",   ::malloc,         ::free,           ::calloc,  ::realloc,
    ::reallocarray, ::posix_memalign, ::aligned_alloc, ::memalign, ::valloc,
    ::pvalloc,    ::malloc_usable_size, ::free_sized, ::free_aligned_sized,
    ::malloc_trim, ::mallinfo2, ::mallinfo, ::mallopt,
    ::malloc_stats, ::malloc_info,
};
#pragma GCC diagnostic pop
#endif

constexpr size_t KiB = size_t{1} << 10;
constexpr size_t MiB = size_t{1} << 20;
constexpr size_t GiB = size_t{1} << 30;
const size_t kPage = size_t(sysconf(_SC_PAGESIZE));

// Sizes no allocator can serve. 1 TiB is beyond smalloc's largest class (and
// beyond this machine's memory, so glibc would refuse it too).
const size_t kHugeSizes[] = {SIZE_MAX, SIZE_MAX - 1, SIZE_MAX / 2, SIZE_MAX / 2 + 1, size_t{1} << 62,
                             size_t{1} << 40};

bool aligned(const void* p, size_t alignment) { return reinterpret_cast<uintptr_t>(p) % alignment == 0; }

// A byte pattern that depends on the position and a seed, so that a block
// copied to the wrong offset, or another block's bytes, never match.
uint8_t pattern(size_t i, unsigned seed) { return uint8_t((i * 131u) ^ (i >> 9) ^ (i >> 17) ^ (seed * 29u) ^ 0x5a); }

void fill(void* p, size_t n, unsigned seed) {
  auto* b = static_cast<uint8_t*>(p);
  for (size_t i = 0; i < n; ++i) b[i] = pattern(i, seed);
}

// The offset of the first byte that differs from the pattern, or SIZE_MAX.
size_t first_mismatch(const void* p, size_t n, unsigned seed) {
  auto* b = static_cast<const uint8_t*>(p);
  for (size_t i = 0; i < n; ++i)
    if (b[i] != pattern(i, seed)) return i;
  return SIZE_MAX;
}

size_t first_nonzero(const void* p, size_t n) {
  auto* b = static_cast<const uint8_t*>(p);
  for (size_t i = 0; i < n; ++i)
    if (b[i] != 0) return i;
  return SIZE_MAX;
}

testing::AssertionResult Ours(const void* p) {
  if (smalloc_owns(p)) return testing::AssertionSuccess();
  return testing::AssertionFailure() << p << " is not in smalloc's region";
}

class ApiTest : public testing::TestWithParam<Allocator> {
 protected:
  const Allocator& A = GetParam();
};

// ---- malloc / free -----------------------------------------------------------

TEST_P(ApiTest, MallocZeroReturnsDistinctFreeableNonNullPointers) {
  std::set<void*> seen;
  for (int i = 0; i < 100; ++i) {
    void* p = A.malloc(0);
    ASSERT_NE(p, nullptr);
    EXPECT_TRUE(Ours(p));
    EXPECT_TRUE(seen.insert(p).second) << "malloc(0) returned " << p << " twice";
  }
  for (void* p : seen) A.free(p);
}

TEST_P(ApiTest, FreeOfNullIsANoOp) {
  errno = 1234;
  A.free(nullptr);
  A.free_sized(nullptr, 0);
  A.free_sized(nullptr, 100);
  A.free_aligned_sized(nullptr, 64, 64);
  EXPECT_EQ(errno, 1234);
  void* p = A.malloc(8);  // and the allocator still works
  ASSERT_NE(p, nullptr);
  A.free(p);
}

// glibc >= 2.33 guarantees free() leaves errno alone; programs rely on it when
// cleaning up after a failed call. The large sizes take the path that gives
// pages back to the OS.
TEST_P(ApiTest, FreePreservesErrno) {
  for (size_t n : {size_t{1}, size_t{16}, 4 * KiB, 1 * MiB, 4 * MiB, 8 * MiB + 1, 64 * MiB}) {
    for (int how = 0; how < 3; ++how) {
      void* p = how == 2 ? A.aligned_alloc(64, n) : A.malloc(n);
      ASSERT_NE(p, nullptr) << n;
      memset(p, 0xcd, n);
      errno = 1234;
      if (how == 0) A.free(p);
      if (how == 1) A.free_sized(p, n);
      if (how == 2) A.free_aligned_sized(p, 64, n);
      EXPECT_EQ(errno, 1234) << "size " << n << ", free variant " << how;
    }
  }
}

// The release allocator hands a thread the slot it freed last, so a block that
// was really freed comes back within a few allocations of the same size. (We
// allow 64, not 1, so the test does not depend on strict LIFO order.)
TEST_P(ApiTest, FreeFreeSizedAndFreeAlignedSizedMakeTheBlockReusable) {
  for (size_t n : {size_t{24}, size_t{1000}, 100 * KiB, 6 * MiB}) {
    for (int how = 0; how < 3; ++how) {
      size_t align = how == 2 ? 256 : 1;
      void* p = how == 2 ? A.aligned_alloc(align, n) : A.malloc(n);
      ASSERT_NE(p, nullptr);
      if (how == 0) A.free(p);
      if (how == 1) A.free_sized(p, n);
      if (how == 2) A.free_aligned_sized(p, align, n);
      A.malloc_trim(0);  // the debug build holds freed blocks in quarantine until trimmed
      std::vector<void*> again;
      bool reused = false;
      for (int i = 0; i < 64 && !reused; ++i) {
        void* q = how == 2 ? A.aligned_alloc(align, n) : A.malloc(n);
        ASSERT_NE(q, nullptr);
        again.push_back(q);
        reused = q == p;
      }
      EXPECT_TRUE(reused) << "size " << n << ", free variant " << how << ": " << p << " never handed out again";
      for (void* q : again) A.free(q);
    }
  }
}

bool CountersEnabled() {
  auto snapshot = std::make_unique<smalloc_stats>();
  return smalloc_stats_snapshot(snapshot.get()) == 0 && snapshot->counters_enabled;
}

// mallinfo2 reports this heap: 1000 blocks in one class raise "in use" by
// 1000 slots of a power-of-two size that holds them, and freeing them turns
// exactly that into free space. Nothing else allocates in between.
bool is_slot_size(size_t bytes) {
  return std::has_single_bit(bytes) || (bytes % 3 == 0 && std::has_single_bit(bytes / 3));
}

TEST_P(ApiTest, MallinfoCountsTheBlocksInUseAndTheFreeSlots) {
  constexpr size_t kBlocks = 1000, kSize = 1000;
  std::vector<void*> blocks;
  blocks.reserve(kBlocks);
  const struct mallinfo2 before = A.mallinfo2();
  const struct mallinfo old_before = A.mallinfo();
  for (size_t i = 0; i < kBlocks; ++i) blocks.push_back(A.malloc(kSize));
  const struct mallinfo2 during = A.mallinfo2();
  const struct mallinfo old_during = A.mallinfo();
  for (void* p : blocks) A.free(p);
  const struct mallinfo2 after = A.mallinfo2();
  if (!CountersEnabled()) {  // built with SMALLOC_STATS=OFF: nothing to count with
    EXPECT_EQ(during.uordblks, 0u);
    EXPECT_EQ(during.arena, 0u);
    return;
  }
  const size_t grew = during.uordblks - before.uordblks;
  ASSERT_EQ(grew % kBlocks, 0u) << grew;
  const size_t slot = grew / kBlocks;
  EXPECT_TRUE(is_slot_size(slot) && slot >= kSize) << slot;
  EXPECT_EQ(unsigned(old_during.uordblks - old_before.uordblks), unsigned(grew)) << "mallinfo's int fields";
  EXPECT_EQ(during.fordblks, during.arena - during.uordblks);
  EXPECT_EQ(after.uordblks, before.uordblks);
  EXPECT_GE(after.fordblks, kBlocks * slot);
  EXPECT_GE(after.ordblks, kBlocks);
  EXPECT_EQ(after.hblks, 0u) << "no block here has a mapping of its own";
}

TEST_P(ApiTest, MalloptAnswersAsGlibcDoes) {
  for (int param : {M_MXFAST, M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX})
    EXPECT_EQ(A.mallopt(param, 2), 1) << param;
  EXPECT_EQ(A.mallopt(12345, 1), 1) << "glibc 2.36 ignores parameters it does not know";
  // The values glibc refuses (a program may test the answer).
  EXPECT_EQ(A.mallopt(M_MXFAST, 160), 1);
  EXPECT_EQ(A.mallopt(M_MXFAST, 161), 0);
  EXPECT_EQ(A.mallopt(M_MXFAST, -1), 0);
  EXPECT_EQ(A.mallopt(M_MMAP_THRESHOLD, 32 << 20), 1);
  EXPECT_EQ(A.mallopt(M_MMAP_THRESHOLD, (32 << 20) + 1), 0);
  EXPECT_EQ(A.mallopt(M_MMAP_THRESHOLD, -1), 0);
}

// glibc's XML shape, with the free slots of the class just freed.
TEST_P(ApiTest, MallocInfoWritesXmlAndRejectsOptions) {
  std::vector<void*> blocks;
  for (int i = 0; i < 100; ++i) blocks.push_back(A.malloc(3000));
  for (void* p : blocks) A.free(p);
  char* text = nullptr;
  size_t length = 0;
  FILE* out = open_memstream(&text, &length);
  ASSERT_NE(out, nullptr);
  EXPECT_EQ(A.malloc_info(0, out), 0);
  fclose(out);
  const std::string xml(text, length);
  free(text);  // open_memstream's buffer belongs to whichever malloc libc calls
  EXPECT_EQ(xml.rfind("<malloc version=\"1\" allocator=\"smalloc\"", 0), 0u) << xml;
  EXPECT_NE(xml.find("</malloc>\n"), std::string::npos) << xml;
  if (CountersEnabled()) {  // the class of the blocks just freed lists them
    bool listed = false;
    const std::regex size_re("<size from=\"(\\d+)\" to=\"(\\d+)\" total=\"\\d+\" count=\"(\\d+)\"/>");
    for (std::sregex_iterator m(xml.begin(), xml.end(), size_re), end; m != end; ++m)
      listed |= std::stoul((*m)[1]) <= 3000 && std::stoul((*m)[2]) >= 3000 && std::stoul((*m)[3]) >= 100;
    EXPECT_TRUE(listed) << xml;
  }
  errno = 0;
  EXPECT_EQ(A.malloc_info(1, stderr), -1);
  EXPECT_EQ(errno, EINVAL);
}

TEST_P(ApiTest, MallocStatsPrintsTheHeapOnStderr) {
  testing::internal::CaptureStderr();
  A.malloc_stats();
  const std::string text = testing::internal::GetCapturedStderr();
  EXPECT_EQ(text.rfind("smalloc (", 0), 0u) << text;
  EXPECT_NE(text.find("in use bytes     = "), std::string::npos) << text;
}

TEST_P(ApiTest, MallocOfAHugeSizeFailsWithENOMEM) {
  for (size_t n : kHugeSizes) {
    errno = 0;
    EXPECT_EQ(A.malloc(n), nullptr) << n;
    EXPECT_EQ(errno, ENOMEM) << n;
  }
}

// Every allocating entry point fails cleanly too, not just malloc.
TEST_P(ApiTest, EveryAllocatorFailsWithENOMEMOnAHugeSize) {
  for (size_t n : kHugeSizes) {
    errno = 0;
    EXPECT_EQ(A.calloc(1, n), nullptr) << n;
    EXPECT_EQ(errno, ENOMEM) << "calloc " << n;
    errno = 0;
    EXPECT_EQ(A.aligned_alloc(64, n), nullptr) << n;
    EXPECT_EQ(errno, ENOMEM) << "aligned_alloc " << n;
    errno = 0;
    EXPECT_EQ(A.memalign(4096, n), nullptr) << n;
    EXPECT_EQ(errno, ENOMEM) << "memalign " << n;
    errno = 0;
    EXPECT_EQ(A.valloc(n), nullptr) << n;
    EXPECT_EQ(errno, ENOMEM) << "valloc " << n;
    errno = 0;
    EXPECT_EQ(A.pvalloc(n), nullptr) << n;
    EXPECT_EQ(errno, ENOMEM) << "pvalloc " << n;
    void* out = &out;  // a sentinel that must survive the failure
    EXPECT_EQ(A.posix_memalign(&out, 64, n), ENOMEM) << n;
    EXPECT_EQ(out, &out) << "posix_memalign wrote *out on failure";
  }
}

// ---- calloc ----------------------------------------------------------------

TEST_P(ApiTest, CallocReturnsZeroedMemory) {
  for (size_t n : {size_t{1}, size_t{7}, size_t{8}, size_t{100}, 4 * KiB + 1, 70 * KiB, 3 * MiB, 9 * MiB}) {
    for (auto [count, size] : {std::pair{size_t{1}, n}, std::pair{n, size_t{1}}}) {
      void* p = A.calloc(count, size);
      ASSERT_NE(p, nullptr);
      EXPECT_TRUE(Ours(p));
      EXPECT_EQ(first_nonzero(p, n), SIZE_MAX) << count << " x " << size;
      A.free(p);
    }
  }
  void* p = A.calloc(1000, 24);  // count and size both > 1
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(first_nonzero(p, 24000), SIZE_MAX);
  A.free(p);
}

// A recycled slot holds the previous owner's bytes and a free-list link: calloc
// must clear all of it, whichever path (memset, or pages given back to the OS
// for large slots) it takes.
TEST_P(ApiTest, CallocZeroesReusedMemory) {
  for (size_t n : {size_t{8}, size_t{24}, size_t{100}, size_t{4096}, 65 * KiB, 1 * MiB, 4 * MiB, 8 * MiB + 3,
                   32 * MiB}) {
    const int rounds = n >= MiB ? 4 : 32;
    for (int r = 0; r < rounds; ++r) {
      void* dirty = A.malloc(n);
      ASSERT_NE(dirty, nullptr);
      memset(dirty, 0xab, A.malloc_usable_size(dirty));
      A.free(dirty);
      void* p = r % 2 ? A.calloc(1, n) : A.calloc(n, 1);
      ASSERT_NE(p, nullptr);
      size_t bad = first_nonzero(p, n);
      ASSERT_EQ(bad, SIZE_MAX) << "size " << n << " round " << r << ": byte " << bad << " is not zero"
                               << (p == dirty ? " (the reused block)" : "");
      memset(p, 0xab, n);
      A.free(p);
    }
    // Many dirty blocks freed at once, then as many callocs.
    std::vector<void*> blocks;
    for (int i = 0; i < 8; ++i) {
      blocks.push_back(A.malloc(n));
      ASSERT_NE(blocks.back(), nullptr);
      memset(blocks.back(), 0xab, n);
    }
    for (void* b : blocks) A.free(b);
    blocks.clear();
    for (int i = 0; i < 8; ++i) {
      void* p = A.calloc(1, n);
      ASSERT_NE(p, nullptr);
      blocks.push_back(p);
      ASSERT_EQ(first_nonzero(p, n), SIZE_MAX) << "size " << n << " block " << i;
    }
    for (void* b : blocks) A.free(b);
  }
}

TEST_P(ApiTest, CallocOverflowFailsWithENOMEM) {
  const std::pair<size_t, size_t> cases[] = {
      {SIZE_MAX / 2 + 1, 4}, {4, SIZE_MAX / 2 + 1}, {SIZE_MAX, SIZE_MAX}, {size_t{1} << 32, size_t{1} << 32},
      {SIZE_MAX, 2},         {3, SIZE_MAX / 3 + 1},
  };
  for (auto [count, size] : cases) {
    errno = 0;
    EXPECT_EQ(A.calloc(count, size), nullptr) << count << " x " << size;
    EXPECT_EQ(errno, ENOMEM) << count << " x " << size;
  }
}

// ---- realloc / reallocarray --------------------------------------------------

TEST_P(ApiTest, ReallocOfNullBehavesAsMalloc) {
  for (size_t n : {size_t{0}, size_t{1}, size_t{100}, 1 * MiB, 5 * MiB}) {
    void* p = A.realloc(nullptr, n);
    ASSERT_NE(p, nullptr) << n;
    EXPECT_TRUE(Ours(p));
    EXPECT_GE(A.malloc_usable_size(p), n);
    fill(p, n, 1);
    EXPECT_EQ(first_mismatch(p, n, 1), SIZE_MAX);
    A.free(p);
  }
}

// Grows a block step by step; at every step the old contents must have come
// along and the new tail is filled for the next step to check.
void grow_through(const Allocator& A, const std::vector<size_t>& sizes, unsigned seed) {
  void* p = nullptr;
  size_t have = 0;
  for (size_t n : sizes) {
    void* q = A.realloc(p, n);
    ASSERT_NE(q, nullptr) << "realloc to " << n;
    ASSERT_TRUE(Ours(q));
    ASSERT_GE(A.malloc_usable_size(q), n);
    size_t bad = first_mismatch(q, have, seed);
    ASSERT_EQ(bad, SIZE_MAX) << "growing " << have << " -> " << n << ": byte " << bad << " changed";
    // Fill only the new part: the pattern is positional, so this continues it.
    auto* b = static_cast<uint8_t*>(q);
    for (size_t i = have; i < n; ++i) b[i] = pattern(i, seed);
    p = q;
    have = n;
  }
  ASSERT_EQ(first_mismatch(p, have, seed), SIZE_MAX);
  A.free(p);
}

void shrink_through(const Allocator& A, const std::vector<size_t>& sizes, unsigned seed) {
  void* p = A.malloc(sizes.front());
  ASSERT_NE(p, nullptr);
  fill(p, sizes.front(), seed);
  for (size_t i = 1; i < sizes.size(); ++i) {
    size_t n = sizes[i];
    void* q = A.realloc(p, n);
    ASSERT_NE(q, nullptr) << "realloc to " << n;
    ASSERT_GE(A.malloc_usable_size(q), n);
    size_t bad = first_mismatch(q, n, seed);
    ASSERT_EQ(bad, SIZE_MAX) << "shrinking " << sizes[i - 1] << " -> " << n << ": byte " << bad << " changed";
    p = q;
  }
  A.free(p);
}

const std::vector<size_t> kOddSizes = {1,         3,          7,          13,          31,         100,
                                       255,       1000,       4097,       10007,       65537,      100003,
                                       1048577,   5000011,    33554467};

std::vector<size_t> doublings(size_t from, size_t to) {
  std::vector<size_t> v;
  for (size_t n = from; n <= to; n *= 2) v.push_back(n);
  return v;
}

TEST_P(ApiTest, ReallocPreservesContentsWhileGrowingByDoubling) {
  grow_through(A, doublings(1, 64 * MiB), 2);
}

TEST_P(ApiTest, ReallocPreservesContentsWhileGrowingThroughOddSizes) { grow_through(A, kOddSizes, 3); }

TEST_P(ApiTest, ReallocPreservesContentsWhileShrinking) {
  std::vector<size_t> halving = doublings(1, 64 * MiB);
  std::reverse(halving.begin(), halving.end());
  shrink_through(A, halving, 4);
  std::vector<size_t> odd(kOddSizes.rbegin(), kOddSizes.rend());
  shrink_through(A, odd, 5);
}

// smalloc's documented behaviour (DESIGN.md, realloc): a size that still fits
// the slot keeps the block where it is, growing or shrinking.
TEST_P(ApiTest, ReallocThatStillFitsReturnsTheSamePointer) {
  for (size_t n : {size_t{1}, size_t{24}, size_t{100}, size_t{3000}, 70 * KiB, 5 * MiB}) {
    void* p = A.malloc(n);
    ASSERT_NE(p, nullptr);
    size_t usable = A.malloc_usable_size(p);
    ASSERT_GE(usable, n);
    fill(p, n, 6);
    EXPECT_EQ(A.realloc(p, usable), p) << "growing " << n << " to its usable size " << usable;
    // Shrunk, it may move to a smaller class's slot (core_test says when).
    p = A.realloc(p, n / 2 + 1);
    ASSERT_NE(p, nullptr) << "shrinking " << n;
    EXPECT_EQ(first_mismatch(p, n / 2 + 1, 6), SIZE_MAX);
    A.free(p);
  }
}

TEST_P(ApiTest, ReallocFailureReturnsNullWithENOMEMAndKeepsTheBlock) {
  for (size_t n : {size_t{100}, 8 * MiB}) {
    void* p = A.malloc(n);
    ASSERT_NE(p, nullptr);
    fill(p, n, 7);
    size_t usable = A.malloc_usable_size(p);
    for (size_t huge : kHugeSizes) {
      errno = 0;
      EXPECT_EQ(A.realloc(p, huge), nullptr) << huge;
      EXPECT_EQ(errno, ENOMEM) << huge;
      EXPECT_EQ(A.malloc_usable_size(p), usable);
      ASSERT_EQ(first_mismatch(p, n, 7), SIZE_MAX) << "failed realloc to " << huge << " damaged the block";
    }
    A.free(p);
  }
}

// glibc 2.36 (REALLOC_ZERO_BYTES_FREES) frees the block and returns NULL; C
// leaves it implementation-defined, so we only require that a non-NULL result
// is a block of ours that can be freed.
TEST_P(ApiTest, ReallocToZeroFreesTheBlockOrReturnsAFreeableOne) {
  for (size_t n : {size_t{1}, size_t{100}, 100 * KiB, 5 * MiB}) {
    for (int i = 0; i < 100; ++i) {
      void* p = A.malloc(n);
      ASSERT_NE(p, nullptr);
      void* r = A.realloc(p, 0);
      if (r) {
        EXPECT_TRUE(Ours(r));
        A.free(r);
      }
    }
  }
}

TEST_P(ApiTest, ReallocarrayResizesLikeRealloc) {
  void* p = A.reallocarray(nullptr, 10, 8);
  ASSERT_NE(p, nullptr);
  EXPECT_TRUE(Ours(p));
  fill(p, 80, 8);
  void* q = A.reallocarray(p, 1000, 24);
  ASSERT_NE(q, nullptr);
  EXPECT_GE(A.malloc_usable_size(q), 24000u);
  EXPECT_EQ(first_mismatch(q, 80, 8), SIZE_MAX);
  A.free(q);
}

TEST_P(ApiTest, ReallocarrayOverflowFailsWithENOMEMAndKeepsTheBlock) {
  void* p = A.malloc(64);
  ASSERT_NE(p, nullptr);
  fill(p, 64, 9);
  const std::pair<size_t, size_t> cases[] = {{SIZE_MAX / 2 + 1, 4}, {4, SIZE_MAX / 2 + 1}, {SIZE_MAX, SIZE_MAX}};
  for (auto [count, size] : cases) {
    errno = 0;
    EXPECT_EQ(A.reallocarray(p, count, size), nullptr) << count << " x " << size;
    EXPECT_EQ(errno, ENOMEM);
    ASSERT_EQ(first_mismatch(p, 64, 9), SIZE_MAX);
  }
  void* q = A.reallocarray(p, 16, 8);  // the block is still live and resizable
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(first_mismatch(q, 64, 9), SIZE_MAX);
  A.free(q);
}

// ---- aligned allocation --------------------------------------------------------

TEST_P(ApiTest, PosixMemalignRejectsBadAlignmentsWithEINVAL) {
  // Not a power of two, or not a multiple of sizeof(void*) (1, 2, 4).
  for (size_t a : {size_t{0}, size_t{1}, size_t{2}, size_t{4}, size_t{3}, size_t{12}, size_t{24}, size_t{40},
                   size_t{1000}, size_t{4095}, size_t{4097}, SIZE_MAX}) {
    void* out = &out;
    EXPECT_EQ(A.posix_memalign(&out, a, 64), EINVAL) << "alignment " << a;
    EXPECT_EQ(out, &out) << "alignment " << a << ": *out was written";
  }
}

TEST_P(ApiTest, PosixMemalignAlignsToEveryValidAlignment) {
  std::vector<size_t> alignments = doublings(8, 1 * MiB);
  alignments.push_back(2 * MiB);
  alignments.push_back(64 * MiB);
  for (size_t a : alignments) {
    for (size_t n : {size_t{0}, size_t{1}, a - 1, a, a + 1}) {
      void* p = nullptr;
      ASSERT_EQ(A.posix_memalign(&p, a, n), 0) << "alignment " << a << " size " << n;
      ASSERT_NE(p, nullptr);
      EXPECT_TRUE(Ours(p));
      EXPECT_TRUE(aligned(p, a)) << p << " for alignment " << a;
      EXPECT_GE(A.malloc_usable_size(p), n);
      if (n) static_cast<char*>(p)[0] = static_cast<char*>(p)[n - 1] = 1;
      A.free(p);
    }
  }
}

// C23 (and glibc >= 2.38) make aligned_alloc fail on an alignment that is not
// a power of two; glibc 2.36 treated aligned_alloc as memalign and accepted
// these. smalloc follows the stricter, newer rule.
TEST_P(ApiTest, AlignedAllocRejectsBadAlignmentsWithEINVAL) {
  for (size_t a : {size_t{0}, size_t{3}, size_t{24}, size_t{100}, SIZE_MAX}) {
    errno = 0;
    EXPECT_EQ(A.aligned_alloc(a, 64), nullptr) << "alignment " << a;
    EXPECT_EQ(errno, EINVAL) << "alignment " << a;
  }
}

TEST_P(ApiTest, AlignedAllocAlignsToEveryValidAlignment) {
  for (size_t a : doublings(1, 64 * MiB)) {
    for (size_t n : {size_t{0}, size_t{1}, a, 3 * a}) {
      void* p = A.aligned_alloc(a, n);
      ASSERT_NE(p, nullptr) << "alignment " << a << " size " << n;
      EXPECT_TRUE(Ours(p));
      EXPECT_TRUE(aligned(p, a)) << p << " for alignment " << a;
      EXPECT_GE(A.malloc_usable_size(p), n);
      if (n) static_cast<char*>(p)[0] = static_cast<char*>(p)[n - 1] = 1;
      A.free(p);
    }
  }
}

TEST_P(ApiTest, MemalignAlignsToPowersOfTwo) {
  for (size_t a : doublings(1, 64 * MiB)) {
    void* p = A.memalign(a, 100);
    ASSERT_NE(p, nullptr) << "alignment " << a;
    EXPECT_TRUE(Ours(p));
    EXPECT_TRUE(aligned(p, a)) << p << " for alignment " << a;
    EXPECT_TRUE(aligned(p, 8));
    A.free(p);
  }
}

// glibc 2.36's memalign rounds an alignment that is not a power of two up to
// the next one (and treats 0 as "no requirement").
TEST_P(ApiTest, MemalignRoundsOtherAlignmentsUpToAPowerOfTwo) {
  for (size_t a : {size_t{0}, size_t{3}, size_t{24}, size_t{100}, size_t{3000}, size_t{5000}, 1 * MiB + 1}) {
    void* p = A.memalign(a, 10);
    ASSERT_NE(p, nullptr) << "alignment " << a;
    EXPECT_TRUE(Ours(p));
    size_t want = a ? std::bit_ceil(a) : 8;
    EXPECT_TRUE(aligned(p, want)) << p << " for alignment " << a << " (want " << want << ")";
    A.free(p);
  }
  errno = 0;  // and an alignment that has no power of two above it is refused
  EXPECT_EQ(A.memalign(SIZE_MAX, 10), nullptr);
  EXPECT_EQ(errno, EINVAL);
}

TEST_P(ApiTest, VallocReturnsPageAlignedBlocks) {
  for (size_t n : {size_t{0}, size_t{1}, size_t{100}, size_t{4096}, size_t{4097}, 1 * MiB + 5}) {
    void* p = A.valloc(n);
    ASSERT_NE(p, nullptr) << n;
    EXPECT_TRUE(Ours(p));
    EXPECT_TRUE(aligned(p, kPage)) << p;
    EXPECT_GE(A.malloc_usable_size(p), n);
    fill(p, n, 10);
    A.free(p);
  }
}

// pvalloc rounds the size up to whole pages. glibc 2.36's pvalloc(0) returns
// a minimal chunk (24 usable bytes); per the brief, smalloc gives a whole page.
TEST_P(ApiTest, PvallocReturnsWholePagesPageAligned) {
  for (size_t n : {size_t{0}, size_t{1}, kPage - 1, kPage, kPage + 1, 1 * MiB + 1}) {
    void* p = A.pvalloc(n);
    ASSERT_NE(p, nullptr) << n;
    EXPECT_TRUE(Ours(p));
    EXPECT_TRUE(aligned(p, kPage)) << p;
    size_t pages = n ? (n + kPage - 1) / kPage * kPage : kPage;
    size_t usable = A.malloc_usable_size(p);
    EXPECT_GE(usable, pages) << "pvalloc(" << n << ")";
    memset(p, 0x11, usable);
    A.free(p);
  }
}

// ---- sizes and alignment of plain blocks -------------------------------------

TEST_P(ApiTest, MallocUsableSizeOfNullIsZero) { EXPECT_EQ(A.malloc_usable_size(nullptr), 0u); }

// Every usable byte is the caller's: fill them all in every live block at once,
// then check none was disturbed by a neighbour's fill.
TEST_P(ApiTest, MallocUsableSizeCoversTheRequestAndIsAllWritable) {
  std::vector<size_t> sizes;
  for (size_t n = 0; n <= 4096; ++n) sizes.push_back(n);
  for (size_t p2 = 8 * KiB; p2 <= 16 * MiB; p2 *= 2)
    for (size_t n : {p2 - 1, p2, p2 + 1}) sizes.push_back(n);
  std::vector<std::pair<void*, size_t>> blocks;
  for (size_t i = 0; i < sizes.size(); ++i) {
    void* p = A.malloc(sizes[i]);
    ASSERT_NE(p, nullptr) << sizes[i];
    size_t usable = A.malloc_usable_size(p);
    ASSERT_GE(usable, sizes[i]) << "malloc(" << sizes[i] << ")";
    fill(p, usable, unsigned(i));
    blocks.emplace_back(p, usable);
  }
  for (size_t i = 0; i < blocks.size(); ++i) {
    size_t bad = first_mismatch(blocks[i].first, blocks[i].second, unsigned(i));
    EXPECT_EQ(bad, SIZE_MAX) << "malloc(" << sizes[i] << ") at " << blocks[i].first << ": byte " << bad
                             << " of " << blocks[i].second << " usable was overwritten";
  }
  for (auto& b : blocks) A.free(b.first);
}

// malloc's result must suit any object that fits: 16 bytes for anything of 16
// bytes or more (alignof(max_align_t)), the size's own power of two below
// that, and never less than 8.
TEST_P(ApiTest, MallocPointersAreAlignedForAnyObjectThatFits) {
  std::vector<size_t> sizes;
  for (size_t n = 1; n <= 4096; ++n) sizes.push_back(n);
  for (size_t n = 8 * KiB; n <= 1 * GiB; n *= 2) sizes.push_back(n);
  for (size_t n : sizes) {
    void* p = A.malloc(n);
    ASSERT_NE(p, nullptr) << n;
    size_t want = std::max<size_t>(8, std::min<size_t>(16, std::bit_ceil(n)));
    EXPECT_TRUE(aligned(p, want)) << "malloc(" << n << ") = " << p << ", want alignment " << want;
    A.free(p);
  }
}

#ifndef SMALLOC_TEST_DEBUG
// smalloc's own promise (DESIGN.md): slots are powers of two aligned to their
// size, a block ends where its slot ends, and malloc_usable_size reports the
// rest of the slot. A block starts at its slot, but for those of 4 KiB to
// 1 MiB slots that leave room, which start 64 bytes in (off the page grid).
// Slots are powers of two, and 1.5 times a power of two from 48 bytes to
// 1.5 MiB.
TEST_P(ApiTest, MallocPointersLieAtTheEndOfTheirSlot) {
  for (size_t n : {size_t{1}, size_t{9}, size_t{17}, size_t{33}, size_t{49}, size_t{100}, size_t{1000},
                   size_t{4096}, size_t{4097}, size_t{5000}, size_t{6080}, size_t{6081}, size_t{8128}, size_t{8129},
                   100 * KiB, MiB - 64, MiB - 63, MiB + 1, 3 * MiB / 2 + 1, 3 * MiB, 100 * MiB}) {
    void* p = A.malloc(n);
    ASSERT_NE(p, nullptr);
    const size_t power = std::bit_ceil(std::max<size_t>(n, 8));
    const size_t slot = power >= 64 && power * 3 / 4 >= n && power * 3 / 4 <= 3 * MiB / 2 ? power * 3 / 4 : power;
    const size_t into = slot >= 4 * KiB && slot <= MiB && n <= slot - 64 ? 64 : 0;
    EXPECT_EQ((reinterpret_cast<uintptr_t>(p) - into) % (slot & -slot), 0u) << "malloc(" << n << ") = " << p;
    EXPECT_EQ(A.malloc_usable_size(p), slot - into) << "malloc(" << n << ")";
    A.free(p);
  }
}
#else
// The debug build's promise instead: malloc_usable_size is the requested size,
// so that nothing legitimate writes into the redzone after the block.
TEST_P(ApiTest, UsableSizeIsTheRequestedSizeInTheDebugBuild) {
  for (size_t n : {size_t{1}, size_t{9}, size_t{17}, size_t{100}, size_t{1000}, 100 * KiB, 3 * MiB}) {
    void* p = A.malloc(n);
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(A.malloc_usable_size(p), n);
    EXPECT_TRUE(aligned(p, 16)) << p;
    A.free(p);
  }
}
#endif

// Fill each block exactly to its requested size, in an interleaving of sizes
// that puts many classes side by side; free half, refill the holes, and check
// that every live block still holds its own pattern.
TEST_P(ApiTest, WritingAWholeBlockLeavesEveryOtherBlockIntact) {
  const size_t kinds[] = {1, 7, 8, 9, 15, 16, 17, 31, 33, 63, 64, 65, 127, 200, 255, 256, 257,
                          511, 1000, 1023, 1025, 2047, 4095, 4096, 4097, 10000, 65535, 65537, 262145};
  struct Block {
    void* p;
    size_t n;
    unsigned seed;
  };
  std::vector<Block> live;
  unsigned seed = 0;
  auto add = [&](size_t n) {
    void* p = A.malloc(n);
    ASSERT_NE(p, nullptr) << n;
    fill(p, n, ++seed);
    live.push_back({p, n, seed});
  };
  auto verify = [&](const char* when) {
    for (const Block& b : live) {
      size_t bad = first_mismatch(b.p, b.n, b.seed);
      ASSERT_EQ(bad, SIZE_MAX) << when << ": block " << b.p << " of " << b.n << " bytes changed at byte " << bad;
    }
  };
  for (int round = 0; round < 40; ++round)
    for (size_t n : kinds) add(n);
  verify("after filling");
  std::vector<Block> keep;
  for (size_t i = 0; i < live.size(); ++i) {
    if (i % 2) A.free(live[i].p);
    else keep.push_back(live[i]);
  }
  live = keep;
  for (int round = 0; round < 20; ++round)
    for (size_t n : kinds) add(n);
  verify("after refilling freed slots");
  for (const Block& b : live) A.free(b.p);
}

TEST_P(ApiTest, MallocTrimReturnsWithoutHarm) {
  void* p = A.malloc(100);
  ASSERT_NE(p, nullptr);
  fill(p, 100, 11);
  int r = A.malloc_trim(0);
  EXPECT_TRUE(r == 0 || r == 1) << r;  // glibc: 1 if memory was released
  EXPECT_EQ(first_mismatch(p, 100, 11), SIZE_MAX);
  A.free(p);
}

std::string TableName(const testing::TestParamInfo<Allocator>& info) { return info.param.name; }

#ifdef SMALLOC_TEST_OVERRIDE
INSTANTIATE_TEST_SUITE_P(Both, ApiTest, testing::Values(kPrefixed, kOverride), TableName);

// Without this, every ApiTest above could pass against glibc's malloc.
TEST(Override, LibcNamesAreServedBySmalloc) {
  void* p = ::malloc(16);
  EXPECT_TRUE(Ours(p));
  void* q = ::calloc(2, 16);
  EXPECT_TRUE(Ours(q));
  p = ::realloc(p, 1000);
  EXPECT_TRUE(Ours(p));
  void* r = nullptr;
  ASSERT_EQ(::posix_memalign(&r, 64, 10), 0);
  EXPECT_TRUE(Ours(r));
  ::free(p);
  ::free(q);
  ::free(r);
}

// libc's own internal allocations (strdup calls malloc inside libc) must reach
// us too, or a block could be allocated by one allocator and freed by the other.
TEST(Override, LibcInternalAllocationsAreServedBySmalloc) {
  char* s = strdup("smalloc");
  ASSERT_NE(s, nullptr);
  EXPECT_TRUE(Ours(s));
  EXPECT_STREQ(s, "smalloc");
  ::free(s);
}

// Programs that call glibc's __libc_ names directly reach us too, so that a
// block never crosses from one allocator to the other.
TEST(Override, LibcInternalNamesAreServedBySmalloc) {
  void* a = __libc_malloc(40);
  EXPECT_TRUE(Ours(a));
  auto* c = static_cast<unsigned char*>(__libc_calloc(3, 50));
  ASSERT_TRUE(Ours(c));
  EXPECT_EQ(*std::max_element(c, c + 150), 0);
  a = __libc_realloc(a, 5000);
  EXPECT_TRUE(Ours(a));
  void* m = __libc_memalign(256, 10);
  EXPECT_TRUE(Ours(m));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(m) % 256, 0u);
  void* v = __libc_valloc(10);
  void* pv = __libc_pvalloc(10);
  EXPECT_TRUE(Ours(v));
  EXPECT_TRUE(Ours(pv));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(v) % 4096, 0u);
  EXPECT_GE(::malloc_usable_size(pv), 4096u);
  __libc_free(::malloc(24));  // ours, freed through the other name: must not reach glibc
  ::free(a);
  __libc_free(c);
  __libc_free(m);
  ::free(v);
  __libc_free(pv);
}

// The two names reach one heap: a block from either frees through the other.
TEST(Override, PrefixedAndLibcNamesShareOneHeap) {
  void* p = smalloc_malloc(48);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(::malloc_usable_size(p), smalloc_malloc_usable_size(p));
  ::free(p);
#ifdef SMALLOC_TEST_DEBUG
  ::malloc_trim(0);  // the debug build holds freed blocks in quarantine until trimmed
#endif
  void* q = ::malloc(48);
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q, p) << "the slot freed through ::free should be the next one handed out";
  smalloc_free(q);
}
#else
INSTANTIATE_TEST_SUITE_P(Prefixed, ApiTest, testing::Values(kPrefixed), TableName);

// The prefixed library must not replace libc's malloc.
TEST(PrefixedOnly, LibcMallocIsNotReplaced) {
  void* p = ::malloc(16);
  ASSERT_NE(p, nullptr);
  EXPECT_FALSE(smalloc_owns(p));
  ::free(p);
  void* q = smalloc_malloc(16);
  EXPECT_TRUE(Ours(q));
  smalloc_free(q);
}
#endif

}  // namespace
