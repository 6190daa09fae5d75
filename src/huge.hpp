// Blocks larger than the layout's largest class. Natively that is 8 GiB, but
// the fallback layouts (under ulimit -v, or Valgrind) stop at 2^S: there each
// larger block gets a mapping of its own, found again in a fixed table (so
// that nothing here allocates), as does a block of kMappedFallbackMin or more
// that finds every slot that would hold it taken (Heap::fail_over). Such
// blocks are not in the occupancy counters.
#pragma once

#include <atomic>
#include <cerrno>
#include <cstdint>

#include "pal.hpp"

namespace smalloc::huge {

inline constexpr unsigned kEntries = 4096;
inline constexpr uintptr_t kClaimed = 1;  // an entry being filled in: matches no block

// Every field is kept complemented: memcheck's leak check takes any word in
// memory that could be an address for a pointer, so a table holding the
// blocks' addresses (or, under Valgrind, where mappings sit low, even their
// sizes) would keep every leaked block "reachable".
struct Entry {
  std::atomic<uintptr_t> block;  // ~ the address the caller got; 0 when free
  uintptr_t map;                 // ~ the mapping that holds it
  size_t map_bytes;              // ~ its length
  size_t size;                   // ~ what the caller asked for: what malloc_usable_size says
};

inline size_t size_of(const Entry& e) { return ~e.size; }
inline constinit Entry g_table[kEntries]{};

inline Entry* find(const void* p) {
  const uintptr_t key = reinterpret_cast<uintptr_t>(p);
  if (key <= kClaimed) return nullptr;
  for (Entry& e : g_table)
    if (e.block.load(std::memory_order_acquire) == ~key) return &e;
  return nullptr;
}

// size bytes aligned to align (a power of two), zero-filled; nullptr and
// ENOMEM if the system or the table has no room.
inline void* allocate(size_t size, size_t align) {
  // A page (never touched) before the block: the block never starts where
  // its mapping does, which some other mapping's end pointer may name (ld.so
  // keeps one), and memcheck would call a leak of it "still reachable".
  const size_t extra = pal::kPageSize + (align > pal::kPageSize ? align : 0);
  if (size > SIZE_MAX - extra - pal::kPageSize) {
    errno = ENOMEM;
    return nullptr;
  }
  const size_t bytes = (size + pal::kPageSize - 1) / pal::kPageSize * pal::kPageSize + extra;
  for (Entry& e : g_table) {
    uintptr_t expected = 0;
    if (e.block.load(std::memory_order_relaxed) != 0 ||
        !e.block.compare_exchange_strong(expected, kClaimed, std::memory_order_acquire))
      continue;
    void* map = pal::map(bytes);
    if (!map) {
      e.block.store(0, std::memory_order_release);
      errno = ENOMEM;
      return nullptr;
    }
    e.map = ~reinterpret_cast<uintptr_t>(map);
    e.map_bytes = ~bytes;
    e.size = ~size;
    const uintptr_t block = (reinterpret_cast<uintptr_t>(map) + pal::kPageSize + align - 1) & ~uintptr_t(align - 1);
    e.block.store(~block, std::memory_order_release);
    return reinterpret_cast<void*>(block);
  }
  errno = ENOMEM;
  return nullptr;
}

// How many blocks have a mapping of their own, and their mappings' bytes.
inline void totals(uint64_t& blocks, uint64_t& bytes) {
  blocks = bytes = 0;
  for (const Entry& e : g_table) {
    if (e.block.load(std::memory_order_acquire) <= kClaimed) continue;
    ++blocks;
    bytes += ~e.map_bytes;
  }
}

inline void release(Entry& e) {
  const uintptr_t map = ~e.map;
  const size_t bytes = ~e.map_bytes;
  e.block.store(0, std::memory_order_release);
  pal::unmap(reinterpret_cast<void*>(map), bytes);
}

}  // namespace smalloc::huge
