// The address layout: where every slab, slot and free-list head lives.
//
// Nothing is searched. One reservation holds "areas" of equal size; area 0
// holds the free-list heads (and at its end the staged bits), area
// c - kMinClass + 1 holds size class c (the area of class 7, which has no
// slots, the counters: stats.hpp). An
// area is kNumSlabs slabs of 2^S bytes (S = the span shift), and a slab of
// class c is an array of slots of class_bytes(c):
//
//   slot address = base + (area(c) << (S + kSlabBits)) + (slab << S) + skew(c) + slot * class_bytes(c)
//
// so a pointer's class and slab come back out with shifts and masks, and
// its slot with one multiplication more.
// S is chosen at run time (33 natively, smaller when the address space is
// limited), which is why it travels with the base in one word.
//
// Two classes per doubling: class c has slots of 2^(c/2) bytes if c is even,
// 1.5 * 2^(c/2) if odd. With powers of two alone a block wasted up to half
// its slot, and touched pages of it: 300-byte directory entries took
// 512-byte slots (find: 1.42x glibc's peak RSS), sqlite's 4 KiB pages plus
// header two pages each (1.56x). A slot of an odd class is aligned to
// 2^(c/2 - 1), so those below 48 bytes (12 and 24) do not exist: malloc
// keeps 16-byte alignment for blocks over 8 bytes.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>

namespace smalloc {

// --- chosen -----------------------------------------------------------------
inline constexpr unsigned kSlabBits = 6;       // 64 slabs per size class
inline constexpr unsigned kMinClass = 6;       // 8-byte slots: room for the 4-byte link, and malloc stays 8-aligned
inline constexpr unsigned kMinOddClass = 11;   // 48-byte slots, 16-aligned
// 1.5 MiB. A block in a larger slot touches only its own pages: a finer
// class there would save address space, not memory.
inline constexpr unsigned kMaxOddClass = 41;
inline constexpr unsigned kMaxSpanShift = 33;  // natively every slab spans 8 GiB
inline constexpr unsigned kMinSpanShift = 17;  // the smallest fallback: 128 KiB slabs, 240 MiB in all

// --- derived ----------------------------------------------------------------
inline constexpr unsigned kNumSlabs = 1u << kSlabBits;                 // 64
// Per (class, slab): the free list's head and, two lines on, the head of
// other threads' frees (FreeListHead, free_list.hpp); 128 bytes apart,
// because CPUs fetch lines in aligned pairs.
inline constexpr unsigned kHeadBytes = 256;
inline constexpr unsigned kMaxClass = 2 * kMaxSpanShift;               // 66: 8 GiB slots, one per slab
inline constexpr unsigned kNumClasses = kMaxClass + 1;                 // 67 (0..5, 7 and 9 unused)
inline constexpr uint32_t kTouched = 1u << 31;                         // link bit: the slot was handed out before
inline constexpr uint32_t kSlotMask = kTouched - 1;

constexpr size_t class_bytes(unsigned cls) { return size_t(2 + (cls & 1)) << ((cls >> 1) - 1); }
// log2 of the alignment every slot of the class has.
constexpr unsigned class_align_shift(unsigned cls) { return (cls >> 1) - (cls & 1); }
constexpr bool class_exists(unsigned cls) {
  return cls >= kMinClass && cls <= kMaxClass && (cls % 2 == 0 || (cls >= kMinOddClass && cls <= kMaxOddClass));
}

// A slab of the smallest class has 2^(S - 3) slots; that count itself
// is the "slab is full" marker, so it must fit beside the touched bit.
static_assert(kMaxSpanShift - kMinClass / 2 <= 30, "slot numbers must fit in 31 bits");
static_assert(kNumClasses * kNumSlabs * kHeadBytes <= (size_t{kNumSlabs} << kMinSpanShift),
              "the free-list heads must fit in area 0 of the smallest layout");
static_assert(kMinSpanShift > kMinClass / 2 && kMinSpanShift >= 14);  // the layout word's fields fit below the base

// Where a slab of class c starts in its span: kSlabSkew[c] bytes in, a
// multiple of the slot alignment, c lines and c pages modulo 64 KiB (rounded
// down to the alignment), for the classes up to 4 KiB. Every span starts on
// a 2^S boundary, so without it the first slots of every class, the ones a
// small heap lives in, fell into the same few cache sets: in a full-size
// A/B, threads/local-1 and server-2 ran 1.07x as long, server-1 1.11x. (A
// skew below 8 KiB gained only a quarter of that.)
inline constexpr size_t kSkewedMaxBytes = 4096;
inline constexpr auto kSlabSkew = [] {
  std::array<uint32_t, kNumClasses> skew{};
  for (unsigned c = kMinClass; c < skew.size(); ++c)
    if (class_exists(c) && class_bytes(c) <= kSkewedMaxBytes)
      skew[c] = (c * (4096u + 64u) & 0xFFFFu) >> class_align_shift(c) << class_align_shift(c);
  return skew;
}();

// The state of one layout, decoded from the published word (base | S |
// max class << 6 | on demand << 13).
struct Layout {
  uintptr_t base;
  unsigned span_shift;  // S
  uint16_t max_cls;     // 2S: carried, not derived, for the uninitialised word's sake
  // The reservation is read-only but for what was committed (commit.hpp):
  // under strict overcommit or a data size limit. (With max_cls narrow, a
  // Layout stays 16 bytes: passed in two registers, not on the stack.)
  bool on_demand;

