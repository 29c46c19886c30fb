"""Hot reload (SIGHUP): new code is served without dropping a request, a bad
config on disk never replaces a good running one, and requests in flight
finish on the code they started with."""
import os
import textwrap
import threading
import time

import requests

from conftest import SLOW, wait_until, requests_default_timeout

requests_default_timeout()

CONFIG = """
return {
  routes = {
    { "GET", "/v", handler = "routes/v.lua" },
    { "GET", "/static", function() return 200, { static = true } end },
  },
}
"""

V1 = "return function(req) return 200, { v = 1 } end\n"
V2 = "return function(req) return 200, { v = 2 } end\n"


def replace(g, name, text):
    """Writes a file atomically, so a reload never reads half of it."""
    p = g.dir / name
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(textwrap.dedent(text))
    os.replace(tmp, p)


def reload_messages(g):
    return [e for e in g.error_log() if "reload" in e.get("msg", "")]


def test_reload_under_load_drops_nothing(gateway):
    g = gateway(CONFIG, files={"routes/v.lua": V1}, workers=2)
    stop = threading.Event()
    results = []              # (monotonic time, version) per good answer
    failures = []
    lock = threading.Lock()

    def client():
        with requests.Session() as s:     # keep-alive: connections span reloads
            while not stop.is_set():
                try:
                    r = s.get(g.url("/v"), timeout=5 * SLOW)
                    if r.status_code != 200:
                        with lock:
                            failures.append("status %d: %s" % (r.status_code, r.text[:200]))
                        continue
                    v = r.json()["v"]
                    with lock:
                        results.append((time.monotonic(), v))
                except Exception as e:           # connection reset, timeout...
                    with lock:
                        failures.append(repr(e))

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    last_reload = None
    last_version = None
    for i in range(20):
        last_version = 2 if i % 2 == 0 else 1
        replace(g, "routes/v.lua", V2 if last_version == 2 else V1)
        g.reload()
        last_reload = time.monotonic()
        time.sleep(0.1)
    # i = 19 wrote V1; make the final version differ from the initial one.
    replace(g, "routes/v.lua", V2)
    g.reload()
    last_version = 2
    last_reload = time.monotonic()
    time.sleep(1.0)
    settle = last_reload + 0.5
    stop.set()
    for t in threads:
        t.join()

    assert not failures, "%d failed requests, e.g. %s" % (len(failures), failures[:5])
    assert len(results) > 200, len(results)
    versions = {v for _, v in results}
    assert versions == {1, 2}, versions
    late = [v for t, v in results if t > settle]
    assert late, "no requests after the last reload settled"
    assert set(late) == {last_version}, "old code still served: %s" % sorted(set(late))
    # A fresh connection agrees.
    assert requests.get(g.url("/v")).json() == {"v": last_version}
    # Every reload was valid; none failed.
    assert not [e for e in g.error_log() if "reload failed" in e.get("msg", "")]
    assert g.proc.poll() is None


def test_reload_with_syntax_error_keeps_old_config(gateway):
    g = gateway(CONFIG, files={"routes/v.lua": V1})
    assert requests.get(g.url("/v")).json() == {"v": 1}
    replace(g, "routes/v.lua", "return function(req)\n  return 200,\n  local oops =\nend\n")
    g.reload()
    errs = wait_until(lambda: [e for e in g.error_log() if "reload failed" in e.get("msg", "")])
    assert errs, g.stderr()
    msg = errs[-1]["msg"]
    assert errs[-1]["level"] == "error"
    assert "routes/v.lua:3:" in msg, msg          # file and line
    assert "stack traceback" not in msg
    # The old code keeps serving, for a while and on new connections.
    for _ in range(10):
        r = requests.get(g.url("/v"))
        assert r.status_code == 200 and r.json() == {"v": 1}
    # Fixing the file and reloading again works.
    replace(g, "routes/v.lua", V2)
    g.reload()
    assert wait_until(lambda: requests.get(g.url("/v")).json() == {"v": 2}, timeout=5)


def test_reload_with_bad_setting_keeps_old_config(gateway):
    g = gateway(CONFIG, files={"routes/v.lua": V1})
    replace(g, "routes/v.lua", V2)   # would be picked up by a good reload
    replace(g, "gateway.lua", CONFIG.replace("routes = {", 'limits = { body = "lots" },\n  routes = {', 1))
    g.reload()
    errs = wait_until(lambda: [e for e in g.error_log() if "reload failed" in e.get("msg", "")])
    assert errs, g.stderr()
    msg = errs[-1]["msg"]
    assert "gateway.lua" in msg and "limits.body" in msg, msg
    for _ in range(10):
        assert requests.get(g.url("/v")).json() == {"v": 1}
    # An unknown route field on reload: same.
    replace(g, "gateway.lua", CONFIG.replace('handler = "routes/v.lua"',
                                             'handler = "routes/v.lua", colour = "red"'))
    g.reload()
    errs = wait_until(lambda: [e for e in g.error_log()
                               if "reload failed" in e.get("msg", "") and "colour" in e["msg"]])
    assert errs, g.stderr()
    assert "routes[1]" in errs[-1]["msg"]
    assert requests.get(g.url("/v")).json() == {"v": 1}
    replace(g, "gateway.lua", CONFIG)
    g.reload()
    assert wait_until(lambda: requests.get(g.url("/v")).json() == {"v": 2}, timeout=5)


def test_in_flight_request_finishes_on_old_code(gateway):
    slow_v1 = "return function(req) req:sleep(1) return 200, { v = 1 } end\n"
    g = gateway(CONFIG, files={"routes/v.lua": slow_v1})
    out = {}

    def slow():
        r = requests.get(g.url("/v"), timeout=10 * SLOW)
        out["status"], out["body"] = r.status_code, r.json()

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.3)
    replace(g, "routes/v.lua", V2)
    g.reload()
    assert wait_until(lambda: [e for e in g.error_log()
                               if "workers are switching" in e.get("msg", "")], timeout=3)
    time.sleep(0.1)
    # The new code answers new requests while the old one still sleeps.
    t0 = time.monotonic()
    r = requests.get(g.url("/v"), timeout=2)
    assert r.json() == {"v": 2}
    assert time.monotonic() - t0 < 0.5
    assert t.is_alive()
    t.join()
    assert out == {"status": 200, "body": {"v": 1}}
    assert requests.get(g.url("/static")).status_code == 200
