-- key-auth: an API key identifies the consumer; no key or an unknown key → 401.
--
--   { "key-auth", keys = { ["k-123"] = "alice", ["k-456"] = "bob" } }
--   { "key-auth", header = "X-Api-Key", scheme = "", keys = { "k-123" } }
--   { "key-auth", pg_query = "SELECT name AS consumer FROM api_keys WHERE key = $1 AND enabled" }
--   { "key-auth", redis_key = "apikey:%s" }          -- GET apikey:<key> -> consumer
--
-- Settings:
--   header ("Authorization"), scheme ("Bearer": "Authorization: Bearer <key>";
--   "" takes the whole header), query (also accept ?<query>=<key>)
--   keys       a list of keys, or key = consumer-name pairs (from the config)
--   pg_query   SQL with $1 = the key, returning a row (column `consumer` if any)
--   redis_key  a key pattern with %s for the API key; its value is the consumer
--   cache_ttl ("60s"), negative_ttl ("5s"): lookups in Postgres/Redis are cached
--              in the shared dictionary `dict` ("key_auth"), misses too
--   consumer_header ("X-Consumer"): the consumer's name sent upstream ("" = none)
--   hide_credentials (true): the key header is not forwarded upstream
-- The consumer is req.ctx.consumer for later policies (rate-limit by = "consumer").
-- A database or Redis failure answers 503, not 401.
local core = require "moongate.core"

local function lookup_store(conf, key)
  if conf.pg_query then
    local pg = require "moongate.postgres"
    local rows, err = pg.query(conf.pg_query, key)
    if not rows then return nil, err end
    local row = rows[1]
    if not row then return false end
    return row.consumer ~= nil and tostring(row.consumer) or key:sub(1, 8)
  end
  local redis = require "moongate.redis"
  local v, err = redis.call("GET", string.format(conf.redis_key, key))
  if v == nil then
    if err then return nil, err end
    return false
  end
  return v
end

-- Returns the consumer name, false for an unknown key, or nil, err.
local function consumer_for(conf, key)
  if conf.static then
    local c = conf.static[key]
    return c or false
  end
  local cache_key = "ka:" .. key
  local cached = conf.cache:get(cache_key)
  if cached ~= nil then return cached end
  local c, err = lookup_store(conf, key)
  if c == nil then return nil, err end
  conf.cache:set(cache_key, c, (c and conf.cache_ttl or conf.negative_ttl) / 1000)
  return c
end

return {
  schema = {
    header = { type = "string", default = "Authorization" },
    scheme = { type = "string", default = "Bearer" },
    query = { type = "string" },
    keys = { type = "table" },
    pg_query = { type = "string" },
    redis_key = { type = "string" },
    cache_ttl = { type = "duration", default = "60s", min = 1 },
    negative_ttl = { type = "duration", default = "5s", min = 1 },
    dict = { type = "string", default = "key_auth" },
    consumer_header = { type = "string", default = "X-Consumer" },
    hide_credentials = { type = "boolean", default = true },
  },

  init = function(conf)
    local sources = (conf.keys and 1 or 0) + (conf.pg_query and 1 or 0) + (conf.redis_key and 1 or 0)
    if sources ~= 1 then error("give exactly one of keys, pg_query, redis_key", 0) end
    if conf.keys then
      conf.static = {}
      for k, v in pairs(conf.keys) do
        if type(k) == "number" then conf.static[tostring(v)] = tostring(v):sub(1, 8)
        else conf.static[k] = tostring(v) end
      end
    end
    if conf.redis_key and not conf.redis_key:find("%s", 1, true) then
      error('redis_key: needs a "%s" where the key goes', 0)
    end
    conf.cache = core.shdict(conf.dict, 4 * 1024 * 1024)
  end,

  access = function(conf, req)
    local key = req:credential(conf.header, conf.scheme, conf.query)
    if not key then return 401, "missing API key" end
    local consumer, err = consumer_for(conf, key)
    if consumer == nil then
      core.log("error", "key-auth: lookup failed: " .. tostring(err))
      return 503, "authentication unavailable"
    end
    if not consumer then return 401, "invalid API key" end
    req.ctx.consumer = consumer
    if conf.hide_credentials then req.upstream_headers[conf.header] = false end
    if conf.consumer_header ~= "" then req.upstream_headers[conf.consumer_header] = consumer end
  end,
}
