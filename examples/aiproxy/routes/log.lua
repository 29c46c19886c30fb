-- Request logs (written in batches by lib/accounting.lua):
--   GET /api/logs/        filters: start_timestamp, end_timestamp (ms), model_name,
--                         channel (id), group, token_name, request_id,
--                         code_type=all|success|error; page, per_page -> {logs, total}
--   GET /api/log/:group   the same, within one group
--   DELETE /api/logs/?timestamp=<ms>   deletes the rows older than that -> {deleted}
-- Newest first. Rows of the last second may still be on their way (batching).
local pg = require "moongate.postgres"
local util = require "lib.util"

local ok, fail = util.ok, util.fail
local H = {}

local COLUMNS = "id, request_id, created_at, group_id, token_id, token_name, model, upstream_model, " ..
                "channel_id, endpoint, code, content, prompt_tokens, completion_tokens, total_tokens, " ..
                "usage_estimated, amount, latency_ms, ttfb_ms, retries, stream, client_aborted, ip"

local function format(r)
  r.group, r.group_id = r.group_id, nil
  r.channel, r.channel_id = r.channel_id, nil
  return r
end

local function int_arg(req, name)
  local v = req.query[name]
  if v == nil or v == "" then return true, nil end
  if type(v) ~= "string" or not v:match("^%d+$") or #v > 15 then return false, name .. " must be a non-negative integer" end
  return true, tonumber(v)
end

local function list(req, group)
  local page, per = util.pagination(req)
  if not page then return fail(400, per) end
  local where, args = {}, {}
  local function add(cond, v)
    args[#args + 1] = v
    where[#where + 1] = cond:gsub("%?", "$" .. #args)
  end
  if group then add("group_id = ?", group) end
  for _, f in ipairs({ { "start_timestamp", "created_at >= ?" }, { "end_timestamp", "created_at <= ?" },
                       { "channel", "channel_id = ?" } }) do
    local good, v = int_arg(req, f[1])
    if not good then return fail(400, v) end
    if v then add(f[2], v) end
  end
  for _, f in ipairs({ { "model_name", "model = ?" }, { "token_name", "token_name = ?" },
                       { "request_id", "request_id = ?" }, { "group", "group_id = ?" } }) do
    local v = req.query[f[1]]
    if type(v) == "string" and v ~= "" and not (f[1] == "group" and group) then add(f[2], v) end
  end
  local ct = req.query.code_type
  if ct == "success" then where[#where + 1] = "code = 200"
  elseif ct == "error" then where[#where + 1] = "code <> 200"
  elseif ct ~= nil and ct ~= "" and ct ~= "all" then return fail(400, "code_type must be all, success or error") end
  local cond = #where > 0 and (" WHERE " .. table.concat(where, " AND ")) or ""
  local c, e, s = pg.query("SELECT count(*) AS n FROM logs" .. cond, unpack(args))
  if not c then return util.db_fail(e, s) end
  args[#args + 1] = per
  args[#args + 1] = (page - 1) * per
  local rows, e2, s2 = pg.query("SELECT " .. COLUMNS .. " FROM logs" .. cond ..
                                " ORDER BY created_at DESC, id DESC LIMIT $" .. (#args - 1) ..
                                " OFFSET $" .. #args, unpack(args))
  if not rows then return util.db_fail(e2, s2) end
  local out = {}
  for i, r in ipairs(rows) do out[i] = format(r) end
  return ok({ logs = util.array(out), total = c[1].n })
end

function H.list(req) return list(req, nil) end
function H.group(req) return list(req, req.params.group) end

function H.delete(req)
  local good, ts = int_arg(req, "timestamp")
  if not good then return fail(400, ts) end
  if not ts then return fail(400, "timestamp is required (unix milliseconds; older rows are deleted)") end
  local rows, e, s = pg.query("WITH d AS (DELETE FROM logs WHERE created_at < $1 RETURNING 1) SELECT count(*) AS n FROM d", ts)
  if not rows then return util.db_fail(e, s) end
  return ok({ deleted = rows[1].n })
end

return util.admin_handler(H)
