"""examples/aiproxy with the official OpenAI client library as the client:
npm `openai` on Node, driven by tests/integration/openai_client/run.mjs,
against the relay, the mock provider (examples/mock-openai), a real
PostgreSQL 15 and a real Redis (the fixtures of test_aiproxy_relay). Plus
curl for the raw SSE of a stream.

The `openai` package is installed from npm, pinned, into build/test-cache
once. If node/npm are missing or the install fails (no network...), the
tests FAIL and say so: they are not skipped."""
import json
import os
import shutil
import subprocess
import time

import pytest

from conftest import REPO, SLOW
from test_aiproxy_admin import ok, pg, redis, tmpdir_mod  # noqa: F401 (fixtures)
from test_aiproxy_relay import app, channel, env, mock, token, uniq  # noqa: F401 (fixtures)

OPENAI_VERSION = "5.23.2"               # pinned; `npm view openai versions` (latest 5.x, runs on Node 20)
CACHE = REPO / "build" / "test-cache" / ("openai-" + OPENAI_VERSION)
SCRIPT = REPO / "tests" / "integration" / "openai_client" / "run.mjs"


def run(cmd, timeout, **kw):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except (OSError, subprocess.TimeoutExpired) as e:
        return subprocess.CompletedProcess(cmd, 1, "", str(e))


@pytest.fixture(scope="module")
def openai_dir():
    pkg = CACHE / "node_modules" / "openai" / "package.json"
    if not pkg.exists():
        if shutil.which("node") is None or shutil.which("npm") is None:
            pytest.fail("node and npm are needed to install openai@%s from npm (Node 20)" % OPENAI_VERSION)
        CACHE.mkdir(parents=True, exist_ok=True)
        p = run(["npm", "install", "--prefix", str(CACHE), "--no-audit", "--no-fund",
                 "--no-save", "openai@" + OPENAI_VERSION], 120)   # under ctest's --timeout=180
        if p.returncode != 0 or not pkg.exists():
            pytest.fail("could not install openai@%s from npm into %s (is the npm registry reachable?):\n%s"
                        % (OPENAI_VERSION, CACHE, (p.stderr or p.stdout)[-1000:]))
    assert json.loads(pkg.read_text())["version"] == OPENAI_VERSION
    return pkg.parent


def client(openai_dir, app, key, *calls):
    """Runs the calls in one node process; returns their results (list)."""
    spec = {"base_url": app.url("/v1"), "api_key": key, "calls": list(calls)}
    p = run(["node", str(SCRIPT)], 60 * SLOW, input=json.dumps(spec),
            env=dict(os.environ, OPENAI_DIR=str(openai_dir)))
    assert p.returncode == 0, "run.mjs failed:\n%s\n%s" % (p.stdout, p.stderr)
    results = json.loads(p.stdout.strip().splitlines()[-1])
    assert len(results) == len(calls)
    return results


def value(result):
    assert result["ok"], result["error"]
    return result["value"]


def error(result, cls, status, code=None):
    assert not result["ok"], result["value"]
    e = result["error"]
    assert e["class"] == cls and cls in e["instance_of"] and e["status"] == status, e
    if code:
        assert e["code"] == code, e
    return e


def sk(t):
    return "sk-" + t["key"]


HELLO = [{"role": "user", "content": "hello there"}]


