-- Tokens: key generation, the JSON form, and the cached lookup by key that
-- the relay uses: shared dictionary (this instance, TTL 5 s) -> Redis
-- (TTL 30 s) -> PostgreSQL. Every change to a token or a group calls
-- invalidate() with the keys concerned, which clears both layers.
local pg = require "moongate.postgres"
local core = require "moongate.core"
local cjson = require "cjson.safe"
local json = require "moongate.json"
local util = require "lib.util"

local M = {}

M.MEMORY_TTL = 5
M.REDIS_TTL = 30
local PREFIX = "aiproxy:token:"

local redis = require("lib.store").redis      -- nil without REDIS_CONN_STRING

local ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

-- 48 random alphanumeric characters from /dev/urandom (rejection sampling:
-- bytes >= 248 are skipped so every character is equally likely).
function M.new_key(n)
  n = n or 48
  local f = assert(io.open("/dev/urandom", "rb"))
  local out = {}
  while #out < n do
    local bytes = f:read(64)
    for i = 1, #bytes do
      local b = bytes:byte(i)
      if b < 248 then
        local j = b % 62 + 1
        out[#out + 1] = ALNUM:sub(j, j)
        if #out == n then break end
      end
    end
  end
  f:close()
  return table.concat(out)
end

function M.format(r)
  return {
    id = r.id, group = r.group_id, key = r.key, name = r.name, status = r.status,
    quota = r.quota, used_amount = r.used_amount, request_count = r.request_count,
    models = util.array(type(r.models) == "table" and r.models or nil),
    subnets = util.array(type(r.subnets) == "table" and r.subnets or nil),
    created_at = r.created_at, accessed_at = r.accessed_at, expired_at = r.expired_at,
  }
end

M.COLUMNS = "id, group_id, key, name, status, quota, used_amount, request_count, models, subnets, created_at, accessed_at, expired_at"

local shared = require "moongate.shared"   -- filled in place by the config's `shared`
local function shdict()
  return shared.tokens
end

-- Clears the cached entries of these keys (a list of token keys).
function M.invalidate(keys)
  if not keys or #keys == 0 then return end
  local dict = shdict()
  if redis then
    local cmd = { "DEL" }
    for _, k in ipairs(keys) do cmd[#cmd + 1] = PREFIX .. k end
    local ok, err = redis.call(unpack(cmd))
    if ok == nil and err then
      core.log("warn", "aiproxy: could not invalidate cached tokens in Redis (they expire within "
               .. M.REDIS_TTL .. "s): " .. tostring(err))
    end
  end
  if dict then
    for _, k in ipairs(keys) do dict:delete(k) end
  end
end

-- Decoded cache entries, per worker, keyed by the cached JSON text itself:
-- the same text decodes to the same token, and any change (or
-- invalidation) changes or removes the text, so this can never be stale.
-- Bounded: emptied when it reaches MAX_DECODED entries. Callers must not
-- change the token they get.
local by_text, n_decoded, MAX_DECODED = {}, 0, 10000
local function decoded(v)
  local t = by_text[v]
  if t == nil then
    t = cjson.decode(v)
    if n_decoded >= MAX_DECODED then by_text, n_decoded = {}, 0 end
    by_text[v], n_decoded = t, n_decoded + 1
  end
  return t
end

-- The token with this key (an "sk-" prefix is allowed), with its group's
-- status as group_status. Returns token, source ("memory"|"redis"|"db"),
-- or nil (unknown key), or nil, err, sqlstate on a database failure.
function M.lookup(key)
  if type(key) ~= "string" then return nil end
  if key:sub(1, 3) == "sk-" then key = key:sub(4) end   -- not gsub: a C call per request
  if key == "" or #key > 128 then return nil end
  local dict = shdict()
  if dict then
    local v = dict:get(key)
    if v then return decoded(v), "memory" end
  end
  if redis then
    local v = redis.call("GET", PREFIX .. key)
    if type(v) == "string" then
      if dict then dict:set(key, v, M.MEMORY_TTL) end
      return decoded(v), "redis"
    end
  end
  local rows, err, state = pg.query(
    "SELECT t.id, t.group_id, t.key, t.name, t.status, t.quota, t.used_amount, t.request_count, " ..
    "t.models, t.subnets, t.created_at, t.accessed_at, t.expired_at, g.status AS group_status " ..
    "FROM tokens t JOIN groups g ON g.id = t.group_id WHERE t.key = $1", key)
  if not rows then return nil, err, state end
  if not rows[1] then return nil end
  local tok = M.format(rows[1])
  tok.group_status = rows[1].group_status
  local text = json.encode(tok)                 -- real [] for empty lists
  if redis then redis.call("SET", PREFIX .. key, text, "EX", M.REDIS_TTL) end
  if dict then dict:set(key, text, M.MEMORY_TTL) end
  return decoded(text), "db"
end

return M
