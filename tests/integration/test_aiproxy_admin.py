"""examples/aiproxy, admin part: the whole admin API against a real
PostgreSQL 15 (test_postgres.Postgres, module-scoped) and a real Redis
(test_redis.Redis), the gateway started as an operator would, with env vars.
Includes the seed's curl sequence run verbatim with real `curl`."""
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

import pytest
import requests

from conftest import BIN, REPO, SLOW, free_port, requests_default_timeout
from test_postgres import PGBIN, Postgres
from test_redis import Redis

requests_default_timeout()

APP = str(REPO / "examples" / "aiproxy" / "gateway.lua")
KEY = "sealos-admin"
AUTH = {"Authorization": KEY}


class App:
    def __init__(self, tmp, env, workers=2, stdout=None):
        self.port = free_port()
        self.err_path = os.path.join(tmp, "aiproxy-%d.err" % self.port)
        e = dict(os.environ)
        e.pop("AIPROXY_TEST_FAIL_CASCADE", None)
        # unflushed log rows spooled at stop stay with this test, not examples/aiproxy/spool
        e["MOONGATE_SPOOL_DIR"] = os.path.join(tmp, "spool-%d" % self.port)
        e.update(env)
        self.proc = subprocess.Popen([BIN, "--port", str(self.port), "--workers", str(workers), APP],
                                     stdout=open(stdout, "wb") if stdout else subprocess.DEVNULL,
                                     stderr=open(self.err_path, "wb"),
                                     stdin=subprocess.DEVNULL, env=e)
        deadline = time.time() + 10 * SLOW
        while time.time() < deadline:
            if "server started" in self.stderr():
                break
            if self.proc.poll() is not None:
                raise RuntimeError("moongate exited:\n" + self.stderr())
            time.sleep(0.02)
        else:
            raise RuntimeError("moongate did not start:\n" + self.stderr())
        # the schema is created by a timer at start: wait for it
        deadline = time.time() + 10 * SLOW
        while time.time() < deadline and not any(s in self.stderr() for s in ("schema ready", "migration failed")):
            time.sleep(0.02)

    def stderr(self):
        with open(self.err_path, errors="replace") as f:
            return f.read()

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def get(self, path, **kw):
        kw.setdefault("headers", AUTH)
        return requests.get(self.url(path), **kw)

    def post(self, path, body=None, raw=None, **kw):
        kw.setdefault("headers", AUTH)
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        return requests.post(self.url(path), data=data, **kw)

    def delete(self, path, **kw):
        kw.setdefault("headers", AUTH)
        return requests.delete(self.url(path), **kw)

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(15)


@pytest.fixture(scope="module")
def pg():
    if not os.path.exists(PGBIN + "/initdb"):
        pytest.fail("postgresql-15 is not installed (scripts/setup.sh --test installs it)")
    server = Postgres(tempfile.mkdtemp(prefix="moongate-aiproxy-pg-"))
    yield server
    try:
        server.stop()
    except AssertionError:
        pass
    shutil.rmtree(server.base, ignore_errors=True)


@pytest.fixture(scope="module")
def redis():
    d = tempfile.mkdtemp(prefix="moongate-aiproxy-redis-")
    r = Redis(d)
    yield r
    r.stop()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def env(pg, redis):
    return {"ADMIN_KEY": KEY,
            "SQL_DSN": "postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable" % pg.port,
            "REDIS_CONN_STRING": "redis://127.0.0.1:%d/0" % redis.port}


