// The same API under libc's names: linking or preloading this replaces malloc.
#include <malloc.h>
#include <stdlib.h>

#define SMALLOC_NAME(name) name
#include "api.inc"

// glibc also exports its allocator as __libc_malloc and so on, and some
// programs and wrappers call those directly: a block from one of them freed
// with free (or the other way round) must not cross two allocators.
#define SMALLOC_LIBC_ALIAS(name) \
  extern "C" __attribute__((visibility("default"), alias(#name), copy(name))) decltype(name) __libc_##name;
SMALLOC_LIBC_ALIAS(malloc)
SMALLOC_LIBC_ALIAS(free)
SMALLOC_LIBC_ALIAS(calloc)
SMALLOC_LIBC_ALIAS(realloc)
SMALLOC_LIBC_ALIAS(memalign)
SMALLOC_LIBC_ALIAS(valloc)
SMALLOC_LIBC_ALIAS(pvalloc)
