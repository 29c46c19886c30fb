-- rate-limit: at most `limit` requests per `window` for each key.
--
--   { "rate-limit", limit = 60, window = "1m" }                      -- per client IP
--   { "rate-limit", limit = 10, window = "1s", by = "header", header = "X-Api-Key" }
--   { "rate-limit", limit = 1000, window = "1h", by = "consumer", store = "redis" }
--
-- Settings:
--   limit        requests allowed per window (required)
--   window       "1m" (a duration)
--   algorithm    "fixed" (counter per window, the lua-resty-limit-count scheme),
--                "sliding" (weights the previous window: no burst at the edge),
--                "token-bucket" (limit tokens, refilled evenly over the window)
--   by           "ip" | "consumer" (req.ctx.consumer, set by an auth policy) |
--                "header" (the `header` setting) | "route" | "function" (`key`)
--   header, key  for by = "header" / by = "function" (key(req) -> string)
--   store        "local": a shared dictionary (`dict`, created if the config
--                does not declare it; counts are per machine) | "redis": the
--                config's redis, atomic server-side scripts, one limit for
--                every gateway sharing that Redis
--   fault_tolerant  with store = "redis" and Redis unreachable: true = let
--                traffic through under a local limit of the same size, false = 503
--   headers      add RateLimit-Limit / -Remaining / -Reset (true)
-- Over the limit: 429 "too many requests" with Retry-After, shaped by `errors`.
-- For later policies: req.ctx.rate_limit_remaining (requests left in the
-- window) and req.ctx.rate_limit_reset (seconds until it resets).
local core = require "moongate.core"
local redis = require "moongate.redis"

local FIXED = redis.script([[
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return { n, redis.call('PTTL', KEYS[1]) }
]])

local SLIDING = redis.script([[
local window = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local cur_start = now - (now % window)
local cur = KEYS[1] .. ':' .. cur_start
local prev = KEYS[1] .. ':' .. (cur_start - window)
local p = tonumber(redis.call('GET', prev) or '0')
local c = tonumber(redis.call('GET', cur) or '0')
local weight = (window - (now - cur_start)) / window
local used = math.floor(p * weight) + c
if used >= limit then return { used + 1, window - (now - cur_start) } end
c = redis.call('INCR', cur)
if c == 1 then redis.call('PEXPIRE', cur, window * 2) end
return { math.floor(p * weight) + c, window - (now - cur_start) }
]])

-- GCRA: one "theoretical arrival time" per key.
local BUCKET = redis.script([[
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2]) * interval
local now = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
if new_tat - now > burst then return { -1, new_tat - now - burst } end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(burst) + 1000)
return { math.floor((burst - (new_tat - now)) / interval), new_tat - now }
]])

local function key_of(conf, req)
  local b = conf.by
  if b == "ip" then return req.remote_addr end
  if b == "consumer" then return req.ctx.consumer and tostring(req.ctx.consumer) or req.remote_addr end
  if b == "header" then return req.headers[conf.header] or "" end
  if b == "route" then return req.route end
  return tostring(conf.key(req))
end

local function now_ms() return math.floor(core.now() * 1000) end

-- The counter's name for key `id` in the fixed window starting at `start`:
-- remembered for the window (up to 10000 keys), so that a request does not
-- format the window's start and join three strings each time.
local function window_key(conf, id, start)
  local names = conf.window_names
  if conf.window_start ~= start or conf.window_count >= 10000 then
    names = {}
    conf.window_names, conf.window_start, conf.window_count = names, start, 0
  end
  local k = names[id]
  if not k then
    k = conf.prefix .. id .. ":" .. start
    names[id] = k
    conf.window_count = conf.window_count + 1
  end
  return k
end

