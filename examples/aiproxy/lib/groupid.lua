-- The group id rule, shared by group and token routes: 1-64 characters, no
-- control characters. Returns nil or the message naming the problem.
local util = require "lib.util"
local M = {}
function M.check_id(id)
  if util.is_null(id) or id == "" then return "group id is required" end
  if type(id) ~= "string" then return "group id must be a string" end
  if #id > 64 then return "group id is too long (at most 64 characters)" end
  if id:find("[%z\1-\31\127]") then return "group id must not contain control characters" end
end
return M
