"""examples/image-gateway, run as shipped: the real gateway.lua and the real
mock inference service (examples/image-gateway/mock-inference), both as
moongate processes on free loopback ports, configured through the
environment, stopped by PID."""
import base64
import json
import os
import pathlib
import signal
import struct
import subprocess
import time
import zlib

import pytest
import requests

from conftest import BIN, REPO, SLOW, free_port, requests_default_timeout, wait_until

requests_default_timeout()

APP = REPO / "examples" / "image-gateway"
GATEWAY = APP / "gateway.lua"
MOCK = APP / "mock-inference" / "gateway.lua"
ENV_VARS = ("LISTEN_ADDR", "INFERENCE_SERVICE_URL", "INFERENCE_TIMEOUT", "CORS_ORIGINS",
            "MOCK_LISTEN_ADDR")


class Proc:
    """One moongate process running a config of the example."""

    def __init__(self, tmp, config, env=None, port=None, workers=1, wait=True):
        self.dir = pathlib.Path(tmp)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.out, self.err = self.dir / "stdout.log", self.dir / "stderr.log"
        e = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
        e.update(env or {})
        self.cmd = [BIN, "--workers", str(workers)]
        if "LISTEN_ADDR" not in (env or {}) and "MOCK_LISTEN_ADDR" not in (env or {}):
            self.cmd += ["--port", str(self.port)]
        self.cmd.append(str(config))
        self.proc = subprocess.Popen(self.cmd, stdout=open(self.out, "wb"),
                                     stderr=open(self.err, "wb"),
                                     stdin=subprocess.DEVNULL, env=e, cwd=str(REPO))
        self.pid = self.proc.pid
        if wait:
            self.wait_started()

    def wait_started(self, timeout=10):
        deadline = time.time() + timeout * SLOW
        while "server started" not in self.stderr():
            if self.proc.poll() is not None:
                raise RuntimeError("moongate exited %s:\n%s" % (self.proc.returncode, self.stderr()))
            if time.time() > deadline:
                raise RuntimeError("moongate did not start:\n" + self.stderr())
            time.sleep(0.02)

    def stderr(self):
        return self.err.read_text(errors="replace")

    def access_log(self):
        return [json.loads(l) for l in self.out.read_text(errors="replace").splitlines()
                if l.startswith("{")]

    def url(self, path="/"):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(15 * SLOW)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()
                raise AssertionError("moongate did not stop:\n" + self.stderr())
        for marker in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
            assert marker not in self.stderr(), self.stderr()
        return self.proc.returncode


def start_mock(tmp, **kw):
    return Proc(tmp, MOCK, **kw)


@pytest.fixture
def procs(tmp_path):
    """A factory for processes of the example; all are stopped (and must
    exit 0) at the end of the test."""
    started = []

    def start(config, name=None, **kw):
        p = Proc(tmp_path / (name or "p%d" % len(started)), config, **kw)
        started.append(p)
        return p

    yield start
    for p in started:
        rc = p.stop()
        assert rc == 0, "exit code %s\n%s" % (rc, p.stderr())


@pytest.fixture(scope="module")
def mock(tmp_path_factory):
    m = start_mock(tmp_path_factory.mktemp("mock"))
    yield m
    assert m.stop() == 0, m.stderr()


@pytest.fixture
def gw(procs, mock):
    """The gateway in front of the module's mock (fresh per test, so passive
    health state never leaks from one test into another)."""
    return procs(GATEWAY, name="gw", env={
        "INFERENCE_SERVICE_URL": mock.url("/predict"), "INFERENCE_TIMEOUT": "1s"})


# --- a real PNG, and the mock's classification of it, computed here ---------

