-- Specs for stock policies, run with no server: a policy's phases are plain
-- functions of (conf, req[, res]), so a table stands in for the request.
local schema = require "moongate.schema"

local home = debug.getinfo(1, "S").source:match("^@(.*)/tests/lua/") or "."

local function policy(name, settings)
  local mod = dofile(home .. "/policies/" .. name .. ".lua")
  local conf = schema.check(mod.schema, settings or {}, name)
  if mod.init then mod.init(conf) end
  return mod, conf
end

local function fake_req(method, headers)
  return { method = method, headers = headers or {}, ctx = {}, id = "req-1" }
end

test("errors: the message shape, renamed field, status", function()
  local p, conf = policy("errors", { field = "error", include_status = true })
  local res = { status = 404, headers = {}, error = "not found" }
  p.response(conf, fake_req("GET"), res)
  eq(res.body, { error = "not found", status = 404 })
end)

test("errors: the OpenAI shape", function()
  local p, conf = policy("errors", { shape = "openai" })
  local res = { status = 429, headers = {}, error = "slow down" }
  p.response(conf, fake_req("GET"), res)
  eq(res.body, { error = { message = "slow down", type = "rate_limit_exceeded", code = 429 } })
end)

test("errors: answers that are not errors are left alone", function()
  local p, conf = policy("errors")
  local res = { status = 400, headers = {}, body = { custom = true } }
  p.response(conf, fake_req("GET"), res)
  eq(res.body, { custom = true })
end)

test("cors: a preflight from an allowed origin", function()
  local p, conf = policy("cors", { origins = { "http://localhost:4321" }, max_age = 600 })
  local st, body, h = p.access(conf, fake_req("OPTIONS", {
    origin = "http://localhost:4321", ["access-control-request-method"] = "POST",
    ["access-control-request-headers"] = "content-type" }))
  eq(st, 204)
  eq(h["Access-Control-Allow-Origin"], "http://localhost:4321")
  eq(h["Access-Control-Allow-Headers"], "content-type")
  eq(h["Access-Control-Max-Age"], "600")
end)

test("cors: a disallowed origin gets no CORS headers", function()
  local p, conf = policy("cors", { origins = { "http://localhost:4321" } })
  local st, _, h = p.access(conf, fake_req("OPTIONS", {
    origin = "http://evil.example", ["access-control-request-method"] = "POST" }))
  eq(st, 204)
  eq(h["Access-Control-Allow-Origin"], nil)
  local res = { status = 200, headers = {} }
  p.response(conf, fake_req("GET", { origin = "http://evil.example" }), res)
  eq(res.headers["Access-Control-Allow-Origin"], nil)
end)

test("cors: bad settings are refused at load", function()
  raises(function() policy("cors", { origins = { "localhost" } }) end, "origins[1]")
end)

test("admin-key: plain or Bearer, wrong or missing refused", function()
  local p, conf = policy("admin-key", { env = "MOONGATE_TEST_ADMIN_KEY_UNSET" })
  conf.key = "s3cret"                       -- as if the variable held it
  eq(p.access(conf, fake_req("GET", { authorization = "s3cret" })), nil)
  eq(p.access(conf, fake_req("GET", { authorization = "Bearer s3cret" })), nil)
  eq(p.access(conf, fake_req("GET", { authorization = "Bearer s3cre" })), 401)
  eq(p.access(conf, fake_req("GET", { authorization = "s3cret!" })), 401)
  eq(p.access(conf, fake_req("GET", {})), 401)
  conf.key = ""                             -- unset variable: nothing gets in
  eq(p.access(conf, fake_req("GET", { authorization = "" })), 401)
end)

local function ipreq(addr, xff)
  local r = fake_req("GET", { ["x-forwarded-for"] = xff })
  r.remote_addr = addr
  return r
end

