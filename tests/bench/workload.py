"""dict/list/str-heavy Python workload, run by Debian's /usr/bin/python3 under
LD_PRELOAD.  usage: workload.py N   (N scales the work linearly)

Deterministic: the harness sets PYTHONHASHSEED=0, and nothing depends on object
addresses.  With PYTHONMALLOC=malloc every object goes through the preloaded
malloc; by default CPython's own small-object allocator (pymalloc) serves
objects up to 512 bytes and the preloaded malloc sees only larger ones.
"""
import json
import sys
import zlib

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sha", "ti", "vo", "zen", "qua", "ber", "dro"]


def rng(seed):
    # A small LCG: the same sequence in every Python version.
    x = seed
    while True:
        x = (x * 6364136223846793005 + 1442695040888963407) & (2**64 - 1)
        yield x >> 33


def round_(r, n):
    g = rng(r + 1)
    words = ["".join(SYLLABLES[next(g) % 12] for _ in range(1 + next(g) % 4)) for _ in range(3000)]
    # Records as dicts of strings and lists: many small, short-lived objects.
    records = []
    for i in range(n):
        w = words[next(g) % len(words)]
        records.append({"id": i, "name": f"{w}-{i % 97}", "tags": [words[next(g) % 3000] for _ in range(next(g) % 6)],
                        "score": (next(g) % 100000) / 7.0, "text": " ".join(words[next(g) % 3000] for _ in range(8))})
    # Index, group and count.
    by_name = {}
    for rec in records:
        by_name.setdefault(rec["name"], []).append(rec["id"])
    counts = {}
    for rec in records:
        for t in rec["text"].split():
            counts[t] = counts.get(t, 0) + 1
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    # Serialise and parse back, then build one big report string.
    blob = json.dumps(records, sort_keys=True)
    back = json.loads(blob)
    assert back == records
    report = "\n".join(f"{k}:{v}" for k, v in top) + "".join(f"{k}{len(v)}" for k, v in by_name.items())
    upper = [s.upper().replace("A", "@") for s in report.split("\n")]
    return zlib.crc32(blob.encode()) ^ zlib.crc32("|".join(upper).encode()) ^ len(by_name)


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    checksum = 0
    for r in range(5):
        checksum = (checksum * 31 + round_(r, n)) & (2**64 - 1)
    print(f"checksum={checksum:016x}")


if __name__ == "__main__":
    main()
