"""Policies (the operator's own and the stock request-id/errors), and the
access and error logs."""
import json
import re
import subprocess
import time

import requests

from conftest import BIN, SLOW, wait_until, requests_default_timeout

requests_default_timeout()

OWN = """
return {
  policy_paths = { "mypolicies" },
  routes = {
    { "GET", "/guarded", function(req) return 200, { secret = "inside" } end,
      policies = { { "deny", key = "sesame" } } },
    { "GET", "/stamped", function(req) return 200, { ok = true } end,
      policies = { { "stamp", value = "v42" } } },
    { "GET", "/logged", function(req) req.ctx.mark = "from-handler" return 200, { ok = true } end,
      policies = { { "late-log", file = LOGFILE } } },
    { "GET", "/open", function(req) return 200, { open = true } end },
  },
}
"""

POLICIES = {
    "mypolicies/deny.lua": """
        return {
          schema = { key = { type = "string", required = true } },
          access = function(conf, req)
            if req.headers["x-key"] ~= conf.key then
              return 401
            end
          end,
        }
    """,
    "mypolicies/stamp.lua": """
        return {
          schema = { value = { type = "string", default = "none" } },
          response = function(conf, req, res)
            res.headers["X-Stamp"] = conf.value
            res.headers["X-Saw-Status"] = tostring(res.status)
          end,
        }
    """,
    # The log phase waits, then writes what it saw: if it ran before the
    # response was sent, the client would wait too.
    "mypolicies/late-log.lua": """
        return {
          schema = { file = { type = "string", required = true } },
          log = function(conf, req, res)
            req:sleep(0.7)
            local f = assert(io.open(conf.file, "a"))
            f:write(string.format("%s %d %s\\n", req.id, res.status, tostring(req.ctx.mark)))
            f:close()
          end,
        }
    """,
}


def own_gateway(gateway, tmp_path, **kw):
    logfile = tmp_path / "late.log"
    g = gateway(OWN.replace("LOGFILE", json.dumps(str(logfile))), files=POLICIES, **kw)
    return g, logfile


def test_own_policy_short_circuits_in_access(gateway, tmp_path):
    g, _ = own_gateway(gateway, tmp_path)
    r = requests.get(g.url("/guarded"))
    assert r.status_code == 401
    assert r.json() == {"message": "unauthorized"}
    assert "inside" not in r.text
    r = requests.get(g.url("/guarded"), headers={"X-Key": "wrong"})
    assert r.status_code == 401
    r = requests.get(g.url("/guarded"), headers={"X-Key": "sesame"})
    assert r.status_code == 200 and r.json() == {"secret": "inside"}
    # Other routes do not get the route's policy.
    assert requests.get(g.url("/open")).status_code == 200
    wait_until(lambda: len(g.access_log()) >= 4)
    by_status = [e["status"] for e in g.access_log() if e["uri"] == "/guarded"]
    assert by_status == [401, 401, 200]


def test_own_policy_response_phase_sets_header(gateway, tmp_path):
    g, _ = own_gateway(gateway, tmp_path)
    r = requests.get(g.url("/stamped"))
    assert r.status_code == 200
    assert r.headers["x-stamp"] == "v42"
    assert r.headers["x-saw-status"] == "200"
    assert "x-stamp" not in requests.get(g.url("/open")).headers


def test_own_policy_log_phase_runs_after_the_response(gateway, tmp_path):
    g, logfile = own_gateway(gateway, tmp_path)
    t0 = time.monotonic()
    r = requests.get(g.url("/logged"))
    took = time.monotonic() - t0
    assert r.status_code == 200
    assert took < 0.5, "the response waited for the log phase (%.2fs)" % took
    assert not logfile.exists() or logfile.read_text() == ""
    assert wait_until(lambda: logfile.exists() and logfile.read_text(), timeout=3)
    line = logfile.read_text().strip()
    assert line == "%s 200 from-handler" % r.headers["x-request-id"]


def start_expecting_failure(config, tmp_path, files):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "gateway.lua").write_text(config)
    for name, text in files.items():
        p = d / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    p = subprocess.run([BIN, "--port", "1", str(d / "gateway.lua")], capture_output=True,
                       text=True, timeout=10 * SLOW)
    return p


