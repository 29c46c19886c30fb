-- Named upstreams: targets, balancing, retries, passive health, and the two
-- ways a handler reaches them:
--
--   local res, err = req:fetch("inference", { method = "POST", path = "/predict",
--                                             json = { image_data = b64 } })
--   -- res.status, res.headers (lower-case names), res.body, res:json()
--   -- err: "timeout", "connect", "unavailable" (every target down), "reset", ...
--
--   return req:proxy("inference")                       -- forward this request
--   return req:proxy("inference", { path = "/predict" }) -- rewritten
--
-- Config:
--   upstreams = {
--     inference = {
--       targets = { "http://127.0.0.1:8001", { url = "http://127.0.0.1:8002", weight = 2 } },
--       balance = "round-robin",     -- "weighted" (same, by weight), "least-busy", "hash"
--       connect_timeout = "5s", read_timeout = "60s", timeout = "60s",
--       keepalive = 64,              -- idle connections kept per worker
--       retries = 1,                 -- extra attempts, on another target when there is one
--       retry_on = { "connect", "timeout", "502", "503", "504" },
--       retry_non_idempotent = false,-- POST/PATCH are not retried unless true
--       max_fails = 3, fail_timeout = "10s",   -- passive health
--       health_check = { path = "/health", interval = "5s", timeout = "2s", status = 200 },
--       verify_tls = true,
--     },
--   }
-- Health and balancing state is per worker.
local core = require "moongate.core"
local schema = require "moongate.schema"
local cjson = require "cjson.safe"
local bit = require "bit"
local timer = require "moongate.timer"

local M = {}

local retry_kinds = { "connect", "dns", "timeout", "reset", "tls", "502", "503", "504", "500", "429" }

M.schema = {
  targets = { type = "table", required = true },
  balance = { type = "string", default = "round-robin",
              one_of = { "round-robin", "weighted", "least-busy", "hash" } },
  connect_timeout = { type = "duration", default = "5s", min = 1 },
  read_timeout = { type = "duration", default = "60s", min = 1 },
  timeout = { type = "duration", default = "60s", min = 1 },
  keepalive = { type = "integer", default = 64, min = 0 },
  retries = { type = "integer", default = 1, min = 0, max = 10 },
  retry_on = { type = "array", items = "string", one_of = retry_kinds,
               default = { "connect", "dns", "timeout", "502", "503", "504" } },
  retry_non_idempotent = { type = "boolean", default = false },
  max_fails = { type = "integer", default = 3, min = 1 },
  fail_timeout = { type = "duration", default = "10s", min = 1 },
  verify_tls = { type = "boolean", default = true },
  health_check = { type = "table" },          -- active checks, see check_schema
}

local check_schema = {
  path = { type = "string", default = "/health" },
  interval = { type = "duration", default = "5s", min = 100 },
  timeout = { type = "duration", default = "2s", min = 10 },
  status = { type = "integer", default = 200 },
}

local idempotent = { GET = true, HEAD = true, OPTIONS = true, PUT = true, DELETE = true, TRACE = true }

-- Hop-by-hop headers (RFC 9110 7.6.1) and the ones the client side of this
-- hop computes itself.
local hop = {
  connection = true, ["keep-alive"] = true, ["proxy-connection"] = true, te = true,
  trailer = true, ["transfer-encoding"] = true, upgrade = true,
  ["content-length"] = true, host = true, expect = true,
}
local hop_response = {
  connection = true, ["keep-alive"] = true, ["proxy-connection"] = true, te = true,
  trailer = true, ["transfer-encoding"] = true, upgrade = true, ["content-length"] = true,
  date = true,
}

-- Builds an upstream from its config entry; raises with the field named.
function M.new(name, conf, where)
  local c = schema.check(M.schema, conf, where)
  local targets = {}
  if #c.targets == 0 then error(where .. ": targets: needs at least one target", 0) end
  for i, t in ipairs(c.targets) do
    local url, weight = t, 1
    if type(t) == "table" then url, weight = t.url or t[1], t.weight or 1 end
    local tw = string.format("%s: targets[%d]", where, i)
    if type(url) ~= "string" or not url:match("^https?://[^/]+") then
      error(tw .. ': expected a URL like "http://127.0.0.1:8000"', 0)
    end
    if type(weight) ~= "number" or weight <= 0 then error(tw .. ": weight must be a positive number", 0) end
    targets[i] = { url = url:gsub("/+$", ""), weight = weight, current = 0, active = 0,
                   fails = 0, down_until = 0 }
  end
  c.name, c.targets = name, targets
  -- Failure kinds ("timeout") and statuses, by name and by number.
  c.retry_set = {}
  for _, k in ipairs(c.retry_on) do
    c.retry_set[k] = true
    if tonumber(k) then c.retry_set[tonumber(k)] = true end
  end
  local up = setmetatable(c, { __index = M })
  if c.health_check then
    up.check = schema.check(check_schema, c.health_check, where .. ": health_check")
    timer.every(up.check.interval / 1000, function() up:run_checks() end)
  end
  return up
