"""The key-auth policy: static keys, Redis and PostgreSQL lookups with the
shared-dictionary cache, consumer headers, hidden credentials."""
import requests

from conftest import SLOW
from test_redis import redis_server  # noqa: F401  (fixture)

ECHO = """
return { listen = "127.0.0.1:8080", routes = { { "ANY", "/*", function(req)
  return 200, { headers = req:all_headers() } end } } }
"""


def front(origin_port, policy, extra=""):
    return """
    return { listen = "127.0.0.1:8080", %s
      upstreams = { o = { targets = { "http://127.0.0.1:%d" } } },
      routes = { { "GET", "/api/*", proxy = "o", policies = { %s } },
                 { "GET", "/who", function(req) return 200, { consumer = req.ctx.consumer } end,
                   policies = { %s } } } }
    """ % (extra, origin_port, policy, policy)


def test_static_keys_consumer_and_hidden_credentials(gateway):
    origin = gateway(ECHO)
    g = gateway(front(origin.port, '{ "key-auth", keys = { ["k-123"] = "alice" } }'))
    r = requests.get(g.url("/api/x"))
    assert r.status_code == 401 and r.json() == {"message": "missing API key"}
    r = requests.get(g.url("/api/x"), headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and r.json() == {"message": "invalid API key"}
    r = requests.get(g.url("/api/x"), headers={"Authorization": "Bearer k-123"})
    assert r.status_code == 200
    seen = r.json()["headers"]
    assert seen["x-consumer"] == "alice"
    assert "authorization" not in seen                       # the key stays here
    assert requests.get(g.url("/who"), headers={"Authorization": "bearer k-123"}).json() == {"consumer": "alice"}


def test_custom_header_and_query_argument(gateway):
    origin = gateway(ECHO)
    g = gateway(front(origin.port, '{ "key-auth", header = "X-Api-Key", scheme = "", query = "apikey", keys = { "abc" } }'))
    assert requests.get(g.url("/who"), headers={"X-Api-Key": "abc"}).status_code == 200
    assert requests.get(g.url("/who?apikey=abc")).status_code == 200
    assert requests.get(g.url("/who?apikey=abd")).status_code == 401


def test_redis_lookup_is_cached_both_ways(gateway, redis_server):
    r = redis_server()
    origin = gateway(ECHO)
    g = gateway(front(origin.port, '{ "key-auth", redis_key = "apikey:%s", negative_ttl = "1s" }',
                      'redis = { url = "redis://127.0.0.1:%d", timeout = "300ms" },' % r.port))
    r.cli("SET", "apikey:k1", "carol")
    assert requests.get(g.url("/who"), headers={"Authorization": "Bearer k1"}).json() == {"consumer": "carol"}
    r.cli("DEL", "apikey:k1")                                # still cached: no Redis round trip
    assert requests.get(g.url("/who"), headers={"Authorization": "Bearer k1"}).status_code == 200
    assert requests.get(g.url("/who"), headers={"Authorization": "Bearer k2"}).status_code == 401
    r.cli("SET", "apikey:k2", "dave")                        # the miss is cached too, briefly
    assert requests.get(g.url("/who"), headers={"Authorization": "Bearer k2"}).status_code == 401
    import time
    time.sleep(1.2)
    assert requests.get(g.url("/who"), headers={"Authorization": "Bearer k2"}).json() == {"consumer": "dave"}
    r.stop()                                                 # an uncached key with Redis down: 503
    res = requests.get(g.url("/who"), headers={"Authorization": "Bearer k3"})
    assert res.status_code == 503 and res.json() == {"message": "authentication unavailable"}


def test_consumer_feeds_rate_limit(gateway):
    origin = gateway(ECHO)
    g = gateway(front(origin.port, '{ "key-auth", keys = { a = "A", b = "B" } }, '
                                   '{ "rate-limit", limit = 1, window = "1h", by = "consumer" }'))
    assert requests.get(g.url("/who"), headers={"Authorization": "Bearer a"}).status_code == 200
    assert requests.get(g.url("/who"), headers={"Authorization": "Bearer a"}).status_code == 429
    assert requests.get(g.url("/who"), headers={"Authorization": "Bearer b"}).status_code == 200


def test_settings_need_exactly_one_source(tmp_path):
    import subprocess
    from conftest import BIN
    p = tmp_path / "g.lua"
    p.write_text('return { routes = { { "GET", "/", function() end, policies = { { "key-auth" } } } } }')
    out = subprocess.run([BIN, "-t", str(p)], capture_output=True, text=True)
    assert out.returncode == 1 and 'policy "key-auth": give exactly one of keys, pg_query, redis_key' in out.stderr, out.stderr


def test_postgres_lookup(gateway):
    import shutil
    import tempfile
    from test_postgres import Postgres
    pg = Postgres(tempfile.mkdtemp(prefix="moongate-pg-"))
    try:
        pg.psql("CREATE TABLE api_keys (key text PRIMARY KEY, name text, enabled bool)")
        pg.psql("INSERT INTO api_keys VALUES ('pk-1', 'erin', true), ('pk-2', 'frank', false)")
        origin = gateway(ECHO)
        g = gateway(front(origin.port,
                          '{ "key-auth", pg_query = "SELECT name AS consumer FROM api_keys WHERE key = $1 AND enabled" }',
                          'postgres = { dsn = "host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable" },' % pg.port))
        assert requests.get(g.url("/who"), headers={"Authorization": "Bearer pk-1"}).json() == {"consumer": "erin"}
        assert requests.get(g.url("/who"), headers={"Authorization": "Bearer pk-2"}).status_code == 401
        assert requests.get(g.url("/who"), headers={"Authorization": "Bearer x' OR '1'='1"}).status_code == 401
    finally:
        pg.stop()
        shutil.rmtree(pg.base, ignore_errors=True)
