// Every form of C++ operator new and delete. New-expressions pass their kind
// so that a debug policy can catch malloc/delete and new[]/delete mismatches.
#include <new>

#include "heap.hpp"
#include SMALLOC_POLICY_HEADER

namespace smalloc {
extern Heap<Policy, true> g_heap;
}

using smalloc::g_heap;
using smalloc::Kind;

namespace {

// The standard's loop: on failure call the new-handler until it gives up.
[[gnu::noinline]] void* allocate_or_throw(size_t size, size_t align, Kind kind) {
  for (;;) {
    if (void* p = g_heap.allocate(size, align, kind)) return p;
    std::new_handler handler = std::get_new_handler();
    if (!handler) throw std::bad_alloc();
    handler();
  }
}

// Everything but a slot of the thread's private list.
[[gnu::noinline]] void* allocate_new_rest(unsigned cls, size_t size, size_t align, Kind kind) {
  void* p = g_heap.allocate_unlisted(cls, size, align, kind, false);
  return __builtin_expect(p != nullptr, 1) ? p : allocate_or_throw(size, align, kind);
}

// The private list's slot first, in a path that calls nothing: with the whole
// allocation inlined here, testing its result for the new-handler made every
// new save and restore two registers (6 of its 33 instructions).
[[gnu::always_inline]] inline void* allocate_new(size_t size, size_t align, Kind kind) {
  const unsigned cls = g_heap.class_for(size, align);
  if (void* p = g_heap.allocate_listed(cls, size, align, kind, false)) return p;
  return allocate_new_rest(cls, size, align, kind);
}

void* allocate_nothrow(size_t size, size_t align, Kind kind) noexcept {
  try {
    return allocate_new(size, align, kind);
  } catch (...) {
    return nullptr;
  }
}

constexpr size_t to_size(std::align_val_t a) { return static_cast<size_t>(a); }

}  // namespace

#define SMALLOC_OPERATOR __attribute__((visibility("default")))

SMALLOC_OPERATOR void* operator new(size_t n) { return allocate_new(n, 1, Kind::New); }
SMALLOC_OPERATOR void* operator new[](size_t n) { return allocate_new(n, 1, Kind::NewArray); }
SMALLOC_OPERATOR void* operator new(size_t n, const std::nothrow_t&) noexcept {
  return allocate_nothrow(n, 1, Kind::New);
}
SMALLOC_OPERATOR void* operator new[](size_t n, const std::nothrow_t&) noexcept {
  return allocate_nothrow(n, 1, Kind::NewArray);
}
SMALLOC_OPERATOR void* operator new(size_t n, std::align_val_t a) { return allocate_new(n, to_size(a), Kind::New); }
SMALLOC_OPERATOR void* operator new[](size_t n, std::align_val_t a) {
  return allocate_new(n, to_size(a), Kind::NewArray);
}
SMALLOC_OPERATOR void* operator new(size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return allocate_nothrow(n, to_size(a), Kind::New);
}
SMALLOC_OPERATOR void* operator new[](size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return allocate_nothrow(n, to_size(a), Kind::NewArray);
}

SMALLOC_OPERATOR void operator delete(void* p) noexcept { g_heap.deallocate(p, Kind::New); }
SMALLOC_OPERATOR void operator delete[](void* p) noexcept { g_heap.deallocate(p, Kind::NewArray); }
SMALLOC_OPERATOR void operator delete(void* p, const std::nothrow_t&) noexcept { g_heap.deallocate(p, Kind::New); }
SMALLOC_OPERATOR void operator delete[](void* p, const std::nothrow_t&) noexcept {
  g_heap.deallocate(p, Kind::NewArray);
}
SMALLOC_OPERATOR void operator delete(void* p, size_t) noexcept { g_heap.deallocate(p, Kind::New); }
SMALLOC_OPERATOR void operator delete[](void* p, size_t) noexcept { g_heap.deallocate(p, Kind::NewArray); }
SMALLOC_OPERATOR void operator delete(void* p, std::align_val_t) noexcept { g_heap.deallocate(p, Kind::New); }
SMALLOC_OPERATOR void operator delete[](void* p, std::align_val_t) noexcept { g_heap.deallocate(p, Kind::NewArray); }
SMALLOC_OPERATOR void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  g_heap.deallocate(p, Kind::New);
}
SMALLOC_OPERATOR void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  g_heap.deallocate(p, Kind::NewArray);
}
SMALLOC_OPERATOR void operator delete(void* p, size_t, std::align_val_t) noexcept { g_heap.deallocate(p, Kind::New); }
SMALLOC_OPERATOR void operator delete[](void* p, size_t, std::align_val_t) noexcept {
  g_heap.deallocate(p, Kind::NewArray);
}
