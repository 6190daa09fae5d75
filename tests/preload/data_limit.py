"""Run under a data size limit (ulimit -d 300000 in the test), which counts
every writable private mapping, MAP_NORESERVE or not. Under glibc and under
smalloc the output must be the same: at least 150 blocks of 1 MiB before
MemoryError (glibc 287, smalloc 185 with a 1.5 MiB slot charged for each;
48 before smalloc committed its reservation on demand), and small objects
again once they are all freed (their commit refused, smalloc trims the
freed slots at the top of their slab and tries again)."""
blocks = []
try:
    while len(blocks) < 2000:
        blocks.append(bytearray(1 << 20))
except MemoryError:
    pass
print("1 MiB blocks before MemoryError, at least 150:", len(blocks) >= 150)
print("MemoryError before 2000 of them:", len(blocks) < 2000)
del blocks
small = [bytes(100) for _ in range(200000)]
print("200000 small objects after freeing them:", len(small))
