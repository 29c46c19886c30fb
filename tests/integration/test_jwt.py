"""The jwt policy against tokens made by an independent implementation
(Python's hmac/hashlib for HS256; `cryptography` or the openssl CLI for
RS256), forwarding claims upstream."""
import base64
import hashlib
import hmac
import json
import subprocess
import time

import pytest
import requests

from conftest import BIN

try:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding
except ImportError:                     # pragma: no cover
    serialization = None


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


# ---- RS256 ----------------------------------------------------------------
# Keys are made per test run with the openssl CLI; tokens are signed by
# Python's `cryptography` when it is there, else by `openssl dgst -sign`.
# Either way the signer is independent of the gateway's Lua RSA.


def rsa_key(dir, name, bits=2048):
    priv = dir / (name + ".pem")
    subprocess.run(["openssl", "genrsa", "-out", str(priv), str(bits)], check=True, capture_output=True)
    pub = subprocess.run(["openssl", "rsa", "-in", str(priv), "-pubout"], check=True,
                         capture_output=True, text=True).stdout
    return priv, pub


def rs_sign(priv, data):
    if serialization is not None:
        key = serialization.load_pem_private_key(priv.read_bytes(), password=None)
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    return subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(priv)], input=data,
                          check=True, capture_output=True).stdout


def rs_token(priv, claims, header=None):
    h = b64(json.dumps(header or {"alg": "RS256", "typ": "JWT"}).encode())
    p = b64(json.dumps(claims).encode())
    return "%s.%s.%s" % (h, p, b64(rs_sign(priv, ("%s.%s" % (h, p)).encode())))


def jwk(pub_pem, kid):
    n = subprocess.run(["openssl", "rsa", "-pubin", "-noout", "-modulus"], input=pub_pem,
                       check=True, capture_output=True, text=True).stdout.strip().split("=", 1)[1]
    return {"kid": kid, "kty": "RSA", "n": b64(bytes.fromhex(n)), "e": "AQAB"}


def lua_jwk(j):
    return "{ " + ", ".join('%s = "%s"' % kv for kv in j.items()) + " }"


@pytest.fixture
def echo(gateway):
    return gateway("""
    return { listen = "127.0.0.1:8080", routes = { { "GET", "/*", function(req)
      return 200, { user = req.headers["x-user-id"] or false } end } } }
    """)


def get(g, tok):
    return requests.get(g.url("/api/x"), headers={"Authorization": "Bearer " + tok})


def test_rs256_public_key_file(gateway, echo, tmp_path):
    priv, pub = rsa_key(tmp_path, "auth")
    other, _ = rsa_key(tmp_path, "other")
    keyfile = tmp_path / "auth.pub"
    keyfile.write_text(pub)
    g = gateway("""
    return { listen = "127.0.0.1:8080", upstreams = { o = { targets = { "http://127.0.0.1:%d" } } },
      routes = { { "GET", "/api/*", proxy = "o", policies = {
        { "jwt", public_key_file = "%s", issuers = { "idp" }, claims_to_headers = { sub = "X-User-Id" } } } } } }
    """ % (echo.port, keyfile))
    now = int(time.time())
    good = rs_token(priv, {"sub": "user-7", "iss": "idp", "exp": now + 60})
    for _ in range(3):                  # the repeats are served from the cache
        ok = get(g, good)
        assert ok.status_code == 200 and ok.json()["user"] == "user-7"
    expired = get(g, rs_token(priv, {"sub": "u", "iss": "idp", "exp": now - 60}))
    assert expired.status_code == 401 and expired.json() == {"message": "token expired"}
    forged = get(g, rs_token(other, {"sub": "admin", "iss": "idp", "exp": now + 60}))
    assert forged.status_code == 401 and forged.json() == {"message": "bad signature"}
    h, p, s = good.split(".")
    tampered = get(g, "%s.%s.%s" % (h, b64(json.dumps({"sub": "admin", "iss": "idp"}).encode()), s))
    assert tampered.status_code == 401 and tampered.json() == {"message": "bad signature"}
    # alg confusion: an HS256 token whose HMAC key is the public key's PEM
    confused = get(g, token(pub, {"sub": "admin", "iss": "idp", "exp": now + 60}))
    assert confused.status_code == 401 and confused.json() == {"message": "unsupported algorithm"}
    none_alg = get(g, token("", {"sub": "admin", "iss": "idp"}, alg="none"))
    assert none_alg.status_code == 401 and none_alg.json() == {"message": "unsupported algorithm"}


