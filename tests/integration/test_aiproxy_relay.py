"""examples/aiproxy, the relay: /v1/* against the mock provider
(examples/mock-openai, a real moongate process) with a real PostgreSQL 15 and
a real Redis. Every test uses its own model names, so the channels other
tests created do not serve them."""
import concurrent.futures
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid

import pytest
import requests

from conftest import BIN, REPO, SLOW, free_port, requests_default_timeout
from test_aiproxy_admin import App, KEY, AUTH, ok, pg, redis, tmpdir_mod  # noqa: F401 (fixtures)

requests_default_timeout()

MOCK = str(REPO / "examples" / "mock-openai" / "gateway.lua")


class Mock:
    def __init__(self, tmp):
        self.port = free_port()
        self.err_path = os.path.join(tmp, "mock-%d.err" % self.port)
        self.proc = subprocess.Popen([BIN, "--port", str(self.port), MOCK], stdout=subprocess.DEVNULL,
                                     stderr=open(self.err_path, "wb"), stdin=subprocess.DEVNULL)
        deadline = time.time() + 10 * SLOW
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("mock did not start")

    def url(self, path=""):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def stats(self):
        return requests.get(self.url("/mock/stats")).json()

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(15)


@pytest.fixture(scope="module")
def mock(tmpdir_mod):
    m = Mock(tmpdir_mod)
    yield m
    m.stop()


@pytest.fixture(scope="module")
def env(pg, redis, tmpdir_mod):
    return {"ADMIN_KEY": KEY,
            "SQL_DSN": "postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable" % pg.port,
            "REDIS_CONN_STRING": "redis://127.0.0.1:%d/0" % redis.port,
            "AIPROXY_LOG_FLUSH_INTERVAL": "0.2",
            "AIPROXY_SPOOL_DIR": os.path.join(tmpdir_mod, "spool")}


@pytest.fixture(scope="module")
def app(env, tmpdir_mod, mock):
    a = App(tmpdir_mod, env)
    yield a
    a.stop()


def uniq(prefix="m"):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:8])


def channel(app, base_url, models, key="sk-good", **kw):
    body = {"type": "openai", "name": uniq("ch"), "key": key, "base_url": base_url, "models": models}
    body.update(kw)
    return ok(app.post("/api/channel/", body))


def token(app, group=None, **kw):
    group = group or uniq("g")
    r = app.post("/api/group/" + group)
    assert r.status_code in (200, 400), r.text
    body = {"name": uniq("t")}
    body.update(kw)
    t = ok(app.post("/api/token/" + group, body))
    return t


def bearer(t):
    return {"Authorization": "Bearer sk-" + t["key"]}


def chat(app, t, model, headers=None, **kw):
    body = {"model": model, "messages": [{"role": "user", "content": "hello there"}]}
    body.update(kw)
    h = bearer(t)
    h.update(headers or {})
    return requests.post(app.url("/v1/chat/completions"), data=json.dumps(body), headers=h)


def oai_error(r, status, code=None):
    assert r.status_code == status, (r.status_code, r.text)
    e = r.json()["error"]
    assert isinstance(e["message"], str) and e["message"] and "type" in e
    if code:
        assert e["code"] == code, e
    assert r.headers.get("X-Request-ID")
    return e


def logs(app, request_id=None, wait=True, **q):
    q.setdefault("per_page", 100)
    if request_id:
        q["request_id"] = request_id
    deadline = time.time() + 5 * SLOW
    while True:
        data = ok(app.get("/api/logs/", params=q))
        if data["logs"] or not wait or time.time() > deadline:
            return data["logs"]
        time.sleep(0.05)


def one_log(app, r):
    rows = logs(app, r.headers["X-Request-ID"])
    assert len(rows) == 1, rows
    return rows[0]


def sse_events(resp_lines):
    out = []
    for line in resp_lines:
        if line.startswith(b"data: "):
            p = line[6:].decode()
            out.append(p if p == "[DONE]" else json.loads(p))
    return out


# --- the happy paths -------------------------------------------------------------

