#!/usr/bin/python3
"""Load on the stats endpoint while the program allocates flat out.

    load_test.py --lib build/libsmalloc.so [--rounds N] [--requests 2000]
                 [--clients 16] [--keep-alive]

1. Baseline: app.py ROUNDS with the library preloaded and no endpoint, timed.
2. Under load: the same with SMALLOC_STATS_ADDR=127.0.0.1:0; as soon as the
   endpoint is up, CLIENTS threads (http.client, never a proxy) share REQUESTS
   GETs of /stats, /stats?class=N and /healthz (2:1:1), each timed from
   connect to the last byte of the body.
3. Baseline again (the two baselines bracket the loaded run on a noisy machine).

Fails (exit 1) on any error — a status other than 200, an exception, a body
that is not the expected JSON — on a non-zero exit of the program, on output
that differs from the baseline's, on an "[error]" line on its stderr, and if
the program exits before the load is over (raise --rounds). Nothing is
asserted on time; printed are the latencies (p50/p90/p99/max, and the
connect part: a SYN dropped by a full listen queue costs a 1 s retransmit),
requests/s, and the program's slowdown two ways: its whole wall time under
load / the baselines' mean, and its progress (rounds/s, from its output) while
the load ran / the baseline rate. On a 2-core machine the clients' own CPU
counts in the slowdown, so their CPU time and the program's (user+sys, which
includes the endpoint's threads) are printed as well.

ctest: introspect.load (tests/introspect/CMakeLists.txt).

Python standard library only.
"""
import argparse
import http.client
import json
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
APP = os.path.join(HERE, "app.py")
PYTHON = "/usr/bin/python3"  # Debian's interpreter: a pyenv shim is a shell script
LISTENING = re.compile(r"serving allocator stats on http://127\.0\.0\.1:(\d+)/stats")