test("ip-restriction: IPv4 and IPv6 CIDRs, deny before allow", function()
  local p, conf = policy("ip-restriction", { allow = { "10.0.0.0/8", "2001:db8::/32", "127.0.0.1" },
                                             deny = { "10.1.0.0/16" } })
  eq(p.access(conf, ipreq("10.2.3.4")), nil)
  eq(p.access(conf, ipreq("10.1.3.4")), 403)
  eq(p.access(conf, ipreq("11.0.0.1")), 403)
  eq(p.access(conf, ipreq("127.0.0.1")), nil)
  eq(p.access(conf, ipreq("127.0.0.2")), 403)
  eq(p.access(conf, ipreq("2001:db8:0:1::5")), nil)
  eq(p.access(conf, ipreq("2001:db9::5")), 403)
  eq(p.access(conf, ipreq("::ffff:10.2.3.4")), nil)      -- v4-mapped is the v4 address
  eq(p.access(conf, ipreq("not-an-ip")), 403)
end)

test("ip-restriction: X-Forwarded-For only from trusted proxies", function()
  local p, conf = policy("ip-restriction", { allow = { "192.0.2.0/24" }, trusted_proxies = { "127.0.0.1", "10.0.0.0/8" } })
  eq(p.access(conf, ipreq("127.0.0.1", "192.0.2.7")), nil)
  eq(p.access(conf, ipreq("127.0.0.1", "192.0.2.7, 10.0.0.5")), nil)   -- skips trusted hops
  eq(p.access(conf, ipreq("127.0.0.1", "203.0.113.9")), 403)
  eq(p.access(conf, ipreq("198.51.100.1", "192.0.2.7")), 403)          -- untrusted peer: header ignored
end)

test("ip-restriction: bad settings name the entry", function()
  raises(function() policy("ip-restriction", { allow = { "10.0.0.0/33" } }) end, "allow[1]")
  raises(function() policy("ip-restriction", { deny = { "1.2.3" } }) end, "deny[1]")
  raises(function() policy("ip-restriction", {}) end, "give allow, deny or both")
end)

local function body_req(body)
  local r = fake_req("POST")
  local cjson = require "cjson.safe"
  r.body = function() return body end
  r.json = function() return cjson.decode(body) end
  return r
end

test("request-validation: required fields, types and bounds name the field", function()
  local p, conf = policy("request-validation", { required = { "model" },
    fields = { model = { type = "string", min_len = 1, max_len = 8 },
               temperature = { type = "number", min = 0, max = 2 }, messages = { type = "array" } } })
  eq(p.access(conf, body_req('{"model":"gpt","messages":[]}')), nil)
  eq({ p.access(conf, body_req('{"messages":[]}')) }, { 400, "field model is required" })
  eq({ p.access(conf, body_req('{"model":7}')) }, { 400, "field model must be a string" })
  eq({ p.access(conf, body_req('{"model":"averylongname"}')) }, { 400, "field model must have at most 8 characters" })
  eq({ p.access(conf, body_req('{"model":"m","temperature":3}')) }, { 400, "field temperature must be at most 2" })
  eq({ p.access(conf, body_req('not json')) }, { 400, "request body must be a JSON object" })
  eq({ p.access(conf, body_req('[1,2]')) }, { 400, "request body must be a JSON object" })
end)

test("request-validation: size limit and bad settings", function()
  local p, conf = policy("request-validation", { max_body = "10" })
  eq(p.access(conf, body_req("0123456789")), nil)
  eq({ p.access(conf, body_req("0123456789A")) }, { 413, "request body too large" })
  raises(function() policy("request-validation", { fields = { x = { type = "date" } } }) end, "fields.x.type")
end)

test("errors: template shape and replaced upstream errors", function()
  local p, conf = policy("errors", { shape = "template", upstream = "replace",
    template = { ok = false, error = { text = "$message", code = "$status", note = "status $status" } } })
  local res = { status = 502, headers = { ["Content-Type"] = "text/html" }, body = "<html>oops</html>", raw = true }
  p.response(conf, fake_req("GET"), res)
  eq(res.body, { ok = false, error = { text = "bad gateway", code = 502, note = "status 502" } })
  eq(res.headers["Content-Type"], nil)
  raises(function() policy("errors", { shape = "template" }) end, "template: required")
end)

test("errors: upstream error bodies pass by default", function()
  local p, conf = policy("errors")
  local res = { status = 422, headers = {}, body = '{"detail":"bad image"}', raw = true }
  p.response(conf, fake_req("GET"), res)
  eq(res.body, '{"detail":"bad image"}')
end)

