// Micro-benchmarks of single allocator paths.
//
//   bench_micro MODE N
//
// MODE is one of pairs-small, pairs-large, batch-lifo, batch-random, calloc,
// realloc-geom, realloc-step, aligned; N scales the work linearly (for
// realloc-* it is the number of rounds). Prints checksum=... .
#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "common.hpp"

using namespace bench;

// malloc/free of one size at a time: the fast path every allocator caches.
// Sizes are the powers of two from lo to hi and the 1.5x sizes between them
// (which land in the middle of a power-of-two size class).
static uint64_t pairs(size_t lo, size_t hi, long n) {
  uint64_t sum = 0;
  for (size_t s = lo; s <= hi; s *= 2) {
    for (size_t size : {s, s + s / 2}) {
      if (size > hi) continue;
      for (long i = 0; i < n; ++i) {
        auto* p = static_cast<unsigned char*>(std::malloc(size));
        if (!p) fail("malloc returned NULL", size);
        p[0] = (unsigned char)i;
        p[size - 1] = (unsigned char)(i >> 3);
        escape(p);
        sum += p[0] + p[size - 1];
        std::free(p);
      }
    }
  }
  return sum;
}

// Allocate a batch of n blocks (8 B .. 1 KiB, 1% up to 64 KiB), then free it
// all in LIFO or random order; repeat. Random-order frees scatter the free
// lists, which later allocations then have to walk through.
static uint64_t batch(long rounds, bool random_order) {
  const size_t n = 100000;
  Rng rng(42);
  std::vector<std::pair<void*, size_t>> blocks(n);
  std::vector<size_t> order(n);
  uint64_t sum = 0;
  for (long r = 0; r < rounds; ++r) {
    for (size_t i = 0; i < n; ++i) {
      size_t size = rng.below(100) == 0 ? rng.log_size(1024, 65536) : rng.log_size(8, 1024);
      void* p = std::malloc(size);
      if (!p) fail("malloc returned NULL", size);
      stamp(p, size, mix(i + r * n));
      blocks[i] = {p, size};
      sum += size;
    }
    for (size_t i = 0; i < n; ++i) order[i] = random_order ? i : n - 1 - i;
    if (random_order)  // Fisher-Yates with our own RNG: same order everywhere
      for (size_t i = n - 1; i > 0; --i) std::swap(order[i], order[rng.below(i + 1)]);
    for (size_t i : order) {
      verify(blocks[i].first, blocks[i].second, mix(i + r * n));
      std::free(blocks[i].first);
    }
  }
  return sum;
}

// calloc must hand out zeroed memory even when the slot was used and dirtied
// before (an allocator that skips the memset for never-used slots must know
// which ones were used). Every calloc'd block is checked; a quarter of the
// operations instead dirty slots through malloc or a growing realloc. Blocks
// stay in a ring for a while, so freed slots are reused in random order.
static uint64_t calloc_test(long n) {
  // Overflowing or impossible requests must fail with NULL and ENOMEM.
  volatile size_t big = SIZE_MAX / 2;  // volatile: no compile-time size warning
  errno = 0;
  void* p0 = std::calloc(big, 4);
  if (p0 != nullptr) fail("calloc(SIZE_MAX/2, 4) did not return NULL");
  if (errno != ENOMEM) warn("calloc(SIZE_MAX/2, 4) returned NULL without errno=ENOMEM", errno);
  errno = 0;
  void* huge = std::malloc(big * 2 - 4096);
  escape(huge);
  if (huge != nullptr) fail("malloc(SIZE_MAX-4096) did not return NULL");
  if (errno != ENOMEM) warn("malloc(SIZE_MAX-4096) returned NULL without errno=ENOMEM", errno);

  Rng rng(7);
  std::vector<std::pair<void*, size_t>> ring(256, {nullptr, 0});
  uint64_t sum = 0;
  for (long i = 0; i < n; ++i) {
    size_t size = rng.below(50) == 0 ? rng.log_size(4096, 1 << 20) : rng.log_size(8, 4096);
    auto& slot = ring[rng.below(ring.size())];
    unsigned char* p;
    switch (rng.below(8)) {
      case 0:  // plain malloc: the slot is used but not zeroed
        p = static_cast<unsigned char*>(std::malloc(size));
        break;
      case 1:  // grow a live block in place or by moving it
        if (!slot.first) continue;
        size += slot.second;
        p = static_cast<unsigned char*>(std::realloc(slot.first, size));
        slot.first = nullptr;
        break;
      default: {
        size_t elem = size_t{1} << rng.below(4);  // 1, 2, 4 or 8 byte elements
        size_t count = (size + elem - 1) / elem;
        size = count * elem;
        p = static_cast<unsigned char*>(std::calloc(count, elem));
        if (!p) fail("calloc returned NULL", size);
        const uint64_t* w = reinterpret_cast<const uint64_t*>(p);
        uint64_t acc = 0;
        for (size_t k = 0; k < size / 8; ++k) acc |= w[k];
        for (size_t k = size / 8 * 8; k < size; ++k) acc |= p[k];
        if (acc != 0) fail("calloc returned non-zero memory", size);
      }
    }
    if (!p) fail("allocation returned NULL", size);
    std::memset(p, 0xa5, size);  // dirty it so a reused slot must be zeroed again
    std::free(slot.first);
    slot = {p, size};
    sum += size;
  }
  for (auto& s : ring) std::free(s.first);
  return sum;
}

