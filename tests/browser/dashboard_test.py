#!/usr/bin/env python3
"""Browser test of smalloc's live dashboard (web/index.html served at "/").

Run it against any server that serves the dashboard at URL and the stats JSON
at URL + "stats":

    python3 tests/browser/dashboard_test.py --url http://127.0.0.1:PORT/ --screenshot dashboard.png

For CTest, start the real endpoint first (or use the mock during development:
    python3 tests/browser/mock_stats_server.py PORT &
) and register exactly that command line. Exit status 0 = pass, 1 = a check
failed, 2 = the environment is broken (no chromium/chromedriver, server down).
Optional: --chromium PATH (default /usr/bin/chromium), --chromedriver PATH
(default /usr/bin/chromedriver). Needs Debian's `chromium` and
`chromium-driver` packages; Python 3 standard library only.

What it checks, all with bounded waits (the whole run is capped at 55 s):
  1. the page loads and draws the heatmap: the number of `.cell` elements equals
     the number of classes URL/stats lists times layout.slabs_per_class, and
     every (data-class, data-slab) pair occurs exactly once;
  2. the page shows the pid and build from the JSON, and no error state;
  3. the `#updates` counter increases over ~3 s (the page polls live);
  4. when the numbers behind the page change between two fetches of /stats, the
     page changes too: the header/totals text always (uptime, counters), and the
     tooltip of every cell whose cumulative counters moved;
  5. writes a PNG screenshot to --screenshot (also on failure, when possible).
It drives headless Chromium through chromedriver with the W3C WebDriver HTTP
protocol (urllib), always deletes the session and stops chromedriver.
"""
import argparse
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HARD_LIMIT_S = 55
# Never send loopback traffic through an http_proxy from the environment.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Failure(Exception):
    """A check of the page failed (exit 1)."""


class Broken(Exception):
    """The test could not run: missing binaries, server not answering (exit 2)."""


def http(method, url, body=None, timeout=10):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with OPENER.open(req, timeout=timeout) as r:
            raw = r.read()
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            msg = json.loads(raw)["value"]
            msg = f'{msg.get("error")}: {msg.get("message", "").splitlines()[0]}'
        except Exception:
            msg = raw[:300]
        raise Broken(f"{method} {url} -> HTTP {e.code}: {msg}") from None
    return json.loads(raw) if raw else None


def fetch_stats(url):
    try:
        return http("GET", url + "stats", timeout=5)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise Broken(f"cannot fetch {url}stats: {e}") from None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebDriver:
    def __init__(self, chromedriver, chromium, workdir):
        for path in (chromedriver, chromium):
            if not os.access(path, os.X_OK):
                raise Broken(f"{path} not found; install it: apt-get install -y chromium chromium-driver")
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.log = open(os.path.join(workdir, "chromedriver.log"), "w+")
        self.proc = subprocess.Popen([chromedriver, f"--port={port}"], stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.session = None
        deadline = time.monotonic() + 10
        while True:
            try:
                if http("GET", self.base + "/status", timeout=2)["value"].get("ready"):
                    break
            except (Broken, urllib.error.URLError, OSError, ValueError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise Broken(f"chromedriver did not become ready:\n{self.log_tail()}")
            time.sleep(0.1)
        args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                f"--user-data-dir={os.path.join(workdir, 'profile')}", "--window-size=1400,900"]
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome", "pageLoadStrategy": "normal",
            "timeouts": {"pageLoad": 15000, "script": 5000},
            "goog:chromeOptions": {"binary": chromium, "args": args}}}}
        self.session = http("POST", self.base + "/session", caps, timeout=30)["value"]["sessionId"]

    def log_tail(self):
        self.log.flush()
        self.log.seek(0)
        return "".join(self.log.readlines()[-15:])

    def cmd(self, method, path, body=None, timeout=20):
        return http(method, f"{self.base}/session/{self.session}{path}", body, timeout)["value"]

    def js(self, script, *args):
        return self.cmd("POST", "/execute/sync", {"script": script, "args": list(args)})

    def screenshot(self, path):
        png = base64.b64decode(self.cmd("GET", "/screenshot"))
        with open(path, "wb") as f:
            f.write(png)
        return len(png)

    def quit(self):
        try:
            if self.session:
                http("DELETE", f"{self.base}/session/{self.session}", timeout=10)
        except Exception as e:  # still stop chromedriver below
            print(f"warning: could not delete session: {e}", file=sys.stderr)
        finally:
            self.session = None
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=5)
            self.log.close()


