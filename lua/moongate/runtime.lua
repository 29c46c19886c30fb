-- The runtime's Lua side: what happens to one request, from the C dispatch to
-- the log phase. One instance per Lua state (per worker and generation).
--
--   access phase    each policy in the route's chain, in order; one that
--                   returns a status stops the chain and answers
--   handler         returns status, body, headers -- or streams
--   response phase  each policy, in order, may change status/headers/body
--   send
--   log phase       each policy, after the response is sent
--
-- Error responses (404, 405, 413, 500, a policy's rejection, a handler's
-- `return 400, "message"`) carry res.error = message and no body; the
-- `errors` policy turns that into the configured JSON shape. Without it the
-- shape is {"message": ...}. A Lua error never leaks: the client gets 500
-- "internal server error", the traceback goes to the error log.
local core = require "moongate.core"
local cjson = require "cjson"
local config = require "moongate.config"
local request = require "moongate.request"
local apply_response_headers = request.apply_response_headers
local response_set = request.response_set
local proxy = require "moongate.proxy"
local status_of_failure = require("moongate.upstream").status_of_failure
local failure_messages = require("moongate.upstream").messages

local M = {}

-- The JIT compiles a side trace for an exit taken twice, not ten times (its
-- default): a request's code leaves its traces at the same few places (a
-- coroutine resumed after a wait, a policy's early return), and the
-- interpreter ran those paths until the tenth exit. Callgrind, AI relay:
-- 0.85k fewer instructions per relayed request (1.7%). It makes more side
-- traces: room for four times as many, with the machine code they need.
require("jit.opt").start("hotexit=2", "maxtrace=4000", "maxmcode=2048")

local routes, global
local respond, stream_end, response_started = core.respond, core.stream_end, core.response_started
local co_yield, DONE = coroutine.yield, core.DONE
local new_request = request.new
local encode = cjson.encode

local default_messages = {
  [400] = "bad request", [401] = "unauthorized", [403] = "forbidden",
  [404] = "not found", [405] = "method not allowed", [408] = "request timeout",
  [413] = "request body too large", [429] = "too many requests",
  [500] = "internal server error", [502] = "bad gateway",
  [503] = "service unavailable", [504] = "gateway timeout",
}
M.default_messages = default_messages

local function message_for(status)
  return default_messages[status] or (status >= 500 and "server error" or "request failed")
end

-- Builds a response from a handler's or a policy's return values. A handler
-- may also return a response table { status =, headers =, body =, raw = }:
-- raw bodies (e.g. relayed from an upstream) are never reshaped.
local function make_res(status, body, headers, who)
  if type(status) == "table" and status.status then
    local res = status
    -- A proxied answer keeps its headers in the upstream handle until read.
    if not rawget(res, "_upstream") then res.headers = res.headers or {} end
    if res.status >= 400 and not res.raw and (res.body == nil or type(res.body) == "string") then
      res.error, res.body = res.body or message_for(res.status), nil
    end
    return res
  end
  if type(status) ~= "number" or status < 100 or status > 599 or status % 1 ~= 0 then
    error(string.format("%s returned %s where an HTTP status was expected", who,
                        tostring(status)), 0)
  end
  if headers ~= nil and type(headers) ~= "table" then
    error(who .. " returned headers that are not a table", 0)
  end
  -- Made whole by one constructor each: a field added afterwards would
  -- grow the table (one more allocation per request).
  if status >= 400 and (body == nil or type(body) == "string") then
    return { status = status, headers = headers or {}, error = body or message_for(status) }
  end
  return { status = status, headers = headers or {}, body = body }
end

local function run_response_phase(req, res)
  local chain = req._chain
  for i = 1, #chain do
    local p = chain[i]
    if p.response then p.response(p.conf, req, res) end
  end
end
request.hooks.response_phase = run_response_phase

local function has_content_type(headers)
  if headers["Content-Type"] or headers["content-type"] then return true end
  for k in pairs(headers) do
    if type(k) == "string" and k:lower() == "content-type" then return true end
  end
  return false
end

local Fetched = proxy.Response

local function send(req, res)
  req._res = res
  run_response_phase(req, res)
  local body = rawget(res, "body")        -- a held proxied body stays in C (below)
  if body == nil and res.error then body = { message = res.error } end
  -- A fetched answer as the body: held whole on the C side (run() made sure).
  local fetched = type(body) == "table" and getmetatable(body) == Fetched and body or nil
  -- A proxied answer's handle is closed after the log phase (serve).
  local upstream = rawget(res, "_upstream")
  if upstream and body == nil and rawget(res, "_held") then body = upstream end
  if upstream and rawget(res, "headers") == nil then
    -- Nobody looked at the proxied answer's headers: relayed from C as they came
    -- (unless a policy replaced the body: then they go through the table path).
    if type(body) == "table" then
      local _ = res.headers
    else
      respond(req._cx, req._sn, res.status, response_set(req), body or "", upstream)
      return
    end
  end
  local headers = res.headers
  apply_response_headers(req, headers)
  if fetched then                          -- sent from C, as it came
    if not has_content_type(headers) then
      headers["Content-Type"] = fetched.headers["content-type"] or "application/octet-stream"
    end
    body = fetched._h
  elseif type(body) == "table" then
    body = encode(body)
    if not has_content_type(headers) then headers["Content-Type"] = "application/json" end
  elseif body == nil then
    body = ""
  elseif body == upstream then             -- the held proxied body, sent from C
  elseif type(body) ~= "string" then
    body = tostring(body)
  elseif body ~= "" and not has_content_type(headers) then
    headers["Content-Type"] = "text/plain; charset=utf-8"
  end
  respond(req._cx, req._sn, res.status, headers, body)
  if fetched then fetched:close() end