@pytest.fixture(scope="module")
def tmpdir_mod():
    d = tempfile.mkdtemp(prefix="moongate-aiproxy-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def app(env, tmpdir_mod):
    a = App(tmpdir_mod, env)
    yield a
    a.stop()


def ok(r, status=200):
    assert r.status_code == status, (r.status_code, r.text)
    j = r.json()
    assert j["success"] is True and j["message"] == "", j
    return j["data"]


def err(r, status, text=None):
    assert r.status_code == status, (r.status_code, r.text)
    j = r.json()
    assert j["success"] is False, j
    assert isinstance(j["message"], str) and j["message"]
    if text:
        assert text in j["message"], j
    return j["message"]


def curl(args):
    p = subprocess.run(["curl", "-sS"] + args, capture_output=True, text=True, timeout=20)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_seed_curl_sequence_verbatim(app):
    base = "http://127.0.0.1:%d" % app.port
    # 创建一个group
    r = curl([base + "/api/group/", "-H", "Authorization: sealos-admin", "-d", '{\n"id": "ns-admin"\n}'])
    assert r["success"] is True, r
    # 创建一个token
    r = curl([base + "/api/token/ns-admin", "-H", "Authorization: sealos-admin", "-d", '{\n"name": "token 1"\n}'])
    assert r["success"] is True, r
    tok = r["data"]
    assert re.fullmatch(r"[A-Za-z0-9]{48}", tok["key"]) and tok["name"] == "token 1"
    assert tok["group"] == "ns-admin" and tok["status"] == 1
    assert tok["models"] == [] and tok["subnets"] == []
    assert abs(tok["created_at"] - time.time() * 1000) < 60000        # unix milliseconds
    # 查询token
    r = curl([base + "/api/tokens/", "-H", "Authorization: sealos-admin"])
    assert r["success"] is True
    mine = [t for t in r["data"]["tokens"] if t["group"] == "ns-admin"]
    assert [t["name"] for t in mine] == ["token 1"] and mine[0]["key"] == tok["key"]
    assert r["data"]["total"] >= 1
    # 删除group
    r = curl([base + "/api/group/ns-admin", "-H", "Authorization: sealos-admin", "-X", "DELETE"])
    assert r["success"] is True, r
    # 再次查询token
    r = curl([base + "/api/tokens/", "-H", "Authorization: sealos-admin"])
    assert r["success"] is True
    assert [t for t in r["data"]["tokens"] if t["group"] == "ns-admin"] == []
    assert isinstance(r["data"]["tokens"], list)


def test_auth(app):
    err(app.get("/api/groups/", headers={}), 401, "missing")
    err(app.get("/api/groups/", headers={"Authorization": "wrong"}), 401, "invalid")
    err(app.get("/api/groups/", headers={"Authorization": KEY + "x"}), 401)
    err(app.get("/api/groups/", headers={"Authorization": KEY[:-1]}), 401)
    err(app.get("/api/groups/", headers={"Authorization": "Bearer wrong"}), 401)
    err(app.post("/api/group/", {"id": "auth-x"}, headers={}), 401)
    ok(app.get("/api/groups/", headers={"Authorization": KEY}))
    ok(app.get("/api/groups/", headers={"Authorization": "Bearer " + KEY}))
    # status needs no key
    s = ok(app.get("/api/status", headers={}))
    assert s["status"] == "ok" and s["database"] == "ok"
    # unknown paths and methods: same envelope
    err(app.get("/api/nope", headers={}), 404)
    err(requests.put(app.url("/api/group/x"), headers=AUTH), 405)


def test_groups_crud_and_status(app):
    g = ok(app.post("/api/group/", {"id": "crud-1"}))
    assert g["id"] == "crud-1" and g["status"] == 1 and g["request_count"] == 0
    assert abs(g["created_at"] - time.time() * 1000) < 60000
    g2 = ok(app.post("/api/group/crud-2"))                 # id in the path, no body
    assert g2["id"] == "crud-2"
    assert ok(app.get("/api/group/crud-1"))["id"] == "crud-1"
    assert ok(app.post("/api/group/crud-1/status", {"status": 2}))["status"] == 2
    assert ok(app.get("/api/group/crud-1"))["status"] == 2
    assert ok(app.post("/api/group/crud-1/status", {"status": 1}))["status"] == 1
    d = ok(app.delete("/api/group/crud-2"))
    assert d["deleted_tokens"] == 0
    err(app.get("/api/group/crud-2"), 404, "not found")


def test_pagination(app):
    ok(app.post("/api/group/", {"id": "page-g"}))
    for i in range(25):
        ok(app.post("/api/token/page-g", {"name": "t%02d" % i}))
    d = ok(app.get("/api/token/page-g"))
    assert d["total"] == 25 and len(d["tokens"]) == 10                   # default per_page 10
    d = ok(app.get("/api/token/page-g?page=3&per_page=10"))
    assert d["total"] == 25 and len(d["tokens"]) == 5
    d = ok(app.get("/api/token/page-g?page=4"))
    assert d["total"] == 25 and d["tokens"] == []
    names = set()
    for p in (1, 2, 3):
        names |= {t["name"] for t in ok(app.get("/api/token/page-g?per_page=10&page=%d" % p))["tokens"]}
    assert len(names) == 25                                              # no overlap, nothing missing
    d = ok(app.get("/api/tokens/?group=page-g&per_page=1000"))
    assert d["total"] == 25 and len(d["tokens"]) == 25                   # capped at 100, not refused
    for i in range(105):
        ok(app.post("/api/token/page-g", {"name": "more%03d" % i}))
    d = ok(app.get("/api/tokens/?group=page-g&per_page=1000"))
    assert d["total"] == 130 and len(d["tokens"]) == 100
    d = ok(app.get("/api/tokens/?group=page-g&status=2"))
    assert d == {"tokens": [], "total": 0}
    # groups list
    d = ok(app.get("/api/groups/?per_page=1"))
    assert len(d["groups"]) == 1 and d["total"] >= 1
    for bad in ("page=0", "page=-1", "page=x", "per_page=0", "per_page=abc"):
        err(app.get("/api/token/page-g?" + bad), 400, bad.split("=")[0])
        err(app.get("/api/groups/?" + bad), 400)
    ok(app.delete("/api/group/page-g"))


def test_bad_input_is_400_naming_the_problem(app):
    err(app.post("/api/group/", {}), 400, "group id is required")
    err(app.post("/api/group/", raw=""), 400, "JSON object")
    err(app.post("/api/group/", raw="id=x"), 400, "JSON object")
    err(app.post("/api/group/", raw="[1,2]"), 400, "JSON object")
    err(app.post("/api/group/", {"id": 5}), 400, "must be a string")
    err(app.post("/api/group/", {"id": ""}), 400, "group id is required")
    err(app.post("/api/group/", {"id": "x" * 65}), 400, "too long")
    ok(app.post("/api/group/", {"id": "y" * 64}))                         # 64 is fine
    err(app.post("/api/group/" + "z" * 65), 400, "too long")
    ok(app.post("/api/group/", {"id": "dup"}))
    err(app.post("/api/group/", {"id": "dup"}), 400, "already exists")
    err(app.post("/api/group/dup"), 400, "already exists")
    # group status
    err(app.post("/api/group/dup/status", {"status": 3}), 400, "status")
    err(app.post("/api/group/dup/status", {}), 400, "status")
    err(app.post("/api/group/dup/status", raw="nope"), 400, "JSON")
    # tokens
    err(app.post("/api/token/dup", {}), 400, "token name is required")
    err(app.post("/api/token/dup", {"name": 3}), 400, "name must be a string")
    err(app.post("/api/token/dup", {"name": "n" * 65}), 400, "too long")
    err(app.post("/api/token/dup", {"name": "a", "models": "gpt-4"}), 400, "models")
    err(app.post("/api/token/dup", {"name": "a", "models": [1]}), 400, "models")
    err(app.post("/api/token/dup", {"name": "a", "quota": -1}), 400, "quota")
    err(app.post("/api/token/dup", {"name": "a", "quota": "lots"}), 400, "quota")
    err(app.post("/api/token/dup", {"name": "a", "subnets": ["nope"]}), 400, "subnets")
    err(app.post("/api/token/dup", {"name": "a", "subnets": ["10.0.0.0/33"]}), 400, "subnets")
    t = ok(app.post("/api/token/dup", {"name": "a", "models": ["gpt-4o"], "quota": 12.5,
                                       "subnets": ["10.0.0.0/8", "fd00::/8"]}))
    assert t["models"] == ["gpt-4o"] and t["quota"] == 12.5 and t["subnets"] == ["10.0.0.0/8", "fd00::/8"]
    err(app.post("/api/token/dup", {"name": "a"}), 400, "already exists")
    ok(app.post("/api/token/y" + "y" * 63, {"name": "a"}))                # same name, other group
    err(app.post("/api/token/" + "z" * 65, {"name": "a"}), 400, "too long")
    err(app.get("/api/token/dup/abc"), 400, "token id")
    err(app.post("/api/token/dup/%d/status" % t["id"], {"status": "on"}), 400, "status")
    err(app.get("/api/tokens/?status=9"), 400, "status")
    err(app.get("/api/tokens/?group=" + "z" * 65), 400, "too long")


def test_access_log_follows_aiproxy_access_log(env, tmpdir_mod):
    bad = dict(os.environ, **env, AIPROXY_ACCESS_LOG="yes")
    r = subprocess.run([BIN, "-t", APP], env=bad, capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and 'AIPROXY_ACCESS_LOG: must be "on" or "off" (got "yes")' in r.stderr, r.stderr
    lines = {}
    for setting in ("on", "off", None):                  # None: unset, the default (on)
        out = os.path.join(tmpdir_mod, "access-%s.out" % setting)
        e = dict(env)
        if setting:
            e["AIPROXY_ACCESS_LOG"] = setting
        a = App(tmpdir_mod, e, workers=1, stdout=out)
        try:
            assert a.get("/api/status").status_code == 200
        finally:
            a.stop()
        with open(out) as f:
            lines[setting] = [l for l in f if '"/api/status"' in l]
    assert len(lines["on"]) == 1 and len(lines[None]) == 1, lines
    assert lines["off"] == []


def test_not_found_is_404(app):
    err(app.get("/api/group/ghost"), 404, "ghost")
    err(app.delete("/api/group/ghost"), 404, "ghost")
    err(app.post("/api/group/ghost/status", {"status": 2}), 404, "ghost")
    err(app.post("/api/token/ghost", {"name": "x"}), 404, "ghost")
    err(app.get("/api/token/ghost"), 404, "ghost")
    ok(app.post("/api/group/", {"id": "nf"}))
    err(app.get("/api/token/nf/999999"), 404, "not found")
    err(app.delete("/api/token/nf/999999"), 404, "not found")
    err(app.post("/api/token/nf/999999/status", {"status": 2}), 404, "not found")
    t = ok(app.post("/api/token/nf", {"name": "x"}))
    err(app.get("/api/token/ghost/%d" % t["id"]), 404)                    # right id, wrong group
    assert ok(app.get("/api/token/nf/%d" % t["id"]))["key"] == t["key"]
    assert ok(app.delete("/api/token/nf/%d" % t["id"]))["id"] == t["id"]
    err(app.get("/api/token/nf/%d" % t["id"]), 404)


@pytest.mark.parametrize("where", ["tokens", "group"])
def test_group_delete_is_atomic(env, pg, tmpdir_mod, where):
    # key=value DSN form here
    e = dict(env, SQL_DSN="host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable" % pg.port,
             AIPROXY_TEST_FAIL_CASCADE=where)
    a = App(tmpdir_mod, e, workers=1)
    try:
        gid = "atomic-" + where
        ok(a.post("/api/group/", {"id": gid}))
        t1 = ok(a.post("/api/token/" + gid, {"name": "one"}))
        ok(a.post("/api/token/" + gid, {"name": "two"}))
        r = a.delete("/api/group/" + gid)
        err(r, 500, "rolled back")
        assert "AIPROXY_TEST_FAIL_CASCADE" in a.stderr()
        # both the group and its tokens are still there
        assert ok(a.get("/api/group/" + gid))["id"] == gid
        assert ok(a.get("/api/token/" + gid))["total"] == 2
        assert pg.psql("SELECT count(*) FROM tokens WHERE group_id = '%s'" % gid) == "2"
        assert pg.psql("SELECT count(*) FROM groups WHERE id = '%s'" % gid) == "1"
        assert ok(a.get("/api/lookup/" + t1["key"]))["token"]["id"] == t1["id"]
    finally:
        a.stop()
    # without the hook the same delete goes through, tokens included
    b = App(tmpdir_mod, env, workers=1)
    try:
        assert ok(b.delete("/api/group/" + gid))["deleted_tokens"] == 2
        assert pg.psql("SELECT count(*) FROM tokens WHERE group_id = '%s'" % gid) == "0"
        err(b.get("/api/lookup/" + t1["key"]), 404)
    finally:
        b.stop()


def test_token_lookup_cache_and_invalidation(app, redis):
    ok(app.post("/api/group/", {"id": "cache-g"}))
    t = ok(app.post("/api/token/cache-g", {"name": "c"}))
    key = t["key"]
    rkey = "aiproxy:token:" + key
    d = ok(app.get("/api/lookup/sk-" + key))
    assert d["source"] == "db" and d["token"]["status"] == 1 and d["token"]["group_status"] == 1
    assert d["token"]["models"] == []
    assert redis.cli("EXISTS", rkey).strip() == "1"
    assert 0 < int(redis.cli("TTL", rkey)) <= 30
    cached = ok(app.get("/api/lookup/" + key))
    assert cached["source"] in ("memory", "redis")
    assert cached["token"]["models"] == [] and cached["token"]["subnets"] == []
    # token status change: both layers cleared, next lookup sees it
    ok(app.post("/api/token/cache-g/%d/status" % t["id"], {"status": 2}))
    assert redis.cli("EXISTS", rkey).strip() == "0"
    d = ok(app.get("/api/lookup/" + key))
    assert d["source"] == "db" and d["token"]["status"] == 2
    # group status change
    ok(app.get("/api/lookup/" + key))
    ok(app.post("/api/group/cache-g/status", {"status": 2}))
    assert redis.cli("EXISTS", rkey).strip() == "0"
    d = ok(app.get("/api/lookup/" + key))
    assert d["source"] == "db" and d["token"]["group_status"] == 2
    ok(app.post("/api/group/cache-g/status", {"status": 1}))
    d = ok(app.get("/api/lookup/" + key))
    assert d["source"] == "db"
    # token delete
    ok(app.delete("/api/token/cache-g/%d" % t["id"]))
    assert redis.cli("EXISTS", rkey).strip() == "0"
    err(app.get("/api/lookup/" + key), 404)
    # group delete clears its tokens' entries
    t2 = ok(app.post("/api/token/cache-g", {"name": "c2"}))
    ok(app.get("/api/lookup/" + t2["key"]))
    assert redis.cli("EXISTS", "aiproxy:token:" + t2["key"]).strip() == "1"
    ok(app.delete("/api/group/cache-g"))
    assert redis.cli("EXISTS", "aiproxy:token:" + t2["key"]).strip() == "0"
    err(app.get("/api/lookup/" + t2["key"]), 404)
    err(app.get("/api/lookup/sk-unknown"), 404)


def test_database_down_is_503_then_recovers(app, pg):
    ok(app.get("/api/groups/"))
    pg.stop()
    try:
        for _ in range(3):                       # every pooled connection notices
            r = app.get("/api/groups/")
            err(r, 503, "database unavailable")
        err(app.post("/api/group/", {"id": "down"}), 503, "database unavailable")
        err(app.delete("/api/group/whatever"), 503, "database unavailable")
        s = ok(app.get("/api/status", headers={}))
        assert s["database"] == "unavailable"
    finally:
        pg.start()
    deadline = time.time() + 15 * SLOW
    while time.time() < deadline:
        if app.get("/api/groups/").status_code == 200:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the admin API did not recover after PostgreSQL came back")
    # The other worker may still be in its reconnect backoff for a moment
    # (503 at once): it recovers too.
    while True:
        r = app.post("/api/group/", {"id": "after-restart"})
        if r.status_code != 503 or time.time() > deadline:
            break
        time.sleep(0.1)
    ok(r)
    assert "Traceback" not in app.stderr() and "internal server error" not in app.stderr()
