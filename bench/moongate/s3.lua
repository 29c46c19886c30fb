-- moongate config for scenario S3 (policy-proxy) of the anchor benchmark, with
-- the stock policies: key-auth over the harness's 1000 keys (bench/conf/keys.txt),
-- a local fixed-window rate limit per consumer (limit 1e9: never hit, like the
-- anchors), request-id (sent upstream), then the S2 proxy to $BENCH_UPSTREAM.
--   GATEWAY_SCENARIOS=S3 MOONGATE_CONFIG=bench/moongate/s3.lua bench/run-moongate.sh
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local origin = os.getenv("BENCH_UPSTREAM") or "127.0.0.1:9001"

local keys = {}
for line in io.lines(here .. "../conf/keys.txt") do
  if #line > 0 then keys[#keys + 1] = line end
end
assert(#keys == 1000, "expected 1000 keys in bench/conf/keys.txt")

return {
  listen = "127.0.0.1:9303",
  workers = 1,
  log = { access = false },
  limits = { keepalive_timeout = "300s" },
  policies = {
    { "request-id", trust_incoming = false },
    { "errors" },
  },
  upstreams = {
    origin = { targets = { "http://" .. origin }, keepalive = 64, retries = 0 },
  },
  routes = {
    { "ANY", "/*", proxy = "origin", policies = {
        { "key-auth", keys = keys, consumer_header = "" },
        { "rate-limit", limit = 1000000000, window = "60s", by = "consumer", headers = false },
    } },
  },
}
