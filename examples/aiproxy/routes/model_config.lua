-- Model configs (all optional: a model without one has no limits, price 0,
-- one retry and a 300 s timeout):
--   GET /api/model_configs/, POST|GET|DELETE /api/model_config/:model
--   POST body: {rpm, tpm, input_price, output_price (per 1K tokens),
--               retry_times, timeout (seconds), fallbacks: [model, ...]}
-- A POST replaces the whole config (missing fields take their defaults).
local pg = require "moongate.postgres"
local cjson = require "cjson.safe"
local util = require "lib.util"
local catalog = require "lib.catalog"

local ok, fail = util.ok, util.fail
local H = {}

local COLUMNS = "model, rpm, tpm, input_price, output_price, retry_times, timeout, fallbacks, created_at, updated_at"

local function format(r)
  return {
    model = r.model, rpm = r.rpm, tpm = r.tpm, input_price = r.input_price,
    output_price = r.output_price, retry_times = r.retry_times, timeout = r.timeout,
    fallbacks = util.array(type(r.fallbacks) == "table" and r.fallbacks or nil),
    created_at = r.created_at, updated_at = r.updated_at,
  }
end

local function model_name(req)
  local m = req.params.model
  if m == "" or #m > 128 or m:find("[%z\1-\31\127]") then return nil end
  return m
end

local function number(body, name, default, integer, max)
  local v = body[name]
  if util.is_null(v) then return default end
  if type(v) ~= "number" or v ~= v or v < 0 or v > max or (integer and v % 1 ~= 0) then
    return nil, string.format("%s must be %s between 0 and %g", name, integer and "an integer" or "a number", max)
  end
  return v
end

function H.set(req)
  local model = model_name(req)
  if not model then return fail(400, "model name must be 1-128 characters") end
  local body, err = util.body_object(req)
  if not body then return fail(400, err) end
  local v = {}
  for _, f in ipairs({ { "rpm", 0, true, 1e9 }, { "tpm", 0, true, 1e12 }, { "input_price", 0, false, 1e9 },
                       { "output_price", 0, false, 1e9 }, { "retry_times", catalog.DEFAULT_RETRIES, true, 10 },
                       { "timeout", 0, true, 3600 } }) do
    local x, e = number(body, f[1], f[2], f[3], f[4])
    if x == nil then return fail(400, e) end
    v[f[1]] = x
  end
  local fb = body.fallbacks
  if util.is_null(fb) then fb = {} end
  if type(fb) ~= "table" or (next(fb) ~= nil and fb[1] == nil) then return fail(400, "fallbacks must be a list of model names") end
  for _, m in ipairs(fb) do
    if type(m) ~= "string" or m == "" then return fail(400, "fallbacks must be a list of model names") end
    if m == model then return fail(400, "fallbacks must not contain the model itself") end
  end
  local now = util.now_ms()
  local rows, e, s = pg.query(
    "INSERT INTO model_configs (model, rpm, tpm, input_price, output_price, retry_times, timeout, fallbacks, created_at, updated_at) " ..
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $9) ON CONFLICT (model) DO UPDATE SET " ..
    "rpm = EXCLUDED.rpm, tpm = EXCLUDED.tpm, input_price = EXCLUDED.input_price, " ..
    "output_price = EXCLUDED.output_price, retry_times = EXCLUDED.retry_times, timeout = EXCLUDED.timeout, " ..
    "fallbacks = EXCLUDED.fallbacks, updated_at = EXCLUDED.updated_at RETURNING " .. COLUMNS,
    model, v.rpm, v.tpm, v.input_price, v.output_price, v.retry_times, v.timeout,
    #fb == 0 and "[]" or cjson.encode(fb), now)
  if not rows then return util.db_fail(e, s) end
  catalog.changed()
  return ok(format(rows[1]))
end

function H.get(req)
  local model = model_name(req)
  if not model then return fail(400, "model name must be 1-128 characters") end
  local rows, e, s = pg.query("SELECT " .. COLUMNS .. " FROM model_configs WHERE model = $1", model)
  if not rows then return util.db_fail(e, s) end
  if not rows[1] then return fail(404, "model config %q not found", model) end
  return ok(format(rows[1]))
end

function H.list(req)
  local rows, e, s = pg.query("SELECT " .. COLUMNS .. " FROM model_configs ORDER BY model")
  if not rows then return util.db_fail(e, s) end
  local out = {}
  for i, r in ipairs(rows) do out[i] = format(r) end
  return ok({ configs = util.array(out), total = #out })
end

function H.delete(req)
  local model = model_name(req)
  if not model then return fail(400, "model name must be 1-128 characters") end
  local rows, e, s = pg.query("DELETE FROM model_configs WHERE model = $1 RETURNING model", model)
  if not rows then return util.db_fail(e, s) end
  if not rows[1] then return fail(404, "model config %q not found", model) end
  catalog.changed()
  return ok(nil)
end

return util.admin_handler(H)
