-- One log row per relayed request, and the spending it implies, written in
-- batches by moongate.batch: every flush inserts the rows and adds their
-- amounts and counts to tokens, groups and channels in ONE statement.
-- Rows carry their own unique id (uid), so a batch replayed after a timeout
-- or from the on-disk spool (PostgreSQL was down, a reload, a stop) inserts
-- and counts nothing twice.
local batch = require "moongate.batch"
local core = require "moongate.core"
local cjson = require "cjson.safe"
local pg = require "moongate.postgres"
local schema = require "lib.schema"

local M = {}

M.COLUMNS = "uid, request_id, created_at, group_id, token_id, token_name, model, upstream_model, " ..
            "channel_id, endpoint, code, content, prompt_tokens, completion_tokens, total_tokens, " ..
            "usage_estimated, amount, latency_ms, ttfb_ms, retries, stream, client_aborted, ip"

-- One statement, one round trip: insert the rows (those already there --
-- a replayed batch -- are skipped) and add what the inserted ones spent to
-- their token, group and channel. A statement is atomic on its own.
local function add_spending(tbl, col, id_type)
  return string.format([[
  %s AS (UPDATE %s t SET used_amount = t.used_amount + v.amount, request_count = t.request_count + v.n,
                         accessed_at = GREATEST(t.accessed_at, v.at)
         FROM (SELECT %s AS id, sum(amount) AS amount, count(*) AS n, max(created_at) AS at
               FROM ins GROUP BY %s) v
         WHERE t.id = v.id::%s RETURNING 1)]], tbl .. "_spent", tbl, col, col, id_type)
end

local FLUSH_SQL = "WITH ins AS (INSERT INTO logs (" .. M.COLUMNS .. ") SELECT " .. M.COLUMNS ..
  " FROM json_populate_recordset(NULL::logs, $1::json) ON CONFLICT (uid) DO NOTHING" ..
  " RETURNING token_id, group_id, channel_id, amount, created_at),\n" ..
  add_spending("tokens", "token_id", "bigint") .. ",\n" ..
  add_spending("groups", "group_id", "text") .. ",\n" ..
  add_spending("channels", "channel_id", "bigint") ..
  "\nSELECT count(*) AS inserted FROM ins"

local function flush(rows)
  local ok, err = schema.ensure()
  if not ok then return nil, err end
  local res, e, state = pg.query(FLUSH_SQL, cjson.encode(rows))
  if not res then return nil, tostring(e) .. " (SQLSTATE " .. tostring(state) .. ")" end
  return true
end

M.queue = batch.new{
  name = "aiproxy-logs",
  flush = flush,
  interval = tonumber(os.getenv("AIPROXY_LOG_FLUSH_INTERVAL") or "") or 1,
  max_rows = 1000,
  spool_dir = os.getenv("AIPROXY_SPOOL_DIR"),
  spool_limit = os.getenv("AIPROXY_SPOOL_LIMIT") or "256m",
}

-- A new row with the request's identity filled in.
function M.row(req, tok, endpoint)
  return {
    uid = core.random_hex(32), request_id = req.id, created_at = math.floor(core.now() * 1000),
    group_id = tok.group, token_id = tok.id, token_name = tok.name, model = "", upstream_model = "",
    channel_id = 0, endpoint = endpoint, code = 0, content = "", prompt_tokens = 0,
    completion_tokens = 0, total_tokens = 0, usage_estimated = false, amount = 0, latency_ms = 0,
    ttfb_ms = 0, retries = 0, stream = false, client_aborted = false, ip = req.remote_addr,
  }
end

function M.push(row)
  if #row.content > 1000 then row.content = row.content:sub(1, 1000) end
  M.queue:push(row)
end

return M
