-- The policy test harness itself (lua/moongate/testing.lua), exercised the
-- way an operator would: fake requests, stock policies, a Redis stub.

test("key-auth with static keys, through the harness", function()
  local p = testing.policy("key-auth", { keys = { ["k-1"] = "alice" } })
  local res = p:run(testing.request{ headers = { Authorization = "Bearer nope" } })
  eq(res.status, 401)
  eq(res.error, "invalid API key")
  local req = testing.request{ headers = { Authorization = "Bearer k-1" } }
  res = p:run(req)
  eq(res.status, 200)
  eq(req.ctx.consumer, "alice")
  eq(req.upstream_headers["X-Consumer"], "alice")
  eq(req.upstream_headers["Authorization"], false)          -- not forwarded
end)

test("key-auth against a stubbed Redis, cache included", function()
  local redis = testing.stub("moongate.redis", testing.fake_redis())
  redis.data["apikey:r1"] = "carol"
  local p = testing.policy("key-auth", { redis_key = "apikey:%s", dict = "harness_cache" })
  eq(p:run(testing.request{ headers = { Authorization = "Bearer r1" } }).status, 200)
  redis.down = true                                          -- cached: still fine
  eq(p:run(testing.request{ headers = { Authorization = "Bearer r1" } }).status, 200)
  eq(p:run(testing.request{ headers = { Authorization = "Bearer r2" } }).status, 503)
end)

test("errors shapes a rejection like the server would", function()
  local auth = testing.policy("key-auth", { keys = { "k" } })
  local errors = testing.policy("errors", { shape = "openai" })
  local req = testing.request{}
  local res = errors:response(req, auth:run(req))
  eq(res.body, { error = { message = "missing API key", type = "invalid_request_error", code = 401 } })
end)

test("request-rewrite, seen through the fake request", function()
  local p = testing.policy("request-rewrite", { path = { "^/v1(/.*)$", "%1" },
    headers = { set = { ["X-A"] = "1" }, remove = { "Cookie" } }, json = { set = { stream = false } } })
  local req = testing.request{ method = "POST", path = "/v1/chat", headers = { Cookie = "x" },
                               body = '{"model":"m"}' }
  p:run(req)
  eq(req.path, "/chat")
  eq(req.headers["x-a"], "1")
  eq(req.headers["cookie"], nil)
  eq(req:json(), { model = "m", stream = false })
end)

test("rate-limit (local store) counts per key", function()
  local p = testing.policy("rate-limit", { limit = 2, window = "1m", dict = "harness_rl" })
  local function hit(ip) return p:run(testing.request{ remote_addr = ip }).status end
  eq({ hit("10.0.0.1"), hit("10.0.0.1"), hit("10.0.0.1"), hit("10.0.0.2") }, { 200, 200, 429, 200 })
  -- What later policies see: requests left in the window, seconds until it resets.
  local req = testing.request{ remote_addr = "10.0.0.3" }
  eq(p:run(req).status, 200)
  eq(req.ctx.rate_limit_remaining, 1)
  assert(req.ctx.rate_limit_reset >= 1 and req.ctx.rate_limit_reset <= 60, req.ctx.rate_limit_reset)
end)

test("rate-limit's fixed window starts over, and its key names stay right past 10000 keys", function()
  local core = require "moongate.core"
  local p = testing.policy("rate-limit", { limit = 2, window = "200ms", dict = "harness_rl2" })
  local function hit(ip) return p:run(testing.request{ remote_addr = ip }).status end
  -- start just after a window began, so three hits fall into one window
  while math.floor(core.now() * 1000) % 200 > 50 do end
  eq({ hit("a"), hit("a"), hit("a") }, { 200, 200, 429 })
  local t = math.floor(core.now() * 1000)
  while math.floor(core.now() * 1000) - (t - t % 200) < 200 do end   -- the next window
  eq({ hit("a"), hit("a"), hit("a") }, { 200, 200, 429 })
  -- more distinct keys in one window than the names remembered for it
  local q = testing.policy("rate-limit", { limit = 2, window = "1h", dict = "harness_rl3" })
  local function qhit(ip) return q:run(testing.request{ remote_addr = ip }).status end
  eq({ qhit("first"), qhit("first") }, { 200, 200 })
  for i = 1, 10001 do qhit("ip" .. i) end
  eq(qhit("first"), 429)
  eq(qhit("ip10001"), 200)
end)

test("key-auth against a stubbed PostgreSQL", function()
  local pg = testing.stub("moongate.postgres", testing.fake_postgres(function(sql, params)
    if params[1] == "pk-1" then return { { consumer = "erin" } } end
    return {}
  end))
  local p = testing.policy("key-auth", { pg_query = "SELECT name AS consumer FROM keys WHERE key = $1",
                                         dict = "harness_pg" })
  local req = testing.request{ headers = { Authorization = "Bearer pk-1" } }
  eq(p:run(req).status, 200)
  eq(req.ctx.consumer, "erin")
  eq(pg.queries[1].params, { "pk-1" })                     -- the key went as a parameter
  eq(p:run(testing.request{ headers = { Authorization = "Bearer pk-9" } }).status, 401)
  pg.down = true
  eq(p:run(testing.request{ headers = { Authorization = "Bearer pk-8" } }).status, 503)
end)
