"""PostgreSQL from Lua (lua/moongate/postgres.lua) against a real
PostgreSQL 15 started for this file on a free loopback port (initdb as the
postgres user, as root CI needs) and stopped with pg_ctl."""
import concurrent.futures
import os
import shutil
import subprocess
import tempfile
import time

import pytest
import requests

from conftest import BIN, SLOW, free_port

PGBIN = "/usr/lib/postgresql/15/bin"


class Postgres:
    def __init__(self, base):
        self.base = base
        self.port = free_port()
        self.data = os.path.join(base, "pgdata")
        os.makedirs(base, exist_ok=True)
        os.chmod(base, 0o755)
        subprocess.run(["install", "-d", "-o", "postgres", "-g", "postgres", "-m", "700", self.data], check=True)
        self.run_as_postgres([PGBIN + "/initdb", "-D", self.data, "-U", "postgres", "--auth=trust",
                              "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"])
        self.start()

    def run_as_postgres(self, cmd):
        p = subprocess.run(["runuser", "-u", "postgres", "--"] + cmd, cwd="/",
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr

    def start(self):
        self.run_as_postgres([PGBIN + "/pg_ctl", "-D", self.data, "-l", self.data + "/server.log",
                              "-w", "-t", "30", "-o",
                              "-c listen_addresses=127.0.0.1 -p %d -k %s -c fsync=off "
                              "-c synchronous_commit=off -c full_page_writes=off" % (self.port, self.data),
                              "start"])

    def stop(self):
        self.run_as_postgres([PGBIN + "/pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop"])

    def psql(self, sql):
        return subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                               "-d", "postgres", "-tAc", sql], capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def pg():
    if not os.path.exists(PGBIN + "/initdb"):
        pytest.fail("postgresql-15 is not installed (scripts/setup.sh --test installs it)")
    # Not under pytest's tmp dir: that one is 0700 root, and the server runs as postgres.
    server = Postgres(tempfile.mkdtemp(prefix="moongate-pg-"))
    server.psql("CREATE TABLE IF NOT EXISTS groups (id text PRIMARY KEY, n int)")
    yield server
    try:
        server.stop()
    except AssertionError:
        pass
    shutil.rmtree(server.base, ignore_errors=True)


def app(dsn, pool=2, timeout="2s", wait="300ms"):
    return """
    local pg = require "moongate.postgres"
    return { listen = "127.0.0.1:8080",
      postgres = { dsn = %r, pool = %d, timeout = %r, wait_timeout = %r },
      routes = {
        { "GET", "/types", function()
            local rows, err = pg.query([[SELECT 1::int AS i, 2.5::float8 AS f, true AS b, 'x'::text AS t,
              '{"a":[1,2]}'::jsonb AS j, NULL::text AS n, 12345678901::bigint AS big, $1::text AS p]], "it's; DROP TABLE groups")
            if not rows then return 500, err end
            local r = rows[1]
            return 200, { i = r.i, f = r.f, b = r.b, t = r.t, j = r.j, null = r.n == pg.null, big = r.big, p = r.p }
          end },
        { "POST", "/group/:id", function(req)
            local rows, err, state = pg.query("INSERT INTO groups (id, n) VALUES ($1, 0)", req.params.id)
            if not rows then return 400, { err = err, state = state } end
            return 200, { affected = rows.affected }
          end },
        { "POST", "/tx/:id", function(req)
            local ok, err = pcall(pg.transaction, function(tx)
              tx.query("INSERT INTO groups (id, n) VALUES ($1, 1)", req.params.id)
              if req.query.fail then error("changed my mind") end
              if req.query.nested then pg.transaction(function() end) end
            end)
            return 200, { ok = ok, err = ok and "" or tostring(err) }
          end },
        { "GET", "/count/:id", function(req)
            local rows = assert(pg.query("SELECT count(*)::int AS c FROM groups WHERE id = $1", req.params.id))
            return 200, { c = rows[1].c }
          end },
        { "GET", "/sleep/:s", function(req)
            local rows, err, state = pg.query("SELECT pg_sleep($1::float8)", req.params.s)
            if not rows then return 200, { err = err, state = state } end
            return 200, { ok = true }
          end },
        { "GET", "/up", function()
            local rows, err = pg.query("SELECT 1 AS one")
            if not rows then return 503, "database unavailable: " .. err end
            return 200, { one = rows[1].one }
          end },
      } }
    """ % (dsn, pool, timeout, wait)


def url_dsn(pg):
    return "postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable&gssencmode=disable" % pg.port


def test_types_and_parameters(gateway, pg):
    g = gateway(app(url_dsn(pg)))
    r = requests.get(g.url("/types")).json()
    assert r == {"i": 1, "f": 2.5, "b": True, "t": "x", "j": {"a": [1, 2]}, "null": True,
                 "big": 12345678901, "p": "it's; DROP TABLE groups"}
    assert pg.psql("SELECT count(*) FROM groups") != ""       # still there: no interpolation


def test_errors_carry_sqlstate_and_affected_rows(gateway, pg):
    g = gateway(app("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable" % pg.port))
    assert requests.post(g.url("/group/g1")).json() == {"affected": 1}
    dup = requests.post(g.url("/group/g1")).json()
    assert dup["state"] == "23505" and "duplicate key" in dup["err"]


def test_transactions_commit_roll_back_and_refuse_nesting(gateway, pg):
    g = gateway(app(url_dsn(pg)))
    assert requests.post(g.url("/tx/t1")).json()["ok"] is True
    assert requests.get(g.url("/count/t1")).json()["c"] == 1
    r = requests.post(g.url("/tx/t2?fail=1")).json()
    assert r["ok"] is False and "changed my mind" in r["err"]
    assert requests.get(g.url("/count/t2")).json()["c"] == 0    # rolled back
    r = requests.post(g.url("/tx/t3?nested=1")).json()
    assert r["ok"] is False and "already inside a transaction" in r["err"]
    assert requests.get(g.url("/count/t3")).json()["c"] == 0


def test_query_timeout_and_pool_wait_bound(gateway, pg):
    g = gateway(app(url_dsn(pg), pool=1, timeout="500ms", wait="200ms"))
    r = requests.get(g.url("/sleep/2")).json()
    assert r["state"] == "57014", r                              # statement timeout
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        a = ex.submit(requests.get, g.url("/sleep/0.4"))
        time.sleep(0.05)
        b = ex.submit(requests.get, g.url("/sleep/0.01"))
        ra, rb = a.result().json(), b.result().json()
    assert ra == {"ok": True}
    assert rb["err"] == "timeout waiting for a database connection", rb
    assert requests.get(g.url("/up")).json() == {"one": 1}        # the pool is fine after


def test_database_down_answers_fast_then_recovers(gateway, pg):
    g = gateway(app(url_dsn(pg)))
    assert requests.get(g.url("/up")).status_code == 200
    pg.stop()
    try:
        t0 = time.time()
        r = requests.get(g.url("/up"))
        assert r.status_code == 503
        assert time.time() - t0 < 2 * SLOW
    finally:
        pg.start()
    deadline = time.time() + 10 * SLOW
    while time.time() < deadline:
        if requests.get(g.url("/up")).status_code == 200:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("service did not resume after the database came back")


def test_bad_postgres_config_is_refused(tmp_path):
    cfg = tmp_path / "g.lua"
    cfg.write_text('return { postgres = { pool = 2 }, routes = {} }')
    p = subprocess.run([BIN, "-t", str(cfg)], capture_output=True, text=True)
    assert p.returncode == 1 and "postgres.dsn: is required" in p.stderr, p.stderr
