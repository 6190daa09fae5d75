#!/usr/bin/env python3
"""Run the smalloc benchmarks under every allocator and compare.

Each workload runs as a separate process per allocator (LD_PRELOAD), the
allocators interleaved (A B C D E, then B C D E A, ...) so that a noisy machine
hurts all of them alike. Per run: wall time, CPU time (user+sys) and peak RSS
from os.wait4. Reported: medians, and each allocator's ratio to ours computed
per repetition (median of the per-repetition ratios), with geometric means
across workloads. Every workload prints a checksum, which must agree across
allocators. Nothing passes or fails on time: the exit status is non-zero only
if a workload crashed, hung, failed or printed a different checksum.

Python standard library only.

  run_bench.py --quick --ours build/libsmalloc.so --bin-dir build/tests/bench
  run_bench.py          (full: up to ~30 minutes)
  run_bench.py --smoke  (tiny sizes, 1 repetition: does everything run?)
"""
import argparse
import collections
import datetime
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
LIBDIR = "/usr/lib/x86_64-linux-gnu"
PEERS = [  # (name, library or None for glibc's own malloc, Debian package)
    ("jemalloc", f"{LIBDIR}/libjemalloc.so.2", "libjemalloc2"),
    ("mimalloc", f"{LIBDIR}/libmimalloc.so.2", "libmimalloc2.0"),
    ("tcmalloc", f"{LIBDIR}/libtcmalloc_minimal.so.4", "libtcmalloc-minimal4"),
    ("glibc", None, "libc6"),
]
OURS = "smalloc"
PYTHON = "/usr/bin/python3"  # Debian's: a pyenv shim would be a shell script
MODES = ("smoke", "quick", "full")
REPS = {"smoke": 1, "quick": 3, "full": 5}
TIMEOUT = {"smoke": 30, "quick": 120, "full": 300}  # seconds per run: a hang is a finding


def workloads():
    """(name, argv, {mode: size}, extra env). "{n}" in argv is the size.

    Sizes are set so that a run takes roughly 0.02 s (smoke), 0.2 s (quick)
    and 1 s (full) with glibc on the 2-core reference machine.
    """
    w = []

    def add(name, argv, smoke, quick, full, env=None):
        w.append((name, argv, dict(smoke=smoke, quick=quick, full=full), env or {}))

    micro = "bench_micro"
    add("micro/pairs-small", [micro, "pairs-small", "{n}"], 20000, 800000, 4000000)
    add("micro/pairs-large", [micro, "pairs-large", "{n}"], 5000, 150000, 750000)
    add("micro/batch-lifo", [micro, "batch-lifo", "{n}"], 1, 10, 40)
    add("micro/batch-random", [micro, "batch-random", "{n}"], 1, 8, 30)
    add("micro/calloc", [micro, "calloc", "{n}"], 5000, 100000, 500000)
    add("micro/realloc-geom", [micro, "realloc-geom", "{n}"], 1, 3, 12)
    add("micro/realloc-step", [micro, "realloc-step", "{n}", "4194304"], 1, 10, 50)
    add("micro/aligned", [micro, "aligned", "{n}"], 20000, 600000, 3000000)
    # The same total work for every thread count: 64 threads oversubscribe the
    # 2-core machine on purpose.
    for mode, counts, quick, full in (("local", (1, 2, 4, 16, 64), 2000000, 8000000),
                                      ("prodcons", (2, 4, 16, 64), 1500000, 6000000),
                                      ("server", (1, 2, 4, 16, 64), 500000, 2000000)):
        for t in counts:
            add(f"threads/{mode}-{t}", ["bench_threads", mode, str(t), "{n}"], 20000, quick, full)
    add("macro/json", ["bench_json", "{n}", "2"], 256, 2048, 8192)
    add("macro/text", ["bench_text", "{n}", "1"], 128, 1024, 4096)
    add("macro/binary-trees", ["bench_trees", "{n}"], 10, 16, 18)
    script = os.path.join(HERE, "workload.py")
    pyenv = {"PYTHONHASHSEED": "0"}
    add("macro/python", [PYTHON, "-s", script, "{n}"], 300, 4000, 20000, pyenv)
    # Every object through malloc, not only those above pymalloc's 512 bytes.
    add("macro/python-malloc", [PYTHON, "-s", script, "{n}"], 300, 4000, 20000,
        dict(pyenv, PYTHONMALLOC="malloc"))
    add("memory/footprint", ["bench_memory", "{n}"], 16, 256, 1024)
    return w


