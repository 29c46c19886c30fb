-- errors: one JSON shape for every error answer of a route.
--
-- Error answers are the ones moongate or a policy produced (404, 405, 413,
-- a Lua error's 500, a 401 from an auth policy...) and a handler's
-- `return 4xx/5xx, "message"`. A handler that returns a table body chose its
-- own shape and is left alone. 5xx messages never carry internal details:
-- a Lua error is always "internal server error".
--
--   shape = "message"   {"message": "..."}                       (default)
--   shape = "openai"    {"error": {"message", "type", "code"}}
--   field = "error"     rename the message field of the "message" shape
--   include_status = true   add "status": <code> to the "message" shape
--
--   policies = { { "errors", shape = "openai" } }
local openai_types = {
  [400] = "invalid_request_error", [401] = "invalid_request_error",
  [403] = "invalid_request_error", [404] = "invalid_request_error",
  [413] = "invalid_request_error", [429] = "rate_limit_exceeded",
}

return {
  schema = {
    shape = { type = "string", default = "message", one_of = { "message", "openai" } },
    field = { type = "string", default = "message" },
    include_status = { type = "boolean", default = false },
  },
  response = function(conf, req, res)
    local msg = res.error
    if not msg then return end
    if conf.shape == "openai" then
      res.body = { error = {
        message = msg,
        type = openai_types[res.status] or (res.status >= 500 and "server_error" or "invalid_request_error"),
        code = res.status,
      } }
    else
      local body = { [conf.field] = msg }
      if conf.include_status then body.status = res.status end
      res.body = body
    end
  end,
}
