-- moongate config for the anchor benchmark, scenario S1 only (bench/run-moongate.sh).
-- S1 lua-hello: GET / on 127.0.0.1:9301 -> 200 application/json {"hello":"world"}\n,
-- produced by a Lua handler.  Matches the anchors' tuning: one worker, no access
-- log, client keep-alive timeout 300 s (see bench/README.md, "Method").
return {
  listen = "127.0.0.1:9301",
  workers = 1,
  log = { access = false },
  limits = { keepalive_timeout = "300s" },
  policies = {},          -- like the anchors: no request-id, plain handler
  routes = {
    { "GET", "/", handler = function(req)
        return 200, '{"hello":"world"}\n', { ["Content-Type"] = "application/json" }
      end },
  },
}
