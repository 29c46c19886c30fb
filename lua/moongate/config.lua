-- The config loader: runs the operator's config file, checks every field,
-- loads every handler and policy it names, and returns the application:
--
--   { settings = {...},      -- normalized numbers for the C server
--     routes   = { route },  -- route.chain, route.handler, route.methods ...
--     global   = route }     -- the chain used when no route matches
--
-- Every error raised here is a string "<config file>: <where>: <what>" so an
-- operator sees the file, the route and the field at once (also with -t).
local core = require "moongate.core"
local schema = require "moongate.schema"
local upstream = require "moongate.upstream"

local M = {}

local function fail(fmt, ...)
  error(string.format(fmt, ...), 0)
end

local function join(dir, path)
  if path:sub(1, 1) == "/" then return path end
  return dir .. "/" .. path
end

local function dirname(path)
  return path:match("^(.*)/[^/]*$") or "."
end

-- Top-level fields and their schema. Durations and sizes are normalized.
local top_schema = {
  listen = { type = "string", default = ":8080" },
  workers = { type = "string" },            -- checked by hand: "auto" or n
  limits = { type = "table" },
  shutdown_timeout = { type = "duration", default = "10s" },
  -- LuaJIT's setpause and setstepmul (its defaults: 200, 200); ours: runtime.lua
  gc_pause = { type = "integer", default = 200, min = 100, max = 1000 },
  gc_stepmul = { type = "integer", default = 100, min = 50, max = 1000 },
  health = { type = "string" },             -- or false
  log = { type = "table" },
  policy_paths = { type = "array", items = "string" },
  policies = { type = "table" },
  routes = { type = "table", required = true },
  upstreams = { type = "table" },
  shared = { type = "table" },
  redis = { type = "table" },
  postgres = { type = "table" },
}

local postgres_schema = {
  dsn = { type = "string", required = true },
  pool = { type = "integer", default = 4, min = 1, max = 64 },
  timeout = { type = "duration", default = "30s", min = 1 },
  wait_timeout = { type = "duration", default = "5s", min = 1 },
}

local redis_schema = {
  url = { type = "string", required = true },
  pool = { type = "integer", default = 4, min = 1, max = 64 },
  timeout = { type = "duration", default = "2s", min = 1 },
}

-- redis://[[user]:password@]host[:port][/db]
local function parse_redis_url(url)
  local rest = url:match("^redis://(.*)$")
  if not rest then return nil, 'must start with "redis://"' end
  local auth, hostpart = rest:match("^(.*)@([^@]*)$")
  hostpart = hostpart or rest
  local password = auth and (auth:match("^[^:]*:(.*)$") or auth) or ""
  local hostport, db = hostpart:match("^([^/]*)/?(%d*)$")
  if not hostport then return nil, "bad host or database number" end
  local host, port = hostport:match("^%[(.+)%]:?(%d*)$")
  if not host then host, port = hostport:match("^([^:]*):?(%d*)$") end
  if not host or host == "" then return nil, "missing host" end
  port = tonumber(port) or 6379
  if port < 1 or port > 65535 then return nil, "port out of range" end
  if host == "localhost" then host = "127.0.0.1" end
  return { host = host, port = port, password = password, db = tonumber(db) or 0 }
end

local limits_schema = {
  headers = { type = "size", default = "32k", min = 1024, max = 65536 },
  body = { type = "size", default = "1m" },
  header_timeout = { type = "duration", default = "10s", min = 1 },
  body_timeout = { type = "duration", default = "60s", min = 1 },
  keepalive_timeout = { type = "duration", default = "75s", min = 1 },
  send_timeout = { type = "duration", default = "60s", min = 1 },
}

local log_schema = {
  access = { type = "boolean", default = true },
}

local phases = { access = true, response = true, log = true }
local policy_module_fields = {
  name = true, schema = true, init = true, access = true, response = true,
  log = true, description = true, version = true, priority = true,
}

