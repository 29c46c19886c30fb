-- Where the relay keeps its counters: Redis when REDIS_CONN_STRING is set
-- (shared by every instance), else the `aiproxy` shared dictionary (this
-- machine). AIPROXY_FAULT_TOLERANT (default "true") decides what happens
-- when Redis is configured but unreachable: "true" falls back to the
-- shared dictionary (limits become per machine), "false" answers 503.
local M = {}

local url = os.getenv("REDIS_CONN_STRING")
M.redis = (url and url ~= "") and require "moongate.redis" or nil
M.fault_tolerant = (os.getenv("AIPROXY_FAULT_TOLERANT") or "true") ~= "false"

local shared = require "moongate.shared"   -- filled in place by the config's `shared`
function M.dict()
  return shared.aiproxy
end

return M