def test_rs256_jwks_by_kid_and_hs256_alongside(gateway, echo, tmp_path):
    k1, pub1 = rsa_key(tmp_path, "k1")
    k2, pub2 = rsa_key(tmp_path, "k2", bits=4096)
    g = gateway("""
    return { listen = "127.0.0.1:8080", upstreams = { o = { targets = { "http://127.0.0.1:%d" } } },
      routes = {
        { "GET", "/api/*", proxy = "o", policies = {
          { "jwt", jwks = { %s, %s }, claims_to_headers = { sub = "X-User-Id" } } } },
        { "GET", "/mixed/*", proxy = "o", policies = {
          { "jwt", secret_env = "TEST_JWT_SECRET", jwks = { keys = { %s } }, algorithms = { "HS256", "RS256" },
            claims_to_headers = { sub = "X-User-Id" } } } } } }
    """ % (echo.port, lua_jwk(jwk(pub1, "2024")), lua_jwk(jwk(pub2, "2025")), lua_jwk(jwk(pub1, "2024"))),
        env={"TEST_JWT_SECRET": "s3cret-key"})
    now = int(time.time())
    t1 = rs_token(k1, {"sub": "one", "exp": now + 60}, {"alg": "RS256", "kid": "2024"})
    t2 = rs_token(k2, {"sub": "two", "exp": now + 60}, {"alg": "RS256", "kid": "2025"})
    assert get(g, t1).json()["user"] == "one"
    assert get(g, t2).json()["user"] == "two"
    wrong_kid = get(g, rs_token(k1, {"sub": "x"}, {"alg": "RS256", "kid": "2025"}))
    assert wrong_kid.status_code == 401 and wrong_kid.json() == {"message": "bad signature"}
    unknown = get(g, rs_token(k1, {"sub": "x"}, {"alg": "RS256", "kid": "1999"}))
    assert unknown.status_code == 401 and unknown.json() == {"message": "unknown key id"}
    no_kid = get(g, rs_token(k1, {"sub": "x"}))
    assert no_kid.status_code == 401 and no_kid.json() == {"message": "unknown key id"}
    hs = get(g, token("s3cret-key", {"sub": "hs"}))
    assert hs.status_code == 401 and hs.json() == {"message": "unsupported algorithm"}

    def mixed(tok):
        return requests.get(g.url("/mixed/x"), headers={"Authorization": "Bearer " + tok})
    assert mixed(token("s3cret-key", {"sub": "hs"})).json()["user"] == "hs"
    assert mixed(rs_token(k1, {"sub": "rs"})).json()["user"] == "rs"       # one key: no kid needed
    r = mixed(token(pub1, {"sub": "admin"}))
    assert r.status_code == 401 and r.json() == {"message": "bad signature"}
    r = mixed(rs_token(k2, {"sub": "x"}, {"alg": "RS256", "kid": "2025"}))
    assert r.status_code == 401 and r.json() == {"message": "unknown key id"}


@pytest.mark.parametrize("policy,needle", [
    ('{ "jwt", algorithms = { "RS256" } }', "public_key, public_key_file or jwks: required for RS256"),
    ('{ "jwt", secret = "k", public_key_file = "%(good)s", algorithms = { "RS256" } }',
     "secret: an HMAC secret is given but algorithms does not allow HS256"),
    ('{ "jwt", public_key_file = "%(small)s" }', "RSA key of 1024 bits is too small (at least 2048)"),
    ('{ "jwt", public_key = "-----BEGIN PUBLIC KEY-----\\nnot base64!\\n-----END PUBLIC KEY-----" }',
     "public_key: PEM body is not valid base64"),
    ('{ "jwt", public_key_file = "%(missing)s" }', "public_key_file: cannot read"),
])
def test_rs256_misconfiguration_is_a_load_error(tmp_path, policy, needle):
    for name, bits in (("small", 1024), ("good", 2048)):
        (tmp_path / (name + ".pub")).write_text(rsa_key(tmp_path, name, bits)[1])
    cfg = tmp_path / "gateway.lua"
    cfg.write_text("""return { listen = "127.0.0.1:8080", routes = {
      { "GET", "/x", function() return 200 end, policies = { %s } } } }
    """ % (policy % {"small": tmp_path / "small.pub", "good": tmp_path / "good.pub",
                     "missing": tmp_path / "nope.pub"}))
    p = subprocess.run([BIN, "-t", str(cfg)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert needle in p.stderr and 'policy "jwt"' in p.stderr, p.stderr