class Run:
    """app.py in the background; a thread reaps it with wait4 (wall and CPU time)."""

    def __init__(self, lib, rounds, addr, workdir, tag):
        env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "SMALLOC_STATS_ADDR")}
        env["LD_PRELOAD"] = lib
        if addr:
            env["SMALLOC_STATS_ADDR"] = addr
        self.out_path = os.path.join(workdir, tag + ".out")
        self.err_path = os.path.join(workdir, tag + ".err")
        self.done = threading.Event()
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.t0 = time.perf_counter()
            self.proc = subprocess.Popen([PYTHON, APP, str(rounds)], env=env, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=err)
        threading.Thread(target=self._reap, daemon=True).start()

    def _reap(self):
        _, status, ru = os.wait4(self.proc.pid, 0)
        self.t1 = time.perf_counter()
        self.proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait again
        self.cpu = ru.ru_utime + ru.ru_stime
        self.done.set()

    def wall(self):
        return self.t1 - self.t0

    def stdout(self):
        with open(self.out_path, errors="replace") as f:
            return f.read()

    def rounds_done(self):
        return self.stdout().count("\n")

    def stderr(self):
        with open(self.err_path, errors="replace") as f:
            return f.read()

    def port(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = LISTENING.search(self.stderr())
            if m:
                return int(m.group(1))
            if self.done.is_set():
                break
            time.sleep(0.005)
        return None

    def finish(self, timeout):
        if not self.done.wait(timeout):
            self.proc.kill()
            self.done.wait(10)
            return False
        return True


def fetch(conn_box, port, path, keep_alive):
    """One GET; (status, content type, body, seconds to the last byte, of which connecting)."""
    t0 = time.perf_counter()
    conn = conn_box[0]
    connect = 0.0
    try:
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.connect()
            connect = time.perf_counter() - t0
        conn.request("GET", path, headers={} if keep_alive else {"Connection": "close"})
        resp = conn.getresponse()
        body = resp.read()
        elapsed = time.perf_counter() - t0
        reuse = keep_alive and not resp.will_close
    except BaseException:
        if conn is not None:
            conn.close()
        conn_box[0] = None
        raise
    if reuse:
        conn_box[0] = conn
    else:
        conn.close()
        conn_box[0] = None
    return resp.status, resp.getheader("Content-Type", ""), body, elapsed, connect


def check(path, status, ctype, body, expect_class):
    """None if the answer is right, else what is wrong."""
    if status != 200:
        return f"status {status}: {body[:200]!r}"
    if not ctype.startswith("application/json"):
        return f"content type {ctype!r}"
    try:
        doc = json.loads(body)
    except ValueError as e:
        return f"invalid JSON ({e}): {body[:200]!r}"
    if path == "/healthz":
        return None if doc.get("status") == "ok" else f"healthz said {doc!r:.200}"
    if expect_class is not None:
        return None if doc.get("class") == expect_class and len(doc.get("slabs", ())) == 64 else \
            f"wrong class detail: {body[:200]!r}"
    if not doc.get("classes") or doc.get("totals", {}).get("allocations", 0) <= 0:
        return f"stats without classes or allocations: {body[:200]!r}"
    return None


def listen_overflows():
    """The kernel's count of connections dropped because a listen queue was full
    (TcpExt ListenOverflows, this network namespace), or None."""
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
        for names, values in zip(lines[::2], lines[1::2]):
            if names.startswith("TcpExt:"):
                return int(dict(zip(names.split(), values.split()))["ListenOverflows"])
    except (OSError, KeyError, ValueError):
        pass
    return None


def percentile(sorted_xs, q):
    """Nearest-rank percentile of an ascending list."""
    if not sorted_xs:
        return float("nan")
    return sorted_xs[max(0, min(len(sorted_xs) - 1, math.ceil(q / 100.0 * len(sorted_xs)) - 1))]


def load(port, requests, clients, keep_alive, classes):
    """Fire the requests; returns (latencies in s, connect times in s, errors, seconds, requests sent)."""
    plan = []
    for i in range(requests):
        kind = i % 4
        if kind in (0, 2):
            plan.append(("/stats", None))
        elif kind == 1:
            cls = classes[(i // 4) % len(classes)]
            plan.append((f"/stats?class={cls}", cls))
        else:
            plan.append(("/healthz", None))
    lock = threading.Lock()
    next_index = [0]
    latencies, errors, connects = [], [], []
    start = threading.Barrier(clients + 1)

    def client():
        box = [None]
        start.wait()
        while True:
            with lock:
                i = next_index[0]
                next_index[0] += 1
            if i >= len(plan):
                break
            path, cls = plan[i]
            try:
                status, ctype, body, elapsed, connect = fetch(box, port, path, keep_alive)
                problem = check(path, status, ctype, body, cls)
            except Exception as e:  # refused, reset, timeout, bad status line ...
                elapsed, problem = None, f"{type(e).__name__}: {e}"
            with lock:
                if elapsed is not None:
                    latencies.append(elapsed)
                    connects.append(connect)
                if problem:
                    errors.append((time.perf_counter(), f"{path}: {problem}"))
        if box[0] is not None:
            box[0].close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return sorted(latencies), sorted(connects), errors, time.perf_counter() - t0, min(next_index[0], len(plan))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lib", required=True, help="libsmalloc.so")
    p.add_argument("--rounds", type=int, default=6000,
                   help="app.py rounds (default 6000: ~5 s on the 2-core reference machine, about"
                        " twice as long as the load takes there)")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--keep-alive", action="store_true",
                   help="each client reuses its connection (default: one connection per request)")
    p.add_argument("--timeout", type=float, default=200, help="seconds the program may take under load")
    args = p.parse_args()
    lib = os.path.abspath(args.lib)
    failures = []

    with tempfile.TemporaryDirectory(prefix="smalloc-load.") as work:
        def baseline(tag):
            run = Run(lib, args.rounds, None, work, tag)
            if not run.finish(args.timeout):
                failures.append(f"{tag}: the program did not finish in {args.timeout} s")
            elif run.proc.returncode != 0:
                failures.append(f"{tag}: exit status {run.proc.returncode}\n{run.stderr()[-2000:]}")
            elif not run.stdout().endswith("done\n"):
                failures.append(f"{tag}: output does not end with 'done'")
            return run

        base1 = baseline("baseline-before")

        app = Run(lib, args.rounds, "127.0.0.1:0", work, "load")
        port = app.port()
        latencies, connects, errors, load_secs, attempted, app_alive_after = [], [], [], 0.0, 0, False
        client_cpu = None
        overflows = None  # listen-queue overflows during the load
        rounds_at = []  # rounds the program had printed when the load started and ended
        if port is None:
            failures.append("the endpoint never announced its port; stderr:\n" + app.stderr()[-2000:])
        else:
            # The classes, from one request not counted in the load.
            try:
                status, _, body, _, _ = fetch([None], port, "/stats", False)
                classes = [c["class"] for c in json.loads(body)["classes"]] if status == 200 else None
            except Exception as e:
                status, classes = f"{type(e).__name__}: {e}", None
            if not classes:
                failures.append(f"the first /stats failed: {status}")
            else:
                rounds_at.append(app.rounds_done())
                overflows_before = listen_overflows()
                client_cpu0 = resource.getrusage(resource.RUSAGE_SELF)
                latencies, connects, errors, load_secs, attempted = load(
                    port, args.requests, args.clients, args.keep_alive, classes)
                rounds_at.append(app.rounds_done())
                overflows_after = listen_overflows()
                client_cpu1 = resource.getrusage(resource.RUSAGE_SELF)
                client_cpu = (client_cpu1.ru_utime + client_cpu1.ru_stime
                              - client_cpu0.ru_utime - client_cpu0.ru_stime)
                if overflows_before is not None and overflows_after is not None:
                    overflows = overflows_after - overflows_before
                app_alive_after = not app.done.is_set()
                if attempted != args.requests:
                    failures.append(f"only {attempted} of {args.requests} requests were sent")
        if not app.finish(args.timeout):
            failures.append(f"under load: the program did not finish in {args.timeout} s")
        base2 = baseline("baseline-after")

        expected = base1.stdout()
        if app.done.is_set():
            if app.proc.returncode != 0:
                failures.append(f"under load: exit status {app.proc.returncode}\n{app.stderr()[-2000:]}")
            if app.stdout() != expected:
                failures.append("under load: the program's output differs from the baseline's")
        if base2.stdout() != expected:
            failures.append("the two baselines printed different output")
        bad_lines = [line for line in app.stderr().splitlines() if "[error]" in line or "==smalloc==" in line]
        if bad_lines:
            failures.append("under load, on stderr:\n  " + "\n  ".join(bad_lines[:10]))
        if attempted and not app_alive_after:
            failures.append(f"the program finished before the load did: raise --rounds (now {args.rounds})")
        if errors:
            exited = app.t1 if app.done.is_set() else float("inf")
            during = [e for t, e in errors if t < exited]
            after = len(errors) - len(during)
            shown = "\n  ".join(during[:10])
            failures.append(f"{len(errors)} request error(s), {len(during)} while the program ran"
                            f" ({after} after it exited), the first ones:\n  {shown}")

        ms = [x * 1000 for x in latencies]
        walls = [r.wall() for r in (base1, base2) if r.done.is_set()]
        cpus = [r.cpu for r in (base1, base2) if r.done.is_set()]
        base_wall = statistics.mean(walls) if walls else float("nan")
        base_cpu = statistics.mean(cpus) if cpus else float("nan")
        app_wall = app.wall() if app.done.is_set() else float("nan")
        app_cpu = app.cpu if app.done.is_set() else float("nan")
        mode = "keep-alive" if args.keep_alive else "one connection per request"
        print(f"stats endpoint under load: {args.requests} requests from {args.clients} clients ({mode}),"
              f" app.py {args.rounds} rounds, load average {os.getloadavg()[0]:.1f}")
        print(f"  requests            {attempted} sent, {len(ms)} answered")
        print(f"  errors              {len(errors)}")
        if ms:
            print(f"  latency ms          p50 {percentile(ms, 50):.2f}  p90 {percentile(ms, 90):.2f}"
                  f"  p99 {percentile(ms, 99):.2f}  max {ms[-1]:.2f}  (mean {statistics.mean(ms):.2f})")
            if connects:
                slow = sum(1 for c in connects if c > 0.9)
                print(f"  connect ms          p50 {percentile([c * 1000 for c in connects], 50):.2f}"
                      f"  max {connects[-1] * 1000:.2f}  ({slow} took > 0.9 s, i.e. a SYN was retransmitted;"
                      f" listen-queue overflows: {'?' if overflows is None else overflows})")
            print(f"  throughput          {len(ms) / load_secs:.0f} requests/s over {load_secs:.2f} s"
                  f" (the clients used {client_cpu:.2f} s of CPU)")
        print(f"  app wall, baseline  {base_wall:.2f} s  ("
              + " / ".join(f"{w:.2f}" for w in walls) + " before / after)")
        print(f"  app wall, loaded    {app_wall:.2f} s  (load covered {load_secs / app_wall * 100:.0f}% of it)"
              if app_wall == app_wall and app_wall > 0 else f"  app wall, loaded    {app_wall:.2f} s")
        print(f"  slowdown (wall)     x{app_wall / base_wall:.2f}  (whole run, loaded / baseline)")
        if len(rounds_at) == 2 and load_secs > 0 and rounds_at[1] > rounds_at[0]:
            rate = (rounds_at[1] - rounds_at[0]) / load_secs
            base_rate = args.rounds / base_wall
            print(f"  slowdown (progress) x{base_rate / rate:.2f}  (during the load: {rate:.0f} rounds/s,"
                  f" baseline {base_rate:.0f} rounds/s)")
        print(f"  app CPU user+sys    baseline {base_cpu:.2f} s, loaded {app_cpu:.2f} s"
              f" (x{app_cpu / base_cpu:.2f}; includes the endpoint's threads)")

    if failures:
        print("FAIL")
        for f in failures:
            print("  - " + f)
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
