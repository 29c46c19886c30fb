"""Upstreams, continued: TLS verification, Lua looking at relayed chunks,
and a slow client that must not make the gateway buffer without bound."""
import os
import socket
import subprocess
import time

import requests

from conftest import SLOW, requests_default_timeout
from test_upstream import upstream  # noqa: F401  (the fixture)

requests_default_timeout()


def self_signed(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return str(cert), str(key)


def test_tls_upstream_certificates_are_verified_by_default(gateway, upstream, tmp_path):
    cert, key = self_signed(tmp_path)
    u = upstream(args=("--cert", cert, "--key", key))
    url = "https://127.0.0.1:%d" % u.port
    g = gateway("""
    return { listen = "127.0.0.1:8080", upstreams = {
        strict = { targets = { "%s" }, retries = 0 },
        lax = { targets = { "%s" }, retries = 0, verify_tls = false } },
      routes = { { "GET", "/strict/*", proxy = "strict" }, { "GET", "/lax/*", proxy = "lax" } } }
    """ % (url, url))
    r = requests.get(g.url("/strict/ok"))
    assert r.status_code == 502, r.text           # self-signed: refused, not trusted
    assert any(l.get("kind") == "tls" for l in g.error_log()), g.stderr()
    r = requests.get(g.url("/lax/ok"))              # verification explicitly off
    assert r.status_code == 200 and r.json()["path"] == "/lax/ok"


def test_on_chunk_sees_and_rewrites_each_sse_event(gateway, upstream):
    u = upstream()
    g = gateway("""
    local seen = 0
    return { listen = "127.0.0.1:8080",
      upstreams = { up = { targets = { "%s" } } },
      routes = {
        { "GET", "/sse", function(req)
            return req:proxy("up", { query = { n = 5, interval = 0.05 }, on_chunk = function(chunk)
              seen = seen + 1
              return (chunk:gsub('"i"', '"event"'))
            end })
          end },
        { "GET", "/seen", function() return 200, { seen = seen } end },
      } }
    """ % u.url)
    body = requests.get(g.url("/sse")).text
    assert body.count('"event"') == 5 and '"i"' not in body, body
    assert requests.get(g.url("/seen")).json()["seen"] >= 1


def test_slow_client_does_not_make_the_gateway_buffer_without_bound(gateway):
    """The upstream (a moongate route) streams 64 MiB as fast as it can; the
    client does not read. The gateway must hold back (pause the upstream
    transfer, let the handler's writes wait) instead of buffering it all."""
    origin = gateway("""
    return { listen = "127.0.0.1:8080", routes = { { "GET", "/flood", function(req)
      local chunk = string.rep("x", 64 * 1024)
      req:stream(200, { ["Content-Type"] = "application/octet-stream" })
      for i = 1, 1024 do if not req:write(chunk) then return end end
    end } } }
    """)
    g = gateway("""
    return { listen = "127.0.0.1:8080",
      upstreams = { o = { targets = { "http://127.0.0.1:%d" }, timeout = "60s" } },
      routes = { { "GET", "/flood", proxy = "o" } } }
    """ % origin.port)

    def rss_kib(pid):
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])

    base = rss_kib(g.pid)
    s = socket.create_connection(("127.0.0.1", g.port))
    try:
        s.sendall(b"GET /flood HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(2 * SLOW)                         # the client reads nothing meanwhile
        grown = rss_kib(g.pid) - base
        assert grown < 16 * 1024, "gateway grew by %d KiB for a stalled client" % grown
        # and the stream is intact once the client reads
        s.settimeout(10 * SLOW)
        got = 0
        while got < 1024 * 1024:
            b = s.recv(1 << 16)
            assert b
            got += len(b)
    finally:
        s.close()
    # The client left while the relay waited on the (paused) upstream: the
    # transfer is stopped at once, not when the upstream times out.
    deadline = time.time() + 5 * SLOW
    while time.time() < deadline:
        done = [l for l in g.access_log() if l["uri"] == "/flood"]
        if done:
            assert done[0].get("client_aborted") is True, done[0]
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the relay did not notice the client leaving")
    assert requests.get(g.url("/health")).status_code == 200