test("jwt: HS256 tokens, every failure says which", function()
  local jwt = require "moongate.jwt"
  local p = testing.policy("jwt", { secret = "k3y", issuers = { "auth" }, audiences = { "api" }, leeway = "10s",
                                    claims_to_headers = { sub = "X-User-Id" } })
  local now = os.time()
  local last_req
  local function run(token)
    last_req = testing.request{ headers = { Authorization = token and ("Bearer " .. token) or nil } }
    local res = p:run(last_req)
    return res.status, res.error
  end
  local good = jwt.sign("k3y", { sub = "u1", iss = "auth", aud = "api", exp = now + 60 })
  eq(run(good), 200)
  local req = last_req
  eq(req.ctx.jwt.sub, "u1")
  eq(req.upstream_headers["X-User-Id"], "u1")
  eq({ run(nil) }, { 401, "missing token" })
  eq({ run("abc") }, { 401, "malformed token" })
  eq({ run(jwt.sign("other", { sub = "u1", iss = "auth", aud = "api" })) }, { 401, "bad signature" })
  eq({ run(good:sub(1, -3) .. "AA") }, { 401, "bad signature" })
  eq({ run(jwt.sign("k3y", { iss = "auth", aud = "api", exp = now - 60 })) }, { 401, "token expired" })
  eq(run(jwt.sign("k3y", { iss = "auth", aud = "api", exp = now - 5 })), 200)      -- within leeway
  eq({ run(jwt.sign("k3y", { iss = "auth", aud = "api", nbf = now + 60 })) }, { 401, "token not yet valid" })
  eq({ run(jwt.sign("k3y", { iss = "evil", aud = "api" })) }, { 401, "issuer not allowed" })
  eq(run(jwt.sign("k3y", { iss = "auth", aud = { "x", "api" } })), 200)     -- aud may be a list
  eq({ run(jwt.sign("k3y", { iss = "auth", aud = "web" })) }, { 401, "audience not allowed" })
  raises(function() testing.policy("jwt", { secret = "k", algorithms = { "ES256" } }) end,
         'algorithms[1]: "ES256" is not supported')
  raises(function() testing.policy("jwt", { secret_env = "MOONGATE_NO_SUCH_VAR" }) end, "is not set")
end)

