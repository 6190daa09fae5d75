// Every form of C++ operator new and delete. New-expressions pass their kind
// so that a debug policy can catch malloc/delete and new[]/delete mismatches.
#include <dlfcn.h>
#include <link.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <iterator>
#include <new>
#include <type_traits>

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

// What operator new takes from a C++ runtime.
struct CxxRuntime {
  std::new_handler (*get_new_handler)() noexcept;
  void* (*allocate_exception)(size_t) noexcept;
  void (*throw_exception)(void*, void*, void (*)(void*));
  char* type_info;
  char* vtable;
  void (*destructor)(void*);
  bool complete() const {
    return get_new_handler && allocate_exception && throw_exception && type_info && vtable && destructor;
  }
};

// The runtime bound at load time if there was one; else the first loaded
// object that has one (a libstdc++.so.6 since loaded, even RTLD_LOCAL, or
// a module with libstdc++ linked in statically, as many Python wheels are).
// Any will do: they all throw and catch by the same ABI. Looked up on a
// failed allocation only, never loading anything (RTLD_NOLOAD), and kept.
CxxRuntime cxx_runtime() {
  CxxRuntime r{&get_new_handler, &__cxa_allocate_exception, &__cxa_throw,
               bad_alloc_type_info, bad_alloc_vtable, &bad_alloc_destructor};
  if constexpr (SMALLOC_SHARED_LIBRARY) {
    // Kept by the first thread to find it (kFound once written): a thread
    // that finds it meanwhile uses its own copy, so no two write `cached`.
    enum : int { kNone, kWriting, kFound };
    static std::atomic<int> state{kNone};
    static CxxRuntime cached;
    if (r.complete()) return r;
    if (state.load(std::memory_order_acquire) == kFound) return cached;
    // The names first: dlopen inside dl_iterate_phdr's callback would take
    // the loader's locks in the opposite order to a dlopen elsewhere.
    struct Names {
      const char* name[512];
      size_t count;
    };
    Names names{};
    dl_iterate_phdr(
        [](dl_phdr_info* info, size_t, void* out) {
          auto& n = *static_cast<Names*>(out);
          if (n.count < std::size(n.name)) n.name[n.count++] = info->dlpi_name;
          return 0;
        },
        &names);
    for (size_t i = 0; i < names.count && !r.complete(); ++i) {
      void* object = dlopen(names.name[i][0] ? names.name[i] : nullptr, RTLD_NOW | RTLD_NOLOAD);
      if (!object) continue;
      const auto find = [object](auto& field, const char* name) {
        field = reinterpret_cast<std::remove_reference_t<decltype(field)>>(dlsym(object, name));
      };
      find(r.get_new_handler, "_ZSt15get_new_handlerv");
      find(r.allocate_exception, "__cxa_allocate_exception");
      find(r.throw_exception, "__cxa_throw");
      find(r.type_info, "_ZTISt9bad_alloc");
      find(r.vtable, "_ZTVSt9bad_alloc");
      find(r.destructor, "_ZNSt9bad_allocD1Ev");
      dlclose(object);  // loaded before, and staying: only the count we took
    }
    if (int none = kNone; r.complete() && state.compare_exchange_strong(none, kWriting, std::memory_order_relaxed)) {
      cached = r;
      state.store(kFound, std::memory_order_release);
    }
  }
  return r;
}

std::new_handler current_new_handler() {
  const CxxRuntime r = cxx_runtime();
  return r.get_new_handler ? r.get_new_handler() : nullptr;
}

// throw std::bad_alloc(), through whichever runtime there is: a bad_alloc
// is its vtable pointer alone (the Itanium C++ ABI's layout).
[[noreturn, gnu::cold]] void throw_bad_alloc() {
  const CxxRuntime r = cxx_runtime();
  if (r.complete()) {
    void* e = r.allocate_exception(sizeof(void*));
    *static_cast<void**>(e) = r.vtable + 2 * sizeof(void*);
    r.throw_exception(e, r.type_info, r.destructor);
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
