"""The README's demo (scripts/run.sh without a config runs
scripts/aiproxy-demo.sh after setup.sh): run the orchestration script directly
(no apt, no build) with a temporary data directory and free ports, wait for
the curl command it prints, run that command, and stop the script with
SIGTERM: every process it started (moongate x2, redis-server, postgres) must
be gone. Also with SQL_DSN / REDIS_CONN_STRING given: no database started."""
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest
import requests

from conftest import REPO, SLOW, free_port, requests_default_timeout
from test_postgres import PGBIN, Postgres
from test_redis import Redis

requests_default_timeout()

SCRIPT = str(REPO / "scripts" / "aiproxy-demo.sh")


def gone(pid):
    """True when pid no longer runs (absent, or a zombie nobody reaped)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def port_open(port):
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Demo:
    def __init__(self, env=None, args=None, terminal=False):
        self.data = tempfile.mkdtemp(prefix="moongate-demo-")
        self.ports = {"port": free_port(), "mock_port": free_port(), "pg_port": free_port(),
                      "redis_port": free_port()}
        e = dict(os.environ)
        for k in ("SQL_DSN", "REDIS_CONN_STRING", "MOCK_MODELS", "LISTEN_ADDR"):
            e.pop(k, None)
        e["ADMIN_KEY"] = "demo-admin-test"
        e.update(env or {})
        if args is None:
            args = ["--data-dir", self.data]
            for k, v in self.ports.items():
                args += ["--" + k.replace("_", "-"), str(v)]
        kw = {}
        if terminal:
            # like a shell's foreground job: its own process group, SIGINT not
            # ignored (background jobs of a non-interactive shell ignore it)
            kw = {"start_new_session": True,
                  "preexec_fn": lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)}
        self.proc = subprocess.Popen(["bash", SCRIPT, *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     text=True, env=e, cwd="/", **kw)
        self.lines = []
        self.q = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self.q.put(line.rstrip("\n"))
        self.q.put(None)

    def output(self):
        return "\n".join(self.lines)

    def wait_for(self, pattern, timeout=60):
        deadline = time.time() + timeout * SLOW
        while True:
            left = deadline - time.time()
            if left <= 0:
                raise AssertionError("no %r within %ss:\n%s" % (pattern, timeout, self.output()))
            try:
                line = self.q.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError("the demo exited (%s) before %r:\n%s"
                                     % (self.proc.wait(), pattern, self.output()))
            m = re.search(pattern, line)
            if m:
                return m

    def pids(self):
        line = next(l for l in self.lines if l.startswith("demo: pids "))
        out = {}
        for name, value in re.findall(r"(\w+)=(\d*)", line):
            out[name] = int(value) if value else None
        return out

    def stop(self, timeout=60):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout * SLOW)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                raise
        return self.proc.returncode

    def cleanup(self):
        if self.proc.poll() is None:
            try:
                self.stop()
            except Exception:
                pass
        shutil.rmtree(self.data, ignore_errors=True)


@pytest.fixture
def demos():
    started = []

    def start(**kw):
        d = Demo(**kw)
        started.append(d)
        return d

    yield start
    for d in started:
        d.cleanup()


def run_printed_curl(demo):
    m = demo.wait_for(r"^(curl -s http://127\.0\.0\.1:(\d+)/v1/chat/completions .*)$")
    cmd, port = m.group(1), int(m.group(2))
    assert port == demo.ports["port"]
    key = re.search(r"Authorization: Bearer (sk-[A-Za-z0-9]+)", cmd).group(1)
    p = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return cmd, key, p.stdout


def check_chat_answer(text):
    j = json.loads(text)
    assert j["object"] == "chat.completion", j
    assert j["model"] == "gpt-4o-mini"
    assert j["choices"][0]["message"]["content"] == "w1 w2 w3 w4 w5"
    assert j["usage"] == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}   # "Hello!": 6 chars


def test_demo_starts_everything_answers_and_stops_everything(demos):
    if not os.path.exists(PGBIN + "/initdb"):
        pytest.fail("postgresql-15 is not installed (scripts/setup.sh --test installs it)")
    d = demos()
    cmd, key, answer = run_printed_curl(d)
    check_chat_answer(answer)
    out = d.output()
    assert "admin key: demo-admin-test" in out
    pids = d.pids()
    assert set(pids) == {"aiproxy", "mock", "redis", "postgres"}
    assert all(pids.values()), pids
    assert not any(gone(p) for p in pids.values()), pids

    # what the demo created, seen through the admin API and the mock's stats
    admin = {"Authorization": "demo-admin-test"}
    base = "http://127.0.0.1:%d" % d.ports["port"]
    chans = requests.get(base + "/api/channels/", headers=admin).json()["data"]["channels"]
    assert len(chans) == 1
    assert chans[0]["base_url"] == "http://127.0.0.1:%d" % d.ports["mock_port"]
    assert chans[0]["models"] == ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]
    toks = requests.get(base + "/api/token/demo", headers=admin).json()["data"]["tokens"]
    assert [t["key"] for t in toks] == [key[len("sk-"):]]
    stats = requests.get("http://127.0.0.1:%d/mock/stats" % d.ports["mock_port"]).json()
    assert stats["by_key"].get("sk-mock", 0) >= 1 and stats["by_model"].get("gpt-4o-mini", 0) >= 1, stats
    assert stats["last"]["authorization"] == "Bearer sk-mock"
    # a streamed answer through the proxy too
    r = requests.post(base + "/v1/chat/completions", headers={"Authorization": "Bearer " + key},
                      json={"model": "gpt-4o", "stream": True, "mock": {"chunks": 2},
                            "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]"), r.text
    # the databases are the demo's own, on loopback
    assert port_open(d.ports["pg_port"]) and port_open(d.ports["redis_port"])
    pgdata_line = re.search(r"PostgreSQL 15 on 127\.0\.0\.1:(\d+) \(pid (\d+), data (\S+)\)", out)
    assert pgdata_line and int(pgdata_line.group(1)) == d.ports["pg_port"]
    pgdata = pgdata_line.group(3)
    assert os.path.exists(os.path.join(pgdata, "postmaster.pid"))
    assert os.path.exists(os.path.join(d.data, "logs", "aiproxy.log"))

    assert d.stop() == 0, d.output()
    assert "demo: stopped" in d.output()
    deadline = time.time() + 10 * SLOW
    while time.time() < deadline and not all(gone(p) for p in pids.values()):
        time.sleep(0.05)
    assert all(gone(p) for p in pids.values()), {k: gone(v) for k, v in pids.items()}
    assert not os.path.exists(os.path.join(pgdata, "postmaster.pid"))
    for k in ("port", "mock_port", "pg_port", "redis_port"):
        assert not port_open(d.ports[k]), k


def test_demo_ctrl_c_stops_everything(demos):
    """Ctrl-C in a terminal: SIGINT to the whole foreground process group,
    so the children get it too; the script still stops what is left."""
    if not os.path.exists(PGBIN + "/initdb"):
        pytest.fail("postgresql-15 is not installed (scripts/setup.sh --test installs it)")
    d = demos(terminal=True)
    _, _, answer = run_printed_curl(d)
    check_chat_answer(answer)
    pids = d.pids()
    assert all(pids.values()), pids
    os.killpg(d.proc.pid, signal.SIGINT)
    assert d.proc.wait(60 * SLOW) == 0, d.output()
    assert "demo: stopped" in d.output()
    deadline = time.time() + 10 * SLOW
    while time.time() < deadline and not all(gone(p) for p in pids.values()):
        time.sleep(0.05)
    assert all(gone(p) for p in pids.values()), {k: gone(v) for k, v in pids.items()}
    for k in ("port", "mock_port", "pg_port", "redis_port"):
        assert not port_open(d.ports[k]), k


@pytest.fixture
def servers():
    if not os.path.exists(PGBIN + "/initdb"):
        pytest.fail("postgresql-15 is not installed (scripts/setup.sh --test installs it)")
    base = tempfile.mkdtemp(prefix="moongate-demo-ext-")
    os.chmod(base, 0o755)                 # the server runs as postgres
    pg = Postgres(os.path.join(base, "pg"))
    r = Redis(base)
    yield pg, r
    r.stop()
    try:
        pg.stop()
    except AssertionError:
        pass
    shutil.rmtree(base, ignore_errors=True)


def test_demo_with_given_servers_starts_no_database(demos, servers):
    pg, r = servers
    env = {"SQL_DSN": "postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable" % pg.port,
           "REDIS_CONN_STRING": "redis://127.0.0.1:%d/0" % r.port}
    d = demos(env=env)
    _, key, answer = run_printed_curl(d)
    check_chat_answer(answer)
    out = d.output()
    assert "PostgreSQL: using SQL_DSN" in out and "Redis: using REDIS_CONN_STRING" in out
    pids = d.pids()
    assert pids["redis"] is None and pids["postgres"] is None
    assert not port_open(d.ports["pg_port"]) and not port_open(d.ports["redis_port"])
    assert not os.path.exists(os.path.join(d.data, "pgdata"))
    # the demo's rows are in the given database, its token cached in the given Redis
    assert pg.psql("SELECT count(*) FROM channels WHERE name = 'mock'") == "1"
    assert pg.psql("SELECT count(*) FROM tokens WHERE group_id = 'demo'") == "1"
    assert d.stop() == 0, d.output()
    for p in (pids["aiproxy"], pids["mock"]):
        assert gone(p)
    # the given servers are left running
    assert pg.psql("SELECT 1") == "1"
    assert r.cli("PING").strip() == "PONG"

    # a second run on the same database: the group already exists, a new token
    d2 = demos(env=env)
    _, key2, answer2 = run_printed_curl(d2)
    check_chat_answer(answer2)
    assert key2 != key
    assert d2.stop() == 0


def wait_output(d, text, timeout=5):
    deadline = time.time() + timeout * SLOW
    while time.time() < deadline:
        if text in d.output():
            return True
        time.sleep(0.02)
    return False


def test_demo_refuses_a_busy_port_and_unknown_options(demos, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        busy = s.getsockname()[1]
        d = demos(args=["--data-dir", str(tmp_path / "data"), "--port", str(busy)])
        assert d.proc.wait(30) == 1
        assert wait_output(d, "port %d (--port) is in use" % busy), d.output()
    assert not (tmp_path / "data").exists()          # refused before anything was set up
    d = demos(args=["--nope"])
    assert d.proc.wait(30) == 2
    assert wait_output(d, "unknown option --nope"), d.output()
