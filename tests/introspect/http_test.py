#!/usr/bin/python3
"""The stats endpoint, tested the way a user meets it: a real program (app.py)
runs with libsmalloc preloaded and SMALLOC_STATS_ADDR set, and the test talks
HTTP to it (urllib, and the real curl for the end-to-end case).

    http_test.py --lib build/libsmalloc.so --debug-lib build/libsmalloc-debug.so \
                 --schema introspect/stats.schema.json [unittest args]

Needs Debian's python3-jsonschema. Every answer is validated against the
documented schema.
"""
import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request

import jsonschema

HERE = os.path.dirname(os.path.abspath(__file__))
APP = os.path.join(HERE, "app.py")
PYTHON = "/usr/bin/python3"  # Debian's interpreter: a pyenv shim is a shell script
ARGS = None
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
LISTENING = re.compile(r"serving allocator stats on http://([0-9.]+):(\d+)/stats")


def schema(name):
    with open(ARGS.schema) as f:
        root = json.load(f)
    return {"$ref": f"#/definitions/{name}", "definitions": root["definitions"]}


class App:
    """app.py running in the background with the library preloaded."""

    def __init__(self, rounds, lib=None, addr="127.0.0.1:0", extra=(), env=None, hold=False):
        """hold: after its rounds the program goes on working until release()."""
        self.tmp = tempfile.TemporaryDirectory(prefix="smalloc-http.")
        self.out_path = os.path.join(self.tmp.name, "out")
        self.err_path = os.path.join(self.tmp.name, "err")
        self.stop_path = os.path.join(self.tmp.name, "stop")
        if hold:
            extra = ("--until", self.stop_path, *extra)
        e = dict(os.environ)
        e.pop("LD_PRELOAD", None)
        e["LD_PRELOAD"] = lib or ARGS.lib
        if addr is not None:
            e["SMALLOC_STATS_ADDR"] = addr
        e.update(env or {})
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen([PYTHON, APP, *extra, str(rounds)], env=e, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=err)

    def stderr(self):
        with open(self.err_path, errors="replace") as f:
            return f.read()

    def stdout(self):
        with open(self.out_path, errors="replace") as f:
            return f.read()

    def wait_for(self, pattern, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.stderr() + self.stdout())
            if m:
                return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"never saw {pattern!r}; stderr:\n{self.stderr()}\nstdout tail:\n{self.stdout()[-500:]}")

    def release(self):
        open(self.stop_path, "w").close()

    def port(self):
        return int(self.wait_for(LISTENING).group(2))

    def finish(self, timeout=60):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("the program did not exit: the endpoint kept it alive or it hung")

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.tmp.cleanup()


def plain_output(rounds, extra=()):
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    env.pop("SMALLOC_STATS_ADDR", None)
    return subprocess.run([PYTHON, APP, *extra, str(rounds)], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, check=True, timeout=120).stdout


