-- examples/image-gateway: the image-analysis gateway (BFF) between a browser
-- front end and a Keras/FastAPI inference service.
--
--   build/moongate examples/image-gateway/gateway.lua
--
-- POST /api/v1/analyze  {"base64Image": "..."}  ->  POST INFERENCE_SERVICE_URL
--                       {"image_data": "..."}; the service's list of
--                       {label, confidence} is returned as is (routes/analyze.lua)
-- GET  /                the upload page (public/, routes/static.lua)
-- GET  /health          built in
--
-- Environment (read at start and on every reload):
--   LISTEN_ADDR            ":8080"                          (--port overrides it)
--   INFERENCE_SERVICE_URL  "http://localhost:8000/predict"  the full URL of the
--                          predict endpoint; "url1,url2,..." = several instances,
--                          balanced round-robin, with passive health
--   INFERENCE_TIMEOUT      "10s"  a Go duration ("1500ms", "1m30s"): the whole call
--   CORS_ORIGINS           "http://localhost:4321"  comma list; "*" or "^lua-pattern" too
-- A bad value stops the start (or the reload) with a message naming the variable.
local core = require "moongate.core"

local function env(name, default)
  local v = os.getenv(name)
  if v == nil then return default end
  return v
end

local function refuse(name, fmt, ...)
  error(name .. ": " .. string.format(fmt, ...), 0)
end

-- Go's time.ParseDuration: "300ms", "1.5h", "2h45m", "-1s" (sign allowed, a
-- unit on every number, "0" alone). Returns seconds, or nil.
local units = { ns = 1e-9, us = 1e-6, ["\194\181s"] = 1e-6, ["\206\188s"] = 1e-6,
                ms = 1e-3, s = 1, m = 60, h = 3600 }
local function go_duration(s)
  if s == "0" or s == "+0" or s == "-0" then return 0 end
  local sign, rest = s:match("^([+-]?)(.+)$")
  if not rest then return nil end
  local total, pos = 0, 1
  while pos <= #rest do
    local num, unit, nxt = rest:match("^(%d*%.?%d*)([^%d%.]+)()", pos)
    if not num or num == "" or num == "." then return nil end
    -- the unit runs until the next digit or dot
    local factor = units[unit]
    if not factor then return nil end
    total = total + tonumber(num) * factor
    pos = nxt
  end
  if pos == 1 then return nil end
  return sign == "-" and -total or total
end

local listen = env("LISTEN_ADDR", ":8080")
do
  local host, err = core.parse_listen(listen)
  if not host then refuse("LISTEN_ADDR", "%s (got %q)", err, listen) end
end

local timeout_s
do
  local raw = env("INFERENCE_TIMEOUT", "10s")
  timeout_s = go_duration(raw)
  if not timeout_s then
    refuse("INFERENCE_TIMEOUT", 'invalid duration %q (expected a Go duration like "10s", "1500ms" or "1m30s")', raw)
  end
  if timeout_s < 0.001 then
    refuse("INFERENCE_TIMEOUT", "must be at least 1ms, got %q", raw)
  end
end

local targets = {}
do
  local raw = env("INFERENCE_SERVICE_URL", "http://localhost:8000/predict")
  for part in (raw .. ","):gmatch("([^,]*),") do
    local url = part:match("^%s*(.-)%s*$")
    if url ~= "" then
      local scheme, authority, path = url:match("^(https?)://([^/?#]+)([^?#]*)$")
      local host, port
      if authority then
        host, port = authority:match("^(%[[%x:.]+%]):?(%d*)$")
        if not host then host, port = authority:match("^([%w%.%-_]+):?(%d*)$") end
      end
      if not host or (port ~= "" and (tonumber(port) < 1 or tonumber(port) > 65535))
         or authority:find("@") then
        refuse("INFERENCE_SERVICE_URL", 'invalid URL %q (expected like "http://localhost:8000/predict")', url)
      end
      targets[#targets + 1] = url
    end
  end
  if #targets == 0 then
    refuse("INFERENCE_SERVICE_URL", 'no URL given (expected like "http://localhost:8000/predict")')
  end
end

local origins = {}
do
  local raw = env("CORS_ORIGINS", "http://localhost:4321")
  for part in (raw .. ","):gmatch("([^,]*),") do
    local o = part:match("^%s*(.-)%s*$")
    if o ~= "" then
      if not (o == "*" or o:sub(1, 1) == "^" or o:match("^https?://[^/%s]+$")) then
        refuse("CORS_ORIGINS", 'invalid origin %q (expected like "http://localhost:4321", "*" or a "^pattern")', o)
      end
      origins[#origins + 1] = o
    end
  end
  if #origins == 0 then refuse("CORS_ORIGINS", "no origin given") end
end

local timeout_ms = math.max(1, math.floor(timeout_s * 1000 + 0.5))

return {
  listen = listen,
  workers = "auto",
  limits = { headers = "32k", body = "1m" },
  policies = {
    "request-id",
    "errors",
    { "cors", origins = origins, methods = { "POST", "OPTIONS" },
      headers = { "Content-Type", "X-Request-ID" }, expose_headers = { "X-Request-ID" },
      max_age = 600 },
  },
  upstreams = {
    inference = {
      targets = targets,                    -- full endpoint URLs: fetched with path = ""
      balance = "round-robin",
      timeout = timeout_ms / 1000,          -- the seed's http.Client{Timeout}
      read_timeout = timeout_ms / 1000,
      connect_timeout = math.min(timeout_ms, 5000) / 1000,
      -- A refused connection means the request never left: try the next
      -- instance. Anything later (timeout, 5xx) is answered as it is.
      retries = math.min(#targets - 1, 10),
      retry_on = { "connect", "dns" },
      retry_non_idempotent = true,
      max_fails = 3, fail_timeout = "10s",  -- passive health
    },
  },
  routes = {
    -- OPTIONS is listed so that CORS preflights reach the cors policy.
    { { "POST", "OPTIONS" }, "/api/v1/analyze", handler = "routes/analyze.lua",
      name = "analyze", body = "20m" },
    { "GET", "/", handler = "routes/static.lua", name = "page" },
    { "GET", "/app.js", handler = "routes/static.lua", name = "page" },
    { "GET", "/app.css", handler = "routes/static.lua", name = "page" },
  },
}
