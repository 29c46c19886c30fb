-- Channels (upstream provider accounts):
--   POST /api/channel/ {type, name, key, base_url, models, model_mapping?, priority?, status?}
--   GET /api/channels/ (?page=&per_page=&status=), GET|PUT|DELETE /api/channel/:id,
--   POST /api/channel/:id/status {"status": 1|2}
-- Answers never carry a channel key in full (masked: "sk-a****wxyz").
local pg = require "moongate.postgres"
local cjson = require "cjson.safe"
local util = require "lib.util"
local catalog = require "lib.catalog"

local ok, fail = util.ok, util.fail
local H = {}

local COLUMNS = "id, type, name, key, base_url, models, model_mapping, priority, status, " ..
                "created_at, accessed_at, request_count, used_amount"
local TYPES = { openai = true }

local function mask(key)
  if #key <= 8 then return string.rep("*", #key) end
  return key:sub(1, 4) .. "****" .. key:sub(-4)
end

local function format(r)
  local mapping = type(r.model_mapping) == "table" and r.model_mapping or {}
  return {
    id = r.id, type = r.type, name = r.name, key = mask(r.key), base_url = r.base_url,
    models = util.array(type(r.models) == "table" and r.models or nil),
    model_mapping = mapping,            -- an empty table encodes as {}
    priority = r.priority, status = r.status, created_at = r.created_at,
    accessed_at = r.accessed_at, request_count = r.request_count, used_amount = r.used_amount,
  }
end

local function channel_id(req)
  local id = req.params.id
  if not id:match("^%d+$") or #id > 15 then return nil end
  return tonumber(id)
end

-- Checks the fields present in body; `full` requires the create-time ones.
-- Returns the column values to write, or nil, message.
local function fields(body, full)
  local out = {}
  local function str(name, max)
    local v = body[name]
    if util.is_null(v) then
      if full then return nil, name .. " is required" end
      return true
    end
    if type(v) ~= "string" or v == "" then return nil, name .. " must be a non-empty string" end
    if #v > max then return nil, string.format("%s is too long (at most %d characters)", name, max) end
    if v:find("[%z\1-\31\127]") then return nil, name .. " must not contain control characters" end
    out[name] = v
    return true
  end
  if util.is_null(body.type) and full then body.type = "openai" end
  local okk, err = str("type", 32)
  if not okk then return nil, err end
  if out.type and not TYPES[out.type] then return nil, string.format('type %q is not supported (use "openai" for any OpenAI-compatible API)', out.type) end
  for _, f in ipairs({ { "name", 64 }, { "key", 512 }, { "base_url", 512 } }) do
    okk, err = str(f[1], f[2])
    if not okk then return nil, err end
  end
  if out.base_url then
    if not out.base_url:match("^https?://[^/%s]+") then
      return nil, 'base_url must be an http(s) URL like "https://api.openai.com/v1"'
    end
    out.base_url = catalog.normalize_base_url(out.base_url)
  end
  if not util.is_null(body.models) then
    local m = body.models
    if type(m) ~= "table" or (next(m) ~= nil and m[1] == nil) then return nil, "models must be a list of model names" end
    local n = 0
    for _ in pairs(m) do n = n + 1 end
    if n ~= #m then return nil, "models must be a list of model names" end
    for _, s in ipairs(m) do
      if type(s) ~= "string" or s == "" or #s > 128 then return nil, "models must be a list of non-empty model names" end
    end
    out.models = #m == 0 and "[]" or cjson.encode(m)
  elseif full then
    return nil, "models is required (the models this channel serves)"
  end
  if not util.is_null(body.model_mapping) then
    local mm = body.model_mapping
    if type(mm) ~= "table" or (next(mm) ~= nil and mm[1] ~= nil) then return nil, "model_mapping must be an object of model names" end
    for k, v in pairs(mm) do
      if type(k) ~= "string" or type(v) ~= "string" or v == "" then
        return nil, "model_mapping must map model names to model names"
      end
    end
    out.model_mapping = next(mm) == nil and "{}" or cjson.encode(mm)
  end
  if not util.is_null(body.priority) then
    local p = body.priority
    if type(p) ~= "number" or p % 1 ~= 0 or p < 0 or p > 1000000 then return nil, "priority must be an integer >= 0" end
    out.priority = p
  end
  if not util.is_null(body.status) then
    if body.status ~= 1 and body.status ~= 2 then return nil, "status must be 1 (enabled) or 2 (disabled)" end
    out.status = body.status
  end
  return out
