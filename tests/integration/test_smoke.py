"""The shortest path through the whole stack: start, answer, stop."""
import requests

from conftest import HELLO


def test_hello_and_graceful_stop(gateway):
    g = gateway(HELLO)
    r = requests.get(g.url("/hello"))
    assert r.status_code == 200
    assert r.json() == {"hello": "world"}
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-request-id"]
    assert g.stop() == 0
    log = g.access_log()
    assert log[-1]["uri"] == "/hello" and log[-1]["status"] == 200
