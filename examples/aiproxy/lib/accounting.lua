-- One log row per relayed request, and the spending it implies, written in
-- batches by moongate.batch: every flush inserts the rows and adds their
-- amounts and counts to tokens, groups and channels in ONE transaction.
-- Rows carry their own unique id (uid), so a batch replayed after a timeout
-- or from the on-disk spool (PostgreSQL was down, a reload, a stop) inserts
-- and counts nothing twice.
local batch = require "moongate.batch"
local core = require "moongate.core"
local cjson = require "cjson.safe"
local util = require "lib.util"
local schema = require "lib.schema"

local M = {}

M.COLUMNS = "uid, request_id, created_at, group_id, token_id, token_name, model, upstream_model, " ..
            "channel_id, endpoint, code, content, prompt_tokens, completion_tokens, total_tokens, " ..
            "usage_estimated, amount, latency_ms, ttfb_ms, retries, stream, client_aborted, ip"

-- Sums per id of the inserted rows: { [id] = { amount, n, at } }.
local function sums(rows, field)
  local out, list = {}, {}
  for _, r in ipairs(rows) do
    local id = r[field]
    if id ~= nil and id ~= "" and id ~= 0 then
      local s = out[id]
      if not s then s = { id = id, amount = 0, n = 0, at = 0 }; out[id] = s; list[#list + 1] = s end
      s.amount = s.amount + r.amount
      s.n = s.n + 1
      if r.created_at > s.at then s.at = r.created_at end
    end
  end
  return list
end

local function add_to(tx, table_name, id_type, list)
  if #list == 0 then return end
  tx.query("UPDATE " .. table_name .. " t SET used_amount = t.used_amount + v.amount, " ..
           "request_count = t.request_count + v.n, accessed_at = GREATEST(t.accessed_at, v.at) " ..
           "FROM json_to_recordset($1::json) AS v(id " .. id_type .. ", amount float8, n bigint, at bigint) " ..
           "WHERE t.id = v.id", cjson.encode(list))
end

local function flush(rows)
  local ok, err = schema.ensure()
  if not ok then return nil, err end
  local done, res, state = util.tx(function(tx)
    local inserted = tx.query(
      "INSERT INTO logs (" .. M.COLUMNS .. ") SELECT " .. M.COLUMNS ..
      " FROM json_populate_recordset(NULL::logs, $1::json) ON CONFLICT (uid) DO NOTHING " ..
      "RETURNING token_id, group_id, channel_id, amount, created_at", cjson.encode(rows))
    add_to(tx, "tokens", "bigint", sums(inserted, "token_id"))
    add_to(tx, "groups", "text", sums(inserted, "group_id"))
    add_to(tx, "channels", "bigint", sums(inserted, "channel_id"))
    return #inserted
  end)
  if not done then
    return nil, type(res) == "table" and res.text or (tostring(res) .. " (SQLSTATE " .. tostring(state) .. ")")
  end
  return true
end

M.queue = batch.new{
  name = "aiproxy-logs",
  flush = flush,
  interval = tonumber(os.getenv("AIPROXY_LOG_FLUSH_INTERVAL") or "") or 1,
  max_rows = 500,
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
