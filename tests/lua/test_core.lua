-- moongate.core helpers that Lua code calls on the request path.
local core = require "moongate.core"

test("clean_utf8 hands clean text back as it is", function()
  for _, s in ipairs({ "", "gpt-4o-mini", "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", string.rep("x", 5000) }) do
    eq(core.clean_utf8(s), s)
  end
end)

test("clean_utf8 turns every byte outside a valid character into ?", function()
  eq(core.clean_utf8("a\0b"), "a?b")
  eq(core.clean_utf8("\xff\xfe"), "??")
  eq(core.clean_utf8("ok \xe2\x82"), "ok ??")                 -- cut mid-character (a 1000-byte cut)
  eq(core.clean_utf8("\xc0\xafx"), "??x")                     -- overlong
  eq(core.clean_utf8("\xed\xa0\x80"), "???")                  -- a surrogate
  eq(core.clean_utf8("\xe2\x82\xac\x80\xc3\xa9"), "\xe2\x82\xac?\xc3\xa9")
end)

test("clean_utf8 finds a bad byte at any position of a long ASCII text (scanned 8 bytes at a time)", function()
  for len = 1, 40 do
    for at = 1, len do
      local plain = string.rep("a", len)
      for _, bad in ipairs({ "\0", "\xff", "\x80" }) do
        local s = plain:sub(1, at - 1) .. bad .. plain:sub(at + 1)
        eq(core.clean_utf8(s), plain:sub(1, at - 1) .. "?" .. plain:sub(at + 1))
      end
      local s = plain:sub(1, at - 1) .. "\xc3\xa9" .. plain:sub(at + 1)   -- a valid 2-byte character
      eq(core.clean_utf8(s), s)
    end
  end
end)

test("clean_utf8 refuses what is not a string", function()
  local ok, err = pcall(core.clean_utf8, 42)
  eq(ok, false)
  assert(tostring(err):find("string expected"), err)
  eq(pcall(core.clean_utf8), false)
end)

test("userdata methods refuse a value of another type, naming the type they want", function()
  local dict = core.shdict("test_core_check", 64 * 1024)
  eq(dict:set("k", "v"), true)
  eq(dict:get("k"), "v")
  local get = dict.get
  local ok, err = pcall(get, {}, "k")
  eq(ok, false)
  assert(tostring(err):find("moongate.shdict expected, got table", 1, true), err)
  ok, err = pcall(get, io.stdout, "k")          -- a userdata of another type
  eq(ok, false)
  assert(tostring(err):find("moongate.shdict expected, got userdata", 1, true), err)
  ok, err = pcall(get, newproxy(), "k")               -- a userdata of 0 bytes
  eq(ok, false)
  assert(tostring(err):find("moongate.shdict expected, got userdata", 1, true), err)
  ok, err = pcall(get, require("cjson").null, "k")   -- a light userdata (NULL)
  eq(ok, false)
  assert(tostring(err):find("moongate.shdict expected, got userdata", 1, true), err)
end)

-- json_members: what json.member and a fetched answer's members() rest on.
test("json_members gives each member's JSON text, false when absent, the last of duplicates", function()
  local text = ' {"model":"gpt-4o","stream":true,"usage":{"a":[1,2]},"model":"m2","n":-1.5e3} '
  eq(core.json_members(text, "stream"), "true")
  eq(select("#", core.json_members(text, "usage", "none")), 2)
  local u, none = core.json_members(text, "usage", "none")
  eq(u, '{"a":[1,2]}')
  eq(none, false)
  local m, s, n = core.json_members(text, "model", "stream", "n")
  eq(m, '"m2"'); eq(s, "true"); eq(n, "-1.5e3")
  local r = { core.json_members(text, "a", "model", "b", "stream", "c", "usage", "d", "n") }
  eq(#r, 8)
  eq(r[1], false); eq(r[2], '"m2"'); eq(r[4], "true"); eq(r[6], '{"a":[1,2]}'); eq(r[8], "-1.5e3")
  eq(core.json_members('{"k\\u00e9y":1}', "k\xc3\xa9y"), "1")      -- keys compared as decoded
end)

test("json_members answers nil, err for what is not one JSON object", function()
  for _, text in ipairs({ "", "[1]", '{"a":1} x', '{"a":', '"s"', "{'a':1}" }) do
    local v, err = core.json_members(text, "a")
    eq(v, nil)
    assert(type(err) == "string" and err ~= "", text)
  end
end)

test("json_members refuses misuse naming the argument", function()
  raises(function() core.json_members(42, "a") end, "bad argument #1 to 'json_members' (string expected, got number)")
  raises(function() core.json_members("{}", "a", nil, "b") end, "bad argument #3 to 'json_members' (string expected, got nil)")
  raises(function() core.json_members("{}", "a", "b", "c", {}) end, "bad argument #5 to 'json_members' (string expected, got table)")
  raises(function() core.json_members("{}") end, "expected 1 to 8 keys")
  raises(function() core.json_members("{}", "1", "2", "3", "4", "5", "6", "7", "8", "9") end, "expected 1 to 8 keys")
end)

test("now is the wall clock in seconds", function()
  local t = core.now()
  assert(type(t) == "number" and math.abs(t - os.time()) <= 1, t)
  assert(t ~= math.floor(t) or core.now() ~= t)                 -- sub-second precision
end)
