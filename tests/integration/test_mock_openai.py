"""examples/mock-openai: the mock OpenAI-compatible provider, started as an
operator would (build/moongate examples/mock-openai/gateway.lua, --port), over
real sockets: every endpoint's shape, token counts, streaming with and
without usage, each fault (by body, by API key, globally), and the stats."""
import json
import math
import re
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest
import requests

from conftest import BIN, REPO, SLOW, free_port, requests_default_timeout, wait_until

requests_default_timeout()

APP = str(REPO / "examples" / "mock-openai" / "gateway.lua")
KEY = {"Authorization": "Bearer sk-test"}


class Mock:
    def __init__(self, env=None, args=()):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="moongate-mock-openai-")
        self.err_path = os.path.join(self.dir, "stderr.log")
        e = dict(os.environ)
        e.pop("MOCK_MODELS", None)
        e.update(env or {})
        self.proc = subprocess.Popen([BIN, "--port", str(self.port), *args, APP],
                                     stdout=subprocess.DEVNULL, stderr=open(self.err_path, "wb"),
                                     stdin=subprocess.DEVNULL, env=e)
        deadline = time.time() + 10 * SLOW
        while "server started" not in self.stderr():
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("mock did not start:\n" + self.stderr())
            time.sleep(0.02)

    def stderr(self):
        with open(self.err_path, errors="replace") as f:
            return f.read()

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def post(self, path, body=None, headers=KEY, **kw):
        data = body if isinstance(body, (str, bytes)) else (json.dumps(body) if body is not None else None)
        return requests.post(self.url(path), data=data, headers=headers, **kw)

    def get(self, path, headers=KEY, **kw):
        return requests.get(self.url(path), headers=headers, **kw)

    def stats(self):
        return requests.get(self.url("/mock/stats")).json()

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(15 * SLOW)
        return self.proc.returncode


@pytest.fixture(scope="module")
def mock_server():
    m = Mock()
    yield m
    assert m.stop() == 0
    for marker in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
        assert marker not in m.stderr(), m.stderr()


@pytest.fixture
def mock(mock_server):
    r = requests.post(mock_server.url("/mock/reset"))
    assert r.status_code == 200
    return mock_server


def chat(content="hello world!", model="gpt-4o-mini", **extra):
    body = {"model": model, "messages": [{"role": "user", "content": content}]}
    body.update(extra)
    return body


def assert_openai_error(r, status, etype=None, code=None):
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert set(["message", "type", "code"]) <= set(err), err
    assert isinstance(err["message"], str) and err["message"]
    if etype:
        assert err["type"] == etype, err
    if code is not None:
        assert err["code"] == code, err
    return err


def sse_events(text):
    """The data: payloads of an SSE body, in order."""
    assert text.endswith("\n\n"), repr(text[-80:])
    out = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: "), repr(block)
        out.append(block[len("data: "):])
    return out


