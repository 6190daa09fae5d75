// The same API under libc's names: linking or preloading this replaces malloc.
#include <malloc.h>
#include <stdlib.h>

#define SMALLOC_NAME(name) name
#include "api.inc"