  static constexpr Layout decode(uintptr_t word) {
    return {word & ~uintptr_t{kFieldsMask}, unsigned(word & 63), uint16_t((word >> 6) & 127), ((word >> 13) & 1) != 0};
  }
  static constexpr uintptr_t encode(uintptr_t base, unsigned s, bool on_demand = false) {
    return base | s | uintptr_t{2 * s} << 6 | uintptr_t{on_demand} << 13;
  }
  static constexpr uintptr_t kFieldsMask = (uintptr_t{1} << 14) - 1;  // below the base's alignment, 2^S
  // The word before initialisation: max class kMinClass - 1 means "no class
  // fits and no address is ours", so the hot paths need no separate check.
  static constexpr uintptr_t kUninitialised = uintptr_t{kMinClass - 1} << 6;

  static constexpr size_t areas(unsigned s) { return 2 * s - kMinClass + 2; }
  static constexpr size_t area_bytes(unsigned s) { return size_t{kNumSlabs} << s; }
  static constexpr size_t bytes(unsigned s) { return areas(s) * area_bytes(s); }

  constexpr unsigned max_class() const { return max_cls; }
  constexpr size_t size() const { return bytes(span_shift); }
  // x / 2 for an even class, x / 3 for an odd one, for x < 2^32: so that
  // neither a slot number nor a slot count takes a division.
  static constexpr uint32_t halve_or_third(uint64_t x, unsigned cls) {
    return uint32_t((x * ((cls & 1) ? uint64_t{0xAAAAAAAB} : uint64_t{1} << 32)) >> 33);
  }
  // Masked below 2^(S-4) (a multiple of every skewed alignment): a small
  // fallback layout's slabs lose at most a 16th.
  constexpr uintptr_t skew(unsigned cls) const { return kSlabSkew[cls] & ((uintptr_t{1} << (span_shift - 4)) - 1); }
  // What follows the skew, over 2^(c/2 - 1) (exact: the skew is a multiple
  // of it), is below 2^32 for every class that exists.
  constexpr uint32_t slots_per_slab(unsigned cls) const {
    return halve_or_third(((uint64_t{1} << span_shift) - skew(cls)) >> ((cls >> 1) - 1), cls);
  }
  // A slab's bits in the staged bitmaps (and a trim's marks): a power of two
  // at least slots_per_slab.
  constexpr unsigned slot_bits(unsigned cls) const { return span_shift - (cls >> 1); }

  // Where (cls, slab)'s span starts: its skew before its first slot.
  char* span_start(unsigned cls, unsigned slab) const {
    return reinterpret_cast<char*>(base + ((uintptr_t{cls - kMinClass + 1} << kSlabBits | slab) << span_shift));
  }
  // A pointer's offset in its span.
  uintptr_t span_offset(const void* p) const {
    return (reinterpret_cast<uintptr_t>(p) - base) & ((uintptr_t{1} << span_shift) - 1);
  }
  // How many of (cls)'s slots start in the first `bytes` of a span.
  uint32_t slots_starting_below(unsigned cls, uint64_t bytes) const {
    return bytes > skew(cls) ? uint32_t(std::min<uint64_t>(slots_per_slab(cls), (bytes - skew(cls) + class_bytes(cls) - 1) /
                                                                                     class_bytes(cls)))
                             : 0;
  }

  char* slot(unsigned cls, unsigned slab, uint32_t index) const {
    return span_start(cls, slab) + skew(cls) + uintptr_t{index} * class_bytes(cls);
  }
  template <class Head>
  Head& head(unsigned cls, unsigned slab) const {
    static_assert(sizeof(Head) <= kHeadBytes);
    return *reinterpret_cast<Head*>(base + (uintptr_t{cls * kNumSlabs + slab} * kHeadBytes));
  }

