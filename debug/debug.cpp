// The debug build's checks, reports and quarantine. Nothing here allocates
// from the heap it checks: reports are formatted on the stack and written
// with write(2), and the quarantine is a fixed ring in static storage.
#include <execinfo.h>
#include <unistd.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "debug_policy.hpp"

namespace smalloc {
extern Heap<DebugPolicy, true> g_heap;

namespace debug {
namespace {

// ---- settings ----------------------------------------------------------------
// Read once, by a constructor while the environment is intact, or by the
// first use if that comes sooner: later, getenv may read an environ array
// that is being replaced. setenv reallocs its array, and the free of the old
// one (our quarantine poisons it) comes before environ points to the new one.
size_t env_number(const char* name, size_t fallback) {
  const char* v = getenv(name);
  if (!v || !*v) return fallback;
  char* end;
  unsigned long long n = strtoull(v, &end, 10);
  return *end ? fallback : size_t(n);
}
// SIZE_MAX until read.
size_t setting(std::atomic<size_t>& value, const char* name, size_t fallback) {
  size_t v = value.load(std::memory_order_relaxed);
  if (v == SIZE_MAX) {
    v = env_number(name, fallback);
    value.store(v, std::memory_order_relaxed);
  }
  return v;
}
std::atomic<size_t> g_abort{SIZE_MAX}, g_quarantine_mb{SIZE_MAX};
bool abort_on_error() { return setting(g_abort, "SMALLOC_DEBUG_ABORT", 1) != 0; }
size_t quarantine_budget() { return setting(g_quarantine_mb, "SMALLOC_QUARANTINE_MB", 32) << 20; }
[[gnu::constructor]] void read_settings() {
  abort_on_error();
  quarantine_budget();
}

// ---- reports -----------------------------------------------------------------
const char* error_name(Error e) {
  switch (e) {
    case Error::Overflow: return "heap-buffer-overflow";
    case Error::Underflow: return "heap-buffer-underflow";
    case Error::DoubleFree: return "double-free";
    case Error::InvalidFree: return "invalid-free";
    case Error::Mismatch: return "alloc-dealloc-mismatch";
    case Error::WriteAfterFree: return "write-after-free";
  }
  return "error";
}

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::Malloc: return "malloc";
    case Kind::New: return "new";
    case Kind::NewArray: return "new[]";
  }
  return "?";
}

void say(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void say(const char* fmt, ...) {
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  if (n > 0 && write(STDERR_FILENO, line, std::min(size_t(n), sizeof line - 1)) < 0) return;
}

std::atomic<int> g_reporting{0};

void finish_report() {
  void* frames[64];
  int n = backtrace(frames, 64);
  say("==smalloc== backtrace:\n");
  backtrace_symbols_fd(frames, n, STDERR_FILENO);
  if (RUNNING_ON_VALGRIND) VALGRIND_PRINTF_BACKTRACE("==smalloc== the error above happened here:\n");
  if (abort_on_error()) {
    say("==smalloc== aborting (set SMALLOC_DEBUG_ABORT=0 to continue)\n");
    abort();
  }
  g_reporting.store(0);
}

// 64 bytes at a time, which the compiler vectorises; byte by byte only to
// find the first bad one. (Byte by byte throughout, checking the poison of
// blocks leaving quarantine was 79% of a Tcl script's time: 17x glibc's.)
bool all_equal(const char* p, size_t n, uint8_t byte, size_t* first_bad) {
  const uint64_t pattern = 0x0101010101010101ull * byte;
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    uint64_t differ = 0;
    for (size_t k = 0; k < 64; k += 8) {
      uint64_t word;
      std::memcpy(&word, p + i + k, sizeof word);
      differ |= word ^ pattern;
    }
    if (differ != 0) break;
  }
  for (; i < n; ++i)
    if (uint8_t(p[i]) != byte) {
      *first_bad = i;
      return false;
    }
  return true;
}

size_t tail_fill_bytes(char* slot, unsigned cls, const char* end_of_block) {
  return std::min(kTailFill, size_t(slot + class_bytes(cls) - end_of_block));
}

// ---- quarantine: a bounded lock-free FIFO ring (Vyukov) -----------------------
// Each cell stores its sequence number minus its index, so that the all-zero
// static storage is the initialised state. A full ring or a producer stalled
// mid-push (say, across fork) only makes frees skip the quarantine: it never
// blocks.
// Plain words behind atomic_ref, and constinit: a million std::atomic cells
// were initialised by a constructor at run time (GCC gives up evaluating so
// large an array at compile time), which wiped what frees before it had
// queued (glibc's backtrace loading libgcc_s from our own constructor), and
// the ring stopped at that cell for good: no write after free was found.
constexpr size_t kRingSize = size_t{1} << 20;
struct Cell {
  size_t seq;
  char* slot;
};
constinit Cell g_ring[kRingSize]{};
std::atomic_ref<size_t> seq_of(Cell& c) { return std::atomic_ref<size_t>(c.seq); }
alignas(64) std::atomic<size_t> g_enqueue{0};
alignas(64) std::atomic<size_t> g_dequeue{0};
alignas(64) std::atomic<size_t> g_quarantined_bytes{0};

bool ring_push(char* slot) {
  size_t pos = g_enqueue.load(std::memory_order_relaxed);
  for (;;) {
    Cell& c = g_ring[pos % kRingSize];
    intptr_t diff = intptr_t(seq_of(c).load(std::memory_order_acquire) + pos % kRingSize) - intptr_t(pos);
    if (diff == 0) {
      if (g_enqueue.compare_exchange_weak(pos, pos + 1, std::memory_order_relaxed)) {
        c.slot = slot;
        seq_of(c).store(pos + 1 - pos % kRingSize, std::memory_order_release);
        return true;
      }
    } else if (diff < 0) {
      return false;
    } else {
      pos = g_enqueue.load(std::memory_order_relaxed);
    }
  }
}

char* ring_pop() {
  size_t pos = g_dequeue.load(std::memory_order_relaxed);
  for (;;) {
    Cell& c = g_ring[pos % kRingSize];
    intptr_t diff = intptr_t(seq_of(c).load(std::memory_order_acquire) + pos % kRingSize) - intptr_t(pos + 1);
    if (diff == 0) {
      if (g_dequeue.compare_exchange_weak(pos, pos + 1, std::memory_order_relaxed)) {
        char* slot = c.slot;
        seq_of(c).store(pos + kRingSize - pos % kRingSize, std::memory_order_release);
        return slot;
      }
    } else if (diff < 0) {
      return nullptr;
    } else {
      pos = g_dequeue.load(std::memory_order_relaxed);
    }
  }
}

// A slot leaves quarantine: its poison must be intact (else something wrote to
// the block after it was freed), then the core may hand it out again.
void recycle(char* slot) {
  const Layout L = g_heap.layout();
  Layout::Where w;
  if (!L.locate(slot, w)) return;
  {
    Exposed open(slot, kHeaderBytes);
    Header& h = *header(slot);
    char* p = slot + (size_t{1} << h.front_shift);
    size_t n = std::min<size_t>(h.size, kPatternCap), bad;
    VALGRIND_MAKE_MEM_DEFINED(p, n);
    bool intact = all_equal(p, n, kFreedByte, &bad);
    unsigned found = intact ? 0 : uint8_t(p[bad]);
    VALGRIND_MAKE_MEM_NOACCESS(p, n);
    if (!intact) {
      char detail[128];
      snprintf(detail, sizeof detail, "freed block written at offset +%zu (found 0x%02x, expected 0x%02x)", bad,
               found, unsigned(kFreedByte));
      report(Error::WriteAfterFree, p, &h, w.cls, w.slab, detail);
    }
  }
  g_quarantined_bytes.fetch_sub(class_bytes(w.cls), std::memory_order_relaxed);
  g_heap.recycle_freed(L, w, slot);
}

}  // namespace

