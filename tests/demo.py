"""The quick-start demonstration: a real python3 program whose memory comes
from smalloc (run it under build/smalloc-run). It does some honest work, then
shows where its big objects live: in smalloc's reservation, which it finds in
/proc/self/smaps."""
import ctypes
import json
import sys

libc = ctypes.CDLL(None)
try:
    owns = libc.smalloc_owns
except AttributeError:
    sys.exit("smalloc is not loaded: run this under build/smalloc-run")
owns.argtypes = [ctypes.c_void_p]

records = [{"id": i, "name": f"user-{i}", "tags": [str(i % 7), str(i % 11)]} for i in range(200_000)]
blob = json.dumps(records)
again = json.loads(blob)
assert again == records
words = sorted(set(blob.split('"')), key=len)

def mapping_of(address):
    with open("/proc/self/smaps") as smaps:
        current = None
        for line in smaps:
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                current = (lo, hi) if lo <= address < hi else None
            elif current and head[0] == "Rss:":
                return current, int(head[1])
    return None, 0

address = id(blob)  # CPython: an object's id is its address; a string this big came from malloc
(lo, hi), rss_kib = mapping_of(address)
print(f"python3 built and parsed {len(blob) / 1e6:.1f} MB of JSON ({len(records)} records, {len(words)} distinct tokens)")
print(f"the JSON text lives at {address:#x}; smalloc_owns() says {'yes' if owns(address) else 'NO'}")
print(f"smalloc's reservation: {(hi - lo) / 2**40:.1f} TiB of address space, {rss_kib / 1024:.1f} MiB of it resident")
sys.exit(0 if owns(address) else 1)
