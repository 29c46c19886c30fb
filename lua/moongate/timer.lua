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
--
-- Close hooks: synchronous cleanup when a configuration generation ends.
--   timer.on_close(function() ... end)
-- runs fn() once, in this Lua state, right before the state is closed: after
-- a reload (SIGHUP) when the old generation's last in-flight request has
-- ended (its timers already stopped at the reload), on a graceful stop
-- (SIGTERM/SIGINT) once requests are done or shutdown_timeout passed, and
-- when a config check (-t, reload validation) closes its state. Hooks run in
-- registration order. A hook must not wait: sleep, fetch, pg and redis raise
-- there (plain blocking io on local files is fine, and is the point: e.g.
-- moongate.batch writes its unsent rows to its spool). A hook that raises is
-- logged and the others still run. Timer runs that were parked when the
-- state closes are never resumed.
--
--   timer.on_retire(function() ... end)
-- runs fn() once when a reload replaces this generation while requests are
-- still in flight on it (its timers have just stopped; its close hooks run
-- later, when the last of those requests ends). Same rules as on_close: no
-- waiting, errors logged. A generation with nothing in flight at the reload
-- goes straight to its close hooks.
local core = require "moongate.core"

local M = {}

local close_hooks = {}

function M.on_close(fn)
  assert(type(fn) == "function", "timer.on_close: expected a function")
  close_hooks[#close_hooks + 1] = fn
  return true
end

local retire_hooks = {}

function M.on_retire(fn)
  assert(type(fn) == "function", "timer.on_retire: expected a function")
  retire_hooks[#retire_hooks + 1] = fn
  return true
end

local function run(hooks, what)
  for i = 1, #hooks do
    local ok, err = xpcall(hooks[i], debug.traceback)
    if not ok then core.log("error", what .. " hook: " .. tostring(err)) end
  end
end

-- Called by the C side (src/lua_timer.c, mg_app_run_hooks), once each.
function M._run_retire_hooks()
  local hooks = retire_hooks
  retire_hooks = {}
  run(hooks, "on_retire")
end

function M._run_close_hooks()
  local hooks = close_hooks
  close_hooks, retire_hooks = {}, {}
  run(hooks, "on_close")
end

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