// ---- the hooks -----------------------------------------------------------------
// Memcheck reports a bad free itself, with the program's stack and in its
// error count, when told of a free of a block it does not know as live.
static void tell_memcheck_bad_free(const void* p) { VALGRIND_FREELIKE_BLOCK(p, 0); }

void report(Error e, const void* p, const Header* h, unsigned cls, unsigned slab, const char* detail) {
  if (e == Error::DoubleFree || e == Error::InvalidFree) tell_memcheck_bad_free(p);
  if (g_reporting.exchange(1)) return;  // one report at a time, and none from inside one
  if (h)
    say("==smalloc== ERROR: %s at %p: block of %llu bytes from %s, size class %u (%zu B slots), slab %u\n",
        error_name(e), p, static_cast<unsigned long long>(h->size), kind_name(h->kind), cls, class_bytes(cls), slab);
  else
    say("==smalloc== ERROR: %s at %p: size class %u (%zu B slots), slab %u\n", error_name(e), p, cls,
        class_bytes(cls), slab);
  say("==smalloc==   %s\n", detail);
  finish_report();
}

void report_foreign(const void* p, const char* what) {
  tell_memcheck_bad_free(p);
  if (g_reporting.exchange(1)) return;
  say("==smalloc== ERROR: invalid-free at %p: not in smalloc's heap\n==smalloc==   %s\n", p, what);
  finish_report();
}