-- RS256 fixtures, made with the openssl CLI (see tests/lua/test_rsa.lua):
-- JWT_PUB is `openssl rsa -pubout` of a 2048-bit key (k2048 there), the
-- 1024-bit key below is k1024 there; the
-- tokens are header.payload signed with `openssl dgst -sha256 -sign` by
-- that key, or by a second one ("other", modulus other_n) where named.
-- Claims { sub = "u1", iss = "auth", aud = "api", exp = 4102444800 }
-- (rs_expired: exp = 1000000000; rs_kid2: sub = "u2", by the other key);
-- headers { alg = "RS256", typ = "JWT" } or { alg = "RS256", kid = ... };
-- rs_as_hs is RSA-signed but its header claims HS256.
local JWT_PUB = [[
-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAt7bmAUQElGPXCq6tDpir
nMN5p8aymUVQvYngPY4GN/UoOOpUi4USgrgvaOqff001Xrs+SWIuKse4jEzjjfuF
iBFdDKxztmnUXe8rft9grDxkObTBzTyLR6BTP+N6EZkwvgBsqzsFO4b16tgEB3ZN
fmDTLppk3L4uNxx0Lhg0bVxVFYgm48s3pLD0GzhC+Va5a0SCeiAr/l9Y/gL6zs91
qxkvjMx8bRlqpRuOBWFLrNzSlo64w3rC8Itt3pKQrjAJAd2w8yqJrBmK+j5fXZmE
IHwYih4mrpntYz137cdW8ReIci619kDGui7p81S5S8kJmkJa9Pi1vQWbyV55juM0
+QIDAQAB
-----END PUBLIC KEY-----
]]
local RS = {
  rs_good = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1MSIsImlzcyI6ImF1dGgiLCJhdWQiOiJhcGkiLCJleHAiOjQxMDI0NDQ4MDB9.Itx7LTBGytsLf2dKx1yjws3cRFRMgVIoJJvjZX46Ky9S8ffB2OQW9r9ijFCMMctkmRdrkBF6G-w-DKcBEBRsZrwDiHN9ReFs_QJBTz6BNFagcgxBLzy0TAKwqua1RrMG-x5lVTELxWND7GOxldIPWHGv59puiu4YE2VVP7TBl34qN3blwIhzp8ncdGBm6QUqcZasQHeSsmmnCre-hISpiU7OlkM0RPKEeOS9JNbgb6KMrEySMPC1mJ0tF1hY2hUXl2-KZ6GaR43QjieJbne9HrDIjk99tpanX6I78pm2ZL6QuDPh03Y-mAOzT25n0HQrKVDRZ_WIp35fHDoNF8axvA",
  rs_expired = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1MSIsImlzcyI6ImF1dGgiLCJhdWQiOiJhcGkiLCJleHAiOjEwMDAwMDAwMDB9.TdBrYsz0P1Kym1-FHiMAMqXMvEmAx535ubEHXlgDN18v2FBrhXVkNmdRFz_MuYJWsIeBHl5phjGcepYP5AtEqZzABTLW2sbjO6-cq8vn8dCU9n5Y7LqEf_PoDBa9VR_N4XFON1a3NnZ0fdh40-rcBNli22mgL1cuWtu4BBUM0-l7Dc16zFaGjtPOyJ6FzQ1R0PBqQ1YGa6aupsN4jWkKhPm_HfEl1awykutgCDZFU9siJfFhHH9ROwqtLD5lyGPUVxq3JrA6sSAJhIrTO-2ecyyTs-8aKiobJUyCpomOcb-0ZShkqJSdiqBS4W7mGp2kgL1uBaP0KqAk-YyDy42OLQ",
  rs_other_key = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1MSIsImlzcyI6ImF1dGgiLCJhdWQiOiJhcGkiLCJleHAiOjQxMDI0NDQ4MDB9.NnyqOFW6XyoN5Saq2Yvv8yGeALdB1ZVduyH_A3M3AZdzc1z9uUWTDlMuZHBGrMjH5qAqfPHH7fdFH3afcJpelzL5uHSGc-I6b-Ne9bmKI49FMO9T6Ma-eOnfJn8DG7T1ZpTq94NLKwKHIXd8WMkTATZWDLGf0fmWNM-sUd3uGdUAO90it1yHSy7Yf7Fc2ZUSusgcvFm0aH1LzPwoi0eE2d3FYU0-hnhqx7HcOunuGke-HH2dJORVAiHjD17N7TXOli0vf16M6-VmZNxGOs1q5Antj4zJJsg04UqLTswYRqX0mWnPyYEurizESA2V6qzgJ3P-TzRzPopikxNh0w-PmQ",
  rs_kid1 = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJ1MSIsImlzcyI6ImF1dGgiLCJhdWQiOiJhcGkiLCJleHAiOjQxMDI0NDQ4MDB9.aD5eBlcUyqZyQDOpl9R_6g5qRhRx6CYzc3OMyWbQ8Hop4WwMc9VBE0TqPWe5_n39R6am9yBF_FxTPYcwVLfhN4GzLaxJdG6DNXt5FIKcNnPFY7paRJEMnLmx8OPOgxxTChtAu-V5F7MYrovNYWF-vDv-zwCg6YFXXHODqz93P8P7m3bUxf8ofYA4FX6S4dWihRyThu9MDJVtY4UEdHty3ojcpc90I-Cj6Fd8hdQJF7aQi7DiybvluktRUdWQ6AR9d0Yn--1cbOxZDK_kRTVhRRmJVufBy7wgLMi2zhTtApWiV4KbxqpSWM8yIkDEgbiJI4V_Oq2L2ErG6EOGh1Dzxw",
  rs_kid2 = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsyIn0.eyJzdWIiOiJ1MiIsImlzcyI6ImF1dGgiLCJhdWQiOiJhcGkiLCJleHAiOjQxMDI0NDQ4MDB9.IOyVcEbjJUelbZDrGzzl_hyMSfY35DCuz52i9SXU4Kzt9W8w8UKUgF8QX6ExPJdvUFK_IHwnvkxk0nFLFP2txn18hXZie94_Ve0OvIwD_qM-ZReyG3FNVUOTVhha-6tChboqchfTBVGFxcniMwWvl5vp10pcJKcS8jxCfQHSvEqWqVMcFc8pciSnYY_nDo5Z175MKrQEYpggeEqyWObua2pkFIB3vQplqR0kBRLcqhWYVL5ldPUnp1Ru0aJ0QLIZHUs_Qr4PYLbV10oBYaU1FIeAYj0Kgw94QV6VipoQ15fhYUWx2j0LRz1b0KlFU5IGhDF4Zy-R_9UuVex73oWolA",
  rs_kid9 = "eyJhbGciOiJSUzI1NiIsImtpZCI6Ims5In0.eyJzdWIiOiJ1MSIsImlzcyI6ImF1dGgiLCJhdWQiOiJhcGkiLCJleHAiOjQxMDI0NDQ4MDB9.WkKtvrfZ3DgvdQ2OXVSP5-4okYT5llx3-HejCJOsO_v1ES3dGhErASoh02hkCVFIiJJ7PBN5LCfLDqdvDHzh0OJyvORTupLUSwOk-w7dWpYrw2LWRmex5AFb41_-D0J4dDcN9IH6L0f24GUJp9v1Ony5kNBXNYD5UvGw7Q2MxYo8dkQ5fh3a-lQScTRfeKe_C_iTwH8lUMHBDyUOnRJOafVxH13JdxWLb4-j4Afw5w6CXKs1lAwXIQNEI6NWBhRP4eO5-g4cPacXoN4pAY7nsn0K739x-vGRI6WBkUxgyBmOZrqKtCLeqodX_xbkp2NG2Y5_ddNfJQLBqof6vMUF2A",
  rs_as_hs = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1MSIsImlzcyI6ImF1dGgiLCJhdWQiOiJhcGkiLCJleHAiOjQxMDI0NDQ4MDB9.WGcY_NjeM-oKMN7Sq9xhY4tDe8q8xCsd_xxx7NtV5S4lHxkhqdY8s8m7Xs_LR8HspSt4cxJp3oS5-5-d6AjzX-4RXeUrlBYiaT61qyrKWlRYQRxCfc9ac7uzV_K5AmHrkf6qyYlw97RdeqGqZis34tZRvnAZfRouRbX8LEEmfjD9OrsYaLsLij_DFEQHgvLlppefdhnbbrc4iYA7XDdBOjMtWuyQiUFyMN8Kyzu-YwlsM8OdsMvnfPnKoUkbW1oQQ9yyBsOsC85xYEbj_-viqzAZUzehBppkwU917lTUG-nOrNAxgoAu1wjKeX0wtY0BISaGYPjTtpd-DGtTvWokYw",
  other_n = "lVWBkkkHBLHuAvltjA2qojqdrJtvGhfPnPnxKKY35QXIVszN8p8OmPI1nBV99IQkJWUtWD1uev0c4P22AWXULGxcYrr3cjhyBbn_2sDDE3zCeimwkytH1JEYW20QeZAjX4Xiq1kmOkSBcio_wd61h2r4p2TPKWLN6maZU3fulX4h6AOHQH_aA7i0Lpm_ZKE8I3pzDD-4xRbw2DkZjfm5Cc7UDGVBvM_sVlquCE-mP3UbE17n5iE-Xkase0EhUCyx_TS-yRJBdradZLyure3QptRPqmapLqbe6AF0D-g--1XNgWiaDOEbrS-Es3jjMEKD2Ep_WrvWOnI1vcT4VrXyEQ",
}

