"""The rate-limit policy: local (shared dictionary) and Redis stores, the
three algorithms, headers, and one global limit across two gateways."""
import time

import requests

from conftest import BIN, SLOW
from test_redis import redis_server  # noqa: F401  (fixture)


def cfg(policy, redis_port=None):
    r = ('redis = { url = "redis://127.0.0.1:%d", timeout = "300ms" },' % redis_port) if redis_port else ""
    return """
    return { listen = "127.0.0.1:8080", %s
      routes = { { "GET", "/x", function() return 200, { ok = true } end, policies = { %s } } } }
    """ % (r, policy)


def hit(g, n, headers=None):
    return [requests.get(g.url("/x"), headers=headers or {}) for _ in range(n)]


def start_of_window(seconds):
    """Fixed windows are aligned to the clock: start right after a boundary
    so a short burst of requests never straddles two windows."""
    while time.time() % seconds > 0.2:
        time.sleep(0.02)


def test_fixed_window_local_with_headers(gateway):
    g = gateway(cfg('{ "rate-limit", limit = 3, window = "2s" }'), workers=2)
    start_of_window(2)
    rs = hit(g, 5)
    assert [r.status_code for r in rs] == [200, 200, 200, 429, 429]
    assert rs[0].headers["RateLimit-Limit"] == "3" and rs[0].headers["RateLimit-Remaining"] == "2"
    assert rs[3].json() == {"message": "too many requests"}
    assert 1 <= int(rs[3].headers["Retry-After"]) <= 2
    time.sleep(2.1)
    assert hit(g, 1)[0].status_code == 200               # a new window


def test_by_header_keeps_clients_apart(gateway):
    g = gateway(cfg('{ "rate-limit", limit = 1, window = "1h", by = "header", header = "X-Api-Key" }'))
    assert hit(g, 1, {"X-Api-Key": "a"})[0].status_code == 200
    assert hit(g, 1, {"X-Api-Key": "a"})[0].status_code == 429
    assert hit(g, 1, {"X-Api-Key": "b"})[0].status_code == 200


def test_sliding_and_token_bucket_local(gateway):
    g = gateway(cfg('{ "rate-limit", limit = 4, window = "1s", algorithm = "token-bucket" }'))
    codes = [r.status_code for r in hit(g, 6)]
    assert codes[:4] == [200] * 4 and codes[4:] == [429, 429]
    time.sleep(0.3)                                      # one token back every 250 ms
    assert hit(g, 1)[0].status_code == 200
    g2 = gateway(cfg('{ "rate-limit", limit = 3, window = "1h", algorithm = "sliding" }'))
    assert [r.status_code for r in hit(g2, 4)] == [200, 200, 200, 429]


def test_two_gateways_share_one_limit_through_redis(gateway, redis_server):
    r = redis_server()
    for algo in ("fixed", "sliding", "token-bucket"):
        policy = '{ "rate-limit", limit = 6, window = "1h", store = "redis", algorithm = "%s" }' % algo
        a = gateway(cfg(policy, r.port))
        b = gateway(cfg(policy, r.port))
        codes = [requests.get((a if i % 2 else b).url("/x")).status_code for i in range(10)]
        assert codes.count(200) == 6 and codes.count(429) == 4, (algo, codes)
        r.cli("FLUSHALL")


def test_redis_down_fault_tolerant_or_not(gateway, redis_server):
    r = redis_server()
    tolerant = gateway(cfg('{ "rate-limit", limit = 2, window = "1h", store = "redis" }', r.port))
    strict = gateway(cfg('{ "rate-limit", limit = 2, window = "1h", store = "redis", fault_tolerant = false }', r.port))
    r.stop()
    assert [x.status_code for x in hit(tolerant, 3)] == [200, 200, 429]   # local fallback limit
    x = hit(strict, 1)[0]
    assert x.status_code == 503 and x.json() == {"message": "rate limiting unavailable"}


def test_settings_errors_name_the_field(tmp_path):
    import subprocess
    p = tmp_path / "g.lua"
    p.write_text(cfg('{ "rate-limit", limit = 5, by = "header" }'))
    out = subprocess.run([BIN, "-t", str(p)], capture_output=True, text=True)
    assert out.returncode == 1 and 'policy "rate-limit": header: required when by = "header"' in out.stderr, out.stderr
    p.write_text(cfg('{ "rate-limit", limit = 0 }'))
    out = subprocess.run([BIN, "-t", str(p)], capture_output=True, text=True)
    assert 'policy "rate-limit": limit: must be at least 1' in out.stderr, out.stderr