void mark_reserved(void* base, size_t bytes, size_t area_bytes) {
  // Nothing in the region is the program's until a block is handed out; the
  // heads (area 0) and the counters (their area, stats.hpp) are the
  // allocator's own and always accessible.
  VALGRIND_MAKE_MEM_NOACCESS(base, bytes);
  VALGRIND_MAKE_MEM_DEFINED(base, area_bytes);
  VALGRIND_MAKE_MEM_DEFINED(static_cast<char*>(base) + stats::kCountersArea * area_bytes, area_bytes);
}

void* allocate_fill(char* slot, unsigned cls, size_t size, size_t align, Kind kind, bool zero) {
  const size_t front = front_bytes(align);
  char* p = slot + front;
  const size_t tail = tail_fill_bytes(slot, cls, p + size);
  VALGRIND_MAKE_MEM_UNDEFINED(slot, front);
  Header& h = *header(slot);
  h.kind = kind;
  h.front_shift = uint8_t(std::countr_zero(front));
  h.magic = kMagic;
  h.size = size;
  h.state.store(kLive, std::memory_order_release);
  std::memset(slot + kHeaderBytes, kRedzoneByte, front - kHeaderBytes);
  VALGRIND_MAKE_MEM_NOACCESS(slot, front);
  VALGRIND_MAKE_MEM_UNDEFINED(p + size, tail);
  std::memset(p + size, kRedzoneByte, tail);
  VALGRIND_MAKE_MEM_NOACCESS(p + size, tail);
  if (!zero) {
    // Not zero, so that reading memory never written shows up natively too.
    VALGRIND_MAKE_MEM_UNDEFINED(p, std::min(size, kPatternCap));
    std::memset(p, kFreshByte, std::min(size, kPatternCap));
  }
  VALGRIND_MALLOCLIKE_BLOCK(p, size, kRedzone, zero);  // for calloc the core zeroes reused slots
  return p;
}

bool redzones_intact(char* slot, unsigned cls, unsigned slab, void* p, const Header& h) {
  const size_t front = size_t{1} << h.front_shift;
  char* end = static_cast<char*>(p) + h.size;
  const size_t tail = tail_fill_bytes(slot, cls, end);
  size_t bad;
  char detail[160];
  {
    Exposed open(slot + kHeaderBytes, front - kHeaderBytes);
    if (!all_equal(slot + kHeaderBytes, front - kHeaderBytes, kRedzoneByte, &bad)) {
      snprintf(detail, sizeof detail, "redzone before the block overwritten at offset -%zu",
               front - kHeaderBytes - bad);
      report(Error::Underflow, p, &h, cls, slab, detail);
      return false;
    }
  }
  Exposed open(end, tail);
  if (!all_equal(end, tail, kRedzoneByte, &bad)) {
    snprintf(detail, sizeof detail, "redzone after the block overwritten at offset +%zu (block size %llu)",
             size_t(h.size) + bad, static_cast<unsigned long long>(h.size));
    report(Error::Overflow, p, &h, cls, slab, detail);
    return false;
  }
  return true;
}

// The slot a pointer of the reservation falls in, or nullptr if none: one
// in the skew before a slab's first slot (layout.hpp) decodes to a number
// past the slab's slots, whose address may not even be mapped. Nor is a
// slot past what its slab committed, in a layout committed on demand: its
// header reads as zero but cannot be written.
char* slot_of(const Layout& L, const Layout::Where& w) {
  if (w.index >= L.slots_per_slab(w.cls)) return nullptr;
  char* const slot = L.slot(w.cls, w.slab, w.index);
  return L.span_offset(slot) + class_bytes(w.cls) <= commit::usable(L, w.cls, w.slab) ? slot : nullptr;
}

