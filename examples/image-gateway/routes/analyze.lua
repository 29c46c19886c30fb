-- POST /api/v1/analyze  {"base64Image": "<base64>"}
--
-- Sends {"image_data": ...} to the inference service (the "inference"
-- upstream of gateway.lua) and returns its JSON list of {label, confidence}
-- untouched. Failures are translated as the seed's Go client does, each with a
-- status that says what went wrong:
--
--   body not JSON (or not an object, or base64Image not a string)  400 Invalid request body
--   base64Image missing or empty                                   400 base64Image field is required
--   instance refused / reset / DNS / TLS                           502 inference service is unavailable
--   every instance marked down (passive health)                    503 inference service is unavailable
--   no complete answer within INFERENCE_TIMEOUT                    504 inference service is unavailable
--   answer cut off mid-body                                        502 failed to read response from inference service
--   non-200 with FastAPI {"detail": "..."}                         502 inference service error: <detail>
--   other non-200                                                  502 inference service returned status code N
--                                                                  (503/504 when the service said 503/504)
--   200 whose body is not a JSON list of predictions               502 invalid response format from inference service
local cjson = require "cjson.safe"

local UNAVAILABLE = "inference service is unavailable"
local fetch_status = { timeout = 504, unavailable = 503 }

-- The seed decodes into []Prediction{Label string; Confidence float64}:
-- a list whose items are objects with (optional) string label and numeric
-- confidence. Anything else is "invalid response format".
local function valid_predictions(body)
  if not body:match("^%s*%[") then return false end
  local list = cjson.decode(body)
  if type(list) ~= "table" then return false end
  for i = 1, #list do
    local p = list[i]
    if type(p) ~= "table" then return false end
    if p.label ~= nil and type(p.label) ~= "string" then return false end
    if p.confidence ~= nil and type(p.confidence) ~= "number" then return false end
  end
  for k in pairs(list) do
    if type(k) ~= "number" then return false end
  end
  return true
end

local function fail(req, status, message, detail)
  req:log_field("inference_error", detail or message)
  return status, message
end

return function(req)
  if req.method == "OPTIONS" then            -- a plain OPTIONS (preflights never get here)
    return 204, nil, { Allow = "POST, OPTIONS" }
  end

  -- The seed binds with Echo: an empty body binds nothing (so the field is
  -- missing); a body that does not decode into {base64Image string} is invalid.
  local image
  if req:body():match("^%s*$") == nil then
    local body = cjson.decode(req:body())
    if type(body) ~= "table" or not req:body():match("^%s*{") then
      return 400, "Invalid request body"
    end
    image = body.base64Image
    if image == cjson.null then image = nil end
    if image ~= nil and type(image) ~= "string" then return 400, "Invalid request body" end
  end
  if image == nil or image == "" then return 400, "base64Image field is required" end

  local res, kind, msg = req:fetch("inference", {
    method = "POST", path = "", json = { image_data = image },
  })
  if not res then
    if kind == "incomplete" then
      return fail(req, 502, "failed to read response from inference service", "incomplete: " .. tostring(msg))
    end
    return fail(req, fetch_status[kind] or 502, UNAVAILABLE, kind .. ": " .. tostring(msg))
  end
  req:log_field("inference_status", res.status)

  if res.status ~= 200 then
    local status = (res.status == 503 or res.status == 504) and res.status or 502
    local err = cjson.decode(res.body)
    if type(err) == "table" and type(err.detail) == "string" and err.detail ~= "" then
      return fail(req, status, "inference service error: " .. err.detail)
    end
    return fail(req, status, "inference service returned status code " .. res.status)
  end

  if not valid_predictions(res.body) then
    return fail(req, 502, "invalid response format from inference service")
  end
  return { status = 200, headers = { ["Content-Type"] = "application/json" },
           body = res.body, raw = true }
end
