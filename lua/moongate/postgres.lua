-- PostgreSQL from Lua: waits without blocking the worker.
--
--   postgres = { dsn = os.getenv("SQL_DSN"), pool = 4, timeout = "30s", wait_timeout = "5s" }
--   -- dsn: "postgres://user:pass@127.0.0.1:5432/db" or "host=... dbname=..."
--
--   local pg = require "moongate.postgres"
--   local rows, err, sqlstate = pg.query("SELECT id, name FROM groups WHERE id = $1", id)
--   -- rows[i].id ... ; rows.affected (INSERT/UPDATE/DELETE count); rows.columns
--   pg.transaction(function(tx)
--     tx.query("DELETE FROM tokens WHERE group_id = $1", id)
--     tx.query("DELETE FROM groups WHERE id = $1", id)
--   end)   -- commits when the function returns, rolls back (and re-raises) when it raises
--
-- Values reach SQL only as $1..$n parameters (strings, numbers, booleans,
-- pg.null). Results are converted by column type: integers and floats to
-- numbers, bool to booleans, json/jsonb decoded, NULL as pg.null, the rest
-- as strings. Failures return nil, message, SQLSTATE: "timeout" (57014),
-- "database unavailable..." (08001, answered at once while the server is down;
-- connections are reopened on their own), "timeout waiting for a database
-- connection" when the pool stays busy longer than wait_timeout.
local core = require "moongate.core"
local cjson = require "cjson.safe"

local M = { null = core.null }

local NUMBER = { [20] = true, [21] = true, [23] = true, [26] = true, [700] = true,
                 [701] = true, [1700] = true }
local JSON = { [114] = true, [3802] = true }

local function convert(res)
  local names, types, out = res.columns, res.types, { affected = res.affected, columns = res.columns }
  for i, raw in ipairs(res.rows) do
    local row = {}
    for j, name in ipairs(names) do
      local v, t = raw[j], types[j]
      if v ~= core.null then
        if NUMBER[t] then v = tonumber(v)
        elseif t == 16 then v = (v == "t")
        elseif JSON[t] then v = cjson.decode(v) end
      end
      row[name] = v
    end
    out[i] = row
  end
  return out
end

local function run(sql, params, conn, pin)
  if type(sql) ~= "string" then error("pg.query: expected SQL text", 3) end
  while true do
    local res, err, state = core.pg_query(sql, params, conn, pin)
    if res then return res end
    if err ~= "retry" then return nil, err, state end
  end
end

function M.query(sql, ...)
  local res, err, state = run(sql, { ... })
  if not res then return nil, err, state end
  return convert(res)
end

local in_transaction = setmetatable({}, { __mode = "k" })
local QueryError = {}             -- marks errors raised by tx.query

-- Runs fn(tx) on one pinned connection inside BEGIN ... COMMIT.
function M.transaction(fn)
  if type(fn) ~= "function" then error("pg.transaction: expected a function", 2) end
  local co = coroutine.running()
  if in_transaction[co] then error("pg.transaction: already inside a transaction", 2) end
  local begin, err, state = run("BEGIN", {}, nil, true)
  if not begin then return nil, err, state end
  local conn = begin.conn
  in_transaction[co] = true
  local tx = {
    query = function(sql, ...)
      local res, e, s = run(sql, { ... }, conn)
      if not res then error(setmetatable({ message = e, sqlstate = s }, QueryError), 2) end
      return convert(res)
    end,
  }
  local ok, result = pcall(fn, tx)
  in_transaction[co] = nil
  if ok then
    local c, e, s = run("COMMIT", {}, conn)
    core.pg_unpin(conn)
    if not c then return nil, e, s end
    return result == nil and true or result
  end
  run("ROLLBACK", {}, conn)
  core.pg_unpin(conn)
  if getmetatable(result) == QueryError then
    error(string.format("%s (SQLSTATE %s)", result.message, tostring(result.sqlstate)), 2)
  end
  error(result, 2)
end

return M
