-- examples/hello: the smallest moongate application.
-- Run it:   build/moongate examples/hello/gateway.lua
-- Add a route: edit this file (or a file under routes/), then
--           kill -HUP <pid>      -- no restart, no dropped connection
return {
  listen = os.getenv("LISTEN_ADDR") or ":8080",
  workers = "auto",
  limits = { headers = "32k", body = "1m", header_timeout = "10s", keepalive_timeout = "75s" },
  policies = { "request-id", "errors" },          -- every route gets these first
  routes = {
    { "GET", "/hello", function() return 200, { hello = "world" } end },
    { "GET", "/hello/:name", handler = "routes/greet.lua" },
    { "POST", "/echo", handler = "routes/echo.lua" },
    { "GET", "/stream", handler = "routes/stream.lua" },
  },
}
