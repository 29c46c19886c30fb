"""HTTP/1.1 server behaviour over raw sockets: keep-alive, pipelining, request
bodies (Content-Length, chunked, split, byte by byte), Expect: 100-continue,
HEAD, size limits, timeouts, ambiguous framing (request smuggling vectors),
graceful shutdown and clients that go away mid-exchange.

Every config uses short limits and timeouts so the whole file stays fast.
Handler calls are counted by a Lua upvalue and read back through /calls
(one worker, so one Lua state), which tells whether a refused request ever
reached a handler.
"""
import json
import signal
import socket
import struct
import time

import pytest

from conftest import SLOW

CONFIG = """
local calls = 0
local function hit() calls = calls + 1 end
return {
  listen = "127.0.0.1:8080",
  shutdown_timeout = "5s",
  limits = { headers = "2k", body = "1k", header_timeout = "1s",
             body_timeout = "1s", keepalive_timeout = "%(keepalive)s",
             send_timeout = "2s" },
  routes = {
    { "GET", "/hello", function(req) hit() return 200, { hello = "world" } end },
    { "POST", "/echo", function(req)
        hit()
        local b = req:body()
        return 200, { body = b, n = #b }
      end },
    { "GET", "/slow", function(req) hit() req:sleep(0.1) return 200, { slow = true } end },
    { "GET", "/sleep1", function(req) hit() req:sleep(1) return 200, { slept = true } end },
    { "POST", "/big", function(req) hit() return 200, { n = #req:body() } end, body = "2m" },
    { "GET", "/stream", function(req)
        hit()
        req:stream(200, { ["Content-Type"] = "text/plain" })
        local chunk = string.rep("x", 65536)
        for i = 1, 16 do
          if not req:write(chunk) then return end
          req:sleep(0.02)
        end
      end },
    { "GET", "/calls", function() return 200, { calls = calls } end },
  },
}
"""

STREAM_LEN = 16 * 65536


def config(keepalive="1s"):
    return CONFIG % {"keepalive": keepalive}


# ---- helpers ---------------------------------------------------------------

