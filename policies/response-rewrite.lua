-- response-rewrite: change the answer before it is sent.
--
--   { "response-rewrite",
--     status = { [502] = 503 },                       -- map statuses
--     headers = { set = { ["Cache-Control"] = "no-store" }, remove = { "Server", "X-Powered-By" } },
--     json = { set = { served_by = "moongate" }, remove = { "internal_id" } } }
--
-- Status and header changes also apply to streamed answers (they are made
-- before the head is sent); JSON body changes apply to answers whose body is a
-- Lua table or a JSON object string, and leave streams and other bodies alone.
local cjson = require "cjson.safe"

local function remove_header(headers, name)
  local lname = name:lower()
  for k in pairs(headers) do
    if type(k) == "string" and k:lower() == lname then headers[k] = nil end
  end
end

return {
  schema = {
    status = { type = "table", default = {} },
    headers = { type = "table", default = {} },
    json = { type = "table", default = {} },
  },

  init = function(conf)
    for from, to in pairs(conf.status) do
      if type(from) ~= "number" or type(to) ~= "number" or to < 100 or to > 599 then
        error("status: expected { [from] = to } with HTTP statuses", 0)
      end
    end
  end,

  response = function(conf, req, res)
    local to = conf.status[res.status]
    if to then res.status = to end
    for _, name in ipairs(conf.headers.remove or {}) do remove_header(res.headers, name) end
    for name, v in pairs(conf.headers.set or {}) do
      remove_header(res.headers, name)
      res.headers[name] = v
    end
    local j = conf.json
    if (j.set or j.remove) and not res.streaming then
      local body = res.body
      if type(body) == "string" then body = cjson.decode(body) end
      if type(body) == "table" and (next(body) == nil or body[1] == nil) then
        for _, k in ipairs(j.remove or {}) do body[k] = nil end
        for k, v in pairs(j.set or {}) do body[k] = v end
        res.body = body
        res.raw = nil
      end
    end
  end,
}
