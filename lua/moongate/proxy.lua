-- req:fetch() and req:proxy(): the request-side API over upstream.lua.
--
-- req:fetch(target, opts) -> res | nil, kind, message
--   kind: "connect", "dns", "timeout", "reset", "tls", "unavailable" (every
--   target down), "incomplete" (the head arrived, the body broke off), "error"
--   target: an upstream name, or an absolute http(s) URL
--   opts: method ("GET"), path ("/"), query (string or table), headers (table),
--         body (string) or json (table, sent as application/json), timeout (seconds),
--         connect_timeout (seconds; URL targets only, upstreams have their own);
--         read before req:fetch waits, so a caller may refill one options
--         table for every call (the AI relay does)
--   res: { status, headers (lower-case names), body, json = function }
--   opts.stream = true: res has no body; read it as it arrives with
--     res:read() -> chunk | false (the end) | nil, kind, message
--     (kind "closed": the client went away; the upstream transfer is stopped)
--   or res:read_all() -> the rest | nil, kind, message; and res:close() when
--   done with it (also closes a half-read answer).
--   res:json_member(key, ...) waits for the whole answer and keeps it on the
--     C side: the JSON texts of its top-level members, like json.member
--     (false: absent) | nil, kind, message (nil, "invalid", message: not a
--     JSON object). The handler may then answer with the response itself as
--     the body -- return 200, res, headers -- and it is sent from C, never
--     made a Lua string (LuaJIT interns every string; long answers of one
--     length that differ only in bytes its hash does not sample, like an id,
--     fall into one hash chain and make every new one slower to intern).
--
-- req:proxy(name, opts) forwards the current request and relays the answer:
--   opts: path, query, method, headers (set/override), body, key (for
--         balance = "hash"), on_chunk = function(chunk) -> chunk (see below)
--   A complete small answer is returned as a response table (status, headers,
--   body passed through untouched); a longer or streamed one (SSE) is relayed
--   chunk by chunk as it arrives. on_chunk may inspect or rewrite each chunk
--   (return a string, or nil to drop it). If the client goes away the upstream
--   transfer is stopped; if the upstream breaks off mid-body the client's
--   connection is closed, so it never takes a cut body for a whole one.
--   Failures return status, message for the errors policy: 502, 503 (every
--   target down) or 504 (timeout).
local core = require "moongate.core"
local cjson = require "cjson.safe"
local upstream = require "moongate.upstream"
local request = require "moongate.request"

local M = { registry = {} }
local relay
local methods = request.methods

-- W3C trace context: the client's trace id (or a new one), a new span for
-- our hop; made once per request by the C side, which also sends it.
local function traceparent(r)
  local ctx = r.ctx
  local tp = ctx.traceparent
  if tp then return tp end
  tp = core.traceparent(r._cx, r._sn)
  ctx.traceparent, ctx.trace_id = tp, tp:sub(4, 35)
  return tp
end
M.traceparent = traceparent

local encode_query = request.encode_query

