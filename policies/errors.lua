-- errors: one JSON shape for every error answer of a route.
--
-- Error answers are the ones moongate or a policy produced (404, 405, 413,
-- a Lua error's 500, a 401 from an auth policy...) and a handler's
-- `return 4xx/5xx, "message"`. A handler that returns a table body chose its
-- own shape and is left alone. 5xx messages never carry internal details:
-- a Lua error is always "internal server error".
--
--   shape = "message"   {"message": "..."}                       (default)
--   shape = "openai"    {"error": {"message", "type", "code"}}
--   shape = "template"  the `template` table, where the strings "$message"
--                       and "$status" are replaced (at any depth):
--                       template = { ok = false, error = { text = "$message", code = "$status" } }
--   field = "error"     rename the message field of the "message" shape
--   include_status = true   add "status": <code> to the "message" shape
--   upstream = "pass"   error answers relayed from an upstream keep their body;
--              "replace" gives them this shape too (message from the status)
--
--   policies = { { "errors", shape = "openai" } }
local default_messages = require("moongate.runtime").default_messages

local openai_types = {
  [400] = "invalid_request_error", [401] = "invalid_request_error",
  [403] = "invalid_request_error", [404] = "invalid_request_error",
  [413] = "invalid_request_error", [429] = "rate_limit_exceeded",
}

local function fill(t, msg, status)
  if type(t) == "string" then
    if t == "$status" then return status end
    return (t:gsub("%$message", function() return msg end):gsub("%$status", tostring(status)))
  end
  if type(t) ~= "table" then return t end
  local out = {}
  for k, v in pairs(t) do out[k] = fill(v, msg, status) end
  return out
end

return {
  schema = {
    shape = { type = "string", default = "message", one_of = { "message", "openai", "template" } },
    field = { type = "string", default = "message" },
    include_status = { type = "boolean", default = false },
    template = { type = "table" },
    upstream = { type = "string", default = "pass", one_of = { "pass", "replace" } },
  },
  init = function(conf)
    if conf.shape == "template" and not conf.template then
      error('template: required when shape = "template"', 0)
    end
  end,
  response = function(conf, req, res)
    if res.raw and res.status >= 400 and conf.upstream == "replace" then
      res.error = default_messages[res.status] or (res.status >= 500 and "upstream error" or "request failed")
      res.body, res.raw = nil, nil
    end
    local msg = res.error
    if not msg then return end
    if conf.shape == "openai" then
      res.body = { error = {
        message = msg,
        type = openai_types[res.status] or (res.status >= 500 and "server_error" or "invalid_request_error"),
        code = res.status,
      } }
    elseif conf.shape == "template" then
      res.body = fill(conf.template, msg, res.status)
    else
      local body = { [conf.field] = msg }
      if conf.include_status then body.status = res.status end
      res.body = body
    end
    -- The body is ours now: drop headers that described the upstream's.
    for k in pairs(res.headers) do
      local l = type(k) == "string" and k:lower()
      if l == "content-type" or l == "content-encoding" then res.headers[k] = nil end
    end
  end,
}
