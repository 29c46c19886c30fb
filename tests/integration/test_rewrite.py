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


def test_proxy_header_rewrites_replace_the_clients_in_any_case(gateway):
    """One source of rewrites (here opts.headers) goes to the C side as it is;
    several are merged first, the later one winning: set_header, then
    upstream_headers, then opts.headers. Either way a name replaces the client's header of
    that name in any case, false removes it, and a list gives one line each."""
    origin = gateway(ORIGIN)
    g = gateway("""
    return { listen = "127.0.0.1:8080",
      upstreams = { o = { targets = { "http://127.0.0.1:%d" } } },
      routes = {
        { "GET", "/one", function(req)
            return req:proxy("o", { headers = { ["x-a"] = "set", ["X-B"] = false, ["X-List"] = { "1", "2" } } })
          end },
        { "GET", "/three", function(req)
            req:set_header("X-A", "from set_header")
            req:set_header("X-E", "e")
            req.upstream_headers["x-a"] = "from upstream_headers"
            req.upstream_headers["X-C"] = "c"
            req.upstream_headers["x-e"] = false
            return req:proxy("o", { headers = { ["X-A"] = "from opts", ["x-b"] = false, ["X-D"] = "d" } })
          end },
      } }
    """ % origin.port)
    client = {"X-A": "client", "x-b": "client", "X-List": "client", "X-Keep": "k"}
    h = requests.get(g.url("/one"), headers=client).json()["headers"]
    assert h["x-a"] == "set" and "x-b" not in h and h["x-list"] == "1, 2" and h["x-keep"] == "k"
    h = requests.get(g.url("/three"), headers=client).json()["headers"]
    assert h["x-a"] == "from opts" and "x-b" not in h
    assert h["x-c"] == "c" and h["x-d"] == "d" and h["x-list"] == "client" and h["x-keep"] == "k"
    assert "x-e" not in h


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