def get(port, path, method="GET"):
    """(status, content type, body text)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with OPENER.open(req, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


class Routes(unittest.TestCase):
    """Every route, the errors, and the schema, on one running program."""

    @classmethod
    def setUpClass(cls):
        cls.app = App(rounds=100000)
        cls.port = cls.app.port()

    @classmethod
    def tearDownClass(cls):
        cls.app.close()

    def get_json(self, path, status=200, schema_name=None):
        code, ctype, body = get(self.port, path)
        self.assertEqual(code, status, f"{path}: {body[:300]}")
        self.assertTrue(ctype.startswith("application/json"), f"{path}: content type {ctype}")
        doc = json.loads(body)
        if schema_name:
            jsonschema.validate(doc, schema(schema_name))
        return doc, body

    def test_stats_is_the_whole_snapshot_and_validates(self):
        doc, body = self.get_json("/stats", schema_name="stats")
        self.assertEqual(doc["pid"], self.app.proc.pid)
        self.assertEqual(doc["build"], "release")
        self.assertTrue(doc["counters_enabled"])
        lay = doc["layout"]
        # Every class that exists, in order: all the even ones, and the odd
        # ones from 48 bytes (class 11) to 1.5 MiB (class 41).
        self.assertEqual([c["class"] for c in doc["classes"]],
                         [c for c in range(lay["min_class"], lay["max_class"] + 1) if c % 2 == 0 or 11 <= c <= 41])
        t = doc["totals"]
        self.assertGreater(t["allocations"], 0)
        self.assertGreater(t["resident_bytes"], 0)
        self.assertEqual(t["blocks_in_use"], sum(c["in_use"] for c in doc["classes"]))
        self.assertEqual(t["bytes_in_use"], sum(c["in_use"] * c["slot_size"] for c in doc["classes"]))
        for c in doc["classes"]:
            self.assertEqual(c["slot_size"], (2 + c["class"] % 2) << (c["class"] // 2 - 1))
            self.assertLessEqual(c["in_use"], c["touched"])
            self.assertLessEqual(c["touched"], c["capacity"])
            self.assertEqual(c["in_use"], sum(c["slabs"]["in_use"]))
            self.assertEqual(c["allocations"], sum(c["slabs"]["allocations"]))
        self.assertNotRegex(body, r"0x[0-9a-fA-F]{4,}", "a heap address leaked into the output")

    def test_one_class_with_its_64_slabs(self):
        doc, _ = self.get_json("/stats")
        lay = doc["layout"]
        for cls in (c["class"] for c in doc["classes"]):
            one, body = self.get_json(f"/stats?class={cls}", schema_name="class_detail")
            self.assertEqual(one["class"], cls)
            self.assertEqual([s["slab"] for s in one["slabs"]], list(range(64)))
            for s in one["slabs"]:
                self.assertLessEqual(s["in_use"], s["touched"])
                self.assertLessEqual(s["touched"], s["capacity"])
                self.assertLessEqual(s["frees"], s["allocations"])
            self.assertNotRegex(body, r"0x[0-9a-fA-F]{4,}")

    def test_healthz(self):
        self.get_json("/healthz", schema_name="healthz")

    def test_dashboard_is_self_contained_html(self):
        code, ctype, body = get(self.port, "/")
        self.assertEqual(code, 200)
        self.assertTrue(ctype.startswith("text/html"), ctype)
        self.assertIn("<html", body.lower())
        # Offline: nothing fetched from elsewhere.
        self.assertNotRegex(body, r"""(src|href)\s*=\s*["']?(https?:)?//""")
        self.assertNotRegex(body, r"@import|url\(\s*['\"]?https?:")

    def test_unknown_routes_are_404_with_a_json_error(self):
        for path in ("/nope", "/stats/1", "/statsx", "/healthz/x", "/index.html"):
            with self.subTest(path=path):
                self.get_json(path, status=404, schema_name="error")

    def test_bad_parameters_are_400_with_a_json_error(self):
        doc, _ = self.get_json("/stats")
        lay = doc["layout"]
        for query in ("class=abc", "class=", f"class={lay['min_class'] - 1}", f"class={lay['max_class'] + 1}",
                      f"class={lay['min_class'] + 1}", "class=99", "class=-1", "class=5x", "class=1e3", "foo=1", f"class={lay['min_class']}&x=2"):
            with self.subTest(query=query):
                err, _ = self.get_json(f"/stats?{query}", status=400, schema_name="error")
                self.assertTrue(err["error"])

    def test_other_methods_are_refused(self):
        for method in ("POST", "PUT", "DELETE"):
            with self.subTest(method=method):
                code, _, _ = get(self.port, "/stats", method=method)
                self.assertIn(code, (404, 405))

    def test_binds_loopback_only_by_default(self):
        # The kernel's table of the program's sockets: the listener's local address.
        listeners = []
        with open(f"/proc/{self.app.proc.pid}/net/tcp") as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                addr, port = local.split(":")
                if state == "0A" and int(port, 16) == self.port:
                    listeners.append(addr)
        self.assertEqual(listeners, ["0100007F"], "expected one listener, on 127.0.0.1")


