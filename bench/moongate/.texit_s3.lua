dofile("/tmp/probe/texit.lua")
-- moongate config for scenario S3 (policy-proxy) of the anchor benchmark, with
-- the stock policies: key-auth over the harness's 1000 keys (bench/conf/keys.txt),
-- a local fixed-window rate limit per consumer ($BENCH_RATE_LIMIT, default 1e9:
-- never hit, like the anchors), request-id (sent upstream), then the S2 proxy to $BENCH_UPSTREAM.
--   GATEWAY_SCENARIOS=S3 MOONGATE_CONFIG=bench/moongate/s3.lua bench/run-moongate.sh
local here = "/work/main/bench/moongate/"
local origin = os.getenv("BENCH_UPSTREAM") or "127.0.0.1:9001"

local keys_file = os.getenv("BENCH_KEYS_FILE") or (here .. "../conf/keys.txt")
local limit = tonumber(os.getenv("BENCH_RATE_LIMIT") or "") or 1000000000
local window = tonumber(os.getenv("BENCH_RATE_WINDOW_S") or "") or 60

local keys = {}
for line in io.lines(keys_file) do
  if #line > 0 then keys[#keys + 1] = line end
end
assert(#keys == 1000, "expected 1000 keys in " .. keys_file)

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
        { "rate-limit", limit = limit, window = window .. "s", by = "consumer", headers = false },
    } },
  },
}
