"""Loads libsmalloc late with dlopen, through ctypes, as the README's example
does, and uses its smalloc_ functions from this thread and a new one.

The README's "dlopen needs room made" (GLIBC_TUNABLES=
glibc.rtld.optional_static_tls=4096) holds only while the thread state fits
in what that leaves of static TLS in a Python process: this fails (dlopen's
"cannot allocate memory in static TLS block") if it outgrows it.

    python3 dlopen_ctypes.py LIBSMALLOC
"""
import ctypes
import sys
import threading


def churn(lib, failures):
    for i in range(5000):
        size = i % 5000 + 1
        p = lib.smalloc_malloc(size)
        if not p:
            failures.append(size)
            return
        ctypes.memset(p, 1, size)
        lib.smalloc_free(ctypes.c_void_p(p))


def main():
    lib = ctypes.CDLL(sys.argv[1])
    lib.smalloc_malloc.restype = ctypes.c_void_p
    lib.smalloc_malloc.argtypes = [ctypes.c_size_t]
    failures = []
    churn(lib, failures)
    t = threading.Thread(target=churn, args=(lib, failures))
    t.start()
    t.join()
    if failures:
        print("smalloc_malloc returned NULL for", failures)
        return 1
    print("dlopen through ctypes and allocation from two threads: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