// One buffer grows like a std::vector's storage. Between two growth steps the
// program allocates a small unrelated block (as real code does), so that an
// allocator can not always extend in place at the top of its heap.
static uint64_t realloc_geom(long rounds) {
  const size_t limit = size_t{64} << 20;
  Rng rng(3);
  uint64_t sum = 0;
  std::vector<void*> blockers;
  for (long r = 0; r < rounds; ++r) {
    size_t size = 1;
    auto* p = static_cast<unsigned char*>(std::realloc(nullptr, size));
    if (!p) fail("realloc(NULL, 1) returned NULL");
    p[0] = (unsigned char)r;
    while (size < limit) {
      size_t grown = size + std::max<size_t>(1, size / 2 + rng.below(size / 2 + 1));  // x1.5 .. x2
      grown = std::min(grown, limit);
      p = static_cast<unsigned char*>(std::realloc(p, grown));
      if (!p) fail("realloc returned NULL", grown);
      for (size_t i = size; i < grown; ++i) p[i] = (unsigned char)(i * 7 + r);
      size = grown;
      blockers.push_back(std::malloc(32 + rng.below(96)));
    }
    for (size_t i = 1; i < size; i += 4093)  // contents must have survived every move
      if (p[i] != (unsigned char)(i * 7 + r)) fail("realloc lost data", i);
    sum += hash_bytes(p, 4096) + size;
    std::free(p);
    for (void* b : blockers) std::free(b);
    blockers.clear();
  }
  return sum;
}

// The same buffer grown by +64 B steps up to 4 MiB: an allocator that copies
// on every step is quadratic here, one that grows in place is linear.
static uint64_t realloc_step(long rounds, size_t limit) {
  uint64_t sum = 0;
  for (long r = 0; r < rounds; ++r) {
    unsigned char* p = nullptr;
    for (size_t size = 64; size <= limit; size += 64) {
      p = static_cast<unsigned char*>(std::realloc(p, size));
      if (!p) fail("realloc returned NULL", size);
      std::memset(p + size - 64, (int)((size >> 6) + r), 64);
    }
    for (size_t i = 0; i < limit; i += 4096 + 64)
      if (p[i] != (unsigned char)((i >> 6) + 1 + r)) fail("realloc lost data", i);
    sum += hash_bytes(p, 4096) + hash_bytes(p + limit - 4096, 4096);
    std::free(p);
  }
  return sum;
}

// posix_memalign and aligned_alloc with alignments 64 .. 4096; blocks stay in
// a ring for a while so that aligned and freed slots are mixed.
static uint64_t aligned(long n) {
  Rng rng(11);
  struct Block { void* p; size_t size; uint64_t tag; };
  std::vector<Block> ring(256, {nullptr, 0, 0});
  uint64_t sum = 0;
  for (long i = 0; i < n; ++i) {
    size_t align = size_t{64} << rng.below(7);
    size_t size = rng.log_size(8, 4 * align);
    void* p = nullptr;
    if (i & 1) {
      size = (size + align - 1) / align * align;  // C11 wants a multiple of the alignment
      p = std::aligned_alloc(align, size);
    } else if (posix_memalign(&p, align, size) != 0) {
      p = nullptr;
    }
    if (!p) fail("aligned allocation returned NULL", size);
    if (reinterpret_cast<uintptr_t>(p) % align != 0)
      warn(i & 1 ? "aligned_alloc returned a misaligned block (alignment)"
                 : "posix_memalign returned a misaligned block (alignment)", align);
    uint64_t tag = mix(i);
    stamp(p, size, tag);
    Block& b = ring[rng.below(ring.size())];
    if (b.p) verify(b.p, b.size, b.tag);
    std::free(b.p);
    b = {p, size, tag};
    sum += size + align;
  }
  for (auto& b : ring) std::free(b.p);
  return sum;
}

int main(int argc, char** argv) {
  std::string mode = argc > 1 ? argv[1] : "";
  long n = arg_or(argc, argv, 2, 1);
  uint64_t c;
  if (mode == "pairs-small") c = pairs(8, 1024, n);
  else if (mode == "pairs-large") c = pairs(2048, 1 << 20, n);
  else if (mode == "batch-lifo") c = batch(n, false);
  else if (mode == "batch-random") c = batch(n, true);
  else if (mode == "calloc") c = calloc_test(n);
  else if (mode == "realloc-geom") c = realloc_geom(n);
  else if (mode == "realloc-step") c = realloc_step(n, arg_or(argc, argv, 3, 4 << 20));
  else if (mode == "aligned") c = aligned(n);
  else {
    std::fprintf(stderr, "usage: %s pairs-small|pairs-large|batch-lifo|batch-random|calloc|"
                         "realloc-geom|realloc-step|aligned N [limit]\n", argv[0]);
    return 2;
  }
  print_checksum(c);
  return 0;
}
