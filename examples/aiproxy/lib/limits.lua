-- Group x model RPM and TPM, per minute window, checked BEFORE forwarding:
-- the request reserves its estimated tokens (prompt estimate + max_tokens or
-- a default) in the TPM window atomically with the check, so concurrent
-- requests cannot overshoot; afterwards correct() replaces the estimate by
-- the real usage. Redis (one script call) or the shared dictionary, see
-- lib/store.lua.
local core = require "moongate.core"
local store = require "lib.store"

local M = {}

local WINDOW = 60

-- Check and reserve in one step: both limits pass, or nothing is counted.
local ACQUIRE = store.redis and store.redis.script([[
local rpm, tpm, est, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local r = tonumber(redis.call('GET', KEYS[1]) or '0')
local t = tonumber(redis.call('GET', KEYS[2]) or '0')
if rpm > 0 and r + 1 > rpm then return { 0, 'rpm', r, t } end
if tpm > 0 and t + est > tpm then return { 0, 'tpm', r, t } end
if rpm > 0 then redis.call('INCR', KEYS[1]); redis.call('EXPIRE', KEYS[1], ttl) end
if tpm > 0 then redis.call('INCRBY', KEYS[2], est); redis.call('EXPIRE', KEYS[2], ttl) end
return { 1, '', r + 1, t + est }
]])

local function keys(group, model, window)
  local base = "aiproxy:limit:" .. group .. ":" .. model .. ":" .. window
  return base .. ":rpm", base .. ":tpm"
end

local function acquire_local(rk, tk, rpm, tpm, est)
  local d = store.dict()
  local r, t = 0, 0
  if rpm > 0 then
    r = d:incr(rk, 1, 0, WINDOW * 2)
    if r > rpm then d:incr(rk, -1); return { 0, "rpm", r - 1, d:get(tk) or 0 } end
  end
  if tpm > 0 then
    t = d:incr(tk, est, 0, WINDOW * 2)
    if t > tpm then
      d:incr(tk, -est)
      if rpm > 0 then d:incr(rk, -1) end
      return { 0, "tpm", r, t - est }
    end
  end
  return { 1, "", r, t }
end

-- Returns a reservation (pass it to correct()), or nil, headers, which
-- ("rpm"|"tpm") when a limit is reached, or nil, nil, "unavailable".
function M.acquire(group, model, cfg, est)
  if cfg.rpm <= 0 and cfg.tpm <= 0 then return { est = 0 } end
  local now = core.now()
  local window = math.floor(now / WINDOW)
  local rk, tk = keys(group, model, window)
  local res, where = nil, "redis"
  if store.redis then
    local err
    res, err = ACQUIRE:run({ rk, tk }, { cfg.rpm, cfg.tpm, est, WINDOW * 2 })
    if not res then
      if not store.fault_tolerant then
        core.log("error", "aiproxy: rate limiter unavailable (Redis: " .. tostring(err) .. ")")
        return nil, nil, "unavailable"
      end
      core.log("warn", "aiproxy: Redis unavailable, limiting per machine: " .. tostring(err))
      res = nil
    end
  end
  if not res then res, where = acquire_local(rk, tk, cfg.rpm, cfg.tpm, est), "local" end
  if res[1] == 1 then return { est = cfg.tpm > 0 and est or 0, tk = tk, where = where } end
  -- Refused: OpenAI's rate-limit headers say what is left and when it resets.
  local reset = math.max(1, math.ceil((window + 1) * WINDOW - now))
  local h = { ["Retry-After"] = reset }
  if cfg.rpm > 0 then
    h["X-RateLimit-Limit-Requests"] = cfg.rpm
    h["X-RateLimit-Remaining-Requests"] = math.max(0, cfg.rpm - res[3])
    h["X-RateLimit-Reset-Requests"] = reset .. "s"
  end
  if cfg.tpm > 0 then
    h["X-RateLimit-Limit-Tokens"] = cfg.tpm
    h["X-RateLimit-Remaining-Tokens"] = math.max(0, cfg.tpm - res[4])
    h["X-RateLimit-Reset-Tokens"] = reset .. "s"
  end
  return nil, h, res[2]
end

-- The request used `actual` tokens where it reserved r.est.
function M.correct(r, actual)
  if not r or not r.tk or r.est == 0 then return end
  local delta = math.floor(actual - r.est)
  if delta == 0 then return end
  if r.where == "redis" then
    local v, err = store.redis.call("INCRBY", r.tk, delta)
    if v ~= nil or err == nil then return end
  end
  store.dict():incr(r.tk, delta, 0, WINDOW * 2)
end

return M