def raw_request(port, body, headers="Authorization: Bearer sk-test\r\n", path="/v1/chat/completions"):
    """Sends a POST over a raw socket; returns the socket (response unread)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW)
    data = json.dumps(body).encode()
    s.sendall(("POST %s HTTP/1.1\r\nHost: x\r\n%sContent-Type: application/json\r\n"
               "Content-Length: %d\r\n\r\n" % (path, headers, len(data))).encode() + data)
    return s


def read_until_closed(s, timeout=10):
    s.settimeout(timeout * SLOW)
    chunks = []
    while True:
        try:
            b = s.recv(65536)
        except (socket.timeout, ConnectionResetError):
            break
        if not b:
            break
        chunks.append(b)
    return b"".join(chunks)


def dechunk(body):
    """Decodes a chunked body; returns (data, complete)."""
    out = b""
    while True:
        line, sep, rest = body.partition(b"\r\n")
        if not sep:
            return out, False
        size = int(line.split(b";")[0], 16)
        if size == 0:
            return out, True
        if len(rest) < size + 2:
            return out + rest[:size], False
        out += rest[:size]
        body = rest[size + 2:]


# ------------------------------------------------------------------ endpoints

def test_config_checks():
    p = subprocess.run([BIN, "-t", APP], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip().startswith("ok"), p.stdout + p.stderr


def test_chat_completion_shape_and_usage(mock):
    r = mock.post("/v1/chat/completions", {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "be brief"},            # 8 chars
                     {"role": "user", "content": [{"type": "text", "text": "héllo"},   # 5 chars
                                                  {"type": "image_url", "image_url": {"url": "x"}}]}],
    })
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-mock-model"] == "gpt-4o-mini"
    j = r.json()
    assert j["object"] == "chat.completion"
    assert j["id"].startswith("chatcmpl-")
    assert isinstance(j["created"], int) and abs(j["created"] - time.time()) < 60
    assert j["model"] == "gpt-4o-mini"
    assert len(j["choices"]) == 1
    c = j["choices"][0]
    assert c["index"] == 0 and c["finish_reason"] == "stop"
    assert c["message"]["role"] == "assistant"
    assert c["message"]["content"] == "w1 w2 w3 w4 w5"
    assert j["usage"] == {"prompt_tokens": math.ceil(13 / 4), "completion_tokens": 5, "total_tokens": 9}


def test_answer_carries_the_model_received(mock):
    r = mock.post("/v1/chat/completions", chat(model="my-mapped-model", mock={"chunks": 2}))
    assert r.status_code == 200
    assert r.json()["model"] == "my-mapped-model"
    assert r.headers["x-mock-model"] == "my-mapped-model"
    assert r.json()["choices"][0]["message"]["content"] == "w1 w2"
    assert r.json()["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("content,tokens", [("", 1), ("a", 1), ("abcd", 1), ("abcde", 2), ("x" * 400, 100)])
def test_prompt_tokens_rounding(mock, content, tokens):
    j = mock.post("/v1/chat/completions", chat(content=content)).json()
    assert j["usage"]["prompt_tokens"] == tokens
    assert j["usage"]["total_tokens"] == tokens + 5


def test_chunks_zero(mock):
    j = mock.post("/v1/chat/completions", chat(mock={"chunks": 0})).json()
    assert j["choices"][0]["message"]["content"] == ""
    assert j["usage"]["completion_tokens"] == 0


def test_text_completion(mock):
    r = mock.post("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": ["abc", "defgh"],
                                      "mock": {"chunks": 3}})
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["object"] == "text_completion" and j["id"].startswith("cmpl-")
    assert j["model"] == "gpt-3.5-turbo-instruct"
    assert j["choices"] == [{"text": "w1 w2 w3", "index": 0, "logprobs": None, "finish_reason": "stop"}]
    assert j["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}


def test_embeddings(mock):
    r = mock.post("/v1/embeddings", {"model": "text-embedding-3-small", "input": ["hello", "world!!"]})
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["object"] == "list" and j["model"] == "text-embedding-3-small"
    assert [d["index"] for d in j["data"]] == [0, 1]
    for d in j["data"]:
        assert d["object"] == "embedding"
        assert len(d["embedding"]) == 8
        assert all(isinstance(x, (int, float)) and -1 <= x < 1 for x in d["embedding"])
    assert j["data"][0]["embedding"] != j["data"][1]["embedding"]
    assert j["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    # deterministic: same input, same vector, whatever the position
    j2 = mock.post("/v1/embeddings", {"model": "x", "input": "world!!"}).json()
    assert j2["data"][0]["embedding"] == j["data"][1]["embedding"]
    assert j2["usage"] == {"prompt_tokens": 2, "total_tokens": 2}
    assert j2["model"] == "x"


def test_models_list_and_one(mock):
    r = mock.get("/v1/models")
    assert r.status_code == 200
    j = r.json()
    assert j["object"] == "list"
    assert [m["id"] for m in j["data"]] == ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "mock-model"]
    for m in j["data"]:
        assert m["object"] == "model" and isinstance(m["created"], int) and m["owned_by"]
    r = mock.get("/v1/models/gpt-4o")
    assert r.status_code == 200
    assert r.json() == {"id": "gpt-4o", "object": "model", "created": j["data"][1]["created"],
                        "owned_by": j["data"][1]["owned_by"]}
    assert r.headers["x-mock-model"] == "gpt-4o"
    err = assert_openai_error(mock.get("/v1/models/nope"), 404, "invalid_request_error", "model_not_found")
    assert "nope" in err["message"]


def test_models_from_environment():
    m = Mock(env={"MOCK_MODELS": "a-model, b-model,,c"})
    try:
        j = m.get("/v1/models").json()
        assert [x["id"] for x in j["data"]] == ["a-model", "b-model", "c"]
        assert m.get("/v1/models/b-model").status_code == 200
        assert m.get("/v1/models/gpt-4o").status_code == 404
    finally:
        assert m.stop() == 0


def test_listen_addr_from_environment():
    port = free_port()
    d = tempfile.mkdtemp(prefix="moongate-mock-openai-")
    err = open(os.path.join(d, "err"), "wb")
    p = subprocess.Popen([BIN, APP], env=dict(os.environ, LISTEN_ADDR="127.0.0.1:%d" % port),
                         stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: b"server started" in open(os.path.join(d, "err"), "rb").read(), 10)
        assert "with 1 worker" in open(os.path.join(d, "err")).read()
        r = requests.get("http://127.0.0.1:%d/v1/models" % port, headers=KEY)
        assert r.status_code == 200
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(15) == 0


# ------------------------------------------------------------------ auth and validation

def test_missing_key_is_401(mock):
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        assert_openai_error(mock.post(path, chat(), headers={}), 401, "invalid_request_error")
    assert_openai_error(mock.get("/v1/models", headers={}), 401)
    assert_openai_error(mock.get("/v1/models", headers={"Authorization": "Basic abc"}), 401)
    assert_openai_error(mock.get("/v1/models", headers={"Authorization": "sk-test"}), 401)


def test_bad_key_is_401(mock):
    err = assert_openai_error(mock.post("/v1/chat/completions", chat(), headers={"Authorization": "Bearer bad-key"}),
                              401, "invalid_request_error", "invalid_api_key")
    assert "bad-key" in err["message"]


def test_invalid_requests_are_400(mock):
    assert_openai_error(mock.post("/v1/chat/completions", "{nope"), 400, "invalid_request_error")
    assert_openai_error(mock.post("/v1/chat/completions", "[1,2]"), 400, "invalid_request_error")
    err = assert_openai_error(mock.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}),
                              400, "invalid_request_error")
    assert err["param"] == "model"
    err = assert_openai_error(mock.post("/v1/chat/completions", {"model": "m", "messages": []}), 400)
    assert err["param"] == "messages"
    assert assert_openai_error(mock.post("/v1/completions", {"model": "m"}), 400)["param"] == "prompt"
    assert assert_openai_error(mock.post("/v1/embeddings", {"model": "m", "input": 5}), 400)["param"] == "input"
    assert_openai_error(mock.post("/v1/chat/completions", chat(mock={"chunks": -1})), 400)
    assert_openai_error(mock.post("/v1/chat/completions", chat(mock={"chunks": "5"})), 400)
    assert_openai_error(mock.post("/v1/chat/completions", chat(mock={"delay_ms": "x"})), 400)
    assert_openai_error(mock.post("/v1/chat/completions", chat(mock={"fault": "explode"})), 400)
    assert_openai_error(mock.post("/v1/chat/completions", chat(), headers={"Authorization": "Bearer mock-fault-nope"}),
                        400)


def test_unknown_path_is_openai_shaped_404(mock):
    assert_openai_error(mock.get("/v1/nothing"), 404)


# ------------------------------------------------------------------ streaming

def stream_chat(mock, body, **kw):
    r = mock.post("/v1/chat/completions", body, **kw)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/event-stream"
    return r, sse_events(r.text)


def test_chat_stream_without_usage(mock):
    r, ev = stream_chat(mock, chat(stream=True, mock={"chunks": 3}))
    assert r.headers["x-mock-model"] == "gpt-4o-mini"
    assert ev[-1] == "[DONE]"
    chunks = [json.loads(e) for e in ev[:-1]]
    assert len(chunks) == 1 + 3 + 1
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")
    for c in chunks:
        assert c["object"] == "chat.completion.chunk" and c["model"] == "gpt-4o-mini"
        assert "usage" not in c
        assert len(c["choices"]) == 1 and c["choices"][0]["index"] == 0
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[0]["choices"][0]["finish_reason"] is None
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "w1 w2 w3"
    assert [c["choices"][0]["delta"]["content"] for c in chunks[1:4]] == ["w1", " w2", " w3"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"][0]["delta"] == {}


def test_chat_stream_with_usage(mock):
    _, ev = stream_chat(mock, chat(content="abcdefghi", stream=True, stream_options={"include_usage": True}))
    assert ev[-1] == "[DONE]"
    chunks = [json.loads(e) for e in ev[:-1]]
    assert len(chunks) == 1 + 5 + 1 + 1
    last = chunks[-1]
    assert last["choices"] == []
    assert '"choices":[]' in ev[-2]                       # a real empty array, not {}
    assert last["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    for c in chunks[:-1]:
        assert c["usage"] is None                          # as OpenAI: "usage": null until the last
    s = mock.stats()
    assert s["streams_started"] == 1 and s["streams_completed"] == 1 and s["streams_aborted"] == 0


def test_completions_stream(mock):
    r = mock.post("/v1/completions", {"model": "m", "prompt": "abcd", "stream": True,
                                      "stream_options": {"include_usage": True}, "mock": {"chunks": 2}})
    assert r.status_code == 200 and r.headers["content-type"] == "text/event-stream"
    ev = sse_events(r.text)
    assert ev[-1] == "[DONE]"
    chunks = [json.loads(e) for e in ev[:-1]]
    assert all(c["object"] == "text_completion" and c["model"] == "m" for c in chunks)
    assert [c["choices"][0]["text"] for c in chunks[:3]] == ["w1", " w2", ""]
    assert chunks[2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[3]["choices"] == [] and chunks[3]["usage"] == {"prompt_tokens": 1, "completion_tokens": 2,
                                                                  "total_tokens": 3}


def test_stream_is_sent_as_written_with_delay(mock):
    s = raw_request(mock.port, chat(stream=True, mock={"chunks": 4, "delay_ms": 300}))
    s.settimeout(5 * SLOW)
    t0 = time.time()
    first = s.recv(65536)
    assert b"200 OK" in first and time.time() - t0 < 0.25 * SLOW + 0.5
    data = read_until_closed_or_done(s)
    elapsed = time.time() - t0
    s.close()
    # 1 role + 4 words + finish + [DONE] = 7 events, 6 gaps of 300 ms
    assert elapsed >= 1.7, elapsed
    assert b"data: [DONE]" in data


def read_until_closed_or_done(s):
    buf = b""
    while b"data: [DONE]" not in buf:
        b = s.recv(65536)
        if not b:
            break
        buf += b
    return buf


# ------------------------------------------------------------------ faults

FAULT_WAYS = ["body", "key", "global"]


def with_fault(mock, way, fault, body, path="/v1/chat/completions"):
    body = dict(body)
    headers = dict(KEY)
    if way == "body":
        body["mock"] = dict(body.get("mock", {}), fault=fault)
    elif way == "key":
        headers = {"Authorization": "Bearer mock-fault-" + fault}
    else:
        r = requests.post(mock.url("/mock/fault"), json={"fault": fault, "count": 1})
        assert r.status_code == 200 and r.json() == {"fault": fault, "remaining": 1}, r.text
    return mock.post(path, body, headers=headers, timeout=60)


@pytest.mark.parametrize("way", FAULT_WAYS)
def test_fault_500(mock, way):
    r = with_fault(mock, way, "500", chat())
    assert_openai_error(r, 500, "server_error")
    assert r.headers["x-mock-model"] == "gpt-4o-mini"


@pytest.mark.parametrize("way", FAULT_WAYS)
def test_fault_429(mock, way):
    r = with_fault(mock, way, "429", chat())
    assert_openai_error(r, 429, code="rate_limit_exceeded")
    assert r.headers["retry-after"] == "1"


@pytest.mark.parametrize("way", FAULT_WAYS)
def test_fault_400(mock, way):
    err = assert_openai_error(with_fault(mock, way, "400", chat()), 400, "invalid_request_error",
                              "context_length_exceeded")
    assert "context length" in err["message"]


@pytest.mark.parametrize("way", ["body", "global"])
def test_fault_bad_key(mock, way):
    assert_openai_error(with_fault(mock, way, "bad-key", chat()), 401, "invalid_request_error", "invalid_api_key")


@pytest.mark.parametrize("way", FAULT_WAYS)
def test_fault_garbage(mock, way):
    r = with_fault(mock, way, "garbage", chat(stream=True))
    assert r.status_code == 200
    with pytest.raises(ValueError):
        json.loads(r.text)
    assert "data:" not in r.text


@pytest.mark.parametrize("way", FAULT_WAYS)
def test_fault_slow(mock, way):
    t0 = time.time()
    r = with_fault(mock, way, "slow", chat())
    assert time.time() - t0 >= 1.9
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "w1 w2 w3 w4 w5"


def test_fault_stall_does_not_block_the_worker(mock):
    """stall sleeps 30 s (non-blocking): the one worker keeps serving others,
    and a client that gives up sees nothing at all."""
    result = {}

    def stalled():
        t0 = time.time()
        try:
            mock.post("/v1/chat/completions", chat(mock={"fault": "stall"}), timeout=1.5)
            result["outcome"] = "answered"
        except requests.exceptions.ReadTimeout:
            result["outcome"] = "timeout"
        result["elapsed"] = time.time() - t0

    t = threading.Thread(target=stalled)
    t.start()
    time.sleep(0.3)
    t0 = time.time()
    r = mock.post("/v1/chat/completions", chat())
    assert r.status_code == 200 and time.time() - t0 < 1.0 * SLOW
    t.join()
    assert result["outcome"] == "timeout", result


def test_fault_stall_by_key(mock):
    s = raw_request(mock.port, chat(), headers="Authorization: Bearer mock-fault-stall\r\n")
    s.settimeout(1)
    with pytest.raises(socket.timeout):
        s.recv(1)
    s.close()


@pytest.mark.parametrize("way", FAULT_WAYS)
def test_fault_drop_stream(mock, way):
    body = chat(stream=True, stream_options={"include_usage": True}, mock={"chunks": 5})
    if way == "key":
        s = raw_request(mock.port, body, headers="Authorization: Bearer mock-fault-drop\r\n")
    else:
        if way == "body":
            body["mock"]["fault"] = "drop"
        else:
            requests.post(mock.url("/mock/fault"), json={"fault": "drop", "count": 1})
        s = raw_request(mock.port, body)
    data = read_until_closed(s)
    s.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0] and b"chunked" in head.lower()
    payload, complete = dechunk(rest)
    assert not complete, "the stream must be cut, not ended"
    ev = sse_events(payload.decode())
    chunks = [json.loads(e) for e in ev]
    assert len(chunks) == 3                                # role + 2 words, then nothing
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "w1 w2"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)
    st = wait_until(lambda: (lambda x: x if x["streams_dropped"] == 1 else None)(mock.stats()))
    assert st and st["streams_started"] == 1 and st["streams_completed"] == 0 and st["streams_aborted"] == 0


def test_fault_drop_non_stream(mock):
    s = raw_request(mock.port, chat(mock={"fault": "drop"}))
    data = read_until_closed(s)
    s.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0]
    payload, complete = dechunk(rest)
    assert not complete
    assert payload.startswith(b'{') and len(payload) > 10
    with pytest.raises(ValueError):
        json.loads(payload)
    # through requests: the body breaks off
    with pytest.raises(requests.exceptions.RequestException):
        mock.post("/v1/chat/completions", chat(mock={"fault": "drop"})).json()


@pytest.mark.parametrize("way", FAULT_WAYS)
def test_fault_no_usage(mock, way):
    r = with_fault(mock, way, "no-usage", chat(stream=True, stream_options={"include_usage": True}))
    assert r.status_code == 200
    ev = sse_events(r.text)
    assert ev[-1] == "[DONE]"
    chunks = [json.loads(e) for e in ev[:-1]]
    assert len(chunks) == 7
    assert all(c["choices"] for c in chunks) and all(c.get("usage") is None for c in chunks)
    # non-streamed: no usage object either
    j = mock.post("/v1/chat/completions", chat(mock={"fault": "no-usage"})).json()
    assert "usage" not in j and j["choices"][0]["message"]["content"] == "w1 w2 w3 w4 w5"


def test_global_fault_count_and_clear(mock):
    r = requests.post(mock.url("/mock/fault"), json={"fault": "500", "count": 2})
    assert r.json() == {"fault": "500", "remaining": 2}
    assert mock.post("/v1/chat/completions", chat()).status_code == 500
    assert requests.get(mock.url("/mock/fault")).json() == {"fault": "500", "remaining": 1}
    assert mock.get("/v1/models").status_code == 500            # every /v1 endpoint
    assert mock.post("/v1/chat/completions", chat()).status_code == 200
    assert requests.get(mock.url("/mock/fault")).json() == {"fault": None, "remaining": None}

    requests.post(mock.url("/mock/fault"), json={"fault": "429"})  # no count: until cleared
    for _ in range(3):
        assert mock.post("/v1/embeddings", {"model": "e", "input": "x"}).status_code == 429
    # a fault named by the body wins over the global one (and does not use it up)
    assert mock.post("/v1/chat/completions", chat(mock={"fault": "400"})).status_code == 400
    assert requests.post(mock.url("/mock/fault"), json={"fault": None}).json() == {"fault": None, "remaining": None}
    assert mock.post("/v1/chat/completions", chat()).status_code == 200

    assert requests.post(mock.url("/mock/fault"), json={"fault": "nope"}).status_code == 400
    assert requests.post(mock.url("/mock/fault"), json={"fault": "500", "count": 0}).status_code == 400
    assert requests.post(mock.url("/mock/fault"), data="x").status_code == 400

    requests.post(mock.url("/mock/fault"), json={"fault": "500"})
    requests.post(mock.url("/mock/reset"))
    assert mock.post("/v1/chat/completions", chat()).status_code == 200


# ------------------------------------------------------------------ stats

def test_stats(mock):
    s = mock.stats()
    assert s == {"requests": 0, "by_model": {}, "by_key": {}, "streams_started": 0, "streams_completed": 0,
                 "streams_aborted": 0, "streams_dropped": 0, "last": None}
    mock.post("/v1/chat/completions", chat(model="gpt-4o"))
    mock.post("/v1/chat/completions", chat(model="gpt-4o", stream=True), headers={"Authorization": "Bearer k2"})
    mock.post("/v1/embeddings", {"model": "text-embedding-3-small", "input": "x"})
    mock.get("/v1/models")
    mock.get("/v1/models/mock-model")
    mock.post("/v1/chat/completions", chat(), headers={})           # 401s are counted too
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "last one"}], "tools": [],
            "mock": {"chunks": 1}}
    mock.post("/v1/chat/completions", body, headers={"Authorization": "Bearer sk-last"})
    s = mock.stats()
    assert s["requests"] == 7
    assert s["by_model"] == {"gpt-4o": 2, "text-embedding-3-small": 1, "mock-model": 1, "gpt-4o-mini": 2}
    assert s["by_key"] == {"sk-test": 4, "k2": 1, "sk-last": 1}
    assert s["streams_started"] == 1 and s["streams_completed"] == 1
    assert s["last"] == {"path": "/v1/chat/completions", "model": "gpt-4o-mini", "body": body,
                         "authorization": "Bearer sk-last"}
    raw = requests.get(mock.url("/mock/stats")).text
    assert re.search(r'"tools":\s*\[\]', raw), raw          # the body as sent: [] stays []

    mock.get("/v1/models")
    assert mock.stats()["last"] == {"path": "/v1/models", "model": None, "body": None,
                                    "authorization": "Bearer sk-test"}

    r = requests.post(mock.url("/mock/reset"))
    assert r.status_code == 200 and r.json()["requests"] == 0
    assert mock.stats()["by_model"] == {} and mock.stats()["last"] is None


def test_stats_client_gone_mid_stream(mock):
    s = raw_request(mock.port, chat(stream=True, mock={"chunks": 100, "delay_ms": 20}))
    s.settimeout(5 * SLOW)
    assert b"200 OK" in s.recv(65536)
    s.close()
    st = wait_until(lambda: (lambda x: x if x["streams_aborted"] == 1 else None)(mock.stats()), timeout=5)
    assert st, mock.stats()
    assert st["streams_started"] == 1 and st["streams_completed"] == 0


def test_concurrent_streams_counted_exactly(mock):
    def one(i):
        r = mock.post("/v1/chat/completions", chat(model="m%d" % (i % 3), stream=True,
                                                   mock={"chunks": 3, "delay_ms": 10}))
        assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = mock.stats()
    assert s["requests"] == 12 and s["streams_started"] == 12 and s["streams_completed"] == 12
    assert s["by_model"] == {"m0": 4, "m1": 4, "m2": 4}
