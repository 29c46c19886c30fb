-- Settings schemas: the one way a policy (or the config loader) declares the
-- settings it takes. A schema is a table of field specs:
--
--   { header  = { type = "string", default = "X-Request-ID" },
--     limit   = { type = "integer", required = true, min = 1 },
--     window  = { type = "duration", default = "1m" },   -- becomes milliseconds
--     size    = { type = "size", default = "1m" },       -- becomes bytes
--     shape   = { type = "string", one_of = { "message", "openai" } },
--     origins = { type = "array", items = "string" } }
--
-- check() returns a new table with defaults filled in and durations/sizes
-- converted, or raises an error whose message names the field.
local core = require "moongate.core"

local M = {}

local function describe(v)
  local t = type(v)
  if t == "string" then return string.format("string %q", v) end
  return t
end

local converters = {
  string = function(v) if type(v) == "string" then return v end end,
  number = function(v) if type(v) == "number" then return v end end,
  integer = function(v)
    if type(v) == "number" and v == math.floor(v) then return v end
  end,
  boolean = function(v) if type(v) == "boolean" then return v end end,
  table = function(v) if type(v) == "table" then return v end end,
  ["function"] = function(v) if type(v) == "function" then return v end end,
  duration = function(v)
    if type(v) == "number" and v >= 0 then return v * 1000 end
    if type(v) == "string" then return core.parse_duration(v) end
  end,
  size = function(v)
    if type(v) == "number" and v >= 0 then return v end
    if type(v) == "string" then return core.parse_size(v) end
  end,
}

local expected = {
  string = "a string", number = "a number", integer = "an integer",
  boolean = "true or false", table = "a table", ["function"] = "a function",
  duration = 'a duration like "10s", "500ms" or "1m"',
  size = 'a size like "512", "32k" or "1m"', array = "a list",
}

local function convert(spec, value, where)
  local ty = spec.type or "string"
  if ty == "array" then
    if type(value) ~= "table" then
      error(string.format("%s: expected a list, got %s", where, describe(value)), 0)
    end
    local out = {}
    for i, item in ipairs(value) do
      out[i] = convert({ type = spec.items or "string", one_of = spec.one_of },
                       item, string.format("%s[%d]", where, i))
    end
    for k in pairs(value) do
      if type(k) ~= "number" or k < 1 or k > #value or k ~= math.floor(k) then
        error(string.format("%s: expected a list, got a table with key %s", where,
                            tostring(k)), 0)
      end
    end
    return out
  end
  local conv = converters[ty]
  if not conv then error("schema: unknown type " .. tostring(ty), 0) end
  local out = conv(value)
  if out == nil then
    error(string.format("%s: expected %s, got %s", where, expected[ty], describe(value)), 0)
  end
  if spec.one_of then
    local ok = false
    for _, allowed in ipairs(spec.one_of) do
      if allowed == out then ok = true break end
    end
    if not ok then
      local names = {}
      for i, a in ipairs(spec.one_of) do names[i] = string.format("%q", a) end
      error(string.format("%s: must be one of %s, got %s", where,
                          table.concat(names, ", "), describe(value)), 0)
    end
  end
  if spec.min and type(out) == "number" and out < spec.min then
    error(string.format("%s: must be at least %s", where, tostring(spec.min)), 0)
  end
  if spec.max and type(out) == "number" and out > spec.max then
    error(string.format("%s: must be at most %s", where, tostring(spec.max)), 0)
  end
  return out
end

-- Checks `values` against `schema`. `where` prefixes every field name:
-- 'routes[2] (GET /x): policy "rate-limit"' gives 'routes[2] (GET /x): policy
-- "rate-limit": limit: ...', "limits." gives "limits.body: ...", "" gives the
-- bare field name. Positional entries (the policy's name) are skipped.
local function field_name(where, key)
  if where == "" then return key end
  if where:sub(-1) == "." then return where .. key end
  return where .. ": " .. key
end

function M.check(schema, values, where)
  local out = {}
  values = values or {}
  where = where or ""
  for key, value in pairs(values) do
    if type(key) == "string" and not schema[key] then
      local known = {}
      for k in pairs(schema) do known[#known + 1] = k end
      table.sort(known)
      error(string.format('%s: unknown field (known: %s)', field_name(where, key),
                          #known > 0 and table.concat(known, ", ") or "none"), 0)
    end
  end
  for key, spec in pairs(schema) do
    local value = values[key]
    local field = field_name(where, key)
    if value == nil then
      if spec.required then error(field .. ": is required", 0) end
      if spec.default ~= nil then out[key] = convert(spec, spec.default, field) end
    else
      out[key] = convert(spec, value, field)
    end
  end
  return out
end

return M
