-- request-rewrite: change the request before the handler or the proxy sees it.
--
--   { "request-rewrite",
--     path = { "^/api/v1/(.*)$", "/%1" },                 -- Lua pattern, replacement
--     headers = { set = { ["X-Env"] = "prod" }, add = { Via = "moongate" },
--                 remove = { "Cookie" }, rename = { ["X-Old"] = "X-New" } },
--     query = { set = { debug = "0" }, remove = { "token" } },
--     json = { set = { stream = false }, remove = { "user" }, rename = { prompt = "input" } } }
--
-- Paths use Lua patterns (string.gsub: no alternation, %1..%9 captures);
-- they are anchored only if you write ^ and $. JSON rewrites apply to a JSON
-- object body and leave any other body alone.
local cjson = require "cjson.safe"

local encode_query = require("moongate.request").encode_query

return {
  schema = {
    path = { type = "array", items = "string" },
    headers = { type = "table", default = {} },
    query = { type = "table", default = {} },
    json = { type = "table", default = {} },
  },

  init = function(conf)
    if conf.path then
      if #conf.path ~= 2 then error('path: expected { "pattern", "replacement" }', 0) end
      local ok, err = pcall(string.gsub, "/", conf.path[1], conf.path[2])
      if not ok then error("path: bad Lua pattern: " .. tostring(err), 0) end
    end
    for name, t in pairs({ headers = conf.headers, query = conf.query, json = conf.json }) do
      for k in pairs(t) do
        if not ({ set = 1, add = 1, remove = 1, rename = 1 })[k] or (name ~= "headers" and k == "add")
           or (name == "query" and k == "rename") then
          error(string.format("%s.%s: unknown operation", name, tostring(k)), 0)
        end
      end
    end
  end,

  access = function(conf, req)
    if conf.path then req.path = req.path:gsub(conf.path[1], conf.path[2]) end
    local h = conf.headers
    for old, new in pairs(h.rename or {}) do
      local v = req.headers[old]
      if v then req:set_header(new, v); req:set_header(old, nil) end
    end
    for _, name in ipairs(h.remove or {}) do req:set_header(name, nil) end
    for name, v in pairs(h.set or {}) do req:set_header(name, v) end
    for name, v in pairs(h.add or {}) do
      local cur = req.headers[name]
      req:set_header(name, cur and (cur .. ", " .. v) or v)
    end
    local q = conf.query
    if q.set or q.remove then
      local args = {}
      for k, v in pairs(req.query) do args[k] = v end
      for _, k in ipairs(q.remove or {}) do args[k] = nil end
      for k, v in pairs(q.set or {}) do args[k] = v end
      req.query = args
      req.query_string = encode_query(args)
    end
    local j = conf.json
    if j.set or j.remove or j.rename then
      local body = req:json()
      if type(body) == "table" and (next(body) == nil or body[1] == nil) then
        for old, new in pairs(j.rename or {}) do
          if body[old] ~= nil then body[new], body[old] = body[old], nil end
        end
        for _, k in ipairs(j.remove or {}) do body[k] = nil end
        for k, v in pairs(j.set or {}) do body[k] = v end
        req:set_body(cjson.encode(body))
      end
    end
  end,
}