// Checks a block being freed (or realloc'd away) and marks it freed; returns
// its slot, or nullptr if it must not be recycled.
char* release(const Layout& L, const Layout::Where& w, void* p, Kind kind, const char* what) {
  char detail[160];
  const auto not_a_block = [&](const Header* h) -> char* {
    snprintf(detail, sizeof detail, "%s of a pointer that is not the start of a block smalloc returned", what);
    report(Error::InvalidFree, p, h, w.cls, w.slab, detail);
    return nullptr;
  };
  char* slot = slot_of(L, w);
  if (!slot) return not_a_block(nullptr);
  Exposed open(slot, kHeaderBytes);
  Header& h = *header(slot);
  if (h.magic != kMagic || h.state.load() == kNeverAllocated || slot + (size_t{1} << h.front_shift) != p)
    return not_a_block(h.magic == kMagic ? &h : nullptr);
  uint8_t live = kLive;
  if (!h.state.compare_exchange_strong(live, kFreed)) {
    snprintf(detail, sizeof detail, "%s of a block that was already freed", what);
    report(Error::DoubleFree, p, &h, w.cls, w.slab, detail);
    return nullptr;
  }
  if (h.kind != kind) {
    static constexpr const char* kDealloc[] = {"free", "delete", "delete[]"};
    snprintf(detail, sizeof detail, "allocated with %s, released with %s", kind_name(h.kind),
             kDealloc[static_cast<int>(kind)]);
    report(Error::Mismatch, p, &h, w.cls, w.slab, detail);
  }
  redzones_intact(slot, w.cls, w.slab, p, h);
  const size_t n = std::min<size_t>(h.size, kPatternCap);
  std::memset(p, kFreedByte, n);
  VALGRIND_FREELIKE_BLOCK(p, kRedzone);
  VALGRIND_MAKE_MEM_NOACCESS(slot, class_bytes(w.cls));
  return slot;
}

void quarantine(char* slot) {
  const Layout L = g_heap.layout();
  Layout::Where w;
  if (!L.locate(slot, w)) return;
  g_quarantined_bytes.fetch_add(class_bytes(w.cls), std::memory_order_relaxed);
  if (!ring_push(slot)) {
    recycle(slot);
    return;
  }
  // FIFO: the oldest freed slots go back to the core first, as late as the budget allows.
  const size_t budget = quarantine_budget();
  while (g_quarantined_bytes.load(std::memory_order_relaxed) > budget) {
    char* oldest = ring_pop();
    if (!oldest) break;
    recycle(oldest);
  }
}

int flush_quarantine() {
  int any = 0;
  while (char* slot = ring_pop()) {
    recycle(slot);
    any = 1;
  }
  return any;
}

size_t block_size(const Layout& L, const Layout::Where& w, const void* p) {
  char* slot = slot_of(L, w);
  if (!slot) return 0;
  Exposed open(slot, kHeaderBytes);
  const Header& h = *header(slot);
  bool live = h.magic == kMagic && h.state.load() == kLive && slot + (size_t{1} << h.front_shift) == p;
  return live ? size_t(h.size) : 0;
}

bool resize(const Layout& L, const Layout::Where& w, void* p, size_t size) {
  const auto not_a_block = [&](const Header* h) {
    report(Error::InvalidFree, p, h, w.cls, w.slab, "realloc of a pointer that is not a live block smalloc returned");
    return false;
  };
  char* slot = slot_of(L, w);
  if (!slot) return not_a_block(nullptr);
  Exposed open(slot, kHeaderBytes);
  Header& h = *header(slot);
  if (h.magic != kMagic || h.state.load() != kLive || slot + (size_t{1} << h.front_shift) != p)
    return not_a_block(h.magic == kMagic ? &h : nullptr);
  if (h.kind != Kind::Malloc) {
    report(Error::Mismatch, p, &h, w.cls, w.slab, "realloc of a block allocated with new");
  }
  if (!redzones_intact(slot, w.cls, w.slab, p, h)) return false;
  char* start = static_cast<char*>(p);
  const size_t room = class_bytes(w.cls) - size_t(start - slot) - kRedzone;  // a slot always holds front + redzone
  if (size > room) return false;  // the core moves it, or fails
  const size_t old = h.size;
  VALGRIND_RESIZEINPLACE_BLOCK(p, old, size, kRedzone);
  if (size > old) {
    // The grown part is addressable but undefined, like fresh memory.
    const size_t fill = std::min(size - old, kPatternCap);
    VALGRIND_MAKE_MEM_UNDEFINED(start + old, fill);
    std::memset(start + old, kFreshByte, fill);
    VALGRIND_MAKE_MEM_UNDEFINED(start + old, size - old);
  }
  h.size = size;
  const size_t tail = tail_fill_bytes(slot, w.cls, start + size);
  VALGRIND_MAKE_MEM_UNDEFINED(start + size, tail);
  std::memset(start + size, kRedzoneByte, tail);
  VALGRIND_MAKE_MEM_NOACCESS(start + size, tail);
  return true;
}

namespace {
// backtrace() loads its unwinder on first use, which allocates: do that now,
// not inside a report.
[[gnu::constructor]] void warm_up_backtrace() {
  void* frame;
  backtrace(&frame, 1);
}
}  // namespace

}  // namespace debug
}  // namespace smalloc
