"""The native HTTP/1.1 upstream client (src/h1client.c), which carries every
http:// upstream request: keep-alive pooling, stale pooled connections,
response framing (Content-Length, chunked, close-delimited, HEAD, 1xx, 204,
304), malformed answers, timeouts and the fetch handle's info().

Most tests talk to a scripted upstream defined here: a raw-socket server
whose answer to each request is chosen by a Python function of (connection
number, request number on that connection, path), so a test can say exactly
what goes on the wire and when a connection closes."""
import json
import concurrent.futures
import socket
import threading
import time

import pytest
import requests

from conftest import SLOW, free_port, parse_response, requests_default_timeout, wait_until

requests_default_timeout()


class Scripted:
    """A loopback HTTP/1.1 server driven by `respond(conn_no, req_no, path)`,
    which returns a list of actions: bytes to send, "close" (close the
    connection now), "hold" (keep the connection open, answer nothing), or
    a float (sleep that many seconds). Connections and requests are counted
    from 1; `seen` lists (conn_no, req_no, request line)."""

    def __init__(self, respond):
        self.respond = respond
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.lock = threading.Lock()
        self.conns = 0
        self.seen = []
        self.open = []
        self.stopped = False
        threading.Thread(target=self.accept_loop, daemon=True).start()

    def accept_loop(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.conns += 1
                n = self.conns
                self.open.append(c)
            threading.Thread(target=self.serve, args=(c, n), daemon=True).start()

    def serve(self, c, conn_no):
        buf = b""
        req_no = 0
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    b = c.recv(65536)
                    if not b:
                        return
                    buf += b
                head, buf = buf.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                length = 0
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    if k.strip().lower() == "content-length":
                        length = int(v.strip())
                while len(buf) < length:
                    b = c.recv(65536)
                    if not b:
                        return
                    buf += b
                buf = buf[length:]
                req_no += 1
                with self.lock:
                    self.seen.append((conn_no, req_no, lines[0]))
                path = lines[0].split(" ")[1]
                for action in self.respond(conn_no, req_no, path):
                    if action == "close":
                        c.close()
                        return
                    if action == "hold":
                        while c.recv(65536):
                            pass
                        return
                    if isinstance(action, float):
                        time.sleep(action)
                    else:
                        c.sendall(action)
        except OSError:
            pass
        finally:
            try:
                c.close()
            except OSError:
                pass

    def stop(self):
        self.stopped = True
        self.sock.close()
        with self.lock:
            for c in self.open:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture
def scripted():
    made = []

    def make(respond):
        s = Scripted(respond)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


def ok(body=b'{"ok":true}', extra=b""):
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + extra +
            b"Content-Length: %d\r\n\r\n" % len(body) + body)


def proxy_config(url, extra=""):
    return """
return {
  listen = "127.0.0.1:8080",
  upstreams = { up = { targets = { "%s" }, retries = 0%s } },
  routes = { { "ANY", "/v1/*", proxy = "up" } },
}
""" % (url, extra)


# ---------------------------------------------------------------- pooling --

def test_concurrent_clients_share_a_few_kept_alive_connections(gateway, scripted):
    up = scripted(lambda conn, n, path: [ok(b'{"conn":%d}' % conn)])
    g = gateway(proxy_config(up.url))
    errors = []

    def client():
        try:
            with requests.Session() as s:
                for i in range(25):
                    r = s.get(g.url("/v1/x?i=%d" % i))
                    assert r.status_code == 200, r.text
        except Exception as e:      # noqa: BLE001 -- reported below
            errors.append(e)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(up.seen) == 200
    # At most one upstream connection per request in flight (8 clients), and
    # none made per request.
    assert up.conns <= 8, up.conns


def test_url_fetches_keep_enough_connections_alive_without_upstreams(gateway, scripted):
    # No `upstreams` in the config: req:fetch to a URL still keeps an idle
    # connection for each of many requests in flight (at least 64 per
    # worker). Two waves of 32 concurrent requests (the upstream takes 0.2 s,
    # so each wave is in flight together, then idle together): the second
    # wave reuses the first wave's 32 connections instead of reconnecting.
    def slow(conn, n, path):
        time.sleep(0.2)
        return [ok(b'{"conn":%d}' % conn)]
    up = scripted(slow)
    g = gateway("""
return {
  listen = "127.0.0.1:8080",
  routes = { { "GET", "/f", handler = function(req)
    local res, err = req:fetch("%s/x")
    if not res then return 502, err end
    return res.status, res.body
  end } },
}
""" % up.url, workers=1)

    def one(_):
        return requests.get(g.url("/f")).status_code

    with concurrent.futures.ThreadPoolExecutor(32) as ex:
        assert set(ex.map(one, range(32))) == {200}
        time.sleep(0.2)
        assert set(ex.map(one, range(32))) == {200}
    assert len(up.seen) == 64
    # never more connections than requests in flight at once (32); a pool of
    # 8 would have closed 24 after the first wave and opened them again
    assert up.conns <= 32, up.conns


