-- Background work, outside any request:
--   local timer = require "moongate.timer"
--   timer.every(10, function() ... end)   -- every 10 s in every worker
--   timer.after(1.5, function() ... end)  -- once
-- The function runs in its own coroutine and may wait (req-less fetch,
-- sleep). A run still going when the next tick comes skips that tick. Timers
-- started while the config loads belong to that configuration: a reload
-- stops them and the new configuration starts its own. Errors are logged.
-- Returns true, or false while the config is only being checked (-t, or the
-- main process validating a reload), where no timer runs.
local core = require "moongate.core"

local M = {}

function M.every(seconds, fn)
  assert(type(seconds) == "number" and seconds > 0, "timer.every: seconds must be a positive number")
  assert(type(fn) == "function", "timer.every: expected a function")
  if not core.timer then return false end
  return core.timer(seconds, fn, seconds)
end

function M.after(seconds, fn)
  assert(type(seconds) == "number" and seconds >= 0, "timer.after: seconds must be a number >= 0")
  assert(type(fn) == "function", "timer.after: expected a function")
  if not core.timer then return false end
  return core.timer(seconds, fn)
end

return M
