-- moongate config for the data benchmark (bench/run-data.sh): one worker,
-- no access log; /pg does one primary-key SELECT, /redis one INCR.
local pg = require "moongate.postgres"
local redis = require "moongate.redis"
return {
  listen = "127.0.0.1:9401",
  workers = 1,
  log = { access = false },
  limits = { keepalive_timeout = "300s" },
  policies = {},
  postgres = { dsn = os.getenv("BENCH_PG_DSN"), pool = 8 },
  redis = { url = os.getenv("BENCH_REDIS_URL"), pool = 4 },
  routes = {
    { "GET", "/pg", function(req)
        local rows, err = pg.query("SELECT abalance FROM pgbench_accounts WHERE aid = $1", 1 + (req.remote_port % 100000))
        if not rows then return 503, err end
        return 200, { abalance = rows[1].abalance }
      end },
    { "GET", "/redis", function()
        local n, err = redis.call("INCR", "bench:counter")
        if not n then return 503, err end
        return 200, { n = n }
      end },
  },
}
