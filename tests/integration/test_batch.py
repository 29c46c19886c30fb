"""moongate.batch (lua/moongate/batch.lua) against a real PostgreSQL 15:
rows pushed by handlers reach the database exactly once (INSERT ... ON
CONFLICT DO NOTHING over at-least-once delivery) and in push order per
worker, through a database outage, a reload and a stop/start."""
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import pytest
import requests

from conftest import BIN, SLOW, wait_until
from test_postgres import PGBIN, Postgres


@pytest.fixture(scope="module")
def pg():
    if not os.path.exists(PGBIN + "/initdb"):
        pytest.fail("postgresql-15 is not installed (scripts/setup.sh --test installs it)")
    server = Postgres(tempfile.mkdtemp(prefix="moongate-pg-"))
    yield server
    try:
        server.stop()
    except AssertionError:
        pass
    shutil.rmtree(server.base, ignore_errors=True)


@pytest.fixture
def table(pg):
    pg.psql("DROP TABLE IF EXISTS batch_log; "
            "CREATE TABLE batch_log (n bigserial, id text PRIMARY KEY, stream text, seq int)")
    return "batch_log"


def ensure_up(pg):
    try:
        pg.start()
    except AssertionError:
        pass                                    # already running


def app(pg, spool_dir, interval=0.2, max_rows=50, limit="64m"):
    dsn = "postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable&gssencmode=disable" % pg.port
    return """
    local batch = require "moongate.batch"
    local pg = require "moongate.postgres"
    local core = require "moongate.core"
    local cjson = require "cjson"
    local stream = core.random_hex(12)          -- one per worker and generation
    local seq = 0
    local q = batch.new{
      name = "test-logs", interval = %s, max_rows = %d, spool_limit = %r, spool_dir = %r,
      flush = function(rows)
        local ok, err = pg.query([[INSERT INTO batch_log (id, stream, seq)
          SELECT id, stream, seq FROM json_to_recordset($1::json) AS r(id text, stream text, seq int)
          ON CONFLICT (id) DO NOTHING]], cjson.encode(rows))
        if not ok then return nil, err end
        return true
      end,
    }
    return { listen = "127.0.0.1:8080",
      postgres = { dsn = %r, pool = 2, timeout = "2s", wait_timeout = "1s" },
      routes = {
        { "POST", "/log", function(req)
            seq = seq + 1
            q:push({ id = req.id, stream = stream, seq = seq })
            return 200, { id = req.id, stream = stream, seq = seq }
          end },
        { "GET", "/stats", function() return 200, q:stats() end },
      } }
    """ % (interval, max_rows, limit, spool_dir, dsn)


def count(pg):
    return int(pg.psql("SELECT count(*) FROM batch_log") or 0)


def rows(pg):
    out = []
    for line in pg.psql("SELECT n, id, stream, seq FROM batch_log ORDER BY n").splitlines():
        n, id_, stream, seq = line.split("|")
        out.append((int(n), id_, stream, int(seq)))
    return out


def push(g, n):
    s = requests.Session()
    return [s.post(g.url("/log")).json() for _ in range(n)]


def check_exactly_once_in_order(pg, sent):
    got = rows(pg)
    ids = [r[1] for r in got]
    assert len(ids) == len(set(ids))
    assert set(ids) == {s["id"] for s in sent}, "missing %d rows" % (len(sent) - len(ids))
    last = {}
    for _, _, stream, seq in got:                 # in insertion order
        assert seq > last.get(stream, 0), "stream %s: seq %d after %d" % (stream, seq, last[stream])
        last[stream] = seq


def spool_files(d, pattern="*"):
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(d, pattern)))


def test_rows_survive_a_database_outage_under_load(gateway, pg, table, tmp_path):
    spool = str(tmp_path / "spool")
    g = gateway(app(pg, spool), workers=2)
    sent, lock, stop = [], threading.Lock(), threading.Event()

    def load():
        s, n = requests.Session(), 0
        while not stop.is_set():
            n += 1
            if n % 10 == 0:                       # new connections: both workers accept some
                s.close()
                s = requests.Session()
            r = s.post(g.url("/log"))
            assert r.status_code == 200
            with lock:
                sent.append(r.json())

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0 * SLOW)
        pg.stop()
        try:
            time.sleep(2.0 * SLOW)                # requests go on, rows go to the spool
            assert wait_until(lambda: spool_files(spool), 3)
        finally:
            pg.start()
        time.sleep(1.0 * SLOW)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert len({s["stream"] for s in sent}) == 2      # both workers took requests
    assert wait_until(lambda: count(pg) >= len(sent), 20), (count(pg), len(sent))
    check_exactly_once_in_order(pg, sent)
    log = g.error_log()
    assert any("batch test-logs: flush failed" in l["msg"] and l["level"] == "warn" for l in log)
    assert any("flushing works again" in l["msg"] and "replayed" in l["msg"] for l in log)
    assert wait_until(lambda: spool_files(spool) == [], 5), spool_files(spool)