def test_policy_settings_schema_error_at_startup(tmp_path):
    import textwrap
    files = {k: textwrap.dedent(v) for k, v in POLICIES.items()}
    config = """
return {
  policy_paths = { "mypolicies" },
  routes = {
    { "GET", "/ok", function() return 200 end },
    { "GET", "/guarded", function() return 200 end,
      policies = { { "deny", key = 12 } } },
  },
}
"""
    p = start_expecting_failure(config, tmp_path, files)
    assert p.returncode != 0
    err = p.stderr
    assert "routes[2]" in err and "/guarded" in err, err
    assert 'policy "deny"' in err, err
    assert "key" in err and "expected a string" in err, err
    assert "stack traceback" not in err
    assert "server started" not in err


def test_policy_settings_missing_and_unknown_fields(tmp_path):
    import textwrap
    files = {k: textwrap.dedent(v) for k, v in POLICIES.items()}
    missing = """
return { policy_paths = { "mypolicies" },
  routes = { { "GET", "/g", function() return 200 end, policies = { "deny" } } } }
"""
    p = start_expecting_failure(missing, tmp_path, files)
    assert p.returncode != 0
    assert "routes[1]" in p.stderr and 'policy "deny"' in p.stderr, p.stderr
    assert "key: is required" in p.stderr, p.stderr
    unknown = """
return { policy_paths = { "mypolicies" },
  routes = { { "GET", "/s", function() return 200 end,
               policies = { { "stamp", colour = "red" } } } } }
"""
    d2 = tmp_path / "u"
    d2.mkdir()
    p = start_expecting_failure(unknown, d2, files)
    assert p.returncode != 0
    assert "routes[1]" in p.stderr and 'policy "stamp"' in p.stderr, p.stderr
    assert "colour" in p.stderr and "unknown field" in p.stderr, p.stderr


# ---- request-id ------------------------------------------------------------

SIMPLE = """
return {
  routes = {
    { "GET", "/id", function(req) return 200, { id = req.id } end },
    { "GET", "/boom", function(req) error("secret detail 1234") end },
    { "GET", "/bad", function(req) return 400, "bad thing" end },
    { "GET", "/teapot", function(req) return 418, { custom = "shape" } end },
  },
}
"""


def test_request_id_echoed_and_logged(gateway):
    g = gateway(SIMPLE)
    r = requests.get(g.url("/id"), headers={"X-Request-ID": "client-abc-123"})
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "client-abc-123"
    assert r.json() == {"id": "client-abc-123"}
    entry = wait_until(lambda: [e for e in g.access_log() if e["uri"] == "/id"])
    assert entry and entry[-1]["request_id"] == "client-abc-123"


def test_request_id_generated_when_absent(gateway):
    g = gateway(SIMPLE)
    r1 = requests.get(g.url("/id"))
    r2 = requests.get(g.url("/id"))
    id1, id2 = r1.headers["x-request-id"], r2.headers["x-request-id"]
    assert id1 and id2 and id1 != id2
    assert r1.json()["id"] == id1
    # A 404 (no route, so no access phase) carries one too.
    r3 = requests.get(g.url("/nowhere"))
    assert r3.status_code == 404 and r3.headers["x-request-id"]
    # An over-long incoming ID (over 200 characters) is not trusted.
    r4 = requests.get(g.url("/id"), headers={"X-Request-ID": "x" * 201})
    assert r4.headers["x-request-id"] != "x" * 201
    wait_until(lambda: len(g.access_log()) >= 4)
    logged = [e["request_id"] for e in g.access_log()]
    assert id1 in logged and id2 in logged and r3.headers["x-request-id"] in logged


# ---- errors ----------------------------------------------------------------

def test_lua_error_is_500_without_details_and_logged(gateway):
    g = gateway(SIMPLE)
    r = requests.get(g.url("/boom"), headers={"X-Request-ID": "boom-req-1"})
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"message": "internal server error"}
    for leak in ("secret detail", "traceback", ".lua", "1234"):
        assert leak not in r.text
    errs = wait_until(lambda: [e for e in g.error_log() if "secret detail 1234" in e.get("msg", "")])
    assert errs, g.stderr()
    e = errs[-1]
    assert e["level"] == "error"
    assert e["request_id"] == "boom-req-1"
    assert "stack traceback" in e["msg"]
    assert "gateway.lua" in e["msg"]
    # The worker keeps serving, on the same and on new connections.
    with requests.Session() as s:
        for _ in range(5):
            assert s.get(g.url("/boom")).status_code == 500
            assert s.get(g.url("/id")).status_code == 200
    assert requests.get(g.url("/id")).status_code == 200
    assert g.proc.poll() is None