def make_png(w=8, h=8, seed=0):
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    raw = b"".join(b"\x00" + bytes(v for x in range(w)
                                   for v in ((x * 37 + seed) % 256, (y * 53 + seed) % 256, 160))
                   for y in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


LABELS = ["tabby", "golden_retriever", "espresso", "sports_car", "daisy", "teapot",
          "mountain_bike", "lighthouse", "pizza", "red_fox", "macaw", "volcano",
          "banana", "grand_piano", "seashore", "laptop", "goldfish", "umbrella",
          "hot_air_balloon", "snail"]


def expected_top3(data):
    """The mock's formula (predict.lua), so the decoded bytes are checked too."""
    h = 2166136261
    for b in data:
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    n = len(LABELS)
    i1 = h % n
    i2 = (i1 + 1 + (h // n) % (n - 1)) % n
    i3, k = i1, h // 997
    while i3 in (i1, i2):
        i3 = k % n
        k += 1
    c1 = 0.55 + ((h // 7) % 400) / 1000
    c2 = (1 - c1) * (0.45 + ((h // 11) % 40) / 100)
    c3 = (1 - c1 - c2) * (0.3 + ((h // 13) % 50) / 100)

    def r(x):
        import math
        return math.floor(x * 10000 + 0.5) / 10000
    return [{"label": LABELS[i1], "confidence": r(c1)},
            {"label": LABELS[i2], "confidence": r(c2)},
            {"label": LABELS[i3], "confidence": r(c3)}]


PNG = make_png()
PNG_B64 = base64.b64encode(PNG).decode()


def analyze(g, body, **kw):
    if not isinstance(body, (str, bytes)):
        body = json.dumps(body)
    return requests.post(g.url("/api/v1/analyze"), data=body,
                         headers={"Content-Type": "application/json", **kw.pop("headers", {})}, **kw)


# --- configuration ---------------------------------------------------------

def test_configs_check_ok():
    for cfg in (GATEWAY, MOCK):
        env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
        p = subprocess.run([BIN, "-t", str(cfg)], capture_output=True, text=True,
                           timeout=10 * SLOW, env=env)
        assert p.returncode == 0, p.stderr
        assert p.stdout.startswith("ok")


@pytest.mark.parametrize("value", ["1m30s", "1500ms", "10s", "2h", ".5s", "1.5s"])
def test_go_durations_accepted(value):
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env["INFERENCE_TIMEOUT"] = value
    p = subprocess.run([BIN, "-t", str(GATEWAY)], capture_output=True, text=True,
                       timeout=10 * SLOW, env=env)
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("var,value", [
    ("INFERENCE_TIMEOUT", "abc"), ("INFERENCE_TIMEOUT", "10"), ("INFERENCE_TIMEOUT", ""),
    ("INFERENCE_TIMEOUT", "10 s"), ("INFERENCE_TIMEOUT", "-1s"), ("INFERENCE_TIMEOUT", "0"),
    ("INFERENCE_TIMEOUT", "5d"),
    ("INFERENCE_SERVICE_URL", "localhost:8000/predict"), ("INFERENCE_SERVICE_URL", "ftp://x/p"),
    ("INFERENCE_SERVICE_URL", ""), ("INFERENCE_SERVICE_URL", "http://a:8000/p,http://:1/p"),
    ("LISTEN_ADDR", "nonsense"), ("CORS_ORIGINS", "localhost:4321"),
])
def test_invalid_environment_refuses_to_start(tmp_path, var, value):
    p = Proc(tmp_path, GATEWAY, env={var: value}, wait=False)
    try:
        rc = p.proc.wait(10 * SLOW)
    except subprocess.TimeoutExpired:
        p.stop()
        raise AssertionError("the gateway started with %s=%r" % (var, value))
    err = p.stderr()
    assert rc != 0
    assert "server started" not in err
    assert var + ":" in err and "gateway.lua" in err, err
    assert "stack traceback" not in err


def test_listen_addr_from_environment(procs, mock):
    port = free_port()
    g = procs(GATEWAY, env={"LISTEN_ADDR": "127.0.0.1:%d" % port,
                            "INFERENCE_SERVICE_URL": mock.url("/predict")}, port=port)
    assert requests.get(g.url("/health")).json() == {"status": "ok"}


def test_mock_listen_addr_from_environment(procs):
    port = free_port()
    m = procs(MOCK, env={"MOCK_LISTEN_ADDR": "127.0.0.1:%d" % port}, port=port)
    r = requests.post(m.url("/predict"), json={"image_data": PNG_B64})
    assert r.status_code == 200 and r.json() == expected_top3(PNG)


# --- the happy path --------------------------------------------------------

def test_analyze_success(gw, mock):
    r = analyze(gw, {"base64Image": PNG_B64})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json() == expected_top3(PNG)
    rid = r.headers["x-request-id"]
    assert rid
    # other images, other answers; same image, same answer
    other = make_png(seed=99)
    r2 = analyze(gw, {"base64Image": base64.b64encode(other).decode()})
    assert r2.json() == expected_top3(other) and r2.json() != r.json()
    assert analyze(gw, {"base64Image": PNG_B64}).json() == r.json()
    # one access line per request, and the request ID travelled upstream
    line = wait_until(lambda: [l for l in gw.access_log() if l["request_id"] == rid])
    assert line and line[0]["status"] == 200 and line[0]["route"] == "analyze"
    assert line[0]["method"] == "POST" and line[0]["uri"] == "/api/v1/analyze"
    assert wait_until(lambda: [l for l in mock.access_log() if l["request_id"] == rid])


def test_client_request_id_is_kept(gw, mock):
    r = analyze(gw, {"base64Image": PNG_B64}, headers={"X-Request-ID": "trace-me-123"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "trace-me-123"
    assert wait_until(lambda: [l for l in mock.access_log() if l["request_id"] == "trace-me-123"])


def test_health(gw):
    r = requests.get(gw.url("/health"))
    assert r.status_code == 200 and r.json() == {"status": "ok"}


# --- bad requests -----------------------------------------------------------

@pytest.mark.parametrize("body", ["nope", "{", "[1, 2]", '"just a string"', "42",
                                  '{"base64Image": 5}', '{"base64Image": ["a"]}'])
def test_invalid_request_body(gw, body):
    r = analyze(gw, body)
    assert r.status_code == 400
    assert r.json() == {"message": "Invalid request body"}


@pytest.mark.parametrize("body", ["{}", '{"base64Image": ""}', '{"base64Image": null}',
                                  '{"image": "abc"}', ""])
def test_base64image_required(gw, body):
    r = analyze(gw, body)
    assert r.status_code == 400
    assert r.json() == {"message": "base64Image field is required"}


def test_wrong_method(gw):
    r = requests.get(gw.url("/api/v1/analyze"))
    assert r.status_code == 405 and "POST" in r.headers["allow"]


# --- upstream failures, translated as the seed does ------------------------

@pytest.mark.parametrize("image,status,message", [
    ("mock:error:model exploded", 502, "inference service error: model exploded"),
    (base64.b64encode(b"not an image at all").decode(), 502,
     "inference service error: Internal server error during model inference."),
    ("!!! not base64 !!!", 502,
     "inference service error: Internal server error during model inference."),
    ("mock:unavailable", 503, "inference service returned status code 503"),
    ("mock:status:418", 502, "inference service returned status code 418"),
    ("mock:status:504", 504, "inference service returned status code 504"),
    ("mock:garbage", 502, "invalid response format from inference service"),
    ("mock:object", 502, "invalid response format from inference service"),
    ("mock:cut", 502, "failed to read response from inference service"),
    ("mock:close", 502, "inference service is unavailable"),
])
def test_upstream_failures(gw, image, status, message):
    r = analyze(gw, {"base64Image": image})
    assert r.status_code == status, r.text
    assert r.json() == {"message": message}
    assert r.headers["content-type"] == "application/json"
    line = wait_until(lambda: [l for l in gw.access_log()
                               if l["request_id"] == r.headers["x-request-id"]])
    assert line and line[0]["status"] == status and line[0].get("inference_error")


def test_mock_answers_fastapi_422_without_image_data(mock):
    r = requests.post(mock.url("/predict"), json={"nope": 1})
    assert r.status_code == 422 and isinstance(r.json()["detail"], list)
    # and the behaviour header works too, for direct experiments
    r = requests.post(mock.url("/predict"), json={"image_data": PNG_B64},
                      headers={"X-Mock-Behavior": "error:from header"})
    assert r.status_code == 500 and r.json() == {"detail": "from header"}


def test_unreachable_then_marked_down(procs):
    dead = free_port()
    g = procs(GATEWAY, env={"INFERENCE_SERVICE_URL": "http://127.0.0.1:%d/predict" % dead})
    for _ in range(3):                       # refused: 502
        r = analyze(g, {"base64Image": PNG_B64})
        assert r.status_code == 502 and r.json() == {"message": "inference service is unavailable"}
    r = analyze(g, {"base64Image": PNG_B64})  # passive health: every instance down, 503
    assert r.status_code == 503 and r.json() == {"message": "inference service is unavailable"}
    assert "marked down" in g.stderr()


def test_timeout_is_504(procs, mock):
    g = procs(GATEWAY, env={"INFERENCE_SERVICE_URL": mock.url("/predict"),
                            "INFERENCE_TIMEOUT": "500ms"})
    t0 = time.time()
    r = analyze(g, {"base64Image": "mock:stall:2"})
    took = time.time() - t0
    assert r.status_code == 504
    assert r.json() == {"message": "inference service is unavailable"}
    assert took < 1.8 * SLOW, took
    # slow but within the timeout: fine
    r = analyze(g, {"base64Image": "mock:stall:0.1"})
    assert r.status_code == 200 and len(r.json()) == 3


# --- several instances -------------------------------------------------------

def predict_count(m):
    return len([l for l in m.access_log() if l["uri"] == "/predict"])


def test_two_instances_balanced(procs):
    a, b = procs(MOCK, name="mock_a"), procs(MOCK, name="mock_b")
    g = procs(GATEWAY, env={"INFERENCE_SERVICE_URL": "%s, %s" % (a.url("/predict"), b.url("/predict"))})
    for _ in range(10):
        r = analyze(g, {"base64Image": PNG_B64})
        assert r.status_code == 200 and r.json() == expected_top3(PNG)
    wait_until(lambda: predict_count(a) + predict_count(b) == 10)
    assert predict_count(a) + predict_count(b) == 10
    assert predict_count(a) == 5 and predict_count(b) == 5   # round-robin, one worker


def test_dead_instance_is_skipped(procs):
    live = procs(MOCK, name="mock_live")
    dead = "http://127.0.0.1:%d/predict" % free_port()
    g = procs(GATEWAY, env={"INFERENCE_SERVICE_URL": dead + "," + live.url("/predict")})
    for _ in range(10):
        r = analyze(g, {"base64Image": PNG_B64})
        assert r.status_code == 200, r.text
        assert r.json() == expected_top3(PNG)
    assert wait_until(lambda: predict_count(live) == 10)
    err = g.stderr()
    assert "marked down" in err and dead in err
    # the refused attempts were logged per target, at most max_fails of them
    attempts = [l for l in (json.loads(x) for x in err.splitlines() if x.startswith("{"))
                if l.get("kind") == "connect"]
    assert 1 <= len(attempts) <= 3


# --- CORS ---------------------------------------------------------------------

def preflight(g, origin, method="POST", headers="content-type"):
    h = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers:
        h["Access-Control-Request-Headers"] = headers
    return requests.options(g.url("/api/v1/analyze"), headers=h)


def test_cors_preflight_allowed(gw, mock):
    before = predict_count(mock)
    r = preflight(gw, "http://localhost:4321")
    assert r.status_code == 204 and r.content == b""
    assert r.headers["access-control-allow-origin"] == "http://localhost:4321"
    assert "POST" in r.headers["access-control-allow-methods"]
    assert "content-type" in r.headers["access-control-allow-headers"].lower()
    assert int(r.headers["access-control-max-age"]) > 0
    assert "Origin" in r.headers["vary"]
    assert predict_count(mock) == before      # a preflight never reaches the handler


def test_cors_preflight_disallowed(gw):
    r = preflight(gw, "http://evil.example")
    assert r.status_code == 204
    assert not [k for k in r.headers if k.lower().startswith("access-control-")]
    assert "Origin" in r.headers["vary"]


def test_cors_actual_request(gw):
    r = analyze(gw, {"base64Image": PNG_B64}, headers={"Origin": "http://localhost:4321"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "http://localhost:4321"
    assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
    assert "Origin" in r.headers["vary"]
    # errors carry CORS headers too, so the page can read the message
    r = analyze(gw, "nope", headers={"Origin": "http://localhost:4321"})
    assert r.status_code == 400 and r.headers["access-control-allow-origin"] == "http://localhost:4321"
    r = analyze(gw, {"base64Image": PNG_B64}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    assert "Origin" in r.headers["vary"]
    r = analyze(gw, {"base64Image": PNG_B64})
    assert "access-control-allow-origin" not in r.headers


def test_cors_origins_configurable(procs, mock):
    g = procs(GATEWAY, env={"INFERENCE_SERVICE_URL": mock.url("/predict"),
                            "CORS_ORIGINS": "https://app.example.com, ^https://[%w-]+%.preview%.example%.com$"})
    assert preflight(g, "https://app.example.com").headers.get(
        "access-control-allow-origin") == "https://app.example.com"
    assert preflight(g, "https://pr-12.preview.example.com").headers.get(
        "access-control-allow-origin") == "https://pr-12.preview.example.com"
    assert "access-control-allow-origin" not in preflight(g, "http://localhost:4321").headers
    assert "access-control-allow-origin" not in preflight(g, "https://x.preview.example.com.evil").headers
    g2 = procs(GATEWAY, name="gw_star", env={"INFERENCE_SERVICE_URL": mock.url("/predict"),
                                             "CORS_ORIGINS": "*"})
    assert preflight(g2, "http://anything.test").headers["access-control-allow-origin"] == "*"


def test_plain_options_reaches_handler(gw):
    r = requests.options(gw.url("/api/v1/analyze"))
    assert r.status_code == 204 and "POST" in r.headers["allow"]


# --- the page ----------------------------------------------------------------

def test_page_served(gw):
    r = requests.get(gw.url("/"))
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.text == (APP / "public" / "index.html").read_text()
    assert 'id="analyze"' in r.text and "/app.js" in r.text
    js = requests.get(gw.url("/app.js"))
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert "/api/v1/analyze" in js.text
    css = requests.get(gw.url("/app.css"))
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert requests.head(gw.url("/")).status_code == 200
    assert requests.get(gw.url("/nope")).status_code == 404
