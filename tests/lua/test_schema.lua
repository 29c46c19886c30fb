-- Unit tests for lua/moongate/schema.lua (run by `moongate test`).
local schema = require "moongate.schema"

test("defaults are filled in and converted", function()
  local out = schema.check({
    header = { type = "string", default = "X-Request-ID" },
    window = { type = "duration", default = "1m" },
    size = { type = "size", default = "32k" },
  }, {}, "p")
  eq(out, { header = "X-Request-ID", window = 60000, size = 32768 })
end)

test("given values win over defaults", function()
  local out = schema.check({ n = { type = "integer", default = 1 } }, { n = 5 }, "p")
  eq(out.n, 5)
end)

test("unknown settings are refused with the field named", function()
  local err = raises(function()
    schema.check({ limit = { type = "integer" } }, { limt = 5 }, 'routes[1] (GET /x): policy "rl"')
  end)
  assert(err:find('routes[1] (GET /x): policy "rl": limt: unknown field', 1, true), err)
  assert(err:find("known: limit", 1, true), err)
end)

test("type errors say what was expected and what was given", function()
  local err = raises(function() schema.check({ n = { type = "integer" } }, { n = "five" }, "") end)
  eq(err, 'n: expected an integer, got string "five"')
  err = raises(function() schema.check({ n = { type = "integer" } }, { n = 1.5 }, "") end)
  assert(err:find("expected an integer", 1, true), err)
end)

test("required, min, max and one_of", function()
  raises(function() schema.check({ n = { type = "number", required = true } }, {}, "") end, "n: is required")
  raises(function() schema.check({ n = { type = "number", min = 1 } }, { n = 0 }, "") end, "at least 1")
  raises(function() schema.check({ n = { type = "number", max = 9 } }, { n = 10 }, "") end, "at most 9")
  raises(function()
    schema.check({ s = { type = "string", one_of = { "a", "b" } } }, { s = "c" }, "")
  end, 'must be one of "a", "b"')
end)

test("durations and sizes reject nonsense", function()
  raises(function() schema.check({ d = { type = "duration" } }, { d = "10 parsecs" }, "limits.") end,
         "limits.d: expected a duration")
  raises(function() schema.check({ s = { type = "size" } }, { s = "big" }, "") end, "expected a size")
  eq(schema.check({ d = { type = "duration" } }, { d = 2 }, "").d, 2000)   -- numbers are seconds
end)

test("arrays check every item", function()
  eq(schema.check({ a = { type = "array", items = "string" } }, { a = { "x", "y" } }, "").a, { "x", "y" })
  raises(function() schema.check({ a = { type = "array", items = "string" } }, { a = { "x", 2 } }, "") end,
         "a[2]: expected a string")
  raises(function() schema.check({ a = { type = "array" } }, { a = { k = 1 } }, "") end, "expected a list")
end)
