"""Background timers (moongate.timer) and active upstream health checks."""
import time

import requests

from conftest import SLOW


def test_timer_runs_in_every_worker_and_restarts_on_reload(gateway):
    cfg = """
    local timer = require "moongate.timer"
    local ticks = 0
    timer.every(0.1, function() ticks = ticks + 1 end)
    timer.after(0.05, function() error("boom in a timer") end)
    return { listen = "127.0.0.1:8080",
             routes = { { "GET", "/ticks", function() return 200, { ticks = ticks } end } } }
    """
    g = gateway(cfg)
    time.sleep(0.65 * SLOW)
    n = requests.get(g.url("/ticks")).json()["ticks"]
    assert n >= 3, n
    # An error in a timer is logged, and the timer and the server go on.
    assert any("boom in a timer" in l["msg"] for l in g.error_log())
    time.sleep(0.3 * SLOW)
    assert requests.get(g.url("/ticks")).json()["ticks"] > n
    # A reload starts a fresh generation: the old timer stops, a new one counts from 0.
    g.reload()
    deadline = time.time() + 5 * SLOW
    while time.time() < deadline:
        if requests.get(g.url("/ticks")).json()["ticks"] < n:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the reloaded generation did not restart its timer")


def test_timer_can_wait_and_runs_do_not_pile_up(gateway):
    cfg = """
    local timer = require "moongate.timer"
    local core = require "moongate.core"
    local running, max_running, runs = 0, 0, 0
    timer.every(0.05, function()
      running = running + 1
      if running > max_running then max_running = running end
      core.sleep(0.2)                    -- longer than the interval
      running = running - 1
      runs = runs + 1
    end)
    return { listen = "127.0.0.1:8080",
             routes = { { "GET", "/s", function() return 200, { max = max_running, runs = runs } end } } }
    """
    g = gateway(cfg)
    time.sleep(1.0 * SLOW)
    s = requests.get(g.url("/s")).json()
    assert s["runs"] >= 2 and s["max"] == 1, s


def test_active_health_check_takes_a_target_out_and_back(gateway, tmp_path):
    """Target B's health endpoint is a moongate route we can flip: while it
    fails, no request goes to B; once it passes again, B serves again."""
    backend = """
    local healthy = true
    return { listen = "127.0.0.1:8080", routes = {
      { "GET", "/hc", function() return healthy and 200 or 503, "hc" end },
      { "POST", "/flip", function() healthy = not healthy; return 200, { healthy = healthy } end },
      { "GET", "/who", function() return 200, { who = os.getenv("WHO") } end },
    } }
    """
    a = gateway(backend, env={"WHO": "a"})
    b = gateway(backend, env={"WHO": "b"})
    front = gateway("""
    return { listen = "127.0.0.1:8080", upstreams = { be = {
        targets = { "http://127.0.0.1:%d", "http://127.0.0.1:%d" }, retries = 0,
        health_check = { path = "/hc", interval = "100ms", timeout = "500ms" } } },
      routes = { { "GET", "/who", proxy = "be" } } }
    """ % (a.port, b.port))

    def spread(n=20):
        seen = {}
        for _ in range(n):
            who = requests.get(front.url("/who")).json()["who"]
            seen[who] = seen.get(who, 0) + 1
        return seen

    assert set(spread()) == {"a", "b"}
    requests.post(b.url("/flip"))
    time.sleep(0.5 * SLOW)
    assert spread() == {"a": 20}
    assert any("failed its health check" in l["msg"] for l in front.error_log())
    requests.post(b.url("/flip"))
    time.sleep(0.5 * SLOW)
    assert set(spread()) == {"a", "b"}


def test_close_hooks_run_when_a_generation_ends_and_their_errors_are_logged(gateway, tmp_path):
    """timer.on_close: run synchronously when a generation's Lua state is
    closed (after a reload, at stop, and for config checks); a hook that
    raises or tries to wait is logged and the others still run."""
    hook_log = tmp_path / "hooks.log"
    cfg = """
    local timer = require "moongate.timer"
    local core = require "moongate.core"
    local gen = core.random_hex(8)
    timer.on_close(function() error("hook boom") end)
    timer.on_close(function() core.sleep(0.1) end)
    timer.on_close(function()
      local f = assert(io.open(os.getenv("HOOK_LOG"), "a"))
      f:write(gen, "\\n")
      f:close()
    end)
    return { listen = "127.0.0.1:8080",
             routes = { { "GET", "/gen", function() return 200, { gen = gen } end } } }
    """
    g = gateway(cfg, env={"HOOK_LOG": str(hook_log)})
    first = requests.get(g.url("/gen")).json()["gen"]
    g.reload()

    def switched():
        return requests.get(g.url("/gen")).json()["gen"] != first
    deadline = time.time() + 5 * SLOW
    while not switched():
        assert time.time() < deadline, "reload did not switch generations"
        time.sleep(0.05)
    second = requests.get(g.url("/gen")).json()["gen"]
    deadline = time.time() + 5 * SLOW
    while first not in (hook_log.read_text() if hook_log.exists() else ""):
        assert time.time() < deadline, "the old generation's close hook did not run"
        time.sleep(0.05)
    msgs = [l["msg"] for l in g.error_log()]
    assert any("on_close hook" in m and "hook boom" in m for m in msgs), msgs
    assert any("on_close hook" in m and "not inside a request or timer" in m for m in msgs), msgs
    assert g.stop() == 0
    assert second in hook_log.read_text()
