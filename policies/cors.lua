-- cors: Cross-Origin Resource Sharing for browser clients on other origins.
--
-- A request with an `Origin` header that is allowed gets
-- `Access-Control-Allow-Origin` (plus `-Allow-Credentials` and
-- `-Expose-Headers` when configured); a disallowed origin gets no CORS
-- headers at all, so the browser blocks the answer (the request itself is
-- still served, as with any CORS implementation: CORS is not access control).
-- Every answer carries `Vary: Origin`, so caches keep one copy per origin.
--
-- A preflight (OPTIONS with `Origin` and `Access-Control-Request-Method`) is
-- answered 204 from the access phase, before the handler runs: with
-- `-Allow-Origin`, `-Allow-Methods`, `-Allow-Headers` (the configured list, or
-- the requested headers echoed back when `headers` is empty), `-Max-Age` and
-- `-Allow-Credentials` when the origin is allowed, and with no CORS header
-- when it is not. The handler never sees a preflight.
--
-- IMPORTANT: the preflight only reaches this policy when the route accepts
-- OPTIONS. For a route that does not, the server answers 405 itself before
-- any access phase runs. List it in the route's methods:
--
--   { { "POST", "OPTIONS" }, "/api/v1/analyze", handler = "routes/analyze.lua" }
--   { "GET|POST|OPTIONS", "/items", handler = ... }      -- or "ANY"
--
-- A plain OPTIONS (no Access-Control-Request-Method) does reach the handler.
--
-- Settings:
--   origins = { "https://app.example.com" }   exact origins (scheme://host[:port],
--                                             compared case-insensitively)
--   origins = { "*" }                         any origin (the default); sent as
--                                             "*", or the origin itself when
--                                             credentials = true
--   origins = { "^https://[%w-]+%.example%.com$" }   an entry starting with "^"
--                                             is a Lua pattern, anchored
--   methods = { "GET", "POST", ... }          for Access-Control-Allow-Methods
--   headers = {}                              Access-Control-Allow-Headers; empty
--                                             = echo Access-Control-Request-Headers
--   credentials = false                       Access-Control-Allow-Credentials: true
--   max_age = 0                               seconds a preflight may be cached;
--                                             0 = no Access-Control-Max-Age
--   expose_headers = {}                       Access-Control-Expose-Headers
--
--   policies = { "request-id", "errors",
--                { "cors", origins = { "http://localhost:4321" },
--                  methods = { "POST", "OPTIONS" }, max_age = 600 } }

local function header_get(headers, name)
  local lname = name:lower()
  for k, v in pairs(headers) do
    if type(k) == "string" and k:lower() == lname then return k, v end
  end
  return nil
end

-- Adds `token` to the Vary header of a response, once, whatever the case of
-- the existing header name.
local function add_vary(headers, token)
  local k, v = header_get(headers, "Vary")
  if not k then headers["Vary"] = token return end
  if v == "*" then return end
  for t in tostring(v):gmatch("[^,%s]+") do
    if t:lower() == token:lower() then return end
  end
  headers[k] = v .. ", " .. token
end

-- Returns the value for Access-Control-Allow-Origin, or nil when `origin`
-- is not allowed.
local function allowed(conf, origin)
  if origin == nil or origin == "" then return nil end
  local lower = origin:lower()
  for _, o in ipairs(conf.origins) do
    if o == "*" then
      return conf.credentials and origin or "*"
    elseif o:sub(1, 1) == "^" then
      if origin:find(o) then return origin end
    elseif o:lower() == lower then
      return origin
    end
  end
  return nil
end

local function list_value(t) return table.concat(t, ", ") end

return {
  schema = {
    origins = { type = "array", items = "string", default = { "*" } },
    methods = { type = "array", items = "string",
                default = { "GET", "HEAD", "PUT", "PATCH", "POST", "DELETE" } },
    headers = { type = "array", items = "string", default = {} },
    credentials = { type = "boolean", default = false },
    max_age = { type = "integer", default = 0, min = 0 },
    expose_headers = { type = "array", items = "string", default = {} },
  },

  init = function(conf)
    if #conf.origins == 0 then error("origins: needs at least one origin (or \"*\")", 0) end
    for i, o in ipairs(conf.origins) do
      if o:sub(1, 1) == "^" then
        local ok, err = pcall(string.find, "", o)
        if not ok then
          error(string.format("origins[%d]: bad Lua pattern %q: %s", i, o, tostring(err)), 0)
        end
      elseif o ~= "*" and not o:match("^[%a][%w+.-]*://[^/%s]+$") then
        error(string.format('origins[%d]: expected "*", an origin like "https://example.com" '
                            .. 'or a pattern starting with "^", got %q', i, o), 0)
      end
    end
    for i, m in ipairs(conf.methods) do
      if not m:match("^[%w!#$%%&'*+.^_`|~-]+$") then
        error(string.format("methods[%d]: not a method name: %q", i, m), 0)
      end
    end
  end,

  access = function(conf, req)
    if req.method ~= "OPTIONS" then return end
    local origin = req.headers["origin"]
    local want = req.headers["access-control-request-method"]
    if not origin or not want then return end        -- a plain OPTIONS: the handler's
    req.ctx.cors_preflight = true
    local h = { ["Vary"] = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers" }
    local allow = allowed(conf, origin)
    if allow then
      h["Access-Control-Allow-Origin"] = allow
      h["Access-Control-Allow-Methods"] = list_value(conf.methods)
      if #conf.headers > 0 then
        h["Access-Control-Allow-Headers"] = list_value(conf.headers)
      else
        local asked = req.headers["access-control-request-headers"]
        if asked and asked ~= "" then h["Access-Control-Allow-Headers"] = asked end
      end
      if conf.credentials then h["Access-Control-Allow-Credentials"] = "true" end
      if conf.max_age > 0 then h["Access-Control-Max-Age"] = tostring(conf.max_age) end
    end
    return 204, nil, h
  end,

  response = function(conf, req, res)
    if req.ctx.cors_preflight then return end        -- answered complete by access
    add_vary(res.headers, "Origin")
    local allow = allowed(conf, req.headers["origin"])
    if not allow then return end
    res.headers["Access-Control-Allow-Origin"] = allow
    if conf.credentials then res.headers["Access-Control-Allow-Credentials"] = "true" end
    if #conf.expose_headers > 0 then
      res.headers["Access-Control-Expose-Headers"] = list_value(conf.expose_headers)
    end
  end,
}
