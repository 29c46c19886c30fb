-- OpenAI's error shape for every relay answer that is not the upstream's own:
--   {"error": {"message": "...", "type": "...", "code": "..." | null}}
-- A handler or policy returns openai.error(...) (a status, a table body and
-- headers); the runtime leaves table bodies alone.
local cjson = require "cjson.safe"

local M = {}

local TYPES = {
  [400] = "invalid_request_error", [401] = "invalid_request_error", [403] = "invalid_request_error",
  [404] = "invalid_request_error", [413] = "invalid_request_error", [429] = "rate_limit_exceeded",
}

function M.error(status, message, code, headers, type_)
  return status, { error = {
    message = message,
    type = type_ or TYPES[status] or (status >= 500 and "server_error" or "invalid_request_error"),
    code = code or cjson.null,
  } }, headers
end

-- "sk-abcd...wxyz" for messages: never the whole key.
function M.redact(key)
  if #key <= 8 then return "sk-***" end
  return key:sub(1, 3) .. "***" .. key:sub(-4)
end

return M