test("jwt: RS256 with a public key, every failure says which", function()
  local p = testing.policy("jwt", { public_key = JWT_PUB, issuers = { "auth" }, audiences = { "api" },
                                    claims_to_headers = { sub = "X-User-Id" } })
  eq(p.conf.algorithms, { "RS256" })                      -- the default with an RSA key
  local last_req
  local function run(token)
    last_req = testing.request{ headers = { Authorization = "Bearer " .. token } }
    local res = p:run(last_req)
    return res.status, res.error
  end
  eq(run(RS.rs_good), 200)
  eq(last_req.ctx.jwt.sub, "u1")
  eq(last_req.ctx.consumer, "u1")
  eq(last_req.upstream_headers["X-User-Id"], "u1")
  eq(run(RS.rs_kid1), 200)                                -- a kid means nothing with one key
  eq({ run(RS.rs_expired) }, { 401, "token expired" })
  eq({ run(RS.rs_other_key) }, { 401, "bad signature" })
  eq({ run(RS.rs_good:sub(1, -3) .. (RS.rs_good:sub(-2, -2) == "A" and "B" or "A") .. RS.rs_good:sub(-1)) },
     { 401, "bad signature" })
  eq({ run(RS.rs_good:sub(1, -5)) }, { 401, "bad signature" })           -- truncated signature
  local h, rest = RS.rs_good:match("^([^.]+)(%..*)$")
  eq({ run(h .. "X" .. rest) }, { 401, "malformed token" })
  -- alg confusion: HS256 tokens are refused outright (not in algorithms),
  -- also one whose HMAC key is the public key's PEM text
  local jwt = require "moongate.jwt"
  local claims = { sub = "admin", iss = "auth", aud = "api" }
  eq({ run(jwt.sign(JWT_PUB, claims)) }, { 401, "unsupported algorithm" })
  eq({ run(RS.rs_as_hs) }, { 401, "unsupported algorithm" })
  eq({ run(jwt.sign("", claims, { alg = "none" })) }, { 401, "unsupported algorithm" })
  eq({ run(jwt.sign("", claims, { alg = "RS512" })) }, { 401, "unsupported algorithm" })
end)

