#!/usr/bin/env python3
"""Mock of smalloc's introspection endpoint, for developing the dashboard and
its browser test without a real allocator.

    python3 tests/browser/mock_stats_server.py PORT [--outage START,SECONDS] [--seed N]

Binds 127.0.0.1:PORT (0 picks a free port; the chosen one is printed as
"listening on http://127.0.0.1:PORT/"). Serves:
  GET /               web/index.html (re-read on every request)
  GET /stats          synthetic schema_version 2 JSON whose numbers change over time
  GET /stats?class=N  one class object with per-slab objects
  anything else       404
--outage START,SECONDS makes /stats answer 503 from START to START+SECONDS
seconds after start-up, to look at the page's error state.
Python 3 standard library only.
"""
import argparse
import json
import math
import os
import random
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

SPAN_SHIFT = 33
MIN_CLASS, MAX_CLASS = 6, 66
# As the allocator's: class c has slots of 2^(c/2) bytes if c is even, 1.5 *
# 2^(c/2) if odd; the odd ones below 48 bytes and above 1.5 MiB do not exist.
CLASSES = [c for c in range(MIN_CLASS, MAX_CLASS + 1) if c % 2 == 0 or 11 <= c <= 41]


def slot_size(c):
    return (2 + (c & 1)) << (c // 2 - 1)
SLABS = 64
RESERVED = 1 << 44
INDEX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "web", "index.html")