def wait_for(what, fn, timeout):
    """Poll fn() every 100 ms until it returns something truthy; bounded."""
    deadline, value = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.1)
    raise Failure(f"timed out after {timeout:.0f} s waiting for {what} (last value: {value!r})")


# Everything the test looks at on the page, in one round trip.
SNAPSHOT_JS = """
const cells = Array.from(document.querySelectorAll('.cell'));
const u = document.getElementById('updates');
const st = document.getElementById('status');
return {
  updates: u ? parseInt(u.textContent, 10) : null,
  status: st ? st.className + ' ' + st.textContent.replace(/\\s+/g, ' ') : null,
  header: (document.querySelector('header') || document.body).innerText + '\\n' +
          (document.getElementById('cards') || document.body).innerText,
  cells: cells.map(c => [c.dataset.class, c.dataset.slab, c.title, getComputedStyle(c).backgroundColor]),
};
"""


def snapshot(wd):
    return wd.js(SNAPSHOT_JS)


def counter(wd):
    return wd.js("const u = document.getElementById('updates'); return u ? parseInt(u.textContent, 10) : null;")


def run(args, wd, stats0):
    layout = stats0["layout"]
    classes = [c["class"] for c in stats0["classes"]]
    nslabs = layout.get("slabs_per_class", 64)
    expected = len(classes) * nslabs
    print(f"/stats: {len(classes)} classes ({layout['min_class']}..{layout['max_class']}) x {nslabs} slabs "
          f"-> expect {expected} cells")

    wd.cmd("POST", "/url", {"url": args.url})
    title = wd.cmd("GET", "/title")
    print(f"loaded {args.url} (title {title!r})")

    # 1. The heatmap is drawn with exactly one cell per (class, slab).
    wait_for(f"{expected} .cell elements",
             lambda: wd.js("return document.querySelectorAll('.cell').length;") == expected, 15)
    wait_for("#updates >= 1", lambda: (counter(wd) or 0) >= 1, 10)
    a = snapshot(wd)
    if len(a["cells"]) != expected:
        raise Failure(f"heatmap has {len(a['cells'])} .cell elements, expected {expected}")
    pairs = {(c[0], c[1]) for c in a["cells"]}
    want = {(str(k), str(s)) for k in classes for s in range(nslabs)}
    if pairs != want:
        missing = sorted(want - pairs)[:5]
        raise Failure(f"cells' (data-class, data-slab) pairs do not cover the layout exactly once; missing e.g. {missing}")
    if any(not c[2] for c in a["cells"]):
        raise Failure("some cells have no tooltip (title)")
    print(f"ok: {expected} cells, one per (class, slab), all with tooltips")

    # 2. The data is bound and the page is not in its error state.
    if str(stats0["pid"]) not in a["header"] or str(stats0["build"]) not in a["header"]:
        raise Failure(f"header does not show pid {stats0['pid']} / build {stats0['build']!r}: {a['header'][:300]!r}")
    if "error" in (a["status"] or "") or "disconnected" in (a["status"] or ""):
        raise Failure(f"page is in its error state: {a['status']!r}")
    print(f"ok: header shows pid {stats0['pid']} and build {stats0['build']!r}; status {a['status'].strip()!r}")

    # 3./4. Live updates. Page snapshot A is taken *before* JSON A, and page
    # snapshot B *after* the page has completed a poll started after JSON B, so
    # the page's data brackets the two fetches. Cumulative counters only grow,
    # so any counter that moved between JSON A and JSON B must show in B.
    json_a = fetch_stats(args.url)
    t0 = time.monotonic()
    time.sleep(3)
    json_b = fetch_stats(args.url)
    u_mid = counter(wd)
    wait_for("two more polls after the second /stats fetch", lambda: (counter(wd) or 0) >= u_mid + 2, 8)
    b = snapshot(wd)
    elapsed = time.monotonic() - t0
    if not b["updates"] > a["updates"]:
        raise Failure(f"#updates did not increase: {a['updates']} -> {b['updates']} in {elapsed:.1f} s")
    print(f"ok: #updates {a['updates']} -> {b['updates']} in {elapsed:.1f} s")

    data_changed = json.dumps({k: v for k, v in json_a.items()}, sort_keys=True) != \
        json.dumps({k: v for k, v in json_b.items()}, sort_keys=True)
    if data_changed and a["header"] == b["header"] and a["cells"] == b["cells"]:
        raise Failure("/stats changed but neither the totals/header text nor any cell changed on the page")
    moved = []
    for ca, cb in zip(json_a["classes"], json_b["classes"]):
        for s in range(nslabs):
            if any(ca["slabs"][k][s] != cb["slabs"][k][s] for k in ("allocations", "frees")):
                moved.append((str(ca["class"]), str(s)))
    if moved:
        tip_a = {(c[0], c[1]): (c[2], c[3]) for c in a["cells"]}
        tip_b = {(c[0], c[1]): (c[2], c[3]) for c in b["cells"]}
        stuck = [m for m in moved if tip_a[m] == tip_b[m]]
        if stuck:
            raise Failure(f"{len(stuck)} of {len(moved)} cells whose counters changed in /stats kept the same "
                          f"tooltip and colour, e.g. class {stuck[0][0]} slab {stuck[0][1]}: {tip_b[stuck[0]][0]!r}")
    changed_cells = sum(1 for x, y in zip(a["cells"], b["cells"]) if x != y)
    print(f"ok: page followed the data: header text {'changed' if a['header'] != b['header'] else 'unchanged'}, "
          f"{changed_cells} cells changed tooltip/colour, {len(moved)} (class, slab) counters moved in /stats"
          + ("" if data_changed else " (the data did not change; nothing to compare)"))

    b = snapshot(wd)
    if "error" in (b["status"] or ""):
        raise Failure(f"page entered its error state during the test: {b['status']!r}")


