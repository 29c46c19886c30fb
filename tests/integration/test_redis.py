"""Redis from Lua (lua/moongate/redis.lua) against a real redis-server
started on a free loopback port and stopped by PID."""
import os
import signal
import subprocess
import time

import pytest
import requests

from conftest import BIN, SLOW, free_port


class Redis:
    def __init__(self, tmp, port=None, password=None):
        self.port = port or free_port()
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(tmp)]
        if password:
            args += ["--requirepass", password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.cli("PING", password=password).strip() in ("PONG", "NOAUTH Authentication required."):
                return
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def cli(self, *cmd, password=None, db=0):
        args = ["redis-cli", "-p", str(self.port), "-n", str(db)]
        if password:
            args += ["--no-auth-warning", "-a", password]
        return subprocess.run(args + list(cmd), capture_output=True, text=True).stdout

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)


@pytest.fixture
def redis_server(tmp_path):
    started = []

    def start(**kw):
        r = Redis(tmp_path, **kw)
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop()


def app(port, extra=""):
    return """
    local redis = require "moongate.redis"
    local hit = redis.script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    return { listen = "127.0.0.1:8080", redis = { url = "redis://%s127.0.0.1:%d/2", timeout = "300ms" },
      routes = {
        { "GET", "/kv", function()
            return 200, { set = redis.call("SET", "a", "1"), get = redis.call("GET", "a"),
                          missing = redis.call("GET", "nope") == nil, n = redis.call("INCR", "n") }
          end },
        { "GET", "/err", function()
            redis.call("SET", "s", "x")
            local v, err = redis.call("LPUSH", "s", "y")
            return 200, { v = v or false, err = err }
          end },
        { "GET", "/pipe", function()
            local r, err = redis.pipeline({ { "SET", "p", 1 }, { "GET", "nope" }, { "LPUSH", "p", "x" }, { "MGET", "p", "nope" } })
            return 200, { r = r, err = err }
          end },
        { "GET", "/script", function() return 200, { v = hit:run({ "k" }, { 5 }) } end },
        { "GET", "/slow", function()
            local v, err = redis.call("BLPOP", "never", "2")
            return 200, { v = v or false, err = err }
          end },
        { "GET", "/big", function(req)
            -- More than the socket takes at once, so the write goes on when
            -- the socket is writable again.
            local n = tonumber(req.query.n)
            local v = string.rep("x", n)
            local r, err = redis.pipeline({ { "SET", "big", v }, { "STRLEN", "big" }, { "INCR", "after" } })
            if not r then return 503, err end
            return 200, { set = r[1], len = r[2], after = r[3] }
          end },
        { "GET", "/need", function()
            local v, err = redis.call("INCR", "need")
            if not v then return 503, "redis unavailable: " .. err end
            return 200, { v = v }
          end },
      } }
    """ % (extra, port)


def test_commands_values_and_errors(gateway, redis_server):
    r = redis_server()
    g = gateway(app(r.port), workers=2)
    assert requests.get(g.url("/kv")).json() == {"set": "OK", "get": "1", "missing": True, "n": 1}
    assert r.cli("GET", "a", db=2).strip() == "1"              # db 2 from the URL
    e = requests.get(g.url("/err")).json()
    assert e["v"] is False and e["err"].startswith("WRONGTYPE")
    p = requests.get(g.url("/pipe")).json()["r"]
    assert p[0] == "OK" and p[1] is None and p[2]["err"].startswith("WRONGTYPE") and p[3] == ["1", None]


def test_a_command_larger_than_the_socket_buffer(gateway, redis_server):
    r = redis_server()
    g = gateway(app(r.port))
    n = 8 << 20
    got = requests.get(g.url("/big"), params={"n": n}).json()
    assert got == {"set": "OK", "len": n, "after": 1}
    assert requests.get(g.url("/kv")).json()["get"] == "1"     # the connection goes on


def test_scripts_reload_after_a_flush(gateway, redis_server):
    r = redis_server()
    g = gateway(app(r.port))
    assert requests.get(g.url("/script")).json()["v"] == 5
    r.cli("SCRIPT", "FLUSH")
    assert requests.get(g.url("/script")).json()["v"] == 10   # NOSCRIPT -> loaded again


def test_command_timeout(gateway, redis_server):
    r = redis_server()
    g = gateway(app(r.port))
    t0 = time.time()
    assert requests.get(g.url("/slow")).json() == {"v": False, "err": "timeout"}
    assert time.time() - t0 < 1.5 * SLOW
    assert requests.get(g.url("/kv")).status_code == 200       # the pool still works


def test_password(gateway, redis_server):
    r = redis_server(password="s3cret")
    g = gateway(app(r.port, ":s3cret@"))
    assert requests.get(g.url("/kv")).json()["get"] == "1"


def test_redis_down_answers_fast_then_recovers(gateway, redis_server):
    r = redis_server()
    g = gateway(app(r.port))
    assert requests.get(g.url("/need")).status_code == 200
    port = r.port
    r.stop()
    t0 = time.time()
    res = requests.get(g.url("/need"))
    assert res.status_code == 503 and "redis unavailable" in res.json()["message"]
    assert time.time() - t0 < 1.0 * SLOW
    redis_server(port=port)
    deadline = time.time() + 5 * SLOW
    while time.time() < deadline:
        if requests.get(g.url("/need")).status_code == 200:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("service did not resume after redis came back")


def test_bad_redis_url_is_refused(tmp_path):
    cfg = tmp_path / "g.lua"
    cfg.write_text('return { redis = { url = "http://x" }, routes = {} }')
    p = subprocess.run([BIN, "-t", str(cfg)], capture_output=True, text=True)
    assert p.returncode == 1 and 'redis.url: must start with "redis://"' in p.stderr, p.stderr
