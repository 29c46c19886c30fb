"""request-rewrite and response-rewrite, through a real proxy hop and on a
local handler."""
import requests

ORIGIN = """
return { listen = "127.0.0.1:8080", routes = {
  { "ANY", "/*", function(req)
      return 200, { path = req.path, query = req.query_string, headers = req:all_headers(),
                    body = req:json() or req:body(), internal_id = 7 }
    end },
  { "GET", "/fail", function() return 502, "upstream says no" end },
} }
"""


def test_request_rewrite_reaches_the_upstream(gateway):
    origin = gateway(ORIGIN)
    g = gateway("""
    return { listen = "127.0.0.1:8080",
      upstreams = { o = { targets = { "http://127.0.0.1:%d" } } },
      routes = { { "POST", "/api/v1/*", proxy = "o", policies = { { "request-rewrite",
        path = { "^/api/v1/(.*)$", "/%%1" },
        headers = { set = { ["X-Env"] = "prod" }, add = { ["X-Trace"] = "gw" },
                    remove = { "Cookie" }, rename = { ["X-Old"] = "X-New" } },
        query = { set = { debug = "0" }, remove = { "token" } },
        json = { set = { stream = false }, remove = { "user" }, rename = { prompt = "input" } } } } } } }
    """ % origin.port)
    r = requests.post(g.url("/api/v1/chat?token=secret&keep=1"),
                      headers={"Cookie": "a=b", "X-Old": "v", "X-Trace": "client"},
                      json={"prompt": "hi", "user": "u1", "n": 2})
    assert r.status_code == 200, r.text
    seen = r.json()
    assert seen["path"] == "/chat"
    assert seen["query"] == "debug=0&keep=1"
    h = seen["headers"]
    assert h["x-env"] == "prod" and h["x-new"] == "v" and "x-old" not in h and "cookie" not in h
    assert h["x-trace"] == "client, gw"
    assert seen["body"] == {"input": "hi", "n": 2, "stream": False}


def test_response_rewrite_status_headers_and_json(gateway):
    origin = gateway(ORIGIN)
    g = gateway("""
    return { listen = "127.0.0.1:8080",
      upstreams = { o = { targets = { "http://127.0.0.1:%d" } } },
      routes = {
        { "GET", "/data", proxy = "o", policies = { { "response-rewrite",
          headers = { set = { ["Cache-Control"] = "no-store" } },
          json = { set = { served_by = "moongate" }, remove = { "internal_id" } } } } },
        { "GET", "/fail", proxy = "o", policies = { { "response-rewrite", status = { [502] = 503 } } } },
      } }
    """ % origin.port)
    r = requests.get(g.url("/data"))
    body = r.json()
    assert r.headers["Cache-Control"] == "no-store"
    assert body["served_by"] == "moongate" and "internal_id" not in body and body["path"] == "/data"
    assert requests.get(g.url("/fail")).status_code == 503


def test_rewrite_settings_are_checked(tmp_path):
    import subprocess
    from conftest import BIN
    p = tmp_path / "g.lua"
    p.write_text('return { routes = { { "GET", "/", function() end, policies = { { "request-rewrite", headers = { sett = {} } } } } } }')
    out = subprocess.run([BIN, "-t", str(p)], capture_output=True, text=True)
    assert out.returncode == 1 and 'policy "request-rewrite": headers.sett: unknown operation' in out.stderr, out.stderr
