# A correct, small but varied Python workload (dicts, strings, regexes, json,
# sorting, big bytes objects, a thread) for /usr/bin/python3 under memcheck
# with the debug build. The runner sets PYTHONMALLOC=malloc so every object,
# not only the big ones, comes from smalloc. Python leaves objects alive at
# exit that only interior (GC header) pointers reach, which memcheck calls
# "possibly lost" even with glibc's malloc, so only definite leaks count as
# errors; python3.supp is Debian's (package python3), not read by default.
#   @native: none
#   @native-stdout: python workload ok
#   @valgrind-errors: 0
#   @valgrind-option: --errors-for-leak-kinds=definite
#   @valgrind-option: --suppressions=/usr/lib/valgrind/python3.supp
#   @env: PYTHONMALLOC=malloc
import json, re, threading


def smalloc_mapped():
    # python3 is not PIE, so dladdr(malloc) would name its PLT, not the
    # library that serves it: look for the preloaded library instead.
    with open("/proc/self/maps") as maps:
        names = {line.split()[-1] for line in maps if "smalloc" in line}
    return " ".join(sorted(names)) or "?"


def work(n, out):
    words = {}
    for i in range(n):
        w = "w%d" % (i * 7919 % 1000)
        words[w] = words.get(w, 0) + len(w)
    text = " ".join("%s=%d" % kv for kv in sorted(words.items()))
    found = re.findall(r"w(\d+)=(\d+)", text)
    doc = json.loads(json.dumps({"n": n, "found": found[:200], "big": "x" * 50000}))
    blobs = [bytes([i % 256]) * (i * 37 % 9000 + 1) for i in range(300)]
    out.append((len(found), len(doc["big"]), sum(len(b) for b in blobs)))


results = []
t = threading.Thread(target=work, args=(3000, results))
t.start()
work(2000, results)
t.join()
assert sorted(results) == [(1000, 50000, 1155750), (1000, 50000, 1155750)], results
print("python workload ok")
print("smalloc mapped: " + smalloc_mapped())
print("done")