def try_parse(data, head=False):
    """One complete response off the front of `data`: (status, headers, body,
    rest), or None when more bytes are needed. `head`: a response to HEAD
    (no body whatever the headers say)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = data[:end].decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers.setdefault(k.strip().lower(), v.strip())
    rest = data[end + 4:]
    if head or 100 <= status < 200 or status in (204, 304):
        return status, headers, b"", rest
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            nl = rest.find(b"\r\n")
            if nl < 0:
                return None
            size = int(rest[:nl].split(b";")[0], 16)
            if size == 0:
                t = rest.find(b"\r\n", nl + 2)
                if t < 0:
                    return None
                return status, headers, body, rest[t + 2:]
            if len(rest) < nl + 2 + size + 2:
                return None
            body += rest[nl + 2:nl + 2 + size]
            rest = rest[nl + 2 + size + 2:]
    n = int(headers.get("content-length", "0"))
    if len(rest) < n:
        return None
    return status, headers, rest[:n], rest[n:]


class Conn:
    """A client connection that reads whole responses, keeping extra bytes."""

    def __init__(self, g, timeout=5):
        self.s = g.connect(timeout)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.eof = False

    def send(self, data):
        self.s.sendall(data)

    def _fill(self, timeout):
        self.s.settimeout(timeout)
        try:
            b = self.s.recv(65536)
        except socket.timeout:
            return False
        except ConnectionResetError:
            b = b""
        if not b:
            self.eof = True
            return False
        self.buf += b
        return True

    def response(self, timeout=5, head=False):
        deadline = time.time() + timeout * SLOW
        while True:
            r = try_parse(self.buf, head)
            if r is not None:
                status, headers, body, self.buf = r
                return status, headers, body
            left = deadline - time.time()
            if self.eof or left <= 0:
                raise AssertionError("no complete response; got %r" % self.buf[:300])
            self._fill(left)

    def closed(self, timeout=2, scale=True):
        """True when the server closes within `timeout` with no further bytes
        (apart from what is already buffered). `scale`: stretch the wait on
        slow (sanitizer) builds; off where the wait is an upper bound."""
        deadline = time.time() + timeout * (SLOW if scale else 1)
        while not self.eof:
            left = deadline - time.time()
            if left <= 0:
                return False
            self._fill(left)
        return True

    def close(self):
        self.s.close()


def request(g, path="/hello", method="GET", body=None, headers=()):
    data = "%s %s HTTP/1.1\r\nHost: test\r\n" % (method, path)
    for h in headers:
        data += h + "\r\n"
    if body is not None:
        data += "Content-Length: %d\r\n" % len(body)
    data = data.encode() + b"\r\n" + (body or b"")
    c = Conn(g)
    try:
        c.send(data)
        return c.response()
    finally:
        c.close()


def calls(g):
    st, _, body = request(g, "/calls")
    assert st == 200
    return json.loads(body)["calls"]


def assert_json_error(status, headers, body, expect_status):
    assert status == expect_status, (status, headers, body)
    assert headers.get("content-type", "").startswith("application/json"), headers
    msg = json.loads(body)
    assert isinstance(msg.get("message"), str) and msg["message"], body
    assert headers.get("connection", "").lower() == "close", headers


# ---- 1. keep-alive -----------------------------------------------------------

def test_keepalive_several_requests_on_one_connection(gateway):
    g = gateway(config("5s"))
    c = Conn(g)
    try:
        for i in range(4):
            c.send(b"GET /hello HTTP/1.1\r\nHost: test\r\n\r\n")
            st, h, body = c.response()
            assert st == 200 and json.loads(body) == {"hello": "world"}
            assert h.get("connection", "").lower() != "close", h
        c.send(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 3\r\n\r\nabc")
        st, h, body = c.response()
        assert st == 200 and json.loads(body) == {"body": "abc", "n": 3}
        assert not c.closed(0.2)      # still open for more
    finally:
        c.close()
    assert calls(g) == 5


def test_http10_without_keepalive_closes(gateway):
    g = gateway(config("5s"))
    c = Conn(g)
    try:
        c.send(b"GET /hello HTTP/1.0\r\n\r\n")
        st, h, body = c.response()
        assert st == 200 and json.loads(body) == {"hello": "world"}
        assert h.get("connection", "").lower() == "close", h
        assert c.closed(2) and c.buf == b""
    finally:
        c.close()


def test_http10_with_keepalive_stays_open(gateway):
    g = gateway(config("5s"))
    c = Conn(g)
    try:
        for _ in range(2):
            c.send(b"GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            st, h, body = c.response()
            assert st == 200
            assert h.get("connection", "").lower() == "keep-alive", h
        assert not c.closed(0.2)
    finally:
        c.close()


def test_connection_close_closes_after_response(gateway):
    g = gateway(config("5s"))
    c = Conn(g)
    try:
        c.send(b"GET /hello HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        st, h, body = c.response()
        assert st == 200 and json.loads(body) == {"hello": "world"}
        assert h.get("connection", "").lower() == "close", h
        assert c.closed(2) and c.buf == b""
    finally:
        c.close()


# ---- 2. pipelining -------------------------------------------------------------

def test_pipelined_requests_answered_in_order(gateway):
    g = gateway(config("5s"))
    c = Conn(g)
    try:
        # The slow route comes first: if responses were written as handlers
        # finish, /echo and /hello would overtake it.
        c.send(b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n"
               b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 11\r\n\r\nhello world"
               b"GET /hello HTTP/1.1\r\nHost: test\r\n\r\n"
               b"GET /hello?x=1 HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        got = [c.response() for _ in range(4)]
        assert [r[0] for r in got] == [200, 200, 200, 200]
        assert json.loads(got[0][2]) == {"slow": True}
        assert json.loads(got[1][2]) == {"body": "hello world", "n": 11}
        assert json.loads(got[2][2]) == {"hello": "world"}
        assert json.loads(got[3][2]) == {"hello": "world"}
        assert got[3][1].get("connection", "").lower() == "close"
        assert c.closed(2) and c.buf == b""
    finally:
        c.close()
    # (The access log is written when each request's log phase ends, which
    # need not be the response order: compare the set.)
    # Lines are flushed once per loop turn: give a slow (sanitizer) build time.
    deadline = time.time() + 5 * SLOW
    while len(g.access_log()) < 4 and time.time() < deadline:
        time.sleep(0.02)
    uris = sorted(e["uri"] for e in g.access_log())
    assert uris == ["/echo", "/hello", "/hello?x=1", "/slow"], uris


def test_many_pipelined_requests(gateway):
    g = gateway(config("5s"))
    c = Conn(g)
    n = 300
    try:
        batch = b"".join(b"GET /hello?i=%d HTTP/1.1\r\nHost: test\r\n\r\n" % i for i in range(n))
        batch += b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 4\r\n\r\nlast"
        c.send(batch)
        for i in range(n):
            st, h, body = c.response()
            assert st == 200 and json.loads(body) == {"hello": "world"}, (i, st, body)
        st, h, body = c.response()
        assert st == 200 and json.loads(body) == {"body": "last", "n": 4}
    finally:
        c.close()
    assert calls(g) == n + 1


# ---- 3. request bodies -----------------------------------------------------------

def test_chunked_body_with_extensions_and_trailer(gateway):
    g = gateway(config("5s"))
    c = Conn(g)
    try:
        c.send(b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"3;ext=1\r\nabc\r\n"
               b"A;name=\"quoted value\"\r\n0123456789\r\n"
               b"0\r\nX-Trailer: yes\r\n\r\n"
               b"GET /hello HTTP/1.1\r\nHost: test\r\n\r\n")
        st, h, body = c.response()
        assert st == 200 and json.loads(body) == {"body": "abc0123456789", "n": 13}
        st, h, body = c.response()     # the connection is still in sync
        assert st == 200 and json.loads(body) == {"hello": "world"}
    finally:
        c.close()


def test_body_split_across_sends(gateway):
    g = gateway(config("5s"))
    c = Conn(g)
    try:
        c.send(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-")
        time.sleep(0.05)
        c.send(b"Length: 12\r\n\r\nhel")
        time.sleep(0.05)
        c.send(b"lo wo")
        time.sleep(0.05)
        c.send(b"rld!")
        st, h, body = c.response()
        assert st == 200 and json.loads(body) == {"body": "hello world!", "n": 12}
        # A chunked body split inside the size line, data and CRLFs.
        for part in (b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n5",
                     b"\r\nab", b"cde\r", b"\n3\r\nfgh", b"\r\n0\r", b"\n\r\n"):
            c.send(part)
            time.sleep(0.03)
        st, h, body = c.response()
        assert st == 200 and json.loads(body) == {"body": "abcdefgh", "n": 8}
    finally:
        c.close()


def test_request_sent_byte_by_byte(gateway):
    g = gateway(config("5s"))
    c = Conn(g)
    data = (b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\nxy\r\nz"
            b"GET /hello HTTP/1.1\r\nHost: test\r\n\r\n")
    try:
        for i in range(len(data)):
            c.send(data[i:i + 1])
            time.sleep(0.001)
        st, h, body = c.response()
        assert st == 200 and json.loads(body) == {"body": "xy\r\nz", "n": 5}
        st, h, body = c.response()
        assert st == 200 and json.loads(body) == {"hello": "world"}
    finally:
        c.close()


# ---- 4. Expect: 100-continue ---------------------------------------------------------

def test_expect_100_continue(gateway):
    g = gateway(config("5s"))
    c = Conn(g)
    try:
        c.send(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n"
               b"Expect: 100-continue\r\n\r\n")
        c._fill(2 * SLOW)
        assert c.buf == b"HTTP/1.1 100 Continue\r\n\r\n", c.buf
        c.buf = b""
        c.send(b"hello")
        st, h, body = c.response()
        assert st == 200 and json.loads(body) == {"body": "hello", "n": 5}
    finally:
        c.close()


def test_expect_100_continue_too_large_gets_413_without_100(gateway):
    g = gateway(config("5s"))
    c = Conn(g)
    try:
        c.send(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 5000\r\n"
               b"Expect: 100-continue\r\n\r\n")
        assert c.closed(3), c.buf     # answered and closed without the body
        assert b"100 Continue" not in c.buf, c.buf
        st, h, body = try_parse(c.buf)[:3]
        assert_json_error(st, h, body, 413)
    finally:
        c.close()
    assert calls(g) == 0


# ---- 5. HEAD ---------------------------------------------------------------------

def test_head_same_headers_as_get_without_body(gateway):
    g = gateway(config("5s"))
    c = Conn(g)
    try:
        c.send(b"GET /hello HTTP/1.1\r\nHost: test\r\n\r\n")
        st_get, h_get, body_get = c.response()
        c.send(b"HEAD /hello HTTP/1.1\r\nHost: test\r\n\r\n")
        st, h, body = c.response(head=True)
        assert st == 200 == st_get
        assert h["content-length"] == h_get["content-length"] == str(len(body_get))
        assert h["content-type"] == h_get["content-type"]
        drop = {"date", "x-request-id"}
        assert {k for k in h if k not in drop} == {k for k in h_get if k not in drop}
        # No body: the next bytes on the connection are the next response.
        c.send(b"GET /calls HTTP/1.1\r\nHost: test\r\n\r\n")
        st, h, body = c.response()
        assert st == 200 and body.startswith(b"{"), body
        assert json.loads(body) == {"calls": 2}
    finally:
        c.close()


def test_head_on_streaming_route_has_no_body(gateway):
    g = gateway(config("5s"))
    c = Conn(g)
    try:
        c.send(b"HEAD /stream HTTP/1.1\r\nHost: test\r\n\r\n")
        st, h, body = c.response(head=True)
        assert st == 200
        assert "transfer-encoding" not in h, h
        c.send(b"GET /hello HTTP/1.1\r\nHost: test\r\n\r\n")
        st, h, body = c.response()
        assert st == 200 and json.loads(body) == {"hello": "world"}, c.buf[:200]
    finally:
        c.close()


# ---- 6. limits -------------------------------------------------------------------

def refused(g, data, timeout=3):
    """Sends `data`, expects a response then the close."""
    c = Conn(g)
    try:
        c.send(data)
        assert c.closed(timeout), "not closed; got %r" % c.buf[:300]
        r = try_parse(c.buf)
        assert r is not None, "no response: %r" % c.buf[:300]
        assert r[3] == b"", "bytes after the response: %r" % r[3][:200]
        return r[:3]
    finally:
        c.close()


def test_request_line_too_long_414(gateway):
    g = gateway(config())
    st, h, body = refused(g, b"GET /hello?" + b"a" * 3000 + b" HTTP/1.1\r\nHost: test\r\n\r\n")
    assert_json_error(st, h, body, 414)
    assert calls(g) == 0


def test_header_block_too_large_431(gateway):
    g = gateway(config())
    hdrs = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"v" * 100) for i in range(30))
    st, h, body = refused(g, b"GET /hello HTTP/1.1\r\nHost: test\r\n" + hdrs + b"\r\n")
    assert_json_error(st, h, body, 431)
    assert calls(g) == 0


def test_body_over_limit_content_length_413(gateway):
    g = gateway(config())
    st, h, body = refused(g, b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 2000\r\n\r\n"
                             + b"x" * 2000)
    assert_json_error(st, h, body, 413)
    assert calls(g) == 0


def test_body_over_limit_chunked_413(gateway):
    g = gateway(config())
    chunk = b"x" * 600
    data = (b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
            + (b"258\r\n" + chunk + b"\r\n") * 3 + b"0\r\n\r\n")
    st, h, body = refused(g, data)
    assert_json_error(st, h, body, 413)
    assert calls(g) == 0


def test_route_with_larger_body_limit_accepts_1_5_mb(gateway):
    g = gateway(config("5s"))
    n = 1536 * 1024
    payload = bytes(range(256)) * (n // 256)
    c = Conn(g, timeout=10)
    try:
        c.send(b"POST /big HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n" % n + payload)
        st, h, body = c.response(10)
        assert st == 200 and json.loads(body) == {"n": n}
        # The same size chunked.
        c.send(b"POST /big HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"".join(b"%x\r\n" % 65536 + payload[i:i + 65536] + b"\r\n"
                          for i in range(0, n, 65536)) + b"0\r\n\r\n")
        st, h, body = c.response(10)
        assert st == 200 and json.loads(body) == {"n": n}
    finally:
        c.close()
    # ... while the global 1k limit still holds for the other routes.
    st, h, body = refused(g, b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 1025\r\n\r\n")
    assert_json_error(st, h, body, 413)
    # And the big route's own limit holds too.
    st, h, body = refused(g, b"POST /big HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n"
                             % (2 * 1024 * 1024 + 1))
    assert_json_error(st, h, body, 413)


# ---- 7. timeouts -------------------------------------------------------------------

def test_partial_head_then_silence_408(gateway):
    g = gateway(config("5s"))
    c = Conn(g)
    try:
        t0 = time.time()
        c.send(b"GET /hello HTTP/1.1\r\nHost: test\r\n")
        assert c.closed(4), c.buf
        elapsed = time.time() - t0
        st, h, body = try_parse(c.buf)[:3]
        assert_json_error(st, h, body, 408)
        assert 0.8 <= elapsed <= 2.5 * SLOW, elapsed
    finally:
        c.close()
    assert calls(g) == 0


def test_partial_body_then_silence_408(gateway):
    g = gateway(config("5s"))
    c = Conn(g)
    try:
        t0 = time.time()
        c.send(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n\r\nabc")
        assert c.closed(4), c.buf
        elapsed = time.time() - t0
        st, h, body = try_parse(c.buf)[:3]
        assert_json_error(st, h, body, 408)
        assert 0.8 <= elapsed <= 2.5 * SLOW, elapsed
    finally:
        c.close()
    assert calls(g) == 0


def test_idle_keepalive_connection_closed_after_timeout(gateway):
    g = gateway(config("1s"))
    c = Conn(g)
    try:
        c.send(b"GET /hello HTTP/1.1\r\nHost: test\r\n\r\n")
        st, h, body = c.response()
        assert st == 200
        t0 = time.time()
        assert not c.closed(0.5, scale=False)   # not before the timeout...
        assert c.closed(3), c.buf          # ...but soon after it
        elapsed = time.time() - t0
        assert 0.8 <= elapsed <= 2.5 * SLOW, elapsed
        assert c.buf == b"", c.buf         # quietly: no 408 on an idle connection
    finally:
        c.close()


def test_silent_new_connection_closed_quietly(gateway):
    g = gateway(config("5s"))
    c = Conn(g)
    try:
        t0 = time.time()
        assert c.closed(4)
        elapsed = time.time() - t0
        assert 0.8 <= elapsed <= 2.5 * SLOW, elapsed
        assert c.buf == b"", c.buf
    finally:
        c.close()


# ---- 8. ambiguous framing ---------------------------------------------------------

H = b"Host: test\r\n"

FRAMING_CASES = {
    # RFC 9112 6.1: a message with both Transfer-Encoding and Content-Length
    # is a smuggling vector; the server MAY reject it and MUST close after.
    "cl_and_te": b"POST /echo HTTP/1.1\r\n" + H +
                 b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te_and_cl": b"POST /echo HTTP/1.1\r\n" + H +
                 b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    # RFC 9112 6.3 (5): differing Content-Length values (or a list of them)
    # make the length invalid: 400 and close.
    "two_content_lengths": b"POST /echo HTTP/1.1\r\n" + H +
                           b"Content-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
    "content_length_list": b"POST /echo HTTP/1.1\r\n" + H +
                           b"Content-Length: 3, 5\r\n\r\nabcde",
    # RFC 9112 7.1: chunk-size is 1*HEXDIG; anything else cannot be framed
    # (6.3 (4)/(5)): 400 and close.
    "invalid_chunk_size": b"POST /echo HTTP/1.1\r\n" + H +
                          b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    # RFC 9112 6.3 (5) / RFC 9110 8.6: Content-Length = 1*DIGIT; a sign or a
    # value that does not fit is an invalid length: 400 and close.
    "negative_content_length": b"POST /echo HTTP/1.1\r\n" + H +
                               b"Content-Length: -1\r\n\r\n",
    "overflowing_content_length": b"POST /echo HTTP/1.1\r\n" + H +
                                  b"Content-Length: 18446744073709551617\r\n\r\n",
    # RFC 9112 2.2: a recipient MAY take a bare LF as a line end, but a gateway
    # that does so can disagree with the next hop about where the head ends,
    # so moongate accepts CRLF only and answers 400.
    "bare_lf_request_line": b"GET /hello HTTP/1.1\n" + H + b"\r\n",
    "bare_lf_header": b"GET /hello HTTP/1.1\r\n" + H + b"X-A: 1\nX-B: 2\r\n\r\n",
    # RFC 9112 2.2: a bare CR MUST be treated as invalid (or replaced by SP);
    # moongate treats it as invalid: 400.
    "bare_cr_request_line": b"GET /hello HTTP/1.1\r" + H + b"\r\n",
    "bare_cr_header": b"GET /hello HTTP/1.1\r\n" + H + b"X-A: 1\rX-B: 2\r\n\r\n",
    # RFC 9112 5.1: no whitespace is allowed between a field name and the
    # colon; a server MUST reject such a message with 400.
    "space_before_colon": b"GET /hello HTTP/1.1\r\n" + H + b"X-A : 1\r\n\r\n",
    # ... which otherwise smuggles a second Host past the "one Host" check.
    "space_before_colon_host": b"GET /hello HTTP/1.1\r\nHost : evil\r\n" + H + b"\r\n",
    "space_before_colon_te": b"POST /echo HTTP/1.1\r\n" + H +
                             b"Transfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    # RFC 9112 5.2: obs-fold is obsolete; a server MUST reject it with 400 or
    # replace it with SP. moongate rejects it.
    "obs_fold": b"GET /hello HTTP/1.1\r\n" + H + b"X-A: one\r\n two\r\n\r\n",
    # RFC 9112 6.3 (4): a request whose final transfer coding is not chunked
    # cannot be framed: the server MUST answer 400 and close.
    "te_gzip": b"POST /echo HTTP/1.1\r\n" + H +
               b"Transfer-Encoding: gzip\r\n\r\nabc",
    "te_chunked_then_gzip": b"POST /echo HTTP/1.1\r\n" + H +
                            b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    # RFC 9112 3.2: a server MUST answer 400 to an HTTP/1.1 request without
    # Host or with more than one Host field.
    "missing_host": b"GET /hello HTTP/1.1\r\nX-A: 1\r\n\r\n",
    "two_hosts": b"GET /hello HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    # RFC 9112 3.2 / RFC 3986 5.2.4: dot segments are meant to be removed
    # before use; a gateway that routes on the raw path while a later hop
    # resolves them would be bypassed, so they are refused with 400.
    "dot_dot_segment": b"GET /a/../hello HTTP/1.1\r\n" + H + b"\r\n",
    "dot_segment": b"GET /./hello HTTP/1.1\r\n" + H + b"\r\n",
    # RFC 9112 3: a request line that does not parse is answered with 400
    # (RFC 9112 2.2: SHOULD respond 400 to an invalid request line).
    "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
    "http_version_2": b"GET /hello HTTP/2.0\r\n" + H + b"\r\n",
}


@pytest.mark.parametrize("name", list(FRAMING_CASES))
def test_ambiguous_framing_refused(gateway, name):
    g = gateway(config())
    data = FRAMING_CASES[name]
    c = Conn(g)
    try:
        c.send(data)
        closed = c.closed(3)
        r = try_parse(c.buf)
        assert r is not None, "no response to %r: got %r" % (data, c.buf[:300])
        st, h, body, rest = r
        assert st == 400, "%r -> %d %r" % (data, st, body)
        assert h.get("connection", "").lower() == "close", h
        assert json.loads(body)["message"], body
        assert closed, "connection left open after %r" % data
        assert rest == b"", "a second response after %r: %r" % (data, rest[:200])
    finally:
        c.close()
    assert calls(g) == 0, "the handler ran for %r" % data


# ---- 9. graceful shutdown -----------------------------------------------------

def test_graceful_shutdown(gateway):
    g = gateway(config("30s"))
    idle = Conn(g)
    busy = Conn(g)
    try:
        idle.send(b"GET /hello HTTP/1.1\r\nHost: test\r\n\r\n")
        assert idle.response()[0] == 200          # now an idle keep-alive connection
        busy.send(b"GET /sleep1 HTTP/1.1\r\nHost: test\r\n\r\n")
        time.sleep(0.2)                           # dispatched, sleeping
        t0 = time.time()
        g.proc.send_signal(signal.SIGTERM)
        # The idle connection is closed at once, without a response.
        assert idle.closed(0.5 * SLOW), "idle keep-alive connection not closed"
        assert idle.buf == b""
        assert time.time() - t0 < 0.5 * SLOW
        # New connections are refused while the in-flight request finishes.
        time.sleep(0.1)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", g.port), timeout=1).close()
        # The in-flight request completes, then its connection closes.
        st, h, body = busy.response(5)
        assert st == 200 and json.loads(body) == {"slept": True}
        assert h.get("connection", "").lower() == "close", h
        assert busy.closed(2)
        assert g.proc.wait(5 * SLOW) == 0
        assert time.time() - t0 < 3 * SLOW
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", g.port), timeout=1).close()
    finally:
        idle.close()
        busy.close()
    assert any(e["uri"] == "/sleep1" and e["status"] == 200 for e in g.access_log())


# ---- 10. clients that go away --------------------------------------------------

def test_client_disconnects_mid_request_and_mid_response(gateway):
    g = gateway(config("5s"))
    # Mid-head, mid-body (Content-Length and chunked), then gone.
    for data in (b"GET /hello HTTP/1.1\r\nHo",
                 b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\nabc",
                 b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nab"):
        c = Conn(g)
        c.send(data)
        time.sleep(0.05)
        c.close()
    # Mid-response: read a little of a stream, then go away (plain close and
    # a reset).
    for reset in (False, True):
        c = Conn(g)
        c.send(b"GET /stream HTTP/1.1\r\nHost: test\r\n\r\n")
        while len(c.buf) < 70000:
            assert c._fill(3 * SLOW), "stream stalled"
        if reset:
            c.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
    # Also a client that leaves while a handler sleeps.
    c = Conn(g)
    c.send(b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n")
    c.close()
    time.sleep(0.3)
    # The server goes on as before: plain requests, a full stream, pipelining.
    for _ in range(3):
        st, h, body = request(g, "/hello")
        assert st == 200 and json.loads(body) == {"hello": "world"}
    c = Conn(g)
    try:
        c.send(b"GET /stream HTTP/1.1\r\nHost: test\r\n\r\n"
               b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 2\r\n\r\nok")
        st, h, body = c.response(10)
        assert st == 200 and body == b"x" * STREAM_LEN
        st, h, body = c.response()
        assert st == 200 and json.loads(body) == {"body": "ok", "n": 2}
    finally:
        c.close()
    assert g.proc.poll() is None
    # 3 streams, 1 slow, 3 hellos, 1 echo; the aborted requests never ran.
    assert calls(g) == 8


def test_refused_requests_get_an_access_line(gateway):
    """A request the server refuses itself (400/414/431/408) is still logged
    as one JSON access line, with the client address and the status."""
    g = gateway(config())
    g.raw(b"GET /hello HTTP/1.1\r\nHost: test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
    deadline = time.time() + 5 * SLOW
    while time.time() < deadline and not any(l["status"] == 400 for l in g.access_log()):
        time.sleep(0.05)
    line = [l for l in g.access_log() if l["status"] == 400][-1]
    assert line["remote_ip"] == "127.0.0.1"
    assert line["uri"] == "/hello"
    assert line["request_id"] and line["bytes"] > 0


def test_keepalive_timeout_after_a_response_that_had_to_queue(gateway):
    """A response too big for one write is queued; once it is sent the
    connection must fall back to the keep-alive timeout, not to none."""
    cfg = """
    return { listen = "127.0.0.1:8080", limits = { keepalive_timeout = "1s" },
             routes = { { "GET", "/big", function() return 200, string.rep("x", 8 * 1024 * 1024) end } } }
    """
    g = gateway(cfg)
    s = g.connect()
    try:
        s.sendall(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
        got = b""
        time.sleep(0.3)                    # let the server queue most of it
        s.settimeout(5 * SLOW)
        while b"\r\n\r\n" not in got or len(got) - got.index(b"\r\n\r\n") - 4 < 8 * 1024 * 1024:
            b = s.recv(1 << 20)
            assert b, "closed before the body was complete"
            got += b
        t0 = time.time()
        s.settimeout(6 * SLOW)
        assert s.recv(100) == b""          # closed by the keep-alive timeout...
        assert time.time() - t0 < 4 * SLOW  # ...not left open forever
    finally:
        s.close()
