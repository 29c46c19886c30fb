"""request-validation on a real route, shaped by the errors policy."""
import requests


def test_validation_answers_name_the_field(gateway):
    g = gateway("""
    return { listen = "127.0.0.1:8080", policies = { "request-id", { "errors", shape = "openai" } },
      routes = { { "POST", "/v1/chat/completions", function(req) return 200, { model = req:json().model } end,
        policies = { { "request-validation", max_body = "1k", required = { "model" },
                       fields = { model = { type = "string", max_len = 32 } } } } } } }
    """)
    ok = requests.post(g.url("/v1/chat/completions"), data='{"model":"m1"}')   # form content type
    assert ok.status_code == 200 and ok.json() == {"model": "m1"}
    bad = requests.post(g.url("/v1/chat/completions"), json={"messages": []})
    assert bad.status_code == 400
    assert bad.json()["error"]["message"] == "field model is required"
    big = requests.post(g.url("/v1/chat/completions"), json={"model": "m", "pad": "x" * 2000})
    assert big.status_code == 413 and big.json()["error"]["code"] == 413
