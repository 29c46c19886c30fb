"""The Lua request API, the router, health checks and workers, over real
HTTP against a real moongate."""
import asyncio
import json
import socket
import threading
import time

import requests

from conftest import SLOW, parse_response, read_all, wait_until, requests_default_timeout

requests_default_timeout()

API = """
return {
  listen = "127.0.0.1:8080",
  routes = {
    { "ANY", "/echo", function(req)
        return 200, {
          method = req.method, path = req.path, query_string = req.query_string,
          query = req.query, remote_addr = req.remote_addr, id = req.id,
          route = req.route,
        }
      end },
    { "GET", "/headers", function(req)
        return 200, {
          lower = req.headers["x-foo"], upper = req.headers["X-Foo"],
          mixed = req.headers["x-FOO"], via_method = req:header("X-FOO"),
          missing = req.headers["x-not-sent"] == nil,
          all = req:all_headers()["x-foo"],
        }
      end },
    { "POST", "/body", function(req)
        local raw = req:body()
        local v, err = req:json()
        return 200, { raw = raw, len = #raw, json = v, json_ok = v ~= nil,
                      err = err and tostring(err) or nil }
      end },
    { "GET", "/users/:id/posts/:post", function(req)
        return 200, { id = req.params.id, post = req.params.post }
      end },
    { "GET", "/text", function(req) return 200, "plain words" end },
    { "GET", "/custom", function(req)
        return 201, { made = true }, { ["X-Custom"] = "yes", ["Cache-Control"] = "no-store" }
      end },
    { "GET", "/html", function(req)
        return 200, "<p>hi</p>", { ["Content-Type"] = "text/html" }
      end },
    { "GET", "/sse", function(req)
        req:stream(200, { ["Content-Type"] = "text/event-stream" })
        req:write("data: one\\n\\n")
        req:sleep(1)
        req:write("data: two\\n\\n")
      end },
    { "GET", "/sleep", function(req)
        req:sleep(1)
        return 200, { slept = true }
      end },
    { "GET", "/require", function(req)
        local m = require "mylib"
        local h = require "helpers.util"
        return 200, { answer = m.answer, util = h.name }
      end },
    { "GET", "/require-from-file", handler = "routes/uses_lib.lua" },
  },
}
"""

FILES = {
    "mylib.lua": "return { answer = 42 }\n",
    "helpers/util.lua": "return { name = 'util' }\n",
    "routes/uses_lib.lua": """
        local m = require "mylib"
        return function(req) return 200, { answer = m.answer } end
    """,
}


def test_method_path_and_basic_fields(gateway):
    g = gateway(API, files=FILES)
    r = requests.post(g.url("/echo"), data="x")
    assert r.status_code == 200
    j = r.json()
    assert j["method"] == "POST"
    assert j["path"] == "/echo"
    assert j["remote_addr"] == "127.0.0.1"
    assert j["id"] and j["id"] == r.headers["x-request-id"]
    r = requests.put(g.url("/echo"))
    assert r.json()["method"] == "PUT"
    r = requests.delete(g.url("/echo?x=1"))
    assert r.json()["method"] == "DELETE"
    assert r.json()["path"] == "/echo"  # the path has no query string
    # Every request gets its own ID.
    ids = {requests.get(g.url("/echo")).json()["id"] for _ in range(5)}
    assert len(ids) == 5


def test_query_args(gateway):
    g = gateway(API, files=FILES)
    r = requests.get(g.url("/echo?a=1&b=x&b=y&b=z&msg=hello%20world%21&plus=a+b&enc%5Bk%5D=v&flag"))
    j = r.json()
    assert j["query_string"] == "a=1&b=x&b=y&b=z&msg=hello%20world%21&plus=a+b&enc%5Bk%5D=v&flag"
    q = j["query"]
    assert q["a"] == "1"
    assert q["b"] == ["x", "y", "z"]          # repeated keys become a list, in order
    assert q["msg"] == "hello world!"         # percent-decoded
    assert q["plus"] == "a b"                 # '+' is a space
    assert q["enc[k]"] == "v"                 # keys are decoded too
    assert q["flag"] is True                  # a key without '=' is true
    # No query string: an empty table (cjson encodes it as {}).
    j = requests.get(g.url("/echo")).json()
    assert j["query_string"] == ""
    assert j["query"] in ({}, [])