class Heap:
    """A made-up workload: a handful of threads, each on its own slab, whose
    per-slab occupancy swings smoothly, plus occasional bursts on other slabs
    (failovers) that fill and drain completely (touched but empty)."""

    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.start = time.monotonic()
        self.last = 0.0
        self.lock = threading.Lock()
        n = len(CLASSES)
        self.in_use = [[0] * SLABS for _ in range(n)]
        self.touched = [[0] * SLABS for _ in range(n)]
        self.allocs = [[0] * SLABS for _ in range(n)]
        self.frees = [[0] * SLABS for _ in range(n)]
        self.failovers = [0] * n
        self.overflows = [0] * n
        self.patterns = []  # (class index, slab, amplitude, period, phase, bursty)
        for i in range(n):
            c = CLASSES[i]
            lg = c // 2  # the size's log2, as the classes' were
            cap = self.cap(c)
            threads = 12 if lg < 12 else 6 if lg < 20 else 3 if lg < 27 else 1
            extra = self.rng.randint(0, 6 if lg < 22 else 2)
            slabs = list(range(threads)) + self.rng.sample(range(threads, SLABS), extra)
            for s in slabs:
                if cap > 64:
                    amp = 3e5 * 0.58 ** (lg - MIN_CLASS // 2) * self.rng.uniform(0.3, 1.5)
                else:
                    amp = cap * self.rng.uniform(0.2, 0.95)
                amp = min(cap - 1 if cap > 1 else 1, max(1, round(amp)))
                bursty = s >= threads
                self.patterns.append((i, s, amp, self.rng.uniform(8, 40), self.rng.uniform(0, 6.3), bursty))
        self.advance()

    @staticmethod
    def cap(c):
        return (1 << SPAN_SHIFT) // slot_size(c)

    def advance(self):
        with self.lock:
            t = time.monotonic() - self.start
            dt = max(0.0, t - self.last)
            self.last = t
            for i, s, amp, period, phase, bursty in self.patterns:
                wave = math.sin(2 * math.pi * t / period + phase)
                level = max(0.0, wave) if bursty else 0.55 + 0.45 * wave
                target = round(amp * level)
                churn = int(amp * dt * self.rng.uniform(0.0, 0.3)) if amp > 4 else 0
                delta = target - self.in_use[i][s]
                self.allocs[i][s] += max(0, delta) + churn
                self.frees[i][s] += max(0, -delta) + churn
                self.in_use[i][s] = target
                self.touched[i][s] = max(self.touched[i][s], target)
                if bursty and delta > 0:
                    self.failovers[i] += 1 + delta // 1000
            if self.rng.random() < dt * 0.2:
                self.overflows[self.rng.randrange(len(self.overflows))] += 1
            return t

    def class_obj(self, i, per_slab_objects=False):
        c = CLASSES[i]
        size, cap = slot_size(c), self.cap(c)
        in_use, touched = sum(self.in_use[i]), sum(self.touched[i])
        allocs, frees = sum(self.allocs[i]), sum(self.frees[i])
        obj = {
            "class": c, "slot_size": size, "slots_per_slab": cap, "capacity": cap * SLABS,
            "in_use": in_use, "touched": touched,
            "bytes_in_use": in_use * size, "touched_bytes": touched * size,
            "allocations": allocs, "frees": frees,
            "failovers": self.failovers[i], "overflows": self.overflows[i],
            "bytes_requested_total": int(allocs * size * (0.62 if c > MIN_CLASS else 0.8)),
        }
        if per_slab_objects:
            obj["slabs"] = [{"slab": s, "in_use": self.in_use[i][s], "touched": self.touched[i][s],
                             "capacity": cap, "allocations": self.allocs[i][s], "frees": self.frees[i][s]}
                            for s in range(SLABS)]
        else:
            obj["slabs"] = {"in_use": list(self.in_use[i]), "touched": list(self.touched[i]),
                            "allocations": list(self.allocs[i]), "frees": list(self.frees[i])}
        return obj

    def stats(self, only_class=None):
        t = self.advance()
        with self.lock:
            if only_class is not None:
                return self.class_obj(CLASSES.index(only_class), per_slab_objects=True)
            classes = [self.class_obj(i) for i in range(len(CLASSES))]
        keys = ("allocations", "frees", "bytes_in_use", "touched_bytes", "bytes_requested_total", "failovers", "overflows")
        totals = {k: sum(c[k] for c in classes) for k in keys}
        totals["blocks_in_use"] = sum(c["in_use"] for c in classes)
        totals["bytes_in_slots_total"] = sum(c["allocations"] * c["slot_size"] for c in classes)
        slots = totals["bytes_in_slots_total"]
        totals["internal_fragmentation"] = round(1 - totals["bytes_requested_total"] / slots, 4) if slots else 0.0
        totals["resident_bytes"] = int(min(totals["touched_bytes"], 3 << 30) * 0.85) + (6 << 20)
        totals["reserved_bytes"] = RESERVED
        return {
            "schema_version": 2, "build": "release", "pid": os.getpid(), "uptime_seconds": round(t, 3),
            "layout": {"span_shift": SPAN_SHIFT, "reserved_bytes": RESERVED, "min_class": MIN_CLASS,
                       "max_class": MAX_CLASS, "slabs_per_class": SLABS},
            "totals": totals, "classes": classes,
        }


def make_handler(heap, outage):
    class Handler(BaseHTTPRequestHandler):
        def send(self, code, body, ctype):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_GET(self):
            url = urlsplit(self.path)
            if url.path == "/":
                with open(INDEX, "rb") as f:
                    return self.send(200, f.read(), "text/html; charset=utf-8")
            if url.path == "/stats":
                up = time.monotonic() - heap.start
                if outage and outage[0] <= up < outage[0] + outage[1]:
                    return self.send(503, b'{"error":"simulated outage"}\n', "application/json")
                q = parse_qs(url.query)
                only = None
                if "class" in q:
                    try:
                        only = int(q["class"][0])
                    except ValueError:
                        only = -1
                    if only not in CLASSES:
                        return self.send(404, b'{"error":"no such class"}\n', "application/json")
                body = json.dumps(heap.stats(only), separators=(",", ":")).encode() + b"\n"
                return self.send(200, body, "application/json")
            self.send(404, b"not found\n", "text/plain; charset=utf-8")

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    return Handler


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("port", type=int)
    ap.add_argument("--outage", help="START,SECONDS: answer 503 on /stats during that window")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    outage = tuple(float(x) for x in a.outage.split(",")) if a.outage else None
    server = ThreadingHTTPServer(("127.0.0.1", a.port), make_handler(Heap(a.seed), outage))
    server.daemon_threads = True
    print(f"listening on http://127.0.0.1:{server.server_address[1]}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
