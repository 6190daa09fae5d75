/* smalloc public C interface.
 *
 * Linking libsmalloc (or preloading it) replaces malloc and friends. Every
 * function is also exported under a `smalloc_` prefix so that a program can
 * call this allocator explicitly, for example while libc's malloc serves the
 * rest of the process (link the `smalloc-prefixed` static library for that). */
#ifndef SMALLOC_H
#define SMALLOC_H

#include <stddef.h>

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

/* 1 if ptr lies in a slot of this allocator's region (allocated or not). */
SMALLOC_API int smalloc_owns(const void* ptr) SMALLOC_NOEXCEPT;

#ifdef __cplusplus
}
#endif

#endif
