#!/usr/bin/env python3
"""What a build option costs: the same workloads under two (or more) builds of
smalloc, interleaved, one process per run, ratios taken within a repetition.

  build_cost.py stats --on build/libsmalloc.so --off build-nostats/libsmalloc.so \\
                      --bin-dir build/tests/bench
      occupancy counters on (SMALLOC_STATS=ON, the default) against off:
      micro/pairs-small, micro/batch-random, threads/local-1, threads/local-4,
      threads/prodcons-4; prints OFF/ON (below 1: the counters cost time).
      Then, unless --no-instructions, the instructions each build executes on
      the same workloads (one run each under valgrind --tool=callgrind):
      repeatable where times on a shared machine are not.

  build_cost.py debug --release build/libsmalloc.so --debug build/libsmalloc-debug.so \\
                      --bin-dir build/tests/bench
      the debug build against the release build natively on the same
      workloads, then bench_micro pairs-small under Valgrind memcheck:
      libsmalloc-debug.so preloaded (--soname-synonyms=somalloc=nouserintercepts)
      against memcheck's own malloc (no preload); --vg-n N sets the size
      (default 1000000; 4000000, ~1 s natively with glibc, takes ~10 min a run)

  build_cost.py ab --a base/libsmalloc.so --b build/libsmalloc.so --bin-dir build/tests/bench
      any two builds (say, a change against its parent commit) on every
      run_bench.py workload (--only narrows them); prints B/A for wall time,
      CPU time and peak RSS, and with --instructions the callgrind counts too

  common options: --reps N, --size quick|full (run_bench.py's sizes),
                  --scale K (multiply the size), --only REGEX, --timeout S

Workload argv and sizes come from run_bench.py's workloads(). The order of the
builds rotates every repetition (A B, B A, ...). Printed: median wall and CPU
(user+sys) time and peak RSS per build, and the median of the per-repetition ratios with
their interquartile range. Nothing passes or fails on time: the exit status is
non-zero only if a run failed or printed a different checksum.

Python standard library only.
"""
import argparse
import math
import os
import re
import shutil
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run_bench  # noqa: E402  (workloads(), run_once(), child_env(), render_text())

STATS_WORKLOADS = ["micro/pairs-small", "micro/batch-random", "threads/local-1", "threads/local-4",
                   "threads/prodcons-4"]
VALGRIND_WORKLOAD = "micro/pairs-small"
# A quarter of run_bench.py's full size (~1 s with glibc): memcheck alone takes
# ~15 s on the 2-core reference machine, memcheck with libsmalloc-debug ~2 min.
VALGRIND_N = 1000000
ERROR_SUMMARY = re.compile(r"ERROR SUMMARY: (\d+) errors")
COLLECTED = re.compile(r"Collected : (\d+)")


def pick(names, size, scale, bin_dir):
    """[(name, argv with absolute program, env)] in the order of `names`."""
    table = {name: (argv, sizes, env) for name, argv, sizes, env in run_bench.workloads()}
    out = []
    for name in names:
        argv, sizes, env = table[name]
        prog = os.path.join(bin_dir, argv[0])
        if not os.access(prog, os.X_OK):
            sys.exit(f"{prog} not found (build the bench programs: cmake --build BUILD)")
        n = str(sizes[size] * scale)
        out.append((name, [prog] + [a.replace("{n}", n) for a in argv[1:]], env))
    return out


def measure(configs, works, reps, timeout, spawn):
    """configs: [(label, lib or None, argv prefix)]. Returns {workload: {label: [run]}}."""
    results = {w: {c[0]: [] for c in configs} for w, _, _ in works}
    for rep in range(reps):
        k = rep % len(configs)
        order = configs[k:] + configs[:k]
        for name, argv, env in works:
            for label, lib, prefix in order:
                r = run_bench.run_once(prefix + argv, lib, run_bench.child_env(env), timeout, spawn)
                r["rep"] = rep
                m = ERROR_SUMMARY.findall(r["stderr_tail"])
                r["memcheck_errors"] = int(m[-1]) if m else None
                results[name][label].append(r)
                sys.stdout.write(".")
                sys.stdout.flush()
    sys.stdout.write("\n")
    return results