-- Local algorithms: return used (after this request) and ms until reset.
local function local_check(conf, id, now)
  local d, w = conf.shared, conf.window
  if conf.algorithm == "fixed" then
    local start = now - now % w
    local n = d:incr(window_key(conf, id, start), 1, 0, w / 1000)
    return n, start + w - now
  end
  local k = conf.prefix .. id
  if conf.algorithm == "sliding" then
    local start = now - now % w
    local p = d:get(k .. ":" .. (start - w)) or 0
    local weight = (w - (now - start)) / w
    local c = d:get(k .. ":" .. start) or 0
    if math.floor(p * weight) + c >= conf.limit then
      return math.floor(p * weight) + c + 1, start + w - now
    end
    c = d:incr(k .. ":" .. start, 1, 0, 2 * w / 1000)
    return math.floor(p * weight) + c, start + w - now
  end
  local interval, burst = w / conf.limit, w          -- token bucket (GCRA), with cas
  for _ = 1, 8 do
    local tat = d:get(k)
    local base = (tat and tat > now) and tat or now
    local new_tat = base + interval
    if new_tat - now > burst then return conf.limit + 1, new_tat - now - burst end
    if d:cas(k, tat, new_tat, (burst + 1000) / 1000) then
      return conf.limit - math.floor((burst - (new_tat - now)) / interval), new_tat - now
    end
  end
  return conf.limit + 1, interval                    -- heavy contention: refuse
end

local function redis_check(conf, id, now)
  local w, k = conf.window, conf.prefix .. id
  local r, err
  if conf.algorithm == "fixed" then
    r, err = FIXED:run({ window_key(conf, id, now - now % w) }, { w })
  elseif conf.algorithm == "sliding" then
    r, err = SLIDING:run({ k }, { w, now, conf.limit })
  else
    r, err = BUCKET:run({ k }, { w / conf.limit, conf.limit, now })
    if r then
      if r[1] < 0 then return conf.limit + 1, r[2] end
      return conf.limit - r[1], r[2]
    end
  end
  if not r then return nil, err end
  return r[1], r[2]
end

return {
  schema = {
    limit = { type = "integer", required = true, min = 1 },
    window = { type = "duration", default = "1m", min = 1 },
    algorithm = { type = "string", default = "fixed", one_of = { "fixed", "sliding", "token-bucket" } },
    by = { type = "string", default = "ip", one_of = { "ip", "consumer", "header", "route", "function" } },
    header = { type = "string" },
    key = { type = "function" },
    store = { type = "string", default = "local", one_of = { "local", "redis" } },
    dict = { type = "string", default = "rate_limit" },
    fault_tolerant = { type = "boolean", default = true },
    headers = { type = "boolean", default = true },
  },

  init = function(conf)
    if conf.by == "header" and not conf.header then error("header: required when by = \"header\"", 0) end
    if conf.by == "function" and not conf.key then error("key: required when by = \"function\"", 0) end
    conf.shared = core.shdict(conf.dict, 4 * 1024 * 1024)
    conf.prefix = "rl:" .. conf.algorithm .. ":" .. conf.limit .. ":" .. conf.window .. ":"
    conf.window_names, conf.window_start, conf.window_count = {}, -1, 0   -- window_key()
  end,

  access = function(conf, req)
    local id = key_of(conf, req)
    local now = now_ms()
    local used, reset_ms
    if conf.store == "redis" then
      local err
      used, reset_ms = redis_check(conf, id, now)
      if not used then
        err = reset_ms
        if not conf.fault_tolerant then return 503, "rate limiting unavailable" end
        req.ctx.rate_limit_degraded = err
        used, reset_ms = local_check(conf, id, now)  -- the same limit, per machine
      end
    else
      used, reset_ms = local_check(conf, id, now)
    end
    local reset = math.max(0, math.ceil(reset_ms / 1000))
    local remaining = math.max(0, conf.limit - used)
    -- For the response phase and later policies; two numbers, not a table
    -- made for every request.
    local ctx = req.ctx
    ctx.rate_limit_remaining, ctx.rate_limit_reset = remaining, reset
    if used > conf.limit then
      local h = { ["Retry-After"] = tostring(math.max(1, reset)) }
      if conf.headers then
        h["RateLimit-Limit"], h["RateLimit-Remaining"], h["RateLimit-Reset"] =
          tostring(conf.limit), "0", tostring(reset)
      end
      return 429, "too many requests", h
    end
  end,

  response = function(conf, req, res)
    local ctx = req.ctx
    local remaining = ctx.rate_limit_remaining
    if conf.headers and remaining and res.status ~= 429 then
      res.headers["RateLimit-Limit"] = tostring(conf.limit)
      res.headers["RateLimit-Remaining"] = tostring(remaining)
      res.headers["RateLimit-Reset"] = tostring(ctx.rate_limit_reset)
    end
  end,
}
