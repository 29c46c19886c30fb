-- envelope: every error answer (404/405 from routing, 401 from admin-key, a
-- Lua error's 500, a handler's `return 4xx, "msg"`) as the aiproxy envelope
-- {"success": false, "message": "..."}.
return {
  schema = {},
  response = function(conf, req, res)
    if res.error then
      res.body = { success = false, message = res.error }
    end
  end,
}
