// The address layout: where every slab, slot and free-list head lives.
//
// Nothing is searched. One reservation holds "areas" of equal size; area 0
// holds the free-list heads (then the counters, stats.hpp, and at its end
// the staged bits), area c - kMinClass + 1 holds size class c. An
// area is kNumSlabs slabs of 2^S bytes (S = the span shift), and a slab of
// class c is an array of 2^(S - c) slots of 2^c bytes:
//
//   slot address = base + (area(c) << (S + kSlabBits)) + (slab << S) + (slot << c)
//
// so a pointer's class, slab and slot come back out with shifts and masks.
// S is chosen at run time (33 natively, smaller when the address space is
// limited), which is why it travels with the base in one word.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>

namespace smalloc {

// --- chosen -----------------------------------------------------------------
inline constexpr unsigned kSlabBits = 6;       // 64 slabs per size class
inline constexpr unsigned kMinClass = 3;       // 8-byte slots: room for the 4-byte link, and malloc stays 8-aligned
inline constexpr unsigned kMaxSpanShift = 33;  // natively every slab spans 8 GiB
inline constexpr unsigned kMinSpanShift = 17;  // the smallest fallback: 128 KiB slabs, 128 MiB in all

// --- derived ----------------------------------------------------------------
inline constexpr unsigned kNumSlabs = 1u << kSlabBits;                 // 64
// Per (class, slab): the free list's head and, two lines on, the head of
// other threads' frees (FreeListHead, free_list.hpp); 128 bytes apart,
// because CPUs fetch lines in aligned pairs.
inline constexpr unsigned kHeadBytes = 256;
inline constexpr unsigned kMaxClass = kMaxSpanShift;                   // 33: 8 GiB slots, one per slab
inline constexpr unsigned kNumClasses = kMaxClass + 1;                 // 34 (0..2 unused)
inline constexpr uint32_t kTouched = 1u << 31;                         // link bit: the slot was handed out before
inline constexpr uint32_t kSlotMask = kTouched - 1;

// A slab of the smallest class has 2^(S - kMinClass) slots; that count itself
// is the "slab is full" marker, so it must fit beside the touched bit.
static_assert(kMaxSpanShift - kMinClass <= 30, "slot numbers must fit in 31 bits");
static_assert(kNumClasses * kNumSlabs * kHeadBytes <= (size_t{kNumSlabs} << kMinSpanShift),
              "the free-list heads must fit in area 0 of the smallest layout");
static_assert(kMinSpanShift > kMinClass);

// The state of one layout, decoded from the published word (base | S).
struct Layout {
  uintptr_t base;
  unsigned span_shift;  // S

  static constexpr Layout decode(uintptr_t word) { return {word & ~uintptr_t{63}, unsigned(word & 63)}; }
  static constexpr uintptr_t encode(uintptr_t base, unsigned s) { return base | s; }
  // The word before initialisation: S = kMinClass - 1 means "no class fits and
  // no address is ours", so the hot paths need no separate check for it.
  static constexpr uintptr_t kUninitialised = kMinClass - 1;

  static constexpr size_t areas(unsigned s) { return s - kMinClass + 2; }
  static constexpr size_t area_bytes(unsigned s) { return size_t{kNumSlabs} << s; }
  static constexpr size_t bytes(unsigned s) { return areas(s) * area_bytes(s); }

  constexpr unsigned max_class() const { return span_shift; }
  constexpr size_t size() const { return bytes(span_shift); }
  constexpr uint32_t slots_per_slab(unsigned cls) const { return uint32_t{1} << (span_shift - cls); }

  char* slot(unsigned cls, unsigned slab, uint32_t index) const {
    return reinterpret_cast<char*>(base + ((uintptr_t{cls - kMinClass + 1} << kSlabBits | slab) << span_shift) +
                                   (uintptr_t{index} << cls));
  }
  template <class Head>
  Head& head(unsigned cls, unsigned slab) const {
    static_assert(sizeof(Head) <= kHeadBytes);
    return *reinterpret_cast<Head*>(base + (uintptr_t{cls * kNumSlabs + slab} * kHeadBytes));
  }

  // The bitmaps of a slab owner's staged free slots (Heap::stage): one bit
  // per slot (level 0), and one bit per level-0 word that may be non-zero
  // (level 1). They fill the end of area 0 class by class, class c's level 0
  // taking 2^(S+3-c) bytes and its level 1 a 64th of that. Only for classes
  // with at least 4096 slots per slab, so that no word of either level holds
  // two slabs' bits (natively: every class that has them). Bit `pos` =
  // slab << (S - c) | index.
  static constexpr bool has_staged_bits(unsigned cls, unsigned s) { return cls + 12 <= s; }
  // Half a page off the page grid: otherwise the word for a slab's first
  // slots has the same 12 low address bits as the slots themselves, and the
  // CPU holds a load of it back behind the caller's stores to the block (4K
  // aliasing: a malloc/free loop ran 2.3x slower).
  static constexpr size_t kStagedBitsSkew = 2048;
  static constexpr size_t staged_bits_bytes(unsigned s) {
    return (size_t{1} << (s + 1)) + (size_t{1} << (s - 5)) + kStagedBitsSkew;
  }
  uintptr_t staged_bits0(unsigned cls) const {
    return base + area_bytes(span_shift) - kStagedBitsSkew - (uintptr_t{1} << (span_shift + 4 - cls));
  }
  uintptr_t staged_bits1(unsigned cls) const {
    return base + area_bytes(span_shift) - kStagedBitsSkew - (uintptr_t{1} << (span_shift + 1)) -
           (uintptr_t{1} << (span_shift - 2 - cls));
  }
  uintptr_t staged_pos(unsigned cls, unsigned slab, uint32_t index) const {
    return (uintptr_t{slab} << (span_shift - cls)) | index;
  }
  // The same for a pointer into a slot of class cls: its offset in the class's
  // area, in slots (areas are 2^(S+6) bytes from the 2^S-aligned base).
  uintptr_t staged_pos(unsigned cls, const void* p) const {
    return ((reinterpret_cast<uintptr_t>(p) - base) & ((uintptr_t{1} << (span_shift + kSlabBits)) - 1)) >> cls;
  }

  struct Where {
    unsigned cls, slab;
    uint32_t index;
  };
  // False for NULL, the heads' area and anything outside the reservation.
  bool locate(const void* p, Where& w) const {
    const uintptr_t off = reinterpret_cast<uintptr_t>(p) - base;
    const uintptr_t area_slab = off >> span_shift;  // one variable shift for both
    const uintptr_t area = area_slab >> kSlabBits;
    if (area - 1 >= span_shift - kMinClass + 1) return false;
    w.cls = unsigned(area) + kMinClass - 1;
    w.slab = unsigned(area_slab) & (kNumSlabs - 1);
    w.index = index_of(p, w.cls);
    return true;
  }
  // The slot number of a pointer into a slot of class cls.
  uint32_t index_of(const void* p, unsigned cls) const {
    return uint32_t(((reinterpret_cast<uintptr_t>(p) - base) & ((uintptr_t{1} << span_shift) - 1)) >> cls);
  }
};

// Requests of any size and a power-of-two alignment map to the class whose
// slots hold them; slots are aligned to their size, so alignment is free.
constexpr unsigned size_class(size_t size, size_t align = 1) {
  size_t need = size > align ? size : align;
  return unsigned(std::bit_width((need > 8 ? need : 8) - 1));
}

}  // namespace smalloc
