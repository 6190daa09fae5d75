/* smalloc public C interface.
 *
 * Linking libsmalloc (or preloading it) replaces malloc and friends. Every
 * function is also exported under a `smalloc_` prefix so that a program can
 * call this allocator explicitly, for example while libc's malloc serves the
 * rest of the process (link the `smalloc-prefixed` static library for that). */
#ifndef SMALLOC_H
#define SMALLOC_H

#include <malloc.h>
#include <stddef.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#define SMALLOC_NOEXCEPT noexcept
#else
#define SMALLOC_NOEXCEPT
#endif

#define SMALLOC_API __attribute__((visibility("default")))

SMALLOC_API void* smalloc_malloc(size_t size) SMALLOC_NOEXCEPT;
SMALLOC_API void smalloc_free(void* ptr) SMALLOC_NOEXCEPT;
SMALLOC_API void* smalloc_calloc(size_t count, size_t size) SMALLOC_NOEXCEPT;
SMALLOC_API void* smalloc_realloc(void* ptr, size_t size) SMALLOC_NOEXCEPT;
SMALLOC_API void* smalloc_reallocarray(void* ptr, size_t count, size_t size) SMALLOC_NOEXCEPT;
SMALLOC_API int smalloc_posix_memalign(void** out, size_t alignment, size_t size) SMALLOC_NOEXCEPT;
SMALLOC_API void* smalloc_aligned_alloc(size_t alignment, size_t size) SMALLOC_NOEXCEPT;
SMALLOC_API void* smalloc_memalign(size_t alignment, size_t size) SMALLOC_NOEXCEPT;
SMALLOC_API void* smalloc_valloc(size_t size) SMALLOC_NOEXCEPT;
SMALLOC_API void* smalloc_pvalloc(size_t size) SMALLOC_NOEXCEPT;
SMALLOC_API size_t smalloc_malloc_usable_size(void* ptr) SMALLOC_NOEXCEPT;
SMALLOC_API void smalloc_free_sized(void* ptr, size_t size) SMALLOC_NOEXCEPT;
SMALLOC_API void smalloc_free_aligned_sized(void* ptr, size_t alignment, size_t size) SMALLOC_NOEXCEPT;
SMALLOC_API int smalloc_malloc_trim(size_t pad) SMALLOC_NOEXCEPT;
/* glibc's statistics calls, reporting this heap (see the README). */
SMALLOC_API struct mallinfo2 smalloc_mallinfo2(void) SMALLOC_NOEXCEPT;
SMALLOC_API struct mallinfo smalloc_mallinfo(void) SMALLOC_NOEXCEPT;
SMALLOC_API int smalloc_mallopt(int param, int value) SMALLOC_NOEXCEPT;
SMALLOC_API void smalloc_malloc_stats(void) SMALLOC_NOEXCEPT;
SMALLOC_API int smalloc_malloc_info(int options, FILE* out) SMALLOC_NOEXCEPT;

/* 1 if ptr lies in a slot of this allocator's region (allocated or not). */
SMALLOC_API int smalloc_owns(const void* ptr) SMALLOC_NOEXCEPT;

/* ---- Introspection ---------------------------------------------------------
 * A snapshot of occupancy, taken without stopping the allocator: exact when
 * the program is quiescent; while threads allocate, each slab's figures are
 * read frees-first so that 0 <= in_use <= touched <= capacity always holds. */
#define SMALLOC_STATS_SCHEMA_VERSION 2
#define SMALLOC_SLABS_PER_CLASS 64
/* Classes 0..66; the first used is min_class. Class c has slots of 2^(c/2)
 * bytes if c is even, 1.5 * 2^(c/2) if odd; some odd ones do not exist
 * (slot_size 0 in a snapshot). */
#define SMALLOC_MAX_CLASSES 67

struct smalloc_slab_stats {
  unsigned long long in_use, touched, capacity, allocations, frees;
};

struct smalloc_class_stats {
  unsigned size_class;
  unsigned long long slot_size, slots_per_slab, capacity;
  unsigned long long in_use, touched, allocations, frees;
  unsigned long long failovers; /* requests served by another slab than the thread's */
  unsigned long long overflows; /* requests served by a larger class: all 64 slabs were full */
  unsigned long long bytes_requested_total;
  struct smalloc_slab_stats slabs[SMALLOC_SLABS_PER_CLASS];
};

struct smalloc_stats {
  unsigned schema_version;
  int counters_enabled; /* 0 if built with SMALLOC_STATS=OFF: only layout and memory figures */
  const char* build;    /* "release" or "debug" */
  unsigned span_shift, min_class, max_class, slabs_per_class;
  unsigned long long reserved_bytes, resident_bytes;
  double uptime_seconds;
  struct smalloc_class_stats classes[SMALLOC_MAX_CLASSES]; /* indexed by size class */
};

/* Fills *out; returns 0, or -1 if the heap has not been set up yet. */
SMALLOC_API int smalloc_stats_snapshot(struct smalloc_stats* out) SMALLOC_NOEXCEPT;

/* Starts the HTTP endpoint ("port", "host:port" or ":port"; the host defaults
 * to 127.0.0.1; port 0 picks a free one) on a thread of its own, loading
 * libsmalloc-introspect.so. Returns the port it listens on, or -1. Setting SMALLOC_STATS_ADDR in the environment
 * does the same at start-up. */
SMALLOC_API int smalloc_stats_serve(const char* address) SMALLOC_NOEXCEPT;

/* In libsmalloc-introspect.so: the snapshot as JSON (schema in the README);
 * size_class < 0 for everything, else that class with its slabs. Writes at
 * most cap bytes including the terminating NUL; returns the length the whole
 * text needs (excluding NUL), or -1 for a class that does not exist. */
SMALLOC_API long smalloc_stats_json(const struct smalloc_stats* stats, int size_class, char* buf,
                                    unsigned long cap) SMALLOC_NOEXCEPT;

#ifdef __cplusplus
}
#endif

#endif
