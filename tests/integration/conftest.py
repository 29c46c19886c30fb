"""Shared fixtures for the integration tests: start a real moongate on a
loopback port with a config written into the test's tmp dir, talk to it over
real sockets, stop it by PID.

Under the sanitizer build (MOONGATE_SANITIZE=1, set by ctest) every gateway's
stderr is checked for ASan/UBSan/LSan reports when it stops, so the same
suite doubles as the sanitizer run.
"""
import json
import os
import pathlib
import signal
import socket
import subprocess
import textwrap
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("MOONGATE_BIN") or str(REPO / "build" / "moongate")
SANITIZE = os.environ.get("MOONGATE_SANITIZE", "0") in ("1", "ON", "TRUE", "true")
# Sanitizer builds are slower: scale waits, never assertions on timings.
SLOW = 3.0 if SANITIZE else 1.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    """One moongate process. `config` is the text of gateway.lua; `files`
    maps relative paths to the text of extra files (handlers, policies)."""

    def __init__(self, tmp, config, files=None, workers=1, args=(), env=None,
                 wait=True):
        self.dir = pathlib.Path(tmp)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.write("gateway.lua", config)
        for name, text in (files or {}).items():
            self.write(name, text)
        self.port = free_port()
        self.stdout_path = self.dir / "stdout.log"
        self.stderr_path = self.dir / "stderr.log"
        e = dict(os.environ)
        e.update(env or {})
        if SANITIZE:
            e.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
            e.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        self.cmd = [BIN, "--port", str(self.port), "--workers", str(workers),
                    *args, str(self.dir / "gateway.lua")]
        self.proc = subprocess.Popen(
            self.cmd, stdout=open(self.stdout_path, "wb"),
            stderr=open(self.stderr_path, "wb"), stdin=subprocess.DEVNULL, env=e)
        self.pid = self.proc.pid
        if wait:
            self.wait_started()

    def write(self, name, text):
        p = self.dir / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
        return p

    def wait_started(self, timeout=10):
        deadline = time.time() + timeout * SLOW
        while time.time() < deadline:
            if "server started" in self.stderr():
                return
            if self.proc.poll() is not None:
                raise RuntimeError("moongate exited %s:\n%s" % (self.proc.returncode, self.stderr()))
            time.sleep(0.02)
        raise RuntimeError("moongate did not start:\n" + self.stderr())

    def stderr(self):
        return self.stderr_path.read_text(errors="replace")

    def stdout(self):
        return self.stdout_path.read_text(errors="replace")

    def error_log(self):
        return [json.loads(l) for l in self.stderr().splitlines() if l.startswith("{")]

    def access_log(self):
        return [json.loads(l) for l in self.stdout().splitlines() if l.startswith("{")]

    def url(self, path="/"):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def connect(self, timeout=5):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout * SLOW)
        return s

    def raw(self, data, timeout=5, shutdown=False):
        """Sends raw bytes, returns everything read until the server closes
        or `timeout` passes with nothing new."""
        s = self.connect(timeout)
        try:
            s.sendall(data)
            if shutdown:
                s.shutdown(socket.SHUT_WR)
            return read_all(s, timeout)
        finally:
            s.close()

    def reload(self):
        os.kill(self.pid, signal.SIGHUP)

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.proc.poll() is None:
            os.kill(self.pid, sig)
            try:
                self.proc.wait(timeout * SLOW)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()
                raise AssertionError("moongate did not stop within %ss" % timeout)
        return self.proc.returncode

    def check_clean(self):
        err = self.stderr()
        for marker in ("AddressSanitizer", "LeakSanitizer", "runtime error:",
                       "UndefinedBehaviorSanitizer"):
            assert marker not in err, "sanitizer report:\n" + err


def read_all(s, timeout=5):
    s.settimeout(timeout * SLOW)
    chunks = []
    while True:
        try:
            b = s.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            break
        if not b:
            break
        chunks.append(b)
    return b"".join(chunks)


def parse_response(data):
    """Splits the first HTTP response off `data`: (status, headers, body, rest).
    Handles Content-Length and chunked bodies. Header names are lower-case."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, "no complete response head in %r" % data[:200]
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers.setdefault(k.strip().lower(), v.strip())
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                _, _, rest = rest.partition(b"\r\n")
                break
            body += rest[:size]
            rest = rest[size + 2:]
        return status, headers, body, rest
    n = int(headers.get("content-length", "0"))
    if status in (204, 304) or 100 <= status < 200:
        n = 0
    return status, headers, rest[:n], rest[n:]


def parse_all(data):
    out = []
    while data:
        st, h, b, data = parse_response(data)
        out.append((st, h, b))
    return out


@pytest.fixture
def gateway(tmp_path):
    """A factory: gateway(config_text, files={...}, workers=1, args=())."""
    started = []

    def start(config, **kw):
        g = Gateway(tmp_path / ("gw%d" % len(started)), config, **kw)
        started.append(g)
        return g

    yield start
    for g in started:
        rc = g.stop()
        g.check_clean()
        if getattr(g, "expect_rc", 0) is not None:
            assert rc == getattr(g, "expect_rc", 0), "exit code %s\n%s" % (rc, g.stderr())


HELLO = """
return {
  listen = "127.0.0.1:8080",
  routes = {
    { "GET", "/hello", function() return 200, { hello = "world" } end },
  },
}
"""


def wait_until(pred, timeout=5, interval=0.02):
    """Polls pred() until it returns something truthy; returns that value,
    or the last (falsy) one after `timeout` seconds (scaled by SLOW)."""
    deadline = time.time() + timeout * SLOW
    while True:
        v = pred()
        if v or time.time() > deadline:
            return v
        time.sleep(interval)


def requests_default_timeout(seconds=10):
    """Gives every `requests` call without a timeout one, so a gateway that
    stops answering fails the test instead of hanging the suite."""
    import requests
    if getattr(requests.Session.request, "_mg_default_timeout", False):
        return
    orig = requests.Session.request

    def request(self, method, url, **kw):
        if kw.get("timeout") is None:
            kw["timeout"] = seconds * SLOW
        return orig(self, method, url, **kw)
    request._mg_default_timeout = True
    requests.Session.request = request
