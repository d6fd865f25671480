"""Naive client loops against the real binary (issue 17): httpx-sse's `connect_sse`, with
`json.loads(sse.data)` on every item it yields, as Python users write it. A stream must never
make httpx-sse yield an item without data: not at the start (a lone `retry:` block), not between
events (a heartbeat after an `id:`, since httpx-sse keeps the last id and dispatches on any blank
line), and not at the end of a stream cut by SIGTERM.

Runs the binary from SSE_BFF_BIN (default target/debug/sse-bff): `upstream-sim` once, and a
`serve` per test. Run with `python tests/python/test_naive_clients.py`; the last line says
"python: N passed, N failed".
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import uuid
from pathlib import Path

import httpx
from httpx_sse import connect_sse

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("SSE_BFF_BIN", str(ROOT / "target" / "debug" / "sse-bff"))
# The longest any single wait may take before the test fails instead of hanging.
PATIENCE = 10.0
# doc-1 takes 0.8 s and doc-2 1.5 s at this speed; their updates are 75 to 190 ms apart.
SPEED = "8"
# Shorter than any gap between updates, so heartbeats go out between events.
HEARTBEAT = "50ms"

sim = None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A child process of the binary, its output in a file for when a test fails."""

    def __init__(self, *args):
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([BIN, *args], stdout=self.log, stderr=subprocess.STDOUT)

    def output(self):
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]

    def wait_for_port(self, port):
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.proc.args} exited early:\n{self.output()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.02)
        raise AssertionError(f"nothing listens on {port} after {PATIENCE}s:\n{self.output()}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=PATIENCE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=PATIENCE)
        self.log.close()


def setUpModule():
    global sim
    port = free_port()
    fixtures = str(ROOT / "fixtures" / "jobs")
    sim = Process("upstream-sim", "--listen", f"127.0.0.1:{port}", "--fixtures", fixtures, "--speed", SPEED)
    sim.port = port
    try:
        sim.wait_for_port(port)
    except BaseException:
        sim.stop()
        raise


def tearDownModule():
    sim.stop()


def fresh(base):
    """A brand-new job playing the script `base`."""
    return f"{base}.{uuid.uuid4().hex}"


def read(client, url, headers=None, until=None):
    """Every item httpx-sse yields, parsed as a naive loop does; stops early when `until` holds."""
    items = []
    with connect_sse(client, "GET", url, headers=headers or {}) as source:
        assert source.response.status_code == 200, f"{url}: HTTP {source.response.status_code}"
        for sse in source.iter_sse():
            seen = [(item.id, item.event) for item, _ in items]
            assert sse.data != "", f"httpx-sse yielded an item without data: {sse!r}, after {seen}"
            items.append((sse, json.loads(sse.data)))
            if until and until(sse):
                break
    return items


def ids(items):
    return [int(sse.id) for sse, _ in items]


def assert_increasing(values):
    assert all(a < b for a, b in zip(values, values[1:])), f"ids must increase: {values}"


class NaiveClientLoops(unittest.TestCase):
    def setUp(self):
        port = free_port()
        upstream = f"http://127.0.0.1:{sim.port}"
        args = ["serve", "--listen", f"127.0.0.1:{port}", "--upstream", upstream, "--insecure-no-auth"]
        self.bff = Process(*args, "--heartbeat", HEARTBEAT)
        self.addCleanup(self.bff.stop)
        self.bff.wait_for_port(port)
        self.base = f"http://127.0.0.1:{port}"
        self.client = httpx.Client(timeout=PATIENCE, trust_env=False)
        self.addCleanup(self.client.close)

    def url(self, document):
        return f"{self.base}/documents/{document}/progress"

    def test_a_whole_job_parses_item_by_item(self):
        items = read(self.client, self.url(fresh("doc-1")))
        assert_increasing(ids(items))
        last, data = items[-1]
        self.assertEqual((last.event, data["status"]), ("completed", "completed"), "ends with the terminal event")
        self.assertGreater(len(items), 1, "live updates followed the first one")

    def test_a_resume_with_last_event_id_parses_item_by_item(self):
        document = fresh("doc-2")
        first = read(self.client, self.url(document), until=lambda sse: int(sse.id) >= 3)
        last = ids(first)[-1]
        rest = read(self.client, self.url(document), headers={"Last-Event-ID": str(last)})
        self.assertEqual(ids(rest)[0], last + 1, "the resume continues right after the last id")
        assert_increasing(ids(first) + ids(rest))
        self.assertEqual(rest[-1][0].event, "completed", "ends with the terminal event")

    def test_a_stream_cut_by_sigterm_parses_item_by_item(self):
        items = []
        with connect_sse(self.client, "GET", self.url(fresh("doc-2"))) as source:
            self.assertEqual(source.response.status_code, 200)
            for sse in source.iter_sse():
                self.assertNotEqual(sse.data, "", f"httpx-sse yielded an item without data: {sse!r}")
                items.append((sse, json.loads(sse.data)))
                if len(items) == 2:
                    self.bff.proc.send_signal(signal.SIGTERM)
        self.assertGreaterEqual(len(items), 2)
        assert_increasing(ids(items))
        self.assertNotIn("completed", [sse.event for sse, _ in items], "the job was still running")
        self.bff.proc.wait(timeout=PATIENCE)

    def test_heartbeats_come_between_events_in_this_setup(self):
        # Not a client check: it shows the tests above ran with heartbeats after an `id:` line.
        with self.client.stream("GET", self.url(fresh("doc-2"))) as response:
            lines = list(response.iter_lines())
        first_id = next(i for i, line in enumerate(lines) if line.startswith("id:"))
        comments = [line for line in lines[first_id:] if line.startswith(":")]
        self.assertTrue(comments, f"no heartbeat between events: {lines}")


if __name__ == "__main__":
    suite = unittest.defaultTestLoader.loadTestsFromModule(sys.modules[__name__])
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    failed = len(result.failures) + len(result.errors)
    passed = result.testsRun - failed - len(result.skipped)
    print(f"python: {passed} passed, {failed} failed")
    sys.exit(0 if result.wasSuccessful() else 1)
