// The debug policy: the release core with redzones, a FIFO quarantine,
// poisoning, per-slot state and Valgrind client requests.
//
// A slot in the debug build:
//
//   slot                     user = slot + front          user + size      slot end
//   | header 16 B | redzone... | the block (size bytes) | redzone (>=16 B) ...  |
//
// front = max(32, alignment). The header's first 4 bytes are the core's
// free-list link while the slot is free; the rest says whether the slot is
// live, how it was allocated, where the block starts and how big it is.
// Everything outside the block is no-access for memcheck; the allocator opens
// the bytes it touches itself (Exposed) and closes them again.
#pragma once

#include <valgrind/memcheck.h>

#include <atomic>

#include "heap.hpp"

namespace smalloc {

namespace debug {

inline constexpr size_t kHeaderBytes = 16;
inline constexpr size_t kRedzone = 16;
inline constexpr size_t kMinFront = kHeaderBytes + kRedzone;
inline constexpr size_t kTailFill = 64;         // tail redzone filled and checked: up to this, to the slot end
inline constexpr size_t kPatternCap = 1 << 16;  // poison and fill at most this much of a block
inline constexpr uint8_t kRedzoneByte = 0xfa, kFreedByte = 0xfd, kFreshByte = 0xbe, kMagic = 0x5a;

enum State : uint8_t { kNeverAllocated = 0, kLive = 0xa1, kFreed = 0xe5 };

struct Header {
  uint32_t link;  // the core's
  std::atomic<uint8_t> state;
  Kind kind;
  uint8_t front_shift;  // the block starts at slot + (1 << front_shift)
  uint8_t magic;
  uint64_t size;
};
static_assert(sizeof(Header) == kHeaderBytes);

// Makes bytes the allocator itself reads or writes accessible to memcheck for
// the guard's lifetime. Free of cost natively.
class Exposed {
 public:
  Exposed(const void* p, size_t n) : p_(p), n_(n) { VALGRIND_MAKE_MEM_DEFINED(p_, n_); }
  ~Exposed() { VALGRIND_MAKE_MEM_NOACCESS(p_, n_); }

 private:
  const void* p_;
  size_t n_;
};

constexpr size_t front_bytes(size_t align) { return align > kMinFront ? align : kMinFront; }
inline Header* header(char* slot) { return reinterpret_cast<Header*>(slot); }

// In debug.cpp: the slow, reporting and quarantine parts.
enum class Error { Overflow, Underflow, DoubleFree, InvalidFree, Mismatch, WriteAfterFree };
void report(Error, const void* p, const Header* h, unsigned cls, unsigned slab, const char* detail);
void report_foreign(const void* p, const char* what);
bool redzones_intact(char* slot, unsigned cls, unsigned slab, void* p, const Header& h);
void* allocate_fill(char* slot, unsigned cls, size_t size, size_t align, Kind kind, bool zero);
char* release(const Layout& L, const Layout::Where& w, void* p, Kind kind, const char* what);
void quarantine(char* slot);
int flush_quarantine();
void mark_reserved(void* base, size_t bytes, size_t area_bytes);
bool resize(const Layout& L, const Layout::Where& w, void* p, size_t size);
size_t block_size(const Layout& L, const Layout::Where& w, const void* p);

}  // namespace debug

struct DebugPolicy {
  static constexpr bool kStats = SMALLOC_STATS_ENABLED;
  static constexpr const char* kBuildName = "debug";
  static constexpr bool kDiscardedSlotsStayZero = false;
  // Freed slots stay poisoned and watched: malloc_trim empties the quarantine
  // instead of giving slab pages back.
  static constexpr bool kTrimSlabs = false;
  // The debug build keeps no private lists: freed slots wait in quarantine.
  static constexpr bool kAdoptInBatches = false;
  // Blocks start after a redzone, not at a page: realloc copies.
  static constexpr bool kMovePages = false;

  static constexpr size_t slot_bytes(size_t size, size_t align) {
    return size > SIZE_MAX / 4 ? SIZE_MAX : debug::front_bytes(align) + size + debug::kRedzone;
  }
  static void on_reserve(void* base, size_t bytes, size_t area_bytes) { debug::mark_reserved(base, bytes, area_bytes); }
  static void* on_alloc(char* slot, unsigned cls, size_t size, size_t align, Kind kind, bool, bool zero) {
    return debug::allocate_fill(slot, cls, size, align, kind, zero);
  }
  // The slot goes to quarantine, not straight back to the core.
  template <class Heap>
  static Released on_free(Heap&, const Layout& L, const Layout::Where& w, void* p, Kind kind) {
    char* slot = debug::release(L, w, p, kind, "free");
    if (slot) debug::quarantine(slot);
    return {slot != nullptr, nullptr};
  }
  // A block with a mapping of its own (huge.hpp): no redzones, but memcheck
  // tracks it like any heap block (leaks, use after free, size).
  static void on_huge_alloc(void* p, size_t size, bool zero) { VALGRIND_MALLOCLIKE_BLOCK(p, size, 0, zero); }
  static void on_huge_free(void* p) { VALGRIND_FREELIKE_BLOCK(p, 0); }
  static void free_foreign(void* p, Kind) {
    if (p) debug::report_foreign(p, "free of a pointer smalloc never returned");
  }
  template <class Heap>
  static int trim(Heap&) {
    return debug::flush_quarantine();
  }
  static size_t usable_size(const Layout& L, const Layout::Where& w, const void* p) {
    return debug::block_size(L, w, p);
  }
  static bool resize_in_place(const Layout& L, const Layout::Where& w, void* p, size_t size) {
    return debug::resize(L, w, p, size);
  }
  // Another thread may take the slot (and memcheck see it become a live
  // block) between a pop's load of the head and this read; the pop's CAS then
  // fails. Under Valgrind the read runs on the real CPU, outside memcheck's
  // view, so that harmless race is neither reported nor racing with the
  // other thread's changes to what memcheck may access.
  static unsigned long read_link_unchecked(unsigned long /*thread*/, unsigned long slot) {
    return std::atomic_ref<const uint32_t>(*reinterpret_cast<const uint32_t*>(slot)).load(std::memory_order_relaxed);
  }
  static uint32_t read_link(const char* slot) {
    if (RUNNING_ON_VALGRIND)
      return uint32_t(VALGRIND_NON_SIMD_CALL1(read_link_unchecked, reinterpret_cast<uintptr_t>(slot)));
    return std::atomic_ref<const uint32_t>(*reinterpret_cast<const uint32_t*>(slot)).load(std::memory_order_relaxed);
  }
  static void write_link(char* slot, uint32_t link) {
    debug::Exposed open(slot, sizeof(uint32_t));
    std::atomic_ref<uint32_t>(*reinterpret_cast<uint32_t*>(slot)).store(link, std::memory_order_relaxed);
  }
};

using Policy = DebugPolicy;

}  // namespace smalloc
