// The smalloc_-prefixed API, for programs that call this allocator explicitly.
#define SMALLOC_NAME(name) smalloc_##name
#include "api.inc"

SMALLOC_EXPORT int smalloc_owns(const void* ptr) noexcept { return g_heap.owns(ptr); }