local function add_lines(into, k, v)
  if type(v) == "table" then
    for _, x in ipairs(v) do into[#into + 1] = k .. ": " .. tostring(x) end
  else
    into[#into + 1] = k .. ": " .. tostring(v)
  end
end

local NO_LINES = {}

-- URL targets are split once each: a caller (the AI relay, say) fetches the
-- same few URLs over and over. Bounded: emptied at MAX_URLS entries.
local url_parts, n_url_parts, MAX_URLS = {}, 0, 1000

local function resolve(target)
  local up = M.registry[target]
  if up then return up, "" end
  local parts = url_parts[target]
  if parts then return nil, parts[1], parts[2] end
  if type(target) == "string" and target:match("^https?://") then
    local base, rest = target:match("^(https?://[^/?#]+)(.*)$")
    if n_url_parts >= MAX_URLS then url_parts, n_url_parts = {}, 0 end
    url_parts[target], n_url_parts = { base, rest }, n_url_parts + 1
    return nil, base, rest
  end
  error(string.format("unknown upstream %q (not in the config's upstreams, not a URL)", tostring(target)), 3)
end

-- A streamed answer's headers become a table only when read (most callers
-- never do): the C handle keeps the head, even after close().
local Response = {}
Response.__index = function(res, k)
  local m = Response[k]
  if m ~= nil or k ~= "headers" then return m end
  local h = rawget(res, "_hh")
  local t = h and h:headers() or {}
  rawset(res, "headers", t)
  return t
end
function Response:json()
  if self._json == nil then self._json = cjson.decode(self.body) end
  return self._json
end

-- Streamed answers (opts.stream): the handle stays open until the end or close().
function Response:read()
  local h = self._h
  if not h then return false end
  local chunk, kind, msg = upstream.read_chunk(h)
  if not chunk then self:close() end
  return chunk, kind, msg
end

-- The rest of a streamed answer at once (then closed): text | nil, kind, message.
function Response:read_all()
  local h = self._h
  if not h then return "" end
  local data, kind, msg = upstream.read_all(h)
  self:close()
  return data, kind, msg
end

-- Waits until the whole answer is in, kept on the C side: true | nil, kind, message.
function Response:hold()
  local h = self._h
  if not h then error("the fetched answer was already read or closed", 2) end
  if rawget(self, "_whole") then return true end   -- held before: no second C call
  local ok, kind, msg = h:hold()
  while ok == nil and kind == nil do ok, kind, msg = h:hold() end
  if ok then self._whole = true else self:close() end
  return ok, kind, msg
end

local function members_or_invalid(v, ...)
  if v == nil then return nil, "invalid", (...) end
  return v, ...
end

-- One to three keys, the usual call, without passing `...` on: LuaJIT does
-- not compile that ("NYI: bytecode VARG") and ran the rest of the caller in
-- its interpreter. More keys take the general path. One result per key.
function Response:json_member(k1, k2, k3, ...)
  local ok, kind, msg = self:hold()
  if not ok then return nil, kind, msg end
  local h = self._h
  if select("#", ...) > 0 then return members_or_invalid(h:members(k1, k2, k3, ...)) end
  local a, b, c
  if k3 ~= nil then a, b, c = h:members(k1, k2, k3)
  elseif k2 ~= nil then a, b = h:members(k1, k2)
  else a, b = h:members(k1) end
  if a == nil then return nil, "invalid", b end
  if k3 ~= nil then return a, b, c end
  if k2 ~= nil then return a, b end
  return a
end

function Response:close()
  local h = self._h
  if not h then return end
  self._h = nil
  h:close()
  if self._up then self._up:done(self._t) end
end

M.Response = Response

function methods.fetch(r, target, opts)
  opts = opts or {}
  local up, base, rest = resolve(target)
  -- An upstream target may carry a path of its own ("http://h/predict"):
  -- opts.path is appended to it, and may be "" to call it as it is.
  local path = opts.path or rest or ""
  if path == "" and not up and rest == "" then path = "/" end
  local q = opts.query and encode_query(opts.query) or ""
  local pq = q == "" and path or path .. (path:find("?", 1, true) and "&" or "?") .. q
  -- The caller's { name = value } map goes to the C side as it is (it makes
  -- the lines); with opts.json, Content-Type comes first, in a copy.
  local headers = opts.headers
  local body = opts.body
  local stream = opts.stream
  if opts.json ~= nil then
    body = cjson.encode(opts.json)
    local h = { "Content-Type: application/json" }
    for k, v in pairs(headers or NO_LINES) do
      if type(k) == "string" then h[k] = v end
    end
    headers = h
  end
  -- X-Request-ID and traceparent follow (trace = true): added by the C side.
  local method = opts.method or (body and "POST" or "GET")
  local timeout = opts.timeout and opts.timeout * 1000
  local h, t, status, rh
  if up then
    h, t, status, rh = up:request(method, pq, headers, nil, body, nil, true, opts.key, timeout, r.id,
                                  stream)
    if not h then return nil, t, status end          -- nil, kind, message
  else
    local kind, msg
    -- base and path joined on the C side: no URL string made per call
    h, kind, msg = core.fetch_args(base, pq, method, body, nil, nil, headers, true,
                                   opts.connect_timeout and opts.connect_timeout * 1000,
                                   timeout or 60000, nil, nil)
    if not h then return nil, kind, msg end
    if stream then status, kind, msg = upstream.wait_status(h) else status, kind, msg = upstream.wait_head(h) end
    if not status then h:close() return nil, kind, msg end
    rh = kind
  end
  -- setmetatable's result is returned from a local, not by a tail call:
  -- LuaJIT cannot compile a return through a tail-called builtin that has
  -- side effects ("NYI: return to lower frame"), and the caller's code after
  -- the fetch then ran in its interpreter.
  local res
  if stream then
    -- Two shapes, so that a URL target's answer carries no empty slots.
    res = setmetatable(up and { status = status, _h = h, _hh = h, _up = up, _t = t }
                       or { status = status, _h = h, _hh = h }, Response)
    return res
  end
  local data, kind, msg = upstream.read_all(h)
  h:close()
  if up then up:done(t) end
  if not data then return nil, "incomplete", msg end   -- answered, but the body broke off
  res = setmetatable({ status = status, headers = rh, body = data }, Response)
  return res
end


