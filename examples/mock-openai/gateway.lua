-- examples/mock-openai: a mock OpenAI-compatible provider, as a moongate app.
-- For the AI proxy's tests and demo; deterministic answers, faults on demand,
-- and counters of what it received. See README.md for the exact behaviour.
--
--   build/moongate examples/mock-openai/gateway.lua            # :8090
--   LISTEN_ADDR=127.0.0.1:9000 build/moongate examples/mock-openai/gateway.lua
--   MOCK_MODELS=gpt-4o,my-model build/moongate --port 9000 examples/mock-openai/gateway.lua
--
-- One worker: the counters (GET /mock/stats) and the global fault live in
-- this worker's Lua state, so they are exact. (--workers N would split them,
-- and a reload -- SIGHUP -- starts them afresh.)
local function v1(method, path, name)
  return { method, path, handler = "routes/v1.lua", name = name }
end
local function control(method, path, name)
  return { method, path, handler = "routes/control.lua", name = name }
end

return {
  listen = os.getenv("LISTEN_ADDR") or ":8090",
  workers = 1,
  shutdown_timeout = "1s",          -- a stalled answer must not hold a stop for long
  limits = { body = "10m" },
  log = { access = true },
  policies = { "request-id", { "errors", shape = "openai" } },
  routes = {
    v1("POST", "/v1/chat/completions", "chat"),
    v1("POST", "/v1/completions",      "completions"),
    v1("POST", "/v1/embeddings",       "embeddings"),
    v1("GET",  "/v1/models",           "models"),
    v1("GET",  "/v1/models/:model",    "model"),

    control("GET",  "/mock/stats", "stats"),
    control("POST", "/mock/reset", "reset"),
    control("GET",  "/mock/fault", "fault.get"),
    control("POST", "/mock/fault", "fault.set"),
  },
}
