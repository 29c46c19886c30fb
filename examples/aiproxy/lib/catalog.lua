-- The relay's view of channels and model configs: a per-worker snapshot of
-- the enabled channels (indexed by model) and of every model config, read
-- from PostgreSQL and refreshed in the background when
--   * an admin change on this machine bumped the version in the shared
--     dictionary (every worker notices on its next request), or
--   * it is older than REFRESH seconds (changes made through another
--     instance), or on demand when empty.
-- While PostgreSQL is down the last snapshot keeps serving.
--
-- Channel choice: weighted by priority, down-weighted by the channel's
-- recent error rate on this worker (weight x (1 - rate)^2, at least 1%);
-- a channel that failed COOL_AFTER times in a row sits out COOL_FOR seconds
-- while another channel can serve, then gets probed again.
local pg = require "moongate.postgres"
local core = require "moongate.core"
local timer = require "moongate.timer"

local M = {}

M.REFRESH = 5
M.DEFAULT_RETRIES = 1
M.DEFAULT_TIMEOUT = 300          -- seconds, for a model without a config
local VERSION_KEY = "catalog:version"

local snap = nil                 -- { by_model, configs, version, loaded_at }
local health = {}                -- channel id -> { ok, fail, since }

-- The module's table once (filled in place by the config's `shared`): a
-- require per call is a C call and two lookups per relayed request.
local shared = require "moongate.shared"
local function dict() return shared.aiproxy end

local function version()
  local d = dict()
  return d and d:get(VERSION_KEY) or 0
end

-- Called after every admin change to channels or model configs.
function M.changed()
  local d = dict()
  if d then d:incr(VERSION_KEY, 1, 0) end
end

-- base_url as stored and used: no trailing "/" and no trailing "/v1".
function M.normalize_base_url(u)
  u = u:gsub("/+$", "")
  u = u:gsub("/v1$", "")
  return (u:gsub("/+$", ""))
end

local function load()
  local ready, e, st = require("lib.schema").ensure()   -- the tables may not exist yet
  if not ready then return nil, e, st end
  local v = version()
  local chans, err, state = pg.query(
    "SELECT id, type, name, key, base_url, models, model_mapping, priority " ..
    "FROM channels WHERE status = 1 ORDER BY id")
  if not chans then return nil, err, state end
  local cfgs, err2, state2 = pg.query(
    "SELECT model, rpm, tpm, input_price, output_price, retry_times, timeout, fallbacks FROM model_configs")
  if not cfgs then return nil, err2, state2 end
  local by_model, configs = {}, {}
  for _, c in ipairs(chans) do
    c.models = type(c.models) == "table" and c.models or {}
    c.model_mapping = type(c.model_mapping) == "table" and c.model_mapping or {}
    for _, m in ipairs(c.models) do
      local list = by_model[m]
      if not list then list = {}; by_model[m] = list end
      list[#list + 1] = c
    end
  end
  for _, r in ipairs(cfgs) do
    r.fallbacks = type(r.fallbacks) == "table" and r.fallbacks or {}
    configs[r.model] = r
  end
  return { by_model = by_model, configs = configs, resolved = {}, version = v, loaded_at = core.now() }
end

local refreshing = false

local function refresh()
  local fresh, err = load()
  refreshing = false
  if fresh then
    snap = fresh
  elseif snap then
    snap.loaded_at = core.now()                -- keep serving; try again in REFRESH s
    core.log("warn", "aiproxy: could not refresh channels, serving the last snapshot: " .. tostring(err))
  end
end

-- The current snapshot, or nil, err, sqlstate when there is none at all.
-- An old one keeps serving while ONE background timer reloads it: requests
-- do not wait for PostgreSQL for the periodic refresh (a burst of requests
-- at that moment would otherwise all queue for the pool).
function M.get(now)
  local s = snap
  if s and s.version == version() then
    if (now or core.now()) - s.loaded_at >= M.REFRESH and not refreshing then
      refreshing = true
      if not timer.after(0, refresh) then refreshing = false end
    end
    return s
  end
  -- None yet, or an admin change on this machine: load now (changes are
  -- rare; the caller must see the channel it just created).
  local fresh, err, state = load()
  if fresh then
    snap = fresh
    return fresh
  end
  if s then
    core.log("warn", "aiproxy: could not reload channels, serving the last snapshot: " .. tostring(err))
    return s
  end
  return nil, err, state
end

-- The model's settings, defaults filled in for a model without a config
-- (made once per snapshot and model).
function M.model_config(s, model)
  local done = s.resolved[model]
  if done then return done end
  local c = s.configs[model]
  done = {
    rpm = c and c.rpm or 0, tpm = c and c.tpm or 0,
    input_price = c and c.input_price or 0, output_price = c and c.output_price or 0,
    retry_times = c and c.retry_times or M.DEFAULT_RETRIES,
    timeout = (c and c.timeout > 0) and c.timeout or M.DEFAULT_TIMEOUT,
    fallbacks = c and c.fallbacks or {},
  }
  s.resolved[model] = done
  return done
end

function M.serves(s, model)
  return s.by_model[model] ~= nil
end

-- Models served by some enabled channel, sorted.
function M.models(s)
  local out = {}
  for m in pairs(s.by_model) do out[#out + 1] = m end
  table.sort(out)
  return out
end

local WINDOW = 60
M.COOL_AFTER, M.COOL_FOR = 3, 10

local function error_rate(id, now)
  local h = health[id]
  if not h then return 0 end
  if now - h.since > WINDOW then               -- decay: halve the old counts
    h.ok, h.fail, h.since = h.ok / 2, h.fail / 2, now
  end
  return h.fail / (h.ok + h.fail + 1)
end

function M.record(id, ok)
  local h = health[id]
  if not h then h = { ok = 0, fail = 0, since = core.now(), streak = 0, cool_until = 0 }; health[id] = h end
  if ok then
    h.ok, h.streak = h.ok + 1, 0
  else
    h.fail, h.streak = h.fail + 1, h.streak + 1
    if h.streak >= M.COOL_AFTER then h.cool_until = core.now() + M.COOL_FOR end
  end
end

local function cooling(id, now)
  local h = health[id]
  return h ~= nil and h.cool_until > now
end

-- A channel's weight for this pick: 0 when it is not worth trying.
local function weight(c, tried, now, skip_cooling)
  if tried[c.id] or (skip_cooling and cooling(c.id, now)) then return 0 end
  local ok_share = 1 - error_rate(c.id, now)
  return math.max(c.priority, 0.1) * math.max(0.01, ok_share * ok_share)
end

-- A channel serving `model` not in `tried`, or nil: weighted by priority
-- and recent errors, cooling channels only when nothing else is left.
-- Two passes over the list (total, then the draw) instead of building
-- candidate tables: this runs for every relayed request.
function M.pick(s, model, tried, now)
  local list = s.by_model[model]
  if not list then return nil end
  now = now or core.now()
  local skip_cooling, total = true, 0
  for i = 1, #list do total = total + weight(list[i], tried, now, true) end
  if total == 0 then
    skip_cooling = false
    for i = 1, #list do total = total + weight(list[i], tried, now, false) end
    if total == 0 then return nil end
  end
  local x = math.random() * total
  local last
  for i = 1, #list do
    local c = list[i]
    local w = weight(c, tried, now, skip_cooling)
    if w > 0 then
      last = c
      x = x - w
      if x <= 0 then return c end
    end
  end
  return last
end

return M
