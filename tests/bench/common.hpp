// Helpers shared by the benchmark workloads.
//
// Every workload is deterministic: the same arguments give the same checksum
// under every allocator, so the harness can tell a wrong result from a slow
// one. Nothing here may depend on pointer values or on thread scheduling.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace bench {

// splitmix64: tiny, fast, and identical everywhere (std:: distributions are not
// guaranteed to be the same across library versions).
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed) {}
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  uint64_t below(uint64_t n) { return next() % n; }
  // Log-uniform in [lo, hi]: small sizes dominate, as they do in real programs,
  // but every power of two in the range is exercised.
  size_t log_size(size_t lo, size_t hi) {
    int lo_bits = 63 - __builtin_clzll(lo), hi_bits = 63 - __builtin_clzll(hi);
    int b = lo_bits + (int)below(hi_bits - lo_bits + 1);
    size_t base = size_t{1} << b;
    size_t v = base + below(base);  // anywhere in [2^b, 2^(b+1))
    return v < lo ? lo : v > hi ? hi : v;
  }
};

// Order-independent combination (addition) is used wherever threads race, so
// the total does not depend on which thread freed what.
inline uint64_t mix(uint64_t v) {
  v ^= v >> 33; v *= 0xff51afd7ed558ccdull;
  v ^= v >> 33; v *= 0xc4ceb9fe1a85ec53ull;
  return v ^ (v >> 33);
}
inline uint64_t hash_bytes(const void* p, size_t n, uint64_t h = 0xcbf29ce484222325ull) {
  auto* b = static_cast<const unsigned char*>(p);
  for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 0x100000001b3ull;
  return h;
}

[[noreturn]] inline void fail(const char* what, uint64_t detail = 0) {
  std::fprintf(stderr, "BENCH-FAILURE: %s (detail %llu)\n", what, (unsigned long long)detail);
  std::fflush(stderr);
  std::_Exit(3);
}

// A broken promise of the API that does not corrupt data (errno not set,
// weaker alignment): reported once per kind on stdout as "warning ..." and
// the run goes on, so the harness can list it without losing the timing.
inline void warn(const char* what, unsigned long long detail = 0) {
  static const char* seen[32];
  static int n = 0;
  for (int i = 0; i < n; ++i)
    if (seen[i] == what) return;
  if (n < 32) seen[n++] = what;
  std::printf("warning %s (first seen: %llu)\n", what, detail);
}

// Stamp the first and last 8 bytes of a block with a tag and check them before
// freeing. Cheap, and it catches overlapping blocks or an allocator writing
// into live memory (both would overwrite another block's stamp).
inline void stamp(void* p, size_t n, uint64_t tag) {
  auto* b = static_cast<unsigned char*>(p);
  if (n >= 16) {
    std::memcpy(b, &tag, 8);
    std::memcpy(b + n - 8, &tag, 8);
  } else {
    for (size_t i = 0; i < n; ++i) b[i] = (unsigned char)(tag >> (8 * (i & 7)));
  }
}
inline void verify(const void* p, size_t n, uint64_t tag) {
  auto* b = static_cast<const unsigned char*>(p);
  if (n >= 16) {
    uint64_t x, y;
    std::memcpy(&x, b, 8);
    std::memcpy(&y, b + n - 8, 8);
    if (x != tag || y != tag) fail("block contents changed while allocated", n);
  } else {
    for (size_t i = 0; i < n; ++i)
      if (b[i] != (unsigned char)(tag >> (8 * (i & 7)))) fail("small block contents changed", n);
  }
}

// Keeps the compiler from eliding a malloc/free pair (it knows their meaning).
inline void escape(void* p) { asm volatile("" : : "g"(p) : "memory"); }

inline void print_checksum(uint64_t c) { std::printf("checksum=%016llx\n", (unsigned long long)c); }
inline void print_metric(const char* name, double v) { std::printf("metric %s=%.3f\n", name, v); }

inline long arg_or(int argc, char** argv, int i, long dflt) {
  return argc > i ? std::strtol(argv[i], nullptr, 10) : dflt;
}

}  // namespace bench
