-- Redis from Lua: waits without blocking the worker.
--
--   redis = { url = "redis://:secret@127.0.0.1:6379/0", pool = 4, timeout = "2s" }  -- config
--
--   local redis = require "moongate.redis"
--   local v, err = redis.call("GET", "k")        -- value, nil (no such key), or nil, err
--   local n = redis.call("INCR", "hits")         -- integers are numbers
--   local res, err = redis.pipeline({ { "INCR", "a" }, { "EXPIRE", "a", 60 } })
--   -- res[i]: the value, redis.null for a nil, or { err = "..." } for an error reply
--   local hit = redis.script([[ return redis.call('INCR', KEYS[1]) ]])
--   local v, err = hit:run({ "counter" }, { })   -- EVALSHA, loading the script on NOSCRIPT
--
-- err is the server's error text ("ERR ...", "WRONGTYPE ..."), "timeout",
-- "redis unavailable" (the server is down: answered at once, retried with
-- backoff), or the connection's error. The server restarting needs no
-- gateway restart.
local core = require "moongate.core"

local M = { null = core.null }

function M.call(...)
  local argv = { ... }
  if #argv == 0 then error("redis.call: expected a command", 2) end
  return core.redis(argv)
end

function M.pipeline(commands)
  if type(commands) ~= "table" or #commands == 0 then
    error("redis.pipeline: expected a list of commands", 2)
  end
  return core.redis_pipeline(commands)
end

local Script = {}
Script.__index = Script

function M.script(source)
  if type(source) ~= "string" or source == "" then error("redis.script: expected Lua source", 2) end
  return setmetatable({ source = source }, Script)
end

function Script:run(keys, args)
  keys, args = keys or {}, args or {}
  for attempt = 1, 2 do
    if not self.sha then
      local sha, err = core.redis({ "SCRIPT", "LOAD", self.source })
      if not sha then return nil, err end
      self.sha = sha
    end
    local argv = { "EVALSHA", self.sha, #keys }
    for _, k in ipairs(keys) do argv[#argv + 1] = k end
    for _, a in ipairs(args) do argv[#argv + 1] = a end
    local v, err = core.redis(argv)
    if v == nil and err and err:find("^NOSCRIPT") and attempt == 1 then
      self.sha = nil                       -- flushed or a new server: load again
    else
      return v, err
    end
  end
end

return M
