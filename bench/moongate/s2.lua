-- moongate config for scenario S2 (plain reverse proxy) of the anchor benchmark:
-- any path on 127.0.0.1:9302 -> http://$BENCH_UPSTREAM (same path), keep-alive
-- upstream connections, one worker, no access log, client keep-alive 300 s.
--   GATEWAY_SCENARIOS=S2 MOONGATE_CONFIG=bench/moongate/s2.lua bench/run-moongate.sh
local origin = os.getenv("BENCH_UPSTREAM") or "127.0.0.1:9001"
return {
  listen = "127.0.0.1:9302",
  workers = 1,
  log = { access = false },
  limits = { keepalive_timeout = "300s" },
  policies = {},          -- like the anchors: no request-id, plain proxy
  upstreams = {
    origin = { targets = { "http://" .. origin }, keepalive = 64, retries = 0 },
  },
  routes = {
    { "ANY", "/*", proxy = "origin" },
  },
}
