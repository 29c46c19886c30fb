"""Shared dictionaries across worker threads (lua/moongate/shared.lua)."""
import concurrent.futures
import subprocess
import time

import requests

from conftest import BIN, SLOW

CFG = """
local shared = require "moongate.shared"
local d = shared.counters
return { listen = "127.0.0.1:8080", shared = { counters = "1m", small = "16k" },
  routes = {
    { "POST", "/incr/:k", function(req)
        local n = assert(shared.counters:incr(req.params.k, 1, 0))
        return 200, { n = n, worker_sees = d ~= nil }
      end },
    { "GET", "/get/:k", function(req) return 200, { v = shared.counters:get(req.params.k) or false } end },
    { "POST", "/set/:k", function(req)
        local ok, err = shared.counters:set(req.params.k, req:body(), tonumber(req.query.ttl))
        return 200, { ok = ok or false, err = err }
      end },
    { "POST", "/add/:k", function(req)
        local ok, err = shared.counters:add(req.params.k, req:body())
        return 200, { ok = ok or false, err = err }
      end },
    { "GET", "/ttl/:k", function(req) return 200, { ttl = shared.counters:ttl(req.params.k) or false } end },
    { "POST", "/fill", function(req)
        for i = 1, 200 do assert(shared.small:set("k" .. i, string.rep("x", 200))) end
        local first, last = shared.small:get("k1"), shared.small:get("k200")
        local ok, err = shared.small:set("huge", string.rep("x", 20000))
        return 200, { first = first ~= nil, last = last ~= nil, count = shared.small:count(),
                      huge = ok or err }
      end },
    { "GET", "/types", function()
        shared.counters:set("n", 1.5) shared.counters:set("b", true) shared.counters:set("s", "x")
        return 200, { n = shared.counters:get("n"), b = shared.counters:get("b"), s = shared.counters:get("s"),
                      notnum = select(2, shared.counters:incr("s", 1)),
                      absent = select(2, shared.counters:incr("nope", 1)) }
      end },
  } }
"""


def test_incr_is_atomic_across_workers(gateway):
    g = gateway(CFG, workers=2)
    with concurrent.futures.ThreadPoolExecutor(16) as ex:
        results = list(ex.map(lambda _: requests.post(g.url("/incr/hits")).json()["n"], range(400)))
    assert sorted(results) == list(range(1, 401))          # every increment, none lost or doubled
    deadline = time.time() + 5 * SLOW           # lines are flushed once per loop turn
    while len([l for l in g.access_log() if l["uri"] == "/incr/hits"]) < 400 and time.time() < deadline:
        time.sleep(0.02)
    workers = {l["worker"] for l in g.access_log() if l["uri"] == "/incr/hits"}
    assert workers == {0, 1}, workers                         # both workers took part
    assert requests.get(g.url("/get/hits")).json()["v"] == 400


def test_set_get_add_ttl_and_types(gateway):
    g = gateway(CFG)
    assert requests.post(g.url("/set/a"), data="one").json()["ok"]
    assert requests.get(g.url("/get/a")).json()["v"] == "one"
    assert requests.post(g.url("/add/a"), data="two").json() == {"ok": False, "err": "exists"}
    assert requests.post(g.url("/add/b"), data="two").json()["ok"]
    assert requests.get(g.url("/ttl/a")).json()["ttl"] == -1
    assert requests.post(g.url("/set/t?ttl=0.3"), data="soon gone").json()["ok"]
    ttl = requests.get(g.url("/ttl/t")).json()["ttl"]
    assert 0 < ttl <= 0.3
    time.sleep(0.4)
    assert requests.get(g.url("/get/t")).json()["v"] is False
    assert requests.get(g.url("/types")).json() == {
        "n": 1.5, "b": True, "s": "x", "notnum": "not a number", "absent": "not found"}


def test_full_dictionary_evicts_least_recently_used(gateway):
    g = gateway(CFG)
    r = requests.post(g.url("/fill")).json()
    assert r["first"] is False and r["last"] is True         # the oldest went first
    assert 0 < r["count"] < 200
    assert r["huge"] == "too large"


def test_contents_survive_a_reload(gateway):
    g = gateway(CFG)
    requests.post(g.url("/incr/kept"))
    g.reload()
    time.sleep(0.5 * SLOW)
    assert requests.post(g.url("/incr/kept")).json()["n"] == 2


def test_bad_shared_config_is_refused(tmp_path):
    cfg = tmp_path / "g.lua"
    cfg.write_text('return { shared = { tiny = "1k" }, routes = {} }')
    p = subprocess.run([BIN, "-t", str(cfg)], capture_output=True, text=True)
    assert p.returncode == 1
    assert "shared.tiny: expected a size of at least 8k" in p.stderr, p.stderr