def test_headers_are_case_insensitive(gateway):
    g = gateway(API, files=FILES)
    r = requests.get(g.url("/headers"), headers={"X-Foo": "bar"})
    j = r.json()
    assert j["lower"] == "bar"
    assert j["upper"] == "bar"
    assert j["mixed"] == "bar"
    assert j["via_method"] == "bar"
    assert j["all"] == "bar"
    assert j["missing"] is True
    # And sent lower-case, read with any case.
    r = requests.get(g.url("/headers"), headers={"x-foo": "baz"})
    assert r.json()["upper"] == "baz"


def test_a_repeated_header_reads_as_one_comma_joined_value(gateway):
    g = gateway(API, files=FILES)
    with socket.create_connection(("127.0.0.1", g.port), timeout=5) as s:
        s.sendall(b"GET /headers HTTP/1.1\r\nHost: x\r\nX-Foo: a\r\nX-Other: o\r\n"
                  b"x-foo: b\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    status, _, body, _ = parse_response(data)
    assert status == 200, data
    j = json.loads(body)
    assert j["via_method"] == "a, b" and j["lower"] == "a, b" and j["all"] == "a, b", j


def test_raw_body_and_json(gateway):
    g = gateway(API, files=FILES)
    payload = {"name": "moon", "n": [1, 2, 3], "nested": {"ok": True}}
    text = json.dumps(payload)
    r = requests.post(g.url("/body"), data=text, headers={"Content-Type": "application/json"})
    j = r.json()
    assert j["raw"] == text and j["len"] == len(text)
    assert j["json_ok"] is True
    assert j["json"] == payload
    # Bad JSON: nil, err -- the handler keeps running and sees the error.
    r = requests.post(g.url("/body"), data="{not json")
    assert r.status_code == 200
    j = r.json()
    assert j["raw"] == "{not json"
    assert j["json_ok"] is False
    assert isinstance(j["err"], str) and j["err"]
    # Binary body survives byte for byte (length checked).
    blob = bytes(range(256)) * 4
    r = requests.post(g.url("/body"), data=blob)
    assert r.json()["len"] == len(blob)
    # No body: "" and (nil, err).
    r = requests.post(g.url("/body"))
    j = r.json()
    assert j["raw"] == "" and j["len"] == 0 and j["json_ok"] is False and j["err"]


def test_route_params(gateway):
    g = gateway(API, files=FILES)
    r = requests.get(g.url("/users/42/posts/abc-def"))
    assert r.status_code == 200
    assert r.json() == {"id": "42", "post": "abc-def"}
    # A parameter never matches an empty segment or several segments.
    assert requests.get(g.url("/users//posts/x")).status_code == 404
    assert requests.get(g.url("/users/1/2/posts/x")).status_code == 404


PEER = """
local kept                                  -- a request object kept past its request
return {
  listen = "127.0.0.1:8080",
  routes = {
    { "GET", "/stash", function(req) kept = req; return 200, "kept" end },
    { "GET", "/peer", function(req)
        return 200, { addr = req.remote_addr, port = req.remote_port,
                      nparams = #req.params + (next(req.params) and 1 or 0) }
      end },
    { "GET", "/kept", function()
        local ok, err = pcall(function() return kept.remote_port end)
        return 200, { ok = ok, err = tostring(err) }
      end },
  },
}
"""


def test_client_address_and_params_are_read_when_asked(gateway):
    """remote_addr, remote_port and params come from the server on first use:
    right during the request, an error (not another request's values) after."""
    g = gateway(PEER)
    with socket.create_connection(("127.0.0.1", g.port), timeout=5) as s:
        s.sendall(b"GET /peer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status, _, body, _ = parse_response(read_all(s))
        assert status == 200
        assert json.loads(body) == {"addr": "127.0.0.1", "port": s.getsockname()[1], "nparams": 0}
    assert requests.get(g.url("/stash")).text == "kept"
    j = requests.get(g.url("/kept")).json()
    assert j["ok"] is False and "after its request finished" in j["err"], j


def test_answer_shapes(gateway):
    g = gateway(API, files=FILES)
    r = requests.get(g.url("/text"))
    assert r.status_code == 200
    assert r.text == "plain words"
    assert r.headers["content-type"].startswith("text/plain")
    assert r.headers["content-length"] == str(len("plain words"))
    r = requests.get(g.url("/custom"))
    assert r.status_code == 201
    assert r.json() == {"made": True}
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-custom"] == "yes"
    assert r.headers["cache-control"] == "no-store"
    r = requests.get(g.url("/html"))
    assert r.headers["content-type"] == "text/html"
    assert r.text == "<p>hi</p>"


def test_streaming_chunks_arrive_as_written(gateway):
    g = gateway(API, files=FILES)
    s = g.connect(timeout=5)
    try:
        t0 = time.monotonic()
        s.sendall(b"GET /sse HTTP/1.1\r\nHost: x\r\n\r\n")
        buf = b""
        t_first = t_second = None
        s.settimeout(5 * SLOW)
        while t_second is None:
            b = s.recv(65536)
            if not b:
                break
            buf += b
            if t_first is None and b"data: one" in buf:
                t_first = time.monotonic() - t0
            if b"data: two" in buf:
                t_second = time.monotonic() - t0
        # Read the terminating chunk too.
        while not buf.endswith(b"0\r\n\r\n"):
            b = s.recv(65536)
            if not b:
                break
            buf += b
    finally:
        s.close()
    assert t_first is not None, buf
    assert t_second is not None, buf
    # Event 1 is on the wire before the handler wakes up to write event 2.
    assert t_first < 0.6 * SLOW, "first event took %.2fs" % t_first
    assert t_second - t_first > 0.6, (t_first, t_second)
    st, h, body, _ = parse_response(buf)
    assert st == 200
    assert h["transfer-encoding"] == "chunked"
    assert h["content-type"] == "text/event-stream"
    assert body == b"data: one\n\ndata: two\n\n"


async def _one_request(port, path):
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port), 10 * SLOW)
    try:
        writer.write(("GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path).encode())
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10 * SLOW)
    finally:
        writer.close()


async def _many(port, path, n):
    return await asyncio.gather(*[_one_request(port, path) for _ in range(n)],
                                return_exceptions=True)


def test_sleep_does_not_block_the_worker(gateway):
    g = gateway(API, files=FILES, workers=1)
    n = 1000
    t0 = time.monotonic()
    results = asyncio.run(_many(g.port, "/sleep", n))
    elapsed = time.monotonic() - t0
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, "%d failed, e.g. %r" % (len(errors), errors[:3])
    statuses = [parse_response(r)[0] for r in results]
    assert statuses.count(200) == n
    assert all(json.loads(parse_response(r)[2]) == {"slept": True} for r in results)
    # Serialized, this would take 1000 s; concurrently, about 1 s.
    assert elapsed < 3.0 * SLOW, "1000 sleeping requests took %.2fs" % elapsed
    assert elapsed >= 0.95


def test_require_finds_modules_next_to_the_config(gateway):
    g = gateway(API, files=FILES)
    r = requests.get(g.url("/require"))
    assert r.status_code == 200, r.text
    assert r.json() == {"answer": 42, "util": "util"}
    r = requests.get(g.url("/require-from-file"))
    assert r.status_code == 200, r.text
    assert r.json() == {"answer": 42}


# ---- router over HTTP ------------------------------------------------------

ROUTER = """
return {
  routes = {
    { "GET", "/items/:id", function(req) return 200, { route = "param", id = req.params.id } end },
    { "GET", "/items/special", function(req) return 200, { route = "exact" } end },
    { "GET", "/files/*", function(req) return 200, { route = "wild", rest = req.params["*"] } end },
    { "GET", "/site", host = "a.example.com", function(req) return 200, { route = "host-a" } end },
    { "GET", "/site", host = "*.wild.test", function(req) return 200, { route = "host-wild" } end },
    { "GET", "/site", function(req) return 200, { route = "any-host" } end },
    { { "GET", "POST" }, "/thing", function(req) return 200, { route = "thing" } end },
  },
}
"""


def test_router_params_exact_and_wildcard(gateway):
    g = gateway(ROUTER)
    assert requests.get(g.url("/items/7")).json() == {"route": "param", "id": "7"}
    # Exact beats a parameter, whatever the declaration order.
    assert requests.get(g.url("/items/special")).json() == {"route": "exact"}
    assert requests.get(g.url("/files/a/b/c.txt")).json() == {"route": "wild", "rest": "a/b/c.txt"}
    assert requests.get(g.url("/files/x")).json() == {"route": "wild", "rest": "x"}
    assert requests.get(g.url("/filesystem")).status_code == 404


def test_router_hosts(gateway):
    g = gateway(ROUTER)
    get = lambda host: requests.get(g.url("/site"), headers={"Host": host}).json()["route"]
    assert get("a.example.com") == "host-a"
    assert get("a.example.com:8080") == "host-a"
    assert get("b.example.com") == "any-host"
    assert get("x.wild.test") == "host-wild"
    assert get("elsewhere.org") == "any-host"


def test_404_and_405_bodies(gateway):
    g = gateway(ROUTER)
    r = requests.get(g.url("/nope"))
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"message": "not found"}
    r = requests.delete(g.url("/thing"))
    assert r.status_code == 405
    assert r.json() == {"message": "method not allowed"}
    allow = {m.strip() for m in r.headers["allow"].split(",")}
    assert {"GET", "POST"} <= allow
    assert "DELETE" not in allow
    # Still a working connection afterwards.
    assert requests.post(g.url("/thing")).json() == {"route": "thing"}


