// Blocks larger than the largest slot of a small layout. Run under
// `ulimit -v 8388608` (8 GiB of address space) smalloc falls back to a layout
// whose largest slot is 2 MiB; everything bigger must still work: malloc,
// calloc, realloc both ways across that size, aligned_alloc, usable size, free.
// And more blocks of that largest size, or aligned to it, than the layout
// has such slots (64).
// Prints what it checked, the same under any allocator.
#include <malloc.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

int g_errors = 0;
void check(bool ok, const char* what) {
  if (!ok) {
    ++g_errors;
    std::fprintf(stderr, "check failed: %s\n", what);
  }
}

void fill(unsigned char* p, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i += 4093) p[i] = static_cast<unsigned char>(i * 31 + seed);
}
bool intact(const unsigned char* p, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i += 4093)
    if (p[i] != static_cast<unsigned char>(i * 31 + seed)) return false;
  return true;
}

}  // namespace

int main() {
  constexpr size_t kMiB = size_t{1} << 20;
  auto* a = static_cast<unsigned char*>(std::malloc(100 * kMiB));
  check(a != nullptr, "malloc 100 MiB");
  if (!a) return 1;
  std::memset(a, 0x5a, 100 * kMiB);
  fill(a, 100 * kMiB, 1);
  check(malloc_usable_size(a) >= 100 * kMiB, "usable size of 100 MiB");

  a = static_cast<unsigned char*>(std::realloc(a, 300 * kMiB));  // grows
  check(a && intact(a, 100 * kMiB, 1), "realloc to 300 MiB keeps the contents");
  if (!a) return 1;
  a = static_cast<unsigned char*>(std::realloc(a, 1 * kMiB));  // back into a slab
  check(a && intact(a, 1 * kMiB, 1), "realloc down to 1 MiB keeps the contents");
  a = static_cast<unsigned char*>(std::realloc(a, 40 * kMiB));  // and out again
  check(a && intact(a, 1 * kMiB, 1), "realloc up to 40 MiB keeps the contents");
  std::free(a);

  auto* z = static_cast<unsigned char*>(std::calloc(64, kMiB));
  check(z != nullptr, "calloc 64 MiB");
  bool zero = z != nullptr;
  for (size_t i = 0; z && i < 64 * kMiB; ++i) zero = zero && z[i] == 0;
  check(zero, "calloc'd memory is zero");
  std::free(z);

  void* aligned = std::aligned_alloc(2 * kMiB, 64 * kMiB);
  check(aligned && reinterpret_cast<uintptr_t>(aligned) % (2 * kMiB) == 0, "aligned_alloc 2 MiB-aligned 64 MiB");
  std::free(aligned);

  void* many[64];
  for (void*& p : many) {
    p = std::malloc(8 * kMiB);
    check(p != nullptr, "malloc 8 MiB, 64 times");
    if (p) std::memset(p, 1, 4096);
  }
  for (void* p : many) std::free(p);

  // 2 MiB blocks and 2 MiB-aligned small ones: 200 of each, live at once.
  void* largest[200];
  void* aligned_small[200];
  for (size_t i = 0; i < 200; ++i) {
    largest[i] = std::malloc(2 * kMiB);
    check(largest[i] != nullptr, "malloc 2 MiB, 200 live at once");
    if (largest[i]) std::memset(largest[i], int(i), 2 * kMiB);
    aligned_small[i] = nullptr;
    check(posix_memalign(&aligned_small[i], 2 * kMiB, 100) == 0 && aligned_small[i] &&
              reinterpret_cast<uintptr_t>(aligned_small[i]) % (2 * kMiB) == 0,
          "posix_memalign 100 bytes 2 MiB-aligned, 200 live at once");
    if (aligned_small[i]) std::memset(aligned_small[i], int(i), 100);
  }
  for (size_t i = 0; i < 200; ++i) {
    const auto* p = static_cast<const unsigned char*>(largest[i]);
    check(!p || (p[0] == static_cast<unsigned char>(i) && p[2 * kMiB - 1] == static_cast<unsigned char>(i)),
          "the 2 MiB blocks keep their contents");
    std::free(largest[i]);
    std::free(aligned_small[i]);
  }

  void* too_big = std::malloc(size_t{1} << 40);  // 1 TiB: more than the limit allows
  check(too_big == nullptr, "malloc of 1 TiB fails under an 8 GiB limit");

  std::printf("huge blocks: %s\n", g_errors == 0 ? "all checks passed" : "FAILED");
  return g_errors == 0 ? 0 : 1;
}
