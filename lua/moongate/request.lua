-- The request object handed to handlers and policies.
--
-- Fields (set for every request):
--   req.method, req.path, req.query_string, req.id (the request ID),
--   req.route (route name)
-- Read from the server on first use (like req.headers, during the request):
--   req.remote_addr, req.remote_port, req.params (path params)
-- Lazily built on first use:
--   req.query            decoded query arguments ({ a = "1", b = { "x", "y" } })
--   req.headers          request headers, case-insensitive: req.headers["x-api-key"]
--   req.ctx              a table for policies and handlers to share state
--   req.upstream_headers headers to add when the request is proxied
-- Methods:
--   req:header(name)     same as req.headers[name]
--   req:all_headers()    a plain table, lower-case names
--   req:set_header(name, value|nil), req:set_body(string)   rewrite the request
--   req:body()           the raw body ("" when none)
--   req:json()           the decoded JSON body, or nil, err
--   req:stream(status, headers)  start a chunked response; then
--   req:write(chunk)     send a chunk now: true, or nil, "closed"
--   req:finish()         end the stream (also done when the handler returns)
--   req:sleep(seconds)   wait without blocking the worker
local core = require "moongate.core"
local cjson = require "cjson.safe"

local req_header, req_headers, req_body = core.req_header, core.req_headers, core.req_body
local req_peer, req_params = core.req_peer, core.req_params

local Request = {}
local methods = {}
-- Set by the runtime: runs the route's response phase on (req, res).
local hooks = {}

-- A header as policies see it: rewritten by set_header(), else the client's.
local function header(r, name)
  local o = rawget(r, "_hdr_set")
  if o then
    local v = o[name:lower()]
    if v ~= nil then return v or nil end       -- false: removed
  end
  return req_header(r._cx, r._sn, name)
end

local HeadersMT = {
  __index = function(t, name) return header(rawget(t, 1), name) end,
  __newindex = function() error("req.headers is read-only; use req.upstream_headers", 2) end,
}