def fetch_route_config(path, handler_body):
    """A gateway with one GET route whose Lua handler is handler_body (core
    and moongate.upstream in scope)."""
    return """
local core = require "moongate.core"
local upstream = require "moongate.upstream"
return {
  listen = "127.0.0.1:8080",
  routes = { { "GET", "%s", function(req)
%s
  end } },
}
""" % (path, handler_body)


def test_fetch_info_reports_connect_reuse_and_ip(gateway, scripted):
    up = scripted(lambda conn, n, path: [ok()])
    g = gateway(fetch_route_config("/info", """
    local h = core.fetch({ url = "%s/x" })
    local status = upstream.wait_head(h)
    local body = upstream.read_all(h)
    local info = h:info()
    h:close()
    return 200, { status = status, body = body, info = info }""" % up.url))
    first = requests.get(g.url("/info")).json()
    second = requests.get(g.url("/info")).json()
    assert first["status"] == 200 and first["body"] == '{"ok":true}'
    for out in (first, second):
        info = out["info"]
        assert set(info) == {"connect_ms", "first_byte_ms", "total_ms", "ip", "reused"}
        assert info["ip"] == "127.0.0.1"
        assert 0 <= info["connect_ms"] <= info["first_byte_ms"] <= info["total_ms"]
    assert first["info"]["reused"] is False and second["info"]["reused"] is True
    assert up.conns == 1


def test_fetch_handle_release_frees_it_and_ends_its_use(gateway, scripted):
    """close() keeps the head readable; release() (the runtime's, at the end
    of a proxied request) frees it too: every method raises afterwards, and
    the handle's collection runs no finalizer (it has no __gc any more)."""
    up = scripted(lambda conn, n, path: [ok()])
    g = gateway(fetch_route_config("/release", """
    local h = core.fetch({ url = "%s/x" })
    upstream.wait_head(h)
    h:close()
    local after_close = h:headers()["content-type"]
    local had_gc = getmetatable(h).__gc ~= nil
    h:release()
    local ok1, e1 = pcall(h.headers, h)
    local ok2, e2 = pcall(h.status, h)
    h:release()                                   -- a second release is harmless
    return 200, { after_close = after_close, had_gc = had_gc,
                  gc_after = getmetatable(h).__gc ~= nil,
                  headers_err = not ok1 and tostring(e1), status_err = not ok2 and tostring(e2) }""" % up.url))
    out = requests.get(g.url("/release")).json()
    assert out["after_close"] == "application/json"
    assert out["had_gc"] is True and out["gc_after"] is False
    assert "used after release" in out["headers_err"]
    assert "used after close" in out["status_err"]
    # the proxy path releases its handle at the end of every request
    g2 = gateway(proxy_config(up.url))
    for _ in range(3):
        assert requests.get(g2.url("/v1/a")).status_code == 200


def test_idle_connection_closed_by_the_upstream_is_not_used(gateway, scripted):
    """The upstream answers (keep-alive) and closes right after: the pooled
    connection hears the EOF and is dropped, the next request connects anew."""
    up = scripted(lambda conn, n, path: [ok(), 0.05, "close"])
    g = gateway(proxy_config(up.url))
    for i in range(3):
        assert requests.get(g.url("/v1/a")).status_code == 200
        time.sleep(0.3)
    assert up.conns == 3
    assert [s[:2] for s in up.seen] == [(1, 1), (2, 1), (3, 1)]