  // The bitmaps of a slab owner's staged free slots (Heap::stage): one bit
  // per slot (level 0), and one bit per level-0 word that may be non-zero
  // (level 1). They fill the end of area 0 class by class, in two banks
  // (even classes at the end, odd ones before them), class c's level 0
  // taking 2^(S+3-c/2) bytes and its level 1 a 64th of that. Only for
  // classes with 2^12 slot bits per slab or more, so that no word of either
  // level holds two slabs' bits (natively: every class that has them). Bit
  // `pos` = slab << slot_bits(c) | index.
  static constexpr bool has_staged_bits(unsigned cls, unsigned s) { return (cls >> 1) + 12 <= s; }
  // Half a page off the page grid: otherwise the word for a slab's first
  // slots has the same 12 low address bits as the slots themselves, and the
  // CPU holds a load of it back behind the caller's stores to the block (4K
  // aliasing: a malloc/free loop ran 2.3x slower).
  static constexpr size_t kStagedBitsSkew = 2048;
  static constexpr size_t staged_bank_bytes(unsigned s) { return (size_t{1} << (s + 1)) + (size_t{1} << (s - 5)); }
  static constexpr size_t staged_bits_bytes(unsigned s) { return 2 * staged_bank_bytes(s) + kStagedBitsSkew; }
  uintptr_t staged_bank_end(unsigned cls) const {
    return base + area_bytes(span_shift) - kStagedBitsSkew - (cls & 1) * staged_bank_bytes(span_shift);
  }
  uintptr_t staged_bits0(unsigned cls) const {
    return staged_bank_end(cls) - (uintptr_t{1} << (span_shift + 4 - (cls >> 1)));
  }
  uintptr_t staged_bits1(unsigned cls) const {
    return staged_bank_end(cls) - (uintptr_t{1} << (span_shift + 1)) - (uintptr_t{1} << (span_shift - 2 - (cls >> 1)));
  }
  uintptr_t staged_pos(unsigned cls, unsigned slab, uint32_t index) const {
    return (uintptr_t{slab} << slot_bits(cls)) | index;
  }
  // The same for a pointer into a slot of class cls.
  uintptr_t staged_pos(unsigned cls, const void* p) const {
    const unsigned slab = unsigned((reinterpret_cast<uintptr_t>(p) - base) >> span_shift) & (kNumSlabs - 1);
    return staged_pos(cls, slab, index_of(p, cls));
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
    if (area - 1 >= unsigned(max_cls) - kMinClass + 1) return false;
    w.cls = unsigned(area) + kMinClass - 1;
    w.slab = unsigned(area_slab) & (kNumSlabs - 1);
    w.index = index_of(p, w.cls);
    return true;
  }
  // The slot number of a pointer into a slot of class cls: its offset in
  // the slab over 2^(c/2 - 1), which is below 2^32, halved or divided by 3.
  uint32_t index_of(const void* p, unsigned cls) const {
    const uintptr_t offset = span_offset(p) - skew(cls);
    return halve_or_third(offset >> ((cls >> 1) - 1), cls);
  }
};
static_assert(sizeof(Layout) == 16, "a Layout travels in two registers");

// Requests of any size and a power-of-two alignment map to the smallest
// class whose slots hold them and are aligned enough: 2^c, or 1.5 * 2^(c-1)
// (class 2c - 1) if that is enough, exists and is aligned enough (to
// 2^(c-2)). Slots are aligned to their size's largest power-of-two factor,
// so alignment is free.
constexpr unsigned size_class_computed(size_t size, size_t align) {
  size_t need = size > align ? size : align;
  need = need > 8 ? need : 8;
  const unsigned c = unsigned(std::bit_width(need - 1));  // 2^(c-1) < need <= 2^c
  // (need - 1) >> (c - 2) is 2 or 3; `&`, not `&&`: no branches.
  const bool odd = (((need - 1) >> (c - 2)) == 2) & (need > class_bytes(kMinOddClass - 1)) &
                   (need <= class_bytes(kMaxOddClass)) & (align <= (size_t{1} << (c - 2)));
  return 2 * c - odd;
}
// malloc's sizes up to 1 KiB (most of them) by one load instead.
inline constexpr size_t kSmallSizeMax = 1024;
inline constexpr unsigned kSmallSizeMaxClass = size_class_computed(kSmallSizeMax, 1);
inline constexpr auto kSmallSizeClass = [] {
  std::array<uint8_t, kSmallSizeMax / 8 + 1> table{};
  for (size_t i = 0; i < table.size(); ++i) table[i] = uint8_t(size_class_computed(i * 8, 1));
  return table;
}();
constexpr unsigned size_class(size_t size, size_t align = 1) {
  if (align == 1 && size <= kSmallSizeMax) {
    const unsigned cls = kSmallSizeClass[(size + 7) / 8];
    // Lets malloc skip its test for the classes that have no private list.
    if (cls > kSmallSizeMaxClass) __builtin_unreachable();
    return cls;
  }
  return size_class_computed(size, align);
}

}  // namespace smalloc
