"""Upstreams against a real, misbehaving upstream process
(tests/integration/upstream_server.py): req:proxy / route proxy shorthand,
failures, retries, balancing, passive health, streaming, keep-alive reuse
and req:fetch. Every upstream is its own Python process on a free loopback
port, started and stopped by PID; a "dead" target is a free port nobody
listens on."""
import http.client
import json
import os
import pathlib
import re
import select
import signal
import socket
import subprocess
import threading
import time

import pytest
import requests

from conftest import SLOW, free_port, parse_response, wait_until, requests_default_timeout

requests_default_timeout()

SERVER = pathlib.Path(__file__).resolve().with_name("upstream_server.py")
PYTHON = "/usr/bin/python3"
TRACEPARENT_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


# ---------------------------------------------------------------- fixtures --

class Upstream:
    """One upstream_server.py process."""

    def __init__(self, tmp, port=0, args=()):
        self.log = open(pathlib.Path(tmp) / ("upstream-%d.err" % time.monotonic_ns()), "wb")
        self.proc = subprocess.Popen([PYTHON, str(SERVER), "--port", str(port), *args],
                                     stdout=subprocess.PIPE, stderr=self.log,
                                     stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        r, _, _ = select.select([self.proc.stdout], [], [], 10 * SLOW)
        line = self.proc.stdout.readline().decode() if r else ""
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError("upstream server did not start: %r" % line)
        self.port = int(line.split()[1])
        self.url = "http://127.0.0.1:%d" % self.port

    def stats(self):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            c.request("GET", "/_stats", headers={"Connection": "close"})
            return json.loads(c.getresponse().read())
        finally:
            c.close()

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc.stdout.close()
        self.log.close()


@pytest.fixture
def upstream(tmp_path):
    """A factory: upstream(port=0) -> Upstream (started, stopped at teardown)."""
    started = []

    def start(port=0, args=()):
        u = Upstream(tmp_path, port, args)
        started.append(u)
        return u

    yield start
    for u in started:
        u.stop()


def dead_url():
    """A loopback URL nothing listens on: connection refused."""
    return "http://127.0.0.1:%d" % free_port()


def config(upstreams, routes='{ "ANY", "/v1/*", proxy = "up" }'):
    return """
return {
  listen = "127.0.0.1:8080",
  upstreams = { %s },
  routes = { %s },
}
""" % (upstreams, routes)


def targets(*items):
    out = []
    for t in items:
        if isinstance(t, tuple):
            out.append('{ url = "%s", weight = %d }' % t)
        else:
            out.append('"%s"' % t)
    return "{ " + ", ".join(out) + " }"


def attempts_to(g, target):
    """The error log's failed-attempt lines naming `target`."""
    return [e for e in g.error_log() if e.get("target") == target and "attempt" in e]


def read_response(s, timeout=5):
    """Reads from `s` until the peer closes or `timeout` passes with nothing
    new. Returns (bytes, closed_by_peer)."""
    s.settimeout(timeout * SLOW)
    chunks = []
    while True:
        try:
            b = s.recv(65536)
        except socket.timeout:
            return b"".join(chunks), False
        except ConnectionResetError:
            return b"".join(chunks), True
        if not b:
            return b"".join(chunks), True
        chunks.append(b)


def is_complete(data):
    """True when `data` holds one whole, well-framed HTTP response."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    lines = head.decode("latin-1").split("\r\n")
    h = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        h[k.strip().lower()] = v.strip()
    if "chunked" in h.get("transfer-encoding", "").lower():
        while True:
            size_line, sep, rest = rest.partition(b"\r\n")
            if not sep:
                return False
            try:
                size = int(size_line.split(b";")[0], 16)
            except ValueError:
                return False
            if size == 0:
                return rest.startswith(b"\r\n") or b"\r\n\r\n" in rest
            if len(rest) < size + 2:
                return False
            rest = rest[size + 2:]
    if "content-length" in h:
        return len(rest) >= int(h["content-length"])
    return False   # framed by close: never distinguishable from a cut body


# ----------------------------------------------------- proxy pass-through --

def test_proxy_passes_method_path_query_body_and_headers(gateway, upstream):
    u = upstream()
    g = gateway(config('up = { targets = %s }' % targets(u.url)))
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        body = b"" if method == "GET" else ('{"m": "%s", "n": [1, 2]}' % method).encode()
        r = requests.request(method, g.url("/v1/items/42?a=1&b=x%20y&a=2"), data=body,
                             headers={"X-Custom": "abc", "Content-Type": "application/json",
                                      "Authorization": "Bearer t0k"})
        assert r.status_code == 200, (method, r.text)
        e = r.json()
        assert e["port"] == u.port
        assert e["method"] == method
        assert e["path"] == "/v1/items/42"
        assert e["query"] == "a=1&b=x%20y&a=2"
        assert e["body"] == body.decode()
        assert e["headers"]["x-custom"] == "abc"
        assert e["headers"]["authorization"] == "Bearer t0k"
        assert e["headers"]["content-type"] == "application/json"
        if body:
            assert e["headers"]["content-length"] == str(len(body))
        # The Host an upstream sees is its own; the client's goes in X-Forwarded-Host.
        assert e["headers"]["host"] == "127.0.0.1:%d" % u.port
        assert e["headers"]["x-forwarded-host"] == "127.0.0.1:%d" % g.port


def test_proxy_head_keeps_upstream_content_length(gateway, upstream):
    """HEAD is relayed as HEAD, and a Content-Length in the answer, if any,
    is the one the upstream gave (the GET body's length), never a made-up 0."""
    u = upstream()
    g = gateway(config('up = { targets = %s }' % targets(u.url)))
    direct = http.client.HTTPConnection("127.0.0.1", u.port, timeout=5)
    direct.request("HEAD", "/v1/garbage")
    want = direct.getresponse().getheader("Content-Length")
    direct.close()
    r = requests.head(g.url("/v1/garbage"))
    assert r.status_code == 200 and r.content == b""
    assert u.stats()["seen"][-1] == "HEAD /v1/garbage"
    assert r.headers.get("content-length", want) == want, (
        "upstream said Content-Length %s, gateway relayed %s"
        % (want, r.headers.get("content-length")))


def test_hop_by_hop_request_headers_removed_forwarding_headers_set(gateway, upstream):
    u = upstream()
    g = gateway(config('up = { targets = %s }' % targets(u.url)))
    req = (b"POST /v1/echo?z=1 HTTP/1.1\r\n"
           b"Host: gw.example\r\n"
           b"Connection: close, X-Secret-Hop\r\n"
           b"Keep-Alive: timeout=5, max=10\r\n"
           b"Proxy-Connection: keep-alive\r\n"
           b"TE: trailers\r\n"
           b"Upgrade: websocket\r\n"
           b"X-Secret-Hop: must-not-pass\r\n"
           b"X-Keep-Me: yes\r\n"
           b"X-Forwarded-For: 10.1.2.3\r\n"
           b"X-Request-ID: client-rid-42\r\n"
           b"Content-Type: text/plain\r\n"
           b"Transfer-Encoding: chunked\r\n"
           b"\r\n"
           b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    status, headers, body, _ = parse_response(g.raw(req))
    assert status == 200, body
    e = json.loads(body)
    h = e["headers"]
    for name in ("keep-alive", "proxy-connection", "te", "upgrade", "x-secret-hop",
                 "transfer-encoding"):
        assert name not in h, "hop-by-hop %s forwarded: %r" % (name, h)
    conn = h.get("connection", "").lower()
    assert "x-secret-hop" not in conn and "close" not in conn, h
    assert e["body"] == "hello world"
    assert h["content-length"] == "11"
    assert h["x-keep-me"] == "yes"
    assert h["x-forwarded-for"] == "10.1.2.3, 127.0.0.1"
    assert h["x-forwarded-proto"] == "http"
    assert h["x-forwarded-host"] == "gw.example"
    assert h["x-request-id"] == "client-rid-42" == headers["x-request-id"]


def test_hop_by_hop_response_headers_removed(gateway, upstream):
    """The upstream's Connection, Keep-Alive, Upgrade, Trailer and the headers
    its Connection header names are not relayed to the client."""
    u = upstream()
    g = gateway(config('up = { targets = %s }' % targets(u.url)))
    r = requests.get(g.url("/v1/hop"))
    assert r.status_code == 200 and r.json() == {"hop": True}
    assert r.headers.get("x-normal") == "yes"
    assert "upgrade" not in r.headers and "trailer" not in r.headers
    assert "timeout=5" not in r.headers.get("keep-alive", "")
    assert "x-up-hop" not in r.headers, (
        "X-Up-Hop is named in the upstream's Connection header (hop-by-hop) "
        "but was relayed: %r" % dict(r.headers))


def test_proxied_answer_headers_relayed_from_c_or_rewritten(gateway, upstream):
    """With no policy touching res.headers the upstream's head is relayed by
    the C side (hop-by-hop ones dropped, Date ours, HEAD keeps its length);
    a response policy sees the same headers as a table and can remove one."""
    u = upstream()
    plain = gateway("""
return {
  listen = "127.0.0.1:8080",
  policies = {},
  upstreams = { up = { targets = %s } },
  routes = { { "ANY", "/v1/*", proxy = "up" } },
}
""" % targets(u.url))
    r = requests.get(plain.url("/v1/hop"))
    assert r.status_code == 200 and r.json() == {"hop": True}
    assert r.headers.get("x-normal") == "yes"
    for name in ("upgrade", "trailer", "x-up-hop", "transfer-encoding"):
        assert name not in r.headers, (name, dict(r.headers))
    assert r.headers.get("connection", "keep-alive").lower() == "keep-alive"
    assert len([k for k in r.raw.headers.keys() if k.lower() == "date"]) == 1
    assert r.headers.get("x-request-id") == "upstream-id"   # no request-id policy here
    assert r.raw.headers.getlist("Set-Cookie") == ["a=1", "b=2"]
    h = requests.head(plain.url("/v1/garbage"))
    d = requests.get(plain.url("/v1/garbage"))
    assert h.status_code == d.status_code
    assert h.headers.get("content-length") == str(len(d.content))

    rewritten = gateway("""
return {
  listen = "127.0.0.1:8080",
  upstreams = { up = { targets = %s } },
  routes = { { "ANY", "/v1/*", proxy = "up", policies = {
      { "response-rewrite", headers = { remove = { "X-Normal" }, set = { ["X-Added"] = "1" } } } } } },
}
""" % targets(u.url))
    r = requests.get(rewritten.url("/v1/hop"))
    assert r.status_code == 200 and r.json() == {"hop": True}
    assert "x-normal" not in r.headers and r.headers.get("x-added") == "1", dict(r.headers)
    assert "x-up-hop" not in r.headers and "upgrade" not in r.headers
    assert r.raw.headers.getlist("X-Request-ID") == [r.headers["x-request-id"]] != ["upstream-id"]
    assert r.raw.headers.getlist("Set-Cookie") == ["a=1", "b=2"]

    # request-id alone (the default policies): the head is still relayed from
    # C, with our X-Request-ID in place of the upstream's -- once.
    with_id = gateway("""
return {
  listen = "127.0.0.1:8080",
  upstreams = { up = { targets = %s } },
  routes = { { "ANY", "/v1/*", proxy = "up" } },
}
""" % targets(u.url))
    r = requests.get(with_id.url("/v1/hop"))
    assert r.status_code == 200 and r.json() == {"hop": True}
    ids = r.raw.headers.getlist("X-Request-ID")
    assert len(ids) == 1 and ids[0] != "upstream-id", ids
    assert r.raw.headers.getlist("Set-Cookie") == ["a=1", "b=2"]
    assert r.headers.get("x-normal") == "yes" and "x-up-hop" not in r.headers
    r = requests.get(with_id.url("/v1/hop"), headers={"X-Request-ID": "client-id-7"})
    assert r.raw.headers.getlist("X-Request-ID") == ["client-id-7"]


def test_response_headers_set_per_request_on_relayed_heads(gateway, upstream):
    """req:set_response_header() on answers whose head is relayed from C: one
    header (kept in the request, handed to C in a shared table), two (a table
    of their own), the same name again in another case -- and nothing of one
    request's headers on the next."""
    u = upstream()
    g = gateway("""
return {
  listen = "127.0.0.1:8080",
  policies = {},
  upstreams = { up = { targets = %s } },
  routes = {
    { "GET", "/one/:v", function(req)
        req:set_response_header("X-One-" .. req.params.v, req.params.v)
        return req:proxy("up", { path = "/v1/hop" })
      end },
    { "GET", "/two", function(req)
        req:set_response_header("X-A", "a")
        req:set_response_header("X-B", "b")
        return req:proxy("up", { path = "/v1/hop" })
      end },
    { "GET", "/again", function(req)
        req:set_response_header("X-Normal", "first")
        req:set_response_header("x-normal", "ours")      -- replaces, whatever the case
        return req:proxy("up", { path = "/v1/hop" })
      end },
    { "GET", "/bad", function(req)
        req:set_response_header("X-Bad", "a\\r\\nb")     -- refused by the C side: 500
        return req:proxy("up", { path = "/v1/hop" })
      end },
  },
}
""" % targets(u.url))
    for v in ("p", "q", "p"):
        r = requests.get(g.url("/one/" + v))
        assert r.status_code == 200 and r.json() == {"hop": True}
        mine = sorted(k.lower() for k in r.headers if k.lower().startswith("x-one-"))
        assert mine == ["x-one-" + v] and r.headers["x-one-" + v] == v, dict(r.headers)
    r = requests.get(g.url("/two"))
    assert r.headers.get("x-a") == "a" and r.headers.get("x-b") == "b", dict(r.headers)
    r = requests.get(g.url("/again"))
    assert r.raw.headers.getlist("X-Normal") == ["ours"], dict(r.headers)   # the upstream's replaced
    assert requests.get(g.url("/bad")).status_code == 500
    r = requests.get(g.url("/one/z"))
    assert r.status_code == 200
    assert [k for k in r.headers if k.lower().startswith(("x-one-", "x-bad", "x-a", "x-b"))] == ["X-One-z"]


def test_trace_context_request_id_and_access_log(gateway, upstream):
    u = upstream()
    g = gateway(config('up = { targets = %s }' % targets(u.url)))
    trace = "0af7651916cd43dd8448eb211c80319c"
    incoming = "00-%s-b7ad6b7169203331-01" % trace
    r = requests.get(g.url("/v1/t"), headers={"traceparent": incoming})
    assert r.status_code == 200
    h = r.json()["headers"]
    m = TRACEPARENT_RE.match(h["traceparent"])
    assert m, h["traceparent"]
    assert m.group(1) == trace                      # the caller's trace id is kept
    assert m.group(2) != "b7ad6b7169203331"         # our hop is a new span
    assert h["x-request-id"] == r.headers["x-request-id"]

    r2 = requests.get(g.url("/v1/t2"))              # no incoming: a fresh trace
    h2 = r2.json()["headers"]
    m2 = TRACEPARENT_RE.match(h2["traceparent"])
    assert m2 and m2.group(1) != "0" * 32 and m2.group(1) != trace
    assert h2["x-request-id"] == r2.headers["x-request-id"] != h["x-request-id"]

    bad = requests.get(g.url("/v1/t3"), headers={"traceparent": "garbage"})
    m3 = TRACEPARENT_RE.match(bad.json()["headers"]["traceparent"])
    assert m3 and m3.group(1) not in (trace, m2.group(1))

    logs = wait_until(lambda: [l for l in g.access_log() if l.get("uri", "").startswith("/v1/t")]
                      if len(g.access_log()) >= 3 else None)
    by_uri = {l["uri"]: l for l in logs}
    for uri, tid in (("/v1/t", trace), ("/v1/t2", m2.group(1)), ("/v1/t3", m3.group(1))):
        l = by_uri[uri]
        assert l["upstream"] == "up"
        assert l["upstream_target"] == u.url
        assert l["upstream_status"] == 200
        assert l["trace_id"] == tid
    assert by_uri["/v1/t"]["request_id"] == r.headers["x-request-id"]


# ---------------------------------------------------------------- failures --

def test_connection_refused_is_502_json(gateway):
    dead = dead_url()
    g = gateway(config('up = { targets = %s, retries = 0 }' % targets(dead)))
    r = requests.get(g.url("/v1/ok"))
    assert r.status_code == 502
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == {"message": "upstream refused the connection"}
    rid = r.headers["x-request-id"]
    att = wait_until(lambda: attempts_to(g, dead))
    assert len(att) == 1, att
    assert att[0]["kind"] == "connect" and att[0]["request_id"] == rid
    assert dead in att[0]["msg"] and "connect" in att[0]["msg"]
    log = wait_until(lambda: [l for l in g.access_log() if l["request_id"] == rid])
    assert log[0]["status"] == 502 and log[0]["upstream"] == "up"
    assert log[0]["upstream_error"] == "connect"


def test_stall_past_timeout_is_504(gateway, upstream):
    u = upstream()
    g = gateway(config('up = { targets = %s, timeout = "1s", retries = 0 }' % targets(u.url)))
    t0 = time.time()
    r = requests.get(g.url("/v1/stall/10"))
    took = time.time() - t0
    assert r.status_code == 504, r.text
    assert r.json() == {"message": "upstream timed out"}
    assert 0.8 <= took < 3 * SLOW, took
    att = wait_until(lambda: attempts_to(g, u.url))
    assert len(att) == 1 and att[0]["kind"] == "timeout", att
    assert u.url in att[0]["msg"] and "timeout" in att[0]["msg"]


def test_every_target_down_is_503(gateway):
    a, b = dead_url(), dead_url()
    g = gateway(config('up = { targets = %s, max_fails = 1, fail_timeout = "30s", retries = 1 }'
                       % targets(a, b)))
    r1 = requests.get(g.url("/v1/ok"))
    assert r1.status_code == 502                 # both tried, both refused
    marked = wait_until(lambda: [e for e in g.error_log() if "marked down" in e.get("msg", "")])
    assert {e["target"] for e in marked} == {a, b}, marked
    n = len(attempts_to(g, a)) + len(attempts_to(g, b))
    assert n == 2
    r2 = requests.get(g.url("/v1/ok"))
    assert r2.status_code == 503
    assert r2.json() == {"message": "no healthy upstream target"}
    time.sleep(0.1)
    assert len(attempts_to(g, a)) + len(attempts_to(g, b)) == n   # no attempt made


def test_upstream_error_answers_relayed_as_is(gateway, upstream):
    u = upstream()
    g = gateway(config('up = { targets = %s, retries = 0 }' % targets(u.url)))
    for code, detail in ((500, "model exploded"), (404, "no such item"),
                         (422, "field required"), (503, "warming up")):
        r = requests.get(g.url("/v1/status/%d" % code), params={"detail": detail})
        assert r.status_code == code
        assert r.content == json.dumps({"detail": detail}).encode(), (code, r.content)
        assert r.headers["content-type"] == "application/json"


def test_reset_mid_body_never_looks_complete(gateway, upstream):
    u = upstream()
    g = gateway(config('up = { targets = %s, retries = 0 }' % targets(u.url)))
    s = g.connect()
    try:
        s.sendall(b"GET /v1/reset-mid-body HTTP/1.1\r\nHost: x\r\n\r\n")
        data, closed = read_response(s, timeout=3)
    finally:
        s.close()
    assert data, "no answer at all"
    status = int(data.split(b" ", 2)[1])
    if status == 200:
        assert not is_complete(data), "a cut upstream body was relayed as complete: %r" % data
        assert closed, "the gateway kept the connection open after a cut body: %r" % data
    else:
        assert status == 502 and is_complete(data), data
    # Logged, naming the target and the reason.
    logged = wait_until(lambda: [e for e in g.error_log()
                                 if u.url in e.get("msg", "") and "reset" in e.get("msg", "")])
    assert logged, g.stderr()
    # And the gateway goes on serving.
    assert requests.get(g.url("/v1/ok")).status_code == 200


# ----------------------------------------------------------------- retries --

def test_get_retries_on_next_target(gateway, upstream):
    good, dead = upstream(), dead_url()
    g = gateway(config('up = { targets = %s, retries = 1, max_fails = 1000 }'
                       % targets(dead, good.url)))
    rids = []
    for i in range(20):
        r = requests.get(g.url("/v1/ok?i=%d" % i))
        assert r.status_code == 200, (i, r.text)
        assert r.json()["port"] == good.port
        rids.append(r.headers["x-request-id"])
    att = wait_until(lambda: attempts_to(g, dead))
    # Round-robin sends every other first attempt to the dead target.
    assert 8 <= len(att) <= 12, att
    for e in att:
        assert e["kind"] == "connect" and e["attempt"] == 1
        assert "attempt 1/2" in e["msg"]
        assert e["request_id"] in rids
    assert good.stats()["requests"] == 20


def test_post_not_retried_by_default(gateway, upstream):
    good, dead = upstream(), dead_url()
    g = gateway(config('up = { targets = %s, retries = 2, max_fails = 1000 }'
                       % targets(dead, good.url)))
    codes = []
    for i in range(10):
        r = requests.post(g.url("/v1/ok"), data="payload %d" % i)
        codes.append(r.status_code)
        if r.status_code == 502:
            assert r.json() == {"message": "upstream refused the connection"}
    assert set(codes) == {200, 502}, codes
    assert 3 <= codes.count(502) <= 7, codes
    att = wait_until(lambda: attempts_to(g, dead))
    assert len(att) == codes.count(502), att          # one attempt per failed POST
    for e in att:
        assert "attempt 1/1" in e["msg"], e
    # The good target saw exactly the POSTs that succeeded, never a retry.
    seen = [s for s in good.stats()["seen"] if s.startswith("POST ")]
    assert len(seen) == codes.count(200)


def test_post_retried_when_allowed(gateway, upstream):
    good, dead = upstream(), dead_url()
    g = gateway(config('up = { targets = %s, retries = 1, max_fails = 1000, '
                       'retry_non_idempotent = true }' % targets(dead, good.url)))
    for i in range(6):
        r = requests.post(g.url("/v1/ok"), data="p%d" % i)
        assert r.status_code == 200 and r.json()["body"] == "p%d" % i
    assert len(attempts_to(g, dead)) >= 2


# --------------------------------------------------------------- balancing --

def test_weighted_balance_1_to_3(gateway, upstream):
    a, b = upstream(), upstream()
    g = gateway(config('up = { targets = %s, balance = "weighted" }'
                       % targets((a.url, 1), (b.url, 3))))
    counts = {a.port: 0, b.port: 0}
    with requests.Session() as s:
        for i in range(200):
            r = s.get(g.url("/v1/ok"))
            assert r.status_code == 200
            counts[r.json()["port"]] += 1
    assert abs(counts[a.port] - 50) <= 15 and abs(counts[b.port] - 150) <= 15, counts


def test_least_busy_avoids_the_busy_target(gateway, upstream):
    a, b = upstream(), upstream()
    g = gateway(config('up = { targets = %s, balance = "least-busy", timeout = "5s" }'
                       % targets(a.url, b.url)))
    slow = {}

    def slow_call():
        slow["r"] = requests.get(g.url("/v1/slow/1.5"))

    t = threading.Thread(target=slow_call)
    t.start()
    try:
        busy = wait_until(lambda: [u for u in (a, b) if u.stats()["in_flight"] == 1])
        assert busy, "the slow request never reached an upstream"
        busy = busy[0]
        idle = b if busy is a else a
        ports = [requests.get(g.url("/v1/ok")).json()["port"] for _ in range(8)]
        assert ports == [idle.port] * 8, (ports, busy.port)
    finally:
        t.join()
    assert slow["r"].status_code == 200 and slow["r"].json()["port"] == busy.port


def test_hash_key_keeps_a_key_on_one_target(gateway, upstream):
    a, b = upstream(), upstream()
    g = gateway(config('h = { targets = %s, balance = "hash" }' % targets(a.url, b.url),
                       routes='''{ "GET", "/h", function(req)
                           return req:proxy("h", { key = req.headers["x-user"], path = "/ok" })
                         end }'''))
    seen = {}
    # 15 keys (odd) in a different order each round: plain round-robin would
    # move a key to the other target from one round to the next.
    orders = [list(range(15)), list(range(14, -1, -1)), [3, 11, 0, 7, 14, 1, 9, 5, 12, 2, 8, 13, 4, 10, 6]]
    with requests.Session() as s:
        for order in orders:
            for user in order:
                r = s.get(g.url("/h"), headers={"X-User": "user-%d" % user})
                assert r.status_code == 200
                seen.setdefault(user, set()).add(r.json()["port"])
    assert all(len(p) == 1 for p in seen.values()), seen
    assert set().union(*seen.values()) == {a.port, b.port}, "hash sent every key to one target"


# ---------------------------------------------------------- passive health --

def test_failing_target_skipped_for_fail_timeout_then_tried_again(gateway, upstream):
    good = upstream()
    dead_port = free_port()
    dead = "http://127.0.0.1:%d" % dead_port
    g = gateway(config('up = { targets = %s, retries = 1, max_fails = 2, fail_timeout = "2s" }'
                       % targets(dead, good.url)))

    def marked():
        return [e for e in g.error_log()
                if e.get("target") == dead and "marked down" in e.get("msg", "")]

    for _ in range(10):
        assert requests.get(g.url("/v1/ok")).status_code == 200
        if marked():
            break
    t_down = time.time()
    assert marked(), g.stderr()
    assert "2s" in marked()[0]["msg"]
    n = len(attempts_to(g, dead))
    assert n == 2, attempts_to(g, dead)
    # During fail_timeout: every request goes to the good target, no attempt to the dead one.
    while time.time() < t_down + 1.3:
        r = requests.get(g.url("/v1/ok"))
        assert r.status_code == 200 and r.json()["port"] == good.port
        time.sleep(0.02)
    assert len(attempts_to(g, dead)) == n, attempts_to(g, dead)
    # Bring the target back; once fail_timeout is over it gets traffic again.
    back = upstream(port=dead_port)
    time.sleep(max(0, t_down + 2.1 - time.time()))
    ports = set()
    deadline = time.time() + 3 * SLOW
    while back.port not in ports and time.time() < deadline:
        r = requests.get(g.url("/v1/ok"))
        assert r.status_code == 200
        ports.add(r.json()["port"])
    assert back.port in ports, "the recovered target was never tried again"


# --------------------------------------------------------------- streaming --

def test_sse_relayed_chunk_by_chunk(gateway, upstream):
    u = upstream()
    g = gateway(config('up = { targets = %s, timeout = "10s" }' % targets(u.url)))
    s = g.connect()
    t0 = time.time()
    s.sendall(b"GET /v1/sse?n=10&interval=0.1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    s.settimeout(5 * SLOW)
    buf, arrived = b"", {}
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            buf += b
            for i in range(10):
                if i not in arrived and (b"id: %d\n" % i) in buf:
                    arrived[i] = time.time() - t0
    finally:
        s.close()
    status, headers, body, _ = parse_response(buf)
    assert status == 200
    assert headers["content-type"] == "text/event-stream"
    assert body.count(b"data: ") == 10
    assert sorted(arrived) == list(range(10))
    assert arrived[0] < 0.5 * SLOW, arrived
    assert arrived[9] - arrived[0] >= 0.6, "events were buffered, not streamed: %r" % arrived


def test_client_disconnect_cancels_upstream_transfer(gateway, upstream):
    u = upstream()
    g = gateway(config('up = { targets = %s, timeout = "30s" }' % targets(u.url)))
    s = g.connect()
    s.sendall(b"GET /v1/sse?n=200&interval=0.05 HTTP/1.1\r\nHost: x\r\n\r\n")
    s.settimeout(5 * SLOW)
    buf = b""
    while b"id: 1\n" not in buf:
        b = s.recv(65536)
        assert b, "stream ended early"
        buf += b
    s.close()
    # The gateway notices, stops the upstream transfer and logs client_aborted.
    aborted = wait_until(lambda: [l for l in g.access_log() if l.get("client_aborted")], timeout=5)
    assert aborted, g.stdout()
    assert aborted[0]["upstream"] == "up"
    st = wait_until(lambda: (lambda x: x if x["sse_aborted"] else None)(u.stats()), timeout=5)
    assert st and st["sse_aborted"] == 1, u.stats()
    assert st["sse_completed"] == 0
    # Still serving.
    r = requests.get(g.url("/v1/ok"))
    assert r.status_code == 200


# -------------------------------------------------------------- keep-alive --

def test_keepalive_reuses_upstream_connections(gateway, upstream):
    u = upstream()
    g = gateway(config('up = { targets = %s }' % targets(u.url)))
    conns = set()
    with requests.Session() as s:
        for i in range(200):
            r = s.get(g.url("/v1/ok?i=%d" % i))
            assert r.status_code == 200
            conns.add(r.json()["conn"])
    st = u.stats()
    assert st["requests"] == 200
    assert st["connections"] <= 3, st["connections"]
    assert len(conns) <= 3


# --------------------------------------------------------------- req:fetch --

FETCH_ROUTES = r'''
    { "ANY", "/v1/*", proxy = "up" },
    { "GET", "/f/echo", function(req)
        local res, kind = req:fetch("up", { path = "/ok/echo" })
        if not res then return 502, kind end
        return 200, res:json()
      end },
    { "POST", "/f/json", function(req)
        local res, kind, msg = req:fetch("up", { method = "POST", path = "/ok/json",
          json = { name = "moon", n = 3, list = { 1, 2 } },
          query = { a = "1", b = "x y", list = { "p", "q" } } })
        if not res then return 502, kind .. ": " .. tostring(msg) end
        return 200, { status = res.status, echo = res:json(), ctype = res.headers["content-type"] }
      end },
    { "GET", "/f/timeout", function(req)
        local res, kind, msg = req:fetch("stally", { path = "/stall/10", timeout = 0.5 })
        return 200, { got_nil = res == nil, kind = kind, msg = tostring(msg) }
      end },
    { "GET", "/f/abs", function(req)
        local res, kind = req:fetch("ABS/ok/abs?x=1&y=two")
        if not res then return 502, kind end
        return 200, res:json()
      end },
    { "GET", "/f/abs-query", function(req)
        local res, kind = req:fetch("ABS/ok/absq?x=1", { query = { y = "2" } })
        if not res then return 502, kind end
        return 200, res:json()
      end },
    { "GET", "/f/refused", function(req)
        local res, kind = req:fetch("DEAD/ok")
        return 200, { got_nil = res == nil, kind = kind }
      end },
    { "GET", "/f/cut", function(req)
        local res, kind = req:fetch("up", { path = "/reset-mid-body" })
        return 200, { got_nil = res == nil, kind = kind }
      end },
    { "GET", "/f/garbage", function(req)
        local res, kind = req:fetch("up", { path = "/garbage" })
        if not res then return 502, kind end
        return 200, { status = res.status, json_nil = res:json() == nil, body = res.body }
      end },
    { "GET", "/f/forward-dropped", function(req)
        -- forward = true decides, even with every forwarded line dropped:
        -- trace = true adds nothing then (the caller dropped those names).
        local core = require "moongate.core"
        local h = core.fetch({ url = "ABS/ok/echo", forward = true, trace = true,
          drop = { "host", "user-agent", "accept-encoding", "accept", "x-forwarded-for",
                   "x-forwarded-proto", "x-forwarded-host", "x-request-id", "traceparent" } })
        local upstream = require "moongate.upstream"
        upstream.wait_head(h)
        local body = upstream.read_all(h)
        h:close()
        return 200, body, { ["Content-Type"] = "application/json" }
      end },
    { "GET", "/f/headers", function(req)
        local out = {}
        for _, target in ipairs({ "up", "ABS/ok/echo" }) do
          local res, kind = req:fetch(target, { path = target == "up" and "/ok/echo" or nil,
            headers = { ["X-Num"] = 42, ["X-List"] = { "a", "b" }, ["X-Flag"] = true, ["X-Plain"] = "p" } })
          if not res then return 502, kind end
          out[#out + 1] = res:json().headers
        end
        local res = req:fetch("ABS/ok/echo", { json = { x = 1 }, headers = { ["X-Extra"] = "e" } })
        out[#out + 1] = res:json().headers
        local ok, err = pcall(req.fetch, req, "ABS/ok/echo", { headers = { ["X-Bad"] = "a\r\nInjected: 1" } })
        out[#out + 1] = { ok = ok, err = tostring(err) }
        return 200, out
      end },
'''


@pytest.fixture
def fetch_gw(gateway, upstream):
    u = upstream()
    dead = dead_url()
    routes = FETCH_ROUTES.replace("ABS", u.url).replace("DEAD", dead)
    g = gateway(config('up = { targets = %s, retries = 0 }, '
                       'stally = { targets = %s, retries = 0, timeout = "10s" }'
                       % (targets(u.url), targets(u.url)), routes=routes))
    return g, u


def test_fetch_after_proxy_sends_only_its_own_headers(fetch_gw):
    """req:fetch() is a new request: nothing of a request proxied before it
    on the same worker (forwarded client headers) may leak into it."""
    g, u = fetch_gw
    with requests.Session() as s:               # one connection: one worker
        for _ in range(3):
            r = s.get(g.url("/v1/ok/p"), headers={"X-Leak": "from-proxy"})
            assert r.status_code == 200
            assert r.json()["headers"].get("x-leak") == "from-proxy"
            e = s.get(g.url("/f/echo"))
            assert e.status_code == 200, e.text
            h = e.json()["headers"]
            assert "x-leak" not in h and "x-forwarded-for" not in h, h
            assert h.get("x-request-id") and h.get("traceparent")


def test_fetch_trace_adds_nothing_to_a_forward_that_dropped_those_names(fetch_gw):
    g, u = fetch_gw
    r = requests.get(g.url("/f/forward-dropped"))
    assert r.status_code == 200, r.text
    h = r.json()["headers"]
    assert "x-request-id" not in h and "traceparent" not in h, h


def test_fetch_headers_map_values_and_refusals(fetch_gw):
    """opts.headers is a { name = value } map: numbers and booleans as text,
    a list as one line per element, after a json body's Content-Type; a
    value with CR/LF raises (no header injection)."""
    g, u = fetch_gw
    r = requests.get(g.url("/f/headers"))
    assert r.status_code == 200, r.text
    via_upstream, via_url, with_json, bad = r.json()
    for h in (via_upstream, via_url):
        assert h["x-num"] == "42" and h["x-flag"] == "true" and h["x-plain"] == "p", h
        assert h["x-list"] in ("a, b", ["a", "b"]), h
        assert h.get("x-request-id") and TRACEPARENT_RE.match(h["traceparent"]), h
    assert with_json["content-type"] == "application/json" and with_json["x-extra"] == "e", with_json
    assert bad["ok"] is False and "CR" in bad["err"], bad


def test_fetch_json_body_and_query_table(fetch_gw):
    g, u = fetch_gw
    r = requests.post(g.url("/f/json"))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["status"] == 200 and out["ctype"] == "application/json"
    e = out["echo"]
    assert e["method"] == "POST" and e["path"] == "/ok/json"
    assert json.loads(e["body"]) == {"name": "moon", "n": 3, "list": [1, 2]}
    assert e["headers"]["content-type"] == "application/json"
    assert e["args"] == {"a": "1", "b": "x y", "list": ["p", "q"]}
    assert e["headers"]["x-request-id"] == r.headers["x-request-id"]
    assert TRACEPARENT_RE.match(e["headers"]["traceparent"])


def test_fetch_timeout_returns_nil_timeout(fetch_gw):
    g, u = fetch_gw
    t0 = time.time()
    r = requests.get(g.url("/f/timeout"))
    took = time.time() - t0
    assert r.status_code == 200
    out = r.json()
    assert out["got_nil"] is True and out["kind"] == "timeout", out
    assert took < 2 * SLOW, took


def test_fetch_absolute_url(fetch_gw):
    g, u = fetch_gw
    r = requests.get(g.url("/f/abs"))
    assert r.status_code == 200, r.text
    e = r.json()
    assert e["port"] == u.port and e["method"] == "GET"
    assert e["path"] == "/ok/abs" and e["args"] == {"x": "1", "y": "two"}
    r = requests.get(g.url("/f/refused"))
    assert r.json() == {"got_nil": True, "kind": "connect"}


def test_fetch_absolute_url_with_query_and_opts_query(fetch_gw):
    """opts.query is added to a query the URL already has ("?x=1" + {y=2})."""
    g, u = fetch_gw
    r = requests.get(g.url("/f/abs-query"))
    assert r.status_code == 200, r.text
    e = r.json()
    assert e["path"] == "/ok/absq"
    assert e["args"] == {"x": "1", "y": "2"}, e["query"]


def test_fetch_body_cut_mid_read_is_incomplete(fetch_gw):
    g, u = fetch_gw
    r = requests.get(g.url("/f/cut"))
    assert r.status_code == 200
    assert r.json() == {"got_nil": True, "kind": "incomplete"}
    r = requests.get(g.url("/f/garbage"))
    assert r.json() == {"status": 200, "json_nil": True, "body": "<html>this is {not json"}
