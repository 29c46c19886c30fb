-- Unit tests for lua/moongate/config.lua: the messages an operator sees.
local config = require "moongate.config"

local dir = os.tmpname()
os.remove(dir)
assert(os.execute("mkdir -p " .. dir .. "/routes") == 0)

local function write(name, text)
  local f = assert(io.open(dir .. "/" .. name, "w"))
  f:write(text)
  f:close()
  return dir .. "/" .. name
end

local home = os.getenv("MOONGATE_HOME") or (debug.getinfo(1, "S").source:match("^@(.*)/tests/lua/") or ".")

local function load(text)
  return config.load(write("gateway.lua", text), { home = home })
end

local function load_err(text)
  local ok, err = pcall(load, text)
  assert(not ok, "expected the config to be refused")
  return err
end

test("a minimal config loads with defaults", function()
  local app = load([[return { routes = { { "GET", "/", function() return 200 end } } }]])
  eq(app.settings.listen_port, 8080)
  eq(app.settings.max_head, 32768)
  eq(app.settings.max_body, 1048576)
  eq(app.settings.keepalive_timeout, 75000)
  eq(app.settings.health_path, "/health")
  eq(#app.routes, 1)
  eq(app.routes[1].name, "GET /")
  -- request-id and errors are on by default
  eq(#app.routes[1].chain, 2)
end)

test("gc_pause and gc_stepmul are LuaJIT's setpause and setstepmul", function()
  local app = load([[return { gc_pause = 400, gc_stepmul = 300, routes = { { "GET", "/", function() return 200 end } } }]])
  eq(app.settings.gc_pause, 400)
  eq(app.settings.gc_stepmul, 300)
  app = load([[return { routes = { { "GET", "/", function() return 200 end } } }]])
  eq(app.settings.gc_pause, 200)
  eq(app.settings.gc_stepmul, 100)                -- ours, not LuaJIT's 200
  local err0 = load_err([[return { gc_stepmul = 10, routes = { { "GET", "/", function() return 200 end } } }]])
  assert(tostring(err0):find("gc_stepmul", 1, true), err0)
  local err = load_err([[return { gc_pause = 50, routes = { { "GET", "/", function() return 200 end } } }]])
  assert(tostring(err):find("gc_pause", 1, true), err)
  err = load_err([[return { gc_pause = "big", routes = { { "GET", "/", function() return 200 end } } }]])
  assert(tostring(err):find("gc_pause", 1, true), err)
end)

test("human values are normalized", function()
  local app = load([[return { listen = "127.0.0.1:9000", workers = 3,
    limits = { headers = "16k", body = "2m", header_timeout = "1500ms" },
    routes = { { "POST", "/up", function() end, body = "8m" } } }]])
  eq(app.settings.listen_host, "127.0.0.1")
  eq(app.settings.listen_port, 9000)
  eq(app.settings.workers, 3)
  eq(app.settings.max_head, 16384)
  eq(app.settings.header_timeout, 1500)
  eq(app.routes[1].max_body, 8 * 1024 * 1024)
end)

test("errors name the file, the route and the field", function()
  local err = load_err([[return { routes = { { "GET", "/a", function() end },
                                              { "GET", "/b", handler = "routes/missing.lua" } } }]])
  assert(err:find(dir .. "/gateway.lua: routes[2] (GET /b): handler:", 1, true), err)
  err = load_err([[return { listen = ":99999", routes = {} }]])
  assert(err:find("listen: port out of range", 1, true), err)
  err = load_err([[return { limits = { header_timeout = "soon" }, routes = {} }]])
  assert(err:find("limits.header_timeout: expected a duration", 1, true), err)
  err = load_err([[return { rout = {}, routes = {} }]])
  assert(err:find("rout: unknown field", 1, true), err)
  err = load_err([[return { routes = { { "FETCH", "/", function() end } } }]])
  assert(err:find('routes[1]: unknown method "FETCH"', 1, true), err)
  err = load_err([[return { routes = { { "GET", "/", function() end, policies = { "nope" } } } }]])
  assert(err:find('routes[1] (GET /): policies[1]: unknown policy "nope"', 1, true), err)
  err = load_err([[return { routes = { { "GET", "/", function() end,
                     policies = { { "errors", shape = "xml" } } } } }]])
  assert(err:find('routes[1] (GET /): policies[1]: policy "errors": shape: must be one of', 1, true), err)
end)

test("a handler file with a syntax error reports file and line", function()
  write("routes/bad.lua", "return function(req)\n  return 200,\nend\n")
  local err = load_err([[return { routes = { { "GET", "/", handler = "routes/bad.lua" } } }]])
  assert(err:find("routes/bad.lua:3:", 1, true), err)
end)

test("route policies replace global ones of the same name", function()
  local app = load([[return { policies = { "request-id", "errors" },
    routes = { { "GET", "/", function() end, policies = { { "errors", shape = "openai" } } } } }]])
  local chain = app.routes[1].chain
  eq(#chain, 2)
  eq(chain[2].name, "errors")
  eq(chain[2].conf.shape, "openai")
  eq(app.global.chain[2].conf.shape, "message")
end)
