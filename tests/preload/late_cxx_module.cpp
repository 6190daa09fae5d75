// C++ code that a C program loads with dlopen (as Python loads an extension
// module): the C++ runtime arrives after the allocator was bound, and
// operator new must still throw std::bad_alloc, call the new-handler, and
// return null from the nothrow forms through it (see src/new_delete.cpp).
#include <cstdio>
#include <new>
#include <string>

namespace {
int calls = 0;
void throw_on_third_call() {
  if (++calls > 2) throw std::bad_alloc();
}
}  // namespace

extern "C" int run() {
  int ok = 0;
  constexpr size_t kTooMuch = size_t{1} << 62;
  try {
    void* p = ::operator new(kTooMuch);
    std::printf("operator new returned %p\n", p);
  } catch (const std::bad_alloc&) {
    std::puts("caught bad_alloc");
    ++ok;
  }
  std::set_new_handler(throw_on_third_call);
  try {
    void* p = ::operator new(kTooMuch);
    std::printf("operator new returned %p\n", p);
  } catch (const std::bad_alloc&) {
    std::printf("caught bad_alloc from the handler's third call: %d\n", calls);
    ok += calls == 3;
  }
  void* q = ::operator new(kTooMuch, std::nothrow);
  std::printf("nothrow new returned %s\n", q ? "a block" : "null");
  ok += q == nullptr;
  std::set_new_handler(nullptr);
  std::string s(1000, 'x');
  ok += s.size() == 1000;
  return ok;
}
