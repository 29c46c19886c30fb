"""The command line: --version, --help, -t, option errors, start-up errors."""
import json
import re
import socket
import subprocess
import textwrap

import pytest
import requests

from conftest import BIN, SLOW, Gateway, free_port, wait_until, requests_default_timeout

requests_default_timeout()

GOOD = """
return {
  listen = "127.0.0.1:8080",
  routes = {
    { "GET", "/a", function() return 200, { a = 1 } end },
    { "GET", "/b", handler = "routes/b.lua" },
  },
}
"""
B = "return function(req) return 200, 'b' end\n"


def write(d, files):
    for name, text in files.items():
        p = d / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    return d / "gateway.lua"


def run(*args, timeout=10):
    return subprocess.run([BIN, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout * SLOW, stdin=subprocess.DEVNULL)


def test_version():
    p = run("--version")
    assert p.returncode == 0
    assert re.match(r"^moongate \d+\.\d+\.\d+", p.stdout), p.stdout
    assert run("-v").stdout == p.stdout


def test_help():
    p = run("--help")
    assert p.returncode == 0
    for opt in ("--port", "--workers", "--test-config", "--version", "--help", "CONFIG"):
        assert opt in p.stdout, opt
    assert run("-h").stdout == p.stdout


def test_check_good_config(tmp_path):
    cfg = write(tmp_path, {"gateway.lua": GOOD, "routes/b.lua": B})
    p = run("-t", cfg)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("ok"), p.stdout
    assert str(cfg) in p.stdout
    p = run("--test-config", cfg)
    assert p.returncode == 0 and p.stdout.startswith("ok")


BAD_CASES = {
    "unknown_top_field": (
        'return { colour = "red", routes = { { "GET", "/a", function() return 200 end } } }',
        {}, ["colour", "unknown field"]),
    "unknown_route_field": (
        'return { routes = { { "GET", "/a", function() return 200 end, colour = "red" } } }',
        {}, ["routes[1]", "GET /a", "colour", "unknown field"]),
    "bad_listen": (
        'return { listen = "localhost:notaport", routes = { { "GET", "/a", function() return 200 end } } }',
        {}, ["listen", "notaport"]),
    "bad_listen_port_range": (
        'return { listen = "127.0.0.1:99999", routes = { { "GET", "/a", function() return 200 end } } }',
        {}, ["listen", "99999"]),
    "bad_duration": (
        'return { limits = { header_timeout = "ten seconds" }, routes = { { "GET", "/a", function() return 200 end } } }',
        {}, ["limits.header_timeout", "duration", "ten seconds"]),
    "handler_missing": (
        'return { routes = { { "GET", "/a", handler = "routes/nope.lua" } } }',
        {}, ["routes[1]", "GET /a", "handler", "routes/nope.lua"]),
    "handler_syntax_error": (
        'return { routes = { { "GET", "/x", function() return 200 end }, { "POST", "/a", handler = "routes/bad.lua" } } }',
        {"routes/bad.lua": "return function(req)\n  local x = 1\n  return 200,,\nend\n"},
        ["routes[2]", "POST /a", "handler", "routes/bad.lua:3:"]),
    "unknown_policy": (
        'return { routes = { { "GET", "/a", function() return 200 end, policies = { "no-such-policy" } } } }',
        {}, ["routes[1]", "GET /a", "no-such-policy", "unknown policy"]),
    "unknown_method": (
        'return { routes = { { "GET", "/ok", function() return 200 end }, { "FETCH", "/a", function() return 200 end } } }',
        {}, ["routes[2]", "FETCH", "unknown method"]),
    "config_syntax_error": (
        'return {\n  routes = {\n    { "GET", "/a" function() return 200 end },\n  },\n}\n',
        {}, ["gateway.lua:3:"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_check_bad_config(tmp_path, case):
    config, extra, needles = BAD_CASES[case]
    cfg = write(tmp_path, {"gateway.lua": config, **extra})
    p = run("-t", cfg)
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    assert not p.stdout.startswith("ok")
    err = p.stderr
    assert str(cfg) in err or "gateway.lua" in err, err
    for n in needles:
        assert n in err, "%r not in %r" % (n, err)
    assert "stack traceback" not in err, err
    assert "[C]:" not in err and "in function" not in err, err
    # One message, not a dump.
    assert len(err.strip().splitlines()) <= 2, err
    # And the same config refuses to start (same message, non-zero exit).
    p2 = run("--port", free_port(), cfg)
    assert p2.returncode != 0
    for n in needles:
        assert n in p2.stderr, "%r not in %r" % (n, p2.stderr)


def test_missing_config_file(tmp_path):
    p = run("-t", tmp_path / "nope.lua")
    assert p.returncode != 0
    assert "nope.lua" in p.stderr


@pytest.mark.parametrize("args,needle", [
    (["--port", "abc"], "abc"),
    (["--port", "70000"], "70000"),
    (["--port", "0"], "'0'"),
    (["--port=abc"], "abc"),
    (["--workers", "0"], "workers"),
    (["--workers", "many"], "many"),
    (["--frobnicate"], "--frobnicate"),
    (["--port"], "--port"),
])
def test_invalid_options(tmp_path, args, needle):
    cfg = write(tmp_path, {"gateway.lua": GOOD, "routes/b.lua": B})
    if args == ["--port"]:
        p = run(cfg, "--port")
    else:
        p = run(*args, cfg)
    assert p.returncode != 0
    assert needle in p.stderr, p.stderr
    assert "moongate:" in p.stderr
    assert "server started" not in p.stderr


def test_no_config_given():
    p = run()
    assert p.returncode != 0
    assert "config" in p.stderr.lower()


def test_port_in_use(tmp_path):
    cfg = write(tmp_path, {"gateway.lua": GOOD, "routes/b.lua": B})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        p = run("--port", port, cfg)
    assert p.returncode != 0
    assert str(port) in p.stderr, p.stderr
    assert "in use" in p.stderr.lower(), p.stderr
    assert "server started" not in p.stderr
    assert "stack traceback" not in p.stderr


def test_port_overrides_config_and_started_line(tmp_path):
    config_port = free_port()
    cfg = GOOD.replace("127.0.0.1:8080", "127.0.0.1:%d" % config_port)
    g = Gateway(tmp_path / "gw", cfg, files={"routes/b.lua": B})
    try:
        assert g.port != config_port
        r = requests.get(g.url("/a"))
        assert r.status_code == 200 and r.json() == {"a": 1}
        assert requests.get(g.url("/b")).text == "b"
        with pytest.raises(requests.ConnectionError):
            requests.get("http://127.0.0.1:%d/a" % config_port, timeout=2)
        started = [e for e in g.error_log() if "server started" in e.get("msg", "")]
        assert len(started) == 1, g.stderr()
        e = started[0]
        assert e["level"] == "info"
        assert e["listen"] == "127.0.0.1:%d" % g.port
        assert e["pid"] == g.pid
        assert e["workers"] == 1
        assert str(g.port) in e["msg"]
    finally:
        assert g.stop() == 0
    g.check_clean()
    assert any("stopped" in e.get("msg", "") for e in g.error_log())
