-- Helpers shared by the aiproxy handlers: JSON envelope answers (real empty
-- arrays through moongate.json), input checks, database errors.
local cjson = require "cjson.safe"
local core = require "moongate.core"
local json = require "moongate.json"
local table_new = require "table.new"

local M = {}

-- Tables reused from one request to the next (log rows, the relay's
-- per-request state): not a table and its hash part for the collector per
-- request. take() gives a spare table, or a new one with room for nrec
-- fields; give(t) keeps t for a later take() (up to max spares). The caller
-- refills or clears the fields it uses, and gives back only a table that
-- nothing else holds.
function M.table_pool(nrec, max)
  local free, n = {}, 0
  local function take()
    local t = free[n]
    if not t then return table_new(0, nrec) end
    free[n] = nil
    n = n - 1
    return t
  end
  local function give(t)
    if n < max then
      n = n + 1
      free[n] = t
    end
  end
  return take, give
end

-- Marks t as a JSON array (an empty one would otherwise encode as {}).
M.array = json.array

local function encode(v)
  return assert(json.encode(v))
end

local JSON = { ["Content-Type"] = "application/json" }

function M.ok(data, status)
  return status or 200, encode({ success = true, message = "", data = data == nil and cjson.null or data }), JSON
end

function M.fail(status, fmt, ...)
  local msg = select("#", ...) > 0 and string.format(fmt, ...) or fmt
  return status, { success = false, message = msg }
end

function M.now_ms()
  return math.floor(core.now() * 1000)
end

-- The request body as a JSON object, whatever the Content-Type says.
-- Returns the table, or nil and a message.
function M.body_object(req, optional)
  local raw = req:body() or ""
  if raw:match("^%s*$") then
    if optional then return {} end
    return nil, "request body must be a JSON object"
  end
  local v = cjson.decode(raw)
  if type(v) ~= "table" or (next(v) ~= nil and v[1] ~= nil) then
    return nil, "request body must be a JSON object"
  end
  return v
end

function M.is_null(v) return v == nil or v == cjson.null end

-- A database failure -> the answer. Connection problems are 503.
function M.db_fail(err, state)
  core.log("error", "aiproxy: database error: " .. tostring(err) .. " (SQLSTATE " .. tostring(state) .. ")")
  if state == "internal" then return M.fail(500, "internal error: the change was rolled back") end
  if state == nil or state == "" or tostring(state):match("^08") or tostring(state):match("^57")
     or tostring(state):match("^53") or (err and (tostring(err):find("unavailable") or tostring(err):find("timeout"))) then
    return M.fail(503, "database unavailable")
  end
  return M.fail(500, "database error")
end

-- The handler of an admin route file: the schema must exist (a failed
-- migration at start is retried here), then H[<the route name after its
-- last dot>] answers ("channel.list" -> H.list).
function M.admin_handler(H)
  local schema = require "lib.schema"
  return function(req)
    local ok, err, state = schema.ensure()
    if not ok then return M.db_fail(err, state) end
    return H[req.route:match("%.(%w+)$")](req)
  end
end

-- page/per_page from the query string: page >= 1, 1 <= per_page <= 100
-- (larger values are capped). Returns page, per_page or nil, message.
function M.pagination(req)
  local function int(name, default)
    local v = req.query[name]
    if v == nil or v == "" then return default end
    if type(v) ~= "string" or not v:match("^%d+$") or #v > 9 then return nil end
    return tonumber(v)
  end
  local page = int("page", 1)
  if not page or page < 1 then return nil, "page must be a positive integer" end
  local per = int("per_page", 10)
  if not per or per < 1 then return nil, "per_page must be a positive integer" end
  if per > 100 then per = 100 end
  return page, per
end

-- Aborts a transaction with an answer: M.abort(404, "group %q not found", id)
function M.abort(status, fmt, ...)
  error({ aiproxy_abort = true, status = status, text = string.format(fmt, ...) }, 0)   -- not "message": pg.transaction would stringify it
end

-- pg.transaction with every failure as a return value:
--   true, result                        committed
--   nil, message, sqlstate              a database failure (rolled back)
--   nil, abort_table                    M.abort() was called (rolled back)
function M.tx(fn)
  local pg = require "moongate.postgres"
  local ok, a, b, c = pcall(pg.transaction, fn)
  if ok then
    if a == nil then return nil, b, c end      -- BEGIN or COMMIT failed
    return true, a
  end
  if type(a) == "table" and a.aiproxy_abort then return nil, a end
  local msg = tostring(a)
  local st = msg:match("%(SQLSTATE (%w+)%)$")
  if st == "nil" then st = nil end
  return nil, msg, st or "internal"
end

-- The answer for a failed M.tx.
function M.tx_fail(err, state)
  if type(err) == "table" then return M.fail(err.status, err.text) end
  return M.db_fail(err, state)
end

-- fn(s) remembered per s, for values that repeat across requests (model
-- names): a table lookup instead of the work, or a C call, per request.
-- Bounded: a client may send any name, so at `max` entries it starts over.
function M.memo(fn, max)
  local known, n = {}, 0
  return function(s)
    local v = known[s]
    if v == nil then
      if n >= max then known, n = {}, 0 end
      v = fn(s)
      known[s], n = v, n + 1
    end
    return v
  end
end

return M
