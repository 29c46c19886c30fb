-- examples/aiproxy: the AI Proxy admin API (groups and tokens) on
-- PostgreSQL + Redis, as in the seed's Go service.
--
--   ADMIN_KEY=sealos-admin SQL_DSN=postgres://user:pass@host:5432/postgres \
--   REDIS_CONN_STRING=redis://:pass@host:6379 build/moongate --port 8080 examples/aiproxy/gateway.lua
--
-- Environment (read at start and on every reload):
--   ADMIN_KEY          required; `Authorization: <key>` or `Bearer <key>` on /api/* (not /api/status)
--   SQL_DSN            required; postgres://... URL or libpq key=value form
--   REDIS_CONN_STRING  optional; redis://[:password@]host:port[/db] (token lookup cache)
--   LISTEN_ADDR        ":8080" (--port overrides it)
--   AIPROXY_ACCESS_LOG "on" (default) | "off": the access log, one JSON line per
--                      request on stdout; every relayed request has its row in
--                      PostgreSQL's request log either way
--   AIPROXY_TEST_FAIL_CASCADE  tests only: "tokens" | "group" makes a group delete fail
--                      inside its transaction at that point
local core = require "moongate.core"
local timer = require "moongate.timer"
local schema = require "lib.schema"

local function refuse(name, msg) error(name .. ": " .. msg, 0) end

local listen = os.getenv("LISTEN_ADDR") or ":8080"
do
  local ok, err = core.parse_listen(listen)
  if not ok then refuse("LISTEN_ADDR", string.format("%s (got %q)", err, listen)) end
end
local admin_key = os.getenv("ADMIN_KEY")
if not admin_key or admin_key == "" then refuse("ADMIN_KEY", "is required (the admin API key)") end
local dsn = os.getenv("SQL_DSN")
if not dsn or dsn == "" then refuse("SQL_DSN", 'is required (like "postgres://user:pass@127.0.0.1:5432/postgres")') end
local redis_url = os.getenv("REDIS_CONN_STRING")
if redis_url == "" then redis_url = nil end
if redis_url and not redis_url:match("^rediss?://") then
  refuse("REDIS_CONN_STRING", string.format('must be a redis:// URL (got %q)', redis_url))
end
local access_log = os.getenv("AIPROXY_ACCESS_LOG") or "on"
if access_log ~= "on" and access_log ~= "off" then
  refuse("AIPROXY_ACCESS_LOG", string.format('must be "on" or "off" (got %q)', access_log))
end

-- Create/migrate the schema at start (idempotent; every worker may run it,
-- an advisory lock serialises them). Handlers retry it if it failed.
timer.after(0, schema.migrate_logged)

local ADMIN = { { "admin-key", env = "ADMIN_KEY" } }
local RELAY = { { "errors", shape = "openai" }, "relay-auth" }
local function relay(method, path, name)
  return { method, path, handler = "routes/relay.lua", name = name, policies = RELAY }
end
local function admin(method, path, file, name)
  return { method, path, handler = file, name = name, policies = ADMIN }
end

return {
  listen = listen,
  workers = "auto",
  log = { access = access_log == "on" },
  limits = { headers = "32k", body = "16m" },    -- chat bodies carry images (base64)
  policy_paths = { "policies" },
  -- Admin answers use the seed's envelope {"success": false, "message": ...};
  -- the relay's routes replace it with OpenAI's error shape.
  policies = { "request-id", { "errors", shape = "template", template = { success = false, message = "$message" } } },
  postgres = { dsn = dsn, pool = 4, timeout = "10s", wait_timeout = "5s" },
  redis = redis_url and { url = redis_url, pool = 4, timeout = "1s" } or nil,
  shared = { tokens = "8m", aiproxy = "16m" },
  routes = {
    { "GET", "/api/status", handler = "routes/status.lua", name = "status" },

    relay("POST", "/v1/chat/completions", "relay.chat"),
    relay("POST", "/v1/completions",      "relay.completions"),
    relay("POST", "/v1/embeddings",       "relay.embeddings"),
    relay("GET",  "/v1/models",           "relay.models"),
    relay("GET",  "/v1/models/:model",    "relay.model"),

    admin("POST",   "/api/group/",           "routes/group.lua", "group.create"),
    admin("POST",   "/api/group/:id",        "routes/group.lua", "group.create"),
    admin("GET",    "/api/group/:id",        "routes/group.lua", "group.get"),
    admin("DELETE", "/api/group/:id",        "routes/group.lua", "group.delete"),
    admin("POST",   "/api/group/:id/status", "routes/group.lua", "group.status"),
    admin("GET",    "/api/groups/",          "routes/group.lua", "group.list"),
    admin("GET",    "/api/groups",           "routes/group.lua", "group.list"),

    admin("POST",   "/api/token/:group",            "routes/token.lua", "token.create"),
    admin("GET",    "/api/token/:group",            "routes/token.lua", "token.group"),
    admin("GET",    "/api/token/:group/:id",        "routes/token.lua", "token.get"),
    admin("DELETE", "/api/token/:group/:id",        "routes/token.lua", "token.delete"),
    admin("POST",   "/api/token/:group/:id/status", "routes/token.lua", "token.status"),
    admin("GET",    "/api/tokens/",                 "routes/token.lua", "token.list"),
    admin("GET",    "/api/tokens",                  "routes/token.lua", "token.list"),
    admin("GET",    "/api/lookup/:key",             "routes/token.lua", "token.lookup"),

    admin("POST",   "/api/channel/",           "routes/channel.lua", "channel.create"),
    admin("GET",    "/api/channels/",          "routes/channel.lua", "channel.list"),
    admin("GET",    "/api/channels",           "routes/channel.lua", "channel.list"),
    admin("GET",    "/api/channel/:id",        "routes/channel.lua", "channel.get"),
    admin("PUT",    "/api/channel/:id",        "routes/channel.lua", "channel.update"),
    admin("DELETE", "/api/channel/:id",        "routes/channel.lua", "channel.delete"),
    admin("POST",   "/api/channel/:id/status", "routes/channel.lua", "channel.status"),

    admin("GET",    "/api/logs/",        "routes/log.lua", "log.list"),
    admin("GET",    "/api/logs",         "routes/log.lua", "log.list"),
    admin("DELETE", "/api/logs/",        "routes/log.lua", "log.delete"),
    admin("DELETE", "/api/logs",         "routes/log.lua", "log.delete"),
    admin("GET",    "/api/log/:group",   "routes/log.lua", "log.group"),

    admin("GET",    "/api/model_configs/",        "routes/model_config.lua", "model_config.list"),
    admin("GET",    "/api/model_configs",         "routes/model_config.lua", "model_config.list"),
    admin("POST",   "/api/model_config/:model",   "routes/model_config.lua", "model_config.set"),
    admin("GET",    "/api/model_config/:model",   "routes/model_config.lua", "model_config.get"),
    admin("DELETE", "/api/model_config/:model",   "routes/model_config.lua", "model_config.delete"),
  },
}