local function unescape(s)
  s = s:gsub("+", " ")
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function parse_query(qs)
  local args = {}
  for pair in qs:gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=(.*)$")
    if not k then k, v = pair, true else v = unescape(v) end
    k = unescape(k)
    local prev = args[k]
    if prev == nil then
      args[k] = v
    elseif type(prev) == "table" then
      prev[#prev + 1] = v
    else
      args[k] = { prev, v }
    end
  end
  return args
end

-- The inverse of parse_query: sorted, percent-encoded; `true` is a bare key.
local function encode_query(args)
  if type(args) == "string" then return args end
  local function esc(s)
    return (tostring(s):gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
  end
  local parts = {}
  for k, v in pairs(args) do
    if v == true then parts[#parts + 1] = esc(k)
    elseif type(v) == "table" then for _, x in ipairs(v) do parts[#parts + 1] = esc(k) .. "=" .. esc(x) end
    else parts[#parts + 1] = esc(k) .. "=" .. esc(v) end
  end
  table.sort(parts)
  return table.concat(parts, "&")
end

-- req.ctx starts with room for four keys: request-id, an auth policy and
-- the proxy each add one or two, and growing a table from empty rehashes it
-- at 1, 2 and 4 keys.
local new_table = require "table.new"

local lazy = {
  query = function(r) return parse_query(r.query_string) end,
  headers = function(r) local h = setmetatable({ r }, HeadersMT); return h end,
  ctx = function() return new_table(0, 4) end,
  params = function(r) return req_params(r._cx, r._sn) end,
  remote_addr = function(r) return (req_peer(r._cx, r._sn)) end,
  remote_port = function(r) local _, port = req_peer(r._cx, r._sn); return port end,
  upstream_headers = function() return new_table(0, 2) end,   -- an auth policy sets one or two
}

Request.__index = function(r, k)
  local m = methods[k]
  if m then return m end
  local make = lazy[k]
  if make then
    local v = make(r)
    rawset(r, k, v)
    return v
  end
  return nil
end

methods.header = header
function methods.all_headers(r)
  local t = req_headers(r._cx, r._sn)
  for k, v in pairs(rawget(r, "_hdr_set") or {}) do t[k] = v or nil end
  return t
end

-- A credential from `header` ("<scheme> <value>", scheme compared without
-- case; scheme "" takes the whole value), else from the query argument
-- `query_arg`. nil when neither has one. Used by key-auth and jwt.
local prefixes = {}      -- scheme -> { "Scheme ", "scheme " }
function methods.credential(r, name, scheme, query_arg)
  local v = r:header(name)
  if v then
    if scheme == "" then
      if v ~= "" then return v end
    else
      local n = #scheme + 1
      local p = prefixes[scheme]
      if not p then p = { scheme .. " ", scheme:lower() .. " " }; prefixes[scheme] = p end
      local head = v:sub(1, n)
      if #v > n and (head == p[1] or head:lower() == p[2]) then return v:sub(n + 1) end
    end
  end
  if query_arg then
    local q = r.query[query_arg]
    if type(q) == "string" and q ~= "" then return q end
  end
end

-- Rewrites as later policies, the handler and req:proxy() see them:
-- set_header(name, nil) removes a header; set_body replaces the body.
function methods.set_header(r, name, value)
  if type(name) ~= "string" then error("set_header: name must be a string", 2) end
  if value ~= nil and type(value) ~= "string" then value = tostring(value) end
  local o = rawget(r, "_hdr_set")
  if not o then o = {}; r._hdr_set = o end
  o[name:lower()] = value or false
end

-- Removes from t the keys that are `name` in another case (names of another
-- length are not lowered: no string is made for them).
local function drop_other_spellings(t, name)
  local n, lname = #name, nil
  for k in pairs(t) do
    if type(k) == "string" and #k == n and k ~= name then
      lname = lname or name:lower()
      if k:lower() == lname then t[k] = nil end
    end
  end
end

-- A header on this request's answer, whatever produces it (handler, proxy,
-- policy, error): set after the response policies ran, replacing a header of
-- the same name (any case). A proxied answer keeps being relayed from C: its
-- headers are not read into a table for this.
-- One header (request-id's, on every answer) is the usual case: it is kept
-- in two fields of the request, _set1_name and _set1_value; a table
-- (_resp_set) is made only for a second one -- not two more objects per
-- request for the collector.
function methods.set_response_header(r, name, value)
  if type(name) ~= "string" then error("set_response_header: name must be a string", 2) end
  if type(value) ~= "string" then
    if type(value) ~= "number" then error("set_response_header: value must be a string", 2) end
    value = tostring(value)
  end
  local sets = rawget(r, "_resp_set")
  if not sets then
    local first = rawget(r, "_set1_name")
    if first == nil or first == name or (#first == #name and first:lower() == name:lower()) then
      r._set1_name, r._set1_value = name, value
      return
    end
    sets = { [first] = r._set1_value }
    r._resp_set, r._set1_name, r._set1_value = sets, nil, nil
  end
  drop_other_spellings(sets, name)
  sets[name] = value
end

-- Puts the request's set_response_header() headers into a headers table.
local function apply_response_headers(r, headers)
  local sets = rawget(r, "_resp_set")
  if not sets then
    local name = rawget(r, "_set1_name")
    if name == nil then return end
    drop_other_spellings(headers, name)
    headers[name] = r._set1_value
    return
  end
  for n, v in pairs(sets) do
    drop_other_spellings(headers, n)
    headers[n] = v
  end
end

-- The set_response_header() headers as a table for the C side, which reads
-- it before it returns (nil when there are none): the one-header case in a
-- table kept for the purpose, holding only the latest request's header (the
-- one before is taken out first).
local one_set = {}
local function response_set(r)
  local sets = rawget(r, "_resp_set")
  if sets then return sets end
  local name = rawget(r, "_set1_name")
  if name == nil then return nil end
  local stale = next(one_set)
  if stale ~= nil then one_set[stale] = nil end
  one_set[name] = r._set1_value
  return one_set
end

function methods.set_body(r, body)
  if type(body) ~= "string" then error("set_body: body must be a string", 2) end
  r._body = body
  r._json = nil
end

function methods.body(r)
  local b = rawget(r, "_body")
  if b == nil then
    b = req_body(r._cx, r._sn)
    r._body = b
  end
  return b
end

function methods.json(r)
  local j = rawget(r, "_json")
  if j ~= nil then return j end
  local body = methods.body(r)
  if body == "" then return nil, "empty body" end
  local v, err = cjson.decode(body)
  if v == nil then return nil, err end
  r._json = v
  return v
end

function methods.sleep(r, seconds) return core.sleep(seconds) end

-- Adds a member to this request's access-log line (a no-op when the access
-- log is off, so hot paths may call it freely).
function methods.log_field(r, key, value)
  if not hooks.access_log then return end
  core.log_extra(r._cx, r._sn, cjson.encode(key) .. ":" .. cjson.encode(value))
end

-- Closes the client connection now (a relayed body broke off).
function methods.abort(r) core.abort(r._cx, r._sn) end

-- Streaming. The response policies run on the status and headers first.
-- A proxied answer (res._upstream) whose headers nobody looked at relays the
-- upstream's head from C.
local function stream_response(r, res)
  if rawget(r, "_res") then error("the response has already started", 3) end
  res.streaming = true
  r._res = res
  hooks.response_phase(r, res)
  local headers, upstream = rawget(res, "headers"), rawget(res, "_upstream")
  if upstream and headers == nil then
    return core.stream_start(r._cx, r._sn, res.status, response_set(r), upstream)
  end
  headers = headers or {}
  apply_response_headers(r, headers)
  return core.stream_start(r._cx, r._sn, res.status, headers)
end

function methods.stream(r, status, headers)
  return stream_response(r, { status = status or 200, headers = headers or {} })
end

function methods.write(r, chunk)
  local res = r._res
  if not res or not res.streaming then error("req:write() needs req:stream() first", 2) end
  if type(chunk) ~= "string" then chunk = tostring(chunk) end
  return core.stream_write(r._cx, r._sn, chunk)
end

function methods.finish(r)
  local res = r._res
  if not res or not res.streaming then error("req:finish() needs req:stream() first", 2) end
  core.stream_end(r._cx, r._sn)
end

local M = { Request = Request, methods = methods, parse_query = parse_query,
            encode_query = encode_query, stream_response = stream_response,
            apply_response_headers = apply_response_headers,
            response_set = response_set,
            hooks = hooks }

-- A request's table is made whole by one constructor, with a slot for each
-- field it usually gains on its way (ctx, upstream_headers, the body, the
-- answer, request-id's header): the placeholders are cleared at once, and
-- later stores reuse their slots. Grown field by field instead, the table
-- was rehashed on the way and ended with 32 slots (832 bytes, plus the 16
-- it outgrew) for the collector on every request.
-- Not `return setmetatable(...)`: a tail call to a builtin with side
-- effects ends LuaJIT's trace (see proxy.lua's fetch).
function M.new(cx, sn, chain, method, path, query, id, route)
  local r = setmetatable({
    _cx = cx, _sn = sn, _chain = chain, method = method, path = path,
    query_string = query, id = id, route = route,
    ctx = false, upstream_headers = false, _body = false, _res = false,
    _set1_name = false, _set1_value = false,
  }, Request)
  r.ctx, r.upstream_headers, r._body, r._res, r._set1_name, r._set1_value =
    nil, nil, nil, nil, nil, nil
  return r
end

return M
