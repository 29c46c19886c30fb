-- `moongate test FILE.lua`: runs Lua test files with no server.
--
-- A test file calls test(name, fn) for each case; inside, assert() and
-- eq(got, want [, what]) fail the case. The summary line is
-- "N passed, N failed"; the exit status is 0 only when nothing failed.
local M = {}

local function repr(v)
  if type(v) == "string" then return string.format("%q", v) end
  if type(v) ~= "table" then return tostring(v) end
  local ok, cjson = pcall(require, "cjson")
  if ok then
    local ok2, s = pcall(cjson.encode, v)
    if ok2 then return s end
  end
  return tostring(v)
end

local function deep_eq(a, b)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" then return false end
  for k, v in pairs(a) do if not deep_eq(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

function M.eq(got, want, what)
  if not deep_eq(got, want) then
    error(string.format("%sexpected %s, got %s", what and (what .. ": ") or "",
                        repr(want), repr(got)), 2)
  end
end

-- Calls fn and returns the error message it raised, or fails.
function M.raises(fn, pattern)
  local ok, err = pcall(fn)
  if ok then error("expected an error, got none", 2) end
  err = tostring(err)
  if pattern and not err:find(pattern, 1, true) then
    error(string.format("error %q does not contain %q", err, pattern), 2)
  end
  return err
end

function M.run_file(path)
  local cases = {}
  local env = setmetatable({
    test = function(name, fn) cases[#cases + 1] = { name = name, fn = fn } end,
    eq = M.eq, raises = M.raises,
  }, { __index = _G })
  local chunk, err = loadfile(path)
  if not chunk then error(err, 0) end
  setfenv(chunk, env)
  chunk()
  local passed, failed = 0, 0
  for _, c in ipairs(cases) do
    local ok, e = xpcall(c.fn, debug.traceback)
    if ok then
      passed = passed + 1
      print("ok - " .. c.name)
    else
      failed = failed + 1
      print("not ok - " .. c.name .. "\n    " .. tostring(e):gsub("\n", "\n    "))
    end
  end
  print(string.format("%d passed, %d failed", passed, failed))
  return failed
end

return M