end

function H.create(req)
  local body, err = util.body_object(req)
  if not body then return fail(400, err) end
  local f, ferr = fields(body, true)
  if not f then return fail(400, ferr) end
  local rows, e, s = pg.query(
    "INSERT INTO channels (type, name, key, base_url, models, model_mapping, priority, status, created_at) " ..
    "VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7, $8, $9) RETURNING " .. COLUMNS,
    f.type, f.name, f.key, f.base_url, f.models, f.model_mapping or "{}", f.priority or 10,
    f.status or 1, util.now_ms())
  if not rows then return util.db_fail(e, s) end
  catalog.changed()
  return ok(format(rows[1]))
end

function H.list(req)
  local page, per = util.pagination(req)
  if not page then return fail(400, per) end
  local cond, args = "", {}
  local status = req.query.status
  if status ~= nil and status ~= "" then
    if status ~= "1" and status ~= "2" then return fail(400, "status must be 1 (enabled) or 2 (disabled)") end
    cond, args = " WHERE status = $1", { tonumber(status) }
  end
  local c, e, s = pg.query("SELECT count(*) AS n FROM channels" .. cond, unpack(args))
  if not c then return util.db_fail(e, s) end
  args[#args + 1] = per
  args[#args + 1] = (page - 1) * per
  local rows, e2, s2 = pg.query("SELECT " .. COLUMNS .. " FROM channels" .. cond ..
                                " ORDER BY id DESC LIMIT $" .. (#args - 1) .. " OFFSET $" .. #args, unpack(args))
  if not rows then return util.db_fail(e2, s2) end
  local out = {}
  for i, r in ipairs(rows) do out[i] = format(r) end
  return ok({ channels = util.array(out), total = c[1].n })
end

function H.get(req)
  local id = channel_id(req)
  if not id then return fail(400, "channel id must be a positive integer") end
  local rows, e, s = pg.query("SELECT " .. COLUMNS .. " FROM channels WHERE id = $1", id)
  if not rows then return util.db_fail(e, s) end
  if not rows[1] then return fail(404, "channel %d not found", id) end
  return ok(format(rows[1]))
end

function H.update(req)
  local id = channel_id(req)
  if not id then return fail(400, "channel id must be a positive integer") end
  local body, err = util.body_object(req)
  if not body then return fail(400, err) end
  local f, ferr = fields(body, false)
  if not f then return fail(400, ferr) end
  local sets, args = {}, {}
  for _, col in ipairs({ "type", "name", "key", "base_url", "models", "model_mapping", "priority", "status" }) do
    if f[col] ~= nil then
      args[#args + 1] = f[col]
      local cast = (col == "models" or col == "model_mapping") and "::jsonb" or ""
      sets[#sets + 1] = col .. " = $" .. #args .. cast
    end
  end
  if #sets == 0 then return fail(400, "nothing to update") end
  args[#args + 1] = id
  local rows, e, s = pg.query("UPDATE channels SET " .. table.concat(sets, ", ") ..
                              " WHERE id = $" .. #args .. " RETURNING " .. COLUMNS, unpack(args))
  if not rows then return util.db_fail(e, s) end
  if not rows[1] then return fail(404, "channel %d not found", id) end
  catalog.changed()
  return ok(format(rows[1]))
end

function H.delete(req)
  local id = channel_id(req)
  if not id then return fail(400, "channel id must be a positive integer") end
  local rows, e, s = pg.query("DELETE FROM channels WHERE id = $1 RETURNING id", id)
  if not rows then return util.db_fail(e, s) end
  if not rows[1] then return fail(404, "channel %d not found", id) end
  catalog.changed()
  return ok(nil)
end

function H.status(req)
  local id = channel_id(req)
  if not id then return fail(400, "channel id must be a positive integer") end
  local body, err = util.body_object(req)
  if not body then return fail(400, err) end
  if body.status ~= 1 and body.status ~= 2 then return fail(400, "status must be 1 (enabled) or 2 (disabled)") end
  local rows, e, s = pg.query("UPDATE channels SET status = $1 WHERE id = $2 RETURNING " .. COLUMNS, body.status, id)
  if not rows then return util.db_fail(e, s) end
  if not rows[1] then return fail(404, "channel %d not found", id) end
  catalog.changed()
  return ok(format(rows[1]))
end

return util.admin_handler(H)
