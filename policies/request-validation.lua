-- request-validation: refuse bodies that are too big or not of the expected
-- JSON shape, before the handler runs, with a 400 that names the field.
--
--   { "request-validation", max_body = "64k", json = true,
--     required = { "model", "messages" },
--     fields = { model = { type = "string", min_len = 1, max_len = 64 },
--                temperature = { type = "number", min = 0, max = 2 },
--                messages = { type = "array" }, stream = { type = "boolean" } } }
--
-- Settings:
--   max_body   a size; a larger body -> 413 (the route's own `body` limit is
--              enforced by the server before the body is even read)
--   json       the body must be a JSON object (default: true when `required`
--              or `fields` are given)
--   required   field names that must be present (and not null)
--   fields     name = { type = "string"|"number"|"integer"|"boolean"|"array"|"object",
--                       min_len, max_len (strings and arrays), min, max (numbers) }
-- The decoded body stays available as req:json().
local cjson = require "cjson"

local json_types = {
  string = function(v) return type(v) == "string" end,
  number = function(v) return type(v) == "number" end,
  integer = function(v) return type(v) == "number" and v % 1 == 0 end,
  boolean = function(v) return type(v) == "boolean" end,
  array = function(v) return type(v) == "table" and (next(v) == nil or v[1] ~= nil) end,
  object = function(v) return type(v) == "table" and (next(v) == nil or v[1] == nil) end,
}

local function check_field(name, spec, v)
  if not json_types[spec.type](v) then
    return string.format("field %s must be %s %s", name, spec.type == "integer" and "an" or "a", spec.type)
  end
  if spec.type == "string" or spec.type == "array" then
    local n = spec.type == "string" and #v or #v
    if spec.min_len and n < spec.min_len then
      return string.format("field %s must have at least %d %s", name, spec.min_len,
                           spec.type == "string" and "characters" or "items")
    end
    if spec.max_len and n > spec.max_len then
      return string.format("field %s must have at most %d %s", name, spec.max_len,
                           spec.type == "string" and "characters" or "items")
    end
  elseif spec.type == "number" or spec.type == "integer" then
    if spec.min and v < spec.min then return string.format("field %s must be at least %s", name, spec.min) end
    if spec.max and v > spec.max then return string.format("field %s must be at most %s", name, spec.max) end
  end
end

return {
  schema = {
    max_body = { type = "size" },
    json = { type = "boolean" },
    required = { type = "array", items = "string", default = {} },
    fields = { type = "table", default = {} },
  },

  init = function(conf)
    for name, spec in pairs(conf.fields) do
      if type(name) ~= "string" or type(spec) ~= "table" then
        error("fields: expected name = { type = ... }", 0)
      end
      if not json_types[spec.type] then
        error(string.format("fields.%s.type: must be string, number, integer, boolean, array or object", name), 0)
      end
      for k in pairs(spec) do
        if not ({ type = 1, min_len = 1, max_len = 1, min = 1, max = 1 })[k] then
          error(string.format("fields.%s: unknown setting %q", name, tostring(k)), 0)
        end
      end
    end
    if conf.json == nil then conf.json = #conf.required > 0 or next(conf.fields) ~= nil end
  end,

  access = function(conf, req)
    local body = req:body()
    if conf.max_body and #body > conf.max_body then return 413, "request body too large" end
    if not conf.json then return end
    local v = req:json()
    if type(v) ~= "table" or (next(v) ~= nil and v[1] ~= nil) then
      return 400, "request body must be a JSON object"
    end
    for _, name in ipairs(conf.required) do
      if v[name] == nil or v[name] == cjson.null then return 400, "field " .. name .. " is required" end
    end
    for name, spec in pairs(conf.fields) do
      local fv = v[name]
      if fv ~= nil and fv ~= cjson.null then
        local err = check_field(name, spec, fv)
        if err then return 400, err end
      end
    end
  end,
}
