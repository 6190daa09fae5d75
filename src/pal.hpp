// The operating system behind the allocator: reserve address space, give
// pages back, tell whether memory is mapped. Only slow paths call these; each
// preserves errno so that free() and friends never change it.
#pragma once

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>

#include <fcntl.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace smalloc::pal {

inline constexpr size_t kPageSize = 4096;
inline constexpr unsigned kPageShift = 12;

class ErrnoGuard {
 public:
  ErrnoGuard() : saved_(errno) {}
  ~ErrnoGuard() { errno = saved_; }

 private:
  int saved_;
};

// Address space only: no commit charge (MAP_NORESERVE), zero-filled on first
// touch. Unless the kernel charges it anyway (see commit_is_charged): then
// reserve it read-only, which nothing charges, and commit() what is used.
// Readable, not inaccessible: a pop that loaded a list's head before a trim
// took the list may still read the link of a slot whose pages the trim has
// just given back (decommit), and must read zero, as it did before, not fault.
inline void* reserve(size_t bytes, bool writable = true) {
  ErrnoGuard keep;
  void* p = mmap(nullptr, bytes, writable ? PROT_READ | PROT_WRITE : PROT_READ,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  return p == MAP_FAILED ? nullptr : p;
}

// Makes reserved pages usable. Under strict overcommit this is where they
// are charged, and where the charge can fail (false; ENOMEM).
inline bool commit(void* p, size_t bytes) {
  ErrnoGuard keep;
  return mprotect(p, bytes, PROT_READ | PROT_WRITE) == 0;
}

// The opposite: the pages go, and so does their charge (read-only again).
inline bool decommit(void* p, size_t bytes) {
  ErrnoGuard keep;
  return mmap(p, bytes, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0) != MAP_FAILED;
}

// True if a writable reservation would count in full against a limit, for
// all that MAP_NORESERVE asks: strict overcommit (vm.overcommit_memory = 2,
// where the kernel ignores MAP_NORESERVE) or a data size limit (ulimit -d,
// which counts every writable private mapping). Reads /proc with system
// calls alone: this runs inside the first malloc. (By syscall(): libc's
// open and read are cancellation points, which would need the unwinder.)
inline bool commit_is_charged() {
  ErrnoGuard keep;
  rlimit data{};
  if (getrlimit(RLIMIT_DATA, &data) == 0 && data.rlim_cur != RLIM_INFINITY) return true;
  const long fd = syscall(SYS_openat, AT_FDCWD, "/proc/sys/vm/overcommit_memory", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char mode = 0;
  const bool strict = syscall(SYS_read, fd, &mode, 1) == 1 && mode == '2';
  syscall(SYS_close, fd);
  return strict;
}

// Memory that counts against the commit limit, as glibc's large blocks do:
// for blocks that get a mapping of their own.
inline void* map(size_t bytes) {
  ErrnoGuard keep;
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? nullptr : p;
}

inline void unmap(void* p, size_t bytes) {
  ErrnoGuard keep;
  if (bytes) munmap(p, bytes);
}

// Reserve `bytes` aligned to `align` (a power of two) by over-reserving and
// trimming both ends.
inline void* reserve_aligned(size_t bytes, size_t align, bool writable = true) {
  char* raw = static_cast<char*>(reserve(bytes + align, writable));
  if (!raw) return nullptr;
  uintptr_t start = (reinterpret_cast<uintptr_t>(raw) + align - 1) & ~(align - 1);
  char* aligned = reinterpret_cast<char*>(start);
  unmap(raw, size_t(aligned - raw));
  unmap(aligned + bytes, size_t(raw + bytes + align - (aligned + bytes)));
  return aligned;
}

// The pages become zero-filled again and stop counting towards RSS.
// False if the kernel refused (locked pages): then they are as they were.
inline bool discard(void* p, size_t bytes) {
  ErrnoGuard keep;
  return madvise(p, bytes, MADV_DONTNEED) == 0;
}

// Moves the pages of [from, from + bytes) to `to`, replacing what was there,
// and leaves `from` mapped but empty, zero-filled again: a copy that copies
// nothing. All three must be page-aligned. False if the kernel refuses
// (before Linux 5.7, or at the map-count limit): then nothing moved.
inline bool move_pages(void* from, void* to, size_t bytes) {
  ErrnoGuard keep;
  return mremap(from, bytes, bytes, MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP, to) == to;
}

// Like discard, but with a new mapping in place (atomically: no hole opens),
// which merges with its neighbours again. Pages that move_pages moved form a
// mapping of their own; this is how it goes away when they are freed.
inline bool renew(void* p, size_t bytes) {
  ErrnoGuard keep;
  return mmap(p, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0) !=
             MAP_FAILED ||
         madvise(p, bytes, MADV_DONTNEED) == 0;
}

// How many bytes from p (up to n) lie in mapped memory: lets us copy out of a
// block we did not allocate without faulting.
inline size_t mapped_prefix(const void* p, size_t n) {
  ErrnoGuard keep;
  uintptr_t start = reinterpret_cast<uintptr_t>(p);
  uintptr_t page = start & ~(kPageSize - 1);
  uintptr_t end = start + n < start ? UINTPTR_MAX : start + n;
  unsigned char residency[1];
  for (; page < end; page += kPageSize) {
    if (mincore(reinterpret_cast<void*>(page), kPageSize, residency) != 0) break;
  }
  return page >= end ? n : (page > start ? size_t(page - start) : 0);
}

// Sleeps while `word` holds `expected`, until wake_one (or a spurious wake-up).
inline void wait_while(std::atomic<uint32_t>& word, uint32_t expected) {
  static_assert(sizeof word == sizeof(uint32_t));
  ErrnoGuard keep;
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}
inline void wake_one(std::atomic<uint32_t>& word) {
  ErrnoGuard keep;
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
}

}  // namespace smalloc::pal