def main():
    ap = argparse.ArgumentParser(description="Browser test of the smalloc dashboard.")
    ap.add_argument("--url", required=True, help="dashboard URL, e.g. http://127.0.0.1:PORT/")
    ap.add_argument("--screenshot", help="write a PNG screenshot here")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    args = ap.parse_args()
    if not args.url.endswith("/"):
        args.url += "/"

    def on_alarm(signum, frame):
        raise Failure(f"test exceeded its {HARD_LIMIT_S} s limit")
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(HARD_LIMIT_S)

    started = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="smalloc-dashboard-")
    wd, status = None, 0
    try:
        stats0 = fetch_stats(args.url)
        wd = WebDriver(args.chromedriver, args.chromium, workdir)
        run(args, wd, stats0)
        if args.screenshot:
            print(f"ok: screenshot {args.screenshot} ({wd.screenshot(args.screenshot)} bytes)")
        print(f"PASS ({time.monotonic() - started:.1f} s)")
    except (Failure, Broken) as e:
        status = 1 if isinstance(e, Failure) else 2
        print(f"FAIL: {e}", file=sys.stderr)
        if wd and wd.session and args.screenshot:
            try:
                signal.alarm(10)
                wd.screenshot(args.screenshot)
                print(f"(screenshot of the failing page: {args.screenshot})", file=sys.stderr)
            except Exception:
                pass
        if wd and status == 2:
            print(f"chromedriver log tail:\n{wd.log_tail()}", file=sys.stderr)
    except Exception as e:
        status = 2
        print(f"FAIL: unexpected {type(e).__name__}: {e}", file=sys.stderr)
    finally:
        signal.alarm(15)  # bound the cleanup too
        try:
            if wd:
                wd.quit()
        finally:
            signal.alarm(0)
            shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
