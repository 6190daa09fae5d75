"""A deterministic Python workload that exercises the interpreter's allocator use.

Python's small-object allocator (pymalloc) takes arenas from malloc, and big
objects (lists, dicts, strings, bytes over 512 bytes) come from malloc directly,
so this stresses small and large blocks, realloc growth and cross-thread frees.
Every result goes into a checksum; the output must be identical with any malloc.
"""
import hashlib
import json
import queue
import random
import threading

digest = hashlib.sha256()


def feed(label, value):
    digest.update(f"{label}={value!r}\n".encode())
    print(f"{label}: {value if len(repr(value)) < 70 else hashlib.md5(repr(value).encode()).hexdigest()}")


rng = random.Random(12345)  # seeded: same numbers on every run

# Dicts and lists: many small objects, growth by realloc, then frees.
table = {f"key{i}": [rng.randrange(10**6) for _ in range(i % 17)] for i in range(60000)}
feed("dict_sum", sum(sum(v) for v in table.values()))
for k in list(table)[::3]:
    del table[k]
feed("dict_after_del", (len(table), sum(len(v) for v in table.values())))

# String building: repeated concatenation (realloc in place), join, splitting.
s = ""
for i in range(20000):
    s += chr(97 + i % 26) * (i % 7)
parts = "-".join(str(i * i) for i in range(50000)).split("-")
feed("strings", (len(s), s.count("abc"), len(parts), parts[-1]))

# JSON round trip of a nested structure.
doc = {"users": [{"id": i, "name": f"user{i}", "tags": [f"t{j}" for j in range(i % 5)],
                  "score": rng.random()} for i in range(20000)]}
text = json.dumps(doc, sort_keys=True)
back = json.loads(text)
feed("json", (len(text), back == doc, hashlib.md5(text.encode()).hexdigest()))

# Sorting: keys, tuples, stability.
records = [(rng.randrange(1000), f"r{i}", i) for i in range(200000)]
records.sort(key=lambda r: (r[0], r[1]))
feed("sorted", records[::20000])


# A small class hierarchy with many instances and dynamic dispatch.
class Shape:
    def __init__(self, n):
        self.n = n

    def area(self):
        raise NotImplementedError


class Square(Shape):
    def area(self):
        return self.n * self.n


class Tri(Shape):
    def area(self):
        return self.n * (self.n + 1) // 2


class Cube(Square):
    __slots__ = ("extra",)

    def __init__(self, n):
        super().__init__(n)
        self.extra = [n] * (n % 50)

    def area(self):
        return 6 * super().area() + len(self.extra)


shapes = [(Square, Tri, Cube)[i % 3](i % 1000) for i in range(150000)]
feed("shapes", sum(s.area() for s in shapes))
del shapes

# Threads: producers build bytes/lists, a consumer frees them (cross-thread frees).
q = queue.Queue(maxsize=256)
results = []


def producer(seed):
    r = random.Random(seed)
    for _ in range(3000):
        q.put(bytes(r.randrange(256) for _ in range(r.randrange(1, 600))))
    q.put(None)


def consumer(nproducers):
    done, total = 0, 0
    while done < nproducers:
        item = q.get()
        if item is None:
            done += 1
        else:
            total += sum(item) + len(item)
    results.append(total)


threads = [threading.Thread(target=producer, args=(seed,)) for seed in range(6)]
threads.append(threading.Thread(target=consumer, args=(6,)))
for t in threads:
    t.start()
for t in threads:
    t.join()
feed("threads", results)

# Big blocks: a large bytearray grown in steps, and a large list freed at once.
big = bytearray()
for i in range(64):
    big += bytes([i]) * 65536
feed("bytearray", (len(big), hashlib.md5(big).hexdigest()))
del big

print("checksum:", digest.hexdigest())
