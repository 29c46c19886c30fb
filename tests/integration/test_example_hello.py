"""examples/hello, run as shipped: the real gateway.lua, only the port (and
the worker count, for a quick start) given on the command line."""
import json
import os
import signal
import socket
import subprocess
import time

import pytest
import requests

from conftest import BIN, REPO, SLOW, free_port, parse_response, requests_default_timeout

requests_default_timeout()

EXAMPLE = REPO / "examples" / "hello" / "gateway.lua"


@pytest.fixture
def hello(tmp_path):
    port = free_port()
    out, err = tmp_path / "stdout.log", tmp_path / "stderr.log"
    env = dict(os.environ)
    env.pop("LISTEN_ADDR", None)
    proc = subprocess.Popen([BIN, "--port", str(port), "--workers", "2", str(EXAMPLE)],
                            stdout=open(out, "wb"), stderr=open(err, "wb"),
                            stdin=subprocess.DEVNULL, env=env)
    deadline = time.time() + 10 * SLOW
    while "server started" not in err.read_text():
        if proc.poll() is not None or time.time() > deadline:
            os.kill(proc.pid, signal.SIGKILL) if proc.poll() is None else None
            proc.wait()
            raise RuntimeError("example did not start:\n" + err.read_text())
        time.sleep(0.02)

    class H:
        pass
    h = H()
    h.port, h.proc = port, proc
    h.url = lambda path: "http://127.0.0.1:%d%s" % (port, path)
    h.stderr = lambda: err.read_text(errors="replace")
    h.stdout = lambda: out.read_text(errors="replace")
    yield h
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15 * SLOW)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            raise AssertionError("example did not stop")
    assert proc.returncode == 0, h.stderr()
    for marker in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
        assert marker not in h.stderr()


def test_example_config_checks_ok():
    p = subprocess.run([BIN, "-t", str(EXAMPLE)], capture_output=True, text=True,
                       timeout=10 * SLOW)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("ok") and "4 routes" in p.stdout


def test_hello(hello):
    r = requests.get(hello.url("/hello"))
    assert r.status_code == 200
    assert r.json() == {"hello": "world"}
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-request-id"]


def test_hello_name(hello):
    r = requests.get(hello.url("/hello/moon"))
    assert r.status_code == 200 and r.json() == {"hello": "moon"}
    r = requests.get(hello.url("/hello/moon?greeting=hi"))
    assert r.json() == {"hi": "moon"}
    r = requests.get(hello.url("/hello/moon?greeting=good%20day"))
    assert r.json() == {"good day": "moon"}


def test_echo(hello):
    payload = {"a": 1, "list": [1, 2], "s": "x"}
    r = requests.post(hello.url("/echo"), json=payload, headers={"X-Request-ID": "echo-1"})
    assert r.status_code == 200
    assert r.json() == {"you_sent": payload, "request_id": "echo-1"}
    assert r.headers["x-request-id"] == "echo-1"
    r = requests.post(hello.url("/echo"), data="not json")
    assert r.status_code == 400
    body = r.json()
    assert list(body) == ["message"]
    assert body["message"].startswith("request body is not JSON: ")
    # Wrong method: 405 with Allow, in the errors policy's shape.
    r = requests.get(hello.url("/echo"))
    assert r.status_code == 405 and "POST" in r.headers["allow"]
    assert r.json() == {"message": "method not allowed"}
    r = requests.get(hello.url("/nope"))
    assert r.status_code == 404 and r.json() == {"message": "not found"}
    # As the README shows: POST /hello -> 405 with "Allow: GET, HEAD".
    r = requests.post(hello.url("/hello"))
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, HEAD"
    assert r.json() == {"message": "method not allowed"}


def test_health(hello):
    r = requests.get(hello.url("/health"))
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_stream(hello):
    s = socket.create_connection(("127.0.0.1", hello.port), timeout=5 * SLOW)
    arrivals = []
    buf = b""
    try:
        t0 = time.monotonic()
        s.sendall(b"GET /stream?n=3&interval=0.4 HTTP/1.1\r\nHost: x\r\n\r\n")
        seen = 0
        while not buf.endswith(b"0\r\n\r\n"):
            b = s.recv(65536)
            if not b:
                break
            buf += b
            n = buf.count(b"data: ")
            while seen < n:
                arrivals.append(time.monotonic() - t0)
                seen += 1
    finally:
        s.close()
    st, h, body, _ = parse_response(buf)
    assert st == 200
    assert h["content-type"] == "text/event-stream"
    assert h["cache-control"] == "no-cache"
    assert h["transfer-encoding"] == "chunked"
    events = [e[len("data: "):] for e in body.decode().split("\n\n") if e]
    assert events == ['{"tick":1}', '{"tick":2}', '{"tick":3}', "[DONE]"]
    assert [json.loads(e)["tick"] for e in events[:3]] == [1, 2, 3]
    # Each event reached the client when written, not all at the end.
    assert len(arrivals) == 4
    assert arrivals[0] < 0.3 * SLOW, arrivals
    assert arrivals[1] - arrivals[0] > 0.25, arrivals
    assert arrivals[2] - arrivals[1] > 0.25, arrivals


def test_stream_default_and_access_log(hello):
    r = requests.get(hello.url("/stream"))
    assert r.status_code == 200
    events = [e for e in r.text.split("\n\n") if e]
    assert len(events) == 6 and events[-1] == "data: [DONE]"
    deadline = time.time() + 3
    while time.time() < deadline and "/stream" not in hello.stdout():
        time.sleep(0.05)
    log = [json.loads(l) for l in hello.stdout().splitlines() if l.startswith("{")]
    e = [x for x in log if x["uri"] == "/stream"][-1]
    assert e["status"] == 200 and e["route"] == "GET /stream"
    assert e["request_id"] == r.headers["x-request-id"]