-- What the handler's and policies' rewrites change in the forwarded head:
-- header lines to add and lower-case names to leave out of the client's.
-- Later sources win: req:set_header(), req.upstream_headers (false removes;
-- key-auth hides the client's credentials this way), opts.headers.
local function overrides(lines, drop, seen, src)
  for k, v in pairs(src) do
    local name = k:lower()
    if not seen[name] then
      seen[name] = true
      drop[#drop + 1] = name
      if v then add_lines(lines, k, v) end
    end
  end
end

-- A proxied answer: its headers stay in the C handle and are relayed as they
-- are, unless Lua looks at res.headers -- then they become a table (minus
-- hop-by-hop ones) that response policies may change like any other. A
-- complete small answer's body stays there too (_held) and is sent from C,
-- unless Lua reads res.body (then it is a string) or sets it.
local UpstreamAnswer = {
  __index = function(res, k)
    local h = rawget(res, "_upstream")
    if k == "headers" then
      local t = h and h:relay_headers(rawget(res, "_keep_length")) or {}
      rawset(res, "headers", t)
      return t
    end
    if k == "body" and rawget(res, "_held") then
      local b = h and h:rest() or ""
      rawset(res, "_held", nil)
      rawset(res, "body", b)
      return b
    end
  end,
  __newindex = function(res, k, v)
    if k == "body" then rawset(res, "_held", nil) end
    rawset(res, k, v)
  end,
}

local NO_OPTIONS = setmetatable({}, { __newindex = function() error("read-only", 2) end })

function methods.proxy(r, name, opts)
  opts = opts or NO_OPTIONS              -- not a table per request for the collector
  local up = M.registry[name]
  if not up then error(string.format("unknown upstream %q", tostring(name)), 2) end
  -- Request headers: the client's, minus hop-by-hop, plus forwarding facts,
  -- composed by the C side (forward.c), which also applies one set of
  -- rewrites as it is (the usual case: an auth policy's); several are
  -- merged here first.
  local headers, drop = nil, nil
  local hs, uh, oh = rawget(r, "_hdr_set"), rawget(r, "upstream_headers"), opts.headers
  if hs and next(hs) == nil then hs = nil end
  if uh and next(uh) == nil then uh = nil end
  if oh and next(oh) == nil then oh = nil end
  if (hs and 1 or 0) + (uh and 1 or 0) + (oh and 1 or 0) == 1 then
    headers = hs or uh or oh
  elseif hs or uh or oh then
    local seen = {}
    headers, drop = {}, {}
    if oh then overrides(headers, drop, seen, oh) end     -- the last source wins
    if uh then overrides(headers, drop, seen, uh) end
    if hs then overrides(headers, drop, seen, hs) end
  end

  local path = opts.path or r.path
  local q = opts.query and encode_query(opts.query) or r.query_string
  local method = opts.method or r.method
  local body = opts.body or r:body()
  if body == "" and (method == "GET" or method == "HEAD") then body = nil end
  local h, t, status = up:request(method, q ~= "" and (path .. "?" .. q) or path, headers, drop,
                                  body, true, nil, opts.key, nil, r.id, true)
  if not h then
    local kind, msg = t, status
    r.ctx.upstream_error = kind
    r:log_field("upstream", up.name)
    r:log_field("upstream_error", kind)
    return upstream.status_of_failure(kind), upstream.messages[kind] or msg
  end
  if request.hooks.access_log then
    local info = h:info()
    traceparent(r)
    r:log_field("upstream", up.name)
    r:log_field("upstream_target", t.url)
    r:log_field("upstream_status", status)
    r:log_field("upstream_connect_ms", info.connect_ms)
    r:log_field("upstream_first_byte_ms", info.first_byte_ms)
    r:log_field("trace_id", r.ctx.trace_id)
  end

  -- The answer: a HEAD answer keeps the upstream's Content-Length. The
  -- handle stays open until the request is over (the runtime closes it).
  -- Four slots, all filled here (_held: false until the body is held); a
  -- HEAD answer's fifth grows the table, rarely.
  local res = setmetatable({ status = status, raw = true, _upstream = h, _held = false },
                           UpstreamAnswer)
  if r.method == "HEAD" then rawset(res, "_keep_length", true) end
  local on_chunk = opts.on_chunk
  if not on_chunk and h:complete() then
    up:done(t)
    rawset(res, "_held", true)
    return res
  end
  local ok, err = pcall(relay, r, up, t, h, res, on_chunk)
  h:close()
  up:done(t)
  if not ok then error(err, 0) end
end

-- Streams the rest of an upstream answer to the client.
function relay(r, up, t, h, res, on_chunk)
  -- Relay as it arrives.
  request.stream_response(r, res)
  while true do
    local chunk, kind, msg = upstream.read_chunk(h)
    if chunk == false then break end
    if chunk == nil and kind == "closed" then      -- the client left while we waited
      r.ctx.client_aborted = true
      r:log_field("client_aborted", true)
      return
    end
    if chunk == nil then
      core.log("warn", string.format("upstream %s: %s broke off mid-body: %s (%s)",
               up.name, t.url, kind, msg or ""),
               string.format('"request_id":%s', cjson.encode(r.id)))
      r:log_field("upstream_error", kind)
      r:abort()
      return
    end
    if on_chunk then chunk = on_chunk(chunk) end
    if chunk and chunk ~= "" then
      local ok = r:write(chunk)
      if not ok then                      -- the client left: stop the upstream too
        r.ctx.client_aborted = true
        r:log_field("client_aborted", true)
        return
      end
    end
  end
end

return M
