// Every form of C++ operator new and delete, as replaced by libsmalloc.so:
// where the memory comes from, its alignment, that each delete really frees,
// and the failure protocol (std::bad_alloc, nullptr for nothrow, and the
// new-handler loop). Operators are called explicitly where a new-expression
// could be optimised away; the build also passes -fno-allocation-dce.
#include <gtest/gtest.h>
#include <malloc.h>

#include <bit>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "smalloc.h"

namespace {

constexpr size_t KiB = size_t{1} << 10;
constexpr size_t MiB = size_t{1} << 20;

const size_t kHugeSizes[] = {SIZE_MAX, SIZE_MAX / 2, size_t{1} << 62, size_t{1} << 40};

bool aligned(const void* p, size_t alignment) { return reinterpret_cast<uintptr_t>(p) % alignment == 0; }

testing::AssertionResult Ours(const void* p) {
  if (smalloc_owns(p)) return testing::AssertionSuccess();
  return testing::AssertionFailure() << p << " is not in smalloc's region";
}

// Results of operators whose value we only want to see thrown away.
void* volatile g_sink;

// The alignment a plain operator new(n) owes: any object of fundamental
// alignment that fits in n bytes (never more than 16 on x86-64), and smalloc
// never returns less than 8.
size_t plain_alignment(size_t n) {
  return std::max<size_t>(8, std::min<size_t>(__STDCPP_DEFAULT_NEW_ALIGNMENT__, std::bit_ceil(n ? n : 1)));
}

const size_t kSizes[] = {0, 1, 8, 16, 17, 100, 4096, 70 * KiB, 5 * MiB};

std::vector<size_t> alignments() {  // 16 .. 1 MiB
  std::vector<size_t> v;
  for (size_t a = 16; a <= 1 * MiB; a *= 2) v.push_back(a);
  return v;
}

// ---- where the memory comes from, and its alignment -----------------------------

TEST(NewDelete, PlainNewReturnsAlignedSmallocMemory) {
  for (size_t n : kSizes) {
    void* p = ::operator new(n);
    EXPECT_TRUE(Ours(p));
    EXPECT_TRUE(aligned(p, plain_alignment(n))) << "operator new(" << n << ") = " << p;
    memset(p, 0x5a, n);
    ::operator delete(p);
  }
}

TEST(NewDelete, ArrayNewReturnsAlignedSmallocMemory) {
  for (size_t n : kSizes) {
    void* p = ::operator new[](n);
    EXPECT_TRUE(Ours(p));
    EXPECT_TRUE(aligned(p, plain_alignment(n))) << "operator new[](" << n << ") = " << p;
    memset(p, 0x5a, n);
    ::operator delete[](p);
  }
}

TEST(NewDelete, NothrowNewReturnsAlignedSmallocMemory) {
  for (size_t n : kSizes) {
    void* p = ::operator new(n, std::nothrow);
    ASSERT_NE(p, nullptr);
    EXPECT_TRUE(Ours(p));
    EXPECT_TRUE(aligned(p, plain_alignment(n)));
    ::operator delete(p, std::nothrow);
    void* q = ::operator new[](n, std::nothrow);
    ASSERT_NE(q, nullptr);
    EXPECT_TRUE(Ours(q));
    EXPECT_TRUE(aligned(q, plain_alignment(n)));
    ::operator delete[](q, std::nothrow);
  }
}

TEST(NewDelete, NewOfZeroBytesReturnsDistinctPointers) {
  void* p = ::operator new(0);
  void* q = ::operator new(0);
  void* r = ::operator new[](0);
  EXPECT_NE(p, q);
  EXPECT_NE(q, r);
  EXPECT_NE(p, r);
  ::operator delete(p);
  ::operator delete(q);
  ::operator delete[](r);
}

TEST(NewDelete, AlignedNewFormsHonourEveryAlignmentFrom16To1MiB) {
  for (size_t a : alignments()) {
    const auto al = std::align_val_t(a);
    for (size_t n : {size_t{1}, a, a + 1}) {
      void* p[4] = {::operator new(n, al), ::operator new[](n, al), ::operator new(n, al, std::nothrow),
                    ::operator new[](n, al, std::nothrow)};
      for (int form = 0; form < 4; ++form) {
        ASSERT_NE(p[form], nullptr) << "form " << form << " alignment " << a;
        EXPECT_TRUE(Ours(p[form]));
        EXPECT_TRUE(aligned(p[form], a)) << "form " << form << " size " << n << " alignment " << a << ": " << p[form];
        static_cast<char*>(p[form])[0] = static_cast<char*>(p[form])[n - 1] = 1;
      }
      ::operator delete(p[0], n, al);  // sized + aligned
      ::operator delete[](p[1], al);
      ::operator delete(p[2], al, std::nothrow);
      ::operator delete[](p[3], n, al);
    }
  }
}

// libstdc++ and the compiler's new-expressions reach the replaced operators.
TEST(NewDelete, NewExpressionsAndLibraryContainersUseSmalloc) {
  int* i = new int(5);
  EXPECT_TRUE(Ours(i));
  delete i;

  auto* s = new std::string(100, 'x');  // the object and its heap buffer
  EXPECT_TRUE(Ours(s));
  EXPECT_TRUE(Ours(s->data()));
  delete s;

  std::vector<double> v(1000, 1.0);
  EXPECT_TRUE(Ours(v.data()));

  auto shared = std::make_shared<std::vector<int>>(10);
  EXPECT_TRUE(Ours(shared.get()));

  struct alignas(256) Overaligned {
    char bytes[256];
  };
  auto* o = new Overaligned;
  EXPECT_TRUE(Ours(o));
  EXPECT_TRUE(aligned(o, 256));
  delete o;
  auto* arr = new Overaligned[3];
  EXPECT_TRUE(Ours(arr));
  EXPECT_TRUE(aligned(arr, 256));
  delete[] arr;
}

// ---- every delete really frees ------------------------------------------------

// The release allocator gives a thread back the slot it freed last; a block
// that was really freed is handed out again within a few allocations of the
// same size and alignment (we allow 64 so as not to depend on strict LIFO).
template <class New, class Delete>
testing::AssertionResult DeleteMakesTheBlockReusable(New allocate, Delete release) {
  void* p = allocate();
  release(p);
  ::malloc_trim(0);  // the debug build holds freed blocks in quarantine until trimmed
  std::vector<void*> again;
  bool reused = false;
  for (int i = 0; i < 64 && !reused; ++i) {
    again.push_back(allocate());
    reused = again.back() == p;
  }
  for (void* q : again) release(q);
  if (reused) return testing::AssertionSuccess();
  return testing::AssertionFailure() << p << " was never handed out again after delete";
}

TEST(NewDelete, EveryDeleteFormFreesTheBlock) {
  for (size_t n : {size_t{24}, size_t{1000}, 100 * KiB}) {
    const auto al = std::align_val_t(512);
    auto plain = [n] { return ::operator new(n); };
    auto array = [n] { return ::operator new[](n); };
    auto over = [n, al] { return ::operator new(n, al); };
    auto over_array = [n, al] { return ::operator new[](n, al); };
    SCOPED_TRACE("size " + std::to_string(n));
    EXPECT_TRUE(DeleteMakesTheBlockReusable(plain, [](void* p) { ::operator delete(p); }));
    EXPECT_TRUE(DeleteMakesTheBlockReusable(plain, [n](void* p) { ::operator delete(p, n); }));
    EXPECT_TRUE(DeleteMakesTheBlockReusable(plain, [](void* p) { ::operator delete(p, std::nothrow); }));
    EXPECT_TRUE(DeleteMakesTheBlockReusable(array, [](void* p) { ::operator delete[](p); }));
    EXPECT_TRUE(DeleteMakesTheBlockReusable(array, [n](void* p) { ::operator delete[](p, n); }));
    EXPECT_TRUE(DeleteMakesTheBlockReusable(array, [](void* p) { ::operator delete[](p, std::nothrow); }));
    EXPECT_TRUE(DeleteMakesTheBlockReusable(over, [al](void* p) { ::operator delete(p, al); }));
    EXPECT_TRUE(DeleteMakesTheBlockReusable(over, [n, al](void* p) { ::operator delete(p, n, al); }));
    EXPECT_TRUE(DeleteMakesTheBlockReusable(over, [al](void* p) { ::operator delete(p, al, std::nothrow); }));
    EXPECT_TRUE(DeleteMakesTheBlockReusable(over_array, [al](void* p) { ::operator delete[](p, al); }));
    EXPECT_TRUE(DeleteMakesTheBlockReusable(over_array, [n, al](void* p) { ::operator delete[](p, n, al); }));
    EXPECT_TRUE(
        DeleteMakesTheBlockReusable(over_array, [al](void* p) { ::operator delete[](p, al, std::nothrow); }));
  }
}

TEST(NewDelete, DeleteOfNullIsANoOpInEveryForm) {
  const auto al = std::align_val_t(64);
  ::operator delete(nullptr);
  ::operator delete[](nullptr);
  ::operator delete(nullptr, size_t{16});
  ::operator delete[](nullptr, size_t{16});
  ::operator delete(nullptr, std::nothrow);
  ::operator delete[](nullptr, std::nothrow);
  ::operator delete(nullptr, al);
  ::operator delete[](nullptr, al);
  ::operator delete(nullptr, size_t{16}, al);
  ::operator delete[](nullptr, size_t{16}, al);
  ::operator delete(nullptr, al, std::nothrow);
  ::operator delete[](nullptr, al, std::nothrow);
  void* p = ::operator new(16);  // and the heap still works
  EXPECT_TRUE(Ours(p));
  ::operator delete(p);
}

// ---- failure -------------------------------------------------------------------

TEST(NewDelete, NewThrowsBadAllocOnAHugeSize) {
  const auto al = std::align_val_t(64);
  for (size_t n : kHugeSizes) {
    EXPECT_THROW(g_sink = ::operator new(n), std::bad_alloc) << n;
    EXPECT_THROW(g_sink = ::operator new[](n), std::bad_alloc) << n;
    EXPECT_THROW(g_sink = ::operator new(n, al), std::bad_alloc) << n;
    EXPECT_THROW(g_sink = ::operator new[](n, al), std::bad_alloc) << n;
  }
}

TEST(NewDelete, NothrowNewReturnsNullOnAHugeSize) {
  const auto al = std::align_val_t(64);
  for (size_t n : kHugeSizes) {
    EXPECT_EQ(::operator new(n, std::nothrow), nullptr) << n;
    EXPECT_EQ(::operator new[](n, std::nothrow), nullptr) << n;
    EXPECT_EQ(::operator new(n, al, std::nothrow), nullptr) << n;
    EXPECT_EQ(::operator new[](n, al, std::nothrow), nullptr) << n;
  }
}

// [new.delete.single]: on failure operator new calls the installed
// new-handler and retries, for as long as a handler is installed.
int g_handler_calls;
void give_up_on_second_call() {
  if (++g_handler_calls == 2) std::set_new_handler(nullptr);
}

class NewHandler : public testing::Test {
 protected:
  void SetUp() override { g_handler_calls = 0; }
  void TearDown() override { std::set_new_handler(nullptr); }
};

TEST_F(NewHandler, IsCalledOnFailureUntilItUninstallsItselfThenNewThrows) {
  std::set_new_handler(give_up_on_second_call);
  EXPECT_THROW(g_sink = ::operator new(SIZE_MAX / 2), std::bad_alloc);
  EXPECT_EQ(g_handler_calls, 2);

  g_handler_calls = 0;
  std::set_new_handler(give_up_on_second_call);
  EXPECT_THROW(g_sink = ::operator new[](SIZE_MAX / 2, std::align_val_t(4096)), std::bad_alloc);
  EXPECT_EQ(g_handler_calls, 2);
}

// The nothrow forms follow the same loop, then return nullptr.
TEST_F(NewHandler, IsCalledByNothrowNewWhichThenReturnsNull) {
  std::set_new_handler(give_up_on_second_call);
  EXPECT_EQ(::operator new(SIZE_MAX / 2, std::nothrow), nullptr);
  EXPECT_EQ(g_handler_calls, 2);

  g_handler_calls = 0;
  std::set_new_handler(give_up_on_second_call);
  EXPECT_EQ(::operator new[](SIZE_MAX / 2, std::align_val_t(64), std::nothrow), nullptr);
  EXPECT_EQ(g_handler_calls, 2);
}

// A handler may end the loop by throwing; that exception reaches the caller.
struct HandlerGaveUp : std::bad_alloc {};
TEST_F(NewHandler, ExceptionThrownByTheHandlerReachesTheCaller) {
  std::set_new_handler([] {
    ++g_handler_calls;
    throw HandlerGaveUp();
  });
  EXPECT_THROW(g_sink = ::operator new(SIZE_MAX / 2), HandlerGaveUp);
  EXPECT_EQ(g_handler_calls, 1);
  EXPECT_EQ(::operator new(SIZE_MAX / 2, std::nothrow), nullptr);  // nothrow swallows it
  EXPECT_EQ(g_handler_calls, 2);
}

// A handler is not called when the allocation succeeds.
TEST_F(NewHandler, IsNotCalledWhenAllocationSucceeds) {
  std::set_new_handler(give_up_on_second_call);
  void* p = ::operator new(1000);
  EXPECT_TRUE(Ours(p));
  ::operator delete(p);
  EXPECT_EQ(g_handler_calls, 0);
}

// new T[n] whose byte count overflows throws std::bad_array_new_length (the
// compiler checks before calling operator new[]); a count whose byte count
// fits but cannot be served throws std::bad_alloc from operator new[].
TEST(NewDelete, ArrayNewExpressionWithAHugeCountThrows) {
  volatile size_t overflowing = SIZE_MAX / 4;  // x 8 bytes overflows
  EXPECT_THROW(g_sink = new uint64_t[overflowing], std::bad_array_new_length);
  volatile size_t too_big = SIZE_MAX / 16;  // x 8 bytes = SIZE_MAX / 2
  EXPECT_THROW(g_sink = new uint64_t[too_big], std::bad_alloc);
}

}  // namespace