# ---- health ----------------------------------------------------------------

def test_health_default(gateway):
    g = gateway(ROUTER)
    r = requests.get(g.url("/health"))
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


def test_health_moved(gateway):
    g = gateway("""
        return { health = "/healthz",
                 routes = { { "GET", "/a", function() return 200, "a" end } } }
    """)
    r = requests.get(g.url("/healthz"))
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert requests.get(g.url("/health")).status_code == 404


def test_health_disabled(gateway):
    g = gateway("""
        return { health = false,
                 routes = { { "GET", "/a", function() return 200, "a" end } } }
    """)
    assert requests.get(g.url("/health")).status_code == 404
    assert requests.get(g.url("/a")).status_code == 200


# ---- workers ---------------------------------------------------------------

WORKERS = """
return {
  routes = {
    { "GET", "/fast", function(req) return 200, { ok = true } end },
    { "GET", "/boom", function(req) error("kaboom") end },
    { "GET", "/slow", function(req) req:sleep(2) return 200, { slow = true } end },
  },
}
"""


def test_workers_keep_serving_through_errors_and_slow_requests(gateway):
    g = gateway(WORKERS, workers=2)
    slow_results = []

    def slow():
        slow_results.append(requests.get(g.url("/slow"), timeout=10 * SLOW).status_code)

    threads = [threading.Thread(target=slow) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    for i in range(30):
        if i % 3 == 0:
            r = requests.get(g.url("/boom"), timeout=5)
            assert r.status_code == 500
            assert r.json() == {"message": "internal server error"}
        r = requests.get(g.url("/fast"), timeout=5)
        assert r.status_code == 200 and r.json() == {"ok": True}
    fast_elapsed = time.monotonic() - t0
    # All of that happened while the slow requests were still sleeping.
    assert fast_elapsed < 1.5 * SLOW, fast_elapsed
    assert all(t.is_alive() for t in threads)   # the slow ones are still in flight
    for t in threads:
        t.join()
    assert slow_results == [200] * 4
    # Errors never took a worker down: many new connections still succeed.
    for _ in range(20):
        assert requests.get(g.url("/fast"), timeout=5).status_code == 200
    assert g.proc.poll() is None


def test_waiting_inside_an_own_coroutine_is_a_clear_error(gateway):
    """A handler's own coroutine.wrap around req:sleep would swallow the
    runtime's yield; it is refused with a message, and the worker goes on."""
    g = gateway("""
    return { listen = "127.0.0.1:8080", routes = {
      { "GET", "/co", function(req)
          local f = coroutine.wrap(function() req:sleep(0.01) end)
          f()
          return 200, "not reached"
        end },
      { "GET", "/ok", function(req) req:sleep(0.01) return 200, "fine" end } } }
    """)
    r = requests.get(g.url("/co"))
    assert r.status_code == 500 and r.json() == {"message": "internal server error"}
    assert any("cannot wait inside a coroutine created by Lua code" in l["msg"]
               for l in g.error_log())
    assert requests.get(g.url("/ok")).text == "fine"


GC_PAUSE = """
return {
  listen = "127.0.0.1:8080",
  %s
  routes = {
    { "GET", "/pause", function()
        local pause = collectgarbage("setpause", 200)   -- returns the one in force
        collectgarbage("setpause", pause)
        local stepmul = collectgarbage("setstepmul", 200)
        collectgarbage("setstepmul", stepmul)
        return 200, { pause = pause, stepmul = stepmul }
      end },
  },
}
"""


def test_gc_pause_is_set_in_every_worker(gateway):
    g = gateway(GC_PAUSE % "gc_pause = 400, gc_stepmul = 300,", workers=2)
    for _ in range(6):                           # both workers, whichever answers
        assert requests.get(g.url("/pause")).json() == {"pause": 400, "stepmul": 300}
    d = gateway(GC_PAUSE % "")
    assert requests.get(d.url("/pause")).json() == {"pause": 200, "stepmul": 100}   # ours


SET_HEADERS = """
return {
  listen = "127.0.0.1:8080",
  routes = {
    { "GET", "/mine", function(req)
        return 200, "hi", { ["x-request-id"] = "mine", ["X-Kept"] = "k" }
      end },
    { "GET", "/csv", function(req)
        req:set_response_header("Content-Type", "text/csv")
        req:set_response_header("x-extra", 6)      -- replaced by the next, whatever the case
        req:set_response_header("X-Extra", 7)
        return 200, "a,b\\n", { ["content-type"] = "text/plain" }
      end },
  },
}
"""


def test_set_response_headers_replace_a_handlers_own_in_any_case(gateway):
    g = gateway(SET_HEADERS)
    with socket.create_connection(("127.0.0.1", g.port), timeout=5) as s:
        s.sendall(b"GET /mine HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode().lower()
    assert head.count("x-request-id:") == 1, head       # request-id's, not the handler's too
    assert "x-request-id: mine" not in head and "x-kept: k" in head, head
    assert "content-type: text/plain" in head, head
    r = requests.get(g.url("/csv"))
    assert r.headers["Content-Type"] == "text/csv" and r.headers["X-Extra"] == "7"
    assert r.text == "a,b\n"


HEADER_NAME = """
return {
  listen = "127.0.0.1:8080",
  routes = {
    { "GET", "/name", function(req)
        return 200, "ok", { ["X" .. string.char(tonumber(req.query.b)) .. "y"] = "v" }
      end },
    { "GET", "/value", function(req)
        local v = "a" .. string.char(tonumber(req.query.b)) .. "b"
        return 200, "ok", { ["X-V"] = v, ["Set-Cookie"] = v }
      end },
  },
}
"""


def test_response_header_names_must_be_tokens(gateway):
    # RFC 9110's tchar: visible ASCII except the separators; every byte tried
    g = gateway(HEADER_NAME)
    separators = set(b'"(),/:;<=>?@[\\]{}')
    for b in range(256):
        r = requests.get(g.url("/name?b=%d" % b))
        if 33 <= b <= 126 and b not in separators:
            assert r.status_code == 200 and r.headers["X%sy" % chr(b)] == "v", b
        else:
            assert r.status_code == 500, (b, r.status_code)


def test_response_header_values_refuse_cr_lf_nul(gateway):
    # LF is refused too, except in Set-Cookie, where it separates cookies
    g = gateway(HEADER_NAME)
    for b in range(256):
        r = requests.get(g.url("/value?b=%d" % b))
        if b in (0, 10, 13):
            assert r.status_code == 500, (b, r.status_code)
        else:
            assert r.status_code == 200 and r.raw.headers.get("X-V") is not None, b


def test_core_now_is_the_loop_turns_time(gateway):
    """core.now() in a worker is the time of the loop's turn (like ngx.now()):
    it stands still while a handler computes, moves on once the handler has
    waited, and is the wall clock."""
    g = gateway("""
local core = require "moongate.core"
return {
  listen = "127.0.0.1:8080",
  routes = {
    { "GET", "/now", function(req)
        local a = core.now()
        local x = 0
        for i = 1, 3e7 do x = x + i % 7 end       -- ~10 ms or more of work
        local b = core.now()
        req:sleep(0.02)
        local c = core.now()
        return 200, { a = a, b = b, c = c, x = x }
      end },
  },
}
""")
    before = time.time()
    out = requests.get(g.url("/now")).json()
    after = time.time()
    assert out["a"] == out["b"]
    assert out["c"] - out["b"] >= 0.015
    assert before - 0.01 <= out["a"] <= out["c"] <= after + 0.01
