-- GET /api/status: no key needed. Says whether the database answers.
local pg = require "moongate.postgres"
local util = require "lib.util"
local started = util.now_ms()
return function(req)
  local rows = pg.query("SELECT 1 AS one")
  return util.ok({ status = "ok", start_time = started, database = rows and "ok" or "unavailable" })
end