def quartiles(xs):
    if len(xs) < 2:
        return (xs[0], xs[0]) if xs else (None, None)
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def summarise(results, labels, ref):
    """Rows of text for the wall and CPU tables; problems found."""
    problems, tables = [], []
    for key, title in (("wall", "Wall time"), ("cpu", "CPU time user+sys"), ("maxrss_mib", "Peak RSS MiB")):
        header = ["workload"] + [f"{l} MiB" if key == "maxrss_mib" else f"{l} s" for l in labels] + \
                 [f"{l}/{ref} [IQR]" for l in labels if l != ref]
        rows, per_label_ratios = [], {l: [] for l in labels if l != ref}
        for w, per in results.items():
            row = [w]
            for l in labels:
                ok = [r[key] for r in per[l] if r["status"] == "ok"]
                row.append((f"{statistics.median(ok):.1f}" if key == "maxrss_mib" else f"{statistics.median(ok):.3f}")
                           if ok else "FAILED")
            base = {r["rep"]: r[key] for r in per[ref] if r["status"] == "ok"}
            for l in labels:
                if l == ref:
                    continue
                ratios = sorted(r[key] / base[r["rep"]] for r in per[l]
                                if r["status"] == "ok" and base.get(r["rep"]))
                if ratios:
                    med = statistics.median(ratios)
                    lo, hi = quartiles(ratios)
                    per_label_ratios[l].append(med)
                    row.append(f"{med:.3f} [{lo:.3f}-{hi:.3f}]")
                else:
                    row.append("-")
            rows.append(row)
        geo = ["geometric mean"] + [""] * len(labels)
        for l, meds in per_label_ratios.items():
            geo.append(f"{math.exp(sum(map(math.log, meds)) / len(meds)):.3f}" if meds else "-")
        rows.append(geo)
        tables.append((f"{title}: median per build; ratio = median of per-repetition ratios", header, rows))
    for w, per in results.items():
        sums = {r["checksum"] for l in labels for r in per[l] if r["status"] == "ok"}
        if len(sums) > 1:
            problems.append(f"{w}: checksums differ between builds: {sorted(sums)}")
        for l in labels:
            for r in per[l]:
                if r["status"] != "ok":
                    problems.append(f"{w} [{l}] rep {r['rep']}: {r['status']}\n{r['stderr_tail'][-600:]}")
    return tables, problems


def report(results, labels, ref, title):
    tables, problems = summarise(results, labels, ref)
    print(f"\n== {title}")
    print(run_bench.render_text(tables))
    return problems


def spawn_helper(bin_dir):
    spawn = os.path.join(bin_dir, "bench_spawn")
    return spawn if os.access(spawn, os.X_OK) else None