test("jwt: HS256 and RS256 together, each with its own key only", function()
  local jwt = require "moongate.jwt"
  local p = testing.policy("jwt", { secret = "k3y", public_key = JWT_PUB, algorithms = { "HS256", "RS256" } })
  local function run(token)
    local res = p:run(testing.request{ headers = { Authorization = "Bearer " .. token } })
    return res.status, res.error
  end
  eq(run(RS.rs_good), 200)
  eq(run(jwt.sign("k3y", { sub = "u1" })), 200)
  eq({ run(jwt.sign(JWT_PUB, { sub = "admin" })) }, { 401, "bad signature" })   -- the PEM is no HMAC key
  local der = require("moongate.rsa").base64_decode(JWT_PUB:match("%-\n(.-)%-%-%-%-%-END"))
  eq({ run(jwt.sign(der, { sub = "admin" })) }, { 401, "bad signature" })
  eq({ run(RS.rs_as_hs) }, { 401, "bad signature" })
end)

test("jwt: jwks picks the key by kid", function()
  local jwk1 = { kid = "k1", kty = "RSA", n = require("moongate.jwt").b64url_encode(
                   require("moongate.rsa").parse_pem(JWT_PUB).n), e = "AQAB", alg = "RS256", use = "sig" }
  local jwk2 = { kid = "k2", kty = "RSA", n = RS.other_n, e = "AQAB" }
  local p = testing.policy("jwt", { jwks = { jwk1, jwk2 } })
  local last_req
  local function run(token)
    last_req = testing.request{ headers = { Authorization = "Bearer " .. token } }
    local res = p:run(last_req)
    return res.status, res.error
  end
  eq(run(RS.rs_kid1), 200)
  eq(run(RS.rs_kid2), 200)
  eq(last_req.ctx.jwt.sub, "u2")
  eq({ run(RS.rs_kid9) }, { 401, "unknown key id" })
  eq({ run(RS.rs_good) }, { 401, "unknown key id" })      -- no kid, several keys
  -- a JWK Set of one key also takes tokens without a kid
  local one = testing.policy("jwt", { jwks = { keys = { jwk1 } } })
  eq(one:run(testing.request{ headers = { Authorization = "Bearer " .. RS.rs_good } }).status, 200)
  eq(one:run(testing.request{ headers = { Authorization = "Bearer " .. RS.rs_kid2 } }).error, "unknown key id")
  -- a token signed by k1 but naming k2 fails on the signature
  local h = require("moongate.jwt").b64url_encode('{"alg":"RS256","kid":"k2"}')
  eq({ run(h .. RS.rs_kid1:match("^[^.]+(%..*)$")) }, { 401, "bad signature" })
end)