def test_chat_with_a_mapped_model(openai_dir, app, mock):
    m = uniq()
    channel(app, mock.url("/v1/"), [m], model_mapping={m: "upstream-" + m})
    t = token(app)
    r = value(client(openai_dir, app, sk(t), {"op": "chat", "params": {"model": m, "messages": HELLO}})[0])
    assert r["object"] == "chat.completion" and r["model"] == m
    msg = r["choices"][0]["message"]
    assert (msg["role"], msg["content"]) == ("assistant", "w1 w2 w3 w4 w5")
    assert r["choices"][0]["finish_reason"] == "stop"
    assert r["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    assert mock.stats()["last"]["model"] == "upstream-" + m


def test_chat_stream_chunk_by_chunk(openai_dir, app, mock):
    m = uniq()
    channel(app, mock.url(), [m], model_mapping={m: "up-" + m})
    t = token(app)
    r = value(client(openai_dir, app, sk(t), {"op": "chat_stream", "params": {
        "model": m, "messages": HELLO, "stream_options": {"include_usage": True},
        "mock": {"chunks": 5, "delay_ms": 150}}})[0])
    # the extra body field went through the client and the relay to the mock
    last = mock.stats()["last"]
    assert last["model"] == "up-" + m and last["body"]["mock"] == {"chunks": 5, "delay_ms": 150}
    chunks = [c["chunk"] for c in r["chunks"]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == m for c in chunks), chunks
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == \
        "w1 w2 w3 w4 w5"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    assert not any(c.get("usage") for c in chunks[:-1])
    # role chunk, 5 words, finish, usage: 150 ms apart at the mock, and the
    # client saw them as they came, not all at the end
    times = [c["t"] / 1000.0 for c in r["chunks"]]
    assert len(times) == 8
    assert times[-1] - times[0] >= 0.7, times
    assert times[1] < times[-1] - 0.5, times


def test_completions_embeddings_and_models(openai_dir, app, mock):
    m, e, other = uniq(), uniq("emb"), uniq()
    channel(app, mock.url(), [m, e])
    channel(app, mock.url(), [other])
    t = token(app, models=[m, e])
    comp, emb, listed, got, not_allowed = client(
        openai_dir, app, sk(t),
        {"op": "completion", "params": {"model": m, "prompt": "abcdefgh"}},
        # the client's default: it asks for "base64" and decodes the float32s
        {"op": "embeddings", "params": {"model": e, "input": ["abcd", "efgh"]}},
        {"op": "models_list"},
        {"op": "models_retrieve", "model": m},
        {"op": "models_retrieve", "model": other})
    comp = value(comp)
    assert comp["object"] == "text_completion" and comp["model"] == m
    assert comp["choices"][0]["text"] == "w1 w2 w3 w4 w5"
    assert comp["usage"] == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}
    emb = value(emb)
    assert emb["object"] == "list" and emb["model"] == e and len(emb["data"]) == 2
    assert [d["index"] for d in emb["data"]] == [0, 1]
    for d in emb["data"]:
        assert d["object"] == "embedding" and len(d["embedding"]) == 8
        assert all(isinstance(x, float) and -1 <= x < 1 for x in d["embedding"])
    assert emb["data"][0]["embedding"] != emb["data"][1]["embedding"]
    assert emb["usage"] == {"prompt_tokens": 2, "total_tokens": 2}
    assert mock.stats()["by_model"][e] == 1
    listed = value(listed)
    assert sorted(x["id"] for x in listed) == sorted([m, e])
    assert all(x["object"] == "model" for x in listed)
    got = value(got)
    assert got["id"] == m and got["object"] == "model"
    error(not_allowed, "NotFoundError", 404, "model_not_found")


def test_error_classes(openai_dir, app, mock):
    m = uniq()
    channel(app, mock.url(), [m])
    t = token(app)
    chat = {"op": "chat", "params": {"model": m, "messages": HELLO}}
    e = error(client(openai_dir, app, "sk-no-such-key-0123456789", chat)[0], "AuthenticationError", 401,
              "invalid_api_key")
    assert e["message"].startswith("401")
    error(client(openai_dir, app, sk(t), {"op": "chat", "params": {"model": "no-such-model-" + m,
                                                                   "messages": HELLO}})[0],
          "NotFoundError", 404, "model_not_found")
    # rpm 1: the second request within the minute -> 429 (maxRetries 0: no retry by the client)
    ok(app.post("/api/model_config/" + m, {"rpm": 1}))
    while time.time() % 60 > 60 - 8 * SLOW:         # RPM windows are calendar minutes
        time.sleep(0.2)
    first, second = client(openai_dir, app, sk(t), chat, chat)
    assert value(first)["model"] == m
    error(second, "RateLimitError", 429, "rate_limit_exceeded")


def test_raw_sse_with_curl(app, mock):
    m = uniq()
    channel(app, mock.url(), [m], model_mapping={m: "up-" + m})
    t = token(app)
    body = {"model": m, "messages": HELLO, "stream": True, "stream_options": {"include_usage": True},
            "mock": {"chunks": 3}}
    p = run(["curl", "-sN", "--fail-with-body", "--max-time", str(int(20 * SLOW)), app.url("/v1/chat/completions"),
             "-H", "Authorization: Bearer " + sk(t), "-H", "Content-Type: application/json",
             "-d", json.dumps(body)], 30 * SLOW)
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    lines = p.stdout.split("\n")
    data = [l for l in lines if l]
    # every non-empty line is an SSE data line, each event ends with a blank line
    assert all(l.startswith("data: ") for l in data), lines
    assert p.stdout.endswith("data: [DONE]\n\n"), repr(p.stdout[-80:])
    assert data[-1] == "data: [DONE]" and data.count("data: [DONE]") == 1
    events = [json.loads(l[len("data: "):]) for l in data[:-1]]
    assert all(ev["model"] == m and ev["object"] == "chat.completion.chunk" for ev in events)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(ev["choices"][0]["delta"].get("content") or "" for ev in events if ev["choices"]) == "w1 w2 w3"
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert events[-1]["choices"] == [] and \
        events[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
