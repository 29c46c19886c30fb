-- Group x model RPM and TPM, per minute window, checked BEFORE forwarding:
-- the request reserves its estimated tokens (prompt estimate + max_tokens or
-- a default) in the TPM window atomically with the check, so concurrent
-- requests cannot overshoot; afterwards correct() replaces the estimate by
-- the real usage. Redis (one script call) or the shared dictionary, see
-- lib/store.lua.
--
-- RPM alone (no TPM) is counted in leases: when a worker goes to Redis for
-- a request, the script also grants it up to LEASE_MAX more requests of the
-- window -- never more than 1/LEASE_DIVISOR of what is left -- and the
-- worker serves that many without asking again. Every lease is counted in
-- Redis when granted, so the limit still holds across all workers and
-- instances; the cost is that requests leased to one worker and not used
-- there by the window's end are lost to the others (at most 1/LEASE_DIVISOR
-- of the remainder per worker, none once fewer than LEASE_DIVISOR remain:
-- near the limit every request asks Redis), and a lowered RPM reaches
-- requests already leased only at the next window. A busy relay then makes
-- one Redis call per LEASE_MAX requests instead of one per request.
local core = require "moongate.core"
local store = require "lib.store"

local M = {}

local WINDOW = 60
local LEASE_MAX, LEASE_DIVISOR = 64, 64

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

-- RPM only: this request plus a lease of up to `max` more, counted at once.
local LEASE = store.redis and store.redis.script([[
local rpm, ttl, max, div = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local r = tonumber(redis.call('GET', KEYS[1]) or '0')
if r + 1 > rpm then return { 0, 'rpm', r, 0, 0 } end
local lease = math.min(max, math.floor((rpm - r - 1) / div))
redis.call('INCRBY', KEYS[1], 1 + lease); redis.call('EXPIRE', KEYS[1], ttl)
return { 1, '', r + 1 + lease, 0, lease }
]])

-- This worker's leases: [group][model] = { window =, left = } (by two
-- lookups: no key string made per request). Bounded: emptied (leases given
-- up) at MAX_LEASES entries.
local leases, n_leases, MAX_LEASES = {}, 0, 10000

local function add_lease(group, model, window, n)
  local by_model = leases[group]
  local l = by_model and by_model[model]
  if l and l.window == window then l.left = l.left + n; return end
  if not l then
    if n_leases >= MAX_LEASES then leases, n_leases, by_model = {}, 0, nil end
    n_leases = n_leases + 1
  end
  if not by_model then by_model = {}; leases[group] = by_model end
  by_model[model] = { window = window, left = n }
end

-- What acquire() returns when nothing is to be corrected afterwards.
local NOTHING_RESERVED = { est = 0 }

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
function M.acquire(group, model, cfg, est, now)
  if cfg.rpm <= 0 and cfg.tpm <= 0 then return NOTHING_RESERVED end
  now = now or core.now()
  local window = math.floor(now / WINDOW)
  local leased = store.redis and cfg.tpm <= 0
  if leased then
    local by_model = leases[group]
    local lease = by_model and by_model[model]
    if lease and lease.window == window and lease.left > 0 then
      lease.left = lease.left - 1
      return NOTHING_RESERVED
    end
  end
  local rk, tk = keys(group, model, window)
  local res, where = nil, "redis"
  if store.redis then
    local err
    if leased then
      res, err = LEASE:run({ rk }, { cfg.rpm, WINDOW * 2, LEASE_MAX, LEASE_DIVISOR })
      if res and res[1] == 1 and res[5] > 0 then add_lease(group, model, window, res[5]) end
    else
      res, err = ACQUIRE:run({ rk, tk }, { cfg.rpm, cfg.tpm, est, WINDOW * 2 })
    end
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
  if res[1] == 1 then
    if cfg.tpm <= 0 then return NOTHING_RESERVED end
    return { est = est, tk = tk, where = where }
  end
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