-- Loads a policy module by name from the operator's directories, then the
-- stock ones. Modules are cached per load.
local function load_policy(ctx, name, where)
  local cached = ctx.policies[name]
  if cached then return cached end
  if type(name) ~= "string" or not name:match("^[%w_%-%.]+$") then
    fail("%s: policy name must be a string of letters, digits, '-', '_' or '.', got %s",
         where, tostring(name))
  end
  local tried = {}
  for _, dir in ipairs(ctx.policy_dirs) do
    local file = dir .. "/" .. name .. ".lua"
    local f = io.open(file, "r")
    if f then
      f:close()
      local chunk, err = loadfile(file)
      if not chunk then fail("%s: policy %q: %s", where, name, err) end
      local ok, mod = pcall(chunk)
      if not ok then fail("%s: policy %q: %s", where, name, tostring(mod)) end
      if type(mod) ~= "table" then
        fail("%s: policy %q: %s must return a table", where, name, file)
      end
      for k, v in pairs(mod) do
        if not policy_module_fields[k] then
          fail("%s: policy %q: unknown field %q in %s (phases are access, response, log)",
               where, name, tostring(k), file)
        end
        if phases[k] and type(v) ~= "function" then
          fail("%s: policy %q: %s must be a function", where, name, k)
        end
      end
      mod.schema = mod.schema or {}
      mod.name = mod.name or name
      ctx.policies[name] = mod
      return mod
    end
    tried[#tried + 1] = file
  end
  fail("%s: unknown policy %q (looked in %s)", where, name, table.concat(tried, ", "))
end

-- A policy reference is "name" or { "name", setting = value, ... }.
local function instantiate(ctx, ref, where)
  local name, settings = ref, {}
  if type(ref) == "table" then
    name, settings = ref[1], ref
    for k in pairs(ref) do
      if type(k) == "number" and k ~= 1 then
        fail("%s: policy %s: settings must be named (name = value)", where, tostring(name))
      end
    end
  end
  if type(name) ~= "string" then
    fail("%s: a policy is \"name\" or { \"name\", setting = value }", where)
  end
  local pwhere = string.format("%s: policy %q", where, name)
  local mod = load_policy(ctx, name, where)
  local conf = schema.check(mod.schema, settings, pwhere)
  if mod.init then
    local ok, err = pcall(mod.init, conf)
    if not ok then fail("%s: %s", pwhere, tostring(err)) end
  end
  return { name = name, mod = mod, conf = conf, access = mod.access,
           response = mod.response, log = mod.log }
end

-- The global chain, with route-level entries replacing same-named ones.
local function build_chain(ctx, global, refs, where)
  local chain = {}
  for i, p in ipairs(global) do chain[i] = p end
  if refs == nil then return chain end
  if type(refs) ~= "table" then fail("%s: policies: expected a list", where) end
  for i, ref in ipairs(refs) do
    local p = instantiate(ctx, ref, string.format("%s: policies[%d]", where, i))
    local replaced = false
    for j, q in ipairs(chain) do
      if q.name == p.name then chain[j] = p replaced = true break end
    end
    if not replaced then chain[#chain + 1] = p end
  end
  return chain
end

local function load_handler(ctx, h, where)
  if type(h) == "function" then return h end
  if type(h) ~= "string" then
    fail("%s: handler: expected a file name or a function, got %s", where, type(h))
  end
  local file = join(ctx.dir, h)
  local cached = ctx.handlers[file]
  if cached then return cached end
  local chunk, err = loadfile(file)
  if not chunk then fail("%s: handler: %s", where, err) end
  local ok, fn = pcall(chunk)
  if not ok then fail("%s: handler: %s: %s", where, h, tostring(fn)) end
  if type(fn) ~= "function" then
    fail("%s: handler: %s must return a function(req), returned %s", where, h, type(fn))
  end
  ctx.handlers[file] = fn
  return fn
end

local function parse_methods(m, where)
  local list = type(m) == "table" and m or { m }
  local bits, names = 0, {}
  for _, name in ipairs(list) do
    if type(name) ~= "string" then fail("%s: method must be a string", where) end
    for part in name:gmatch("[^|,%s]+") do
      local up = part:upper()
      if up == "ANY" or up == "*" then
        bits = 1023
      else
        local bit = core.method_bit(up)
        if bit == 0 then fail("%s: unknown method %q", where, part) end
        if bits % (bit * 2) < bit then bits = bits + bit end
      end
      names[#names + 1] = up
    end
  end
  if bits == 0 then fail("%s: no method given", where) end
  return bits, table.concat(names, "|")
end

local route_fields = {
  [1] = true, [2] = true, [3] = true, handler = true, name = true, host = true,
  policies = true, body = true, methods = true, path = true, proxy = true,
}

local function load_route(ctx, r, i, global_chain)
  local where = string.format("routes[%d]", i)
  if type(r) ~= "table" then fail("%s: expected a table { METHOD, PATH, handler = ... }", where) end
  local method, path = r[1] or r.methods, r[2] or r.path
  if method == nil then fail("%s: missing method (first entry), e.g. \"GET\"", where) end
  if type(path) ~= "string" or path:sub(1, 1) ~= "/" then
    fail("%s: path (second entry) must be a string starting with '/'", where)
  end
  local bits, mnames = parse_methods(method, where)
  where = string.format("routes[%d] (%s %s)", i, mnames, path)
  for k in pairs(r) do
    if not route_fields[k] then fail("%s: unknown field %q", where, tostring(k)) end
  end
  if r.host ~= nil and type(r.host) ~= "string" then fail("%s: host: expected a string", where) end
  if r.name ~= nil and type(r.name) ~= "string" then fail("%s: name: expected a string", where) end
  local handler = r.handler or r[3]
  if r.proxy ~= nil then
    if handler ~= nil then fail("%s: a route has a handler or a proxy, not both", where) end
    local name = r.proxy
    if type(name) ~= "string" or not ctx.upstreams[name] then
      fail("%s: proxy: unknown upstream %s (declare it under upstreams)", where,
           type(name) == "string" and string.format("%q", name) or type(name))
    end
    handler = function(req) return req:proxy(name) end
  end
  if handler == nil then fail("%s: handler: missing (or proxy = \"upstream name\")", where) end
  local max_body = ctx.settings.max_body
  if r.body ~= nil then
    local ok, v = pcall(schema.check, { body = { type = "size" } }, { body = r.body }, where)
    if not ok then fail("%s", v) end
    max_body = v.body
  end
  return {
    index = i, where = where, methods = bits, path = path, host = r.host,
    name = r.name or (mnames .. " " .. path), max_body = max_body,
    handler = load_handler(ctx, handler, where),
    chain = build_chain(ctx, global_chain, r.policies, where),
  }
end

-- Loads and checks the config at `path`. overrides: { port, workers, home,
-- worker_id, config_dir }.
function M.load(path, overrides)
  overrides = overrides or {}
  -- What runtime modules may want while the config loads (moongate.batch:
  -- the default spool directory, the worker in file names).
  M.dir = overrides.config_dir or dirname(path)
  M.worker_id = overrides.worker_id
  local chunk, err = loadfile(path)
  if not chunk then error(err, 0) end
  local ok, conf = pcall(chunk)
  if not ok then fail("%s: %s", path, tostring(conf)) end
  if type(conf) ~= "table" then fail("%s: the config must return a table", path) end

  local ok2, app = pcall(function()
    -- Fields we check by hand are pulled out before the schema check.
    local workers, health = conf.workers, conf.health
    local plain = {}
    for k, v in pairs(conf) do plain[k] = v end
    plain.workers, plain.health = nil, nil
    if type(plain.listen) == "number" then plain.listen = tostring(plain.listen) end
    local top = schema.check(top_schema, plain, "")
    local settings = {}
    local host, port = core.parse_listen(top.listen)
    if not host then fail('listen: %s (got %q)', port, top.listen) end
    settings.listen_host, settings.listen_port = host, port
    if overrides.port then settings.listen_port = overrides.port end
    if workers == nil or workers == "auto" then
      settings.workers = nil                   -- C default: one per core
    elseif type(workers) == "number" and workers >= 1 and workers <= 256 and workers % 1 == 0 then
      settings.workers = workers
    else
      fail('workers: expected "auto" or a number 1-256, got %s', tostring(workers))
    end
    if overrides.workers then settings.workers = overrides.workers end
    local limits = schema.check(limits_schema, top.limits, "limits.")
    settings.max_head = limits.headers
    settings.max_body = limits.body
    settings.header_timeout = limits.header_timeout
    settings.body_timeout = limits.body_timeout
    settings.keepalive_timeout = limits.keepalive_timeout
    settings.send_timeout = limits.send_timeout
    settings.shutdown_timeout = top.shutdown_timeout
    settings.gc_pause, settings.gc_stepmul = top.gc_pause, top.gc_stepmul
    if health == nil then
      settings.health_path = "/health"
    elseif health == false then
      settings.health_path = false
    elseif type(health) == "string" and health:sub(1, 1) == "/" then
      settings.health_path = health
    else
      fail('health: expected a path like "/health" or false, got %s', tostring(health))
    end
    local logc = schema.check(log_schema, top.log, "log.")
    settings.access_log = logc.access

    local dir = dirname(path)
    local ctx = { dir = dir, settings = settings, policies = {}, handlers = {},
                  policy_dirs = {} }
    for _, p in ipairs(top.policy_paths or {}) do
      ctx.policy_dirs[#ctx.policy_dirs + 1] = join(dir, p)
    end
    ctx.policy_dirs[#ctx.policy_dirs + 1] = (overrides.home or ".") .. "/policies"

    if top.redis then
      local rc = schema.check(redis_schema, top.redis, "redis.")
      local u, err = parse_redis_url(rc.url)
      if not u then fail("redis.url: %s (got %q)", err, rc.url) end
      settings.redis_host, settings.redis_port = u.host, u.port
      settings.redis_password, settings.redis_db = u.password, u.db
      settings.redis_pool, settings.redis_timeout = rc.pool, rc.timeout
    end

    if top.postgres then
      local pc = schema.check(postgres_schema, top.postgres, "postgres.")
      if #pc.dsn >= 1024 then fail("postgres.dsn: longer than 1023 characters") end
      settings.pg_dsn, settings.pg_pool = pc.dsn, pc.pool
      settings.pg_timeout, settings.pg_wait = pc.timeout, pc.wait_timeout
    end

    -- Shared dictionaries first: handlers and policies may take theirs at load.
    local shared = require "moongate.shared"
    for name, size in pairs(top.shared or {}) do
      local where = "shared." .. tostring(name)
      if type(name) ~= "string" or not name:match("^[%a_][%w_]*$") then
        fail("shared: names must be identifiers, got %s", tostring(name))
      end
      local ok, v = pcall(schema.check, { size = { type = "size", min = 8192 } }, { size = size }, "")
      if not ok then fail("%s: expected a size of at least 8k like \"16m\", got %s", where, tostring(size)) end
      local dict, cap = core.shdict(name, v.size)
      if cap ~= v.size then
        core.log("warn", string.format("%s: keeps its capacity of %d bytes until a restart", where, cap))
      end
      shared[name] = dict
    end

    ctx.upstreams = {}
    local pool = 0
    for name, uconf in pairs(top.upstreams or {}) do
      if type(name) ~= "string" or type(uconf) ~= "table" then
        fail("upstreams: expected name = { targets = {...}, ... }")
      end
      local ok, up = pcall(upstream.new, name, uconf, "upstreams." .. name)
      if not ok then fail("%s", up) end
      ctx.upstreams[name] = up
      pool = pool + up.keepalive
    end
    -- Idle upstream connections kept per worker: what the upstreams ask for,
    -- and at least 64 for req:fetch to URLs (an app like the AI proxy calls
    -- its providers by URL, with as many requests in flight as clients).
    settings.upstream_pool = math.max(pool, 64)

    local global_refs = top.policies or { "request-id", "errors" }
    local global_chain = build_chain(ctx, {}, global_refs, "policies")
    local routes = {}
    if #top.routes == 0 and next(top.routes) ~= nil then
      fail("routes: expected a list of routes")
    end
    for i, r in ipairs(top.routes) do routes[i] = load_route(ctx, r, i, global_chain) end
    local global = { index = 0, name = "", chain = global_chain, where = "policies" }
    return { settings = settings, routes = routes, global = global, upstreams = ctx.upstreams }
  end)
  if not ok2 then fail("%s: %s", path, tostring(app)) end
  return app
end

return M
