-- Live spending per token, so a quota holds between batched log flushes:
-- a counter (Redis, or the shared dictionary) seeded from the token's
-- used_amount on first sight and increased by every request's amount.
-- Only tokens with a quota are tracked. The counter expires after TTL
-- seconds without use; by then the flushed used_amount has caught up.
local store = require "lib.store"
local core = require "moongate.core"

local M = {}
local PREFIX = "aiproxy:used:"
local TTL = 600

local function local_used(tok)
  local d = store.dict()
  local v = d:get(PREFIX .. tok.id)
  if v == nil then
    d:add(PREFIX .. tok.id, tok.used_amount or 0, TTL)
    return tok.used_amount or 0
  end
  return math.max(v, tok.used_amount or 0)
end

function M.token_used(tok)
  if store.redis then
    local key = PREFIX .. tok.id
    local v, err = store.redis.call("GET", key)
    if v ~= nil or err == nil then
      if v == nil then
        store.redis.call("SET", key, tostring(tok.used_amount or 0), "EX", TTL, "NX")
        return tok.used_amount or 0
      end
      return math.max(tonumber(v) or 0, tok.used_amount or 0)
    end
    core.log("warn", "aiproxy: quota counter unavailable in Redis, using this machine's: " .. tostring(err))
  end
  return local_used(tok)
end

function M.add(tok, amount)
  if not (tok.quota and tok.quota > 0) or amount <= 0 then return end
  local key = PREFIX .. tok.id
  if store.redis then
    local res = store.redis.pipeline({ { "INCRBYFLOAT", key, string.format("%.10f", amount) },
                                       { "EXPIRE", key, TTL } })
    if res and type(res[1]) ~= "table" then return end
  end
  store.dict():incr(key, amount, tok.used_amount or 0, TTL)
end

return M