def test_chat_maps_the_model_both_ways_and_logs_the_mock_usage(app, mock):
    m = uniq()
    ch = channel(app, mock.url("/v1/"), [m], key="sk-channel-1", model_mapping={m: "upstream-" + m})
    assert ch["key"] != "sk-channel-1" and "****" in ch["key"]
    t = token(app)
    r = chat(app, t, m)
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["model"] == m and j["object"] == "chat.completion"
    assert j["choices"][0]["message"]["content"] == "w1 w2 w3 w4 w5"
    assert j["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    last = mock.stats()["last"]
    assert last["model"] == "upstream-" + m and last["authorization"] == "Bearer sk-channel-1"
    row = one_log(app, r)
    assert (row["model"], row["upstream_model"], row["channel"], row["code"]) == (m, "upstream-" + m, ch["id"], 200)
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (3, 5, 8)
    assert row["group"] == t["group"] and row["token_id"] == t["id"] and row["token_name"] == t["name"]
    assert row["usage_estimated"] is False and row["retries"] == 0 and row["ip"] == "127.0.0.1"


def test_completions_embeddings_and_models(app, mock):
    m, e, other = uniq(), uniq("emb"), uniq()
    channel(app, mock.url(), [m, e])
    channel(app, mock.url(), [other])
    t = token(app, models=[m, e])
    r = requests.post(app.url("/v1/completions"), headers=bearer(t),
                      data=json.dumps({"model": m, "prompt": "abcdefgh"}))
    assert r.status_code == 200 and r.json()["model"] == m and r.json()["object"] == "text_completion"
    assert r.json()["usage"]["prompt_tokens"] == 2
    r = requests.post(app.url("/v1/embeddings"), headers={"X-Api-Key": t["key"]},
                      data=json.dumps({"model": e, "input": ["abcd", "efgh"]}))
    assert r.status_code == 200, r.text
    assert r.json()["model"] == e and len(r.json()["data"]) == 2
    row = one_log(app, r)
    assert row["prompt_tokens"] == 2 and row["completion_tokens"] == 0 and row["endpoint"] == "/v1/embeddings"
    # the token may use m and e only
    r = requests.get(app.url("/v1/models"), headers=bearer(t))
    assert r.status_code == 200
    assert r.json()["object"] == "list"
    assert sorted(x["id"] for x in r.json()["data"]) == sorted([m, e])
    assert all(x["object"] == "model" for x in r.json()["data"])
    assert requests.get(app.url("/v1/models/" + m), headers=bearer(t)).json()["id"] == m
    oai_error(requests.get(app.url("/v1/models/" + other), headers=bearer(t)), 404, "model_not_found")
    oai_error(chat(app, t, other), 404, "model_not_found")


# --- the checks, in order --------------------------------------------------------

def test_auth_checks_in_order_with_openai_errors(app, mock):
    m = uniq()
    channel(app, mock.url(), [m])
    t = token(app)
    url = app.url("/v1/chat/completions")
    body = json.dumps({"model": m, "messages": [{"role": "user", "content": "x"}]})
    oai_error(requests.post(url, data=body), 401, "missing_api_key")
    e = oai_error(requests.post(url, data=body, headers={"Authorization": "Bearer sk-nonexistent-key-123"}), 401,
                  "invalid_api_key")
    assert "nonexistent" not in e["message"]
    # without "sk-" and through X-Api-Key
    assert requests.post(url, data=body, headers={"Authorization": "Bearer " + t["key"]}).status_code == 200
    assert requests.post(url, data=body, headers={"X-Api-Key": "sk-" + t["key"]}).status_code == 200
    # no model / bad JSON -> 400; unknown model -> 404 with OpenAI's sentence
    oai_error(requests.post(url, data=json.dumps({"messages": []}), headers=bearer(t)), 400)
    oai_error(requests.post(url, data="{not json", headers=bearer(t)), 400)
    e = oai_error(chat(app, t, "no-such-model"), 404, "model_not_found")
    assert e["message"] == "The model `no-such-model` does not exist or you do not have access to it."
    # a subnet the client is not in -> 403, but an unknown model would be 404 only after it
    t2 = token(app, subnets=["10.0.0.0/8"])
    oai_error(chat(app, t2, "no-such-model"), 403, "ip_not_allowed")
    t3 = token(app, subnets=["127.0.0.0/8", "::1/128"])
    assert chat(app, t3, m).status_code == 200
    # a disabled token -> 401 even with no model; a disabled group -> 403
    ok(app.post("/api/token/%s/%d/status" % (t["group"], t["id"]), {"status": 2}))
    oai_error(requests.post(url, data="{}", headers=bearer(t)), 401, "token_disabled")
    ok(app.post("/api/group/%s/status" % t3["group"], {"status": 2}))
    oai_error(chat(app, t3, m), 403, "group_disabled")


# --- failover, retries, fallbacks ------------------------------------------------

def test_failing_channels_are_retried_and_down_weighted(app, mock):
    m = uniq()
    bad = channel(app, mock.url(), [m], key="mock-fault-500", priority=1000)
    good = channel(app, mock.url(), [m], key="sk-good", priority=1)
    t = token(app)
    before = mock.stats()["by_key"].get("mock-fault-500", 0)
    for _ in range(20):
        r = chat(app, t, m)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == m
    rows = logs(app, token_name=t["name"])
    deadline = time.time() + 5 * SLOW
    while len(rows) < 20 and time.time() < deadline:
        rows = logs(app, token_name=t["name"])
    assert len(rows) == 20 and all(x["channel"] == good["id"] and x["code"] == 200 for x in rows)
    assert rows[-1]["retries"] == 1           # the first request tried the bad channel first
    # the bad channel (priority 1000 vs 1) sits out after 3 failures in a row
    # (per worker; 2 workers), instead of being tried first every time
    assert mock.stats()["by_key"].get("mock-fault-500", 0) - before <= 6
    assert bad["id"] != good["id"]


def test_429_and_refused_connections_go_to_the_next_channel(app, mock):
    m = uniq()
    dead = free_port()
    channel(app, "http://127.0.0.1:%d" % dead, [m], priority=1000)
    channel(app, mock.url(), [m], key="mock-fault-429", priority=1000)
    channel(app, mock.url(), [m], key="sk-good", priority=1)
    ok(app.post("/api/model_config/" + m, {"retry_times": 2}))
    t = token(app)
    r = chat(app, t, m)
    assert r.status_code == 200, r.text


def test_400_is_not_retried(app, mock):
    m = uniq()
    channel(app, mock.url(), [m], key="mock-fault-400")
    channel(app, mock.url(), [m], key="mock-fault-400")
    before = mock.stats()["by_key"].get("mock-fault-400", 0)
    t = token(app)
    r = chat(app, t, m)
    assert r.status_code == 400
    assert "error" in r.json()
    assert mock.stats()["by_key"].get("mock-fault-400", 0) == before + 1
    assert one_log(app, r)["code"] == 400


def test_a_400_after_a_retry_logs_the_retry(app, mock):
    m = uniq()
    channel(app, mock.url(), [m], key="mock-fault-500", priority=1000)
    channel(app, mock.url(), [m], key="mock-fault-400", priority=1)
    t = token(app)
    before = mock.stats()["by_key"].get("mock-fault-500", 0)
    r = chat(app, t, m)
    assert r.status_code == 400
    # Priority 1000 against 1: the failing channel comes first but for one
    # time in a thousand; the row counts whatever happened.
    tried = mock.stats()["by_key"].get("mock-fault-500", 0) - before
    assert one_log(app, r)["retries"] == tried


def test_fallback_model_when_every_channel_fails(app, mock):
    m, fb = uniq(), uniq("fallback")
    channel(app, mock.url(), [m], key="mock-fault-500")
    channel(app, mock.url(), [fb], model_mapping={fb: "up-" + fb})
    ok(app.post("/api/model_config/" + m, {"retry_times": 0, "fallbacks": [fb]}))
    t = token(app)
    r = chat(app, t, m)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == m                 # the caller sees the model it asked for
    row = one_log(app, r)
    assert row["model"] == m and row["upstream_model"] == "up-" + fb and row["retries"] == 1


def test_every_channel_failing_gives_an_openai_error_with_the_status(app, mock):
    m = uniq()
    channel(app, mock.url(), [m], key="mock-fault-500")
    t = token(app)
    e = oai_error(chat(app, t, m), 500)
    assert e["message"]
    m2 = uniq()
    channel(app, "http://127.0.0.1:%d" % free_port(), [m2])
    oai_error(chat(app, t, m2), 502, "upstream_unreachable")
    m3 = uniq()
    channel(app, mock.url(), [m3], key="mock-fault-429")
    r = chat(app, t, m3)
    oai_error(r, 429)


def test_garbage_from_the_upstream_is_a_502(app, mock):
    m = uniq()
    channel(app, mock.url(), [m], key="mock-fault-garbage")
    oai_error(chat(app, token(app), m), 502, "upstream_invalid_response")


# --- streaming ---------------------------------------------------------------------

def stream_request(app, t, body):
    c = http.client.HTTPConnection("127.0.0.1", app.port, timeout=20 * SLOW)
    h = bearer(t)
    h["Content-Type"] = "application/json"
    c.request("POST", "/v1/chat/completions", body=json.dumps(body), headers=h)
    return c, c.getresponse()


def timed_lines(resp):
    out = []
    while True:
        line = resp.readline()
        if not line:
            break
        out.append((time.time(), line.rstrip(b"\r\n")))
    return out


def test_stream_arrives_chunk_by_chunk_with_the_requested_model_and_usage(app, mock):
    m = uniq()
    channel(app, mock.url(), [m], model_mapping={m: "up-" + m})
    t = token(app)
    t0 = time.time()
    c, resp = stream_request(app, t, {"model": m, "stream": True, "mock": {"chunks": 6, "delay_ms": 150},
                                      "messages": [{"role": "user", "content": "hello there"}]})
    assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/event-stream")
    lines = timed_lines(resp)
    c.close()
    data = [(ts, l) for ts, l in lines if l.startswith(b"data: ")]
    events = sse_events(l for _, l in data)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(ev["model"] == m for ev in chunks)
    assert "".join(ev["choices"][0]["delta"].get("content") or "" for ev in chunks if ev["choices"]) == \
        "w1 w2 w3 w4 w5 w6"
    # the client did not ask for usage: the chunk the relay asked for is not passed on
    assert not any(ev.get("usage") for ev in chunks)
    # the first token long before the last
    assert data[1][0] - t0 < 0.5 * SLOW + 0.3 and data[-1][0] - data[1][0] >= 0.6
    rows = logs(app, token_name=t["name"])
    assert rows[0]["stream"] is True and rows[0]["completion_tokens"] == 6 and rows[0]["prompt_tokens"] == 3
    assert rows[0]["usage_estimated"] is False and rows[0]["ttfb_ms"] < rows[0]["latency_ms"]


def test_stream_with_include_usage_and_without_upstream_usage(app, mock):
    m, m2 = uniq(), uniq()
    channel(app, mock.url(), [m])
    channel(app, mock.url(), [m2], key="mock-fault-no-usage")
    t = token(app)
    c, resp = stream_request(app, t, {"model": m, "stream": True, "stream_options": {"include_usage": True},
                                      "messages": [{"role": "user", "content": "hello there"}]})
    events = sse_events(l for _, l in timed_lines(resp))
    c.close()
    usage = [ev for ev in events[:-1] if ev.get("usage")]
    assert len(usage) == 1 and usage[0]["choices"] == [] and usage[0]["usage"]["total_tokens"] == 8
    assert usage[0]["model"] == m
    # no usage upstream: estimated, and still given to a client that asked
    c, resp = stream_request(app, t, {"model": m2, "stream": True, "stream_options": {"include_usage": True},
                                      "mock": {"chunks": 8},
                                      "messages": [{"role": "user", "content": "hello there"}]})
    events = sse_events(l for _, l in timed_lines(resp))
    c.close()
    usage = [ev for ev in events[:-1] if ev.get("usage")]
    assert len(usage) == 1 and usage[0]["choices"] == []
    rows = logs(app, model_name=m2)
    assert rows[0]["usage_estimated"] is True and rows[0]["completion_tokens"] > 0


def test_usage_counts_no_integer_holds_are_estimated_and_logged(app, mock):
    # -5 and 1e300 tokens from an upstream: ignored and estimated, so the row
    # still fits the log table (one bad row used to fail its whole batch).
    m, good = uniq(), uniq()
    channel(app, mock.url(), [m], key="mock-fault-bad-usage")
    channel(app, mock.url(), [good])
    t = token(app)
    r = chat(app, t, m, mock={"chunks": 8})
    assert r.status_code == 200, r.text
    c, resp = stream_request(app, t, {"model": m, "stream": True, "mock": {"chunks": 8},
                                      "messages": [{"role": "user", "content": "hello there"}]})
    events = sse_events(l for _, l in timed_lines(resp))
    c.close()
    assert events[-1] == "[DONE]"
    rows = logs(app, model_name=m)
    deadline = time.time() + 5 * SLOW
    while len(rows) < 2 and time.time() < deadline:
        time.sleep(0.05)
        rows = logs(app, model_name=m)
    assert len(rows) == 2, rows
    for row in rows:
        assert row["code"] == 200 and row["usage_estimated"] is True
        assert 0 < row["completion_tokens"] < 1000 and row["prompt_tokens"] > 0
    assert one_log(app, chat(app, t, good))["usage_estimated"] is False


def test_a_request_state_reused_by_the_next_request_keeps_nothing_of_it(app, mock):
    # The relay reuses its per-request state table. Estimates are made from
    # each request's own body: a long prompt, then a short one on the same
    # connection (so the same worker), both without upstream usage.
    m = uniq()
    channel(app, mock.url(), [m], key="mock-fault-no-usage")
    t = token(app)
    s = requests.Session()
    h = bearer(t)
    h["Content-Type"] = "application/json"
    rows = []
    for content in ("x" * 400, "hi", "y" * 80):
        body = {"model": m, "messages": [{"role": "user", "content": content}]}
        r = s.post(app.url("/v1/chat/completions"), data=json.dumps(body), headers=h)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == m
        rows.append(one_log(app, r))
    s.close()
    assert all(row["usage_estimated"] is True for row in rows)
    assert [row["prompt_tokens"] for row in rows] == [100, 1, 20]


def test_client_abort_cancels_the_upstream_stream(app, mock):
    m = uniq()
    channel(app, mock.url(), [m])
    t = token(app)
    before = mock.stats()["streams_aborted"]
    c, resp = stream_request(app, t, {"model": m, "stream": True, "mock": {"chunks": 50, "delay_ms": 100},
                                      "messages": [{"role": "user", "content": "hello"}]})
    assert resp.readline().startswith(b"data: ")
    c.sock.shutdown(socket.SHUT_RDWR)
    c.close()
    deadline = time.time() + 5 * SLOW
    while mock.stats()["streams_aborted"] == before and time.time() < deadline:
        time.sleep(0.05)
    assert mock.stats()["streams_aborted"] == before + 1
    rows = logs(app, model_name=m)
    assert rows[0]["client_aborted"] is True and rows[0]["code"] == 499


def test_upstream_dropping_mid_stream_closes_the_client_connection(app, mock):
    m = uniq()
    channel(app, mock.url(), [m], key="mock-fault-drop")
    t = token(app)
    c, resp = stream_request(app, t, {"model": m, "stream": True,
                                      "messages": [{"role": "user", "content": "hello"}]})
    with pytest.raises(http.client.IncompleteRead):
        resp.read()
    c.close()
    rows = logs(app, model_name=m)
    assert rows[0]["code"] == 502


# --- limits, quota, accounting -----------------------------------------------------

def avoid_window_edge(need=8):
    """RPM/TPM windows are calendar minutes: start a check well inside one
    (asking for more than 50 s of a window would never be satisfied)."""
    room = min(need * SLOW, 50)
    while time.time() % 60 > 60 - room:
        time.sleep(0.2)


def test_rpm_limit_with_ratelimit_headers(app, mock):
    m = uniq()
    channel(app, mock.url(), [m])
    ok(app.post("/api/model_config/" + m, {"rpm": 3}))
    t = token(app)
    avoid_window_edge()
    for _ in range(3):
        assert chat(app, t, m).status_code == 200
    r = chat(app, t, m)
    oai_error(r, 429, "rate_limit_exceeded")
    assert r.headers["X-RateLimit-Limit-Requests"] == "3"
    assert r.headers["X-RateLimit-Remaining-Requests"] == "0"
    assert int(r.headers["Retry-After"]) >= 1
    # another group has its own window
    assert chat(app, token(app), m).status_code == 200


def rpm_counter(redis, t, m):
    """The group x model RPM counter of the current window, from Redis itself."""
    window = int(time.time() // 60)
    v = redis.cli("GET", "aiproxy:limit:%s:%s:%d:rpm" % (t["group"], m, window)).strip()
    return int(v or 0)


def test_rpm_leases_skip_redis_and_the_limit_holds_across_gateways(app, mock, env, redis, tmp_path):
    """RPM alone is counted in leases: one Redis call grants a worker up to 64
    requests (at most 1/64 of what is left), so a busy relay asks Redis once
    per 64 requests -- and every lease is counted in Redis when granted, so
    two gateways together never pass the limit."""
    m1, m2 = uniq(), uniq()
    for m, rpm in ((m1, 100000), (m2, 150)):
        channel(app, mock.url(), [m])
        ok(app.post("/api/model_config/" + m, {"rpm": rpm}))
    second = App(str(tmp_path), env, workers=1)      # started after: it loads both models
    try:
        t = token(app)
        avoid_window_edge(need=10)
        for _ in range(20):
            assert chat(second, t, m1).status_code == 200
        # the first request took 1 + a lease of 64; the other 19 came out of the lease
        assert rpm_counter(redis, t, m1) == 65

        t = token(app)
        avoid_window_edge(need=15)
        codes = [chat(app if i % 2 else second, t, m2).status_code for i in range(160)]
        assert set(codes) <= {200, 429}, codes
        # never past the limit; short of it only by leases a worker still held
        # (each at most 1/64 of what was left, so a few requests)
        assert 150 - 6 <= codes.count(200) <= 150, codes
        assert rpm_counter(redis, t, m2) <= 150
        assert codes[-1] == 429
    finally:
        second.stop()


def test_tpm_holds_under_20_concurrent_requests(app, mock):
    m = uniq()
    channel(app, mock.url(), [m])
    # each request reserves 3 (prompt) + 20 (max_tokens) = 23 tokens; uses 3 + 5 = 8
    ok(app.post("/api/model_config/" + m, {"tpm": 100}))
    t = token(app)
    avoid_window_edge()

    def one(_):
        return chat(app, t, m, max_tokens=20, mock={"fault": "slow"})   # 2 s: all in flight at once

    with concurrent.futures.ThreadPoolExecutor(20) as ex:
        results = list(ex.map(one, range(20)))
    codes = [r.status_code for r in results]
    assert set(codes) <= {200, 429}, codes
    assert codes.count(200) == 4, (codes, [r.text for r in results if r.status_code == 200])
    limited = [r for r in results if r.status_code == 429]
    assert limited[0].headers["X-RateLimit-Limit-Tokens"] == "100"
    used = sum(r.json()["usage"]["total_tokens"] for r in results if r.status_code == 200)
    assert used <= 100
    # the reservations were corrected to the real usage (8 each): room for more now
    r = chat(app, t, m, max_tokens=20)
    assert r.status_code == 200, r.text


def test_quota_and_spending_are_counted(app, mock, pg):
    m = uniq()
    ch = channel(app, mock.url(), [m])
    # 8 tokens per request at 1.0 per 1K prompt / 2.0 per 1K completion = 0.003 + 0.010 = 0.013
    ok(app.post("/api/model_config/" + m, {"input_price": 1.0, "output_price": 2.0}))
    t = token(app, quota=0.02)
    assert chat(app, t, m).status_code == 200
    assert chat(app, t, m).status_code == 200       # 0.013 used < 0.02
    oai_error(chat(app, t, m), 401, "insufficient_quota")
    deadline = time.time() + 5 * SLOW
    while time.time() < deadline:
        tok = ok(app.get("/api/token/%s/%d" % (t["group"], t["id"])))
        if tok["request_count"] == 2:
            break
        time.sleep(0.05)
    assert tok["request_count"] == 2                 # the refused request never reached the relay
    assert abs(tok["used_amount"] - 0.026) < 1e-9
    grp = ok(app.get("/api/group/" + t["group"]))
    assert abs(grp["used_amount"] - 0.026) < 1e-9
    chan = ok(app.get("/api/channel/%d" % ch["id"]))
    assert chan["request_count"] == 2 and abs(chan["used_amount"] - 0.026) < 1e-9
    rows = logs(app, token_name=t["name"])
    assert sorted(round(x["amount"], 9) for x in rows) == [0.013, 0.013]


# --- logs API ------------------------------------------------------------------------

def test_log_filters_and_delete(app, mock):
    m = uniq()
    channel(app, mock.url(), [m])
    t = token(app)
    r1 = chat(app, t, m)
    r2 = chat(app, t, "missing-" + m)
    assert r1.status_code == 200 and r2.status_code == 404
    rows = logs(app, token_name=t["name"])
    deadline = time.time() + 5 * SLOW
    while len(rows) < 2 and time.time() < deadline:
        rows = logs(app, token_name=t["name"])
    assert len(rows) == 2
    assert [x["code"] for x in logs(app, token_name=t["name"], code_type="success")] == [200]
    assert [x["code"] for x in logs(app, token_name=t["name"], code_type="error")] == [404]
    grp = ok(app.get("/api/log/" + t["group"]))
    assert grp["total"] == 2
    assert ok(app.get("/api/logs/", params={"group": t["group"], "per_page": 1}))["total"] == 2
    assert len(ok(app.get("/api/logs/", params={"group": t["group"], "per_page": 1}))["logs"]) == 1
    newest = max(x["created_at"] for x in rows)
    assert ok(app.get("/api/logs/", params={"token_name": t["name"], "start_timestamp": newest}))["total"] >= 1
    r = app.get("/api/logs/", params={"code_type": "bogus"})
    assert r.status_code == 400
    r = app.delete("/api/logs/")
    assert r.status_code == 400
    d = ok(app.delete("/api/logs/", params={"timestamp": 1}))
    assert d["deleted"] == 0


# --- Redis down ------------------------------------------------------------------------

@pytest.mark.parametrize("fault_tolerant", ["true", "false"])
def test_redis_down_follows_fault_tolerant(pg, mock, tmp_path, fault_tolerant):
    from test_redis import Redis
    r = Redis(tmp_path)
    env = {"ADMIN_KEY": KEY,
           "SQL_DSN": "postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable" % pg.port,
           "REDIS_CONN_STRING": "redis://127.0.0.1:%d/0" % r.port,
           "AIPROXY_FAULT_TOLERANT": fault_tolerant, "AIPROXY_LOG_FLUSH_INTERVAL": "0.2",
           "AIPROXY_SPOOL_DIR": str(tmp_path / "spool")}
    a = App(str(tmp_path), env, workers=1)
    try:
        limited, free = uniq(), uniq()
        channel(a, mock.url(), [limited, free])
        ok(a.post("/api/model_config/" + limited, {"rpm": 2}))
        t = token(a)
        avoid_window_edge()
        assert chat(a, t, limited).status_code == 200     # Redis up: counted there
        r.stop()
        if fault_tolerant == "true":
            # the shared dictionary takes over (its own count, per machine)
            assert chat(a, t, limited).status_code == 200
            assert chat(a, t, limited).status_code == 200
            oai_error(chat(a, t, limited), 429, "rate_limit_exceeded")
        else:
            oai_error(chat(a, t, limited), 503, "rate_limiter_unavailable")
        assert chat(a, t, free).status_code == 200        # no limits: Redis not needed
        assert "Redis" in a.stderr()
    finally:
        a.stop()
        r.stop()


# --- logs are never lost -----------------------------------------------------------------

def test_postgres_stopped_and_restarted_under_load_loses_no_log_row(app, mock, pg):
    import threading
    m = uniq()
    channel(app, mock.url(), [m])
    t = token(app)
    for _ in range(4):                      # both workers have the channel list and the token cached
        assert chat(app, t, m).status_code == 200
    sent, lock, stop = [], threading.Lock(), threading.Event()

    def load():
        s = requests.Session()
        while not stop.is_set():
            body = {"model": m, "messages": [{"role": "user", "content": "hello there"}]}
            r = s.post(app.url("/v1/chat/completions"), data=json.dumps(body), headers=bearer(t))
            with lock:
                sent.append((r.status_code, r.headers.get("X-Request-ID")))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for th in threads:
        th.start()
    try:
        time.sleep(0.5 * SLOW)
        pg.stop()
        time.sleep(2 * SLOW)
        pg.start()
        time.sleep(0.5 * SLOW)
    finally:
        stop.set()
        for th in threads:
            th.join()
    assert all(code == 200 for code, _ in sent), [c for c, _ in sent if c != 200][:5]
    want = {rid for _, rid in sent}
    assert len(want) == len(sent) and len(sent) > 20
    deadline = time.time() + 20 * SLOW
    got = []
    while time.time() < deadline:
        r = app.get("/api/logs/", params={"token_name": t["name"], "per_page": 100, "page": 1})
        if r.status_code == 200:
            total = r.json()["data"]["total"]
            if total >= len(sent) + 4:
                break
        time.sleep(0.2)
    pages = (total + 99) // 100
    for p in range(1, pages + 1):
        got += [x["request_id"] for x in ok(app.get("/api/logs/", params={"token_name": t["name"],
                                                                          "per_page": 100, "page": p}))["logs"]]
    assert len(got) == len(set(got)) == len(sent) + 4      # every row, none twice
    assert want <= set(got)
    tok = ok(app.get("/api/token/%s/%d" % (t["group"], t["id"])))
    assert tok["request_count"] == len(sent) + 4            # spending counted once per row


def test_bad_bodies_get_openai_errors(app, mock):
    m = uniq()
    channel(app, mock.url(), [m])
    t = token(app)
    url = app.url("/v1/chat/completions")
    oai_error(requests.post(url, data="[1, 2]", headers=bearer(t)), 400, "invalid_json")
    oai_error(requests.post(url, data=json.dumps({"model": 42}), headers=bearer(t)), 400, "missing_model")
    oai_error(requests.post(url, data="", headers=bearer(t)), 400, "invalid_json")
    oai_error(requests.post(url, data="[]", headers=bearer(t)), 400, "invalid_json")
    oai_error(requests.post(url, data='{"model": "%s"' % m, headers=bearer(t)), 400, "invalid_json")
    oai_error(requests.post(url, data='{"model": ""}', headers=bearer(t)), 400, "missing_model")
    # the model name is read without decoding the body: escapes still count
    e = oai_error(requests.post(url, data='{"model": "a\\"b\\u00e9"}', headers=bearer(t)), 404, "model_not_found")
    assert "`a\"b\u00e9`" in e["message"], e
    # over the 16 MiB body limit: 413 in OpenAI's shape, before any upstream work
    big = b'{"model": "%s", "messages": [{"role": "user", "content": "' % m.encode() + b"x" * (17 << 20) + b'"}]}'
    r = requests.post(url, data=big, headers=bearer(t))
    oai_error(r, 413)
    # a large body within the limit goes through byte for byte (model rewritten only)
    body = {"model": m, "messages": [{"role": "user", "content": "y" * (2 << 20)}], "tools": [], "seed": 123456789012345}
    r = requests.post(url, data=json.dumps(body), headers=bearer(t))
    assert r.status_code == 200, r.text[:200]
    last = mock.stats()["last"]["body"]
    assert last["tools"] == [] and last["seed"] == 123456789012345
    assert r.json()["usage"]["prompt_tokens"] == (2 << 20) // 4


def test_a_row_spooled_by_an_earlier_version_is_replayed(app, env):
    # Before log rows were packed, the spool held one JSON row per line; a
    # file left by such a process (here: a dead one, pid 0) is still written.
    rid, m = "legacy-" + uniq(), uniq()
    row = {"uid": "legacy-uid-" + rid, "request_id": rid, "created_at": int(time.time() * 1000),
           "group_id": "legacy-group", "token_id": 0, "token_name": "old", "model": m,
           "upstream_model": m, "channel_id": 0, "endpoint": "/v1/chat/completions", "code": 200,
           "content": 'said "hi" \\ there', "prompt_tokens": 3, "completion_tokens": 4,
           "total_tokens": 7, "usage_estimated": False, "amount": 0.25, "latency_ms": 12,
           "ttfb_ms": 5, "retries": 0, "stream": False, "client_aborted": False, "ip": "127.0.0.1"}
    spool = env["AIPROXY_SPOOL_DIR"]
    os.makedirs(spool, exist_ok=True)
    name = "aiproxy-logs.0000000000001.00000001.p0s5w0r%s.1.spool" % uuid.uuid4().hex[:8]
    with open(os.path.join(spool, name + ".tmp"), "w") as f:
        f.write(json.dumps(row) + "\n")
    os.rename(os.path.join(spool, name + ".tmp"), os.path.join(spool, name))
    deadline = time.time() + 10 * SLOW
    rows = []
    while not rows and time.time() < deadline:
        rows = logs(app, rid, wait=False)
        time.sleep(0.1)
    assert len(rows) == 1, rows
    got = rows[0]
    assert got["model"] == m and got["code"] == 200 and got["total_tokens"] == 7
    assert got["content"] == 'said "hi" \\ there' and got["amount"] == 0.25


def test_log_rows_with_nul_or_invalid_utf8_are_written_not_stuck(app, mock):
    # PostgreSQL text refuses NUL and invalid UTF-8: one such value used to fail
    # its whole log batch on every retry, so no later row reached the table.
    t = token(app)
    bad_model = "gpt\u0000evil"                   # JSON escape: cjson decodes it to a NUL byte
    raw = b'{"model": "caf\xc3\xa9\xff\xe2\x82", "messages": []}'   # valid e-acute, then junk
    r1 = requests.post(app.url("/v1/chat/completions"), data=json.dumps({"model": bad_model}),
                       headers=bearer(t))
    oai_error(r1, 404, "model_not_found")
    r2 = requests.post(app.url("/v1/chat/completions"), data=raw, headers=bearer(t))
    assert r2.status_code in (400, 404), r2.text
    m = uniq()
    channel(app, mock.url(), [m])
    r3 = chat(app, t, m)
    assert r3.status_code == 200, r3.text
    assert one_log(app, r1)["model"] == "gpt?evil"
    row2 = one_log(app, r2)
    assert row2["model"] == "caf\u00e9???"          # the cut 3-byte sequence: one "?" per byte
    assert one_log(app, r3)["code"] == 200
    # quotes, backslashes, braces and commas survive the flush's array literals
    odd = 'a"b\\c{d},e NULL'
    r4 = requests.post(app.url("/v1/chat/completions"), data=json.dumps({"model": odd}), headers=bearer(t))
    oai_error(r4, 404, "model_not_found")
    assert one_log(app, r4)["model"] == odd


def test_a_channel_key_refused_upstream_is_not_shown_to_the_caller(app, mock):
    m = uniq()
    channel(app, mock.url(), [m], key="bad-key")
    t = token(app)
    e = oai_error(chat(app, t, m), 502, "upstream_error")
    assert "bad-key" not in e["message"] and "credentials" in e["message"]
    row = logs(app, model_name=m)[0]
    assert row["code"] == 502 and row["content"]          # the provider's own words, for the operator


def test_no_database_and_nothing_cached_is_a_503(tmp_path):
    env = {"ADMIN_KEY": KEY,
           "SQL_DSN": "postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable&connect_timeout=1" % free_port(),
           "AIPROXY_SPOOL_DIR": str(tmp_path / "spool")}
    a = App(str(tmp_path), env, workers=1)
    try:
        r = requests.post(a.url("/v1/chat/completions"), headers={"Authorization": "Bearer sk-whatever"},
                          data=json.dumps({"model": "m", "messages": []}))
        oai_error(r, 503, "database_unavailable")
        r = requests.get(a.url("/v1/models"), headers={"Authorization": "Bearer sk-whatever"})
        oai_error(r, 503)
    finally:
        a.stop()


def test_a_channel_added_by_another_instance_is_picked_up(env, mock, pg, tmp_path):
    # Written straight into PostgreSQL (no version bump in this machine's
    # shared dictionary): the periodic background refresh finds it. One
    # worker, so the request cannot land on a worker with no snapshot yet.
    a = App(str(tmp_path), env, workers=1)
    try:
        m = uniq()
        t = token(a)
        oai_error(chat(a, t, m), 404, "model_not_found")
        pg.psql("INSERT INTO channels (name, key, base_url, models, created_at) "
                "VALUES ('elsewhere', 'sk-x', '%s', '[\"%s\"]', 0)" % (mock.url(), m))
        deadline = time.time() + 10 * SLOW
        while time.time() < deadline:
            r = chat(a, t, m)
            if r.status_code == 200:
                break
            time.sleep(0.25)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == m
    finally:
        a.stop()
