"""ip-restriction over real sockets (IPv4 loopback and, where the machine
has it, IPv6 ::1)."""
import socket

import requests

from conftest import Gateway


def test_loopback_allowed_or_denied(gateway):
    g = gateway("""
    return { listen = "127.0.0.1:8080", routes = {
      { "GET", "/open", function(req) return 200, { ip = req.ctx.client_ip } end,
        policies = { { "ip-restriction", allow = { "127.0.0.0/8" } } } },
      { "GET", "/closed", function() return 200, "no" end,
        policies = { { "ip-restriction", deny = { "127.0.0.1" } } } },
      { "GET", "/via-proxy", function(req) return 200, { ip = req.ctx.client_ip } end,
        policies = { { "ip-restriction", allow = { "192.0.2.0/24" }, trusted_proxies = { "127.0.0.1" } } } },
    } }
    """)
    assert requests.get(g.url("/open")).json() == {"ip": "127.0.0.1"}
    r = requests.get(g.url("/closed"))
    assert r.status_code == 403 and r.json() == {"message": "forbidden"}
    assert requests.get(g.url("/via-proxy"), headers={"X-Forwarded-For": "192.0.2.9"}).json() == {"ip": "192.0.2.9"}
    assert requests.get(g.url("/via-proxy")).status_code == 403


def test_ipv6_client(gateway):
    g = gateway("""
    return { listen = "[::1]:8080", routes = { { "GET", "/", function(req) return 200, { ip = req.remote_addr } end,
      policies = { { "ip-restriction", allow = { "::1/128" } } } } } }
    """)
    s = socket.create_connection(("::1", g.port), timeout=5)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        b = s.recv(4096)
        if not b:
            break
        data += b
    s.close()
    assert data.startswith(b"HTTP/1.1 200") and b'"ip":"::1"' in data, data