class EndToEnd(unittest.TestCase):
    def test_numbers_move_while_the_program_runs_and_its_output_is_unchanged(self):
        rounds = 50
        expected = plain_output(rounds)
        app = App(rounds=rounds, hold=True)  # runs until the curls are done
        try:
            port = app.port()
            seen = []
            for _ in range(5):
                body = subprocess.run(["curl", "-sS", "--fail", "--noproxy", "*", f"http://127.0.0.1:{port}/stats"],
                                      capture_output=True, text=True, check=True, timeout=10).stdout
                doc = json.loads(body)
                jsonschema.validate(doc, schema("stats"))
                seen.append(doc["totals"]["allocations"])
                time.sleep(0.2)
            app.release()
            self.assertEqual(app.finish(), 0, app.stderr())
            self.assertEqual(app.stdout(), expected, "the endpoint changed the program's output")
            self.assertTrue(all(b > a for a, b in zip(seen, seen[1:])), f"allocations did not move: {seen}")
        finally:
            app.close()

    def test_the_c_api_starts_the_endpoint_without_the_environment_variable(self):
        app = App(rounds=100000, addr=None, extra=("--serve",))
        try:
            port = int(app.wait_for(r"port (-?\d+)").group(1))
            self.assertGreater(port, 0, app.stderr())
            code, _, body = get(port, "/healthz")
            self.assertEqual(code, 200, body)
        finally:
            app.close()

    def test_the_debug_build_serves_too(self):
        app = App(rounds=100000, lib=ARGS.debug_lib)
        try:
            port = app.port()
            code, _, body = get(port, "/stats")
            self.assertEqual(code, 200)
            doc = json.loads(body)
            jsonschema.validate(doc, schema("stats"))
            self.assertEqual(doc["build"], "debug")
            self.assertGreater(doc["totals"]["allocations"], 0)
            self.assertNotIn("==smalloc== ERROR", app.stderr())
        finally:
            app.close()

    def test_fork_children_work_and_the_parent_keeps_serving(self):
        rounds = 400
        expected = plain_output(rounds, ("--fork",))
        app = App(rounds=rounds, extra=("--fork",), hold=True)  # still running when asked
        try:
            port = app.port()
            app.wait_for(r"child exit")
            code, _, _ = get(port, "/healthz")
            self.assertEqual(code, 200)
            app.release()
            self.assertEqual(app.finish(), 0, app.stderr())
            self.assertEqual(app.stdout(), expected)
            self.assertIn("child exit 0", expected)
        finally:
            app.close()


class Failures(unittest.TestCase):
    """The program must go on, without the endpoint, and say why on stderr."""

    def run_app(self, addr):
        rounds = 50
        expected = plain_output(rounds)
        app = App(rounds=rounds, addr=addr)
        try:
            self.assertEqual(app.finish(), 0, app.stderr())
            self.assertEqual(app.stdout(), expected)
            return app.stderr()
        finally:
            app.close()

    def test_port_in_use(self):
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            err = self.run_app(f"127.0.0.1:{port}")
        self.assertRegex(err, rf"\[error\].*cannot serve stats on 127\.0\.0\.1:{port}")

    def test_bad_addresses(self):
        for addr in ("localhost:notaport", "127.0.0.1:99999", "nonsense", "300.1.2.3:8080"):
            with self.subTest(addr=addr):
                err = self.run_app(addr)
                self.assertRegex(err, r"\[error\].*(bad SMALLOC_STATS_ADDR|cannot serve stats)")


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--lib", required=True)
    p.add_argument("--debug-lib", required=True)
    p.add_argument("--schema", required=True)
    ARGS, rest = p.parse_known_args()
    unittest.main(argv=[sys.argv[0], *rest], verbosity=2)


if __name__ == "__main__":
    main()