end

local function run(req, route, status, allow)
  if status ~= 0 then              -- 404 / 405 / 413 decided by the C server
    local res = make_res(status, nil, nil, "server")
    if allow then res.headers["Allow"] = allow end
    send(req, res)
    return
  end
  local chain = route.chain
  for i = 1, #chain do
    local p = chain[i]
    if p.access then
      local st, body, headers = p.access(p.conf, req)
      if st ~= nil then
        send(req, make_res(st, body, headers, 'policy "' .. p.name .. '"'))
        return
      end
    end
  end
  local st, body, headers = route.handler(req)
  local res = rawget(req, "_res")
  if res and res.streaming then
    stream_end(req._cx, req._sn)
    return
  end
  if st == nil then error("the handler returned no status and did not stream", 0) end
  res = make_res(st, body, headers, "the handler")
  local fetched = rawget(res, "body")
  if type(fetched) == "table" and getmetatable(fetched) == Fetched then
    -- Answering with a fetched response: all of it first. If it broke off,
    -- the client gets the failure's status (502/504) instead.
    local ok, kind, msg = fetched:hold()
    if not ok then
      res = make_res(status_of_failure(kind), failure_messages[kind] or msg, nil, "the handler")
    end
  end
  -- Not a tail call: send() then returns here, not straight into xpcall,
  -- which LuaJIT's recorder cannot follow ("NYI: return to lower frame").
  send(req, res)
end

local function log_phase(req)
  local res = rawget(req, "_res")
  local chain = req._chain
  for i = 1, #chain do
    local p = chain[i]
    if p.log then
      local ok, err = pcall(p.log, p.conf, req, res)
      if not ok then
        core.log("error", string.format('policy "%s" log phase: %s', p.name, tostring(err)),
                 string.format('"request_id":%s', encode(req.id)))
      end
    end
  end
end

local function traceback(err)
  return debug.traceback(tostring(err), 2)
end

local function serve(cx, sn, ri, method, path, query, id, status, allow)
  local route = ri > 0 and routes[ri] or global
  local req = new_request(cx, sn, route.chain, method, path, query, id, route.name)
  local ok, err = xpcall(run, traceback, req, route, status, allow)
  if not ok then
    core.log("error", "Lua error: " .. tostring(err),
             string.format('"request_id":%s,"route":%s', encode(req.id), encode(route.name or "")))
    if not response_started(cx, sn) then
      req._chain = global.chain
      local ok2, err2 = pcall(send, req, make_res(500, nil, nil, "server"))
      if not ok2 and not response_started(cx, sn) then
        core.log("error", "Lua error while answering 500: " .. tostring(err2),
                 string.format('"request_id":%s', encode(req.id)))
        respond(cx, sn, 500, { ["Content-Type"] = "application/json" },
                '{"message":"internal server error"}')
      end
    end
  end
  log_phase(req)
  local res = rawget(req, "_res")
  -- The proxied answer's handle is the runtime's: released (not just
  -- closed) so the collector has no finalizer to run for it.
  local up = res and rawget(res, "_upstream")
  if up then up:release() end
end

-- The body of every pooled coroutine: serve one request, yield DONE, wait
-- for the next one. A proper tail call, so the stack never grows.
local function body(...)
  serve(...)
  return body(co_yield(DONE))
end

-- Called by the C side once per Lua state.
function M.load(path, overrides)
  local app = config.load(path, overrides)
  routes, global = app.routes, app.global
  -- The garbage collector (each worker's Lua state has its own): a cycle
  -- starts when the heap reaches pause% of what the last one kept, and does
  -- stepmul% of the allocation's size in work as it goes. Ours: 200 and 100
  -- (LuaJIT's: 200 and 200). A request that allocates during a cycle pays
  -- for a step; stepmul 100 makes the steps smaller, so fewer requests are
  -- slowed. The pause sets the CPU: a cycle's work is about the live heap,
  -- and one comes every (pause - 100)% of it allocated, so 150 cost twice
  -- what 200 does per request (S3 of the bench, ~1 KB of garbage per
  -- request: 0.4 us/req less at 200 than at 150, for a p99 3% higher).
  collectgarbage("setpause", app.settings.gc_pause)
  collectgarbage("setstepmul", app.settings.gc_stepmul)
  proxy.registry = app.upstreams
  request.hooks.access_log = app.settings.access_log
  local c_routes = {}
  for i, r in ipairs(routes) do
    c_routes[i] = { methods = r.methods, host = r.host, path = r.path, name = r.name,
                    max_body = r.max_body, where = path .. ": " .. r.where }
  end
  return { settings = app.settings, routes = c_routes, body = body }
end

return M
