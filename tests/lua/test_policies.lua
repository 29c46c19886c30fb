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
  raises(function() testing.policy("jwt", { secret = "k", algorithms = { "RS256" } }) end, "not supported")
  raises(function() testing.policy("jwt", { secret_env = "MOONGATE_NO_SUCH_VAR" }) end, "is not set")
end)
