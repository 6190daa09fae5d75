// Every form of C++ operator new and delete. New-expressions pass their kind
// so that a debug policy can catch malloc/delete and new[]/delete mismatches.
#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <new>

#include "heap.hpp"
#include SMALLOC_POLICY_HEADER

// The shared library is linked against libc alone, so that loaded into a C
// program it does not drag libstdc++ in: that cost every process 1.1 MB of
// RSS and 0.7 ms of start-up. What operator new needs of the C++ runtime
// (the new-handler, throwing std::bad_alloc, catching for the nothrow forms)
// is referenced weakly there: bound at load time to the runtime of any C++
// program, and otherwise looked up when an allocation fails, in case C++
// code came later with dlopen (Python's extension modules, say). Linked
// statically, the references are ordinary ones (a weak one would not pull
// bad_alloc out of libstdc++.a), and this file is linked in only for a
// program that calls operator new: a C++ one.
#if SMALLOC_SHARED_LIBRARY
#define SMALLOC_CXX_RUNTIME [[gnu::weak]]
asm(".weak __cxa_begin_catch\n.weak __cxa_end_catch");  // what catch (...) calls
#else
#define SMALLOC_CXX_RUNTIME
#endif
extern "C" {
SMALLOC_CXX_RUNTIME void* __cxa_allocate_exception(size_t) noexcept;
SMALLOC_CXX_RUNTIME void __cxa_throw(void*, void*, void (*)(void*));
SMALLOC_CXX_RUNTIME int __gxx_personality_v0();
}
// std::bad_alloc's type_info, vtable and destructor, and std::get_new_handler.
SMALLOC_CXX_RUNTIME extern char bad_alloc_type_info[] asm("_ZTISt9bad_alloc");
SMALLOC_CXX_RUNTIME extern char bad_alloc_vtable[] asm("_ZTVSt9bad_alloc");
SMALLOC_CXX_RUNTIME void bad_alloc_destructor(void*) asm("_ZNSt9bad_allocD1Ev");
SMALLOC_CXX_RUNTIME std::new_handler get_new_handler() noexcept asm("_ZSt15get_new_handlerv");

namespace smalloc {
extern Heap<Policy, true> g_heap;
}

using smalloc::g_heap;
using smalloc::Kind;

namespace {

// `bound` if the program's runtime was there at load time, else the same
// symbol in a libstdc++ loaded since (RTLD_NOLOAD: never loads one).
template <class T>
T* cxx_runtime(T* bound, [[maybe_unused]] const char* name) {
  if constexpr (SMALLOC_SHARED_LIBRARY) {
    if (bound == nullptr) {
      void* lib = dlopen("libstdc++.so.6", RTLD_NOW | RTLD_NOLOAD);
      return lib ? reinterpret_cast<T*>(dlsym(lib, name)) : nullptr;
    }
  }
  return bound;
}

std::new_handler current_new_handler() {
  auto* get = cxx_runtime(&get_new_handler, "_ZSt15get_new_handlerv");
  return get ? get() : nullptr;
}

// throw std::bad_alloc(), through whichever runtime there is: a bad_alloc
// is its vtable pointer alone (the Itanium C++ ABI's layout).
[[noreturn, gnu::cold]] void throw_bad_alloc() {
  auto* allocate_exception = cxx_runtime(&__cxa_allocate_exception, "__cxa_allocate_exception");
  auto* throw_exception = cxx_runtime(&__cxa_throw, "__cxa_throw");
  char* type_info = cxx_runtime(bad_alloc_type_info, "_ZTISt9bad_alloc");
  char* vtable = cxx_runtime(bad_alloc_vtable, "_ZTVSt9bad_alloc");
  auto* destructor = cxx_runtime(&bad_alloc_destructor, "_ZNSt9bad_allocD1Ev");
  if (allocate_exception && throw_exception && type_info && vtable && destructor) {
    void* e = allocate_exception(sizeof(void*));
    *static_cast<void**>(e) = vtable + 2 * sizeof(void*);
    throw_exception(e, type_info, destructor);
  }
  static const char kMessage[] = "smalloc: operator new: out of memory, and no C++ runtime to throw with\n";
  (void)!write(STDERR_FILENO, kMessage, sizeof kMessage - 1);
  std::abort();
}

// The standard's loop: on failure call the new-handler until it gives up.
[[gnu::noinline]] void* allocate_or_throw(size_t size, size_t align, Kind kind) {
  for (;;) {
    if (void* p = g_heap.allocate(size, align, kind)) return p;
    std::new_handler handler = current_new_handler();
    if (!handler) throw_bad_alloc();
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

// Calls the new-handler; false if it threw. Catching takes the personality
// routine our unwind tables were bound to at load time: without one (a C++
// runtime loaded since), a handler is not called at all (null, as if it had
// thrown), lest its exception escape a noexcept function.
[[gnu::noinline]] bool call_new_handler(std::new_handler handler) noexcept {
#if SMALLOC_SHARED_LIBRARY
  if (&__gxx_personality_v0 == nullptr) return false;
#endif
  try {
    handler();
    return true;
  } catch (...) {
    return false;
  }
}

void* allocate_nothrow(size_t size, size_t align, Kind kind) noexcept {
  for (;;) {
    if (void* p = g_heap.allocate(size, align, kind)) return p;
    std::new_handler handler = current_new_handler();
    if (!handler || !call_new_handler(handler)) return nullptr;
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