test("jwt: misconfiguration is a load error naming the field", function()
  local jwk1 = { kid = "k1", kty = "RSA", n = RS.other_n, e = "AQAB" }
  local function err(settings) return raises(function() testing.policy("jwt", settings) end) end
  local function has(e, want) if not e:find(want, 1, true) then error(string.format("%q lacks %q", e, want), 2) end end
  has(err({ algorithms = { "RS256" } }), "public_key, public_key_file or jwks: required for RS256")
  has(err({}), "secret: required for HS256")
  has(err({ secret = "k", algorithms = { "RS256" }, public_key = JWT_PUB }),
      "secret: an HMAC secret is given but algorithms does not allow HS256")
  has(err({ public_key = JWT_PUB, algorithms = { "HS256" }, secret = "k" }),
      "public_key: an RSA key is given but algorithms does not allow RS256")
  has(err({ secret = "k", public_key = JWT_PUB }), "algorithms: required when both a secret and an RSA key")
  has(err({ public_key = JWT_PUB, jwks = { jwk1 } }), "public_key, jwks: give only one of them")
  has(err({ public_key = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----" }), "public_key: ")
  has(err({ public_key = "not a key" }), "public_key: not a PEM block")
  has(err({ public_key = [[
-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQCZk/DdsYH04QSnlDiVZSCzJK5G
DCpxygdX+ZwxT76n+mV4ayrEDfyK5onUd9LiDC2SMJCuqMhS4esBATxX4eB7ne0O
lgswi9tCKwVRwfYs/UPtwXK9btoSm36FawTEk2hds9YZXZ/tzrSdPonHmb2OnHX2
6Haj0XPMVj5Aod2OCQIDAQAB
-----END PUBLIC KEY-----
]] }), "public_key: RSA key of 1024 bits is too small (at least 2048)")
  has(err({ public_key_file = "/nonexistent/key.pem" }), "public_key_file: cannot read /nonexistent/key.pem")
  has(err({ jwks = {} }), "jwks: expected a list of JWKs")
  has(err({ jwks = { { kty = "EC", kid = "x" } } }), 'jwks[1]: kty: expected "RSA"')
  has(err({ jwks = { jwk1, { kty = "RSA", n = RS.other_n, e = "AQAB" } } }), "jwks[2]: kid: required when there are several keys")
  has(err({ jwks = { jwk1, jwk1 } }), 'jwks[2]: kid "k1" appears twice')
  has(err({ jwks = { { kid = "p", kty = "RSA", n = RS.other_n, e = "AQAB", d = "AQAB" } } }), "jwks[1]: this JWK holds a private key")
  -- a key file, read at load time
  local path = os.tmpname()
  local f = assert(io.open(path, "w")); f:write(JWT_PUB); f:close()
  local p = testing.policy("jwt", { public_key_file = path })
  eq(p:run(testing.request{ headers = { Authorization = "Bearer " .. RS.rs_good } }).status, 200)
  f = assert(io.open(path, "w")); f:write("garbage"); f:close()
  has(err({ public_key_file = path }), "public_key_file: " .. path .. ": not a PEM block")
  os.remove(path)
end)

test("jwt: verified tokens are cached per policy until they expire", function()
  local jwt = require "moongate.jwt"
  local p = testing.policy("jwt", { public_key = JWT_PUB, cache_size = 2 })
  local conf = p.conf
  local now = os.time()
  assert(jwt.verify(conf, RS.rs_good, now))
  eq(conf.cache.hits, 0)
  local c1 = assert(jwt.verify(conf, RS.rs_good, now))
  eq(conf.cache.hits, 1)
  c1.sub = "changed"                                     -- each hit gets its own claims table
  eq(jwt.verify(conf, RS.rs_good, now).sub, "u1")
  -- claims are still checked on a hit: past exp the cached token fails
  eq({ jwt.verify(conf, RS.rs_good, 4102444801) }, { nil, "token expired" })
  eq({ jwt.verify(conf, RS.rs_good, 4102444801) }, { nil, "token expired" })
  -- failures are not cached
  eq({ jwt.verify(conf, RS.rs_other_key, now) }, { nil, "bad signature" })
  eq({ jwt.verify(conf, RS.rs_other_key, now) }, { nil, "bad signature" })
  -- bounded: two generations of cache_size entries
  local hs = testing.policy("jwt", { secret = "k", cache_size = 2 }).conf
  for i = 1, 10 do assert(jwt.verify(hs, jwt.sign("k", { n = i }), now)) end
  local count = 0
  for _ in pairs(hs.cache.cur) do count = count + 1 end
  for _ in pairs(hs.cache.old) do count = count + 1 end
  eq(count, 4)
  -- cache_size = 0: no cache
  eq(testing.policy("jwt", { secret = "k", cache_size = 0 }).conf.cache, nil)
end)
