"""The jwt policy against tokens made by an independent implementation
(Python's hmac/hashlib), forwarding claims upstream."""
import base64
import hashlib
import hmac
import json
import time

import requests


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(secret, claims, alg="HS256"):
    h = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    p = b64(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), ("%s.%s" % (h, p)).encode(), hashlib.sha256).digest()
    return "%s.%s.%s" % (h, p, b64(sig))


def test_jwt_verifies_and_forwards_claims(gateway):
    origin = gateway("""
    return { listen = "127.0.0.1:8080", routes = { { "GET", "/*", function(req)
      return 200, { user = req.headers["x-user-id"] or false, auth = req.headers["authorization"] or false } end } } }
    """)
    g = gateway("""
    return { listen = "127.0.0.1:8080", upstreams = { o = { targets = { "http://127.0.0.1:%d" } } },
      routes = { { "GET", "/api/*", proxy = "o", policies = {
        { "jwt", secret_env = "TEST_JWT_SECRET", issuers = { "bff" }, claims_to_headers = { sub = "X-User-Id" } } } } } }
    """ % origin.port, env={"TEST_JWT_SECRET": "s3cret-key"})
    now = int(time.time())
    ok = requests.get(g.url("/api/x"), headers={"Authorization": "Bearer " + token("s3cret-key", {"sub": "user-42", "iss": "bff", "exp": now + 60})})
    assert ok.status_code == 200 and ok.json()["user"] == "user-42"
    expired = requests.get(g.url("/api/x"), headers={"Authorization": "Bearer " + token("s3cret-key", {"sub": "u", "iss": "bff", "exp": now - 60})})
    assert expired.status_code == 401 and expired.json() == {"message": "token expired"}
    forged = requests.get(g.url("/api/x"), headers={"Authorization": "Bearer " + token("guess", {"sub": "admin", "iss": "bff"})})
    assert forged.status_code == 401 and forged.json() == {"message": "bad signature"}
    assert "s3cret" not in forged.text
    none_alg = requests.get(g.url("/api/x"), headers={"Authorization": "Bearer " + token("s3cret-key", {"sub": "u", "iss": "bff"}, alg="none")})
    assert none_alg.status_code == 401 and none_alg.json() == {"message": "unsupported algorithm"}
