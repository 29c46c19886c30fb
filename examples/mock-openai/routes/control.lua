-- The mock's own control endpoints (no API key needed):
--   GET  /mock/stats   counters of what /v1/* received
--   POST /mock/reset   clears the counters and the global fault
--   GET  /mock/fault   the global fault: {"fault": name|null, "remaining": n|null}
--   POST /mock/fault   {"fault": "<name>", "count": K} (K requests; default: every
--                      request until cleared); {"fault": null} clears it
local cjson = require "cjson.safe"
local mock = require "lib.mock"

local JSON = { ["Content-Type"] = "application/json" }
local null = cjson.null

local function fault_state()
  local g = mock.global
  return 200, mock.encode({ fault = g.fault or null, remaining = g.remaining or null }), JSON
end

local function bad(message)
  return mock.error(400, message, "invalid_request_error", "mock_control")
end

local H = {}

function H.stats()
  return 200, mock.stats_json(), JSON
end

function H.reset()
  mock.reset()
  return 200, mock.stats_json(), JSON
end

H["fault.get"] = fault_state

H["fault.set"] = function(req)
  local body = cjson.decode(req:body() or "")
  if type(body) ~= "table" then return bad('the body must be a JSON object like {"fault": "500", "count": 1}') end
  local f, count = body.fault, body.count
  if f == nil or f == null then
    mock.global.fault, mock.global.remaining = nil, nil
    return fault_state()
  end
  if type(f) ~= "string" or not mock.FAULTS[f] then
    local names = {}
    for k in pairs(mock.FAULTS) do names[#names + 1] = k end
    table.sort(names)
    return bad("unknown fault " .. mock.encode(f) .. "; one of: " .. table.concat(names, ", "))
  end
  if count == null then count = nil end
  if count ~= nil and (type(count) ~= "number" or count % 1 ~= 0 or count < 1) then
    return bad("count must be a positive integer (or absent: every request)")
  end
  mock.global.fault, mock.global.remaining = f, count
  return fault_state()
end

return function(req)
  return H[req.route](req)
end
