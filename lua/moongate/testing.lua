-- `moongate test FILE.lua`: runs Lua test files with no server.
--
-- A test file calls test(name, fn) for each case; inside, assert(),
-- eq(got, want [, what]) and raises(fn, text) fail the case. `testing`
-- (this module) gives fake requests, policies loaded as a route loads them,
-- and stubs for the stores (see testing.request / testing.policy /
-- testing.fake_redis below). The summary line is "N passed, N failed"; the
-- exit status is 0 only when nothing failed.
local M = {}

local function repr(v)
  if type(v) == "string" then return string.format("%q", v) end
  if type(v) ~= "table" then return tostring(v) end
  local ok, cjson = pcall(require, "cjson")
  if ok then
    local ok2, s = pcall(cjson.encode, v)
    if ok2 then return s end
  end
  return tostring(v)
end

local function deep_eq(a, b)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" then return false end
  for k, v in pairs(a) do if not deep_eq(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

function M.eq(got, want, what)
  if not deep_eq(got, want) then
    error(string.format("%sexpected %s, got %s", what and (what .. ": ") or "",
                        repr(want), repr(got)), 2)
  end
end

-- Calls fn and returns the error message it raised, or fails.
function M.raises(fn, pattern)
  local ok, err = pcall(fn)
  if ok then error("expected an error, got none", 2) end
  err = tostring(err)
  if pattern and not err:find(pattern, 1, true) then
    error(string.format("error %q does not contain %q", err, pattern), 2)
  end
  return err
end

-- ---- policies against fake requests ----------------------------------------

local request = require "moongate.request"
local schema = require "moongate.schema"
local rmethods = request.methods

local FakeHeaders = {
  __index = function(t, name)
    local r = rawget(t, 1)
    local o = rawget(r, "_hdr_set")
    local v = o and o[name:lower()]
    if v ~= nil then return v or nil end
    return r._fake_headers[name:lower()]
  end,
}

local fake_methods = setmetatable({
  all_headers = function(r)
    local t = {}
    for k, v in pairs(r._fake_headers) do t[k] = v end
    for k, v in pairs(rawget(r, "_hdr_set") or {}) do t[k] = v or nil end
    return t
  end,
  header = function(r, name) return r.headers[name] end,
  log_field = function(r, k, v) r.logged[k] = v end,
  sleep = function() end,
}, { __index = rmethods })

local FakeRequest = {
  __index = function(r, k)
    if k == "headers" then
      local h = setmetatable({ r }, FakeHeaders)
      rawset(r, "headers", h)
      return h
    elseif k == "query" then
      local q = request.parse_query(r.query_string)
      rawset(r, "query", q)
      return q
    end
    return fake_methods[k]
  end,
}

-- A request for policy specs: testing.request{ method = "POST", path = "/x",
-- query_string = "a=1", headers = { Authorization = "Bearer k" }, body = "{}",
-- remote_addr = "10.0.0.1", params = {} }. Its ctx, upstream_headers and
-- `logged` (log_field calls) can be inspected afterwards.
function M.request(spec)
  spec = spec or {}
  local headers = {}
  for k, v in pairs(spec.headers or {}) do headers[k:lower()] = v end
  return setmetatable({
    method = spec.method or "GET", path = spec.path or "/", query_string = spec.query_string or "",
    remote_addr = spec.remote_addr or "127.0.0.1", remote_port = spec.remote_port or 40000,
    id = spec.id or "test-request", route = spec.route or "test", params = spec.params or {},
    ctx = {}, upstream_headers = {}, logged = {}, _fake_headers = headers, _body = spec.body or "",
  }, FakeRequest)
end

local function find_policy(name)
  if name:match("%.lua$") then return name end
  local home = package.path:match("([^;]*)/lua/%?%.lua") or "."
  for _, dir in ipairs({ "policies", home .. "/policies" }) do
    local f = io.open(dir .. "/" .. name .. ".lua")
    if f then f:close() return dir .. "/" .. name .. ".lua" end
  end
  error("policy not found: " .. name, 3)
end

-- Loads a policy as a route would: schema checked, init run. Returns an
-- object with :access(req), :response(req, res) and
-- :run(req [, res]) -> res (access, then the response phase on the
-- rejection or on `res`, default { status = 200, headers = {} }).
function M.policy(name, settings)
  local file = find_policy(name)
  local mod = dofile(file)
  local conf = schema.check(mod.schema or {}, settings or {}, 'policy "' .. name .. '"')
  if mod.init then mod.init(conf) end
  local p = { conf = conf, module = mod }
  function p:access(req) if mod.access then return mod.access(conf, req) end end
  function p:response(req, res)
    if mod.response then mod.response(conf, req, res) end
    request.apply_response_headers(req, res.headers)   -- req:set_response_header(), as the client sees it
    return res
  end
  function p:run(req, res)
    local st, body, headers = self:access(req)
    if st then
      res = { status = st, headers = headers or {} }
      if st >= 400 and (body == nil or type(body) == "string") then res.error = body else res.body = body end
    else
      res = res or { status = 200, headers = {} }
    end
    return self:response(req, res)
  end
  return p
end

-- Replaces a module for the rest of the file: testing.stub("moongate.redis", fake).
function M.stub(name, module)
  package.loaded[name] = module
  return module
end

-- An in-memory stand-in for moongate.redis: GET, SET, DEL, INCR, INCRBY,
-- EXPIRE (ignored); `down = true` makes every call fail like a dead server.
function M.fake_redis()
  local data = {}
  local fake = { null = nil, data = data, down = false }
  function fake.call(cmd, k, v)
    if fake.down then return nil, "redis unavailable" end
    cmd = cmd:upper()
    if cmd == "GET" then return data[k] end
    if cmd == "SET" then data[k] = tostring(v) return "OK" end
    if cmd == "DEL" then local had = data[k] ~= nil; data[k] = nil; return had and 1 or 0 end
    if cmd == "INCR" or cmd == "INCRBY" then
      data[k] = tostring((tonumber(data[k]) or 0) + (tonumber(v) or 1))
      return tonumber(data[k])
    end
    if cmd == "EXPIRE" or cmd == "PEXPIRE" then return 1 end
    error("fake redis: unsupported command " .. cmd, 2)
  end
  function fake.script()
    return { run = function() return nil, "fake redis: scripts need a real Redis" end }
  end
  return fake
end

-- A stand-in for moongate.postgres: `answer(sql, params)` returns the rows
-- (a list of tables), or nil, message, sqlstate; `down = true` fails every
-- query like a dead server. Transactions run their function directly.
function M.fake_postgres(answer)
  local fake = { null = nil, down = false, queries = {} }
  function fake.query(sql, ...)
    fake.queries[#fake.queries + 1] = { sql = sql, params = { ... } }
    if fake.down then return nil, "database unavailable", "08001" end
    local rows, err, state = answer(sql, { ... })
    if rows == nil then return nil, err, state end
    rows.affected = rows.affected or #rows
    return rows
  end
  function fake.transaction(fn)
    local ok, err = pcall(fn, { query = function(sql, ...)
      local rows, e, st = fake.query(sql, ...)
      if not rows then error(e .. " (SQLSTATE " .. tostring(st) .. ")", 2) end
      return rows
    end })
    if not ok then error(err, 2) end
    return true
  end
  return fake
end

function M.run_file(path)
  local cases = {}
  local env = setmetatable({
    test = function(name, fn) cases[#cases + 1] = { name = name, fn = fn } end,
    eq = M.eq, raises = M.raises, testing = M,
  }, { __index = _G })
  local chunk, err = loadfile(path)
  if not chunk then error(err, 0) end
  setfenv(chunk, env)
  chunk()
  local passed, failed = 0, 0
  for _, c in ipairs(cases) do
    local ok, e = xpcall(c.fn, debug.traceback)
    if ok then
      passed = passed + 1
      print("ok - " .. c.name)
    else
      failed = failed + 1
      print("not ok - " .. c.name .. "\n    " .. tostring(e):gsub("\n", "\n    "))
    end
  end
  print(string.format("%d passed, %d failed", passed, failed))
  return failed
end

return M