end

local function healthy(t, now) return t.down_until <= now end

-- 32-bit FNV-1a. The prime is 2^24 + 403: multiplying in two parts keeps
-- every intermediate exact in a double.
local function fnv1a(s)
  local h = bit.tobit(2166136261)
  for i = 1, #s do
    h = bit.bxor(h, s:byte(i))
    h = bit.tobit(bit.lshift(h, 24) + bit.band(h, 0xffffffff) % 4294967296 * 403)
  end
  return h % 4294967296
end

-- Picks a healthy target not in `tried` (or any healthy one if all were
-- tried). Returns nil when every target is down.
function M:pick(tried, key)
  local now = core.now()
  local targets = self.targets
  if #targets == 1 then                      -- the common case, without a table
    local t = targets[1]
    return healthy(t, now) and t or nil
  end
  local candidates = {}
  for _, t in ipairs(self.targets) do
    if healthy(t, now) and not tried[t] then candidates[#candidates + 1] = t end
  end
  if #candidates == 0 then
    for _, t in ipairs(self.targets) do
      if healthy(t, now) then candidates[#candidates + 1] = t end
    end
  end
  if #candidates == 0 then return nil end
  if #candidates == 1 then return candidates[1] end
  local b = self.balance
  if b == "least-busy" then
    local best, score = nil, math.huge
    for _, t in ipairs(candidates) do
      local s = t.active / t.weight
      if s < score then best, score = t, s end
    end
    return best
  elseif b == "hash" and key then
    -- Rendezvous hashing: the same key keeps its target while that target is up.
    local best, score = nil, -math.huge
    for _, t in ipairs(candidates) do
      local h = (fnv1a(key .. "|" .. t.url) % 1000003 + 1) / 1000004
      local s = -t.weight / math.log(h)
      if s > score then best, score = t, s end
    end
    return best
  end
  -- Smooth weighted round-robin (as nginx): spreads by weight, no bursts.
  local total, best = 0, nil
  for _, t in ipairs(candidates) do
    t.current = t.current + t.weight
    total = total + t.weight
    if not best or t.current > best.current then best = t end
  end
  best.current = best.current - total
  return best
end

-- A handle's head()/read() return nothing when they had to wait: ask again.
local function wait_head(h)
  local status, a, b = h:head()
  while status == nil and a == nil do status, a, b = h:head() end
  return status, a, b
end

local function wait_status(h)
  local status, a, b = h:status()
  while status == nil and a == nil do status, a, b = h:status() end
  return status, a, b
end

local function read_chunk(h)
  local chunk, kind, msg = h:read()
  while chunk == nil and kind == nil do chunk, kind, msg = h:read() end
  return chunk, kind, msg
end

-- Active health checks: a target that does not answer `status` on `path`
-- is out until a check passes again; one that does is back at once.
function M:run_checks()
  local chk = self.check
  for _, t in ipairs(self.targets) do
    local h, kind = core.fetch({ url = t.url .. chk.path, timeout = chk.timeout,
                                 connect_timeout = chk.timeout, verify = self.verify_tls })
    local status
    if h then
      local a
      status, a = wait_head(h)
      h:close()
      if not status then kind = a end
    end
    local ok = status == chk.status
    local was_down = t.down_until > core.now()
    if ok then
      t.fails, t.down_until = 0, 0
      if was_down then
        core.log("info", string.format("upstream %s: target %s is back (health check)", self.name, t.url))
      end
    else
      t.down_until = core.now() + 3600 * 24        -- until a check passes
      if not was_down then
        core.log("warn", string.format("upstream %s: target %s failed its health check: %s",
                 self.name, t.url, status and ("status " .. status) or tostring(kind)))
      end
    end
  end
end

-- The caller is finished with a transfer request() returned.
function M:done(t)
  t.active = t.active - 1
end

function M:succeeded(t)
  t.fails = 0
end

function M:failed(t, kind)
  t.fails = t.fails + 1
  if t.fails >= self.max_fails and t.down_until <= core.now() then
    t.down_until = core.now() + self.fail_timeout / 1000
    core.log("warn", string.format("upstream %s: target %s marked down for %gs after %d failures",
             self.name, t.url, self.fail_timeout / 1000, t.fails),
             string.format('"upstream":%s,"target":%s,"last_error":%s',
                           cjson.encode(self.name), cjson.encode(t.url), cjson.encode(kind)))
  end
end

M.read_chunk = read_chunk
M.wait_head = wait_head
M.wait_status = wait_status

-- Reads a whole body; nil, kind, msg if the transfer broke off.
local function read_all(h)
  local rest = h:rest()
  if rest then return rest end
  local parts = {}
  while true do
    local chunk, kind, msg = read_chunk(h)
    if chunk == false then return table.concat(parts) end
    if chunk == nil then return nil, kind, msg end
    parts[#parts + 1] = chunk
  end
end

local function status_of_failure(kind)
  if kind == "timeout" then return 504 end
  if kind == "unavailable" then return 503 end
  return 502
end
M.status_of_failure = status_of_failure

local messages = {
  timeout = "upstream timed out", unavailable = "no healthy upstream target",
  connect = "upstream refused the connection", dns = "upstream host not found",
  reset = "upstream closed the connection", tls = "upstream TLS failure",
  error = "upstream request failed",
}
M.messages = messages

local NOTHING_TRIED = setmetatable({}, { __newindex = function() error("read-only", 2) end })

-- One request through the upstream, with balancing and retries. Arguments,
-- not a table (one per request for the collector): method, path (with its
-- query), headers, drop, body, forward, trace (as core.fetch's), key (for
-- balance = "hash"), timeout (ms; default the upstream's), request_id (for
-- the log), status_only (wait for the status line only).
-- Returns the open handle, the target, status, headers (nil with
-- status_only: read them from the handle) -- or nil, kind, msg.
function M:request(method, path, headers, drop, body, forward, trace, key, timeout, request_id,
                   status_only)
  timeout = timeout or self.timeout
  local attempts = 1 + self.retries
  if not (idempotent[method] or self.retry_non_idempotent) then attempts = 1 end
  local tried = attempts > 1 and {} or NOTHING_TRIED
  local last_kind, last_msg = "unavailable", "every target is down"
  local retry_set = self.retry_set
  for attempt = 1, attempts do
    local t = self:pick(tried, key)
    if not t then return nil, "unavailable", "every target of upstream " .. self.name .. " is down" end
    if attempts > 1 then tried[t] = true end
    t.active = t.active + 1
    -- core.fetch's options as arguments: no table filled per attempt
    local h, kind, msg = core.fetch_args(t.url, path, method, body, forward, drop, headers, trace,
                                         self.connect_timeout, timeout, self.read_timeout,
                                         self.verify_tls)
    local status
    if h then
      if status_only then status, kind, msg = wait_status(h) else status, kind, msg = wait_head(h) end
    end
    if status then
      local answer_headers = kind                -- wait_head's second result (nil: status_only)
      local retry = retry_set[status]
      -- Like nginx's max_fails: a status counts against the target only when
      -- it is one we retry on (502/503/504 by default), not any 5xx.
      if retry then self:failed(t, tostring(status)) else self:succeeded(t) end
      -- The target stays busy (least-busy) until the caller calls done(t).
      if not (retry and attempt < attempts) then return h, t, status, answer_headers end
      t.active = t.active - 1
      h:close()
      kind, msg = tostring(status), "upstream answered " .. status
    else
      t.active = t.active - 1
      if h then h:close() end
      self:failed(t, kind)
    end
    core.log("warn", string.format("upstream %s: attempt %d/%d to %s failed: %s (%s)",
             self.name, attempt, attempts, t.url, kind, msg or ""),
             string.format('"upstream":%s,"target":%s,"attempt":%d,"kind":%s,"request_id":%s',
                           cjson.encode(self.name), cjson.encode(t.url), attempt,
                           cjson.encode(kind), cjson.encode(request_id or "")))
    last_kind, last_msg = kind, msg
    if not retry_set[kind] then break end
  end
  if tonumber(last_kind) then last_kind = "error" end
  return nil, last_kind, last_msg
end

M.read_all = read_all
M.hop = hop
M.hop_response = hop_response
return M