def test_handler_error_message(gateway):
    g = gateway(SIMPLE)
    r = requests.get(g.url("/bad"))
    assert r.status_code == 400
    assert r.json() == {"message": "bad thing"}
    # A table body is the handler's own shape, left alone.
    r = requests.get(g.url("/teapot"))
    assert r.status_code == 418 and r.json() == {"custom": "shape"}


OPENAI = """
return {
  policy_paths = { "mypolicies" },
  policies = { "request-id", { "errors", shape = "openai" } },
  routes = {
    { "GET", "/guarded", function(req) return 200, { ok = true } end,
      policies = { { "deny", key = "sesame" } } },
    { "GET", "/bad", function(req) return 400, "bad thing" end },
    { "GET", "/boom", function(req) error("hidden") end },
    { "POST", "/only-post", function(req) return 200, "ok" end },
  },
}
"""


def test_errors_openai_shape(gateway):
    g = gateway(OPENAI, files=POLICIES)
    r = requests.get(g.url("/missing"))
    assert r.status_code == 404
    assert r.json() == {"error": {"message": "not found", "type": "invalid_request_error",
                                  "code": 404}}
    r = requests.get(g.url("/guarded"))
    assert r.status_code == 401
    assert r.json() == {"error": {"message": "unauthorized", "type": "invalid_request_error",
                                  "code": 401}}
    r = requests.get(g.url("/bad"))
    assert r.json() == {"error": {"message": "bad thing", "type": "invalid_request_error",
                                  "code": 400}}
    r = requests.get(g.url("/boom"))
    assert r.status_code == 500
    assert r.json() == {"error": {"message": "internal server error", "type": "server_error",
                                  "code": 500}}
    r = requests.get(g.url("/only-post"))
    assert r.status_code == 405
    assert r.json()["error"]["code"] == 405
    assert "POST" in r.headers["allow"]
    assert requests.get(g.url("/guarded"), headers={"X-Key": "sesame"}).json() == {"ok": True}


# ---- logs ------------------------------------------------------------------

def test_access_log_one_json_line_per_request(gateway):
    g = gateway(SIMPLE)
    with requests.Session() as s:
        r1 = s.get(g.url("/id?x=1"))
        r2 = s.get(g.url("/bad"))
        r3 = s.get(g.url("/nowhere"))
    assert wait_until(lambda: len(g.access_log()) >= 3)
    time.sleep(0.2)
    lines = [l for l in g.stdout().splitlines() if l.strip()]
    assert len(lines) == 3, lines
    log = [json.loads(l) for l in lines]
    for e in log:
        for k in ("time", "request_id", "remote_ip", "method", "uri", "status", "bytes",
                  "latency_ms", "route"):
            assert k in e, (k, e)
        assert e["remote_ip"] == "127.0.0.1"
        assert e["method"] == "GET"
        assert isinstance(e["latency_ms"], (int, float)) and e["latency_ms"] >= 0
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", e["time"])
    a, b, c = log
    assert a["uri"] == "/id?x=1" and a["status"] == 200 and a["route"] == "GET /id"
    assert a["request_id"] == r1.headers["x-request-id"]
    assert a["bytes"] >= len(r1.content)
    assert b["uri"] == "/bad" and b["status"] == 400 and b["route"] == "GET /bad"
    assert c["uri"] == "/nowhere" and c["status"] == 404 and c["route"] == ""
    assert c["request_id"] == r3.headers["x-request-id"]


def test_errors_on_stderr_are_json_lines(gateway):
    g = gateway(SIMPLE)
    requests.get(g.url("/boom"))
    assert wait_until(lambda: any(e.get("level") == "error" for e in g.error_log()))
    lines = [l for l in g.stderr().splitlines() if l.strip()]
    assert lines
    for l in lines:
        e = json.loads(l)         # every line is one JSON object
        assert "time" in e and "level" in e and "msg" in e
    # The traceback is inside one line, not spread over stderr.
    assert sum("stack traceback" in l for l in lines) == 1
    # Errors never go to the access log (stdout).
    assert "stack traceback" not in g.stdout()