def test_stale_pooled_connection_is_retried_once_transparently(gateway, scripted):
    """The race a pool cannot see coming: the upstream takes the next
    request on a kept-alive connection and closes it without a byte of an
    answer. The request goes again on a new connection; the client never
    sees it. (Even for POST, as nginx and libcurl do: nothing was answered.)"""
    def respond(conn, n, path):
        if conn == 1 and n == 2:
            return ["close"]
        return [ok(b'{"conn":%d,"n":%d}' % (conn, n))]
    up = scripted(respond)
    g = gateway(proxy_config(up.url))
    with requests.Session() as s:
        assert s.get(g.url("/v1/a")).json() == {"conn": 1, "n": 1}
        r = s.post(g.url("/v1/b"), data=b"payload")
        assert r.status_code == 200, r.text
        assert r.json() == {"conn": 2, "n": 1}
    assert [x[:2] for x in up.seen] == [(1, 1), (1, 2), (2, 1)]
    assert up.seen[1][2] == up.seen[2][2] == "POST /v1/b HTTP/1.1"


def test_stale_connection_not_retried_once_the_answer_began(gateway, scripted):
    def respond(conn, n, path):
        if conn == 1 and n == 2:
            return [b"HTTP/1.1 200 OK\r\nContent-Len", "close"]
        return [ok()]
    up = scripted(respond)
    g = gateway(proxy_config(up.url))
    with requests.Session() as s:
        assert s.get(g.url("/v1/a")).status_code == 200
        r = s.get(g.url("/v1/b"))
    assert r.status_code == 502, r.text
    assert len(up.seen) == 2                      # no second attempt


def test_fresh_connection_dying_is_not_retried(gateway, scripted):
    up = scripted(lambda conn, n, path: ["close"])
    g = gateway(proxy_config(up.url))
    r = requests.get(g.url("/v1/a"))
    assert r.status_code == 502
    assert r.json() == {"message": "upstream closed the connection"}
    assert len(up.seen) == 1


# ---------------------------------------------------------------- framing --

FRAMING = {
    "/v1/cl": ok(b"content-length body"),
    "/v1/chunked": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"7;ext=1\r\nchunked\r\n1\r\n \r\n4\r\nbody\r\n0\r\nX-Trailer: t\r\n\r\n"),
    "/v1/204": b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
    "/v1/304": b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\nETag: \"e\"\r\n\r\n",
    "/v1/continue": b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"after 100"),
    "/v1/split": None,                          # sent in pieces, see below
}