def test_rows_pushed_before_a_reload_arrive(gateway, pg, table, tmp_path):
    spool = str(tmp_path / "spool")
    g = gateway(app(pg, spool, interval=30, max_rows=1000), workers=2)
    sent = push(g, 40)
    time.sleep(0.3)
    assert count(pg) == 0                          # not flushed yet: interval 30 s
    g.reload()
    assert wait_until(lambda: count(pg) == 40, 10), count(pg)
    check_exactly_once_in_order(pg, sent)
    assert any("replayed" in l["msg"] and "from spool file" in l["msg"] for l in g.error_log())
    assert wait_until(lambda: spool_files(spool) == [], 5), spool_files(spool)


SLOW_ROUTE = """{ "POST", "/slow", function(req)
            q:push({ id = req.id .. "-a", stream = stream .. "-slow", seq = 1 })
            core.sleep(tonumber(req.query.s))
            q:push({ id = req.id .. "-b", stream = stream .. "-slow", seq = 2 })
            return 200, { id = req.id }
          end },
        { "GET", "/stats\""""


def test_reload_with_a_request_in_flight_hands_the_rows_over_at_once(gateway, pg, table, tmp_path):
    """The old generation stays alive for its slow request; its rows do not
    wait for that request to end (retire hook), and the row that request
    pushes afterwards arrives when it ends (close hook)."""
    spool = str(tmp_path / "spool")
    cfg = app(pg, spool, interval=30, max_rows=1000).replace('{ "GET", "/stats"', SLOW_ROUTE)
    g = gateway(cfg, workers=1)
    slow = {}
    t = threading.Thread(target=lambda: slow.update(
        requests.post(g.url("/slow?s=%d" % (4 * SLOW))).json()))
    t.start()
    time.sleep(0.3)
    sent = push(g, 20)
    g.reload()
    assert wait_until(lambda: count(pg) == 21, 3), count(pg)     # before the slow request ends
    assert t.is_alive()
    t.join()
    assert wait_until(lambda: count(pg) == 22, 10), count(pg)
    got = {r[1] for r in rows(pg)}
    assert got == {s["id"] for s in sent} | {slow["id"] + "-a", slow["id"] + "-b"}


def test_graceful_stop_while_the_database_is_down_spools_then_replays(gateway, pg, table, tmp_path):
    spool = str(tmp_path / "spool")
    pg.stop()
    try:
        g = gateway(app(pg, spool), workers=2)
        sent = push(g, 30)
        time.sleep(0.5 * SLOW)
        assert g.stop() == 0
        ready = spool_files(spool)
        assert ready and all(f.endswith(".spool") for f in ready), ready
        n = 0
        for f in ready:
            with open(os.path.join(spool, f)) as fh:
                n += sum(1 for _ in fh)
        assert n >= 30
    finally:
        ensure_up(pg)
    g2 = gateway(app(pg, spool), workers=2)
    assert wait_until(lambda: count(pg) == 30, 10), count(pg)
    check_exactly_once_in_order(pg, sent)
    assert wait_until(lambda: spool_files(spool) == [], 5), spool_files(spool)
    assert g2.proc.poll() is None


def test_spool_limit_drops_counts_and_logs(gateway, pg, table, tmp_path):
    spool = str(tmp_path / "spool")
    pg.stop()
    try:
        g = gateway(app(pg, spool, interval=0.1, limit="1k"), workers=1)
        sent = push(g, 100)

        def settled():
            s = requests.get(g.url("/stats")).json()
            return s if s["pending"] == 0 and s["failures"] > 0 else None
        st = wait_until(settled, 5)
        assert st, requests.get(g.url("/stats")).json()
        assert st["dropped"] > 0 and st["spooled_rows"] + st["dropped"] == 100, st
        assert st["spooled_bytes"] <= 1024, st
        warns = [l for l in g.error_log() if "spool limit reached" in l["msg"]]
        assert warns and warns[0]["level"] == "warn" and "dropped" in warns[0]["msg"]
        assert len(warns) <= 2                      # rate-limited, not one per row
    finally:
        ensure_up(pg)
    kept = 100 - st["dropped"]
    assert wait_until(lambda: count(pg) == kept, 10), (count(pg), kept)
    got = {r[1] for r in rows(pg)}
    assert got <= {s["id"] for s in sent}
    check_order = rows(pg)
    assert [r[3] for r in check_order] == sorted(r[3] for r in check_order)
    st = wait_until(lambda: requests.get(g.url("/stats")).json()["spooled_rows"] == 0, 5)
    assert st


@pytest.mark.parametrize("opts,msg", [
    ('{ flush = function() return true end }', "batch.new: name: required"),
    ('{ name = "a/b", flush = function() return true end }', "batch.new: name: only letters"),
    ('{ name = "x" }', "batch.new: flush: required"),
    ('{ name = "x", flush = function() end, interval = "1s" }', "batch.new: interval"),
    ('{ name = "x", flush = function() end, spool_limit = "much" }', "batch.new: spool_limit"),
])
def test_bad_batch_options_are_a_load_error(tmp_path, opts, msg):
    cfg = tmp_path / "g.lua"
    cfg.write_text('local batch = require "moongate.batch"\n'
                   'local q = batch.new%s\n'
                   'return { routes = {} }\n' % opts)
    p = subprocess.run([BIN, "-t", str(cfg)], capture_output=True, text=True)
    assert p.returncode == 1 and msg in p.stderr, p.stderr
    assert "g.lua:2:" in p.stderr, p.stderr          # names the line that called batch.new
    assert not os.path.exists(tmp_path / "spool")    # a check writes nothing
