#!/usr/bin/env python3
"""A program that allocates steadily, for the introspection tests.

    app.py ROUNDS            ROUNDS rounds of work, one checksum line each
    app.py --fork ROUNDS     the same, forking a child halfway that allocates too
    app.py --serve ROUNDS    first starts the endpoint itself through the C API
                             (ctypes: smalloc_stats_serve("127.0.0.1:0")) and
                             prints the port it got
    app.py --until PATH ...  after ROUNDS rounds, goes on working (printing
                             nothing) until PATH exists: a test that must see
                             the program running decides when it ends, however
                             fast the allocator is

Output depends only on ROUNDS, never on the allocator or on timing, so a run
with smalloc preloaded must print exactly what a plain run prints. Python's
small objects come from its own arenas; the blocks here are big enough
(> 512 B) that each goes through malloc, realloc and free.
"""
import os
import sys
import zlib


def one_round(r):
    blocks = []
    crc = 0
    for i in range(400):
        size = 600 + ((r * 7919 + i * 104729) % 60000)
        b = bytes([(r + i) & 0xFF]) * size
        blocks.append(b)
        if i % 3 == 0:
            blocks.append(bytearray(b[: size // 2]) + b"x" * (i + 1))  # realloc growth
        crc = zlib.crc32(b[:64], crc)
    text = ",".join(str(len(b)) for b in blocks)
    crc = zlib.crc32(text.encode(), crc)
    keep = blocks[::5]
    del blocks
    return crc ^ len(keep)


def main(argv):
    mode = until = None
    if argv and argv[0] == "--until":
        until = argv[1]
        argv = argv[2:]
    if argv and argv[0] in ("--fork", "--serve"):
        mode = argv.pop(0)
    rounds = int(argv[0])
    if mode == "--serve":
        import ctypes
        serve = ctypes.CDLL(None).smalloc_stats_serve
        serve.argtypes = [ctypes.c_char_p]
        port = serve(b"127.0.0.1:0")
        print(f"port {port}", flush=True)
    for r in range(rounds):
        if mode == "--fork" and r == rounds // 2:
            pid = os.fork()
            if pid == 0:
                # The child of a process whose endpoint thread did not follow it.
                status = 0 if one_round(10**6) == one_round(10**6) else 1
                print("child ok", flush=True)
                os._exit(status)
            _, status = os.waitpid(pid, 0)
            print(f"child exit {os.waitstatus_to_exitcode(status)}", flush=True)
        print(f"round {r} {one_round(r):08x}", flush=True)
    r = rounds
    while until and not os.path.exists(until):
        one_round(r)
        r += 1
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