def framing_respond(conn, n, path):
    path = path.split("?")[0]
    if path == "/v1/head":
        # The length of the GET body, and no body.
        return [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"]
    if path == "/v1/split":
        return [b"HTTP/1.1 200 OK\r\nTransfer-", 0.05, b"Encoding: chunked\r\n\r\n3\r\nab",
                0.05, b"c\r\n", 0.05, b"0\r\n\r\n"]
    if path == "/v1/eof":
        return [b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end", "close"]
    return [FRAMING[path]]


@pytest.mark.parametrize("path,status,body", [
    ("/v1/cl", 200, b"content-length body"),
    ("/v1/chunked", 200, b"chunked body"),
    ("/v1/204", 204, b""),
    ("/v1/304", 304, b""),
    ("/v1/continue", 200, b"after 100"),
    ("/v1/split", 200, b"abc"),
    ("/v1/eof", 200, b"until the end"),
])
def test_response_framing_and_the_connection_stays_in_step(gateway, scripted, path, status, body):
    up = scripted(framing_respond)
    g = gateway(proxy_config(up.url))
    with requests.Session() as s:
        r = s.get(g.url(path))
        assert (r.status_code, r.content) == (status, body)
        # The same upstream connection answers the next request correctly
        # (unless the answer was delimited by the close).
        r = s.get(g.url("/v1/cl"))
        assert (r.status_code, r.content) == (200, b"content-length body")
    assert len(up.seen) == 2
    assert up.conns == (2 if path == "/v1/eof" else 1), up.seen


def test_head_answer_has_no_body_and_keeps_the_connection(gateway, scripted):
    up = scripted(framing_respond)
    g = gateway(proxy_config(up.url))
    with requests.Session() as s:
        r = s.head(g.url("/v1/head"))
        assert r.status_code == 200 and r.headers["content-length"] == "100"
        r = s.get(g.url("/v1/cl"))
        assert r.content == b"content-length body"
    assert up.conns == 1 and up.seen[0][2].startswith("HEAD ")


def test_large_chunked_body_streams_through(gateway, scripted):
    piece = b"x" * 70000
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(30))
    up = scripted(lambda conn, n, path: [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"])
    g = gateway(proxy_config(up.url))
    r = requests.get(g.url("/v1/big"))
    assert r.status_code == 200 and r.content == piece * 30


# --------------------------------------------------------------- failures --

@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 abc Nope\r\n\r\n",
    b"this is not http\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
])
def test_malformed_answer_is_502(gateway, scripted, answer):
    up = scripted(lambda conn, n, path: [answer, "hold"] if conn == 1 else [ok()])
    g = gateway(proxy_config(up.url))
    r = requests.get(g.url("/v1/bad"))
    assert r.status_code == 502, r.text
    assert r.json() == {"message": "upstream closed the connection"}
    # The broken connection is not reused.
    assert requests.get(g.url("/v1/next")).status_code == 200
    assert up.conns == 2


def test_bytes_after_a_complete_answer_drop_the_connection(gateway, scripted):
    up = scripted(lambda conn, n, path: [ok() + b"HTTP/1.1 200 OK\r\n"] if conn == 1 else [ok()])
    g = gateway(proxy_config(up.url))
    assert requests.get(g.url("/v1/a")).status_code == 200
    assert requests.get(g.url("/v1/b")).status_code == 200
    assert up.conns == 2


def test_upstream_stalling_mid_body_hits_read_timeout(gateway, scripted):
    """Head and part of the body, then silence: read_timeout ends it, and the
    client's connection is closed (it never takes the cut body for whole)."""
    up = scripted(lambda conn, n, path: [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"y" * 70000, "hold"])
    g = gateway(proxy_config(up.url, ', read_timeout = "500ms", timeout = "30s"'))
    s = g.connect()
    t0 = time.time()
    s.sendall(b"GET /v1/stall HTTP/1.1\r\nHost: x\r\n\r\n")
    s.settimeout(10 * SLOW)
    got = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        got += b
    took = time.time() - t0
    s.close()
    assert got.startswith(b"HTTP/1.1 200")
    assert len(got.split(b"\r\n\r\n", 1)[1]) < 100000
    assert took < 5 * SLOW, took


def test_total_timeout_before_the_head_is_504(gateway, scripted):
    up = scripted(lambda conn, n, path: ["hold"])
    g = gateway(proxy_config(up.url, ', timeout = "400ms"'))
    t0 = time.time()
    r = requests.get(g.url("/v1/slow"))
    assert r.status_code == 504 and r.json() == {"message": "upstream timed out"}
    assert time.time() - t0 < 3 * SLOW


def test_connect_refused_localhost_and_dns(gateway, scripted):
    up = scripted(lambda conn, n, path: [ok(b'{"via":"localhost"}')])
    dead = free_port()
    g = gateway("""
return {
  listen = "127.0.0.1:8080",
  upstreams = { up = { targets = { "http://localhost:%d" }, retries = 0 } },
  routes = {
    { "GET", "/v1/*", proxy = "up" },
    { "GET", "/refused", function(req)
        local res, kind = req:fetch("http://127.0.0.1:%d/x")
        return 200, { kind = kind }
      end },
    { "GET", "/dns", function(req)
        local res, kind = req:fetch("http://no-such-host.invalid/x", { timeout = 5 })
        return 200, { kind = kind }
      end },
  },
}
""" % (up.port, dead))
    assert requests.get(g.url("/v1/x")).json() == {"via": "localhost"}
    assert requests.get(g.url("/refused")).json() == {"kind": "connect"}
    assert requests.get(g.url("/dns")).json()["kind"] in ("dns", "timeout")


HELD_CONFIG = """
return {
  listen = "127.0.0.1:8080",
  routes = {
    { "GET", "/members/*", function(req)
        local res, kind = req:fetch("%s" .. req.path, { stream = true })
        if not res then return 502, kind end
        local usage, model, msg = res:json_member("usage", "model")
        if usage == nil then return 200, { failed = model, message = msg } end
        -- the answer itself goes back, from the C side
        return 200, res, { ["X-Usage"] = tostring(usage), ["X-Model"] = tostring(model) }
      end },
    { "GET", "/whole/*", function(req)
        local res = req:fetch("%s" .. req.path, { stream = true })
        return 200, res          -- not held first: the runtime waits for all of it
      end },
    { "GET", "/headers/*", function(req)
        local res = req:fetch("%s" .. req.path, { stream = true })
        local text = res:read_all()       -- closes it; the headers stay readable
        return 200, { ctype = res.headers["content-type"], extra = res.headers["x-extra"], len = #text }
      end },
  },
}
"""


ARITY_CONFIG = """
return {
  listen = "127.0.0.1:8080",
  routes = {
    { "GET", "/arity/*", function(req)
        local res = req:fetch("%s" .. req.path, { stream = true })
        local a, b, c, d = res:json_member("a", "b", "c", "d")
        local x, y, z = res:json_member("a", "none", "c")
        local misuse, err = pcall(res.json_member, res, "a", nil, nil, "d")
        return 200, {
          n = { select("#", res:json_member("a")), select("#", res:json_member("a", "b")),
                select("#", res:json_member("a", "b", "c")), select("#", res:json_member("a", "b", "c", "d")) },
          one = res:json_member("c"), four = { a, b, c, d }, three = { x, y, z },
          misuse = misuse, misuse_err = tostring(err),
        }
      end },
    { "GET", "/bad/*", function(req)
        local out = {}
        for n = 1, 4 do
          local res = req:fetch("%s" .. req.path, { stream = true })
          local v, kind, msg = res:json_member(unpack({ "a", "b", "c", "d" }, 1, n))
          out[n] = { v == nil, kind, type(msg) }
        end
        return 200, out
      end },
  },
}
"""


def test_json_member_gives_one_result_per_key_for_any_number_of_keys(gateway, scripted):
    """res:json_member() takes one to three keys without varargs and more the
    general way: one result per key either way (false when absent), nil,
    "invalid", reason for an answer that is not a JSON object, and an error
    for a missing key before a given one."""
    def respond(conn, n, path):
        if path.startswith("/bad/"):
            return [ok(b'[1,2]')]
        return [ok(b'{"a":1,"b":"x","c":[2],"d":null}')]

    up = scripted(respond)
    g = gateway(ARITY_CONFIG % (up.url, up.url), workers=1)
    j = requests.get(g.url("/arity/x")).json()
    assert j["n"] == [1, 2, 3, 4]
    assert j["one"] == "[2]" and j["four"] == ["1", '"x"', "[2]", "null"] and j["three"] == ["1", False, "[2]"]
    assert j["misuse"] is False and "string expected" in j["misuse_err"]
    assert requests.get(g.url("/bad/x")).json() == [[True, "invalid", "string"]] * 4


def test_a_held_answer_is_scanned_and_sent_from_the_c_side(gateway, scripted):
    """res:json_member() keeps the answer on the C side: its members come
    back as JSON texts and the handler answers with the response itself --
    byte for byte, with the upstream's Content-Type unless it sets one."""
    big = b'{"data":"' + b"x" * 600000 + b'","usage":{"total_tokens":7}}'   # over the 256k read-ahead

    def respond(conn, n, path):
        if path == "/members/ok":
            return [ok(b'{"id":"a","usage":{"prompt_tokens":1}, "model":"m1"}')]
        if path == "/members/big":
            return [b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                    % len(big), big[:1000], 0.2, big[1000:]]
        if path == "/members/chunked":
            return [b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"5\r\n{\"a\":\r\n3\r\n[1]\r\n1\r\n}\r\n0\r\n\r\n"]
        if path == "/members/text":
            return [b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"]
        if path in ("/members/cut", "/whole/cut"):
            return [b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\":", "close"]
        if path == "/whole/text":
            return [b"HTTP/1.1 200 OK\r\nContent-Type: text/csv\r\nContent-Length: 4\r\n\r\na,b\n"]
        return [ok(extra=b"X-Extra: 1\r\n")]

    up = scripted(respond)
    g = gateway(HELD_CONFIG % (up.url, up.url, up.url), workers=1)
    r = requests.get(g.url("/members/ok"))
    assert r.status_code == 200 and r.content == b'{"id":"a","usage":{"prompt_tokens":1}, "model":"m1"}'
    assert r.headers["X-Usage"] == '{"prompt_tokens":1}' and r.headers["X-Model"] == '"m1"'
    assert r.headers["Content-Type"] == "application/json"
    r = requests.get(g.url("/members/big"))
    assert r.status_code == 200 and r.content == big and r.headers["X-Usage"] == '{"total_tokens":7}'
    assert r.headers["X-Model"] == "false"                       # absent
    r = requests.get(g.url("/members/chunked"))
    assert r.content == b'{"a":[1]}' and r.headers["X-Usage"] == "false"
    # not a JSON object: nil, "invalid", message
    assert requests.get(g.url("/members/text")).json() == {"failed": "invalid", "message": "not a JSON object"}
    # broke off mid-body: nil, kind, message
    got = requests.get(g.url("/members/cut")).json()
    assert got["failed"] == "reset", got
    # a fetched answer returned unread: awaited whole, or the failure's status
    r = requests.get(g.url("/whole/text"))
    assert r.status_code == 200 and r.content == b"a,b\n" and r.headers["Content-Type"] == "text/csv"
    r = requests.get(g.url("/whole/cut"))
    assert r.status_code == 502 and r.json() == {"message": "upstream closed the connection"}
    assert requests.get(g.url("/members/ok")).status_code == 200     # the worker is fine
    # a streamed answer's headers are built when read, also after close()
    assert requests.get(g.url("/headers/x")).json() == {"ctype": "application/json", "extra": "1", "len": 11}


def test_a_proxied_body_stays_in_c_until_lua_reads_it(gateway, scripted, tmp_path):
    """A complete small proxied answer is sent from the fetch handle; a
    response policy that reads res.body gets the string (and may change it),
    one that sets it replaces it, and a log-phase policy can still read the
    body and headers after the answer went out."""
    body = b'{"id":"x1","n":1}'
    up = scripted(lambda conn, n, path: [ok(body, extra=b"X-Up: yes\r\n")])
    logfile = tmp_path / "seen.txt"
    policies = {
        "mine/peek.lua": """
return {
  schema = { mode = { type = "string" } },
  response = function(conf, req, res)
    if conf.mode == "read" then res.body = res.body:gsub("x1", "y2") end
    if conf.mode == "set" then res.body = { replaced = true } end
  end,
  log = function(conf, req, res)
    local f = io.open(%s, "a")
    f:write(conf.mode, " ", tostring(res.body), " ", tostring(res.headers["x-up"]), "\\n")
    f:close()
  end,
}
""" % json.dumps(str(logfile)),
    }
    g = gateway("""
return {
  listen = "127.0.0.1:8080",
  policy_paths = { "mine" },
  upstreams = { up = { targets = { "%s" } } },
  routes = {
    { "GET", "/plain", proxy = "up", policies = { { "peek", mode = "none" } } },
    { "GET", "/read", proxy = "up", policies = { { "peek", mode = "read" } } },
    { "GET", "/set", proxy = "up", policies = { { "peek", mode = "set" } } },
  },
}
""" % up.url, files=policies)
    r = requests.get(g.url("/plain"))
    assert r.content == body and r.headers["X-Up"] == "yes"
    r = requests.get(g.url("/read"))
    assert r.content == b'{"id":"y2","n":1}' and r.headers["X-Up"] == "yes"
    r = requests.get(g.url("/set"))
    assert r.json() == {"replaced": True}
    wait_until(lambda: logfile.exists() and len(logfile.read_text().splitlines()) == 3)
    lines = logfile.read_text().splitlines()
    assert lines[0] == 'none {"id":"x1","n":1} yes', lines     # read after it was sent
    assert lines[1] == 'read {"id":"y2","n":1} yes', lines
    assert lines[2].startswith("set table: ") and lines[2].endswith(" yes"), lines


def test_a_waiting_call_returns_its_results_at_the_wake_up(gateway, scripted):
    # head(), status() and hold() called once each, the upstream answering
    # 0.2 s later: after the wait they return what they would have returned
    # had the answer been there (one call, not a second one to ask again);
    # a failure after a wait comes back the same way.
    up = scripted(lambda conn, n, path: [0.2, ok()] if path != "/dead" else [0.2, "close"])
    g = gateway("""
local core = require "moongate.core"
return {
  listen = "127.0.0.1:8080",
  routes = { { "GET", "/once", function(req)
    local a = core.fetch({ url = "%s/a" })
    local status = a:status()
    local held = a:hold()
    local body = a:rest()
    a:close()
    local b = core.fetch({ url = "%s/b" })
    local hs, hh = b:head()
    b:close()
    local c = core.fetch({ url = "%s/c" })
    local cheld = c:hold()
    c:close()
    local d = core.fetch({ url = "%s/dead" })
    local dn, dkind = d:status()
    d:close()
    return 200, { status = status, held = held, body = body, head_status = hs,
                  head_type = hh and hh["content-type"], c_held = cheld,
                  dead = { dn == nil, dkind } }
  end } },
}
""" % (up.url, up.url, up.url, up.url))
    out = requests.get(g.url("/once")).json()
    assert out == {"status": 200, "held": True, "body": '{"ok":true}', "head_status": 200,
                   "head_type": "application/json", "c_held": True, "dead": [True, "reset"]}, out