def header(args, libs):
    print(f"{args.reps} repetition(s), size {args.size} x{args.scale}, load average at start "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    for label, lib in libs:
        print(f"  {label:10} {lib or '(no preload)'}")


def cmd_stats(args):
    names = [n for n in STATS_WORKLOADS if not args.only or re.search(args.only, n)]
    works = pick(names, args.size, args.scale, args.bin_dir)
    on, off = os.path.abspath(args.on), os.path.abspath(args.off)
    header(args, [("ON", on), ("OFF", off)])
    res = measure([("ON", on, []), ("OFF", off, [])], works, args.reps, args.timeout, spawn_helper(args.bin_dir))
    problems = report(res, ["ON", "OFF"], "ON",
                      "stats counters: OFF/ON below 1 means the counters cost time (cost = ON/OFF - 1)")
    if not args.no_instructions:
        problems += instruction_counts(works, [("ON", on), ("OFF", off)], args.timeout * 100)
    return problems


def cmd_ab(args):
    names = [n for n, _, _, _ in run_bench.workloads() if not args.only or re.search(args.only, n)]
    works = pick(names, args.size, args.scale, args.bin_dir)
    a, b = os.path.abspath(args.a), os.path.abspath(args.b)
    header(args, [("A", a), ("B", b)])
    res = measure([("A", a, []), ("B", b, [])], works, args.reps, args.timeout, spawn_helper(args.bin_dir))
    problems = report(res, ["A", "B"], "A", "two builds: B/A below 1 means B is faster")
    if args.instructions:
        problems += instruction_counts(works, [("A", a), ("B", b)], args.timeout * 100)
    return problems


def instruction_counts(works, libs, timeout):
    """Instructions executed, user space, per build: one callgrind run each."""
    valgrind = shutil.which("valgrind")
    if not valgrind:
        return ["valgrind not found (Debian: valgrind): no instruction counts"]
    vg = [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    print("\n== instructions executed (valgrind --tool=callgrind, one run each); "
          "threaded workloads vary a little with scheduling")
    (first, _), (second, _) = libs
    print(f"{'workload':20} {first:>14} {second:>14}  {first}/{second}")
    problems, ratios = [], []
    for name, argv, env in works:
        counts = {}
        for label, lib in libs:
            r = run_bench.run_once(vg + argv, lib, run_bench.child_env(env), timeout, None)
            m = COLLECTED.findall(r["stderr_tail"])
            if r["status"] != "ok" or not m:
                problems.append(f"{name} [{label}] under callgrind: {r['status']}\n{r['stderr_tail'][-600:]}")
                break
            counts[label] = int(m[-1])
        if len(counts) == len(libs):
            ratio = counts[first] / counts[second]
            ratios.append(ratio)
            print(f"{name:20} {counts[first]:>14,} {counts[second]:>14,}  {ratio:.3f}")
    if ratios:
        print(f"{'geometric mean':50} {math.exp(sum(map(math.log, ratios)) / len(ratios)):.3f}")
    return problems


def cmd_debug(args):
    rel, dbg = os.path.abspath(args.release), os.path.abspath(args.debug)
    spawn = spawn_helper(args.bin_dir)
    header(args, [("release", rel), ("debug", dbg)])
    problems = []
    names = [n for n in STATS_WORKLOADS if not args.only or re.search(args.only, n)]
    if names:
        works = pick(names, args.size, args.scale, args.bin_dir)
        res = measure([("release", rel, []), ("debug", dbg, [])], works, args.reps, args.timeout, spawn)
        problems += report(res, ["release", "debug"], "release", "debug build natively: debug/release")
    if args.no_valgrind:
        return problems
    valgrind = shutil.which("valgrind")
    if not valgrind:
        problems.append("valgrind not found (Debian: valgrind)")
        return problems
    (name, argv, env), = pick([VALGRIND_WORKLOAD], "quick", 1, args.bin_dir)
    argv = argv[:-1] + [str(args.vg_n)]
    vg = [valgrind]
    configs = [("native-rel", rel, []), ("native-dbg", dbg, []),
               ("vg-memcheck", None, vg),
               ("vg-smalloc", dbg, vg + ["--soname-synonyms=somalloc=nouserintercepts"])]
    print(f"\nValgrind {' '.join(os.path.basename(a) for a in argv)}, {args.vg_reps} repetition(s):"
          f"\n  vg-memcheck  valgrind, memcheck's own malloc (no preload)"
          f"\n  vg-smalloc   LD_PRELOAD=libsmalloc-debug.so valgrind --soname-synonyms=somalloc=nouserintercepts")
    res = measure(configs, [(f"{name} {args.vg_n}", argv, env)], args.vg_reps, args.vg_timeout, spawn)
    labels = [c[0] for c in configs]
    problems += report(res, labels, "native-rel", "pairs-small natively and under valgrind: ratio to native release")
    for w, per in res.items():
        base = {r["rep"]: r["wall"] for r in per["vg-memcheck"] if r["status"] == "ok"}
        ratios = sorted(r["wall"] / base[r["rep"]] for r in per["vg-smalloc"]
                        if r["status"] == "ok" and base.get(r["rep"]))
        if ratios:
            lo, hi = quartiles(ratios)
            print(f"\nvg-smalloc / vg-memcheck, wall: {statistics.median(ratios):.2f} [IQR {lo:.2f}-{hi:.2f}]")
        for l in ("vg-memcheck", "vg-smalloc"):
            errs = sorted({r["memcheck_errors"] for r in per[l]}, key=str)
            print(f"{l}: memcheck ERROR SUMMARY {errs}")
            if any(e not in (0, None) for e in errs):
                problems.append(f"{l}: memcheck reported errors on a clean program: {errs}")
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--bin-dir", required=True, help="directory with the bench_* programs")
    common.add_argument("--reps", type=int, default=7)
    common.add_argument("--size", choices=("smoke", "quick", "full"), default="quick")
    common.add_argument("--scale", type=int, default=1, help="multiply the workload size by K")
    common.add_argument("--only", help="regular expression on the workload names")
    common.add_argument("--timeout", type=float, default=120, help="seconds per native run")
    s = sub.add_parser("stats", parents=[common], help="SMALLOC_STATS=ON against OFF")
    s.add_argument("--on", required=True, help="libsmalloc.so built with SMALLOC_STATS=ON")
    s.add_argument("--off", required=True, help="libsmalloc.so built with SMALLOC_STATS=OFF")
    s.add_argument("--no-instructions", action="store_true", help="skip the callgrind instruction counts")
    d = sub.add_parser("debug", parents=[common], help="debug against release, natively and under valgrind")
    d.add_argument("--release", required=True, help="libsmalloc.so")
    d.add_argument("--debug", required=True, help="libsmalloc-debug.so")
    d.add_argument("--vg-n", type=int, default=VALGRIND_N, help=f"pairs-small size (default {VALGRIND_N})")
    d.add_argument("--vg-reps", type=int, default=3)
    d.add_argument("--vg-timeout", type=float, default=900, help="seconds per valgrind run")
    d.add_argument("--no-valgrind", action="store_true")
    c = sub.add_parser("ab", parents=[common], help="any two builds (a change against its parent)")
    c.add_argument("--a", required=True, help="libsmalloc.so, the reference (say, built at the parent commit)")
    c.add_argument("--b", required=True, help="libsmalloc.so, the other")
    c.add_argument("--instructions", action="store_true", help="add the callgrind instruction counts")
    args = ap.parse_args()
    args.bin_dir = os.path.abspath(args.bin_dir)
    problems = {"stats": cmd_stats, "debug": cmd_debug, "ab": cmd_ab}[args.cmd](args)
    if problems:
        print("\nPROBLEMS:\n  " + "\n  ".join(problems))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