def run_once(argv, lib, env, timeout, spawn):
    """One process; returns a dict with timings, rusage, status and output.

    With `spawn` (bench_spawn) the workload is forked from that tiny program,
    which reports the workload's own rusage: a process forked from this Python
    harness would inherit the harness's RSS as its peak (Linux keeps the
    pre-exec peak). Without it the harness waits itself, and peak RSS has a
    floor of roughly the harness's size.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile(prefix="bench-rusage-") as res:
        timed_out = threading.Event()
        if spawn:
            cmd = [spawn, res.name, lib or "-"] + argv
        else:
            cmd = argv
            env = dict(env, LD_PRELOAD=lib) if lib else env
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)

        def kill():
            timed_out.set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, kill)
        timer.start()
        _, wstatus, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(wstatus)  # Popen must not wait again
        code = proc.returncode
        cpu_user, cpu_sys, maxrss_kib = ru.ru_utime, ru.ru_stime, ru.ru_maxrss
        if spawn and code == 0:
            fields = dict(kv.split("=") for kv in res.read().decode().split())
            wall, cpu_user, cpu_sys = float(fields["wall"]), float(fields["user"]), float(fields["sys"])
            maxrss_kib = int(fields["maxrss_kib"])
            code = os.waitstatus_to_exitcode(int(fields["wstatus"]))
        elif spawn and not timed_out.is_set():
            code = 1000 + code  # the helper itself failed
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    checksum, metrics, warnings = None, {}, []
    for line in stdout.splitlines():
        if line.startswith("checksum="):
            checksum = line.split("=", 1)[1].strip()
        elif line.startswith("warning "):
            warnings.append(line[8:].strip())
        elif line.startswith("metric "):
            k, _, v = line[7:].partition("=")
            try:
                metrics[k.strip()] = float(v)
            except ValueError:
                pass
    if timed_out.is_set():
        status = f"TIMEOUT after {timeout}s"
    elif code >= 1000:
        status = f"HARNESS bench_spawn exit {code - 1000}"
    elif code < 0:
        status = "CRASH " + signal.Signals(-code).name
    elif code != 0:
        status = f"EXIT {code}"
    elif checksum is None:
        status = "NO CHECKSUM"
    else:
        status = "ok"
    return dict(wall=wall, cpu=cpu_user + cpu_sys, user=cpu_user, sys=cpu_sys,
                maxrss_mib=maxrss_kib / 1024.0, status=status, checksum=checksum,
                metrics=metrics, warnings=warnings, stderr_tail=stderr[-2000:])


def child_env(extra):
    env = {k: v for k, v in os.environ.items()
           if k != "LD_PRELOAD" and not k.startswith("PYTHON")}
    env.update(extra)
    return env


def median_or_none(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def geomean(xs):
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else None


def summarise(results, allocs, ref):
    """Medians, per-repetition ratios to `ref`, checksum verdicts."""
    summary = {}
    for wname, per_alloc in results.items():
        s = summary[wname] = {"alloc": {}, "reference_checksum": None}
        sums = [r["checksum"] for a in allocs for r in per_alloc.get(a, []) if r["status"] == "ok"]
        glibc_sums = [r["checksum"] for r in per_alloc.get("glibc", []) if r["status"] == "ok"]
        # glibc is the trusted baseline; otherwise the most common answer.
        refsum = (glibc_sums[0] if glibc_sums else
                  collections.Counter(sums).most_common(1)[0][0] if sums else None)
        s["reference_checksum"] = refsum
        for a in allocs:
            runs = per_alloc.get(a, [])
            ok = [r for r in runs if r["status"] == "ok"]
            bad = sorted({r["status"] for r in runs if r["status"] != "ok"})
            wrong = sorted({r["checksum"] for r in ok if r["checksum"] != refsum})
            if wrong:
                bad.append("CHECKSUM " + ",".join(wrong) + " != " + str(refsum))
            entry = {"runs": len(runs), "ok": len(ok), "problems": bad,
                     "warnings": sorted({w for r in runs for w in r.get("warnings", [])})}
            metrics = sorted({k for r in ok for k in r["metrics"]})
            entry["metrics"] = {k: median_or_none([r["metrics"].get(k) for r in ok]) for k in metrics}
            for key in ("wall", "cpu", "maxrss_mib"):
                entry[key] = median_or_none([r[key] for r in ok])
                # ratio per repetition against ours in the same repetition
                mine = {r["rep"]: r[key] for r in runs if r["status"] == "ok"}
                theirs = {r["rep"]: r[key] for r in per_alloc.get(ref, []) if r["status"] == "ok"}
                ratios = [mine[k] / theirs[k] for k in mine if k in theirs and theirs[k] > 0]
                entry[key + "_ratio"] = median_or_none(ratios)
            s["alloc"][a] = entry
    geo = {a: {key: geomean([summary[w]["alloc"][a][key + "_ratio"] for w in summary])
               for key in ("wall", "cpu", "maxrss_mib")} for a in allocs}
    return summary, geo


def fmt_cell(entry, key, unit, is_ref):
    if entry is None or entry[key] is None:
        return "FAILED" if entry and entry["problems"] else "-"
    v = entry[key]
    s = f"{v:.3f}{unit}" if unit == "s" else f"{v:.1f}"
    if not is_ref and entry.get(key + "_ratio") is not None:
        s += f" ×{entry[key + '_ratio']:.2f}"
    if entry["problems"]:
        s += " !"
    return s


def tables(summary, geo, allocs, ref):
    """[(title, header, rows)] shared by the text and Markdown output."""
    out = []
    for key, title, unit in (("wall", "Wall time, median (×ratio = allocator / %s)", "s"),
                             ("cpu", "CPU time user+sys, median (×ratio = allocator / %s)", "s"),
                             ("maxrss_mib", "Peak RSS MiB, median (×ratio = allocator / %s)", "")):
        header = ["workload"] + allocs + ["checksum"]
        rows = []
        for w, s in summary.items():
            ok = all(not s["alloc"][a]["problems"] for a in allocs)
            rows.append([w] + [fmt_cell(s["alloc"][a], key, unit, a == ref) for a in allocs]
                        + ["same" if ok else "PROBLEM"])
        g = ["geometric mean of ratios"] + [
            "1.00" if a == ref else ("-" if geo[a][key] is None else f"×{geo[a][key]:.2f}")
            for a in allocs] + [""]
        rows.append(g)
        out.append((title % ref, header, rows))
    # Metrics the workloads print themselves (the memory workload's RSS readings).
    mrows = []
    for w, s in summary.items():
        names = sorted({k for a in allocs for k in s["alloc"][a]["metrics"]},
                       key=lambda k: (k.split("_")[0] != "small", k.replace("before", "0")
                                      .replace("peak", "1").replace("after", "2")))
        for k in names:
            vals = [s["alloc"][a]["metrics"].get(k) for a in allocs]
            mrows.append([f"{w} {k}"] + ["-" if v is None else f"{v:.1f}" for v in vals] + [""])
    if mrows:
        out.append(("Reported by the workload (RSS from /proc/self/statm, MiB, median)",
                    ["metric"] + allocs + [""], mrows))
    return out


def render_text(tbls):
    lines = []
    for title, header, rows in tbls:
        widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
        lines.append("")
        lines.append(title)
        for r in [header] + rows:
            lines.append("  ".join(str(c).ljust(widths[i]) if i == 0 else str(c).rjust(widths[i])
                                   for i, c in enumerate(r)).rstrip())
    return "\n".join(lines)


def render_markdown(tbls):
    lines = []
    for title, header, rows in tbls:
        lines += ["", f"### {title}", "", "| " + " | ".join(header) + " |",
                  "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def chart(summary, allocs, ref, outdir):
    """SVG via gnuplot: per workload, time ratio and peak-RSS ratio to ours."""
    gnuplot = shutil.which("gnuplot")
    if not gnuplot:
        print("chart: gnuplot not found (Debian: gnuplot-nox), no SVG written")
        return None
    others = [a for a in allocs if a != ref]
    names = list(summary)
    dat = os.path.join(outdir, "ratios.dat")
    with open(dat, "w") as f:
        f.write("# index workload " + " ".join(f"{a}_wall {a}_rss" for a in others) + "\n")
        for i, w in enumerate(names):
            cols = []
            for a in others:
                e = summary[w]["alloc"][a]
                cols += ["NaN" if e[k] is None else f"{e[k]:.4f}" for k in ("wall_ratio", "maxrss_mib_ratio")]
            f.write(f"{i} {w} " + " ".join(cols) + "\n")
    svg = os.path.join(outdir, "ratios.svg")
    width = 0.8 / max(1, len(others))
    xtics = ", ".join(f'"{w}" {i}' for i, w in enumerate(names))
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]
    script = [f'set terminal svg size {max(900, 60 * len(names))},900 dynamic font "sans,10"',
              f'set output "{svg}"', 'set datafile missing "NaN"', "set logscale y 2",
              "set grid ytics", f"set xtics ({xtics}) rotate by -40", f"set xrange [-0.6:{len(names) - 0.4}]",
              "set key outside right top", "set style fill solid 0.8 noborder",
              "set multiplot layout 2,1"]
    for panel, (col, title) in enumerate((("wall", "wall time"), ("rss", "peak RSS"))):
        script.append(f'set title "{title}: allocator / {ref} (above 1: {ref} is better)"')
        script.append(f'set ylabel "{title} ratio"')
        plots = []
        for j, a in enumerate(others):
            c = 3 + 2 * j + (0 if col == "wall" else 1)
            off = (j - (len(others) - 1) / 2) * width
            plots.append(f'"{dat}" using ($1+{off}):{c}:($1+{off - width / 2}):($1+{off + width / 2})'
                         f':(1):{c} with boxxyerror lc rgb "{colors[j % len(colors)]}" title "{a}"')
        plots.append('1 with lines lc rgb "black" lw 1 notitle')
        script.append("plot " + ", ".join(plots))
    script.append("unset multiplot")
    gp = os.path.join(outdir, "ratios.gp")
    with open(gp, "w") as f:
        f.write("\n".join(script) + "\n")
    r = subprocess.run([gnuplot, gp], capture_output=True, text=True)
    if r.returncode != 0:
        print("chart: gnuplot failed:\n" + r.stderr[-2000:])
        return None
    return svg


def find_default(paths):
    return next((p for p in paths if p and os.path.exists(p)), paths[0] if paths else None)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick", help="a few minutes")
    mode.add_argument("--smoke", action="store_const", dest="mode", const="smoke",
                      help="tiny sizes, 1 repetition: only checks that everything runs")
    ap.add_argument("--ours", help="our library (default: build/libsmalloc.so)")
    ap.add_argument("--bin-dir", help="directory with the bench_* programs")
    ap.add_argument("--only", help="regular expression: run only matching workloads")
    ap.add_argument("--reps", type=int, help="repetitions (default: smoke 1, quick 3, full 5)")
    ap.add_argument("--out", default="bench-results", help="output directory (JSON, Markdown, SVG)")
    ap.add_argument("--timeout", type=float, help="seconds before a run counts as hung")
    ap.add_argument("--list", action="store_true", help="list the workloads and exit")
    args = ap.parse_args()
    mode = args.mode or "full"
    reps = args.reps or REPS[mode]
    timeout = args.timeout or TIMEOUT[mode]

    ours = args.ours or find_default([os.path.join(REPO, d, "libsmalloc.so") for d in ("build", "build-bench")])
    bin_dir = args.bin_dir or find_default(
        [os.environ.get("SMALLOC_BENCH_BIN")] +
        [os.path.join(REPO, d, "tests", "bench") for d in ("build", "build-bench")])

    chosen = [w for w in workloads() if not args.only or re.search(args.only, w[0])]
    if args.list:
        for name, argv, sizes, env in chosen:
            print(f"{name:24} {' '.join(argv)}  sizes {sizes}  {env or ''}")
        return 0
    if not chosen:
        print(f"no workload matches {args.only!r}")
        return 2

    allocs, libs, skipped_allocs = [], {}, []
    for name, lib in [(OURS, ours)] + [(n, l) for n, l, _ in PEERS]:
        if lib is not None and not os.path.isfile(lib):
            skipped_allocs.append(name)
            print(f"SKIPPED allocator {name}: library {lib} not found")
            continue
        allocs.append(name)
        libs[name] = lib
    ref = OURS if OURS in allocs else ("glibc" if "glibc" in allocs else allocs[0])
    if ref != OURS:
        print(f"NOTE: {OURS} is missing, so ratios are relative to {ref}")

    runnable, skipped_workloads = [], []
    for name, argv, sizes, env in chosen:
        prog = argv[0] if os.path.isabs(argv[0]) else os.path.join(bin_dir or "", argv[0])
        if not os.access(prog, os.X_OK):
            skipped_workloads.append(name)
            print(f"SKIPPED workload {name}: {prog} not found (not built?)")
            continue
        runnable.append((name, [prog] + [a.replace("{n}", str(sizes[mode])) for a in argv[1:]], env))

    spawn = os.path.join(bin_dir or "", "bench_spawn")
    if not os.access(spawn, os.X_OK):
        print(f"NOTE: {spawn} not found: peak RSS includes the harness's own size (a floor of ~15 MiB)")
        spawn = None

    os.makedirs(args.out, exist_ok=True)
    print(f"mode {mode}, {reps} repetition(s), {len(runnable)} workloads, allocators: "
          + ", ".join(f"{a}={libs[a] or '(no preload)'}" for a in allocs))
    print(f"load average at start: {os.getloadavg()}")
    started = time.time()
    results = {}
    failures = []
    for wi, (name, argv, env) in enumerate(runnable):
        per_alloc = results[name] = {a: [] for a in allocs}
        hung = set()
        for rep in range(reps):
            k = rep % len(allocs)
            for a in allocs[k:] + allocs[:k]:  # rotated each repetition
                if a in hung:
                    continue
                r = run_once(argv, libs[a], child_env(env), timeout, spawn)
                r["rep"] = rep
                per_alloc[a].append(r)
                if r["status"] != "ok":
                    cmd = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
                    cmd += (f" LD_PRELOAD={libs[a]}" if libs[a] else "") + " " + shlex.join(argv)
                    failures.append((name, a, r["status"], cmd.strip(), r["stderr_tail"]))
                    print(f"  !! {name} under {a}: {r['status']}\n     reproduce: {cmd.strip()}")
                    if r["stderr_tail"].strip():
                        print("     stderr: " + r["stderr_tail"].strip().splitlines()[-1][:300])
                    if r["status"].startswith("TIMEOUT"):
                        hung.add(a)  # do not wait for it again
        walls = {a: median_or_none([r["wall"] for r in per_alloc[a] if r["status"] == "ok"]) for a in allocs}
        meds = "  ".join(f"{a} " + ("FAILED" if walls[a] is None else f"{walls[a]:.3f}s") for a in allocs)
        print(f"[{wi + 1}/{len(runnable)}] {name:24} {meds}", flush=True)

    summary, geo = summarise(results, allocs, ref)
    warnings = []  # API promises broken without corrupting data (errno, alignment)
    for w, s in summary.items():
        for a in allocs:
            for p in s["alloc"][a]["problems"]:
                if p.startswith("CHECKSUM"):
                    failures.append((w, a, p, "", ""))
                    print(f"  !! {w} under {a}: {p}")
            warnings += [(w, a, text) for text in s["alloc"][a]["warnings"]]
    elapsed = time.time() - started

    tbls = tables(summary, geo, allocs, ref)
    legend = (f"ours = {ours}; ratios are per repetition, allocator / {ref}, median over "
              f"{reps} repetition(s); above 1 means {ref} is faster or smaller. '!' marks a problem.")
    print(render_text(tbls))
    print("\n" + legend)
    notes = []
    for a in skipped_allocs:
        notes.append(f"allocator {a} SKIPPED (library not found)")
    for w in skipped_workloads:
        notes.append(f"workload {w} SKIPPED (program not built)")
    for w, a, text in warnings:
        notes.append(f"warning: {w} under {a}: {text}" + (" (counts as a failure of ours)" if a == OURS else ""))
    for n in notes:
        print(n)
    print(f"load average at end: {os.getloadavg()}; elapsed {elapsed:.0f}s")

    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    meta = dict(date=stamp, mode=mode, reps=reps, timeout=timeout, ours=ours, reference=ref,
                allocators={a: libs[a] for a in allocs}, skipped_allocators=skipped_allocs,
                skipped_workloads=skipped_workloads, host=platform.node(), kernel=platform.release(),
                cpus=os.cpu_count(), elapsed_s=elapsed,
                workloads={n: dict(argv=a, env=e) for n, a, e in runnable})
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(dict(meta=meta, runs=results, summary=summary, geomean=geo,
                       failures=[dict(workload=w, allocator=a, status=s, reproduce=c, stderr=e)
                                 for w, a, s, c, e in failures],
                       warnings=[dict(workload=w, allocator=a, text=t) for w, a, t in warnings]),
                  f, indent=1)
    svg = chart(summary, allocs, ref, args.out)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(f"## smalloc benchmarks ({mode}, {stamp})\n\n{legend}\n")
        f.write(render_markdown(tbls) + "\n\n")
        for n in notes:
            f.write(f"- {n}\n")
        for w, a, st, c, _ in failures:
            f.write(f"- **{w} under {a}: {st}**" + (f" — `{c}`" if c else "") + "\n")
        if svg:
            f.write(f"\n![ratios]({os.path.basename(svg)})\n")
    print(f"results: {os.path.join(args.out, 'results.md')}, results.json"
          + (f", {os.path.basename(svg)}" if svg else ""))

    # The exit status says whether everything ran correctly, never how fast.
    ours_warnings = [x for x in warnings if x[1] == OURS]
    ran = sum(1 for w in results for a in allocs if results[w][a])
    print(f"{mode}: {len(runnable)} workloads x {len(allocs)} allocators, {ran} combinations ran, "
          f"{len(failures)} failure(s), {len(warnings)} warning(s) ({len(ours_warnings)} of {OURS})")
    if mode == "smoke" and OURS not in allocs:
        print(f"smoke: {OURS} library missing")
        return 1
    return 1 if failures or ours_warnings else 0


if __name__ == "__main__":
    sys.exit(main())
